"""Bad inputs against one real server: every row is one input and the exact answer it must get.

Six families share the module's server (two workers): the HTTP handshake (a status line read over
raw TCP), WebSocket frames (raw bytes after a valid handshake; the close code the server sends),
JSON, client messages and filters (the ``error`` / ``subscription_error`` code and the ``requestId``
echoed, the connection still usable afterwards), and producer events ("dropped": no ``seq``
consumed). A well-behaved subscriber on each worker connects before the first row; after every
row the next number of a series is published, and the last test checks that each subscriber got
the whole series, in order, once, and that no worker died or logged a traceback.

Every expected answer is the one docs/protocol.md gives (handshake outcomes, errors, frames, close
codes, producer validation). A row marked ``xfail(strict=True)`` asserts what the server should
answer and does not yet: its reason says why.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import zmq

from core.auth import mint_token
from core.ingest import RESERVED_TYPES
from tests.harness import TEST_SECRET, Bystander, ServerProcess, next_event

SERIES = "bad_inputs_series"
SERIES_END = "bad_inputs_series_end"
REPLY_TIMEOUT = 5.0

# --- the module's shared pieces: one PUSH socket, the series, the bystanders -------------------


class Feed:
    """Every producer message of this module goes through this one PUSH socket, so the ingest
    receives them in the order they were sent: a row's markers and bad frames can never be
    overtaken by a series event or by another row's frames."""

    def __init__(self, endpoint: str) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.socket = self.context.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.LINGER, 2000)
        self.socket.setsockopt(zmq.SNDTIMEO, 5000)
        self.socket.connect(endpoint)
        self.numbers = itertools.count()
        self.published = 0

    def event(self, type_: str, data: dict[str, Any]) -> None:
        self.socket.send(orjson.dumps({"type": type_, "data": data}))

    def frames(self, frames: list[bytes]) -> None:
        self.socket.send_multipart(frames)

    def next_in_series(self) -> None:
        self.event(SERIES, {"n": next(self.numbers)})
        self.published += 1

    def close(self) -> None:
        self.socket.close()
        self.context.term()


@dataclass
class Watch:
    feed: Feed
    bystanders: list[Bystander]
    worker_pids: list[int]
    ingest_pids: list[int]


@pytest.fixture(scope="module")
def watch(server: ServerProcess) -> Iterator[Watch]:
    """Connected and subscribed before the first row: one bystander on each worker."""
    feed = Feed(server.ingest_endpoint)
    by_worker: dict[int, Bystander] = {}
    for _ in range(50):
        if len(by_worker) == server.workers:
            break
        candidate = Bystander(server, SERIES, SERIES_END, REPLY_TIMEOUT)
        if candidate.worker in by_worker:
            candidate.close()
        else:
            by_worker[candidate.worker] = candidate
    assert sorted(by_worker) == list(range(1, server.workers + 1)), "SO_REUSEPORT never reached a worker"
    for bystander in by_worker.values():
        bystander.subscribe()
    yield Watch(
        feed,
        list(by_worker.values()),
        sorted(server.pids_named("obs-worker")),
        server.pids_named("obs-ingest"),
    )
    for bystander in by_worker.values():
        bystander.close()
    feed.close()


@pytest.fixture(autouse=True)
def interleave(watch: Watch) -> Iterator[None]:
    """After every row, the next number of the series: the bystanders must get them all."""
    yield
    watch.feed.next_in_series()


@dataclass(frozen=True)
class Tokens:
    valid: str
    expired: str
    forged: str
    alg_none: str
    shorter: str
    other_user: str


