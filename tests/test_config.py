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
