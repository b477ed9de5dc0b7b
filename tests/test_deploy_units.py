"""Deployment files: systemd units, deploy/env.example, the compose file, .dockerignore.

The units are checked by ``systemd-analyze verify`` (on copies whose ExecStart= points at
this virtualenv's ``tmws``, since /opt/tmws/venv does not exist here) and their arguments
by tmws's own command-line parser. Settings files are loaded into :class:`Settings` in
production mode. ``docker compose config`` is not used: the machine has the docker CLI
without the compose plugin (and no daemon), so the compose file is interpolated here.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec
import pytest
import yaml

from tmws.cli import _parser
from tmws.config import MIN_SECRET_LENGTH, Settings
from tmws.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
UNIT_FILES = ("tmws.service", "tmws-audit-prune.service", "tmws-audit-prune.timer",
              "tmws-backup.service", "tmws-backup.timer")
ENV_EXAMPLE = DEPLOY / "env.example"
COMPOSE = DEPLOY / "docker-compose.yml"
INSTALLED_TMWS = "/opt/tmws/venv/bin/tmws"

SECRET = "s" * (MIN_SECRET_LENGTH + 8)
DATABASE_URL = "postgresql://tmws_user:pw@db.example:5432/tmws_production"
# Values for the compose file's ${...} interpolations (as in deploy/.env).
COMPOSE_VARIABLES = {"DB_PASSWORD": "dummy-password", "TMWS_SECRET_KEY": SECRET}

KNOWN_SETTINGS = frozenset(Settings.env_name(f.name) for f in msgspec.structs.fields(Settings))
DEFAULTS = Settings.from_env({})

Unit = dict[str, list[tuple[str, str]]]


# --- helpers ------------------------------------------------------------------------------

def parse_unit(path: Path) -> Unit:
    """Sections of a unit file, each a list of (key, value) in order (keys may repeat)."""
    sections: Unit = {}
    current: list[tuple[str, str]] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}:{number}: setting outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not KEY=VALUE"
        current.append((key.strip(), value.strip()))
    return sections


def unit_value(unit: Unit, section: str, key: str) -> str:
    values = [v for k, v in unit.get(section, []) if k == key]
    assert values, f"[{section}] {key}= missing"
    return values[-1]


def unit_values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def seconds(text: str) -> float:
    """A systemd or compose duration such as ``45``, ``45s``, ``1min 30s``, ``1m30s``."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip())
    assert parts, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines as systemd's EnvironmentFile= and compose's env files read them."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not KEY=value"
        # systemd would keep a trailing comment as part of the value.
        assert " #" not in value, f"{path.name}:{number}: comment after a value"
        assert key not in values, f"{path.name}:{number}: {key} set twice"
        values[key] = value
    return values


_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error} and $$."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        value = variables.get(name)
        if operator in (":-", "-"):
            unset = value is None or (operator == ":-" and value == "")
            return argument if unset else str(value)
        if operator in (":?", "?"):
            if value is None or (operator == ":?" and value == ""):
                raise ValueError(f"{name}: {argument}")
            return value
        return value or ""

    return _INTERPOLATION.sub(replace, text)


