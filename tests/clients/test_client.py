"""The Python client against a real server: requests, callbacks, the event iterator, closing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from clients import ObservatoryClient
from core.errors import ClientError, ConnectionClosedError
from tests.harness import ServerProcess


async def test_connect_and_close_change_is_connected(server: ServerProcess) -> None:
    client = server.client()
    assert not client.is_connected
    info = await client.connect()
    assert client.is_connected and client.info == info
    await client.close()
    assert not client.is_connected
    assert await client.receive(1) is not None  # connection_established was queued
    assert await client.receive(1) is None  # then the end of the stream, every time after
    assert await client.receive(1) is None


async def test_callbacks_by_type_wildcard_and_async(server: ServerProcess) -> None:
    client = server.client()
    typed: list[dict[str, Any]] = []
    everything: list[str] = []
    awaited = asyncio.Event()

    async def async_callback(message: dict[str, Any]) -> None:
        awaited.set()

    client.on("cb_event", typed.append)
    client.on("*", lambda m: everything.append(m["type"]))
    client.on("cb_event", async_callback)
    await client.connect()
    await client.subscribe({"eventTypes": ["cb_event"]})
    server.producer().publish("cb_event", {"n": 1})
    await asyncio.wait_for(awaited.wait(), 5)
    assert [m["data"] for m in typed] == [{"n": 1}]
    assert everything == ["connection_established", "cb_event"]
    client.off("cb_event", typed.append)
    await client.close()


async def test_events_iterator_ends_when_the_connection_closes(server: ServerProcess) -> None:
    client = server.client()
    await client.connect()
    await client.subscribe({"eventTypes": ["iter_event"]})
    server.producer().publish("iter_event", {})
    seen = []
    async for message in client.events():
        seen.append(message["type"])
        if message["type"] == "iter_event":
            await client.close()
    assert seen == ["connection_established", "iter_event"]


async def test_error_replies_raise_client_error_with_the_code(server: ServerProcess) -> None:
    client = server.client()
    await client.connect()
    with pytest.raises(ClientError) as invalid:
        await client.subscribe({"messageTypes": ["robot"]})
    assert invalid.value.code == "INVALID_FILTERS"
    with pytest.raises(ClientError) as unknown:
        await client.request("no_such_request")
    assert unknown.value.code == "UNKNOWN_MESSAGE_TYPE"
    assert await client.ping() > 0
    await client.close()


async def test_requests_after_close_raise_connection_closed(server: ServerProcess) -> None:
    client = server.client()
    await client.connect()
    await client.close()
    with pytest.raises(ConnectionClosedError):
        await client.ping()


async def test_connect_to_nothing_fails_fast() -> None:
    client = ObservatoryClient("ws://127.0.0.1:1/")
    with pytest.raises(OSError):
        await client.connect(timeout=5)
