"""Property-based: random client messages and random producer events thrown at a running server.

Each hypothesis example is one round: random text and binary frames from raw picows connections
(random JSON values, random requests with random ``type``/``data``/``filters``/``requestId``,
random bytes), interleaved with random producer frames (random bytes, random JSON, random events).
The properties, from docs/protocol.md:

- every message a client sends gets exactly one reply, which echoes the message's ``requestId``
  when it had a valid one, and is a well-formed ``error``/``subscription_error`` with a known code
  or an ordinary reply; only text that is not UTF-8 closes the connection, with ``1007`` (a client
  closed that way is replaced by a new one for the rest of the round);
- the ingest consumes a ``seq`` for exactly the producer frames the documented rules accept;
- a well-behaved client, subscribed from before the first round to after the last, gets every
  event of a numbered series published around each round, in order, once; no worker dies.

Hypothesis and async: ``@given`` needs a plain function, and the conftest runs only ``async def``
tests on a loop. So the test is a sync function that receives one generated round and plays it in
its own ``uvloop.run(...)``: one fresh loop per example, no loop shared between examples. What must
outlive the examples (the server, the producer socket, the well-behaved client) belongs to no loop:
the server is a module-scoped process, the producer a plain ZeroMQ socket, and the well-behaved
client a synchronous ``websockets`` connection read by a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import uvloop
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from core.filters import FILTER_KINDS as CORE_FILTER_KINDS
from core.ingest import RESERVED_TYPES
from core.protocol import CLIENT_MESSAGE_TYPES
from tests.harness import Bystander, ServerProcess, next_event, start_server

SERIES, SERIES_END = "prop_series", "prop_series_end"
ROUND_START, ROUND_END = "prop_round_start", "prop_round_end"
MAX_EXAMPLES = 200
REPLY_TIMEOUT = 5.0
CLOSE_TIMEOUT = 3.0
QUERY_WAIT = 7.0  # a query the ingest never answers gets QUERY_TIMEOUT after 5 s

# --- the server, the producer socket and the well-behaved client: outside any event loop ---------


@dataclass
class Fuzz:
    server: ServerProcess
    push: zmq.Socket[bytes]
    bystander: Bystander
    worker_pids: list[int]
    ingest_pids: list[int]
    rounds: Iterator[int] = field(default_factory=itertools.count)
    series: Iterator[int] = field(default_factory=itertools.count)
    published: int = 0

    def event(self, type_: str, data: dict[str, Any]) -> None:
        self.push.send(orjson.dumps({"type": type_, "data": data}))

    def next_in_series(self) -> None:
        self.event(SERIES, {"n": next(self.series)})
        self.published += 1


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    # Limits this generous never refuse a message: rate limiting must not hide any other answer.
    server = start_server(
        tmp_path_factory.mktemp("fuzz"), workers=2, message_rate_burst=100_000, message_rate_limit=10_000_000
    )
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.setsockopt(zmq.SNDTIMEO, 5000)
    push.connect(server.ingest_endpoint)
    bystander = Bystander(server, SERIES, SERIES_END).subscribe()
    try:
        yield Fuzz(
            server, push, bystander, sorted(server.pids_named("obs-worker")), server.pids_named("obs-ingest")
        )
    finally:
        bystander.close()
        push.close()
        context.term()
        server.stop()


# --- what to throw ----------------------------------------------------------------------------

REQUEST_TYPES = list(CLIENT_MESSAGE_TYPES)
FILTER_KINDS = list(CORE_FILTER_KINDS)
RESERVED = sorted(RESERVED_TYPES)  # every type the ingest declares the server's own

# orjson reads and writes integers of at most 64 bits: wider ones could not even be sent as JSON.
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
filter_values = json_leaves | st.lists(
    st.sampled_from([1, 7, "user", "assistant", "bot", "message_added", "", "x" * 257, True, 1.0])
    | json_leaves,
    max_size=5,
)
filters = json_values | st.dictionaries(
    st.sampled_from([*FILTER_KINDS, "colour", "ProjectIds"]), filter_values, max_size=4
)
request_data = json_values | st.fixed_dictionaries(
    {},
    optional={
        "filters": filters,
        "clientInfo": json_values
        | st.fixed_dictionaries({}, optional={"name": json_leaves, "version": json_leaves}),
        "subscriptionKey": json_leaves | st.just("sub_0000000000000000"),
        "timestamp": json_leaves,
        "projectId": json_leaves,
        "limit": json_leaves | st.integers(-2, 1002),
        "timeRange": json_values
        | st.fixed_dictionaries({}, optional={"start": json_leaves, "end": json_leaves}),
        "token": json_leaves,
    },
)
request_ids = json_leaves | st.sampled_from([127, 128, 129, 130]).map(lambda n: "r" * n)
requests = st.one_of(
    # A known request with random fields: reaches every request parser.
    st.fixed_dictionaries(
        {"type": st.sampled_from(REQUEST_TYPES), "data": request_data}, optional={"requestId": request_ids}
    ),
    # Anything at all where the envelope's fields go.
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from([*REQUEST_TYPES, "PING", "pong", ""]) | json_leaves,
            "data": request_data,
            "requestId": request_ids,
        },
    ),
)


@dataclass(frozen=True)
class Frame:
    payload: bytes
    binary: bool = False


client_frames = st.one_of(
    requests.map(lambda r: Frame(orjson.dumps(r))),
    json_values.map(lambda v: Frame(orjson.dumps(v))),
    st.text(max_size=60).map(lambda t: Frame(t.encode())),
    st.binary(max_size=120).map(Frame),  # as text: mostly not UTF-8
    st.binary(max_size=120).map(lambda b: Frame(b, binary=True)),
    requests.map(lambda r: Frame(orjson.dumps(r), binary=True)),
)

event_data = json_values | st.dictionaries(
    st.sampled_from(
        ["conversationId", "projectId", "sessionId", "message", "projectInfo", "sid", "toolNames"]
    ),
    json_values | st.sampled_from(["c1", 7, {"type": "user", "toolUses": [{"name": "Bash"}]}, {"id": 7}]),
    max_size=5,
)
event_types = (
    st.sampled_from(RESERVED)
    | st.sampled_from(["revoke_session", "message_added", "conversation_started", "t" * 64, "t" * 65])
    | st.text(max_size=70)
    | json_leaves
)
timestamps = st.sampled_from([0, -1, -0.5, -1e-300, 1.5, 2**64 - 1, 1e308]) | json_leaves
# Shaped like an event, so that the rules past the envelope (type, reserved types, data, timestamp)
# decide; listed three times in ``producer_messages`` to weigh it against the shapeless kinds.
event_shaped = st.fixed_dictionaries(
    {"type": event_types, "data": st.dictionaries(st.text(max_size=5), json_values) | event_data},
    optional={"timestamp": timestamps},
).map(lambda e: [orjson.dumps(e)])
producer_messages = st.one_of(
    event_shaped,
    event_shaped,
    event_shaped,
    st.fixed_dictionaries(
        {}, optional={"type": event_types, "data": event_data, "timestamp": timestamps}
    ).map(lambda e: [orjson.dumps(e)]),
    json_values.map(lambda v: [orjson.dumps(v)]),
    st.binary(max_size=200).map(lambda b: [b]),
    st.lists(st.binary(max_size=40), min_size=2, max_size=3),  # more than one frame
)


@dataclass(frozen=True)
class Round:
    frames: list[Frame]
    producer: list[list[bytes]]


rounds = st.builds(
    Round,
    st.lists(client_frames, min_size=5, max_size=40),
    st.lists(producer_messages, min_size=8, max_size=40),
)

# --- the documented answers, as a model ---------------------------------------------------------

NO_REPLY = object()  # the message closes the connection instead
ABSENT = object()  # the reply carries no requestId
REPLY_TYPES = {
    "subscription_confirmed",
    "unsubscription_confirmed",
    "pong",
    "active_conversations",
    "project_activity",
    "projects",
    "token_refreshed",
}
ERROR_CODES = {"INVALID_MESSAGE", "UNKNOWN_MESSAGE_TYPE", "QUERY_TIMEOUT", "QUERY_FAILED", "UNAUTHORIZED"}
SUBSCRIPTION_ERROR_CODES = {
    "INVALID_FILTERS",
    "TOO_MANY_SUBSCRIPTIONS",
    "SUBSCRIPTION_NOT_FOUND",
    "UNAUTHORIZED",
}


def expected_request_id(frame: Frame) -> Any:
    """What the one reply to ``frame`` carries as ``requestId`` (docs/protocol.md section 6)."""
    if frame.binary:
        return ABSENT
    try:
        message = orjson.loads(frame.payload)
    except orjson.JSONDecodeError:
        try:
            frame.payload.decode("utf-8")
        except UnicodeDecodeError:
            return NO_REPLY  # RFC 6455 8.1: closed with 1007
        return ABSENT
    if not isinstance(message, dict):
        return ABSENT
    request_id = message.get("requestId")
    valid = (isinstance(request_id, int) and not isinstance(request_id, bool)) or (
        isinstance(request_id, str) and len(request_id) <= 128
    )
    return request_id if valid else ABSENT


def is_query(frame: Frame) -> bool:
    """A message the worker hands to the ingest if it is valid (its reply may come late)."""
    try:
        message = orjson.loads(frame.payload)
    except orjson.JSONDecodeError:
        return False
    return isinstance(message, dict) and message.get("type") in (
        "get_active_conversations",
        "get_project_activity",
        "get_projects",
    )


def accepted_as_event(frames: list[bytes]) -> bool:
    """Whether the ingest gives this producer message a ``seq`` (docs/protocol.md section 10)."""
    if len(frames) != 1 or len(frames[0]) > 1_048_576:
        return False
    try:
        message = orjson.loads(frames[0])
    except orjson.JSONDecodeError:
        return False
    if not isinstance(message, dict):
        return False
    type_, data, timestamp = message.get("type"), message.get("data"), message.get("timestamp")
    if not (isinstance(type_, str) and 0 < len(type_) <= 64) or type_ in RESERVED:
        return False
    if not isinstance(data, dict) or type_ == "revoke_session":  # a revocation is no event
        return False
    return timestamp is None or (
        isinstance(timestamp, int | float) and not isinstance(timestamp, bool) and timestamp >= 0
    )


# --- one round ------------------------------------------------------------------------------------


class _Collector(WSListener):
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.close_code: int | None = None
        self.changed = asyncio.Event()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.messages.append(orjson.loads(frame.get_payload_as_bytes()))
            self.changed.set()
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code().value
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.changed.set()


class FuzzConnection:
    """A raw connection and the replies the model expects from it."""

    def __init__(self, transport: WSTransport, collector: _Collector, number: int) -> None:
        self.transport = transport
        self.collector = collector
        self.expected: list[Any] = []
        self.queries = 0  # requests the ingest answers, later than the worker answers the others
        self.closing = False
        self.final = f"final-{number}"

    @classmethod
    async def open(cls, server: ServerProcess, number: int) -> FuzzConnection:
        transport, collector = await ws_connect(
            _Collector, server.url, extra_headers=server.authorization(), websocket_handshake_timeout=5
        )
        assert isinstance(collector, _Collector)
        return cls(transport, collector, number)

    def send(self, frame: Frame) -> None:
        self.transport.send(WSMsgType.BINARY if frame.binary else WSMsgType.TEXT, frame.payload)
        expected = expected_request_id(frame)
        if expected is NO_REPLY:
            self.closing = True
        else:
            self.expected.append(expected)
            self.queries += is_query(frame)

    def replies(self) -> list[dict[str, Any]]:
        """Everything but ``connection_established`` and events (which carry a ``seq``)."""
        return [m for m in self.collector.messages[1:] if not (isinstance(m, dict) and "seq" in m)]

    async def settle(self) -> None:
        """Wait for every reply (and, for a connection closed by its last message, the close).

        One connection's messages are handled in order, so once the final ``ping`` is answered every
        reply the worker gives at once is in; only the ingest's answers to queries may still be on
        their way. Waiting no longer than that keeps a failing example (and its shrinking) quick.
        """
        if self.closing:
            await self._until(lambda: self.transport.is_disconnected, CLOSE_TIMEOUT)
            return
        self.send(Frame(orjson.dumps({"type": "ping", "requestId": self.final})))
        await self._until(
            lambda: any(r.get("requestId") == self.final for r in self.replies()), REPLY_TIMEOUT
        )
        if 0 < len(self.expected) - len(self.replies()) <= self.queries:
            await self._until(lambda: len(self.replies()) >= len(self.expected), QUERY_WAIT)

    async def _until(self, condition: Callable[[], bool], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition() and not self.transport.is_disconnected and loop.time() < deadline:
            self.collector.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.collector.changed.wait(), deadline - loop.time())

    def check(self) -> None:
        messages = self.collector.messages
        assert messages and messages[0]["type"] == "connection_established"
        replies = self.replies()
        for reply in replies:
            assert isinstance(reply, dict) and isinstance(reply.get("data"), dict), reply
            assert isinstance(reply.get("timestamp"), int), reply
            if reply["type"] == "error":
                assert reply["data"]["code"] in ERROR_CODES, reply
            elif reply["type"] == "subscription_error":
                assert reply["data"]["code"] in SUBSCRIPTION_ERROR_CODES, reply
            else:
                assert reply["type"] in REPLY_TYPES, reply
        got = Counter(repr(r.get("requestId", ABSENT)) for r in replies)
        expected = Counter(map(repr, self.expected))
        if self.closing:
            # The close frame goes out at once, so a query still waiting for the ingest loses its
            # reply (nothing may follow a close frame); every other reply came before the close.
            assert got <= expected, f"replies {replies} for {self.expected}"
            assert expected.total() - got.total() <= self.queries, f"replies {replies} for {self.expected}"
        else:
            assert got == expected, f"replies {replies} for {self.expected}"
        if self.closing:
            assert self.collector.close_code == 1007
        else:
            assert self.collector.close_code is None and not self.transport.is_disconnected

    def close(self) -> None:
        if not self.transport.is_disconnected:
            self.transport.send_close(WSCloseCode.OK)
            self.transport.disconnect()


async def play(fuzz: Fuzz, round_: Round) -> None:
    number = next(fuzz.rounds)
    markers = fuzz.server.client()
    await markers.connect()
    await markers.subscribe({"eventTypes": [ROUND_START, ROUND_END]})
    fuzz.next_in_series()  # before the round
    fuzz.event(ROUND_START, {"round": number})

    connections: list[FuzzConnection] = []
    current: FuzzConnection | None = None
    producer = iter(round_.producer)
    for frame in round_.frames:
        if current is None:
            current = await FuzzConnection.open(fuzz.server, len(connections))
            connections.append(current)
        current.send(frame)
        if current.closing:
            current = None  # closed by the server: the rest of the round goes to a new connection
        frames = next(producer, None)
        if frames is not None:
            fuzz.push.send_multipart(frames)
    for frames in producer:
        fuzz.push.send_multipart(frames)
    fuzz.event(ROUND_END, {"round": number})
    fuzz.next_in_series()  # after the round

    try:
        await asyncio.gather(*(c.settle() for c in connections))
        for connection in connections:
            connection.check()
        start = await next_event(markers, ROUND_START, 5)
        end = await next_event(markers, ROUND_END, 5)
        assert start is not None and end is not None, "the round's markers never came back"
        assert start["data"]["round"] == end["data"]["round"] == number
        accepted = sum(accepted_as_event(frames) for frames in round_.producer)
        assert end["seq"] - start["seq"] - 1 == accepted, "the ingest accepted other producer messages"
    finally:
        for connection in connections:
            connection.close()
        await markers.close()


# A pass takes seconds; a failure is shrunk over real sockets, which hypothesis may spend up to five
# minutes on: room for that beyond pyproject's 120 s, so the shrunk example gets reported.
@pytest.mark.timeout(600)
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,  # nothing written to the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(round_=rounds)
def test_random_inputs_get_their_documented_answers(fuzz: Fuzz, round_: Round) -> None:
    # One fresh loop per example (see the module docstring).
    uvloop.run(asyncio.wait_for(play(fuzz, round_), 60))


def test_after_the_fuzzing_nothing_was_lost_and_no_worker_died(fuzz: Fuzz) -> None:
    fuzz.event(SERIES_END, {})
    assert fuzz.bystander.ended.wait(10), "the well-behaved client heard no end"
    events = fuzz.bystander.messages
    assert events and events[-1]["type"] == SERIES_END
    assert [m["type"] for m in events[:-1]] == [SERIES] * fuzz.published
    assert [m["data"]["n"] for m in events[:-1]] == list(range(fuzz.published))
    seqs = [m["seq"] for m in events]
    assert seqs == sorted(set(seqs)), "in seq order, none twice"
    assert fuzz.published >= 2 * MAX_EXAMPLES, "hypothesis ran fewer rounds than asked"
    assert sorted(fuzz.server.pids_named("obs-worker")) == fuzz.worker_pids
    assert fuzz.server.pids_named("obs-ingest") == fuzz.ingest_pids
    log = fuzz.server.log()
    for sign in ("Traceback", "was killed", "exited with status"):
        assert sign not in log, f"server log shows {sign!r}:\n{log[-4000:]}"
