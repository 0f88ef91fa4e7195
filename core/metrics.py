"""What the server counts, how a row of counts is laid out, and what the counts say about health.

Every process of the server (each worker, the ingest, the watcher) owns one row of int64 cells in a
memory shared by all of them; it writes only its own row, so no lock is needed, and any worker sums
every row to answer ``/metrics`` and ``/health`` with the totals of the whole server. This module is
the layout and the arithmetic; ``workers/shared.py`` holds the memory.

Counting is done per broadcast, not per client write: a broadcast to 500 clients adds 500 to
``messages_sent`` once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from core.protocol import CloseCode, ErrorCode


class Count(IntEnum):
    """Counters: they only grow, and survive a worker's restart (its successor keeps adding)."""

    CONNECTIONS_OPENED = 0
    HANDSHAKES_REFUSED = 1
    MESSAGES_SENT = 2  # live events sent to clients (replies and replays are not counted)
    MESSAGES_RECEIVED = 3  # whole client messages
    MESSAGES_FAILED = 4  # a send to a connection already closing
    MESSAGES_DROPPED = 5  # events never delivered: lost on the bus, or held for a connection that closed
    BYTES_OUT = 6  # bytes written for those events: whole frames, compressed when compressed
    BYTES_IN = 7
    BROADCASTS = 8  # bus events that matched at least one client of the worker
    RATE_LIMITED = 9
    SLOW_CONSUMERS = 10  # connections closed with 1013 for falling behind
    GAPS_REPAIRED = 11  # holes in the bus filled from history
    EVENTS_REPAIRED = 12
    EVENTS_LOST = 13
    EVENTS_ACCEPTED = 14  # the ingest: producer messages published on the bus
    EVENTS_REJECTED = 15  # the ingest: producer messages refused
    COMPRESSIONS = 16  # deflate runs: one per broadcast and window size, not per client
    WATCHER_LINES = 17  # transcript lines the watcher read
    WATCHER_SKIPPED = 18  # of those, passed over: malformed, unknown types, duplicates, too long
    WATCHER_EVENTS = 19  # events the watcher handed to the ingest
    LATENCY_SUM_US = 20  # of the broadcast latency histogram, in microseconds


class Gauge(IntEnum):
    """Levels of one process: reset when a successor starts in the row."""

    SUBSCRIPTIONS = 0
    PEAK_CONNECTIONS = 1  # the highest server-wide connection count this row has seen (kept on reset)


ERROR_CODES: tuple[str, ...] = (
    ErrorCode.INVALID_MESSAGE,
    ErrorCode.UNKNOWN_MESSAGE_TYPE,
    ErrorCode.INVALID_FILTERS,
    ErrorCode.TOO_MANY_SUBSCRIPTIONS,
    ErrorCode.SUBSCRIPTION_NOT_FOUND,
    ErrorCode.RATE_LIMIT_EXCEEDED,
    ErrorCode.QUERY_TIMEOUT,
    ErrorCode.QUERY_FAILED,
    ErrorCode.UNAUTHORIZED,
)
CLOSE_CODES: tuple[int, ...] = (
    CloseCode.NORMAL,
    CloseCode.GOING_AWAY,
    CloseCode.PROTOCOL_ERROR,
    1003,
    CloseCode.INVALID_TEXT,
    CloseCode.POLICY_VIOLATION,
    CloseCode.MESSAGE_TOO_BIG,
    CloseCode.INTERNAL_ERROR,
    CloseCode.TRY_AGAIN_LATER,
    CloseCode.TOKEN_EXPIRED,
    CloseCode.SESSION_REVOKED,
    1006,  # no close frame: the connection dropped
    0,  # any other code
)
# Broadcast latency, from the ingest publishing an event to the worker's write to its last matching
# client, in milliseconds: fine below a millisecond, where a healthy server lives.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 10000.0,
)  # fmt: skip

_ERRORS_AT = len(Count)
_CLOSES_AT = _ERRORS_AT + len(ERROR_CODES)
_BUCKETS_AT = _CLOSES_AT + len(CLOSE_CODES)
_GAUGES_AT = _BUCKETS_AT + len(LATENCY_BUCKETS_MS) + 1  # + the +Inf bucket
ROW_CELLS = _GAUGES_AT + len(Gauge)
_ERROR_CELL = {code: _ERRORS_AT + i for i, code in enumerate(ERROR_CODES)}
_CLOSE_CELL = {code: _CLOSES_AT + i for i, code in enumerate(CLOSE_CODES)}


