"""The WebSocket worker process: picows on uvloop, one of N sharing the port with SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
from collections.abc import Callable

import zmq

from core.config import Settings
from core.errors import BootError
from core.metrics import HealthThresholds
from workers.child import Liveness
from workers.hub import Hub
from workers.keys import AuthSetup
from workers.metrics import SAMPLE_EVERY, ServerView
from workers.server import create_server
from workers.shared import CounterRow, MetricsRow

log = logging.getLogger("observatory.worker")

LISTEN_BACKLOG = 4096
DRAIN_GRACE = 2.0


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.ssl_cert_path:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.ssl_cert_path, settings.ssl_key_path)
    except (OSError, ssl.SSLError) as exc:
        raise BootError(f"cannot load the TLS certificate or key: {exc}") from None
    return context


# Connections are freed by reference counting (their objects form no cycles once closed), so the
# cyclic collector only finds what is long-lived anyway; with the defaults its full passes over
# thousands of connections were the handshake tail (10,000 connections ramped at 1,000/s: p99
# 178-371 ms; with this, 16-47 ms; perf/README.md).
GC_THRESHOLDS = (20_000, 50, 100)


def tune_garbage_collector() -> None:
    """Boot-time objects out of every later collection, and collections a few times rarer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(
    settings: Settings,
    auth: AuthSetup,
    counters: CounterRow,
    metrics: MetricsRow,
    worker_id: int,
    beat_fd: int,
    parent_pid: int,
) -> None:
    loop = asyncio.get_running_loop()
    tune_garbage_collector()
    stop = asyncio.Event()
    # SIGTERM: the server stops; keep listening so new handshakes get 503 while clients drain.
    # SIGUSR2: a successor has taken over the port; stop listening at once so it gets the newcomers.
    handing_over = False

    def hand_over() -> None:
        nonlocal handing_over
        handing_over = True
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR2, hand_over)
    tls = tls_context(settings)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    thresholds = HealthThresholds(
        settings.health_memory_bytes, settings.health_error_rate, settings.health_latency_ms
    )
    view = ServerView(counters.shared, metrics.shared, parent_pid, thresholds)
    hub = Hub(settings, worker_id, auth, counters, metrics, view, context, loop)
    sampler = _Every(loop, SAMPLE_EVERY, view.sample)
    try:
        server = await create_server(
            hub.listener_for,
            settings.host,
            settings.port,
            handshake_timeout=settings.handshake_timeout,
            max_frame_size=settings.max_message_bytes,
            ssl_context=tls,
            backlog=LISTEN_BACKLOG,
        )
    except OSError as exc:
        sampler.cancel()
        hub.detach()
        context.term()
        raise BootError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}") from None
    hub.attach()
    liveness = Liveness(beat_fd, parent_pid, stop.set)
    liveness.start()
    log.info("worker %d serving %s://%s:%d/", worker_id, "wss" if tls else "ws", settings.host, settings.port)

    await stop.wait()
    if handing_over:
        server.close()
    await hub.drain(settings.drain_window, DRAIN_GRACE)
    server.close()
    liveness.stop()
    sampler.cancel()
    hub.detach()
    context.term()
    log.info("worker %d stopped", worker_id)


class _Every:
    """Calls ``action`` every ``interval`` seconds on the loop, from now until cancelled."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float, action: Callable[[], None]) -> None:
        self.loop, self.interval, self.action = loop, interval, action
        self.handle = loop.call_soon(self._run)

    def _run(self) -> None:
        self.action()
        self.handle = self.loop.call_later(self.interval, self._run)

    def cancel(self) -> None:
        self.handle.cancel()
