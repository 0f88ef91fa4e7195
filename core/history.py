"""The ingest's recent events, kept in seq order and served by range for gap repair and resume.

Bounded by count and by age. Sequence numbers are consecutive, so a range is found by arithmetic,
not by search.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    header: bytes
    payload: bytes
    stored_ms: float


@dataclass(frozen=True, slots=True)
class HistorySlice:
    events: list[StoredEvent]
    # False when the start of the range is older than anything kept: a hole the caller cannot fill.
    complete: bool
    oldest: int  # oldest seq kept (0: nothing kept)
    newest: int


class History:
    """A ring of ``max_events`` slots: O(1) to add, expire, and reach any seq it holds."""

    def __init__(self, max_events: int, max_age_ms: float) -> None:
        self.max_events = max_events
        self.max_age_ms = max_age_ms
        self._ring: list[StoredEvent | None] = [None] * max_events
        self._first = 0  # ring index of the oldest event
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _at(self, offset: int) -> StoredEvent:
        event = self._ring[(self._first + offset) % self.max_events]
        assert event is not None
        return event

    @property
    def oldest(self) -> int:
        return self._at(0).seq if self._count else 0

    @property
    def newest(self) -> int:
        return self._at(self._count - 1).seq if self._count else 0

    def append(self, seq: int, header: bytes, payload: bytes, now_ms: float) -> None:
        if self._count and seq != self.newest + 1:
            self.clear()  # a new run of sequence numbers (a new epoch): nothing older applies
        if self._count == self.max_events:
            self._drop_oldest()
        # orjson gives each result an allocation of at least 4 KiB whatever its length; an exact-size
        # copy makes a history of 100,000 small events cost megabytes, not 800 MB.
        event = StoredEvent(seq, bytes(memoryview(header)), bytes(memoryview(payload)), now_ms)
        self._ring[(self._first + self._count) % self.max_events] = event
        self._count += 1
        self.expire(now_ms)

    def _drop_oldest(self) -> None:
        self._ring[self._first] = None
        self._first = (self._first + 1) % self.max_events
        self._count -= 1

    def clear(self) -> None:
        self._ring = [None] * self.max_events
        self._first = self._count = 0

    def expire(self, now_ms: float) -> None:
        horizon = now_ms - self.max_age_ms
        while self._count and self._at(0).stored_ms < horizon:
            self._drop_oldest()

    def range(self, first: int, last: int, limit: int) -> HistorySlice:
        """Events with ``first <= seq <= last``, at most ``limit`` of them, oldest first."""
        oldest, newest = self.oldest, self.newest
        if not self._count or last < first:
            return HistorySlice([], complete=last < first, oldest=oldest, newest=newest)
        start = max(first, oldest)
        stop = min(last, newest, start + limit - 1)
        events = [self._at(seq - oldest) for seq in range(start, stop + 1)]
        return HistorySlice(events, complete=first >= oldest, oldest=oldest, newest=newest)
