"""The ingest process: producers in (PULL), sequenced events out (PUB), state queries (ROUTER).

All three sockets are read on one uvloop loop through ZeroMQ's file descriptor, each read drained
in bounded batches so that neither producers nor queries can starve the other.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import time
from collections.abc import Callable

import orjson
import zmq

from core.config import Settings
from core.errors import BootError
from core.history import History
from core.ingest import Control, IngestPipeline, Published
from core.metrics import Count
from core.queries import answer_history, answer_query
from core.ratelimit import TokenBucket
from core.state import LiveState
from workers.child import Liveness
from workers.curve import BusKeys, bus_keys, start_gatekeeper
from workers.shared import MetricsRow
from workers.zmqio import bind, drain_batch

log = logging.getLogger("observatory.ingest")

BATCH = 512
# ZeroMQ disconnects a peer whose message exceeds MAXMSGSIZE; keep that hard ceiling well above
# max_event_bytes so an oversized event is dropped politely and its producer stays connected.
MAXMSGSIZE_FACTOR = 16


class Ingest:
    def __init__(
        self,
        settings: Settings,
        context: zmq.Context[zmq.Socket[bytes]],
        metrics: MetricsRow,
        curve: BusKeys | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.epoch = secrets.token_hex(8)
        self.state = LiveState(
            settings.max_active_conversations,
            settings.activity_retention * 1000,
            settings.activity_bucket * 1000,
        )
        self.pipeline = IngestPipeline(self.epoch, self.state, settings.max_event_bytes)
        self.history = History(settings.history_size, settings.history_age * 1000)
        self._beat: asyncio.TimerHandle | None = None
        hwm = settings.bus_high_water_mark
        self.pull = bind(
            context,
            zmq.PULL,
            settings.ingest_endpoint,
            "ingest_endpoint",
            rcvhwm=hwm,
            maxmsgsize=max(settings.max_event_bytes * MAXMSGSIZE_FACTOR, 1 << 24),
            curve=curve,
        )
        self.pub = bind(context, zmq.PUB, settings.bus_endpoint, "bus_endpoint", sndhwm=hwm, curve=curve)
        self.router = bind(context, zmq.ROUTER, settings.query_endpoint, "query_endpoint", curve=curve)
        self.rejected = 0
        self._rejected_unlogged = 0
        self._log_budget = TokenBucket(rate=1.0, capacity=5, now=time.monotonic())

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.pull.FD, self._on_producers)
        loop.add_reader(self.router.FD, self._on_queries)
        self._send_beat(loop)
        # The FDs are edge-triggered: anything queued before the readers existed must be read now.
        loop.call_soon(self._on_producers)
        loop.call_soon(self._on_queries)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self.pull.FD)
        loop.remove_reader(self.router.FD)
        if self._beat is not None:
            self._beat.cancel()

    def _send_beat(self, loop: asyncio.AbstractEventLoop) -> None:
        """Tell the workers the epoch and the newest seq: a lost last event or a new run shows."""
        beat = orjson.dumps({"epoch": self.epoch, "seq": self.pipeline.seq})
        try:
            self.pub.send_multipart((b"control", b"beat", beat), zmq.NOBLOCK)
        except zmq.Again:
            pass
        self.history.expire(time.time() * 1000)
        self._beat = loop.call_later(self.settings.bus_beat_interval, self._send_beat, loop)

    def _on_producers(self) -> None:
        self._publish(BATCH, self._on_producers)

    def flush(self) -> None:
        """Publish whatever producers sent before the stop, then give up the sockets."""
        self._publish(self.settings.bus_high_water_mark, None)
        for sock in (self.pull, self.pub, self.router):
            sock.close(linger=1000)

    def _publish(self, limit: int, resume: Callable[[], None] | None) -> None:
        for frames in drain_batch(self.pull, limit, resume):
            if len(frames) != 1:
                self._reject(f"expected one frame, got {len(frames)}")
                continue
            now = time.time() * 1000
            outcome = self.pipeline.accept(frames[0], now)
            if isinstance(outcome, Published):
                header = outcome.header.encode()
                self.history.append(outcome.header.seq, header, outcome.payload, int(now))
                self.metrics.count(Count.EVENTS_ACCEPTED)
                message: tuple[bytes, ...] = (header, outcome.payload)
            elif isinstance(outcome, Control):
                # Three frames: workers tell control from events by the count, clients never see it.
                message = (b"control", outcome.kind.encode(), outcome.payload)
            else:
                self._reject(outcome.reason)
                continue
            try:
                self.pub.send_multipart(message, zmq.NOBLOCK)
            except zmq.Again:
                pass  # PUB never blocks; at the high-water mark ZeroMQ drops for slow subscribers

    def _reject(self, reason: str) -> None:
        self.rejected += 1
        self.metrics.count(Count.EVENTS_REJECTED)
        if self._log_budget.take(time.monotonic()):
            suppressed = f" ({self._rejected_unlogged} more not logged)" if self._rejected_unlogged else ""
            log.warning("dropped producer message: %s%s", reason, suppressed)
            self._rejected_unlogged = 0
        else:
            self._rejected_unlogged += 1

    def _on_queries(self) -> None:
        for frames in drain_batch(self.router, BATCH, self._on_queries):
            if len(frames) != 3:
                continue  # not a worker of ours: a query is [identity, query id, body]
            identity, query_id, body = frames
            history = answer_history(self.history, body)
            answer = (
                history if history is not None else [answer_query(self.state, body, int(time.time() * 1000))]
            )
            try:
                self.router.send_multipart((identity, query_id, *answer), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the worker is gone or saturated; its own timeout answers the client


async def serve(settings: Settings, metrics: MetricsRow, beat_fd: int, parent_pid: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    gatekeeper = None
    try:
        curve = bus_keys(settings)
        if curve is not None:
            gatekeeper = start_gatekeeper(context, curve)
        ingest = Ingest(settings, context, metrics, curve)
    except BootError:
        if gatekeeper is not None:
            gatekeeper.stop()
        context.destroy(linger=0)
        raise
    ingest.attach(loop)
    liveness = Liveness(beat_fd, parent_pid, stop.set)
    liveness.start()
    log.info(
        "ingest ready: producers %s, bus %s, queries %s, epoch %s",
        settings.ingest_endpoint,
        settings.bus_endpoint,
        settings.query_endpoint,
        ingest.epoch,
    )
    await stop.wait()
    liveness.stop()
    ingest.detach(loop)
    ingest.flush()
    if gatekeeper is not None:
        gatekeeper.stop()
    context.term()
    log.info(
        "ingest stopped after seq %d (%d producer messages rejected)", ingest.pipeline.seq, ingest.rejected
    )
