"""Fixture plugin: a clock the test moves by hand, for code that takes ``clock=``."""

from __future__ import annotations

import pytest

__all__ = ["START", "Clock", "clock"]

START = 1_700_000_000.0  # 2023-11-14T22:13:20Z: a plausible Unix time for token claims


class Clock:
    """Stands in for ``time.time``/``time.monotonic``: answers ``now``, which only the test
    changes (``clock.now += 10``)."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """A :class:`Clock` at :data:`START`."""
    return Clock()
