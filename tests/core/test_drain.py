"""The drain plan: closes paced over the window, returns spread over it again."""

from __future__ import annotations

import random

from core.drain import MIN_RECONNECT_AFTER_MS, drain_plan


def test_closes_are_paced_evenly_over_the_window() -> None:
    plan = drain_plan(10, 5.0, random.Random(1))
    assert [round(f.close_at, 6) for f in plan] == [i * 0.5 for i in range(10)]


def test_returns_are_spread_over_the_window_after_at_least_a_second() -> None:
    plan = drain_plan(1000, 5.0, random.Random(2))
    delays = [f.reconnect_after_ms for f in plan]
    assert min(delays) >= MIN_RECONNECT_AFTER_MS and max(delays) <= MIN_RECONNECT_AFTER_MS + 5000
    per_second = [
        sum(1 for d in delays if s * 1000 <= d - MIN_RECONNECT_AFTER_MS < (s + 1) * 1000) for s in range(5)
    ]
    assert all(150 <= n <= 250 for n in per_second)  # about a fifth of them each second, not a storm


def test_nothing_to_plan_without_clients_and_no_wait_without_a_window() -> None:
    assert drain_plan(0, 5.0, random.Random(3)) == []
    assert {f.close_at for f in drain_plan(5, 0.0, random.Random(3))} == {0.0}
