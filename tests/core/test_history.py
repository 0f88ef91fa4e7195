"""The ingest's history ring: bounds by count and age, ranges by seq, a new run clears it."""

from __future__ import annotations

import tracemalloc

import orjson
import pytest

from core.history import History


def filled(count: int, capacity: int = 5, age: float = 1e12) -> History:
    history = History(capacity, age)
    for seq in range(1, count + 1):
        history.append(seq, b"h%d" % seq, b"p%d" % seq, now_ms=seq * 1000)
    return history


def seqs(history: History, first: int, last: int, limit: int = 100) -> list[int]:
    return [e.seq for e in history.range(first, last, limit).events]


def test_keeps_the_newest_up_to_its_capacity() -> None:
    history = filled(8)
    assert (history.oldest, history.newest, len(history)) == (4, 8, 5)
    assert seqs(history, 4, 8) == [4, 5, 6, 7, 8]
    assert history.range(6, 6, 10).events[0].payload == b"p6"


@pytest.mark.parametrize(
    ("first", "last", "limit", "expected", "complete"),
    [
        (5, 7, 100, [5, 6, 7], True),
        (1, 5, 100, [4, 5], False),  # 1..3 are gone: the caller learns it cannot be filled
        (7, 20, 100, [7, 8], True),
        (4, 8, 2, [4, 5], True),
        (9, 12, 100, [], True),
        (6, 5, 100, [], True),
    ],
    ids=["inside", "older-than-kept", "past-newest", "limited", "nothing-yet", "empty-range"],
)
def test_ranges(first: int, last: int, limit: int, expected: list[int], complete: bool) -> None:
    window = filled(8).range(first, last, limit)
    assert [e.seq for e in window.events] == expected
    assert window.complete is complete
    assert (window.oldest, window.newest) == (4, 8)


def test_expires_by_age() -> None:
    history = filled(4, capacity=100, age=2500)
    assert history.oldest == 2  # stored at 1000 ms, older than 4000 - 2500
    history.expire(now_ms=10_000)
    assert len(history) == 0 and history.range(1, 4, 10).events == []


def test_a_new_run_of_sequence_numbers_clears_the_old_one() -> None:
    history = filled(8)
    history.append(1, b"h", b"new", now_ms=9000)
    assert (history.oldest, history.newest, len(history)) == (1, 1, 1)


def test_wraps_around_many_times() -> None:
    history = filled(1000, capacity=7)
    assert seqs(history, 990, 1000) == list(range(994, 1001))


def test_stored_bytes_are_exact_size_copies() -> None:
    history = History(2000, 1e12)
    tracemalloc.start()
    for seq in range(1, 2001):
        history.append(seq, orjson.dumps([seq]), orjson.dumps({"seq": seq}), now_ms=0)
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert used < 2000 * 1024  # orjson's own results would hold 4 KiB each: 8 MB here