def count_cell(count: Count) -> int:
    return int(count)


def error_cell(code: str) -> int | None:
    return _ERROR_CELL.get(code)


def close_cell(code: int) -> int:
    return _CLOSE_CELL.get(code, _CLOSE_CELL[0])


def gauge_cell(gauge: Gauge) -> int:
    return _GAUGES_AT + int(gauge)


def bucket_cell(latency_ms: float) -> int:
    """The cell of the (non-cumulative) bucket this latency falls in."""
    for i, bound in enumerate(LATENCY_BUCKETS_MS):
        if latency_ms <= bound:
            return _BUCKETS_AT + i
    return _BUCKETS_AT + len(LATENCY_BUCKETS_MS)


@dataclass(frozen=True, slots=True)
class Totals:
    """The sum of every row: the whole server's figures."""

    counts: dict[Count, int]
    errors: dict[str, int]
    closes: dict[int, int]
    buckets: tuple[int, ...]  # per bucket, not cumulative; the last is +Inf
    subscriptions: int
    peak_connections: int
    connections: int  # open now, from the admission counters

    @property
    def latency_count(self) -> int:
        return sum(self.buckets)

    @property
    def latency_sum_ms(self) -> float:
        return self.counts[Count.LATENCY_SUM_US] / 1000

    @property
    def errors_total(self) -> int:
        return sum(self.errors.values())


def totals(rows: Sequence[Sequence[int]], connections: int) -> Totals:
    def column(cell: int) -> int:
        return sum(row[cell] for row in rows)

    return Totals(
        counts={count: column(count_cell(count)) for count in Count},
        errors={code: column(_ERROR_CELL[code]) for code in ERROR_CODES},
        closes={code: column(_CLOSE_CELL[code]) for code in CLOSE_CODES},
        buckets=tuple(column(_BUCKETS_AT + i) for i in range(len(LATENCY_BUCKETS_MS) + 1)),
        subscriptions=column(gauge_cell(Gauge.SUBSCRIPTIONS)),
        peak_connections=max((row[gauge_cell(Gauge.PEAK_CONNECTIONS)] for row in rows), default=0),
        connections=connections,
    )


# --- health ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    memory_bytes: int  # total RSS above it: warning
    error_rate: float  # errors per client message above it: unhealthy
    latency_ms: float  # mean broadcast latency above it: warning


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # "ok", "info", "warning" or "unhealthy"
    value: float
    threshold: float | None
    message: str

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class Health:
    status: str  # "healthy", "warning" or "unhealthy"
    checks: tuple[Check, ...]

    @property
    def http_status(self) -> int:
        return 503 if self.status == "unhealthy" else 200


def evaluate_health(before: Totals, now: Totals, rss_bytes: int, thresholds: HealthThresholds) -> Health:
    """The specification's checks over the window between two samples of the totals (so an old burst
    of errors does not keep a server unhealthy forever)."""
    received = now.counts[Count.MESSAGES_RECEIVED] - before.counts[Count.MESSAGES_RECEIVED]
    errors = now.errors_total - before.errors_total
    error_rate = errors / received if received else 0.0
    broadcasts = now.latency_count - before.latency_count
    latency = (now.latency_sum_ms - before.latency_sum_ms) / broadcasts if broadcasts else 0.0
    checks = (
        Check(
            "memory",
            "warning" if rss_bytes > thresholds.memory_bytes else "ok",
            rss_bytes,
            thresholds.memory_bytes,
            f"{rss_bytes / 1_048_576:.0f} MiB resident across the server's processes",
        ),
        Check(
            "error_rate",
            "unhealthy" if error_rate > thresholds.error_rate else "ok",
            round(error_rate, 4),
            thresholds.error_rate,
            f"{errors} errors for {received} client messages",
        ),
        Check(
            "latency",
            "warning" if latency > thresholds.latency_ms else "ok",
            round(latency, 3),
            thresholds.latency_ms,
            f"mean broadcast latency over {broadcasts} broadcasts, ms",
        ),
        Check(
            "connections",
            "info" if now.connections == 0 else "ok",
            now.connections,
            None,
            "no client is connected" if now.connections == 0 else f"{now.connections} connected",
        ),
    )
    statuses = {check.status for check in checks}
    status = "unhealthy" if "unhealthy" in statuses else "warning" if "warning" in statuses else "healthy"
    return Health(status, checks)
