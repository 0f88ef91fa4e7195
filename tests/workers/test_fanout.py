"""The fan-out's lanes against real clients: whatever lane a client is in (direct, several
subscriptions, compressed, resuming), it gets each of its events once, in seq order, and no other."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.harness import ServerProcess, start_server

PROJECT = 4242
OTHER_PROJECT = 7
EVENTS = 400


async def connected(server: ServerProcess, *, compressed: bool) -> ClientConnection:
    ws = await connect(
        f"ws://127.0.0.1:{server.port}/",
        additional_headers={"Authorization": f"Bearer {server.token()}"},
        compression="deflate" if compressed else None,
        max_size=2**22,
    )
    assert orjson.loads(await ws.recv())["type"] == "connection_established"
    return ws


async def subscribe(ws: ClientConnection, filters: dict[str, Any], **extra: Any) -> dict[str, Any]:
    await ws.send(orjson.dumps({"type": "subscribe", "data": {"filters": filters, **extra}}).decode())
    while True:
        reply = orjson.loads(await ws.recv())
        if reply["type"] in ("subscription_confirmed", "subscription_error"):
            assert reply["type"] == "subscription_confirmed", reply
            return dict(reply)


async def events_until_end(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every event the client receives up to and including the "end" event."""
    received: list[dict[str, Any]] = []
    async with asyncio.timeout(15):
        while not received or received[-1]["type"] != "end":
            message = orjson.loads(await ws.recv())
            if message["type"] in ("lane", "other", "end"):
                received.append(message)
    return received


def publish_mix(server: ServerProcess, count: int) -> None:
    """``count`` events alternating type and project, some big enough to be compressed, then "end"."""
    producer = server.producer()
    for i in range(count):
        data = {
            "i": i,
            "projectId": PROJECT if i % 3 else OTHER_PROJECT,
            "pad": "x" * (40 if i % 2 else 3000),
        }
        producer.publish("lane" if i % 4 else "other", data)
    producer.publish("end", {"projectId": PROJECT})
    producer.close()


def expected(events: Sequence[dict[str, Any]], wanted: Any) -> list[int]:
    return [e["data"]["i"] for e in events if wanted(e)]


def check(received: list[dict[str, Any]], wanted: Any) -> None:
    seqs = [e["seq"] for e in received]
    assert seqs == sorted(set(seqs)), "out of order or twice"
    assert all(wanted(e) for e in received), "an event this client did not ask for"


@pytest.mark.parametrize("flush_interval", [0.0, 0.02])
async def test_every_lane_gets_exactly_its_events_once_and_in_order(
    tmp_path: Path, flush_interval: float
) -> None:
    server = await asyncio.to_thread(
        start_server, tmp_path, 1, flush_interval=flush_interval, compression_threshold=1000
    )
    try:
        lane_only = {"eventTypes": ["lane", "end"]}
        direct = [await connected(server, compressed=False) for _ in range(3)]
        for ws in direct:
            await subscribe(ws, lane_only)
        compressed = [await connected(server, compressed=True) for _ in range(2)]
        for ws in compressed:
            await subscribe(ws, lane_only)
        project = await connected(server, compressed=False)
        await subscribe(project, {"projectIds": [PROJECT]})
        # Two subscriptions that overlap: an event of type "lane" in PROJECT matches both.
        both = await connected(server, compressed=True)
        await subscribe(both, lane_only)
        await subscribe(both, {"projectIds": [PROJECT]})

        await asyncio.to_thread(publish_mix, server, EVENTS)
        results: dict[str, list[list[dict[str, Any]]]] = {}
        results["direct"] = [await events_until_end(ws) for ws in direct]
        results["compressed"] = [await events_until_end(ws) for ws in compressed]
        results["project"] = [await events_until_end(project)]
        results["both"] = [await events_until_end(both)]

        def of_lane(e: dict[str, Any]) -> bool:
            return bool(e["type"] in ("lane", "end"))

        def of_project(e: dict[str, Any]) -> bool:
            return bool(e["data"].get("projectId") == PROJECT)

        def of_either(e: dict[str, Any]) -> bool:
            return of_lane(e) or of_project(e)

        all_events = results["both"][0]
        for wanted, lists in (
            (of_lane, results["direct"] + results["compressed"]),
            (of_project, results["project"]),
            (of_either, results["both"]),
        ):
            for received in lists:
                check(received, wanted)
                assert [e["data"].get("i") for e in received] == [
                    e["data"].get("i") for e in all_events if wanted(e)
                ]
        # Every event of either kind reached the client with two subscriptions, once.
        assert [e["data"]["i"] for e in all_events if e["type"] != "end"] == [
            i for i in range(EVENTS) if i % 4 or i % 3
        ]
        for ws in [*direct, *compressed, project, both]:
            await ws.close()
    finally:
        server.stop()


async def test_a_client_that_resumes_while_events_flow_misses_none_and_gets_none_twice(
    tmp_path: Path,
) -> None:
    server = await asyncio.to_thread(start_server, tmp_path, 1)
    try:
        watcher = await connected(server, compressed=False)
        await subscribe(watcher, {"eventTypes": ["lane", "end"]})
        producer = server.producer()
        for i in range(100):
            producer.publish("lane", {"i": i})
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while len(seen) < 50:
                message = orjson.loads(await watcher.recv())
                if message["type"] == "lane":
                    seen.append(message)
        resume_from = seen[49]
        # A new connection resumes from the 50th event while more are published.
        resumer = await connected(server, compressed=False)
        more = asyncio.create_task(asyncio.to_thread(publish_mix, server, 200))
        await subscribe(
            resumer,
            {"eventTypes": ["lane", "end"]},
            resume={"epoch": resume_from["epoch"], "seq": resume_from["seq"]},
        )
        await more
        received = await events_until_end(resumer)
        seqs = [e["seq"] for e in received]
        assert seqs == sorted(set(seqs))
        assert seqs[0] == resume_from["seq"] + 1
        # Exactly what the client that never left got after that point.
        watched = [*seen[50:], *await events_until_end(watcher)]
        assert seqs == [e["seq"] for e in watched]
        await watcher.close()
        await resumer.close()
    finally:
        server.stop()
