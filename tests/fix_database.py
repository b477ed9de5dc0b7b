"""Fixture plugin: databases of the test's own on the session's PostgreSQL, dropped after.

For tests that change what other tests share (indexes, the schema, many memories) or need
a database in a given state; ``tests.conftest.scratch_database`` does the work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import make_settings, scratch_database

__all__ = ["fresh_database", "migrated_database"]


@pytest.fixture
async def fresh_database(database_url: str) -> AsyncIterator[str]:
    """An empty database (no schema, no extension)."""
    async with scratch_database(database_url) as url:
        yield url


@pytest.fixture
async def migrated_database(database_url: str) -> AsyncIterator[str]:
    """A database migrated to the current schema with the tests' settings."""
    async with scratch_database(database_url, migrate=make_settings(database_url)) as url:
        yield url
