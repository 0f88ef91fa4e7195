"""A worker's hub: its clients, their subscription index, the bus and the queries to the ingest.

Bus events arrive as ``[routing header, payload]``; the hub matches the header in the index and
hands the very same payload bytes to every matching client, in bus order, so each client sees
events in ``seq`` order.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import secrets
import time
from dataclasses import dataclass

import orjson
import zmq
from picows import WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener

from core.auth import (
    ANONYMOUS,
    BEARER_PROTOCOL,
    Principal,
    Refused,
    Unauthorized,
    credentials_from,
    may_refresh,
    origin_allowed,
    parse_origins,
    scope_filters,
    scope_query,
)
from core.config import Settings
from core.deadlines import Deadlines
from core.deflate import DeflateSettings, Inflater, negotiate
from core.drain import drain_plan
from core.filters import SubscriptionFilters
from core.heartbeat import Heartbeats
from core.index import SubscriptionIndex
from core.limits import AdmissionLimits, Reject, ip_cells
from core.metrics import Count, Gauge
from core.protocol import (
    CloseCode,
    Disconnect,
    ErrorCode,
    GetProjects,
    Ping,
    ProtocolError,
    Query,
    RefreshToken,
    RequestId,
    Subscribe,
    Unsubscribe,
    capabilities,
    encode_error,
    encode_message,
    now_ms,
    parse_client_message,
)
from core.queries import (
    REVOKED_SESSIONS_QUERY,
    HistoryAnswer,
    QueryAnswer,
    decode_answer,
    decode_history,
    encode_history_query,
    encode_query,
)
from core.ratelimit import Throttled
from core.routing import RoutingHeader
from core.sequence import Action, BusOrder, Deliver, Lost, NewEpoch, Repair
from workers.curve import bus_keys
from workers.fanout import Fanout
from workers.keys import AuthSetup
from workers.metrics import ServerView
from workers.replay import Replays
from workers.session import ClientSession
from workers.shared import CounterRow, MetricsRow
from workers.web import WebAnswers, wants_websocket
from workers.zmqio import drain_batch

log = logging.getLogger("observatory.worker")
access_log = logging.getLogger("observatory.access")

CONTROL_FRAME = b"control"
BUS_BATCH = 256
# /ready answers 503 once the bus has been silent for this many beat intervals (but never sooner than
# READY_SILENCE_MIN seconds): the ingest beats every bus_beat_interval, so silence means it is gone.
READY_SILENCE_BEATS = 3
READY_SILENCE_MIN = 2.0
QUERY_BATCH = 256
MAX_REMEMBERED_REVOCATIONS = 100_000
REVOKED_QUERY_ID = b"revoked-sessions"


@dataclass(slots=True)
class PendingQuery:
    client: ClientSession
    request_id: RequestId
    timer: asyncio.TimerHandle


class Hub:
    def __init__(
        self,
        settings: Settings,
        worker_id: int,
        auth: AuthSetup,
        own_row: CounterRow,
        metrics: MetricsRow,
        view: ServerView,
        context: zmq.Context[zmq.Socket[bytes]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.web = WebAnswers(view, self.readiness)
        self.last_heard = 0.0  # monotonic time of the latest bus message: readiness
        self.deflate_settings = DeflateSettings(
            settings.permessage_deflate, settings.compression_threshold, settings.compression_level
        )
        self.worker_id = worker_id
        self.auth = auth
        self.allowed_origins = parse_origins(settings.allowed_origins)
        # Connections by token session, so a revocation closes them without scanning every client.
        self.by_session: dict[str, set[ClientSession]] = {}
        self.revoked: dict[str, None] = {}
        self.loop = loop
        self.clients: dict[str, ClientSession] = {}
        self.index: SubscriptionIndex[ClientSession] = SubscriptionIndex()
        self.fanout = Fanout(
            self.index,
            metrics,
            loop,
            settings.flush_interval,
            settings.compression_threshold,
            settings.compression_level,
            settings.max_pending_bytes,
        )
        self.own_row = own_row
        self.limits = AdmissionLimits(
            settings.max_connections, settings.max_connections_per_ip, settings.max_handshakes_per_ip
        )
        self.draining = False
        self._ids = itertools.count(1)
        self._id_prefix = f"w{worker_id}-{secrets.token_hex(3)}-"
        self._query_ids = itertools.count(1)
        self.pending: dict[bytes, PendingQuery] = {}
        self.order = BusOrder()
        self.lost_events = 0
        self._repair_id: bytes | None = None
        self.replays = Replays(self)
        self.heartbeats = Heartbeats(settings.heartbeat_interval, settings.heartbeat_timeout)
        self.expiries: Deadlines[ClientSession] = Deadlines()  # when each client's token runs out
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._expiry_due: float | None = None
        self._heartbeat_sweep: asyncio.TimerHandle | None = None

        curve = bus_keys(settings)  # a bad certificate is a BootError: the worker cannot start
        self.bus = context.socket(zmq.SUB)
        if curve is not None:
            curve.client().apply(self.bus)
        self.bus.setsockopt(zmq.LINGER, 0)
        self.bus.setsockopt(zmq.RCVHWM, settings.bus_high_water_mark)
        self.bus.setsockopt(zmq.SUBSCRIBE, b"")
        self.bus.connect(settings.bus_endpoint)
        self.queries = context.socket(zmq.DEALER)
        if curve is not None:
            curve.client().apply(self.queries)
        self.queries.setsockopt(zmq.LINGER, 0)
        self.queries.connect(settings.query_endpoint)

    def attach(self) -> None:
        self._heartbeat_sweep = self.loop.call_later(self.heartbeats.sweep_every, self._sweep_heartbeats)
        self.loop.add_reader(self.bus.FD, self._on_bus)
        self.loop.add_reader(self.queries.FD, self._on_answers)
        self.loop.call_soon(self._on_bus)
        if self.auth.verifier is not None:
            # Sessions revoked before this worker started; later ones arrive on the bus.
            self.queries.send_multipart((REVOKED_QUERY_ID, REVOKED_SESSIONS_QUERY))
            self.loop.call_soon(self._on_answers)

    def detach(self) -> None:
        for timer in (self._heartbeat_sweep, self._expiry_timer):
            if timer is not None:
                timer.cancel()
        self.fanout.settle()
        self.loop.remove_reader(self.bus.FD)
        self.loop.remove_reader(self.queries.FD)
        self.bus.close(linger=0)
        self.queries.close(linger=0)

    # --- connections --------------------------------------------------------------------------

    def listener_for(
        self, request: WSUpgradeRequest, peer: str | None
    ) -> ClientSession | WSUpgradeResponseWithListener:
        """Admit a handshake or answer it with an HTTP status: 403, then 503/429, then 401.

        A request that asks for no upgrade is plain HTTP: the dashboard's files."""
        if not wants_websocket(request):
            return self.web.respond(request)
        headers = request.headers
        if not origin_allowed(headers.get("Origin"), headers.get("Host"), self.allowed_origins):
            return self._refused(403, b"origin not allowed\n")
        if self.draining:
            return self._refused(503, b"server is shutting down\n")
        now = time.time()
        cells = ip_cells(peer or "unknown")
        shared = self.own_row.shared
        # Counted before the token is checked, so guessing tokens is throttled too.
        decision = self.limits.decide(
            shared.total_connections(),
            shared.connections_from(cells),
            shared.handshakes_from(cells, now),
            now,
        )
        self.own_row.handshake(cells, now)
        if isinstance(decision, Reject):
            retry = {"Retry-After": str(decision.retry_after)} if decision.retry_after is not None else None
            return self._refused(decision.status, decision.reason.encode() + b"\n", retry)
        credentials = credentials_from(request.path, headers)
        principal: Principal | Refused = ANONYMOUS
        if self.auth.verifier is not None:
            principal = self.auth.verifier.verify(credentials.token, now)
            if isinstance(principal, Refused):
                return self._refused(
                    principal.status, principal.reason.encode() + b"\n", {"WWW-Authenticate": "Bearer"}
                )
            if principal.session is not None and principal.session in self.revoked:
                return self._refused(401, b"session revoked\n", {"WWW-Authenticate": "Bearer"})
        session = ClientSession(self, f"{self._id_prefix}{next(self._ids):x}", principal, cells)
        session.address = peer or "?"
        answer: dict[str, str] = {}
        if credentials.via_subprotocol:
            # The browser offered "bearer, <token>": answer with the protocol only, never the token.
            answer["Sec-WebSocket-Protocol"] = BEARER_PROTOCOL
        deflate = negotiate(", ".join(headers.getall("Sec-WebSocket-Extensions", [])), self.deflate_settings)
        if deflate is not None:
            session.compress_with(deflate, Inflater(deflate, self.settings.max_message_bytes))
            answer["Sec-WebSocket-Extensions"] = deflate.response
        if answer:
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_101_response(answer), session)
        return session

    def _refused(
        self, status: int, body: bytes, headers: dict[str, str] | None = None
    ) -> WSUpgradeResponseWithListener:
        self.metrics.count(Count.HANDSHAKES_REFUSED)
        return _refuse(status, body, headers)

    def readiness(self) -> str | None:
        """None when this worker can serve a newcomer; otherwise why not (for /ready)."""
        if self.draining:
            return "draining"
        silence = time.monotonic() - self.last_heard
        if silence > max(READY_SILENCE_BEATS * self.settings.bus_beat_interval, READY_SILENCE_MIN):
            return "no word from the ingest on the bus" if self.last_heard else "has not heard the bus yet"
        return None

    def on_connected(self, client: ClientSession) -> None:
        self.clients[client.id] = client
        self.own_row.opened(client.address_cells)
        self.metrics.count(Count.CONNECTIONS_OPENED)
        self.metrics.note_peak(self.own_row.shared.total_connections())
        limits = {
            "messageRateLimit": self.settings.message_rate_limit,
            "messageRateBurst": self.settings.message_rate_burst,
            "maxSubscriptions": self.settings.max_subscriptions,
            "maxFilterValues": self.settings.max_filter_values,
            "maxMessageBytes": self.settings.max_message_bytes,
        }
        data = {
            "clientId": client.id,
            "serverTime": now_ms(),
            "capabilities": capabilities(self.worker_id),
            "limits": limits,
            # Where the bus stands: a new client may resume from a little before it to see recent events.
            "epoch": self.order.epoch,
            "seq": self.order.last,
        }
        client.send(encode_message("connection_established", data, now_ms()))
        session_id = client.principal.session
        if session_id is not None:
            self.by_session.setdefault(session_id, set()).add(client)
        self._arm_expiry(client)
        log.debug("client %s (%s) connected from %s", client.id, client.principal.user, client.peer())

    def _arm_expiry(self, client: ClientSession) -> None:
        expires_at = client.principal.expires_at
        if expires_at is None or self.auth.verifier is None:
            self.expiries.discard(client)
            return
        # The same leeway as at the handshake: a token admitted there is not dropped at once.
        self.expiries.set(client, expires_at + self.auth.verifier.leeway)
        self._time_expiries()

    def _time_expiries(self) -> None:
        """One timer, for the earliest expiry."""
        earliest = self.expiries.next()
        if earliest == self._expiry_due:
            return
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        self._expiry_due = earliest
        if earliest is not None:
            self._expiry_timer = self.loop.call_later(max(earliest - time.time(), 0.0), self._expire)

    def _expire(self) -> None:
        self._expiry_timer = self._expiry_due = None
        for client in self.expiries.due(time.time()):
            client.close(Disconnect(CloseCode.TOKEN_EXPIRED, "token expired"))
        self._time_expiries()

    def on_disconnected(self, client: ClientSession) -> None:
        if self.clients.pop(client.id, None) is None:
            return
        self.own_row.closed(client.address_cells)
        self.expiries.discard(client)
        self._forget_session(client)
        self.metrics.closed(client.close_code)
        self.fanout.remove(client)  # first: it adds up what the lanes sent, for the access line
        if self.settings.access_log:
            _log_access(client)
        for key in client.subscription_keys:
            self.index.unsubscribe(client, key)
        self.metrics.add_gauge(Gauge.SUBSCRIPTIONS, -len(client.subscription_keys))
        client.subscription_keys.clear()
        log.debug("client %s disconnected", client.id)

    def _sweep_heartbeats(self) -> None:
        """Ping the clients that have been quiet too long; close those that never answered."""
        now = time.monotonic()
        check = self.heartbeats.check
        for client in list(self.clients.values()):
            verdict = check(now, client.last_heard, client.ping_sent_at)
            if verdict is None:
                continue
            if isinstance(verdict, Disconnect):
                client.close(verdict)
            else:
                client.ping(now)
        self._heartbeat_sweep = self.loop.call_later(self.heartbeats.sweep_every, self._sweep_heartbeats)

    def _forget_session(self, client: ClientSession) -> None:
        session_id = client.principal.session
        peers = self.by_session.get(session_id) if session_id is not None else None
        if peers is not None:
            peers.discard(client)
            if not peers:
                del self.by_session[session_id]  # type: ignore[arg-type]

    # --- the bus --------------------------------------------------------------------------------

    def _on_bus(self) -> None:
        order = self.order
        heard = False
        fanout = self.fanout
        fanout.corking = True  # (already, with a flush interval)
        try:
            for frames in drain_batch(self.bus, BUS_BATCH, self._on_bus):
                heard = True
                if len(frames) != 2:
                    self._on_control(frames)
                    continue
                header = RoutingHeader.decode(frames[0])
                if order.repairing is None and header.seq == order.last + 1 and header.epoch == order.epoch:
                    order.last = header.seq  # the common case: next in order, nothing to decide
                    self._broadcast(header, frames[1])
                else:
                    self._act(order.on_event(header, frames[1]))
        finally:
            if heard:
                # Only a message counts: the socket's FD also wakes on connection attempts, which
                # a bus that refuses this host's key answers every fraction of a second.
                self.last_heard = time.monotonic()
            if not fanout.flush_interval:
                fanout.corking = False
                fanout.settle()

    def _broadcast(self, header: RoutingHeader, payload: bytes) -> None:
        recipients, sent_bytes = self.fanout.broadcast(header, payload)
        if recipients:
            # The latency is taken when the batch is written (Fanout.settle), not here.
            self.metrics.broadcast(recipients, sent_bytes, None)

    def _on_control(self, frames: list[bytes]) -> None:
        if len(frames) == 3 and frames[0] == CONTROL_FRAME and frames[1] == b"beat":
            beat = orjson.loads(frames[2])
            self._act(self.order.on_beat(beat["epoch"], beat["seq"]))
        elif len(frames) == 3 and frames[0] == CONTROL_FRAME and frames[1] == b"revoke_session":
            self.revoke(orjson.loads(frames[2])["sid"])
        else:
            log.warning("ignoring a bus message of %d frames", len(frames))

    def _act(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Deliver):
                for header, payload in action.events:
                    self._broadcast(header, payload)
            elif isinstance(action, Repair):
                self._request_repair(action)
            elif isinstance(action, Lost):
                self.lost_events += action.last - action.first + 1
                self.metrics.count(Count.EVENTS_LOST, action.last - action.first + 1)
                self.metrics.count(Count.MESSAGES_DROPPED, action.last - action.first + 1)
                log.warning("events %d..%d are lost: history did not provide them", action.first, action.last)
            else:
                self._on_new_epoch(action)

    def _request_repair(self, repair: Repair) -> None:
        self._repair_id = b"repair-%d" % next(self._query_ids)
        try:
            self.queries.send_multipart(
                (self._repair_id, encode_history_query(repair.first, repair.last)), zmq.NOBLOCK
            )
        except zmq.ZMQError:
            pass  # the timeout below gives the hole up
        self.loop.call_later(self.settings.repair_timeout, self._repair_timed_out, self._repair_id)
        self.loop.call_soon(self._on_answers)

    def _repair_timed_out(self, repair_id: bytes) -> None:
        if repair_id == self._repair_id:
            self._repair_id = None
            self._act(self.order.on_repaired([]))

    def _on_new_epoch(self, change: NewEpoch) -> None:
        log.info("bus epoch %s (was %s)", change.epoch, change.previous)
        self._repair_id = None  # an answer still on its way describes the old run
        self.replays.fail_all(f"epoch {change.previous} ended during the replay")
        for client in self.clients.values():
            if client.floor:
                client.floor = 0  # seq starts again at 1 in a new epoch
                self.fanout.place(client)
        if change.previous is not None:
            notice = encode_message(
                "epoch_changed", {"epoch": change.epoch, "previous": change.previous}, now_ms()
            )
            for client in list(self.clients.values()):
                client.send(notice)
        self.replays.start_waiting()

    def revoke(self, session_id: str) -> None:
        self.revoked[session_id] = None
        if len(self.revoked) > MAX_REMEMBERED_REVOCATIONS:
            del self.revoked[next(iter(self.revoked))]
        for client in list(self.by_session.get(session_id, ())):
            client.close(Disconnect(CloseCode.SESSION_REVOKED, "session revoked"))

    # --- client messages ------------------------------------------------------------------------

    def on_message(self, client: ClientSession, payload: bytes, binary: bool) -> None:
        self.metrics.count(Count.MESSAGES_RECEIVED)
        self.metrics.count(Count.BYTES_IN, len(payload))
        # Parsed before the rate check so that even a refusal carries the request's requestId.
        request = (
            ProtocolError(ErrorCode.INVALID_MESSAGE, "binary messages are not supported")
            if binary
            else parse_client_message(payload, self.settings.max_filter_values)
        )
        if isinstance(request, Disconnect):
            client.close(request)
            return
        verdict = client.limiter.admit(time.monotonic())
        if isinstance(verdict, Disconnect):
            client.close(verdict)
        elif isinstance(verdict, Throttled):
            self.metrics.count(Count.RATE_LIMITED)
            self.metrics.error(ErrorCode.RATE_LIMIT_EXCEEDED)
            data = {
                "code": ErrorCode.RATE_LIMIT_EXCEEDED,
                "message": "message rate limit exceeded",
                "retryAfter": round(verdict.retry_after * 1000),
            }
            client.send(encode_message("error", data, now_ms(), request.request_id))
        elif isinstance(request, ProtocolError):
            self._refuse(client, request)
        elif isinstance(request, Subscribe):
            self._subscribe(client, request)
        elif isinstance(request, Unsubscribe):
            self._unsubscribe(client, request)
        elif isinstance(request, Ping):
            data = {"timestamp": now_ms(), "clientTimestamp": request.client_timestamp}
            client.send(encode_message("pong", data, now_ms(), request.request_id))
        elif isinstance(request, RefreshToken):
            self._refresh(client, request)
        else:
            self._query(client, request)

    def _refuse(self, client: ClientSession, error: ProtocolError) -> None:
        self.metrics.error(error.code)
        client.send(encode_error(error, now_ms()))

    def _unauthorized(
        self, client: ClientSession, refusal: Unauthorized, request_id: RequestId, reply: str
    ) -> None:
        self._refuse(client, ProtocolError(ErrorCode.UNAUTHORIZED, refusal.message, request_id, reply))

    def _subscribe(self, client: ClientSession, request: Subscribe) -> None:
        filters = scope_filters(request.filters, client.principal)
        if isinstance(filters, Unauthorized):
            self._unauthorized(client, filters, request.request_id, "subscription_error")
            return
        key = filters.key
        if (
            key not in client.subscription_keys
            and len(client.subscription_keys) >= self.settings.max_subscriptions
        ):
            self._refuse(
                client,
                ProtocolError(
                    ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                    f"at most {self.settings.max_subscriptions} subscriptions per connection",
                    request.request_id,
                    "subscription_error",
                ),
            )
            return
        if key not in client.subscription_keys:
            self.metrics.add_gauge(Gauge.SUBSCRIPTIONS, 1)
        self.index.subscribe(client, filters)
        client.subscription_keys.add(key)
        self.fanout.place(client)
        if request.client_info is not None:
            client.client_info = request.client_info
        data = {"subscriptionKey": key, "filters": filters.to_json()}
        client.send(encode_message("subscription_confirmed", data, now_ms(), request.request_id))
        if request.resume is not None:
            self.replays.request(client, request.resume, request.request_id)

    def _unsubscribe(self, client: ClientSession, request: Unsubscribe) -> None:
        if request.subscription_key is None and request.filters is None:
            keys = sorted(client.subscription_keys)
        else:
            key = (
                request.subscription_key
                if request.subscription_key is not None
                else self._key_of(client, request.filters)
            )
            if key not in client.subscription_keys:
                self._refuse(
                    client,
                    ProtocolError(
                        ErrorCode.SUBSCRIPTION_NOT_FOUND,
                        "this connection holds no such subscription",
                        request.request_id,
                        "subscription_error",
                    ),
                )
                return
            keys = [key]
        for key in keys:
            self.index.unsubscribe(client, key)
            client.subscription_keys.discard(key)
        self.fanout.place(client)
        self.metrics.add_gauge(Gauge.SUBSCRIPTIONS, -len(keys))
        data = {"subscriptionKeys": keys, "remaining": len(client.subscription_keys)}
        client.send(encode_message("unsubscription_confirmed", data, now_ms(), request.request_id))

    @staticmethod
    def _key_of(client: ClientSession, filters: SubscriptionFilters | None) -> str:
        """The key the same filters were confirmed under: narrowed to the token's projects first."""
        scoped = scope_filters(filters or SubscriptionFilters(), client.principal)
        return "" if isinstance(scoped, Unauthorized) else scoped.key

    def _refresh(self, client: ClientSession, request: RefreshToken) -> None:
        verifier = self.auth.verifier
        candidate = verifier.verify(request.token, time.time()) if verifier is not None else ANONYMOUS
        if isinstance(candidate, Refused) or not may_refresh(client.principal, candidate):
            reason = candidate.reason if isinstance(candidate, Refused) else "not a newer token for this user"
            self._refuse(client, ProtocolError(ErrorCode.UNAUTHORIZED, reason, request.request_id))
            return
        if candidate.session is not None and candidate.session in self.revoked:
            self._refuse(client, ProtocolError(ErrorCode.UNAUTHORIZED, "session revoked", request.request_id))
            return
        self._forget_session(client)
        client.principal = candidate
        if candidate.session is not None:
            self.by_session.setdefault(candidate.session, set()).add(client)
        self._arm_expiry(client)
        # A narrower token keeps only the subscriptions it still allows.
        dropped = [
            key
            for key in sorted(client.subscription_keys)
            if (filters := self.index.filters_of(key)) is None or scope_filters(filters, candidate) != filters
        ]
        for key in dropped:
            self.index.unsubscribe(client, key)
            client.subscription_keys.discard(key)
        self.fanout.place(client)
        self.metrics.add_gauge(Gauge.SUBSCRIPTIONS, -len(dropped))
        expires_ms = None if candidate.expires_at is None else int(candidate.expires_at * 1000)
        data = {"expiresAt": expires_ms, "droppedSubscriptions": dropped}
        client.send(encode_message("token_refreshed", data, now_ms(), request.request_id))

    # --- queries to the ingest --------------------------------------------------------------------

    def _query(self, client: ClientSession, request: Query) -> None:
        project_id = None if isinstance(request, GetProjects) else request.project_id
        within = scope_query(project_id, client.principal)
        if isinstance(within, Unauthorized):
            self._unauthorized(client, within, request.request_id, "error")
            return
        query_id = next(self._query_ids).to_bytes(8, "little")
        try:
            self.queries.send_multipart((query_id, encode_query(request, within)), zmq.NOBLOCK)
        except zmq.ZMQError:
            self._refuse(
                client,
                ProtocolError(
                    ErrorCode.QUERY_FAILED, "the ingest cannot take queries now", request.request_id
                ),
            )
            return
        timer = self.loop.call_later(self.settings.query_timeout, self._expire_query, query_id)
        self.pending[query_id] = PendingQuery(client, request.request_id, timer)
        # Sending changes the socket's state; its edge-triggered FD may not fire for an early answer.
        self.loop.call_soon(self._on_answers)

    def _expire_query(self, query_id: bytes) -> None:
        pending = self.pending.pop(query_id, None)
        if pending is not None:
            self._refuse(
                pending.client,
                ProtocolError(
                    ErrorCode.QUERY_TIMEOUT, "the ingest did not answer in time", pending.request_id
                ),
            )

    def _on_answers(self) -> None:
        for frames in drain_batch(self.queries, QUERY_BATCH, self._on_answers):
            if len(frames) < 2:
                continue
            if frames[0] == self._repair_id:
                self._repair_id = None
                wanted = self.order.repairing
                answer = decode_history(frames[1:])
                if isinstance(answer, HistoryAnswer):
                    more = wanted is not None and answer.newest >= wanted.last
                    if answer.events:
                        self.metrics.count(Count.GAPS_REPAIRED)
                        self.metrics.count(Count.EVENTS_REPAIRED, len(answer.events))
                    self._act(self.order.on_repaired(answer.events, more))
                else:
                    self._act(self.order.on_repaired([]))
                continue
            if self.replays.answer(frames):
                continue
            if frames[0] == REVOKED_QUERY_ID:
                answer = decode_answer(frames[1])
                if isinstance(answer, QueryAnswer):
                    for session_id in answer.data.get("sessions", ()):
                        self.revoke(session_id)
                continue
            pending = self.pending.pop(frames[0], None)
            if pending is None:
                continue  # answered after its timeout: the client already heard QUERY_TIMEOUT
            pending.timer.cancel()
            answer = decode_answer(frames[1])
            if isinstance(answer, QueryAnswer):
                pending.client.send(
                    encode_message(answer.reply_type, answer.data, now_ms(), pending.request_id)
                )
            else:
                self._refuse(
                    pending.client, ProtocolError(ErrorCode.QUERY_FAILED, answer.message, pending.request_id)
                )

    # --- shutdown -----------------------------------------------------------------------------

    async def drain(self, window: float, grace: float) -> None:
        """Let every client go, paced over ``window``: server_shutdown, then 1001; wait for the rest."""
        self.draining = True
        leaving = list(self.clients.values())
        started = self.loop.time()
        for client, farewell in zip(leaving, drain_plan(len(leaving), window, random.Random()), strict=True):
            delay = started + farewell.close_at - self.loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if client.closed:
                continue
            data = {"message": "server is shutting down", "reconnectAfter": farewell.reconnect_after_ms}
            client.send(encode_message("server_shutdown", data, now_ms()))
            client.close(Disconnect(CloseCode.GOING_AWAY, "server shutdown"))
        deadline = self.loop.time() + grace  # their pending output drains meanwhile
        while self.clients and self.loop.time() < deadline:
            await asyncio.sleep(0.02)


def _log_access(client: ClientSession) -> None:
    """One line per connection, for operators; the principal's token is never part of it."""
    fields = {
        "client": client.id,
        "address": client.address,
        "user": client.principal.user,
        "duration": round(time.monotonic() - client.opened_at, 3),
        "messagesIn": client.messages_in,
        "messagesOut": client.messages_out,
        "closeCode": client.close_code,
        "closeReason": client.close_reason,
    }
    access_log.info(
        "%s from %s user %s: %.1fs, %d in, %d out, closed %d %s",
        client.id,
        client.address,
        client.principal.user,
        fields["duration"],
        client.messages_in,
        client.messages_out,
        client.close_code,
        client.close_reason or "-",
        extra=fields,
    )


def _refuse(status: int, body: bytes, headers: dict[str, str] | None = None) -> WSUpgradeResponseWithListener:
    return WSUpgradeResponseWithListener(WSUpgradeResponse.create_error_response(status, body, headers), None)
