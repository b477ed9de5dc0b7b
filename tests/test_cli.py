from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import redis

from tests.conftest import PrivateRedis
from tmws.patterns import default_library_path


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TMWS_")}
    return subprocess.run([sys.executable, "-m", "tmws", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=120)


def test_patterns_check_accepts_the_shipped_library() -> None:
    done = run("patterns", "check", str(default_library_path()))
    assert done.returncode == 0 and "patterns OK" in done.stdout


def test_patterns_check_names_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("x_patterns:\n  - {name: p, pattern_type: memory, trigger_pattern: '(?!no)'}\n")
    done = run("patterns", "check", str(bad))
    assert done.returncode == 2
    assert str(bad) in done.stderr and "'p'" in done.stderr


def test_patterns_eval_takes_a_lexicon_extension(tmp_path: Path) -> None:
    labelled = tmp_path / "labelled.tsv"
    labelled.write_text("NONE\tfetch the zorblax readings\n")
    mine = tmp_path / "mine.yaml"
    mine.write_text("off_topic: [fetch the zorblax readings please]\n")
    plain = run("patterns", "eval", str(labelled), "--json")
    extended = run("patterns", "eval", str(labelled), "--json", "--lexicon", str(mine))
    by_env = run("patterns", "eval", str(labelled), "--json",
                 env={"TMWS_ROUTER_LEXICON": str(mine)})
    assert plain.returncode == extended.returncode == by_env.returncode == 0, extended.stderr
    assert json.loads(plain.stdout)["evaluation"]["accuracy"] == 0.0
    assert json.loads(extended.stdout)["evaluation"]["accuracy"] == 1.0
    assert json.loads(by_env.stdout)["evaluation"]["accuracy"] == 1.0
    mine.write_text("synonyms: {store: [recall]}\n")  # a variant of another canonical
    broken = run("patterns", "eval", str(labelled), "--lexicon", str(mine))
    assert broken.returncode == 2 and str(mine) in broken.stderr and "'recall'" in broken.stderr


def test_bad_setting_stops_with_the_variable_named() -> None:
    done = run("patterns", "check", "x", env={"TMWS_API_PORT": "http"})
    assert done.returncode == 2 and "TMWS_API_PORT" in done.stderr


def test_execute_and_db_upgrade(database_url: str) -> None:
    env = {"TMWS_DATABASE_URL": database_url, "TMWS_DB_MAX_CONNECTIONS": "1"}
    upgrade = run("db", "upgrade", env=env)
    assert upgrade.returncode == 0 and "schema is current" in upgrade.stdout
    done = run("execute", "check health", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["success"] is True


def test_bad_pattern_file_stops_start_up(database_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "patterns.yaml"
    bad.write_text("infrastructure_patterns:\n  - name: a\n    pattern_type: infra\n"
                   "    trigger_pattern: x\n")
    done = run("execute", "check health", env={"TMWS_DATABASE_URL": database_url,
                                               "TMWS_PATTERN_CONFIG": str(bad)})
    assert done.returncode == 2
    assert str(bad) in done.stderr and "'a'" in done.stderr and "pattern_type" in done.stderr


def test_log_file_and_sql_echo(database_url: str, tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "tmws.log"
    env = {"TMWS_DATABASE_URL": database_url, "TMWS_LOG_FILE": str(log_file),
           "TMWS_DB_ECHO": "true", "TMWS_LOG_LEVEL": "WARNING"}
    done = run("execute", "remember the echo test", "--namespace", "cli-echo", env=env)
    assert done.returncode == 0, done.stderr
    text = log_file.read_text()
    assert "SQL INSERT INTO memories" in text
    assert "the echo test" not in text  # statements are logged, parameter values are not


def test_token_create_prints_a_verifiable_token() -> None:
    from tmws.auth import TokenAuthority

    secret = "cli-test-secret-0123456789abcdefghijklmnopqrstuvwxyz"
    env = {"TMWS_SECRET_KEY": secret}
    done = run("token", "create", "--namespace", "agent-7", "--scopes", "execute,metrics:read",
               "--expires", "5", env=env)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert done.stdout == token + "\n"  # nothing else, so TOKEN=$(tmws token create) works
    principal = TokenAuthority(secret, 60).verify(token)
    assert principal.namespace == "agent-7"
    assert principal.scopes == {"execute", "metrics:read"}
    assert "agent-7" in done.stderr and "execute metrics:read" in done.stderr
    assert secret not in done.stderr and token not in done.stderr
    default = run("token", "create", "--namespace", "agent-7", env=env)
    assert TokenAuthority(secret, 60).verify(default.stdout.strip()).scopes == {
        "execute", "memories:read", "memories:write"}


def test_token_create_needs_a_secret() -> None:
    for env in ({}, {"TMWS_SECRET_KEY": "short-secret"}):
        done = run("token", "create", "--namespace", "agent-7", env=env)
        assert done.returncode == 2 and done.stdout == ""
        assert "TMWS_SECRET_KEY" in done.stderr and "short-secret" not in done.stderr


def test_token_create_rejects_an_unknown_scope() -> None:
    env = {"TMWS_SECRET_KEY": "cli-test-secret-0123456789abcdefghijklmnopqrstuvwxyz"}
    done = run("token", "create", "--namespace", "a", "--scopes", "execute", "root", env=env)
    assert done.returncode == 2 and done.stdout == ""
    assert "'root'" in done.stderr and "memories:read" in done.stderr


def test_audit_prune(database_url: str) -> None:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO audit_log (occurred_at, actor, action, outcome) VALUES"
                     " (now() - interval '40 days', 'cli-test', 'execute', 'success'),"
                     " (now(), 'cli-test', 'execute', 'success')")
        env = {"TMWS_DATABASE_URL": database_url, "TMWS_DB_MAX_CONNECTIONS": "1"}
        done = run("audit", "prune", "--older-than", "30", env=env)
        assert done.returncode == 0, done.stderr
        assert "deleted" in done.stdout
        left = conn.execute("SELECT count(*) FROM audit_log WHERE actor = 'cli-test'"
                            ).fetchone()
        old = conn.execute("SELECT count(*) FROM audit_log WHERE actor = 'cli-test'"
                           " AND occurred_at < now() - interval '30 days'").fetchone()
    assert left == (1,) and old == (0,)
    refused = run("audit", "prune", "--older-than", "0", env=env)
    assert refused.returncode == 2


def test_cache_clear(private_redis: PrivateRedis, migrated_database: str) -> None:
    """Clears results only (generations stay), and is audited like the HTTP and Python
    clears: a success with the count, an unreachable Redis as such."""
    import psycopg

    client = redis.Redis.from_url(private_redis.url)
    env = {"TMWS_REDIS_URL": private_redis.url, "TMWS_DATABASE_URL": migrated_database}
    try:
        client.set("tmws:r:some-result", b"x")
        client.set("tmws:gen:team", 3)
        done = run("cache", "clear", env=env)
        assert done.returncode == 0, done.stderr
        assert "deleted 1 cached results" in done.stdout
        assert client.get("tmws:r:some-result") is None
        assert client.get("tmws:gen:team") == b"3"
    finally:
        client.close()
    private_redis.stop()
    down = run("cache", "clear", env={**env, "TMWS_REDIS_TIMEOUT": "0.5"})
    assert down.returncode == 2 and "unreachable" in down.stderr
    with psycopg.connect(migrated_database) as conn:
        audited = conn.execute(
            "SELECT actor, outcome, detail FROM audit_log WHERE action = 'cache.clear'"
            " ORDER BY id").fetchall()
    assert audited == [("system", "success", {"deleted": 1}),
                       ("system", "redis_unavailable", None)]
    local = run("cache", "clear")
    assert local.returncode == 2 and "TMWS_REDIS_URL is not set" in local.stderr
