"""Counters every worker can read: one anonymous shared mapping made before the fork.

Each worker writes only its own row (see core/limits.py for why that needs no lock). A row holds
the worker's open connections, the minute its handshake counts belong to, and two count-min
sketches: open connections per address, and handshakes per address in that minute.
"""

from __future__ import annotations

import mmap

from core.limits import DEPTH, WIDTH, sketch_estimate, window_of

_HEADER_WORDS = 2  # connections, handshake window (int64 each)
_CELLS = DEPTH * WIDTH
_ROW_BYTES = _HEADER_WORDS * 8 + 2 * _CELLS * 4


class SharedCounters:
    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._memory = mmap.mmap(-1, rows * _ROW_BYTES)  # MAP_SHARED | MAP_ANONYMOUS: children share it
        self._headers = [self._view(row, 0, _HEADER_WORDS * 8).cast("q") for row in range(rows)]
        self._open = [self._view(row, _HEADER_WORDS * 8, _CELLS * 4).cast("i") for row in range(rows)]
        self._handshakes = [
            self._view(row, _HEADER_WORDS * 8 + _CELLS * 4, _CELLS * 4).cast("i") for row in range(rows)
        ]

    def _view(self, row: int, offset: int, length: int) -> memoryview:
        start = row * _ROW_BYTES + offset
        return memoryview(self._memory)[start : start + length]

    def writer(self, row: int) -> CounterRow:
        return CounterRow(self, row)

    def total_connections(self) -> int:
        return sum(header[0] for header in self._headers)

    def connections_from(self, cells: tuple[int, ...]) -> int:
        return sketch_estimate(self._open, cells)

    def handshakes_from(self, cells: tuple[int, ...], now: float) -> int:
        window = window_of(now)
        current = [self._handshakes[row] for row in range(self.rows) if self._headers[row][1] == window]
        return sketch_estimate(current, cells) if current else 0


class CounterRow:
    """One worker's own row: the only part of the mapping it writes."""

    def __init__(self, shared: SharedCounters, row: int) -> None:
        self.shared = shared  # every worker's rows, for reading the totals
        self._header = shared._headers[row]
        self._open = shared._open[row]
        self._handshakes = shared._handshakes[row]
        self.reset()

    def reset(self) -> None:
        """A worker starting in this row: whatever its predecessor counted died with it."""
        self._header[0] = 0
        self._header[1] = 0
        for cell in range(_CELLS):
            self._open[cell] = 0
            self._handshakes[cell] = 0

    def opened(self, cells: tuple[int, ...]) -> None:
        self._header[0] += 1
        for cell in cells:
            self._open[cell] += 1

    def closed(self, cells: tuple[int, ...]) -> None:
        self._header[0] -= 1
        for cell in cells:
            self._open[cell] -= 1

    def handshake(self, cells: tuple[int, ...], now: float) -> None:
        window = window_of(now)
        if self._header[1] != window:
            for cell in range(_CELLS):
                self._handshakes[cell] = 0
            self._header[1] = window
        for cell in cells:
            self._handshakes[cell] += 1