@pytest.fixture(scope="module")
def tokens(server: ServerProcess) -> Tokens:
    def unsigned(claims: dict[str, Any]) -> str:
        def part(value: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()

        return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."

    now = int(time.time())
    return Tokens(
        valid=server.token(),
        expired=mint_token(TEST_SECRET, "HS256", user="tester", projects=None, ttl=-3600),
        forged=mint_token(
            "a-different-secret-that-is-long-enough-too!", "HS256", user="tester", projects=None, ttl=600
        ),
        alg_none=unsigned({"sub": "tester", "projectIds": "*", "permissions": ["admin"], "exp": now + 600}),
        shorter=server.token(ttl=60),  # the connections' own tokens live 3600 s
        other_user=server.token(user="mallory", ttl=7200),
    )


# --- 1. the handshake ----------------------------------------------------------------------------

KEY = base64.b64encode(b"sixteen byte key").decode()
BASE_HEADERS = {
    "Host": "127.0.0.1:{port}",
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
    "Authorization": "Bearer {valid}",
}
CLOSED = 0  # no HTTP response at all: the server closed the TCP connection


@dataclass(frozen=True)
class Handshake:
    """A request built from the valid one: header overrides (None removes one), extra lines."""

    headers: dict[str, str | None] = field(default_factory=dict)
    request_line: str = "GET / HTTP/1.1"
    extra: tuple[str, ...] = ()
    raw: bytes | None = None  # sent as is instead

    def render(self, values: dict[str, Any]) -> bytes:
        if self.raw is not None:
            return self.raw
        merged = {**BASE_HEADERS, **self.headers}
        lines = [self.request_line]
        lines += [f"{name}: {value.format(**values)}" for name, value in merged.items() if value is not None]
        lines += list(self.extra)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def refused(case_id: str, status: int, handshake: Handshake, reason: str | None = None) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(handshake, status, id=case_id, marks=marks)


HANDSHAKES = [
    # Not HTTP that picows accepts: refused before anything else is looked at, token or not.
    refused("not-http", 400, Handshake(raw=b"hello\r\n\r\n")),
    refused("empty-request", 400, Handshake(raw=b"\r\n\r\n")),
    refused("tls-hello-bytes", 400, Handshake(raw=b"\x16\x03\x01\x00\xa5\x01\x00\x00\r\n\r\n")),
    refused("method-post", 400, Handshake(request_line="POST / HTTP/1.1")),
    refused("method-lowercase", 400, Handshake(request_line="get / HTTP/1.1")),
    refused("http-1.0", 400, Handshake(request_line="GET / HTTP/1.0")),
    refused("http2-preface", 400, Handshake(request_line="PRI * HTTP/2.0")),
    refused("request-line-two-parts", 400, Handshake(request_line="GET /")),
    refused("header-without-colon", 400, Handshake(extra=("Bogus header",))),
    refused("header-folded", 400, Handshake(extra=("X-A: 1", " folded"))),
    refused("header-name-with-space", 400, Handshake(extra=("Bad Name: 1",))),
    refused("header-value-control-char", 400, Handshake(extra=("X-A: a\x01b",))),
    refused("request-body", 400, Handshake(extra=("Content-Length: 5",))),
    refused("chunked-body", 400, Handshake(extra=("Transfer-Encoding: chunked",))),
    refused("129-headers", 400, Handshake(extra=tuple(f"X-{i}: 1" for i in range(123)))),
    refused("headers-over-16-KiB", CLOSED, Handshake(extra=("X-Big: " + "a" * 17_000,))),
    # HTTP, but not a WebSocket upgrade (checked after the token, so these carry a valid one).
    # A request that asks for no WebSocket is plain HTTP: GET / is the dashboard, no token needed.
    refused("plain-get", 200, Handshake({"Upgrade": None, "Connection": None})),
    refused("upgrade-h2c", 200, Handshake({"Upgrade": "h2c"})),
    refused("no-connection-header", 400, Handshake({"Connection": None})),
    refused("connection-keep-alive", 400, Handshake({"Connection": "keep-alive"})),
    refused("no-key", 400, Handshake({"Sec-WebSocket-Key": None})),
    refused("key-not-base64", 400, Handshake({"Sec-WebSocket-Key": "!!not*base64!!"})),
    refused("key-15-bytes", 400, Handshake({"Sec-WebSocket-Key": base64.b64encode(b"x" * 15).decode()})),
    refused("key-17-bytes", 400, Handshake({"Sec-WebSocket-Key": base64.b64encode(b"x" * 17).decode()})),
    refused("key-not-ascii", 400, Handshake({"Sec-WebSocket-Key": "\xe9" * 24})),
    refused("version-12", 400, Handshake({"Sec-WebSocket-Version": "12"})),
    refused("no-version", 400, Handshake({"Sec-WebSocket-Version": None})),
    # RFC 6455 4.2.1: Connection must *include* the Upgrade token; Firefox sends this one.
    refused("connection-token-list-is-fine", 101, Handshake({"Connection": "keep-alive, Upgrade"})),
    # Token problems: 401, and the token is checked before the upgrade is.
    refused("plain-get-without-token", 200, Handshake({"Upgrade": None, "Authorization": None})),
    refused("no-token", 401, Handshake({"Authorization": None})),
    refused("empty-bearer", 401, Handshake({"Authorization": "Bearer "})),
    refused("basic-auth", 401, Handshake({"Authorization": "Basic dXNlcjpwYXNz"})),
    refused("garbage-token", 401, Handshake({"Authorization": "Bearer not.a.token"})),
    refused("expired-token", 401, Handshake({"Authorization": "Bearer {expired}"})),
    refused("forged-token", 401, Handshake({"Authorization": "Bearer {forged}"})),
    refused("alg-none-token", 401, Handshake({"Authorization": "Bearer {alg_none}"})),
    refused("garbage-query-token", 401, Handshake({"Authorization": None}, "GET /?token=abc HTTP/1.1")),
    refused(
        "garbage-subprotocol-token",
        401,
        Handshake({"Authorization": None, "Sec-WebSocket-Protocol": "bearer, abc"}),
    ),
    # A foreign Origin: 403, checked first of all.
    refused("foreign-origin", 403, Handshake({"Origin": "https://evil.example"})),
    refused(
        "foreign-origin-without-token",
        403,
        Handshake({"Origin": "https://evil.example", "Authorization": None}),
    ),
    refused("origin-null", 403, Handshake({"Origin": "null"})),
    refused("origin-other-port", 403, Handshake({"Origin": "http://127.0.0.1:1"})),
    refused("origin-without-host", 403, Handshake({"Origin": "http://127.0.0.1:{port}", "Host": None})),
]


async def handshake_response(server: ServerProcess, request: bytes) -> tuple[int, dict[str, str]]:
    """The status and headers (names lowercased) of the server's answer; CLOSED if it sent none."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REPLY_TIMEOUT)
    except (ConnectionError, asyncio.IncompleteReadError):
        return CLOSED, {}
    finally:
        writer.close()
    status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status), {name.lower(): value for name, value in headers.items()}


@pytest.mark.parametrize(("handshake", "status"), HANDSHAKES)
async def test_handshake(server: ServerProcess, tokens: Tokens, handshake: Handshake, status: int) -> None:
    values = {"port": server.port, **tokens.__dict__}
    got, headers = await handshake_response(server, handshake.render(values))
    assert got == status
    if status >= 400:  # every refusal closes, and a 401 says which scheme it wants
        assert headers.get("connection") == "close"
        assert headers.get("content-type") == "text/plain"
        assert ("www-authenticate" in headers) == (status == 401)
        assert headers.get("www-authenticate", "Bearer") == "Bearer"


# --- 2. frames -----------------------------------------------------------------------------------

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 65_536  # max_message_bytes' default


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    masked: bool = True,
    rsv: int = 0,
    length: bytes | None = None,
) -> bytes:
    """One client frame; ``length`` replaces the encoded payload length (7-bit flag and extension)."""
    size = len(payload)
    if length is None:
        if size < 126:
            length = bytes([size])
        elif size < 65_536:
            length = bytes([126]) + struct.pack("!H", size)
        else:
            length = bytes([127]) + struct.pack("!Q", size)
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode, (0x80 if masked else 0) | length[0]]) + length[1:]
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason)


PING_REQUEST = b'{"type": "ping", "data": {}}'


def rfc(reason: str) -> Any:
    return pytest.mark.xfail(strict=True, reason=reason)


FRAMES = [
    # Fragmentation, decided by Observatory.
    pytest.param(frame(CONTINUATION, b"x"), 1002, id="continuation-without-start"),
    pytest.param(frame(CONTINUATION, b"x", fin=False), 1002, id="unfinished-continuation-without-start"),
    pytest.param(frame(TEXT, b'{"ty', fin=False) + frame(TEXT, b"x"), 1002, id="text-inside-fragmented-text"),
    pytest.param(
        frame(TEXT, b'{"ty', fin=False) + frame(BINARY, b"x"), 1002, id="binary-inside-fragmented-text"
    ),
    pytest.param(
        frame(BINARY, b"\x00", fin=False) + frame(TEXT, b"{}"), 1002, id="text-inside-fragmented-binary"
    ),
    # Size: one frame over max_message_bytes is refused by picows, fragments adding up by Observatory.
    pytest.param(frame(TEXT, b" " * (MAX_MESSAGE + 1)), 1009, id="text-frame-one-byte-too-big"),
    pytest.param(frame(BINARY, b"\x00" * 200_000), 1009, id="binary-frame-too-big"),
    pytest.param(
        frame(TEXT, b" " * 30_000, fin=False)
        + frame(CONTINUATION, b" " * 30_000, fin=False)
        + frame(CONTINUATION, b" " * 30_000),
        1009,
        id="fragmented-text-too-big",
    ),
    pytest.param(
        frame(BINARY, b"\x00" * 40_000, fin=False) + frame(CONTINUATION, b"\x00" * 40_000),
        1009,
        id="fragmented-binary-too-big",
    ),
    # Text that is not UTF-8 (RFC 6455 8.1).
    pytest.param(frame(TEXT, b'{"type": "ping", "x": "\xff"}'), 1007, id="text-byte-ff"),
    pytest.param(frame(TEXT, b'{"type": "ping", "x": "\xe2\x82"}'), 1007, id="text-truncated-sequence"),
    pytest.param(frame(TEXT, b'{"type": "ping", "x": "\xed\xa0\x80"}'), 1007, id="text-encoded-surrogate"),
    pytest.param(frame(TEXT, b'{"type": "ping", "x": "\xc0\xaf"}'), 1007, id="text-overlong-encoding"),
    pytest.param(
        frame(TEXT, b"\xff\xfe", fin=False) + frame(CONTINUATION, b"{}"), 1007, id="fragmented-text-not-utf8"
    ),
    # Frame-level violations, decided by picows.
    pytest.param(frame(TEXT, PING_REQUEST, masked=False), 1002, id="unmasked-text"),
    pytest.param(frame(CLOSE, struct.pack("!H", 1000), masked=False), 1002, id="unmasked-close"),
    pytest.param(frame(0x3, b""), 1002, id="reserved-data-opcode-3"),
    pytest.param(frame(0xB, b""), 1002, id="reserved-control-opcode-b"),
    pytest.param(frame(PING, b"", fin=False), 1002, id="fragmented-ping"),
    pytest.param(frame(PING, b"x" * 126), 1002, id="ping-payload-126-bytes"),
    pytest.param(frame(CLOSE, struct.pack("!H", 1000) + b"x" * 124), 1002, id="close-payload-126-bytes"),
    pytest.param(frame(TEXT, b"{}", length=b"\x7e\x00\x02"), 1002, id="length-16-bit-not-minimal"),
    pytest.param(
        frame(TEXT, b"{}", length=b"\x7f" + struct.pack("!Q", 2)), 1002, id="length-64-bit-not-minimal"
    ),
    pytest.param(
        frame(TEXT, b"", length=b"\x7f" + struct.pack("!Q", 1 << 63)), 1002, id="length-64-bit-msb-set"
    ),
    pytest.param(frame(CLOSE, b"\x03"), 1002, id="close-payload-1-byte"),
    pytest.param(close_frame(999), 1002, id="close-code-999"),
    pytest.param(close_frame(1004), 1002, id="close-code-1004-reserved"),
    pytest.param(close_frame(1005), 1002, id="close-code-1005-never-sent"),
    pytest.param(close_frame(1015), 1002, id="close-code-1015-never-sent"),
    pytest.param(close_frame(2999), 1002, id="close-code-2999"),
    pytest.param(close_frame(1000, b"\xff"), 1007, id="close-reason-not-utf8"),
    # Forbidden in a frame, but answered like a close without a code (docs/protocol.md section 7).
    pytest.param(close_frame(1006), 1000, id="close-code-1006-answered-1000"),
    # RFC 6455 5.2: no extension is negotiated, so a reserved bit set fails the connection.
    pytest.param(frame(TEXT, PING_REQUEST, rsv=0b100), 1002, id="rsv1-on-text"),
    pytest.param(frame(BINARY, b"\x00", rsv=0b010), 1002, id="rsv2-on-binary"),
    pytest.param(
        frame(TEXT, b'{"type": ', fin=False) + frame(CONTINUATION, b'"ping"}', rsv=0b001),
        1002,
        id="rsv3-on-continuation",
    ),
    pytest.param(frame(PONG, b"", rsv=0b100), 1002, id="rsv1-on-pong"),
    pytest.param(
        frame(PING, b"", rsv=0b001),
        1002,
        id="rsv3-on-ping",
        marks=rfc(
            "RFC 6455 5.2, as rsv1-on-text; but picows answers a ping itself (auto-pong) before "
            "ClientSession.on_ws_frame sees the frame, so the server's RSV check never runs for pings"
        ),
    ),
    # RFC 6455 7.4.2 assigns close codes up to 4999 only.
    pytest.param(close_frame(5000), 1002, id="close-code-5000"),
    pytest.param(close_frame(65535), 1002, id="close-code-65535"),
]


class RawSocket:
    """A WebSocket spoken byte by byte, to send what no client library would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server: ServerProcess) -> RawSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(Handshake().render({"port": server.port, "valid": server.token()}))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REPLY_TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101 "), head
        raw = cls(reader, writer)
        opcode, payload = await raw.read_frame()
        assert opcode == TEXT and orjson.loads(payload)["type"] == "connection_established"
        return raw

    async def read_frame(self, timeout: float = REPLY_TIMEOUT) -> tuple[int, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        assert head[0] & 0x80 and not head[1] & 0x80, "the server sends whole, unmasked frames"
        size = head[1] & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return head[0] & 0x0F, await asyncio.wait_for(self.reader.readexactly(size), REPLY_TIMEOUT)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        try:
            await self.writer.drain()
        except ConnectionError:
            pass  # the server may close before it has read everything: its close frame is what counts

    async def close_code(self) -> int | None:
        """The code of the server's close frame (other frames skipped); None: no close frame."""
        try:
            while True:
                # The server closes at once; a row still waiting after this long got no close.
                opcode, payload = await self.read_frame(timeout=2.0)
                if opcode == CLOSE:
                    return int.from_bytes(payload[:2], "big") if payload else None
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            return None

    def abort(self) -> None:
        self.writer.transport.abort()


@pytest.mark.parametrize(("data", "code"), FRAMES)
async def test_frames(server: ServerProcess, data: bytes, code: int) -> None:
    raw = await RawSocket.open(server)
    try:
        await raw.send(data)
        assert await raw.close_code() == code
    finally:
        raw.abort()


# --- 3-5. JSON, messages and filters: an error reply, and the connection lives on ----------------

NO_ID = object()  # the reply must carry no requestId


@dataclass(frozen=True)
class Send:
    payload: bytes
    binary: bool = False
    token: dict[str, Any] | None = None  # claims for server.token(); None: the all-powerful token
    setup: tuple[bytes, ...] = ()  # sent first, each reply awaited and ignored


@dataclass(frozen=True)
class Answer:
    type: str  # "error", "subscription_error", or the reply a request that is not refused gets
    code: str | None
    request_id: Any = NO_ID


def row(case_id: str, send: Send | bytes, answer: Answer, bug: str | None = None) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    return pytest.param(send if isinstance(send, Send) else Send(send), answer, id=case_id, marks=marks)


def invalid(request_id: Any = NO_ID) -> Answer:
    return Answer("error", "INVALID_MESSAGE", request_id)


def message(type_: Any, data: Any = None, request_id: Any = NO_ID, **extra: Any) -> bytes:
    body: dict[str, Any] = {"type": type_, **extra}
    if data is not None:
        body["data"] = data
    if request_id is not NO_ID:
        body["requestId"] = request_id
    return orjson.dumps(body)


def nested(depth: int) -> bytes:
    return b'{"type": "ping", "requestId": "deep", "data": {"x": ' + b"[" * depth + b"]" * depth + b"}}"


JSON_ROWS = [
    row("not-json", b"invalid json", invalid()),
    row("empty-text", b"", invalid()),
    row("whitespace-only", b" \r\n\t ", invalid()),
    row("array", b"[1, 2]", invalid()),
    row("empty-array", b"[]", invalid()),
    row("number", b"42", invalid()),
    row("fraction", b"-0.5e3", invalid()),
    row("string", b'"ping"', invalid()),
    row("true", b"true", invalid()),
    row("null", b"null", invalid()),
    row("single-quotes", b"{'type': 'ping'}", invalid()),
    row("unquoted-keys", b"{type: 1}", invalid()),
    row("trailing-comma", b'{"type": "ping",}', invalid()),
    row("comment", b'// hi\n{"type": "ping"}', invalid()),
    row("trailing-garbage", b'{"type": "ping"} x', invalid()),
    row("two-documents", b'{"type": "ping"}{"type": "ping"}', invalid()),
    row("nul-after-document", b'{"type": "ping"}\x00', invalid()),
    row("byte-order-mark", b'\xef\xbb\xbf{"type": "ping"}', invalid()),
    row("nan-literal", b'{"type": "ping", "data": {"timestamp": NaN}}', invalid()),
    row("infinity-literal", b'{"type": "ping", "data": {"timestamp": Infinity}}', invalid()),
    row(
        "number-overflowing-double",
        b'{"type": "ping", "requestId": 1, "data": {"timestamp": 1e400}}',
        invalid(),
    ),
    row("lone-surrogate-escape", b'{"type": "ping", "requestId": "\\ud800"}', invalid()),
    row("unterminated-string", b'{"type": "ping', invalid()),
    row("nesting-over-orjson-limit", nested(1100), invalid()),
    # Valid JSON that is still odd: the request goes through.
    row("nesting-in-an-ignored-field", nested(1000), Answer("pong", None, "deep")),
    row(
        "integer-over-64-bits-is-a-float",
        b'{"type": "ping", "data": {"timestamp": 1000000000000000000000000000000}, "requestId": "big"}',
        Answer("pong", None, "big"),
    ),
    row(
        "request-id-over-64-bits-is-a-float",
        b'{"type": "ping", "requestId": 18446744073709551616}',
        invalid(),
    ),
    row(
        "duplicate-type-last-wins",
        b'{"type": "ping", "type": "nope", "requestId": "dup"}',
        Answer("error", "UNKNOWN_MESSAGE_TYPE", "dup"),
    ),
    row("duplicate-request-id-last-wins", b'{"type": "ping", "requestId": "a", "requestId": [1]}', invalid()),
]

MESSAGE_ROWS = [
    # The envelope, checked in the documented order: JSON, object, requestId, type, data, known type.
    row("type-missing", b'{"data": {}, "requestId": "m"}', invalid("m")),
    row("type-null", b'{"type": null, "requestId": "m"}', invalid("m")),
    row("type-number", message(5, None, "m"), invalid("m")),
    row("type-list", message(["ping"], None, "m"), invalid("m")),
    row("type-object", message({"ping": 1}, None, "m"), invalid("m")),
    row("type-empty", message("", None, "m"), Answer("error", "UNKNOWN_MESSAGE_TYPE", "m")),
    row("type-unknown", message("launch_missiles", None, "m"), Answer("error", "UNKNOWN_MESSAGE_TYPE", "m")),
    row("type-wrong-case", message("PING", None, 7), Answer("error", "UNKNOWN_MESSAGE_TYPE", 7)),
    row("type-of-a-server-message", message("pong", None, "m"), Answer("error", "UNKNOWN_MESSAGE_TYPE", "m")),
    row("type-10000-chars", message("t" * 10_000, None, "m"), Answer("error", "UNKNOWN_MESSAGE_TYPE", "m")),
    row("data-array", message("ping", [], "m"), invalid("m")),
    row("data-string", message("ping", "x", "m"), invalid("m")),
    row("data-number", message("ping", 0, "m"), invalid("m")),
    row("data-true", message("ping", True, "m"), invalid("m")),
    row("data-invalid-before-type-unknown", message("nope", [], "m"), invalid("m")),
    row("request-id-true", message("ping", {}, True), invalid()),
    row("request-id-false", message("ping", {}, False), invalid()),
    row("request-id-fraction", message("ping", {}, 1.5), invalid()),
    row("request-id-float-integral", message("ping", {}, 1.0), invalid()),
    row("request-id-object", message("ping", {}, {"id": 1}), invalid()),
    row("request-id-list", message("ping", {}, [1]), invalid()),
    row("request-id-129-chars", message("ping", {}, "r" * 129), invalid()),
    row("request-id-invalid-before-type", message(5, None, "r" * 129), invalid()),
    row(
        "request-id-128-chars-is-fine",
        message("nope", None, "r" * 128),
        Answer("error", "UNKNOWN_MESSAGE_TYPE", "r" * 128),
    ),
    row("binary-message", Send(PING_REQUEST, binary=True), invalid()),
    row("binary-not-utf8", Send(b"\xff\xfe\x00", binary=True), invalid()),
    # Request fields.
    row("ping-timestamp-string", message("ping", {"timestamp": "now"}, "m"), invalid("m")),
    row("ping-timestamp-true", message("ping", {"timestamp": True}, "m"), invalid("m")),
    row("ping-timestamp-list", message("ping", {"timestamp": [1]}, "m"), invalid("m")),
    row("client-info-string", message("subscribe", {"filters": {}, "clientInfo": "me"}, "m"), invalid("m")),
    row(
        "client-info-name-number",
        message("subscribe", {"filters": {}, "clientInfo": {"name": 1}}, "m"),
        invalid("m"),
    ),
    row(
        "client-info-version-list",
        message("subscribe", {"filters": {}, "clientInfo": {"version": []}}, "m"),
        invalid("m"),
    ),
    row("subscription-key-number", message("unsubscribe", {"subscriptionKey": 1}, "m"), invalid("m")),
    row(
        "subscription-key-unknown",
        message("unsubscribe", {"subscriptionKey": "sub_0000000000000000"}, "m"),
        Answer("subscription_error", "SUBSCRIPTION_NOT_FOUND", "m"),
    ),
    # An empty key is a key like any other: not the key of {} (the connection holds that one).
    row(
        "subscription-key-empty",
        Send(
            message("unsubscribe", {"subscriptionKey": ""}, "m"),
            setup=(message("subscribe", {"filters": {}}, "s"),),
        ),
        Answer("subscription_error", "SUBSCRIPTION_NOT_FOUND", "m"),
    ),
    row("limit-zero", message("get_active_conversations", {"limit": 0}, "m"), invalid("m")),
    row("limit-1001", message("get_active_conversations", {"limit": 1001}, "m"), invalid("m")),
    row("limit-string", message("get_active_conversations", {"limit": "10"}, "m"), invalid("m")),
    row("limit-true", message("get_active_conversations", {"limit": True}, "m"), invalid("m")),
    row("limit-fraction", message("get_active_conversations", {"limit": 2.5}, "m"), invalid("m")),
    row(
        "conversations-project-string",
        message("get_active_conversations", {"projectId": "7"}, "m"),
        invalid("m"),
    ),
    row(
        "conversations-project-true",
        message("get_active_conversations", {"projectId": True}, "m"),
        invalid("m"),
    ),
    row(
        "conversations-project-over-64-bits",
        b'{"type": "get_active_conversations", "data": {"projectId": 18446744073709551616}, '
        b'"requestId": "m"}',
        invalid("m"),
    ),
    row("projects-limit-zero", message("get_projects", {"limit": 0}, "m"), invalid("m")),
    row("projects-limit-over-1000", message("get_projects", {"limit": 1001}, "m"), invalid("m")),
    row("projects-limit-string", message("get_projects", {"limit": "10"}, "m"), invalid("m")),
    row("projects-limit-true", message("get_projects", {"limit": True}, "m"), invalid("m")),
    row("projects-limit-fraction", message("get_projects", {"limit": 2.5}, "m"), invalid("m")),
    row("activity-project-missing", message("get_project_activity", {}, "m"), invalid("m")),
    row("activity-project-null", message("get_project_activity", {"projectId": None}, "m"), invalid("m")),
    row("activity-project-fraction", message("get_project_activity", {"projectId": 7.5}, "m"), invalid("m")),
    row(
        "activity-range-list",
        message("get_project_activity", {"projectId": 7, "timeRange": [0, 1]}, "m"),
        invalid("m"),
    ),
    row(
        "activity-range-start-string",
        message("get_project_activity", {"projectId": 7, "timeRange": {"start": "0"}}, "m"),
        invalid("m"),
    ),
    row(
        "activity-range-end-true",
        message("get_project_activity", {"projectId": 7, "timeRange": {"end": True}}, "m"),
        invalid("m"),
    ),
    row(
        "activity-range-start-after-end",
        message("get_project_activity", {"projectId": 7, "timeRange": {"start": 2, "end": 1}}, "m"),
        invalid("m"),
    ),
    row("refresh-token-missing", message("refresh_token", {}, "m"), invalid("m")),
    row("refresh-token-empty", message("refresh_token", {"token": ""}, "m"), invalid("m")),
    row("refresh-token-number", message("refresh_token", {"token": 1}, "m"), invalid("m")),
    row("refresh-token-8193-chars", message("refresh_token", {"token": "t" * 8193}, "m"), invalid("m")),
    row(
        "refresh-token-garbage",
        message("refresh_token", {"token": "not.a.token"}, "m"),
        Answer("error", "UNAUTHORIZED", "m"),
    ),
    row(
        "refresh-token-expired",
        message("refresh_token", {"token": "$expired"}, "m"),
        Answer("error", "UNAUTHORIZED", "m"),
    ),
    row(
        "refresh-token-forged",
        message("refresh_token", {"token": "$forged"}, "m"),
        Answer("error", "UNAUTHORIZED", "m"),
    ),
    row(
        "refresh-token-alg-none",
        message("refresh_token", {"token": "$alg_none"}, "m"),
        Answer("error", "UNAUTHORIZED", "m"),
    ),
    row(
        "refresh-token-expiring-sooner",
        message("refresh_token", {"token": "$shorter"}, "m"),
        Answer("error", "UNAUTHORIZED", "m"),
    ),
    row(
        "refresh-token-of-another-user",
        message("refresh_token", {"token": "$other_user"}, "m"),
        Answer("error", "UNAUTHORIZED", "m"),
    ),
    row(
        "query-outside-the-token-projects",
        Send(message("get_project_activity", {"projectId": 2}, "m"), token={"projects": [1]}),
        Answer("error", "UNAUTHORIZED", "m"),
    ),
    row(
        "query-without-query-permission",
        Send(message("get_active_conversations", {}, "m"), token={"permissions": ["subscribe"]}),
        Answer("error", "UNAUTHORIZED", "m"),
    ),
    row(
        "projects-without-query-permission",
        Send(message("get_projects", {}, "m"), token={"permissions": ["subscribe"]}),
        Answer("error", "UNAUTHORIZED", "m"),
    ),
]


def subscribe(filters: Any) -> bytes:
    return message("subscribe", {"filters": filters}, "f")


BAD_FILTERS = Answer("subscription_error", "INVALID_FILTERS", "f")
UNAUTHORIZED = Answer("subscription_error", "UNAUTHORIZED", "f")

FILTER_ROWS = [
    row("no-filters-key", message("subscribe", {}, "f"), BAD_FILTERS),
    row("no-data", message("subscribe", None, "f"), BAD_FILTERS),
    row("filters-number", subscribe(5), BAD_FILTERS),
    row("filters-string", subscribe("projectIds"), BAD_FILTERS),
    row("filters-list", subscribe([{"projectIds": [1]}]), BAD_FILTERS),
    row("filters-true", subscribe(True), BAD_FILTERS),
    row("unknown-kind", subscribe({"colour": ["red"]}), BAD_FILTERS),
    row("kind-wrong-case", subscribe({"ProjectIds": [1]}), BAD_FILTERS),
    row("unknown-kind-beside-known", subscribe({"projectIds": [1], "userIds": ["u"]}), BAD_FILTERS),
    row("kind-number", subscribe({"projectIds": 1}), BAD_FILTERS),
    row("kind-string", subscribe({"eventTypes": "message_added"}), BAD_FILTERS),
    row("kind-object", subscribe({"sessionIds": {"s": 1}}), BAD_FILTERS),
    row("project-id-string", subscribe({"projectIds": ["1"]}), BAD_FILTERS),
    row("project-id-fraction", subscribe({"projectIds": [1.5]}), BAD_FILTERS),
    row("project-id-float-integral", subscribe({"projectIds": [1.0]}), BAD_FILTERS),
    row("project-id-true", subscribe({"projectIds": [True]}), BAD_FILTERS),
    row("project-id-false-beside-ints", subscribe({"projectIds": [1, False]}), BAD_FILTERS),
    row("project-id-null", subscribe({"projectIds": [None]}), BAD_FILTERS),
    row("project-id-nested-list", subscribe({"projectIds": [[1]]}), BAD_FILTERS),
    row(
        "project-id-over-64-bits",
        b'{"type": "subscribe", "data": {"filters": {"projectIds": [18446744073709551616]}}, '
        b'"requestId": "f"}',
        BAD_FILTERS,
    ),
    row("101-project-ids", subscribe({"projectIds": list(range(101))}), BAD_FILTERS),
    row("101-duplicate-event-types", subscribe({"eventTypes": ["t"] * 101}), BAD_FILTERS),
    row("101-tool-names", subscribe({"toolNames": [f"tool{i}" for i in range(101)]}), BAD_FILTERS),
    row("event-type-empty", subscribe({"eventTypes": [""]}), BAD_FILTERS),
    row("session-id-empty", subscribe({"sessionIds": [""]}), BAD_FILTERS),
    row("tool-name-empty", subscribe({"toolNames": ["Bash", ""]}), BAD_FILTERS),
    row("event-type-257-chars", subscribe({"eventTypes": ["e" * 257]}), BAD_FILTERS),
    row("session-id-257-chars", subscribe({"sessionIds": ["s" * 257]}), BAD_FILTERS),
    row("tool-name-257-chars", subscribe({"toolNames": ["t" * 257]}), BAD_FILTERS),
    row("event-type-number", subscribe({"eventTypes": [1]}), BAD_FILTERS),
    row("session-id-null", subscribe({"sessionIds": [None]}), BAD_FILTERS),
    row("message-type-unknown", subscribe({"messageTypes": ["bot"]}), BAD_FILTERS),
    row("message-type-wrong-case", subscribe({"messageTypes": ["User"]}), BAD_FILTERS),
    row("message-type-empty", subscribe({"messageTypes": [""]}), BAD_FILTERS),
    row("message-type-number", subscribe({"messageTypes": [1]}), BAD_FILTERS),
    row(
        "unsubscribe-bad-filters",
        message("unsubscribe", {"filters": {"projectIds": ["1"]}}, "f"),
        BAD_FILTERS,
    ),
    row(
        "unsubscribe-key-and-bad-filters",
        message("unsubscribe", {"subscriptionKey": "sub_0", "filters": {"colour": []}}, "f"),
        BAD_FILTERS,
    ),
    row("project-not-granted", Send(subscribe({"projectIds": [2]}), token={"projects": [1]}), UNAUTHORIZED),
    row(
        "projects-partly-granted",
        Send(subscribe({"projectIds": [1, 2]}), token={"projects": [1]}),
        UNAUTHORIZED,
    ),
    row("token-grants-no-project", Send(subscribe({}), token={"projects": []}), UNAUTHORIZED),
    row("token-may-not-subscribe", Send(subscribe({}), token={"permissions": ["query"]}), UNAUTHORIZED),
]


async def reply_to(server: ServerProcess, tokens: Tokens, send: Send) -> dict[str, Any]:
    """The first message the server sends after ``send.payload``; the connection must then still work."""
    client = server.client(token=server.token(**send.token) if send.token is not None else tokens.valid)
    await client.connect()
    try:
        # connection_established reaches the event queue too: skip it.
        assert await next_event(client, "connection_established", REPLY_TIMEOUT) is not None
        for setup in send.setup:
            client.send_raw(setup)
            assert await next_event(client, None, REPLY_TIMEOUT) is not None
        payload = send.payload
        for name, value in tokens.__dict__.items():
            payload = payload.replace(f"${name}".encode(), value.encode())
        client.send_raw(payload, binary=send.binary)
        reply = await next_event(client, None, REPLY_TIMEOUT)
        assert reply is not None, f"no reply; closed with {client.close_code} {client.close_reason!r}"
        assert await client.ping() >= 0, "the connection no longer works"
        return reply
    finally:
        await client.close()


def check(reply: dict[str, Any], answer: Answer) -> None:
    assert reply["type"] == answer.type, reply
    if answer.code is not None:
        assert reply["data"]["code"] == answer.code, reply
        assert set(reply["data"]) == {"code", "message"}, reply
    if answer.request_id is NO_ID:
        assert "requestId" not in reply, reply
    else:
        assert "requestId" in reply and reply["requestId"] == answer.request_id, reply


@pytest.mark.parametrize(("send", "answer"), JSON_ROWS)
async def test_json(server: ServerProcess, tokens: Tokens, send: Send, answer: Answer) -> None:
    check(await reply_to(server, tokens, send), answer)


@pytest.mark.parametrize(("send", "answer"), MESSAGE_ROWS)
async def test_messages(server: ServerProcess, tokens: Tokens, send: Send, answer: Answer) -> None:
    check(await reply_to(server, tokens, send), answer)


@pytest.mark.parametrize(("send", "answer"), FILTER_ROWS)
async def test_filters(server: ServerProcess, tokens: Tokens, send: Send, answer: Answer) -> None:
    check(await reply_to(server, tokens, send), answer)


# --- 6. producer events: dropped, no seq consumed -------------------------------------------------


def event(**fields: Any) -> list[bytes]:
    return [orjson.dumps(fields)]


RESERVED = sorted(RESERVED_TYPES)  # every type the ingest declares the server's own

INGEST_ROWS = [
    pytest.param([b"{nope"], id="not-json"),
    pytest.param([b""], id="empty-frame"),
    pytest.param([b'{"type": "x", "data": {"s": "\xff\xfe"}}'], id="not-utf8"),
    pytest.param([b'\xef\xbb\xbf{"type": "x", "data": {}}'], id="byte-order-mark"),
    pytest.param([b'{"type": "x", "data": {}, "timestamp": 1e400}'], id="number-overflowing-double"),
    pytest.param(
        [b'{"type": "x", "data": ' + b"[" * 1100 + b"]" * 1100 + b"}"], id="nesting-over-orjson-limit"
    ),
    pytest.param([b"[1, 2, 3]"], id="array"),
    pytest.param([b"7"], id="number"),
    pytest.param([b'"message_added"'], id="string"),
    pytest.param([b"null"], id="null"),
    pytest.param(event(data={}), id="type-missing"),
    pytest.param(event(type=None, data={}), id="type-null"),
    pytest.param(event(type="", data={}), id="type-empty"),
    pytest.param(event(type="t" * 65, data={}), id="type-65-chars"),
    pytest.param(event(type=7, data={}), id="type-number"),
    pytest.param(event(type=["message_added"], data={}), id="type-list"),
    *(pytest.param(event(type=name, data={}), id=f"reserved-{name}") for name in RESERVED),
    pytest.param(event(type="ingest_bad"), id="data-missing"),
    pytest.param(event(type="ingest_bad", data=None), id="data-null"),
    pytest.param(event(type="ingest_bad", data=[1]), id="data-array"),
    pytest.param(event(type="ingest_bad", data="x"), id="data-string"),
    pytest.param(event(type="ingest_bad", data={}, timestamp="yesterday"), id="timestamp-string"),
    pytest.param(event(type="ingest_bad", data={}, timestamp=-1), id="timestamp-negative"),
    pytest.param(event(type="ingest_bad", data={}, timestamp=-1e-300), id="timestamp-negative-fraction"),
    pytest.param(event(type="ingest_bad", data={}, timestamp=True), id="timestamp-true"),
    pytest.param(event(type="ingest_bad", data={}, timestamp={"ms": 1}), id="timestamp-object"),
    pytest.param(event(type="ingest_bad", data={}, timestamp=[1]), id="timestamp-list"),
    pytest.param([*event(type="ingest_bad", data={}), b"extra"], id="two-frames"),
    pytest.param([b"control", b"revoke_session", b'{"sid": "x"}'], id="forged-bus-control-message"),
    pytest.param([orjson.dumps({"type": "ingest_bad", "data": {"blob": "x" * 1_048_576}})], id="over-1-MiB"),
    pytest.param(event(type="revoke_session", data={}), id="revoke-without-sid"),
    pytest.param(event(type="revoke_session", data={"sid": ""}), id="revoke-sid-empty"),
    pytest.param(event(type="revoke_session", data={"sid": 7}), id="revoke-sid-number"),
    pytest.param(event(type="revoke_session", data={"sid": "s" * 257}), id="revoke-sid-257-chars"),
    pytest.param(event(type="revoke_session", data=["sid"]), id="revoke-data-array"),
]


@pytest.mark.parametrize("frames", INGEST_ROWS)
async def test_ingest_events_are_dropped(server: ServerProcess, watch: Watch, frames: list[bytes]) -> None:
    client = server.client()
    await client.connect()
    await client.subscribe({})  # everything: whatever the bad frames became would show here
    watch.feed.event("ingest_row_start", {})
    watch.feed.frames(frames)
    watch.feed.event("ingest_row_end", {})
    start = await next_event(client, "ingest_row_start", REPLY_TIMEOUT)
    assert start is not None
    between = []
    while (message := await next_event(client, None, REPLY_TIMEOUT)) is not None:
        if message["type"] == "ingest_row_end":
            break
        between.append(message)
    assert message is not None, "the end marker never came: is the ingest alive?"
    assert between == []
    assert message["seq"] == start["seq"] + 1, "a seq was consumed: something was accepted"
    await client.close()


# --- after the whole table ----------------------------------------------------------------------


def test_bystanders_got_every_event_in_order_once(server: ServerProcess, watch: Watch) -> None:
    for _ in range(5):
        watch.feed.next_in_series()
    watch.feed.event(SERIES_END, {})
    for bystander in watch.bystanders:
        assert bystander.ended.wait(10), f"worker {bystander.worker}'s bystander heard no end"
    for bystander in watch.bystanders:
        events = [m for m in bystander.messages if m["type"] in (SERIES, SERIES_END)]
        assert [m["type"] for m in bystander.messages] == [m["type"] for m in events], "nothing else"
        assert [m["data"]["n"] for m in events[:-1]] == list(range(watch.feed.published))
        seqs = [m["seq"] for m in events]
        assert seqs == sorted(set(seqs)), "in seq order, none twice"
        assert len({m["epoch"] for m in events}) == 1, "the ingest never restarted"
    assert sorted(server.pids_named("obs-worker")) == watch.worker_pids
    assert server.pids_named("obs-ingest") == watch.ingest_pids
    log = server.log()
    for sign in ("Traceback", "was killed", "exited with status"):
        assert sign not in log, f"server log shows {sign!r}:\n{log[-4000:]}"
