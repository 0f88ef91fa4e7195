"""Authentication and authorization against a real server: every token source, every refusal,
project scoping, expiry and refresh, revocation across workers, and the Origin guard."""

from __future__ import annotations

import asyncio
import base64
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import orjson
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.exceptions import InvalidStatus

from clients import ObservatoryClient
from core.errors import ClientError
from tests.harness import (
    TEST_SECRET,
    ServerProcess,
    collect_until,
    next_event,
    signal_child,
    start_server,
    wait_replaced,
)

AUDIENCE = "observatory-tests"
ISSUER = "https://issuer.example"


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that also demands an audience and an issuer."""
    server = start_server(
        tmp_path_factory.mktemp("strict"), workers=2, jwt_audience=AUDIENCE, jwt_issuer=ISSUER
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with half a second of clock leeway, so expiry can be watched quickly."""
    server = start_server(tmp_path_factory.mktemp("tight"), workers=1, jwt_leeway=0.5)
    yield server
    server.stop()


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "sub": "alice",
        "projectIds": "*",
        "permissions": ["admin"],
        "iat": now,
        "exp": now + 600,
        "aud": AUDIENCE,
        "iss": ISSUER,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def signed(payload: dict[str, object], key: str = TEST_SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=algorithm)


def unsigned(payload: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


async def handshake_status(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    try:
        async with websockets.connect(url, additional_headers=headers or {}, open_timeout=5):
            return 101, ""
    except InvalidStatus as refused:
        response = refused.response
        return response.status_code, response.headers.get("WWW-Authenticate", "")


@pytest.mark.parametrize("via", ["header", "subprotocol", "query"])
async def test_every_token_source_is_accepted(strict: ServerProcess, via: str) -> None:
    client = ObservatoryClient(strict.url, token=signed(claims()), token_via=via)
    info = await client.connect()
    assert info["clientId"]
    await client.close()


async def test_the_subprotocol_way_is_answered_with_bearer_only(strict: ServerProcess) -> None:
    token = signed(claims())
    async with websockets.connect(strict.url, subprotocols=["bearer", token]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "bearer"
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "connection_established"


NOW = int(time.time())
REFUSALS: list[tuple[str, str | None]] = [
    ("none", None),
    ("garbage", "not.a.token"),
    ("wrong-key", signed(claims(), key="another-secret-that-is-long-enough-for-hs256!!")),
    ("wrong-algorithm", signed(claims(), algorithm="HS384")),
    ("alg-none", unsigned(claims())),
    ("expired", signed(claims(exp=NOW - 3600, iat=NOW - 7200))),
    ("not-yet-valid", signed(claims(nbf=NOW + 3600))),
    ("issued-in-the-future", signed(claims(iat=NOW + 3600, exp=NOW + 7200))),
    ("wrong-audience", signed(claims(aud="someone-else"))),
    ("no-audience", signed(claims(aud=None))),
    ("wrong-issuer", signed(claims(iss="https://evil.example"))),
    ("no-exp", signed(claims(exp=None))),
    ("no-sub", signed(claims(sub=None))),
    ("projects-not-ints", signed(claims(projectIds=["1"]))),
]


@pytest.mark.parametrize("token", [t for _, t in REFUSALS], ids=[name for name, _ in REFUSALS])
async def test_bad_tokens_get_401_before_the_upgrade(strict: ServerProcess, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, challenge = await handshake_status(strict.url, headers)
    assert status == 401
    assert challenge == "Bearer"


async def test_a_refusal_says_little(strict: ServerProcess) -> None:
    try:
        async with websockets.connect(strict.url, additional_headers={"Authorization": "Bearer x.y.z"}):
            raise AssertionError("the handshake should have been refused")
    except InvalidStatus as refused:
        body = refused.response.body or b""
    assert body.strip() in (b"invalid token", b"token expired", b"token not yet valid", b"missing token")


async def test_subscriptions_are_scoped_to_the_token_projects(server: ServerProcess) -> None:
    client = server.client(token=server.token(projects=[11, 12], permissions=["subscribe", "query"]))
    await client.connect()
    with pytest.raises(ClientError) as refused:
        await client.subscribe({"projectIds": [11, 13]})
    assert refused.value.code == "UNAUTHORIZED" and "13" in refused.value.message
    narrowed = await client.request("subscribe", {"filters": {"eventTypes": ["scoped", "scoped_end"]}})
    assert narrowed["data"]["filters"] == {"projectIds": [11, 12], "eventTypes": ["scoped", "scoped_end"]}

    producer = server.producer()
    for project in (11, 13, 12, 14):
        producer.publish("scoped", {"projectId": project})
    producer.publish("scoped", {"note": "no project at all"})
    producer.publish("scoped_end", {"projectId": 11})
    received = await collect_until(client, "scoped_end")
    assert [e["data"].get("projectId") for e in received] == [11, 12]

    # Unsubscribing by the filters as sent finds the narrowed subscription.
    assert await client.unsubscribe(filters={"eventTypes": ["scoped", "scoped_end"]}) == [
        narrowed["data"]["subscriptionKey"]
    ]
    await client.close()


async def test_queries_are_scoped_to_the_token_projects(server: ServerProcess) -> None:
    producer = server.producer()
    for project, conversation in ((21, "scope-a"), (22, "scope-b")):
        producer.publish("conversation_started", {"conversationId": conversation, "projectId": project})
    watcher = server.client()
    await watcher.connect()
    await watcher.subscribe({"eventTypes": ["scope_queries_end"]})
    producer.publish("scope_queries_end", {})
    await collect_until(watcher, "scope_queries_end")
    await watcher.close()

    client = server.client(token=server.token(projects=[21], permissions=["query"]))
    await client.connect()
    mine = await client.get_active_conversations()
    assert {c["projectId"] for c in mine["conversations"]} == {21}
    with pytest.raises(ClientError) as refused:
        await client.get_project_activity(22)
    assert refused.value.code == "UNAUTHORIZED"
    with pytest.raises(ClientError) as no_permission:
        await client.subscribe({"projectIds": [21]})
    assert no_permission.value.code == "UNAUTHORIZED"
    await client.close()


async def test_an_expired_token_closes_the_connection_with_4001(tight: ServerProcess) -> None:
    token = tight.token(ttl=2)
    expires_at = jwt.decode(token, options={"verify_signature": False})["exp"]
    client = tight.client(token=token)
    await client.connect()
    assert await next_event(client, "never", 6) is None
    closed_at = time.time()
    assert client.close_code == 4001 and client.close_reason == "token expired"
    assert expires_at + 0.5 - 0.05 <= closed_at < expires_at + 2.5  # at exp plus the leeway


async def test_a_refreshed_token_keeps_the_connection_open(tight: ServerProcess) -> None:
    client = tight.client(token=tight.token(ttl=1))
    await client.connect()
    refreshed = await client.refresh_token(tight.token(ttl=600))
    assert refreshed["expiresAt"] > (time.time() + 500) * 1000  # epoch milliseconds
    await asyncio.sleep(2.5)
    assert client.is_connected and await client.ping() >= 0
    with pytest.raises(ClientError) as other_user:
        await client.refresh_token(tight.token(user="mallory", ttl=900))
    assert other_user.value.code == "UNAUTHORIZED"
    await client.close()


async def test_refreshing_to_another_session_moves_the_connection_for_revocation(
    server: ServerProcess,
) -> None:
    client = server.client(token=server.token(session="sid-before", ttl=60))
    await client.connect()
    await client.refresh_token(server.token(session="sid-after", ttl=120))
    server.producer().publish("revoke_session", {"sid": "sid-before"})
    await asyncio.sleep(0.5)
    assert client.is_connected
    server.producer().publish("revoke_session", {"sid": "sid-after"})
    assert await next_event(client, "never", 3) is None
    assert client.close_code == 4003


async def test_a_narrower_refreshed_token_drops_what_it_no_longer_allows(server: ServerProcess) -> None:
    client = server.client(token=server.token(projects=[31, 32], ttl=60))
    await client.connect()
    kept = await client.subscribe({"projectIds": [31]})
    dropped = await client.subscribe({"projectIds": [32]})
    refreshed = await client.refresh_token(server.token(projects=[31], ttl=120))
    assert refreshed["droppedSubscriptions"] == [dropped]
    assert await client.unsubscribe() == [kept]
    await client.close()


async def test_revoking_a_session_closes_it_on_every_worker_and_bars_it(server: ServerProcess) -> None:
    doomed_token = server.token(session="sid-doomed")
    doomed = [server.client(token=doomed_token) for _ in range(10)]
    await asyncio.gather(*(c.connect() for c in doomed))
    assert {c.info["capabilities"]["worker"] for c in doomed if c.info} == {1, 2}
    bystander = server.client(token=server.token(session="sid-fine"))
    await bystander.connect()

    server.producer().publish("revoke_session", {"sid": "sid-doomed"})
    revoked_at = time.monotonic()
    for client in doomed:
        assert await next_event(client, "never", 3) is None
        assert client.close_code == 4003
    assert time.monotonic() - revoked_at < 1.5
    assert bystander.is_connected and await bystander.ping() >= 0

    status, _ = await handshake_status(server.url, {"Authorization": f"Bearer {doomed_token}"})
    assert status == 401
    await bystander.close()


async def test_a_worker_started_later_knows_earlier_revocations(tmp_path: Path) -> None:
    own = await asyncio.to_thread(start_server, tmp_path, 1, worker_timeout=3)
    try:
        own.producer().publish("revoke_session", {"sid": "sid-old"})
        await asyncio.sleep(0.5)
        worker = signal_child(own, "obs-worker-1", signal.SIGKILL)
        await asyncio.to_thread(wait_replaced, own, "obs-worker-1", worker)
        deadline = time.monotonic() + 10
        status = 0
        while time.monotonic() < deadline:
            try:
                status, _ = await handshake_status(
                    own.url, {"Authorization": f"Bearer {own.token(session='sid-old')}"}
                )
            except ConnectionRefusedError:
                status = 0  # the new worker's process is up but not yet listening
            if status == 401:
                break
            await asyncio.sleep(0.2)
        assert status == 401
    finally:
        own.stop()


@pytest.mark.parametrize(
    ("origin", "status"),
    [("https://evil.example", 403), ("http://127.0.0.1:{port}", 101), (None, 101)],
    ids=["foreign", "same-host", "no-origin"],
)
async def test_the_origin_guard(server: ServerProcess, origin: str | None, status: int) -> None:
    headers = server.authorization()
    if origin is not None:
        headers["Origin"] = origin.format(port=server.port)
    assert (await handshake_status(server.url, headers))[0] == status


def key_pair(kind: str) -> tuple[bytes, bytes]:
    private = (
        rsa.generate_private_key(65537, 2048) if kind == "RS256" else ec.generate_private_key(ec.SECP256R1())
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    secret = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return secret, public


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_tokens_signed_by_an_issuer_verify_with_its_public_key(tmp_path: Path, algorithm: str) -> None:
    private, public = key_pair(algorithm)
    (tmp_path / "issuer.pem").write_bytes(public)
    server = await asyncio.to_thread(
        start_server,
        tmp_path,
        1,
        signing=(private, algorithm),
        jwt_public_key_file=tmp_path / "issuer.pem",
        env={"OBSERVATORY_JWT_SECRET": ""},
    )
    try:
        payload = claims(aud=None, iss=None)
        client = ObservatoryClient(server.url, token=jwt.encode(payload, private, algorithm=algorithm))
        assert (await client.connect())["clientId"]
        await client.close()
        for refused in (unsigned(payload), jwt.encode(payload, key_pair(algorithm)[0], algorithm=algorithm)):
            status, _ = await handshake_status(server.url, {"Authorization": f"Bearer {refused}"})
            assert status == 401
    finally:
        server.stop()
