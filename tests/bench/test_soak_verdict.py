"""The soak's verdict on 5xx outside the fault windows (bench/soak.py), on made-up rows."""

from __future__ import annotations

from bench.soak import Fault, Row, verdict

INTERVAL = 10.0


def _row(second: float, statuses: dict[str, int] | None = None) -> Row:
    return Row(second=second, rps=800.0, p50_ms=3.0, p99_ms=20.0, statuses=statuses or {},
               rss_mib=400.0, fds=130, processes=3, pg_connections=26, redis_connections=20,
               l1_entries=2000, redis_keys=2000, audit_pending=0, workers_seen=2)


def _rows(extra: dict[float, dict[str, int]]) -> list[Row]:
    return [_row(s, extra.get(s)) for s in (10.0 * i for i in range(1, 13))]


def test_a_lone_timeout_is_within_the_budget() -> None:
    # 12 rows x 8,000 requests: a budget of 9.6 timeouts.
    assert verdict(_rows({120.0: {"504": 1}}), INTERVAL, []) == []


def test_timeouts_past_the_budget_fail() -> None:
    problems = verdict(_rows({60.0: {"504": 6}, 70.0: {"504": 5}}), INTERVAL, [])
    assert len(problems) == 2 and "11 timeouts against a budget of 9.6" in problems[0]


def test_any_other_5xx_outside_a_fault_fails_at_once() -> None:
    for code in ("500", "503", "write 503"):
        problems = verdict(_rows({120.0: {code: 1}}), INTERVAL, [])
        assert problems and code in problems[0], code


def test_inside_a_fault_window_5xx_are_expected() -> None:
    faults = [Fault("postgres stopped and started", 55.0, 60.0)]
    assert verdict(_rows({60.0: {"503": 40, "504": 30}}), INTERVAL, faults) == []
