"""Load-test Observatory with locust: subscribers timing every event, and a producer feeding them.

    OBSERVATORY_JWT_SECRET=... locust -f perf/locustfile.py --headless -u 100 -r 50 -t 60s \\
        --host ws://127.0.0.1:8080 --csv perf/results/locust

Two kinds of user (perf/README.md says how to run it and what each statistic means):

- ``Subscriber`` (by weight: all users but the producers) opens a WebSocket to ``--host``, with a
  token when the server wants one, subscribes once with ``OBSERVATORY_LOAD_FILTERS`` and reports
  every event it receives to locust as a request ``WS <event type>`` whose response time is the
  latency from publish to receipt (the publish time rides in the event's data, as in
  perf/fanout.py). An event that reveals a hole in the stream is reported as a failure of that
  request. The handshake (``WS connect``) and the subscription (``WS subscribe``) are timed too.
- ``Producer`` (``OBSERVATORY_LOAD_PRODUCERS`` of them, spawned first) publishes
  ``OBSERVATORY_LOAD_RATE`` events per second each through clients/producer.py, each stamped with
  its publish time, and reports each publish as ``ZMQ publish``.

Environment (read when locust loads this file):

    OBSERVATORY_TOKEN           a token to connect with (e.g. from ``observatory token --all-projects``)
    OBSERVATORY_JWT_SECRET      or the server's HS256 secret, to mint one (all projects, 24 h);
                                OBSERVATORY_JWT_AUDIENCE / OBSERVATORY_JWT_ISSUER are honoured
                                (neither: connect without a token, for a server with auth off)
    OBSERVATORY_INGEST          the producer endpoint (tcp://127.0.0.1:5557)
    OBSERVATORY_LOAD_FILTERS    the subscription's filters, JSON ({}: every event)
    OBSERVATORY_LOAD_PRODUCERS  producer users (1; 0: no producer, measure what others publish)
    OBSERVATORY_LOAD_RATE       events per second per producer (100)
    OBSERVATORY_LOAD_SIZE       approximate bytes of each event's data (200)
    OBSERVATORY_LOAD_TYPE       the events' type (locust_event)
    OBSERVATORY_LOAD_PROJECT    a project id to put in the events' projectInfo (none)

Locust runs every user on gevent with the standard library monkey-patched. The subscribers use
websocket-client (the ``websocket`` module), which is built on the ``socket`` module and so yields
to other greenlets whenever it waits; it is what locust's documentation points to for WebSockets
(locust-plugins' WebSocket/SocketIO user). The producer calls clients/producer.py's ``Producer``
directly: pyzmq is not patched by gevent, but a PUSH send only hands the frame to libzmq's own I/O
thread, and with ``send_timeout=0`` it never waits (a full queue raises at once and is reported as a
failed publish), so it cannot stall the other greenlets and ``zmq.green`` is not needed.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import gevent
import orjson
import websocket
from locust import User, constant, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clients.producer import DEFAULT_ENDPOINT, Producer
from core.auth import mint_token

log = logging.getLogger("observatory.locust")


def _env_json(name: str, default: str) -> Any:
    raw = os.environ.get(name, "").strip() or default
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SystemExit(f"{name} is not valid JSON: {exc}") from None


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name} must be a number, not {raw!r}") from None


def _token() -> str | None:
    token = os.environ.get("OBSERVATORY_TOKEN", "").strip()
    if token:
        return token
    secret = os.environ.get("OBSERVATORY_JWT_SECRET", "").strip()
    if not secret:
        return None
    return mint_token(
        secret,
        "HS256",
        user="locust",
        projects=None,
        permissions=("subscribe", "query"),
        ttl=24 * 3600,
        audience=os.environ.get("OBSERVATORY_JWT_AUDIENCE") or None,
        issuer=os.environ.get("OBSERVATORY_JWT_ISSUER") or None,
    )


TOKEN = _token()
FILTERS = _env_json("OBSERVATORY_LOAD_FILTERS", "{}")
if not isinstance(FILTERS, dict):
    raise SystemExit('OBSERVATORY_LOAD_FILTERS must be a JSON object, e.g. {"eventTypes": ["locust_event"]}')
INGEST = os.environ.get("OBSERVATORY_INGEST", "").strip() or DEFAULT_ENDPOINT
PRODUCERS = int(_env_number("OBSERVATORY_LOAD_PRODUCERS", 1))
RATE = _env_number("OBSERVATORY_LOAD_RATE", 100.0)
SIZE = int(_env_number("OBSERVATORY_LOAD_SIZE", 200))
EVENT_TYPE = os.environ.get("OBSERVATORY_LOAD_TYPE", "").strip() or "locust_event"
_project = os.environ.get("OBSERVATORY_LOAD_PROJECT", "").strip()
PROJECT = int(_env_number("OBSERVATORY_LOAD_PROJECT", 0)) if _project else None
if PRODUCERS > 0 and RATE <= 0:
    raise SystemExit("OBSERVATORY_LOAD_RATE must be positive")
CONNECT_TIMEOUT = 10.0
RECONNECT_DELAY = 1.0


class SequenceGap(Exception):
    """Events the subscriber should have received and did not (or got twice, or out of order)."""


class Disconnected(Exception):
    """The server closed the connection, or the connection broke."""


def _ws_url(host: str | None) -> str:
    if not host:
        raise SystemExit("give the server's WebSocket address: --host ws://127.0.0.1:8080")
    parts = urlsplit(host if "://" in host else f"ws://{host}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path or "/", parts.query, ""))


class Subscriber(User):
    """One WebSocket client: connects, subscribes once, and reports every event it receives."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.url = _ws_url(self.host)
        self.ws: websocket.WebSocket | None = None
        self.epoch: str | None = None
        self.last_seq: int | None = None  # of the last event received, for gaps and for resuming
        self.every_seq = False  # the subscription sees every event, so seq must go up by one
        self.counters: dict[str, int] = {}  # producer -> last "n" seen, when it does not
        self.requests = itertools.count(1)

    def on_stop(self) -> None:
        self._drop(graceful=True)

    @task
    def listen(self) -> None:
        if self.ws is None and not self._connect():
            gevent.sleep(RECONNECT_DELAY)
            return
        try:
            self._receive()
        except Exception as exc:  # the connection broke: report it, come back with resume
            problem = exc if isinstance(exc, Disconnected) else Disconnected(f"{type(exc).__name__}: {exc}")
            self._fire("disconnect", 0, 0, problem)
            self._drop()
            gevent.sleep(RECONNECT_DELAY)

    def _fire(
        self, name: str, response_time: float | None, length: int, exception: Exception | None = None
    ) -> None:
        self.environment.events.request.fire(
            request_type="WS",
            name=name,
            response_time=response_time,
            response_length=length,
            exception=exception,
            context={},
        )

    def _drop(self, graceful: bool = False) -> None:
        if self.ws is not None:
            ws, self.ws = self.ws, None
            try:
                if graceful:
                    ws.close(timeout=1)
            except Exception:
                pass  # the connection is going away either way
            finally:
                ws.shutdown()

    def _connect(self) -> bool:
        started = time.perf_counter()
        try:
            ws = websocket.create_connection(
                self.url,
                header=[f"Authorization: Bearer {TOKEN}"] if TOKEN else [],
                timeout=CONNECT_TIMEOUT,
                suppress_origin=True,  # not a browser
                skip_utf8_validation=True,  # orjson checks the text; the pure-Python check is slow
                enable_multithread=False,
                http_no_proxy=["*"],  # straight to the server, whatever http_proxy says
            )
            opcode, raw = ws.recv_data()
            hello = orjson.loads(raw) if opcode == websocket.ABNF.OPCODE_TEXT else {}
            if hello.get("type") != "connection_established":
                ws.close()
                raise ConnectionError(f"expected connection_established, got {raw[:200]!r}")
        except Exception as exc:
            self._fire("connect", (time.perf_counter() - started) * 1000, 0, exc)
            return False
        self._fire("connect", (time.perf_counter() - started) * 1000, len(raw))
        self.ws = ws
        return self._subscribe()

    def _subscribe(self) -> bool:
        assert self.ws is not None
        request: dict[str, Any] = {
            "type": "subscribe",
            "data": {"filters": FILTERS, "clientInfo": {"name": "locust"}},
            "requestId": next(self.requests),
        }
        if self.epoch is not None and self.last_seq is not None:
            request["data"]["resume"] = {"epoch": self.epoch, "seq": self.last_seq}
        started = time.perf_counter()
        try:
            self.ws.send(orjson.dumps(request).decode())
            while True:
                opcode, raw = self.ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    raise Disconnected(f"closed during subscribe: {raw[:200]!r}")
                reply = orjson.loads(raw)
                if reply.get("requestId") == request["requestId"]:
                    break
        except Exception as exc:
            self._fire("subscribe", (time.perf_counter() - started) * 1000, 0, exc)
            self._drop()
            return False
        elapsed = (time.perf_counter() - started) * 1000
        if reply.get("type") != "subscription_confirmed":
            self._fire("subscribe", elapsed, len(raw), RuntimeError(str(reply.get("data"))[:200]))
            self._drop()
            return False
        self._fire("subscribe", elapsed, len(raw))
        # The server answers with the filters it applies: {} only if nothing narrows them (a token
        # scoped to projects would), and then every seq of an epoch reaches this client.
        self.every_seq = reply["data"].get("filters") == {}
        self.ws.settimeout(None)  # an idle server is not an error: wait for events as long as it takes
        return True

    def _receive(self) -> None:
        ws = self.ws
        assert ws is not None
        while True:
            opcode, raw = ws.recv_data()
            if opcode == websocket.ABNF.OPCODE_TEXT:
                self._on_message(raw, time.time_ns())
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(raw[:2], "big") if len(raw) >= 2 else None
                reason = raw[2:].decode("utf-8", "replace")
                raise Disconnected(f"closed by the server: {code} {reason}")

    def _on_message(self, raw: bytes, received_ns: int) -> None:
        message = orjson.loads(raw)
        kind = message.get("type")
        seq = message.get("seq")
        if not isinstance(seq, int):  # not an event: a notice or a late reply
            if kind == "epoch_changed":
                log.warning("the ingest restarted (new epoch): events of the old one may be lost")
                self._forget()
            elif kind == "resume_failed":
                self._fire("resume", 0, len(raw), SequenceGap(f"resume failed: {message.get('data')}"))
                self._forget()
            return
        data = message.get("data")
        data = data if isinstance(data, dict) else {}
        problem = self._check(seq, message.get("epoch"), data)
        published = data.get("t")
        # Another producer's event carries no publish time: counted, but left out of the latencies.
        latency = (received_ns - published) / 1e6 if isinstance(published, int) else None
        self._fire(kind, latency, len(raw), problem)

    def _forget(self) -> None:
        self.epoch = self.last_seq = None
        self.counters.clear()

    def _check(self, seq: int, epoch: Any, data: dict[str, Any]) -> SequenceGap | None:
        # Locust groups failures by their message: keep it fixed, and log the numbers instead.
        problem = None
        if epoch != self.epoch:  # a new run of the ingest numbers from 1 again
            self._forget()
            self.epoch = epoch
        if self.every_seq and self.last_seq is not None and seq != self.last_seq + 1:
            if seq > self.last_seq + 1:
                problem = SequenceGap("seq jumped: events missing")
            else:
                problem = SequenceGap("seq went back: a duplicate or an event out of order")
            _log_gap(f"seq {seq} after {self.last_seq} in epoch {epoch}")
        elif not self.every_seq and isinstance(data.get("p"), str) and isinstance(data.get("n"), int):
            # A filtered subscription skips other events' seqs; a producer's own count has no holes.
            source, n = data["p"], data["n"]
            last = self.counters.get(source)
            if last is not None and n != last + 1:
                problem = SequenceGap("a producer's count jumped: events missing or out of order")
                _log_gap(f"producer {source}: its event {n} after its event {last}")
            self.counters[source] = max(n, last or 0)
        self.last_seq = seq if self.last_seq is None else max(seq, self.last_seq)
        return problem


