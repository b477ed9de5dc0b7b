"""Fixture plugin: a MemoryStore on the session's database (tests of the store itself)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import make_settings
from tmws.database import Database
from tmws.embeddings import HashProvider
from tmws.memory import MemoryStore

__all__ = ["store"]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[MemoryStore]:
    settings = make_settings(database_url)
    database = Database(database_url, settings)
    await database.open()
    yield MemoryStore(database, HashProvider(settings.embedding_dim))
    await database.close()
