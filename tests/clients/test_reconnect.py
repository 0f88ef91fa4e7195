"""The Python client reconnects by itself and resumes: nothing lost, nothing twice, in order."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from clients import ObservatoryClient
from tests.harness import ServerProcess, close_all, next_event, signal_child, start_server

FAST = {"auto_reconnect": True, "reconnect_base": 0.2, "reconnect_max": 1.0}


@pytest.fixture
def own_server(tmp_path: Path) -> ServerProcess:
    server = start_server(tmp_path, workers=2, worker_timeout=3)
    yield server  # type: ignore[misc]
    server.stop()


def test_backoff_doubles_from_one_second_to_thirty_with_full_jitter() -> None:
    client = ObservatoryClient()
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (5, 16), (6, 30), (10, 30)]:
        delays = [client.reconnect_delay(attempt) for _ in range(300)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8 and min(delays) < ceiling * 0.2  # spread over the whole range


async def test_after_the_server_side_closes_it_the_client_reconnects(own_server: ServerProcess) -> None:
    client = own_server.client(**FAST)
    info = await client.connect()
    signal_child(own_server, f"obs-worker-{info['capabilities']['worker']}", signal.SIGKILL)
    reconnecting = await next_event(client, "reconnecting", 10)
    assert reconnecting is not None and reconnecting["data"]["attempt"] == 1
    assert await next_event(client, "connected", 15) is not None
    assert client.is_connected and await client.ping() >= 0
    await client.close()


async def gather_stream(client: ObservatoryClient, until: str, timeout: float) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while (message := await client.receive()) is not None:
            if message["type"] == until:
                return events
            if "seq" in message:
                events.append(message)
    raise AssertionError("the stream ended before the last event")


async def steady_flow(server: ServerProcess, count: int, rate: float) -> None:
    producer = server.producer()
    for i in range(count):
        producer.publish("flow", {"i": i})
        await asyncio.sleep(1 / rate)
    producer.publish("flow_end", {})


async def test_killing_a_worker_while_events_flow_loses_nothing(own_server: ServerProcess) -> None:
    clients = [own_server.client(**FAST) for _ in range(12)]
    for client in clients:
        await client.connect()
        # Two subscriptions: the restore resubscribes both, holding live events until the replay.
        await client.subscribe({"eventTypes": ["flow"]})
        await client.subscribe({"eventTypes": ["flow_end"]})
    assert {c.info["capabilities"]["worker"] for c in clients if c.info} == {1, 2}
    streams = [asyncio.ensure_future(gather_stream(c, "flow_end", 40)) for c in clients]
    flow = asyncio.ensure_future(steady_flow(own_server, 450, 150))  # three seconds at 150/s
    await asyncio.sleep(1.0)
    signal_child(own_server, "obs-worker-1", signal.SIGKILL)
    await flow
    for stream in await asyncio.gather(*streams):
        assert [e["data"]["i"] for e in stream] == list(range(450))
        assert len({e["seq"] for e in stream}) == 450
    await close_all(clients)


async def test_a_cut_socket_loses_nothing(own_server: ServerProcess) -> None:
    client = own_server.client(**FAST)
    await client.connect()
    await client.subscribe({"eventTypes": ["flow", "flow_end"]})
    stream = asyncio.ensure_future(gather_stream(client, "flow_end", 30))
    flow = asyncio.ensure_future(steady_flow(own_server, 300, 150))
    await asyncio.sleep(0.8)
    assert client._transport is not None
    client._transport.underlying_transport.abort()  # the network drops it: no close handshake
    await flow
    received = await stream
    assert [e["data"]["i"] for e in received] == list(range(300))
    await client.close()


async def test_a_server_shutdown_is_honoured_and_reconnect_gives_up_in_the_end(tmp_path: Path) -> None:
    server = await asyncio.to_thread(start_server, tmp_path, 1)
    client = server.client(
        auto_reconnect=True, reconnect_base=0.05, reconnect_max=0.1, max_reconnect_attempts=3
    )
    await client.connect()
    await asyncio.to_thread(server.stop)
    notice = await next_event(client, "server_shutdown", 10)
    assert notice is not None
    reconnecting = await next_event(client, "reconnecting", 10)
    assert reconnecting is not None
    assert reconnecting["data"]["delay"] == notice["data"]["reconnectAfter"] / 1000
    failed = await next_event(client, "reconnect_failed", 30)
    assert failed is not None and failed["data"]["attempts"] == 3
    assert await client.receive(1) is None


async def test_a_close_that_coming_back_cannot_mend_ends_the_stream(own_server: ServerProcess) -> None:
    client = own_server.client(token=own_server.token(session="sid-final"), **FAST)
    await client.connect()
    own_server.producer().publish("revoke_session", {"sid": "sid-final"})
    messages = []
    async with asyncio.timeout(10):
        while (message := await client.receive()) is not None:
            messages.append(message["type"])
    assert client.close_code == 4003
    assert "reconnecting" not in messages
