"""One WebSocket connection: frames in (reassembled, bounded), bytes out, backpressure noted.

picows hands over raw frames; this listener turns them into whole messages for the hub and
answers the close handshake. Everything the connection *means* lives in the hub and ``core``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from core.auth import Principal
from core.deflate import Corrupt, Deflate, Inflater, TooBig
from core.metrics import Count
from core.protocol import ClientInfo, CloseCode, Disconnect, close_echo_code
from core.ratelimit import MessageLimiter

if TYPE_CHECKING:
    from workers.hub import Hub

TEXT = WSMsgType.TEXT
PONG = WSMsgType.PONG
CLOSE_LINGER = 1.0  # seconds to wait for the peer's close frame before closing TCP ourselves
CLOSE_GRACE = 5.0  # seconds a closed peer has to read what is queued, the close frame last


class ClientSession(WSListener):
    # Slots: a worker holds thousands of these, and a dict per instance was 1.5 KB of each.
    __slots__ = (
        "_fragments",
        "_fragments_binary",
        "_fragments_compressed",
        "_threshold",
        "address",
        "address_cells",
        "client_info",
        "close_code",
        "close_reason",
        "closed",
        "deflate",
        "floor",
        "held",
        "held_bytes",
        "hub",
        "id",
        "inflater",
        "last_heard",
        "limiter",
        "messages_in",
        "messages_out",
        "opened_at",
        "out",
        "paused",
        "ping_sent_at",
        "placed",
        "principal",
        "raw",
        "resumed",
        "sent_mark",
        "subscription_keys",
        "transport",
    )

    def __init__(
        self, hub: Hub, client_id: str, principal: Principal, address_cells: tuple[int, ...]
    ) -> None:
        self.hub = hub
        self.id = client_id
        self.principal = principal
        self.address_cells = address_cells
        self.transport: WSTransport | None = None
        self.subscription_keys: set[str] = set()
        self.client_info: ClientInfo | None = None
        # While a resume replays history, live events wait here so they follow the replay in order.
        self.held: list[tuple[int, bytes]] | None = None
        self.held_bytes = 0
        self.resumed = False
        # No event at or below this seq is sent: the client had it before it resumed. It matters when
        # the client resumes on a worker a few events behind the one it left.
        self.floor = 0
        self.limiter = MessageLimiter(
            hub.settings.message_rate_limit, hub.settings.message_rate_burst, time.monotonic()
        )
        self.paused = False
        self.closed = False
        # Heartbeats: when the latest frame arrived, and when the ping awaiting its pong went out.
        self.last_heard = time.monotonic()
        self.ping_sent_at: float | None = None
        self.raw: asyncio.WriteTransport  # set on connection
        self.out: list[bytes] = []  # frames waiting for the end of the batch
        # The fan-out's lanes this client is in: (subscription keys, direct, window bits), and for a
        # direct client how many of its group's events had been written when it joined.
        self.placed: tuple[tuple[str, ...], bool, int] | None = None
        self.sent_mark = 0
        self.close_code = 1006  # until a close frame says otherwise: the connection just dropped
        self.close_reason = ""
        self.address = "?"
        self.opened_at = time.monotonic()
        self.messages_in = 0
        self.messages_out = 0  # counted here, per connection, for the access log
        self._fragments: bytearray | None = None
        self._fragments_binary = False
        self._fragments_compressed = False
        self.deflate: Deflate | None = None  # permessage-deflate, if the handshake agreed it
        self.inflater: Inflater | None = None
        self._threshold = hub.settings.compression_threshold

    # --- picows callbacks -------------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        # Frames are built by the hub and written here as bytes: the socket's own transport.
        self.raw = transport.underlying_transport
        self.hub.on_connected(self)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self.hub.on_disconnected(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self.last_heard = time.monotonic()
        kind = frame.msg_type
        if (self.closed or transport.is_close_frame_sent) and kind != WSMsgType.CLOSE:
            # Closing: the peer's answer is all we wait for. picows may have closed by itself (a frame
            # over max_frame_size gets 1009) and still hand over the rest of what it parses.
            return
        # RFC 6455 5.2 and RFC 7692 6: RSV1 marks the first frame of a compressed message, and only
        # when compression was agreed; no other reserved bit has a meaning here.
        first_of_message = kind == TEXT or kind == WSMsgType.BINARY
        if frame.rsv2 or frame.rsv3 or (frame.rsv1 and (self.inflater is None or not first_of_message)):
            self.close(Disconnect(CloseCode.PROTOCOL_ERROR, "reserved bits set"))
            return
        if kind == PONG:
            self.ping_sent_at = None  # only a pong answers a ping
            return
        if first_of_message:
            if self._fragments is not None:
                self.close(Disconnect(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one"))
            elif frame.fin:
                self._deliver(frame.get_payload_as_bytes(), kind == WSMsgType.BINARY, frame.rsv1)
            else:
                self._fragments = bytearray(frame.get_payload_as_memoryview())
                self._fragments_binary = kind == WSMsgType.BINARY
                self._fragments_compressed = frame.rsv1
        elif kind == WSMsgType.CONTINUATION:
            if self._fragments is None:
                self.close(Disconnect(CloseCode.PROTOCOL_ERROR, "continuation frame outside a message"))
                return
            self._fragments += frame.get_payload_as_memoryview()
            if len(self._fragments) > self.hub.settings.max_message_bytes:
                self._fragments = None
                self.close(Disconnect(CloseCode.MESSAGE_TOO_BIG, "message too big"))
            elif frame.fin:
                payload, self._fragments = bytes(self._fragments), None
                self._deliver(payload, self._fragments_binary, self._fragments_compressed)
        elif kind == WSMsgType.CLOSE:
            if not self.closed:
                self.close_code = frame.get_close_code().value
                reason = frame.get_close_message()
                self.close_reason = reason.decode("utf-8", "replace")[:120] if reason else ""
            code = close_echo_code(frame.get_close_code().value)
            transport.send_close(WSCloseCode(code), frame.get_close_message())
            transport.disconnect()

    # --- used by the hub ----------------------------------------------------------------------

    def compress_with(self, deflate: Deflate, inflater: Inflater) -> None:
        self.deflate, self.inflater = deflate, inflater

    def _deliver(self, payload: bytes, binary: bool, compressed: bool) -> None:
        self.messages_in += 1
        if compressed:
            assert self.inflater is not None
            inflated = self.inflater.inflate(payload)
            if isinstance(inflated, TooBig):
                self.close(Disconnect(CloseCode.MESSAGE_TOO_BIG, "message too big"))
                return
            if isinstance(inflated, Corrupt):
                self.close(Disconnect(CloseCode.INVALID_TEXT, "invalid compressed data"))
                return
            payload = inflated.data
        self.hub.on_message(self, payload, binary)

    def send(self, payload: bytes) -> int:
        """Send one text message, compressed if agreed and worth it; return the bytes it took.
        Events batched for this client's group go first, so a reply never overtakes them."""
        fanout = self.hub.fanout
        if fanout.ready:
            fanout.settle()
        return self._queue(payload)

    def _queue(self, payload: bytes) -> int:
        """While a batch is open the frame waits for its end, to go out in one write with the
        client's other frames. A client too far behind is closed, never waited for."""
        if self.transport is None or self.closed:
            self.hub.metrics.count(Count.MESSAGES_FAILED)
            return 0
        fanout = self.hub.fanout
        deflate = self.deflate
        bits = deflate.server_window_bits if deflate is not None and len(payload) >= self._threshold else 0
        frame = fanout.framed(payload, bits)
        self.messages_out += 1
        if fanout.corking:
            if not self.out:
                fanout.cork(self)
            self.out.append(frame)
        else:
            if self.out:
                self.flush()
            self.raw.write(frame)
            if self.paused:
                fanout.check_backlog(self)
        return len(frame)

    def flush(self) -> None:
        out, self.out = self.out, []
        if not out or self.raw.is_closing():
            return
        if len(out) == 1:
            self.raw.write(out[0])
        else:
            self.raw.writelines(out)  # one system call for the whole burst
        if self.paused:
            self.hub.fanout.check_backlog(self)

    def send_event(self, seq: int, payload: bytes) -> int:
        """Send (or hold, while a resume replays) one bus event of a slow lane; return the bytes
        queued now."""
        if seq <= self.floor:
            return 0
        if self.held is None:
            if self.floor:
                # Past the floor: nothing left to skip, so the client may take the direct lane again.
                self.floor = 0
                self.hub.fanout.place_later(self)
            return self._queue(payload)
        self.held.append((seq, payload))
        self.held_bytes += len(payload)
        if self.held_bytes > self.hub.settings.max_pending_bytes:
            self.hub.metrics.count(Count.SLOW_CONSUMERS)
            self.hub.metrics.count(Count.MESSAGES_DROPPED, len(self.held))
            self.close(Disconnect(CloseCode.TRY_AGAIN_LATER, "slow consumer"))
        return 0

    def hold(self) -> None:
        if self.held is None:
            self.held = []
            self.hub.fanout.place(self)

    def release(self) -> None:
        """Send what was held, but what the client had or the replay sent (up to the floor)."""
        held, self.held, self.held_bytes = self.held or [], None, 0
        for seq, payload in held:
            if seq > self.floor:
                self.send(payload)
        if self.floor <= self.hub.order.last:
            self.floor = 0  # every event still to come is past it
        self.hub.fanout.place(self)

    def ping(self, now: float) -> None:
        if self.transport is not None and not self.closed:
            self.transport.send_ping()
            self.ping_sent_at = now

    def pending_bytes(self) -> int:
        return 0 if self.transport is None else self.transport.underlying_transport.get_write_buffer_size()

    def close(self, decision: Disconnect) -> None:
        if self.closed or self.transport is None:
            return
        self.flush()  # what was queued goes before the close frame
        self.closed = True
        self.hub.fanout.remove(self)
        self.close_code = decision.code
        self.close_reason = decision.reason
        transport = self.transport
        transport.send_close(WSCloseCode(decision.code), decision.reason.encode()[:120])
        # RFC 6455 7.1.1: wait for the peer's close frame before closing TCP. Closing at once with the
        # peer's data still unread makes the kernel send a reset, which can destroy our close frame
        # before the peer reads it (a flooding client would never learn why it was dropped).
        loop = asyncio.get_running_loop()
        loop.call_later(CLOSE_LINGER, self._disconnect_if_lingering, transport, True)
        # A graceful close waits for the peer to take what is queued; a stalled peer never does, and
        # would hold its socket and buffers forever. Give it a moment to read the close, then abort.
        loop.call_later(CLOSE_GRACE, self._disconnect_if_lingering, transport, False)

    @staticmethod
    def _disconnect_if_lingering(transport: WSTransport, graceful: bool) -> None:
        if not transport.is_disconnected:
            transport.disconnect(graceful=graceful)

    def peer(self) -> str:
        if self.transport is None:
            return "?"
        peer = self.transport.underlying_transport.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
