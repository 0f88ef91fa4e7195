"""permessage-deflate (RFC 7692) against real clients: the websockets library with compression on and
off, raw frames for what no polite client sends, and headless Chromium."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from tests.harness import ServerProcess, start_server

BIG = {"text": "the same sentence, over and over. " * 300}  # ~10 KiB, compresses well


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One worker, so that every client of a test shares its broadcasts."""
    server = start_server(tmp_path_factory.mktemp("deflate"), workers=1)
    yield server
    server.stop()


def compressions(server: ServerProcess) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "observatory_compressions":
            return float(family.samples[0].value)
    raise AssertionError("no observatory_compressions in /metrics")


async def subscribed(server: ServerProcess, type_: str, **options: Any) -> ClientConnection:
    ws = await connect(
        f"ws://127.0.0.1:{server.port}/",
        additional_headers={"Authorization": f"Bearer {server.token()}"},
        max_size=2**22,
        **options,
    )
    assert orjson.loads(await ws.recv())["type"] == "connection_established"
    await ws.send(orjson.dumps({"type": "subscribe", "data": {"filters": {"eventTypes": [type_]}}}).decode())
    assert orjson.loads(await ws.recv())["type"] == "subscription_confirmed"
    return ws


async def next_of(ws: ClientConnection, type_: str) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            message = orjson.loads(await ws.recv())
            if message["type"] == type_:
                return dict(message)


async def test_an_event_is_compressed_once_per_broadcast_whatever_the_number_of_clients(
    one_worker: ServerProcess,
) -> None:
    clients = [await subscribed(one_worker, "deflate_once") for _ in range(5)]
    assert all(
        ws.response.headers["Sec-WebSocket-Extensions"] == "permessage-deflate; server_no_context_takeover"
        for ws in clients
    )
    before = compressions(one_worker)
    one_worker.producer().publish("deflate_once", BIG)
    for ws in clients:
        assert (await next_of(ws, "deflate_once"))["data"] == BIG
    assert compressions(one_worker) - before == 1
    for ws in clients:
        await ws.close()


async def test_small_messages_and_clients_without_compression_get_plain_frames(
    one_worker: ServerProcess,
) -> None:
    plain = await subscribed(one_worker, "deflate_mixed", compression=None)
    assert "Sec-WebSocket-Extensions" not in plain.response.headers
    squeezed = await subscribed(one_worker, "deflate_mixed")
    before = compressions(one_worker)
    producer = one_worker.producer()  # one producer: two would race each other to the ingest
    producer.publish("deflate_mixed", {"small": 1})
    producer.publish("deflate_mixed", BIG)
    for ws in (plain, squeezed):
        assert (await next_of(ws, "deflate_mixed"))["data"] == {"small": 1}
        assert (await next_of(ws, "deflate_mixed"))["data"] == BIG
    assert compressions(one_worker) - before == 1, "only the big event, and only for the compressing client"
    await plain.close()
    await squeezed.close()


@pytest.mark.parametrize(
    "factory",
    [
        ClientPerMessageDeflateFactory(client_no_context_takeover=True),
        ClientPerMessageDeflateFactory(server_max_window_bits=10, client_max_window_bits=9),
        ClientPerMessageDeflateFactory(),  # the client keeps its context across messages
    ],
    ids=["client-no-context-takeover", "small-windows", "client-context-takeover"],
)
async def test_compressed_client_messages_are_understood(
    one_worker: ServerProcess, factory: ClientPerMessageDeflateFactory
) -> None:
    ws = await subscribed(one_worker, "deflate_in", extensions=[factory])
    for i in range(5):
        request = {"type": "ping", "data": {"timestamp": i, "padding": "compress me " * 200}, "requestId": i}
        await ws.send(orjson.dumps(request).decode())
        pong = await next_of(ws, "pong")
        assert pong["requestId"] == request["requestId"]
    one_worker.producer().publish("deflate_in", BIG)
    assert (await next_of(ws, "deflate_in"))["data"] == BIG
    await ws.close()


async def test_a_decompression_bomb_is_closed_with_1009(one_worker: ServerProcess) -> None:
    ws = await subscribed(one_worker, "deflate_bomb")
    await ws.send(" " * 20_000_000)  # 20 MB of spaces: about 20 KB on the wire, 300 times the limit
    with pytest.raises(ConnectionClosedError) as closed:
        await next_of(ws, "never")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_the_server_can_turn_compression_off(tmp_path: Path) -> None:
    server = start_server(tmp_path, workers=1, permessage_deflate=False)
    try:

        async def offer() -> None:
            ws = await subscribed(server, "deflate_off")
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            server.producer().publish("deflate_off", BIG)
            assert (await next_of(ws, "deflate_off"))["data"] == BIG
            await ws.close()

        asyncio.run(offer())
    finally:
        server.stop()


