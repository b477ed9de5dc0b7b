from __future__ import annotations

import pytest

from tmws.config import Settings, default_pool_size
from tmws.errors import ConfigError


def test_defaults_follow_the_guide() -> None:
    settings = Settings.from_env({})
    assert settings.db_max_connections == default_pool_size()
    assert settings.db_overflow == settings.db_max_connections // 2
    assert settings.pattern_default_mode == "balanced"
    assert settings.cache_ttl == 300
    assert settings.database_url is None  # embedded default
    assert settings.redis_url is None  # local cache only


def test_values_are_parsed_from_strings() -> None:
    settings = Settings.from_env({
        "TMWS_DB_MAX_CONNECTIONS": "7", "TMWS_DB_MAX_OVERFLOW": "2", "TMWS_DB_ECHO": "true",
        "TMWS_REDIS_TIMEOUT": "0.5", "TMWS_PATTERN_INFRA_TIMEOUT": "20",
        "TMWS_DATABASE_URL": "postgresql://u@h/db", "TMWS_LOG_LEVEL": "DEBUG",
    })
    assert settings.db_max_connections == 7
    assert settings.db_overflow == 2
    assert settings.db_echo is True
    assert settings.redis_timeout == 0.5
    assert settings.timeout_ms("infrastructure") == 20
    assert settings.database_url == "postgresql://u@h/db"


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.api_port = 1  # type: ignore[misc]


def test_platform_injected_names_are_not_settings() -> None:
    # What Kubernetes puts in every pod of a namespace with a Service named "tmws", and
    # what a legacy Docker link named "tmws" adds: neither may stop the service.
    injected = {"TMWS_SERVICE_HOST": "10.0.0.7", "TMWS_SERVICE_PORT": "8000",
                "TMWS_SERVICE_PORT_HTTP": "8000", "TMWS_PORT": "tcp://10.0.0.7:8000",
                "TMWS_PORT_8000_TCP": "tcp://10.0.0.7:8000", "TMWS_PORT_8000_TCP_PROTO": "tcp",
                "TMWS_PORT_8000_TCP_PORT": "8000", "TMWS_PORT_8000_TCP_ADDR": "10.0.0.7",
                "TMWS_NAME": "/web/tmws", "TMWS_ENV_TMWS_WORKERS": "2"}
    settings = Settings.from_env(injected)
    assert settings.api_port == 8000 and settings.workers == 1  # none of them was read
    with pytest.raises(ConfigError):
        Settings.from_env({"TMWS_PORTS": "8000"})  # a typo stays an error


@pytest.mark.parametrize(("variable", "value", "fragment"), [
    ("TMWS_API_PORT", "eighty", "invalid value"),
    ("TMWS_API_PORT", "70000", "between 0 and 65535"),
    ("TMWS_DB_POOL_PRE_PING", "maybe", "true or false"),
    ("TMWS_PATTERN_DEFAULT_MODE", "turbo", "must be one of"),
    ("TMWS_LOG_LEVEL", "LOUD", "must be one of"),
    ("TMWS_WORKERS", "0", "at least 1"),
    ("TMWS_PATTERN_MEMORY_TIMEOUT", "0", "at least 1 ms"),
    ("TMWS_DATABASE_URL", "mysql://x", "postgresql://"),
    ("TMWS_REDIS_URL", "http://x", "redis://"),
    ("TMWS_CACHE_TLL", "5", "unknown setting"),
    ("TMWS_DB_MIN_CONNECTIONS", "999", "between 0 and TMWS_DB_MAX_CONNECTIONS"),
])
def test_invalid_values_name_the_variable(variable: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    assert caught.value.variable == variable
    assert variable in str(caught.value)
    assert fragment in str(caught.value)


def test_secrets_are_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"TMWS_DATABASE_URL": "mysql://user:hunter2@host/db"})
    assert "hunter2" not in str(caught.value)


_SECRET = "s" * 32
_PRODUCTION = {"TMWS_ENVIRONMENT": "production", "TMWS_AUTH_ENABLED": "true",
               "TMWS_SECRET_KEY": _SECRET,
               "TMWS_DATABASE_URL": "postgresql://tmws@db.internal:5432/tmws"}


def test_production_with_auth_and_a_long_secret_starts() -> None:
    assert Settings.from_env(_PRODUCTION).auth_enabled


@pytest.mark.parametrize(("changes", "variable"), [
    ({"TMWS_DEBUG": "true"}, "TMWS_DEBUG"),
    ({"TMWS_SECRET_KEY": "short-secret"}, "TMWS_SECRET_KEY"),
    ({"TMWS_SECRET_KEY": ""}, "TMWS_SECRET_KEY"),
    ({"TMWS_AUTH_ENABLED": "false"}, "TMWS_AUTH_ENABLED"),
    ({"TMWS_DATABASE_URL": ""}, "TMWS_DATABASE_URL"),
])
def test_production_refuses_unsafe_settings(changes: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**_PRODUCTION, **changes})
    assert caught.value.variable == variable
    assert "short-secret" not in str(caught.value)


def test_production_without_auth_needs_the_explicit_override() -> None:
    settings = Settings.from_env({**_PRODUCTION, "TMWS_AUTH_ENABLED": "false",
                                  "TMWS_ALLOW_UNAUTHENTICATED": "true"})
    assert not settings.auth_enabled


def test_auth_needs_a_long_secret_everywhere() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"TMWS_AUTH_ENABLED": "true", "TMWS_SECRET_KEY": "x" * 31})
    assert caught.value.variable == "TMWS_SECRET_KEY"
    assert Settings.from_env({"TMWS_AUTH_ENABLED": "true", "TMWS_SECRET_KEY": _SECRET})


def test_metrics_networks_are_parsed() -> None:
    settings = Settings.from_env({"TMWS_METRICS_ALLOWED_NETWORKS": "10.0.0.0/8, ::1"})
    assert [str(n) for n in settings.metrics_networks()] == ["10.0.0.0/8", "::1/128"]
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"TMWS_METRICS_ALLOWED_NETWORKS": "10.0.0.0/33"})
    assert caught.value.variable == "TMWS_METRICS_ALLOWED_NETWORKS"


@pytest.mark.parametrize("given", ["info", "Info", "INFO", " warning "])
def test_log_level_is_accepted_in_any_case(given: str) -> None:
    assert Settings.from_env({"TMWS_LOG_LEVEL": given}).log_level == given.strip().upper()


def test_an_unknown_log_level_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"TMWS_LOG_LEVEL: must be one of .*any case"):
        Settings.from_env({"TMWS_LOG_LEVEL": "verbose"})


def test_the_original_services_pool_setting_names_read_tmws_settings() -> None:
    settings = Settings.from_env({"TMWS_DB_MAX_CONNECTIONS": "12", "TMWS_DB_POOL_RECYCLE": "60"})
    assert (settings.database_pool_size, settings.database_max_overflow,
            settings.database_pool_pre_ping, settings.database_pool_recycle) == (12, 6, True, 60)
