"""Counters every process can read: anonymous shared mappings made before the fork.

Each process writes only its own row (see core/limits.py for why that needs no lock).
``SharedCounters``: a worker's open connections, the minute its handshake counts belong to, and two
count-min sketches (open connections per address, handshakes per address in that minute), for the
admission limits. ``SharedMetrics``: every process's counts for /metrics and /health.
"""

from __future__ import annotations

import mmap

from core.limits import DEPTH, WIDTH, sketch_estimate, window_of
from core.metrics import ROW_CELLS, Count, Gauge, bucket_cell, close_cell, error_cell, gauge_cell

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

    def clear(self, row: int) -> None:
        """Zero a row whose writer is gone (the supervisor calls it when a worker exits)."""
        CounterRow(self, row)  # a new row is a zeroed row

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


class SharedMetrics:
    """Every process's row of counts (core/metrics.py lays a row out); made before the fork."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._memory = mmap.mmap(-1, rows * ROW_CELLS * 8)
        self._rows = [
            memoryview(self._memory)[row * ROW_CELLS * 8 : (row + 1) * ROW_CELLS * 8].cast("q")
            for row in range(rows)
        ]

    def row(self, index: int) -> MetricsRow:
        return MetricsRow(self, index)

    def clear_levels(self, index: int) -> None:
        """A process is gone: its levels go with it; its counts stay in the totals."""
        self._rows[index][gauge_cell(Gauge.SUBSCRIPTIONS)] = 0

    def all_rows(self) -> list[memoryview]:
        return self._rows


class MetricsRow:
    """One process's own row: the only one it writes."""

    def __init__(self, shared: SharedMetrics, index: int) -> None:
        self.shared = shared
        self.cells = shared._rows[index]
        # Counters go on adding across a restart; a level is the new process's own.
        self.cells[gauge_cell(Gauge.SUBSCRIPTIONS)] = 0

    def count(self, count: Count, n: int = 1) -> None:
        self.cells[count] += n

    def error(self, code: str) -> None:
        cell = error_cell(code)
        if cell is not None:
            self.cells[cell] += 1

    def closed(self, code: int) -> None:
        self.cells[close_cell(code)] += 1

    def broadcast(self, recipients: int, payload_bytes: int, latency_ms: float | None) -> None:
        """One event sent to ``recipients`` clients: counted once, not once per client. No latency
        when the event's header does not say when it was published."""
        cells = self.cells
        cells[Count.BROADCASTS] += 1
        cells[Count.MESSAGES_SENT] += recipients
        cells[Count.BYTES_OUT] += payload_bytes
        if latency_ms is not None:
            self.latency(latency_ms)

    def latency(self, latency_ms: float) -> None:
        """One event's time from its publication to its write to the clients of this worker."""
        cells = self.cells
        cells[Count.LATENCY_SUM_US] += max(0, round(latency_ms * 1000))
        cells[bucket_cell(latency_ms)] += 1

    def add_gauge(self, gauge: Gauge, delta: int) -> None:
        self.cells[gauge_cell(gauge)] += delta

    def note_peak(self, connections: int) -> None:
        cell = gauge_cell(Gauge.PEAK_CONNECTIONS)
        if connections > self.cells[cell]:
            self.cells[cell] = connections