def interpolated(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [interpolated(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: interpolated(value, variables) for key, value in node.items()}
    return node


def load_compose(variables: Mapping[str, str] = COMPOSE_VARIABLES) -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    result = interpolated(document, variables)
    assert isinstance(result, dict)
    return result


def service_environment(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        pairs = (item.partition("=") for item in environment)
        return {key: value for key, _, value in pairs}
    assert isinstance(environment, dict)
    return {str(key): "" if value is None else str(value) for key, value in environment.items()}


def bind_mounts(service: Mapping[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of the service's bind mounts (relative to deploy/)."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target = str(volume.get("source", "")), str(volume["target"])
            is_bind = volume.get("type") == "bind"
        else:
            source, target = str(volume).split(":")[:2]
            is_bind = source.startswith((".", "/", "~"))
        if is_bind:
            mounts.append(((DEPLOY / source).resolve(), target))
    return mounts


def named_volumes(service: Mapping[str, Any]) -> list[str]:
    names = []
    for volume in service.get("volumes", []):
        source = str(volume.get("source", "")) if isinstance(volume, dict) else \
            str(volume).split(":")[0]
        if source and not source.startswith((".", "/", "~")):
            names.append(source)
    return names


def host_path(service: Mapping[str, Any], container_path: str) -> Path | None:
    """Where a container path of a bind mount lives in the repository (None: not mounted)."""
    best: tuple[int, Path] | None = None
    wanted = PurePosixPath(container_path)
    for source, target in bind_mounts(service):
        mount = PurePosixPath(target)
        if wanted == mount or mount in wanted.parents:
            candidate = source / wanted.relative_to(mount)
            if best is None or len(mount.parts) > best[0]:
                best = (len(mount.parts), candidate)
    return None if best is None else best[1]


def dockerignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            patterns.append((negated, line.lstrip("!").strip("/")))
    return patterns


def _pattern_matches(pattern: str, path: str) -> bool:
    if pattern.startswith("**/"):
        segments = path.split("/")
        return any(fnmatch.fnmatchcase("/".join(segments[i:]), pattern[3:])
                   for i in range(len(segments)))
    return fnmatch.fnmatchcase(path, pattern)


def dockerignored(path: str, patterns: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for negated, pattern in patterns:
        if any(_pattern_matches(pattern, prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def dockerfile_copy_sources() -> list[str]:
    sources = []
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if not line.startswith("COPY "):
            continue
        words = shlex.split(line)
        if not any(w.startswith("--from") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


# --- systemd ------------------------------------------------------------------------------

def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze not found (Debian package systemd)")
    # ExecStart= must name an existing executable: this virtualenv's tmws instead of
    # /opt/tmws/venv's.
    tmws = Path(sys.executable).parent / "tmws"
    assert tmws.is_file()
    for name in UNIT_FILES:
        text = (UNITS / name).read_text(encoding="utf-8")
        (tmp_path / name).write_text(text.replace(INSTALLED_TMWS, str(tmws)), encoding="utf-8")
    result = subprocess.run(
        [analyze, "verify", *(str(tmp_path / name) for name in UNIT_FILES)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines()
            if str(tmp_path) in line or any(name in line for name in UNIT_FILES)]
    assert ours == [], output
    assert result.returncode == 0, output


def test_service_unit_runs_tmws_serve_hardened() -> None:
    unit = parse_unit(UNITS / "tmws.service")
    assert unit_value(unit, "Service", "ExecStart") == f"{INSTALLED_TMWS} serve"
    assert _parser().parse_args(["serve"]).command == "serve"
    expected = {
        "Type": "simple", "User": "tmws", "Group": "tmws",
        "WorkingDirectory": "/opt/tmws", "EnvironmentFile": "/opt/tmws/.env",
        "Restart": "always", "KillSignal": "SIGTERM", "LogsDirectory": "tmws",
        "NoNewPrivileges": "true", "PrivateTmp": "true", "ProtectSystem": "strict",
        "ProtectHome": "true", "LimitNOFILE": "65536", "MemoryMax": "4G",
        "CPUQuota": "400%",
    }
    for key, value in expected.items():
        assert unit_value(unit, "Service", key) == value, key
    assert unit_value(unit, "Install", "WantedBy") == "multi-user.target"
    assert "/var/log/tmws" in unit_value(unit, "Service", "ReadWritePaths").split()


def test_stop_timeout_outlasts_the_drain() -> None:
    """systemd must not SIGKILL tmws while it drains for TMWS_SHUTDOWN_TIMEOUT."""
    unit = parse_unit(UNITS / "tmws.service")
    stop = seconds(unit_value(unit, "Service", "TimeoutStopSec"))
    env = parse_env_file(ENV_EXAMPLE)
    drain = int(env.get("TMWS_SHUTDOWN_TIMEOUT", DEFAULTS.shutdown_timeout))
    assert drain >= DEFAULTS.shutdown_timeout
    assert stop >= drain + 10


def test_log_file_is_in_the_units_logs_directory() -> None:
    log_file = PurePosixPath(parse_env_file(ENV_EXAMPLE)["TMWS_LOG_FILE"])
    for name in ("tmws.service", "tmws-audit-prune.service", "tmws-backup.service"):
        unit = parse_unit(UNITS / name)
        logs = PurePosixPath("/var/log") / unit_value(unit, "Service", "LogsDirectory")
        assert log_file.parent == logs, name


def test_audit_prune_service_and_timer() -> None:
    service = parse_unit(UNITS / "tmws-audit-prune.service")
    command = shlex.split(unit_value(service, "Service", "ExecStart"))
    assert command[0] == INSTALLED_TMWS
    args = _parser().parse_args(command[1:])
    assert (args.command, args.audit_command, args.older_than) == ("audit", "prune", 90.0)
    assert unit_value(service, "Service", "Type") == "oneshot"
    assert unit_value(service, "Service", "User") == "tmws"
    assert unit_value(service, "Service", "EnvironmentFile") == "/opt/tmws/.env"
    assert "Install" not in service  # started by the timer only

    timer = parse_unit(UNITS / "tmws-audit-prune.timer")
    assert unit_value(timer, "Timer", "OnCalendar") == "daily"
    assert unit_value(timer, "Timer", "Persistent") == "true"
    assert unit_value(timer, "Timer", "Unit") == "tmws-audit-prune.service"
    assert unit_value(timer, "Install", "WantedBy") == "timers.target"


def test_backup_service_and_timer() -> None:
    service = parse_unit(UNITS / "tmws-backup.service")
    command = shlex.split(unit_value(service, "Service", "ExecStart"))
    assert command[0] == INSTALLED_TMWS
    args = _parser().parse_args(command[1:])
    assert (args.command, args.keep, args.redis) == ("backup", 14, False)
    # The backups land where the hardened unit may write, under its state directory.
    backups = PurePosixPath(args.dir)
    writable = [PurePosixPath(p) for p in unit_value(service, "Service",
                                                     "ReadWritePaths").split()]
    assert any(p == backups or p in backups.parents for p in writable)
    assert PurePosixPath("/var/lib") / unit_value(service, "Service",
                                                  "StateDirectory") in backups.parents
    expected = {"Type": "oneshot", "User": "tmws", "Group": "tmws",
                "EnvironmentFile": "/opt/tmws/.env", "ProtectSystem": "strict",
                "NoNewPrivileges": "true", "PrivateTmp": "true", "UMask": "0077"}
    for key, value in expected.items():
        assert unit_value(service, "Service", key) == value, key
    assert "Install" not in service  # started by the timer only

    timer = parse_unit(UNITS / "tmws-backup.timer")
    assert unit_value(timer, "Timer", "OnCalendar") == "*-*-* 02:00:00"
    assert unit_value(timer, "Timer", "Persistent") == "true"
    assert seconds(unit_value(timer, "Timer", "RandomizedDelaySec")) > 0
    assert unit_value(timer, "Timer", "Unit") == "tmws-backup.service"
    assert unit_value(timer, "Install", "WantedBy") == "timers.target"


def test_unit_environment_lines_are_settings() -> None:
    for name in ("tmws.service", "tmws-audit-prune.service", "tmws-backup.service"):
        unit = parse_unit(UNITS / name)
        for line in unit_values(unit, "Service", "Environment"):
            key = line.strip('"').partition("=")[0]
            assert not key.startswith("TMWS_") or key in KNOWN_SETTINGS, (name, key)


# --- env.example --------------------------------------------------------------------------

def production_env() -> dict[str, str]:
    return {**parse_env_file(ENV_EXAMPLE), "TMWS_SECRET_KEY": SECRET,
            "TMWS_DATABASE_URL": DATABASE_URL}


def test_env_example_loads_in_production() -> None:
    env = parse_env_file(ENV_EXAMPLE)
    assert env["TMWS_ENVIRONMENT"] == "production"
    assert env["TMWS_DATABASE_URL"].startswith("postgresql://")
    settings = Settings.from_env(production_env())
    assert settings.environment == "production"
    assert settings.auth_enabled is True
    assert settings.database_url == DATABASE_URL
    assert settings.redis_url is not None
    assert settings.log_file == "/var/log/tmws/tmws.log"
    assert settings.api_host == "0.0.0.0"


def test_env_example_refuses_to_start_until_the_secret_is_set() -> None:
    env = {**parse_env_file(ENV_EXAMPLE), "TMWS_DATABASE_URL": DATABASE_URL}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.variable == "TMWS_SECRET_KEY"


def test_env_example_pool_fits_postgres_default_max_connections() -> None:
    settings = Settings.from_env(production_env())
    opened = settings.workers * (settings.db_max_connections + settings.db_overflow)
    assert opened <= 80  # PostgreSQL's default max_connections is 100: leave room


def test_every_tmws_variable_named_in_deploy_files_is_a_setting() -> None:
    files = [COMPOSE, ENV_EXAMPLE, DEPLOY / "README.md",
             *(UNITS / name for name in UNIT_FILES)]
    for path in files:
        names = set(re.findall(r"\bTMWS_[A-Z0-9_]+\b", path.read_text(encoding="utf-8")))
        unknown = sorted(names - KNOWN_SETTINGS)
        assert unknown == [], f"{path.relative_to(ROOT)}: {unknown}"


# --- docker-compose.yml -------------------------------------------------------------------

def test_compose_requires_the_secrets_with_a_message() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    for variable in COMPOSE_VARIABLES:
        assert re.search(r"\$\{" + variable + r":\?[^}]+\}", text), variable
        missing = {k: v for k, v in COMPOSE_VARIABLES.items() if k != variable}
        with pytest.raises(ValueError, match=variable):
            load_compose(missing)


def test_compose_services_pass_production_settings() -> None:
    services = load_compose()["services"]
    assert {"postgres", "redis", "migrate", "tmws"} <= set(services)
    for name in ("migrate", "tmws"):
        env = service_environment(services[name])
        settings = Settings.from_env(env)
        assert settings.environment == "production", name
        assert settings.auth_enabled is True, name
        assert settings.secret_key == SECRET, name
        assert settings.database_url is not None, name
        assert "@postgres:5432/" in settings.database_url, name
        assert settings.redis_url == "redis://redis:6379/0", name

    tmws = services["tmws"]
    settings = Settings.from_env(service_environment(tmws))
    assert settings.api_host == "0.0.0.0"
    # The log file is on the `logs` volume.
    assert settings.log_file is not None
    log_dir = str(PurePosixPath(settings.log_file).parent)
    assert f"logs:{log_dir}" in [str(v) for v in tmws["volumes"]]
    # Scaling: no fixed name, the host port(s) from HTTP_PORTS, container port = API port.
    assert "container_name" not in tmws
    assert [str(p) for p in tmws["ports"]] == [f"8000:{settings.api_port}"]
    ranged = load_compose({**COMPOSE_VARIABLES, "HTTP_PORTS": "8000-8002"})
    assert ranged["services"]["tmws"]["ports"] == ["8000-8002:8000"]
    assert seconds(tmws["stop_grace_period"]) >= settings.shutdown_timeout + 10
    depends = tmws["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["tmws", "db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_postgres_and_redis_follow_the_guide() -> None:
    services = load_compose()["services"]
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    postgres_env = service_environment(services["postgres"])
    assert postgres_env["POSTGRES_PASSWORD"] == COMPOSE_VARIABLES["DB_PASSWORD"]
    redis_command = services["redis"]["command"]
    words = redis_command if isinstance(redis_command, list) else shlex.split(redis_command)
    text = " ".join(words)
    assert "--maxmemory 1gb" in text
    assert "--maxmemory-policy allkeys-lru" in text
    assert "--save 900 1 300 10 60 10000" in text


def test_compose_monitoring_profile() -> None:
    prometheus = load_compose()["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert any(source == DEPLOY / "prometheus" for source, _ in bind_mounts(prometheus))


def test_compose_references_exist() -> None:
    compose = load_compose()
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else \
                build.get("dockerfile", "Dockerfile")
            assert (DEPLOY / context / dockerfile).is_file(), name
        for source, _ in bind_mounts(service):
            assert source.exists(), f"{name}: {source} is mounted but missing"
        for volume in named_volumes(service):
            assert volume in declared, f"{name}: volume {volume} not declared"
        # Container paths of mounted files named in the environment or the command.
        command = service.get("command", [])
        words = command if isinstance(command, list) else shlex.split(command)
        candidates = [value for value in service_environment(service).values()]
        candidates += [word.partition("=")[2] or word for word in words]
        for value in candidates:
            if value.startswith("/"):
                path = host_path(service, value)
                if path is not None:
                    assert path.exists(), f"{name}: {value} -> {path} missing"
    # TMWS_PATTERN_CONFIG is the repository's pattern file and is valid.
    tmws = compose["services"]["tmws"]
    pattern_config = host_path(tmws, service_environment(tmws)["TMWS_PATTERN_CONFIG"])
    assert pattern_config == DEPLOY / "config" / "patterns.yaml"
    assert pattern_config.is_file()


def test_prometheus_config_references_exist() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text("utf-8"))
    assert isinstance(config, dict)
    for rule_file in config.get("rule_files") or []:
        matches = list((DEPLOY / "prometheus").glob(PurePosixPath(rule_file).name))
        assert matches, f"rule file {rule_file} missing from deploy/prometheus"
    # Scraped by compose service name: static targets or DNS service discovery.
    hosts = [str(target).split(":")[0] for job in config.get("scrape_configs", [])
             for static in job.get("static_configs", []) for target in static["targets"]]
    hosts += [str(name) for job in config.get("scrape_configs", [])
              for dns in job.get("dns_sd_configs", []) for name in dns["names"]]
    assert "tmws" in hosts


# --- Dockerfile and .dockerignore ---------------------------------------------------------

def test_dockerfile_builds_from_the_lock_file() -> None:
    sources = dockerfile_copy_sources()
    assert "Cargo.lock" in sources
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"maturin build .*--locked", dockerfile)


def test_dockerignore_keeps_what_the_dockerfile_copies_and_nothing_heavy() -> None:
    patterns = dockerignore_patterns()
    for source in dockerfile_copy_sources():
        if source.startswith("dist/"):  # written by `make dist`
            continue
        assert (ROOT / source).exists(), source
        assert not dockerignored(source, patterns), source
    kept = ["Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md", "tmws/cli.py",
            "tmws/data/default_patterns.yaml", "rust_core/Cargo.toml", "rust_core/src/lib.rs",
            "migrations/env.py", "migrations/versions/0001_memories.py",
            "bench/loadgen/Cargo.toml", "deploy/config/patterns.yaml",
            "dist/tmws-0.1.0-cp311-abi3-manylinux_2_28_x86_64.whl"]
    for path in kept:
        assert not dockerignored(path, patterns), path
    left_out = [".venv/bin/python", "target/release/libtmws_core.so", ".git/HEAD",
                "dist/tmws-0.1.0.tar.gz", "bench/loadgen/target/release/loadgen",
                "bench/memory_load.py",
                "tmws/_tmws_core.cpython-311-x86_64-linux-gnu.so",
                "tmws/__pycache__/cli.cpython-311.pyc", "tests/http/test_app.py",
                ".mypy_cache/3.11/x.json", "deploy/.env", "rust_core/target/debug/x"]
    for path in left_out:
        assert dockerignored(path, patterns), path


def _dockerfile_healthcheck() -> str:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    [line] = [line for line in text.splitlines() if line.startswith("HEALTHCHECK")]
    return line.split(" CMD ", 1)[1].strip()


def test_container_healthchecks_probe_readiness_without_a_token(
        database_url: str, tmp_path: Path) -> None:
    from tests.conftest import SECRET as TEST_SECRET
    from tests.fix_server import start_server, stop_server

    image = shlex.split(_dockerfile_healthcheck())
    compose = load_compose()["services"]["tmws"]["healthcheck"]["test"]
    assert compose[0] == "CMD" and compose[1:] == image  # one check, two places
    assert "/health/ready" in image[-1] and "/health'" not in image[-1]
    process, base = start_server({"TMWS_DATABASE_URL": database_url,
                                  "TMWS_AUTH_ENABLED": "true",
                                  "TMWS_SECRET_KEY": TEST_SECRET}, tmp_path)
    try:
        port = base.rsplit(":", 1)[1]
        command = [sys.executable, *image[1:]]
        command[-1] = command[-1].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
    finally:
        stop_server(process)