# --- frames no polite client sends -------------------------------------------------------------


def raw_connection(server: ServerProcess, extensions: str | None) -> tuple[socket.socket, str]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET / HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Authorization: Bearer {server.token()}",
    ]
    if extensions is not None:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    head = response.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 101"), head
    return sock, head


def send_frame(sock: socket.socket, payload: bytes, rsv1: bool, opcode: int = 1) -> None:
    mask = os.urandom(4)
    first = 0x80 | (0x40 if rsv1 else 0) | opcode
    header = (
        bytes([first, 0x80 | 126]) + struct.pack("!H", len(payload))
        if len(payload) > 125
        else bytes([first, 0x80 | len(payload)])
    )
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(header + mask + masked)


def close_code_received(sock: socket.socket) -> int:
    """Read frames until the server's close frame; its status code."""
    buffer = b""
    while True:
        chunk = sock.recv(65536)
        assert chunk, "the server closed TCP without a close frame"
        buffer += chunk
        while len(buffer) >= 2:
            length = buffer[1] & 0x7F
            offset = 2
            if length == 126:
                length, offset = struct.unpack("!H", buffer[2:4])[0], 4
            elif length == 127:
                length, offset = struct.unpack("!Q", buffer[2:10])[0], 10
            if len(buffer) < offset + length:
                break
            opcode, payload = buffer[0] & 0x0F, buffer[offset : offset + length]
            buffer = buffer[offset + length :]
            if opcode == 8:
                return int(struct.unpack("!H", payload[:2])[0])


def test_a_corrupt_compressed_message_is_closed_with_1007(one_worker: ServerProcess) -> None:
    sock, head = raw_connection(one_worker, "permessage-deflate")
    try:
        assert "permessage-deflate" in head
        send_frame(sock, b"\xff\xfe\xfd this is no deflate stream", rsv1=True)
        assert close_code_received(sock) == 1007
    finally:
        sock.close()


def test_compressed_frames_without_the_extension_are_a_protocol_error(one_worker: ServerProcess) -> None:
    sock, head = raw_connection(one_worker, None)
    try:
        assert "Sec-WebSocket-Extensions" not in head
        deflater = zlib.compressobj(wbits=-15)
        compressed = deflater.compress(b'{"type": "ping"}') + deflater.flush(zlib.Z_SYNC_FLUSH)
        send_frame(sock, compressed[:-4], rsv1=True)
        assert close_code_received(sock) == 1002
    finally:
        sock.close()


# --- a real browser ----------------------------------------------------------------------------


def test_headless_chromium_negotiates_compression_and_gets_events_intact(one_worker: ServerProcess) -> None:
    from tests.browser import open_page

    with open_page() as browser:
        page = browser.page
        page.goto(f"http://127.0.0.1:{one_worker.port}/not-the-dashboard")  # an origin, and no script
        script = """async ([token, port]) => {
            const ws = new WebSocket(`ws://127.0.0.1:${port}/`, ["bearer", token]);
            const messages = [];
            ws.onmessage = (event) => messages.push(JSON.parse(event.data));
            await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
            ws.send(JSON.stringify({type: "subscribe", data: {filters: {eventTypes: ["deflate_browser"]}}}));
            while (!messages.some((m) => m.type === "subscription_confirmed")) {
                await new Promise((r) => setTimeout(r, 20));
            }
            window.__ws = ws;
            window.__messages = messages;
            return ws.extensions;
        }"""
        extensions = page.evaluate(script, [one_worker.token(), one_worker.port])
        assert extensions == "permessage-deflate; server_no_context_takeover"
        before = compressions(one_worker)
        one_worker.producer().publish("deflate_browser", BIG)
        page.wait_for_function("window.__messages.some((m) => m.type === 'deflate_browser')", timeout=5000)
        received = page.evaluate("window.__messages.find((m) => m.type === 'deflate_browser').data")
        assert received == BIG
        assert compressions(one_worker) - before == 1
        # The page is a 404 and has no favicon: those loads fail, nothing else may.
        assert [e for e in browser.errors if "Failed to load resource" not in e] == []
