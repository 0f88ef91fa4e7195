"""Deadlines for many keys in one heap: what is due, and when the next one is.

A worker must close each connection when its token expires. One timer per connection costs a
timer handle and a bound method each (about 650 bytes); this heap costs one small tuple each, and
the worker keeps a single timer for the earliest deadline.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

KeyT = TypeVar("KeyT", bound=Hashable)


class Deadlines(Generic[KeyT]):
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, KeyT]] = []
        self._current: dict[KeyT, float] = {}  # each key's one live deadline
        self._pushed = 0  # ties broken by insertion order; keys need not be comparable

    def __len__(self) -> int:
        return len(self._current)

    def set(self, key: KeyT, deadline: float | None) -> None:
        """Give ``key`` this deadline (None: none), replacing the one it had."""
        if deadline is None:
            self._current.pop(key, None)
        else:
            self._current[key] = deadline
            self._pushed += 1
            heapq.heappush(self._heap, (deadline, self._pushed, key))
        if len(self._heap) > 2 * len(self._current) + 64:
            self._compact()  # replaced and dropped entries are skipped lazily; never let them pile up

    def discard(self, key: KeyT) -> None:
        self.set(key, None)

    def due(self, now: float) -> list[KeyT]:
        """The keys whose deadline is at or before ``now``, each removed."""
        heap, current = self._heap, self._current
        expired: list[KeyT] = []
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            if current.get(key) == deadline:
                del current[key]
                expired.append(key)
        return expired

    def next(self) -> float | None:
        """The earliest live deadline, if any."""
        heap, current = self._heap, self._current
        while heap and current.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if self._current.get(entry[2]) == entry[0]]
        heapq.heapify(self._heap)