_gaps_logged = 0


def _log_gap(detail: str) -> None:
    global _gaps_logged
    _gaps_logged += 1
    if _gaps_logged <= 20:
        last = " (the last one logged)" if _gaps_logged == 20 else ""
        log.warning("sequence gap: %s%s", detail, last)


class EventProducer(User):
    """Publishes OBSERVATORY_LOAD_RATE events/s, each carrying its publish time, its producer and count."""

    fixed_count = max(PRODUCERS, 0)
    abstract = PRODUCERS <= 0  # fixed_count 0 would make it a weighted user: leave it out instead
    wait_time = constant(0)

    def on_start(self) -> None:
        self.producer = Producer(INGEST, send_timeout=0.0, linger=1.0)
        self.source = uuid.uuid4().hex[:12]
        self.padding = "x" * max(SIZE - 80, 0)
        self.project = {"projectInfo": {"id": PROJECT, "name": "locust"}} if PROJECT is not None else {}
        self.due = 0  # publishes scheduled so far
        self.count = 0  # events actually handed to ZeroMQ: the "n" subscribers check
        self.started = time.perf_counter()

    def on_stop(self) -> None:
        self.producer.close()

    @task
    def publish(self) -> None:
        due = int((time.perf_counter() - self.started) * RATE)
        while self.due < due:
            self.due += 1
            data = {"t": time.time_ns(), "p": self.source, "n": self.count + 1, "pad": self.padding}
            message = {"type": EVENT_TYPE, "data": {**data, **self.project}, "timestamp": data["t"] // 10**6}
            frame = orjson.dumps(message)
            started = time.perf_counter()
            exception: Exception | None = None
            try:
                self.producer.publish_raw(frame)  # what Producer.publish does, with the size known
            except TimeoutError as exc:  # the ingest is not taking events: this one is not sent
                exception = exc
            else:
                self.count += 1
            self.environment.events.request.fire(
                request_type="ZMQ",
                name="publish",
                response_time=(time.perf_counter() - started) * 1000,
                response_length=len(frame),
                exception=exception,
                context={},
            )
        gevent.sleep(max(0.0, self.started + (self.due + 1) / RATE - time.perf_counter()))
