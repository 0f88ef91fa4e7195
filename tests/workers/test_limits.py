"""The limits against real servers: global and per-address caps, message-rate abuse, bad text,
slow consumers, and TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from websockets.exceptions import InvalidStatus

from clients import ObservatoryClient
from tests.harness import ServerProcess, close_all, collect_until, next_event, start_server


async def status_of(server: ServerProcess) -> tuple[int, dict[str, str]]:
    """The handshake's status and headers, header names lowercased."""
    try:
        async with websockets.connect(server.url, additional_headers=server.authorization(), open_timeout=5):
            return 101, {}
    except InvalidStatus as refused:
        return refused.response.status_code, {k.lower(): v for k, v in refused.response.headers.raw_items()}


async def test_the_connection_cap_holds_across_both_workers(tmp_path: Path) -> None:
    capped = await asyncio.to_thread(start_server, tmp_path, 2, max_connections=6)
    try:
        clients = []
        for _ in range(50):  # the kernel spreads connections at random: retry the last until both serve
            client = capped.client()
            await client.connect()
            clients.append(client)
            if len(clients) == 6:
                if {c.info["capabilities"]["worker"] for c in clients if c.info} == {1, 2}:
                    break
                await clients.pop().close()
                await asyncio.sleep(0.1)
        assert {c.info["capabilities"]["worker"] for c in clients if c.info} == {1, 2}
        status, _ = await status_of(capped)
        assert status == 503
        await clients[0].close()
        await asyncio.sleep(0.2)
        assert (await status_of(capped))[0] == 101
        await close_all(clients[1:])
    finally:
        capped.stop()


async def test_too_many_connections_from_one_address_get_429(tmp_path: Path) -> None:
    limited = await asyncio.to_thread(start_server, tmp_path, 2, max_connections_per_ip=3)
    try:
        clients = [limited.client() for _ in range(3)]
        for client in clients:
            await client.connect()
        status, headers = await status_of(limited)
        assert status == 429 and int(headers["retry-after"]) > 0
        await close_all(clients)
    finally:
        limited.stop()


async def test_too_many_handshakes_from_one_address_get_429(tmp_path: Path) -> None:
    limited = await asyncio.to_thread(start_server, tmp_path, 2, max_handshakes_per_ip=30)
    try:
        # The harness already shook hands a few times to see the server ready; these count too.
        outcomes = [await status_of(limited) for _ in range(31)]
        refused = [headers for status, headers in outcomes if status == 429]
        assert refused, "the handshake limit never applied"
        assert 0 < int(refused[0]["retry-after"]) <= 61
        assert all(status in (101, 429) for status, _ in outcomes)
    finally:
        limited.stop()


async def test_a_client_flooding_at_ten_times_its_rate_is_closed_with_1008(server: ServerProcess) -> None:
    client = server.client()
    await client.connect()
    for _ in range(400):
        if not client.is_connected:
            break
        client.send({"type": "ping", "data": {}})
    while await next_event(client, None, 5) is not None:
        pass
    assert client.close_code == 1008


async def test_text_that_is_not_utf8_closes_with_1007(server: ServerProcess) -> None:
    client = server.client()
    await client.connect()
    client.send_raw(b'{"type": "ping", "x": "\xff"}')
    while await next_event(client, None, 5) is not None:
        pass
    assert client.close_code == 1007


class _Stalled(WSListener):
    """Reads nothing once told to: the server's output piles up for it."""

    def __init__(self) -> None:
        self.events = 0
        self.close_code: int | None = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.events += 1
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code().value


async def test_a_stalled_consumer_is_closed_with_1013_and_never_slows_the_others(tmp_path: Path) -> None:
    small = await asyncio.to_thread(start_server, tmp_path, 1, max_pending_bytes=2 * 1_048_576)
    try:
        healthy = small.client()
        await healthy.connect()
        await healthy.subscribe({"eventTypes": ["bulk", "bulk_end"]})
        transport, stalled = await ws_connect(_Stalled, small.url_with_token())
        transport.send(
            WSMsgType.TEXT, b'{"type": "subscribe", "data": {"filters": {"eventTypes": ["bulk"]}}}'
        )
        await asyncio.sleep(0.3)
        transport.underlying_transport.pause_reading()

        producer = small.producer()
        # 400 x 50 KB at 10 MB/s: a reader keeps up with ease; a stalled one overflows the kernel's
        # socket buffers on loopback and then its 2 MiB budget.
        for i in range(400):
            producer.publish("bulk", {"i": i, "pad": "x" * 50_000})
            await asyncio.sleep(0.005)
        producer.publish("bulk_end", {})
        received = await collect_until(healthy, "bulk_end", timeout=30)
        assert [e["data"]["i"] for e in received] == list(range(400))

        transport.underlying_transport.resume_reading()  # within the grace: it may read its close
        await asyncio.wait_for(transport.wait_disconnected(), 15)
        assert stalled.close_code == 1013
        assert stalled.events < 400
        assert "closing slow client" in small.log()
        await healthy.close()
    finally:
        small.stop()


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_wss_with_a_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    secure = await asyncio.to_thread(
        start_server, tmp_path, 1, ssl_context=trust, ssl_cert_path=cert, ssl_key_path=key
    )
    try:
        assert secure.url.startswith("wss://")
        client = secure.client()
        await client.connect()
        await client.subscribe({"eventTypes": ["over_tls"]})
        secure.producer().publish("over_tls", {"secret": "kept"})
        event = await next_event(client, "over_tls", 5)
        assert event is not None and event["data"] == {"secret": "kept"}
        await client.close()
        plain = ObservatoryClient(secure.url.replace("wss://", "ws://"), token=secure.token())
        with pytest.raises(Exception):  # noqa: B017 - a plain client cannot speak to a TLS port
            await plain.connect(timeout=3)
    finally:
        secure.stop()
