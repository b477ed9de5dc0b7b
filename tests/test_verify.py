"""tmws verify: every check against real installations (embedded PostgreSQL 18 + pgvector,
the machine's PostgreSQL 15 without it, real Redis up and down)."""

from __future__ import annotations

import json
import random

import psycopg
from pgvector import Vector
from pgvector.psycopg import register_vector

from tests.conftest import (
    PLAIN_POSTGRES_URL,
    SECRET,
    PrivateRedis,
    make_settings,
    scratch_database,
)
from tests.test_cli import run
from tmws.database import reindex
from tmws.verify import VerificationReport, format_report, load_settings, run_verification

ALL_CHECKS = ["settings", "database", "pgvector", "migrations", "embedding_config", "indexes",
              "vector_index", "redis", "patterns", "token", "execute:infrastructure",
              "execute:memory", "execute:hybrid", "metrics"]


def statuses(report: VerificationReport) -> dict[str, str]:
    return {check.name: check.status for check in report.checks}


async def test_a_complete_installation_is_all_ok(database_url: str, redis_url: str) -> None:
    settings = make_settings(database_url, redis_url=redis_url, auth_enabled="true",
                             secret_key=SECRET)
    async with scratch_database(database_url, migrate=settings) as url:
        report = await run_verification(make_settings(url, redis_url=redis_url,
                                                      auth_enabled="true", secret_key=SECRET))
    assert [check.name for check in report.checks] == ALL_CHECKS
    assert report.exit_code == 0 and report.status == "ok", format_report(report)
    assert "PostgreSQL 18" in report.check("database").detail
    assert report.check("pgvector").detail.startswith("pgvector 0.")
    assert "at head" in report.check("migrations").detail
    assert "no embeddings stored yet" in report.check("vector_index").detail
    assert report.check("redis").detail.startswith("Redis ")
    assert "forged copy was refused" in report.check("token").detail
    assert report.check("execute:memory").detail.startswith("recall_memory")
    skipped = await run_verification(make_settings(database_url), execute=False)
    assert not any(check.name.startswith("execute:") for check in skipped.checks)


async def test_redis_down_fails_while_every_other_check_runs(
        database_url: str, private_redis: PrivateRedis) -> None:
    private_redis.stop()
    settings = make_settings(database_url, redis_url=private_redis.url, redis_timeout="0.5")
    async with scratch_database(database_url, migrate=settings) as url:
        report = await run_verification(make_settings(url, redis_url=private_redis.url,
                                                      redis_timeout="0.5"))
    assert [check.name for check in report.checks] == ALL_CHECKS
    redis = report.check("redis")
    assert redis.status == "fail" and "TMWS_REDIS_URL is set" in redis.detail
    assert report.exit_code == 2 and report.status == "fail"
    others = {name: status for name, status in statuses(report).items() if name != "redis"}
    assert set(others.values()) == {"ok"}, format_report(report)


async def test_postgresql_without_pgvector_fails_clearly() -> None:
    report = await run_verification(make_settings(PLAIN_POSTGRES_URL), execute=False)
    assert report.check("database").status == "ok"
    assert "PostgreSQL 15" in report.check("database").detail
    pgvector = report.check("pgvector")
    assert pgvector.status == "fail"
    assert "no 'vector' extension (pgvector)" in pgvector.detail
    assert "apt-get install postgresql-<version>-pgvector" in pgvector.detail
    assert report.check("migrations").status == "fail"
    assert "tmws db upgrade" in report.check("migrations").detail
    # Checks that do not need the database are unaffected.
    assert statuses(report)["patterns"] == statuses(report)["token"] == "ok"
    assert report.exit_code == 2


async def test_an_unreachable_database_fails_only_the_database_checks() -> None:
    settings = make_settings("postgresql://tmws@127.0.0.1:1/none")
    report = await run_verification(settings)
    found = statuses(report)
    for name in ("database", "pgvector", "migrations", "indexes", "vector_index",
                 "execute:memory", "execute:hybrid"):
        assert found[name] == "fail", name
    assert "not checked" in report.check("indexes").detail
    for name in ("settings", "redis", "patterns", "token", "execute:infrastructure",
                 "metrics"):
        assert found[name] == "ok", (name, format_report(report))


