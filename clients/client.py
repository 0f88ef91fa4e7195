"""The Python client for Observatory, on asyncio and picows.

    client = ObservatoryClient("ws://127.0.0.1:8080/")
    await client.connect()
    await client.subscribe({"projectIds": [1], "eventTypes": ["message_added"]})
    async for event in client.events():
        print(event["seq"], event["data"])

Requests carry a ``requestId`` and their coroutine returns the matching reply (or raises
``ClientError`` with the server's code). Everything else the server sends (events, notices such
as ``server_shutdown``, errors not tied to a request) goes to the callbacks registered with
``on(type, callback)`` (``"*"`` for all) and to the ``events()`` iterator.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import random
import ssl
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import orjson
from picows import WSCloseCode, WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from core.errors import ClientError, ConnectionClosedError
from core.protocol import close_echo_code

log = logging.getLogger("observatory.client")

EventCallback = Callable[[dict[str, Any]], Any]
# Closes that coming back cannot mend: a bad or expired token, a revoked session, a protocol fault.
FINAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 4001, 4003})
REFUSED_STATUSES = frozenset({401, 403})
_CLOSED = object()


class _Listener(WSListener):
    def __init__(self, client: ObservatoryClient) -> None:
        self.client = client
        self._fragments: bytearray | None = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT:
            if frame.fin:
                self.client._on_text(frame.get_payload_as_bytes())
            else:
                self._fragments = bytearray(frame.get_payload_as_memoryview())
        elif kind == WSMsgType.CONTINUATION and self._fragments is not None:
            self._fragments += frame.get_payload_as_memoryview()
            if frame.fin:
                payload, self._fragments = bytes(self._fragments), None
                self.client._on_text(payload)
        elif kind == WSMsgType.CLOSE:
            self.client.close_code = frame.get_close_code().value
            self.client.close_reason = frame.get_close_reason()
            transport.send_close(
                WSCloseCode(close_echo_code(self.client.close_code)), frame.get_close_message()
            )
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.client._on_disconnected()


class ObservatoryClient:
    def __init__(
        self,
        url: str = "ws://127.0.0.1:8080/",
        *,
        token: str | None = None,
        token_via: str = "header",
        client_info: Mapping[str, str] | None = None,
        request_timeout: float = 10.0,
        max_queued_events: int = 100_000,
        heartbeat_interval: float = 30.0,
        heartbeat_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        auto_reconnect: bool = True,
        max_reconnect_attempts: int = 10,
        reconnect_base: float = 1.0,
        reconnect_max: float = 30.0,
    ) -> None:
        if token_via not in ("header", "subprotocol", "query"):
            raise ValueError("token_via must be header, subprotocol or query")
        self.url = url
        self.token = token
        self.token_via = token_via
        self.ssl_context = ssl_context
        self.auto_reconnect = auto_reconnect
        self.max_reconnect_attempts = max_reconnect_attempts
        self.reconnect_base = reconnect_base
        self.reconnect_max = reconnect_max
        # Where the stream stands, to resume from after a reconnect.
        self.last_epoch: str | None = None
        self.last_seq: int | None = None
        self._subscriptions: dict[str, dict[str, Any]] = {}
        self._closing = False
        self._reconnect_after: float | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.client_info = dict(client_info) if client_info else None
        self.request_timeout = request_timeout
        self.info: dict[str, Any] | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.dropped_events = 0
        self._transport: WSTransport | None = None
        self._connected: asyncio.Future[dict[str, Any]] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._request_ids = itertools.count(1)
        self._callbacks: dict[str, list[EventCallback]] = defaultdict(list)
        self._queue: asyncio.Queue[Any] = asyncio.Queue(max_queued_events)
        self._callback_tasks: set[asyncio.Future[Any]] = set()

    # --- connection ---------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._transport is not None and self.info is not None

    async def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        """Open the connection and return the server's ``connection_established`` data."""
        loop = asyncio.get_running_loop()
        self._connected = loop.create_future()
        self.close_code = self.close_reason = None
        url, headers = self._authenticated()
        transport, _ = await asyncio.wait_for(
            ws_connect(
                lambda: _Listener(self),
                url,
                extra_headers=headers,
                ssl_context=self.ssl_context,
                websocket_handshake_timeout=timeout,
                # A server silent this long is pinged; no pong in time and the connection is closed.
                enable_auto_ping=True,
                auto_ping_idle_timeout=self.heartbeat_interval,
                # picows needs the pong within the idle span; a longer timeout would drop the link.
                auto_ping_reply_timeout=min(self.heartbeat_timeout, self.heartbeat_interval),
            ),
            timeout,
        )
        self._transport = transport
        try:
            self.info = await asyncio.wait_for(asyncio.shield(self._connected), timeout)
        except BaseException:
            transport.disconnect(graceful=False)
            raise
        return self.info

    def _authenticated(self) -> tuple[str, dict[str, str]]:
        """The URL and headers carrying the token; the header keeps it out of access logs."""
        if self.token is None:
            return self.url, {}
        if self.token_via == "header":
            return self.url, {"Authorization": f"Bearer {self.token}"}
        if self.token_via == "subprotocol":
            return self.url, {"Sec-WebSocket-Protocol": f"bearer, {self.token}"}
        separator = "&" if "?" in self.url else "?"
        return f"{self.url}{separator}{urlencode({'token': self.token})}", {}

    async def refresh_token(self, token: str) -> dict[str, Any]:
        """Hand the server a newer token before the current one expires (else it closes with 4001)."""
        reply = await self.request("refresh_token", {"token": token})
        self.token = token
        for key in reply["data"].get("droppedSubscriptions", ()):
            self._subscriptions.pop(key, None)
        return dict(reply["data"])

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            self._end_stream()
        transport = self._transport
        if transport is None:
            return
        transport.send_close(WSCloseCode(code), reason.encode())
        transport.disconnect(graceful=True)
        await transport.wait_disconnected()

    # --- requests -----------------------------------------------------------------------------

    async def request(self, type_: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send a request and return the whole reply message; an error reply raises ``ClientError``."""
        if self._transport is None:
            raise ConnectionClosedError("not connected")
        request_id = next(self._request_ids)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = reply
        self.send({"type": type_, "data": dict(data or {}), "requestId": request_id})
        try:
            message = await asyncio.wait_for(reply, self.request_timeout)
        finally:
            self._pending.pop(request_id, None)
        if message["type"] in ("error", "subscription_error"):
            data = message["data"]
            raise ClientError(data["code"], data["message"], data)
        return message

    def send(self, message: Mapping[str, Any]) -> None:
        self.send_raw(orjson.dumps(message))

    def send_raw(self, payload: bytes | str, binary: bool = False) -> None:
        """Send a frame as is (for tools and tests that speak the protocol themselves)."""
        if self._transport is None:
            raise ConnectionClosedError("not connected")
        raw = payload.encode() if isinstance(payload, str) else payload
        self._transport.send(WSMsgType.BINARY if binary else WSMsgType.TEXT, raw)

    async def subscribe(
        self, filters: Mapping[str, Any] | None = None, resume: Mapping[str, Any] | None = None
    ) -> str:
        """Subscribe; ``resume`` {epoch, seq} replays what was missed since (see docs/protocol.md)."""
        data: dict[str, Any] = {"filters": dict(filters or {})}
        if self.client_info:
            data["clientInfo"] = self.client_info
        if resume is not None:
            data["resume"] = dict(resume)
        reply = await self.request("subscribe", data)
        key = str(reply["data"]["subscriptionKey"])
        self._subscriptions[key] = dict(filters or {})
        return key

    async def unsubscribe(
        self, subscription_key: str | None = None, filters: Mapping[str, Any] | None = None
    ) -> list[str]:
        data: dict[str, Any] = {}
        if subscription_key is not None:
            data["subscriptionKey"] = subscription_key
        if filters is not None:
            data["filters"] = dict(filters)
        reply = await self.request("unsubscribe", data)
        removed = [str(key) for key in reply["data"]["subscriptionKeys"]]
        for key in removed:
            self._subscriptions.pop(key, None)
        return removed

    async def ping(self) -> float:
        """Round trip to the server in milliseconds."""
        started = time.perf_counter()
        await self.request("ping", {"timestamp": int(time.time() * 1000)})
        return (time.perf_counter() - started) * 1000

    async def get_active_conversations(
        self, project_id: int | None = None, limit: int = 100
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"limit": limit}
        if project_id is not None:
            data["projectId"] = project_id
        return (await self.request("get_active_conversations", data))["data"]

    async def get_project_activity(
        self, project_id: int, start: float | None = None, end: float | None = None
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"projectId": project_id}
        if start is not None or end is not None:
            data["timeRange"] = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
        return (await self.request("get_project_activity", data))["data"]

    async def get_projects(self, limit: int = 100) -> dict[str, Any]:
        return (await self.request("get_projects", {"limit": limit}))["data"]

    # --- events -------------------------------------------------------------------------------

    def on(self, type_: str, callback: EventCallback) -> EventCallback:
        """Call ``callback(message)`` for each message of this type (``"*"``: every one)."""
        self._callbacks[type_].append(callback)
        return callback

    def off(self, type_: str, callback: EventCallback) -> None:
        self._callbacks[type_].remove(callback)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every event and notice, in arrival order, until the connection closes."""
        while (message := await self.receive()) is not None:
            yield message

    async def receive(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next event or notice; None once the connection has closed; TimeoutError after ``timeout``."""
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # every later call sees the end too
            return None
        return dict(item)

    # --- from the listener --------------------------------------------------------------------

    def _on_text(self, payload: bytes) -> None:
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            log.warning("server sent a frame that is not JSON; ignored")
            return
        kind = message.get("type")
        if kind == "connection_established" and self._connected is not None and not self._connected.done():
            self._connected.set_result(message["data"])
        seq = message.get("seq")
        if isinstance(seq, int):
            self.last_epoch, self.last_seq = message.get("epoch"), seq
        elif kind == "server_shutdown":
            after = message.get("data", {}).get("reconnectAfter")
            self._reconnect_after = after / 1000 if isinstance(after, int | float) else None
        # The first answer to a request resolves it; a later one with the same requestId (resumed,
        # resume_failed after subscription_confirmed) is an event like any other.
        reply = self._pending.pop(message.get("requestId"), None)  # type: ignore[arg-type]
        if reply is not None and not reply.done():
            reply.set_result(message)
            return
        self._emit(message)

    def _emit(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        for callback in (*self._callbacks.get(kind, ()), *self._callbacks.get("*", ())):
            result = callback(message)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._callback_tasks.add(task)
                task.add_done_callback(self._callback_tasks.discard)
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped_events += 1

    def _notice(self, kind: str, **data: Any) -> None:
        """A client-side event (reconnecting, connected, ...) in the same stream as the server's."""
        self._emit({"type": kind, "data": data, "timestamp": int(time.time() * 1000)})

    def _on_disconnected(self) -> None:
        self._transport = None
        self.info = None
        for reply in self._pending.values():
            if not reply.done():
                reply.set_exception(ConnectionClosedError(f"connection closed ({self.close_code})"))
        was_established = self._connected is not None and self._connected.done()
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(ConnectionClosedError("closed before connection_established"))
        retry = self.close_code not in FINAL_CLOSE_CODES
        if (
            self.auto_reconnect
            and retry
            and not self._closing
            and was_established
            and self._reconnecting is None
        ):
            self._reconnecting = asyncio.ensure_future(self._reconnect())
        elif self._reconnecting is None:
            self._end_stream()

    def _end_stream(self) -> None:
        try:
            self._queue.put_nowait(_CLOSED)
        except asyncio.QueueFull:
            pass

    def reconnect_delay(self, attempt: int) -> float:
        """Full jitter: uniform between 0 and the doubled base, capped (attempt 1: up to 1 s)."""
        return random.uniform(0, min(self.reconnect_max, self.reconnect_base * 2 ** (attempt - 1)))

    async def _reconnect(self) -> None:
        try:
            for attempt in range(1, self.max_reconnect_attempts + 1):
                delay = self.reconnect_delay(attempt)
                if attempt == 1 and self._reconnect_after is not None:
                    delay = self._reconnect_after  # the server spread its clients' returns: keep to it
                self._notice("reconnecting", attempt=attempt, delay=round(delay, 3))
                await asyncio.sleep(delay)
                try:
                    await self.connect()
                    await self._restore()
                except (OSError, TimeoutError, ConnectionClosedError, ClientError, WSError) as exc:
                    log.info("reconnect attempt %d failed: %s", attempt, exc)
                    if self._transport is not None:
                        self._transport.disconnect(graceful=False)
                    response = getattr(exc, "response", None)
                    status = getattr(getattr(response, "status", None), "value", None)
                    if status in REFUSED_STATUSES:  # the token will not get better by waiting
                        self._notice("reconnect_failed", attempts=attempt, status=status)
                        self._end_stream()
                        return
                    continue
                self._reconnect_after = None
                self._notice("connected")
                self._notice("reconnected", attempt=attempt)
                return
            self._notice("reconnect_failed", attempts=self.max_reconnect_attempts)
            self._end_stream()
        finally:
            self._reconnecting = None

    async def _restore(self) -> None:
        """Subscribe again to everything, each with the resume point, all but the last with
        ``more``: the server holds live events from the first and replays once, for all of them."""
        previous = list(self._subscriptions.values())  # keys are the filters' hash: they stay the same
        position = None
        if self.last_epoch is not None and self.last_seq is not None:
            position = {"epoch": self.last_epoch, "seq": self.last_seq}
        for index, filters in enumerate(previous):
            resume = None if position is None else {**position, "more": index < len(previous) - 1}
            while True:
                try:
                    await self.subscribe(filters, resume=resume)
                    break
                except ClientError as refused:
                    if refused.code != "RATE_LIMIT_EXCEEDED":
                        raise
                    retry_after = refused.details.get("retryAfter", 1000)
                    await asyncio.sleep(
                        float(retry_after) / 1000 if isinstance(retry_after, int | float) else 1.0
                    )
