"""A worker's answers to /metrics and /health: the whole server's totals, from the shared rows.

The Prometheus text is written by the official client library (``prometheus_client``), from a
collector that reads the shared rows at scrape time: the library owns the exposition format (names,
escaping, cumulative ``le`` buckets), while counting stays a plain integer add in shared memory.
Its own multiprocess mode was not used: it keeps a file per process and takes a lock per increment,
where a row of int64 cells per process needs neither.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from core.metrics import (
    LATENCY_BUCKETS_MS,
    Count,
    Health,
    HealthThresholds,
    Totals,
    evaluate_health,
    totals,
)
from workers.shared import SharedCounters, SharedMetrics

HEALTH_WINDOW = 60.0  # seconds of counts /health judges
SAMPLE_EVERY = 5.0

# (metric name, help, the count it reports)
COUNTERS: tuple[tuple[str, str, Count], ...] = (
    ("connections_opened", "WebSocket connections accepted.", Count.CONNECTIONS_OPENED),
    ("handshakes_refused", "Handshakes refused with 401, 403, 429 or 503.", Count.HANDSHAKES_REFUSED),
    ("messages_sent", "Live events sent to clients, one per client.", Count.MESSAGES_SENT),
    ("messages_received", "Whole messages received from clients.", Count.MESSAGES_RECEIVED),
    ("messages_failed", "Sends to a connection that was already closing.", Count.MESSAGES_FAILED),
    ("messages_dropped", "Events lost on the bus, or held for a client that left.", Count.MESSAGES_DROPPED),
    (
        "bytes_out",
        "Bytes written for those events: whole frames, compressed when compressed.",
        Count.BYTES_OUT,
    ),
    ("bytes_in", "Payload bytes received from clients.", Count.BYTES_IN),
    ("broadcasts", "Bus events that matched at least one client of a worker.", Count.BROADCASTS),
    ("rate_limited", "Client messages refused by the rate limit.", Count.RATE_LIMITED),
    ("slow_consumers", "Connections closed with 1013 for falling behind.", Count.SLOW_CONSUMERS),
    ("bus_gaps_repaired", "Holes in the bus filled from the ingest's history.", Count.GAPS_REPAIRED),
    ("bus_events_repaired", "Events recovered from history to fill holes.", Count.EVENTS_REPAIRED),
    ("bus_events_lost", "Events history could no longer provide.", Count.EVENTS_LOST),
    ("ingest_events_accepted", "Producer messages the ingest published.", Count.EVENTS_ACCEPTED),
    ("ingest_events_rejected", "Producer messages the ingest refused.", Count.EVENTS_REJECTED),
    ("compressions", "Deflate runs: one per broadcast and window size, not per client.", Count.COMPRESSIONS),
    ("watcher_lines", "Transcript lines the watcher read.", Count.WATCHER_LINES),
    (
        "watcher_lines_skipped",
        "Transcript lines passed over (malformed, unknown, duplicate, too long).",
        Count.WATCHER_SKIPPED,
    ),
    ("watcher_events", "Events the watcher handed to the ingest.", Count.WATCHER_EVENTS),
)


@dataclass(frozen=True, slots=True)
class ProcessStats:
    name: str
    pid: int
    cpu_seconds: float
    rss_bytes: int

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "pid": self.pid,
            "cpuSeconds": self.cpu_seconds,
            "rssBytes": self.rss_bytes,
        }


class ServerView:
    """What one worker reads of the whole server."""

    def __init__(
        self,
        counters: SharedCounters,
        metrics: SharedMetrics,
        supervisor_pid: int,
        thresholds: HealthThresholds,
    ) -> None:
        self.counters = counters
        self.metrics = metrics
        self.supervisor_pid = supervisor_pid
        self.thresholds = thresholds
        self._samples: deque[tuple[float, Totals]] = deque()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)  # type: ignore[arg-type]

    def totals(self) -> Totals:
        return totals(self.metrics.all_rows(), self.counters.total_connections())

    def sample(self) -> None:
        """Called every SAMPLE_EVERY seconds: keeps HEALTH_WINDOW of totals to judge health over."""
        now = time.monotonic()
        self._samples.append((now, self.totals()))
        while self._samples and now - self._samples[0][0] > HEALTH_WINDOW + SAMPLE_EVERY:
            self._samples.popleft()

    def health(self) -> tuple[Health, list[ProcessStats]]:
        now = self.totals()
        before = self._samples[0][1] if self._samples else now
        processes = self.processes()
        rss = sum(process.rss_bytes for process in processes)
        return evaluate_health(before, now, rss, self.thresholds), processes

    def processes(self) -> list[ProcessStats]:
        """CPU seconds and resident memory of the supervisor and each of its children."""
        found = []
        try:
            supervisor = psutil.Process(self.supervisor_pid)
            family = [supervisor, *supervisor.children()]
        except psutil.Error:
            return []
        for process in family:
            with contextlib.suppress(psutil.Error), process.oneshot():
                cpu = process.cpu_times()
                found.append(
                    ProcessStats(
                        process.name(),
                        process.pid,
                        round(cpu.user + cpu.system, 3),
                        process.memory_info().rss,
                    )
                )
        return found

    def prometheus(self) -> bytes:
        return generate_latest(self._registry)

    # --- the collector ---------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        now = self.totals()
        for name, help_text, count in COUNTERS:
            family = CounterMetricFamily(f"observatory_{name}", help_text)
            family.add_metric([], now.counts[count])
            yield family
        errors = CounterMetricFamily(
            "observatory_errors", "Errors sent to clients, by code.", labels=["code"]
        )
        for code, value in now.errors.items():
            errors.add_metric([code], value)
        yield errors
        closes = CounterMetricFamily(
            "observatory_connections_closed",
            "Connections closed, by close code (0: any other).",
            labels=["code"],
        )
        for close_code, value in now.closes.items():
            closes.add_metric([str(close_code)], value)
        yield closes
        yield _gauge("observatory_connections_active", "Open WebSocket connections.", now.connections)
        yield _gauge("observatory_connections_peak", "Most connections open at once.", now.peak_connections)
        yield _gauge(
            "observatory_subscriptions", "Subscriptions held by open connections.", now.subscriptions
        )
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS_MS, float("inf")), now.buckets, strict=True):
            cumulative += count
            buckets.append((_seconds_label(bound), cumulative))
        latency = HistogramMetricFamily(
            "observatory_broadcast_latency_seconds",
            "From the ingest publishing an event to the write to its last matching client of a worker.",
        )
        latency.add_metric([], buckets, now.latency_sum_ms / 1000)
        yield latency
        cpu = CounterMetricFamily(
            "observatory_process_cpu_seconds", "CPU time of each process.", labels=["process", "pid"]
        )
        rss = GaugeMetricFamily(
            "observatory_process_resident_memory_bytes",
            "Resident memory of each process.",
            labels=["process", "pid"],
        )
        for process in self.processes():
            labels = [process.name, str(process.pid)]
            cpu.add_metric(labels, process.cpu_seconds)
            rss.add_metric(labels, process.rss_bytes)
        yield cpu
        yield rss


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text)
    family.add_metric([], value)
    return family


def _seconds_label(bound_ms: float) -> str:
    return "+Inf" if bound_ms == float("inf") else repr(bound_ms / 1000)
