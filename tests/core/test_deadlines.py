"""Deadlines: due in order, replaced and dropped ones never fire, the heap does not grow unbounded."""

from __future__ import annotations

import random

from core.deadlines import Deadlines


def test_due_in_deadline_order_and_each_once() -> None:
    deadlines: Deadlines[str] = Deadlines()
    deadlines.set("b", 20.0)
    deadlines.set("a", 10.0)
    deadlines.set("c", 30.0)
    assert deadlines.next() == 10.0
    assert deadlines.due(5.0) == []
    assert deadlines.due(20.0) == ["a", "b"]
    assert deadlines.due(25.0) == []
    assert deadlines.next() == 30.0 and len(deadlines) == 1


def test_a_replaced_deadline_fires_only_at_its_new_time() -> None:
    deadlines: Deadlines[str] = Deadlines()
    deadlines.set("a", 10.0)
    deadlines.set("a", 50.0)  # a refreshed token
    assert deadlines.next() == 50.0
    assert deadlines.due(40.0) == []
    assert deadlines.due(50.0) == ["a"]


def test_a_dropped_key_never_fires() -> None:
    deadlines: Deadlines[str] = Deadlines()
    deadlines.set("a", 10.0)
    deadlines.discard("a")
    deadlines.discard("never-there")
    assert deadlines.next() is None and deadlines.due(100.0) == [] and len(deadlines) == 0


def test_churn_keeps_the_heap_bounded_and_the_answers_right() -> None:
    rng = random.Random(7)
    deadlines: Deadlines[int] = Deadlines()
    live: dict[int, float] = {}
    for step in range(20_000):
        key = rng.randrange(100)
        if rng.random() < 0.3:
            deadlines.discard(key)
            live.pop(key, None)
        else:
            deadline = step + rng.uniform(0, 500)
            deadlines.set(key, deadline)
            live[key] = deadline
        assert len(deadlines._heap) <= 2 * len(live) + 65
    now = 20_000 + 100.0
    expected = sorted((d, k) for k, d in live.items() if d <= now)
    assert deadlines.due(now) == [k for _, k in expected]
    assert deadlines.next() == min((d for d in live.values() if d > now), default=None)
