"""How a broadcast reaches its clients: once per subscription group, in as few writes as possible.

The index says which subscription groups an event matches. Most clients hold one subscription and
nothing special (no resume under way, nothing to skip): they are the group's *direct* clients, and
an event costs them nothing at broadcast time but one append to the group's batch. When the batch
ends (the drain of the bus that found these events, or the operator's flush interval), the batch's
frames are joined once per frame variant (compressed or not) and each direct client gets the very
same bytes in one write: a burst of events costs a client one system call and no Python allocation.

Every other client (several subscriptions, whose events must be merged without duplicates; a resume
holding live events back; a floor to skip) is *slow*: it is handed each event as it comes, queued
in its own buffer and written once at the end of the batch too.

A client changes lane only between batches: ``place`` first writes what is batched, so no event is
sent twice or skipped when a client moves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from core.deflate import compress
from core.frames import text_frame
from core.index import SubscriptionIndex
from core.metrics import Count
from core.protocol import CloseCode, Disconnect
from core.routing import RoutingHeader
from workers.shared import MetricsRow

if TYPE_CHECKING:
    from workers.session import ClientSession

log = logging.getLogger("observatory.worker")


class Audience:
    """The clients of one subscription group, by lane, and the events batched for its direct ones."""

    __slots__ = (
        "_direct_snapshot",
        "_others_snapshot",
        "direct",
        "direct_count",
        "others",
        "pending",
        "sent",
    )

    def __init__(self) -> None:
        self.direct: dict[int, set[ClientSession]] = {}  # by the window bits of their frames (0: plain)
        self.direct_count = 0
        self.others: set[ClientSession] = set()
        self.pending: list[bytes] = []  # payloads batched for the direct clients, in bus order
        self.sent = 0  # events written to the direct clients so far: their messages_out, cheaply
        # Broadcasts iterate immutable copies, rebuilt only after a change: a client leaving during a
        # write cannot break the iteration, and steady state copies nothing.
        self._direct_snapshot: list[tuple[int, tuple[ClientSession, ...]]] | None = None
        self._others_snapshot: tuple[ClientSession, ...] | None = None

    def __bool__(self) -> bool:
        return self.direct_count > 0 or bool(self.others)

    def add(self, client: ClientSession, direct: bool, bits: int) -> None:
        if direct:
            self.direct.setdefault(bits, set()).add(client)
            self.direct_count += 1
            self._direct_snapshot = None
        else:
            self.others.add(client)
            self._others_snapshot = None

    def discard(self, client: ClientSession, direct: bool, bits: int) -> None:
        if direct:
            clients = self.direct[bits]
            clients.discard(client)
            if not clients:
                del self.direct[bits]
            self.direct_count -= 1
            self._direct_snapshot = None
        else:
            self.others.discard(client)
            self._others_snapshot = None

    def direct_clients(self) -> list[tuple[int, tuple[ClientSession, ...]]]:
        if self._direct_snapshot is None:
            self._direct_snapshot = [(bits, tuple(clients)) for bits, clients in self.direct.items()]
        return self._direct_snapshot

    def other_clients(self) -> tuple[ClientSession, ...]:
        if self._others_snapshot is None:
            self._others_snapshot = tuple(self.others)
        return self._others_snapshot


class Fanout:
    def __init__(
        self,
        index: SubscriptionIndex[ClientSession],
        metrics: MetricsRow,
        loop: asyncio.AbstractEventLoop,
        flush_interval: float,
        compression_threshold: int,
        compression_level: int,
        max_pending_bytes: int,
    ) -> None:
        self.index = index
        self.metrics = metrics
        self.loop = loop
        self.audiences: dict[str, Audience] = {}
        # Frames wait for the end of the batch: what one drain of the bus found (nothing waits for more
        # events, so a quiet stream's latency is untouched) or, if an operator asks, a flush interval,
        # so that a quiet stream's events share writes too.
        self.flush_interval = flush_interval
        self.corking = flush_interval > 0
        self.ready: list[Audience] = []  # audiences with events batched
        self.corked: list[ClientSession] = []  # slow clients with frames queued
        self._moving: list[ClientSession] = []  # to place again once the batch is written
        self._published: list[int] = []  # when the batch's events were published (ms), for the latency
        self._timer: asyncio.TimerHandle | None = None
        self._threshold = compression_threshold
        self._level = compression_level
        self._max_pending_bytes = max_pending_bytes
        self._framed_payload: bytes | None = None
        self._frames: dict[int, bytes] = {}

    # --- lanes ----------------------------------------------------------------------------------

    def place(self, client: ClientSession) -> None:
        """Put ``client`` in the lane its state calls for; call after any change to its subscriptions,
        its resume (held events, floor) or when it closes."""
        self.settle()
        self.remove(client)
        keys = client.subscription_keys
        if client.closed or not keys:
            return
        direct = len(keys) == 1 and client.held is None and client.floor == 0
        bits = client.deflate.server_window_bits if client.deflate is not None else 0
        for key in keys:
            audience = self.audiences.get(key)
            if audience is None:
                audience = self.audiences[key] = Audience()
            audience.add(client, direct, bits)
            if direct:
                client.sent_mark = audience.sent
        client.placed = (tuple(keys), direct, bits)

    def place_later(self, client: ClientSession) -> None:
        """Place ``client`` again once the current batch is written (its lane may not change mid-batch)."""
        self._moving.append(client)

    def remove(self, client: ClientSession) -> None:
        if client.placed is None:
            return
        keys, direct, bits = client.placed
        client.placed = None
        for key in keys:
            audience = self.audiences[key]
            if direct:
                client.messages_out += audience.sent - client.sent_mark
            audience.discard(client, direct, bits)
            if not audience:
                del self.audiences[key]

    # --- a broadcast ----------------------------------------------------------------------------

    def broadcast(self, header: RoutingHeader, payload: bytes) -> tuple[int, int]:
        """Batch the event for its groups' direct clients and queue it for their slow ones; return the
        recipients and the bytes queued for the slow ones (the direct ones' count when written)."""
        recipients = queued_bytes = 0
        slow: tuple[ClientSession, ...] | set[ClientSession] = ()
        audiences = self.audiences
        for key in self.index.match_keys(header):
            audience = audiences.get(key)
            if audience is None:
                continue  # its clients are closing: out of the lanes, not yet out of the index
            if audience.direct_count:
                if not audience.pending:
                    self.ready.append(audience)
                    self._arm()
                audience.pending.append(payload)
                recipients += audience.direct_count
            if audience.others:
                # A slow client in two matching groups must still get the event once.
                slow = audience.other_clients() if not slow else {*slow, *audience.others}
        seq = header.seq
        for client in slow:
            queued_bytes += client.send_event(seq, payload)
            recipients += 1
        if recipients and header.published_ms:
            self._published.append(header.published_ms)
        return recipients, queued_bytes

    def cork(self, client: ClientSession) -> None:
        """``client`` has frames queued: write them at the end of the batch."""
        self.corked.append(client)
        self._arm()

    def _arm(self) -> None:
        if self.flush_interval and self._timer is None:
            self._timer = self.loop.call_later(self.flush_interval, self.settle)

    def settle(self) -> None:
        """Write everything batched: each slow client's queue, then each group's batch to its direct
        clients (a client's replies queued in the batch go before the group's later events)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.corked:
            corked, self.corked = self.corked, []
            for client in corked:
                client.flush()
        if self.ready:
            ready, self.ready = self.ready, []
            for audience in ready:
                self._write(audience)
        if self._published:
            published, self._published = self._published, []
            written_ms = time.time() * 1000
            for published_ms in published:
                self.metrics.latency(written_ms - published_ms)
        if self._moving:
            moving, self._moving = self._moving, []
            for client in moving:
                if client.placed is not None:
                    self.place(client)

    def _write(self, audience: Audience) -> None:
        payloads, audience.pending = audience.pending, []
        audience.sent += len(payloads)
        threshold = self._threshold
        written = 0
        for bits, clients in audience.direct_clients():
            if len(payloads) == 1:
                payload = payloads[0]
                blob = self.framed(payload, bits if len(payload) >= threshold else 0)
            else:
                blob = b"".join([self.framed(p, bits if len(p) >= threshold else 0) for p in payloads])
            for client in clients:
                if client.closed:
                    continue
                client.raw.write(blob)
                if client.paused:
                    self.check_backlog(client)
            written += len(blob) * len(clients)
        self.metrics.count(Count.BYTES_OUT, written)

    def check_backlog(self, client: ClientSession) -> None:
        """A client too far behind is closed, never waited for."""
        if client.pending_bytes() > self._max_pending_bytes:
            log.warning("closing slow client %s: %d bytes unsent", client.id, client.pending_bytes())
            self.metrics.count(Count.SLOW_CONSUMERS)
            client.close(Disconnect(CloseCode.TRY_AGAIN_LATER, "slow consumer"))

    def framed(self, payload: bytes, window_bits: int) -> bytes:
        """``payload`` as a whole text frame, compressed with ``window_bits`` (0: not compressed),
        built once per payload and window size: every client given this payload shares the frame (and
        its one compression)."""
        if payload is not self._framed_payload:
            self._framed_payload, self._frames = payload, {}
        frame = self._frames.get(window_bits)
        if frame is None:
            if window_bits:
                frame = text_frame(compress(payload, window_bits, self._level), True)
                self.metrics.count(Count.COMPRESSIONS)
            else:
                frame = text_frame(payload)
            self._frames[window_bits] = frame
        return frame