def _store(url: str, rows: int, dim: int) -> None:
    rng = random.Random(7)
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO memories (namespace, content, embedding) VALUES (%s, %s, %s)",
                [("verify-test", f"memory {i}", Vector([rng.gauss(0, 1) for _ in range(dim)]))
                 for i in range(rows)])


async def test_ivfflat_built_on_an_empty_table_warns_until_reindexed(database_url: str) -> None:
    settings = make_settings(database_url, vector_lists="10", vector_probes="2")
    async with scratch_database(database_url, migrate=settings) as url:
        checked = make_settings(url, vector_lists="10", vector_probes="2")
        _store(url, 300, checked.embedding_dim)  # after the migration built the index
        report = await run_verification(checked, execute=False)
        vector = report.check("vector_index")
        assert vector.status == "warn", format_report(report)
        assert "empty table" in vector.detail and "tmws db reindex" in vector.detail
        assert "lists 10" in vector.detail and "300 rows" in vector.detail
        assert report.exit_code == 1
        await reindex(url, checked)
        after = await run_verification(checked, execute=False)
    assert after.check("vector_index").status == "ok", format_report(after)
    assert "built on 300 rows" in after.check("vector_index").detail
    assert after.exit_code == 0


async def test_production_refusals_are_a_failed_check_not_a_crash(database_url: str) -> None:
    environ = {"TMWS_ENVIRONMENT": "production", "TMWS_DATABASE_URL": database_url,
               "TMWS_AUTH_ENABLED": "false", "TMWS_LOG_LEVEL": "WARNING"}
    settings, errors = load_settings(environ)
    assert settings is not None and settings.database_url == database_url
    assert [error.variable for error in errors] == ["TMWS_SECRET_KEY"]
    report = await run_verification(settings, execute=False, settings_errors=errors)
    check = report.check("settings")
    assert check.status == "fail" and "production needs a secret" in check.detail
    assert report.check("database").status == "ok"
    assert report.exit_code == 2


def test_load_settings_sets_aside_each_refused_variable() -> None:
    settings, errors = load_settings({"TMWS_API_PORT": "http", "TMWS_AUTH_ENABLED": "true",
                                      "TMWS_SECRET_KEY": "short"})
    assert settings is not None and settings.api_port == 8000 and not settings.auth_enabled
    assert [error.variable for error in errors] == ["TMWS_API_PORT", "TMWS_SECRET_KEY",
                                                    "TMWS_SECRET_KEY"]
    assert all("short" not in str(error) for error in errors)  # secrets stay out of reports
    nothing, refused = load_settings({"TMWS_NO_SUCH_THING": "1"})
    assert nothing is not None and refused[0].variable == "TMWS_NO_SUCH_THING"


async def test_verify_cli_json_and_exit_code(database_url: str, redis_url: str) -> None:
    settings = make_settings(database_url)
    async with scratch_database(database_url, migrate=settings) as url:
        env = {"TMWS_DATABASE_URL": url, "TMWS_REDIS_URL": redis_url}
        done = run("verify", "--json", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert report["exit_code"] == 0 and report["status"] == "ok"
        assert [check["name"] for check in report["checks"]] == ALL_CHECKS
        down = run("verify", "--no-execute", env={**env, "TMWS_REDIS_URL": "redis://127.0.0.1:1/0",
                                                  "TMWS_REDIS_TIMEOUT": "0.5"})
    assert down.returncode == 2
    table = down.stdout.splitlines()
    assert table[0].split() == ["check", "status", "detail"]
    assert any(line.split()[:2] == ["redis", "FAIL"] for line in table)
    assert any(line.split()[:2] == ["database", "ok"] for line in table)
    assert "exit 2" in down.stdout
    refused = run("verify", "--no-execute", env={**env, "TMWS_ENVIRONMENT": "production"})
    assert refused.returncode == 2
    assert any(line.split()[:2] == ["settings", "FAIL"] for line in refused.stdout.splitlines())
    assert "production" in refused.stdout and "Traceback" not in refused.stderr
