"""Nothing lost on the bus: holes repaired from history, resume with no gap and no duplicate,
and the answers when history cannot help."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from core.errors import ClientError
from tests.harness import (
    ServerProcess,
    close_all,
    collect_until,
    next_event,
    signal_child,
    start_server,
    wait_replaced,
)


def numbers(events: list[dict[str, Any]], type_: str) -> list[int]:
    return [e["data"]["i"] for e in events if e["type"] == type_]


async def test_bus_drops_are_repaired_so_no_client_sees_a_gap(tmp_path: Path) -> None:
    # A high-water mark of 20 messages drops most of a burst between the ingest and the workers.
    lossy = await asyncio.to_thread(start_server, tmp_path, 2, bus_high_water_mark=20)
    try:
        clients = [lossy.client() for _ in range(6)]
        for client in clients:
            await client.connect()
            await client.subscribe({"eventTypes": ["burst", "burst_end"]})
        producer = lossy.producer()
        for i in range(3000):
            producer.publish("burst", {"i": i})
        producer.publish("burst_end", {})
        for client in clients:
            received = await collect_until(client, "burst_end", timeout=30)
            assert numbers(received, "burst") == list(range(3000))
        assert "are lost" not in lossy.log()
        await close_all(clients)
    finally:
        lossy.stop()


async def test_resume_replays_what_was_missed_then_live_events_follow(server: ServerProcess) -> None:
    producer = server.producer()
    first = server.client()
    await first.connect()
    await first.subscribe({"eventTypes": ["resumable"], "projectIds": [61]})
    for i in range(5):
        producer.publish("resumable", {"i": i, "projectId": 61})
    seen = [await next_event(first, "resumable", 5) for _ in range(5)]
    assert [e["data"]["i"] for e in seen if e] == list(range(5))
    last = seen[-1]
    assert last is not None
    await first.close()

    for i in range(5, 12):  # missed while away, with others it never subscribed to in between
        producer.publish("resumable", {"i": i, "projectId": 61})
        producer.publish("resumable", {"i": -i, "projectId": 62})
    await asyncio.sleep(0.5)  # let both workers take them off the bus, so they are owed from history
    again = server.client()
    await again.connect()
    await again.subscribe(
        {"eventTypes": ["resumable"], "projectIds": [61]}, resume={"epoch": last["epoch"], "seq": last["seq"]}
    )
    replayed = await collect_until(again, "resumed")
    assert numbers(replayed, "resumable") == list(range(5, 12))
    await again.subscribe({"eventTypes": ["resumable_end"]})
    producer.publish("resumable", {"i": 12, "projectId": 61})
    producer.publish("resumable_end", {"projectId": 61})
    received = replayed + await collect_until(again, "resumable_end")
    assert numbers(received, "resumable") == list(range(5, 13))
    seqs = [e["seq"] for e in received]
    assert seqs == sorted(set(seqs)) and seqs[0] > last["seq"]
    await again.close()


async def test_resume_from_an_ended_epoch_fails_and_the_subscription_stays(server: ServerProcess) -> None:
    client = server.client()
    await client.connect()
    await client.subscribe({"eventTypes": ["after_failed_resume"]}, resume={"epoch": "gone", "seq": 3})
    failed = await next_event(client, "resume_failed", 5)
    assert failed is not None and "gone" in failed["data"]["reason"] and failed["data"]["epoch"]
    server.producer().publish("after_failed_resume", {})
    assert await next_event(client, "after_failed_resume", 5) is not None
    await client.close()


async def test_resume_beyond_history_fails_and_a_second_resume_is_refused(tmp_path: Path) -> None:
    short = await asyncio.to_thread(start_server, tmp_path, 1, history_size=10)
    try:
        producer = short.producer()
        watcher = short.client()
        await watcher.connect()
        await watcher.subscribe({"eventTypes": ["old", "old_end"]})
        for i in range(30):
            producer.publish("old", {"i": i})
        producer.publish("old_end", {})
        events = await collect_until(watcher, "old_end")
        epoch, first_seq = events[0]["epoch"], events[0]["seq"]

        client = short.client()
        await client.connect()
        await client.subscribe({"eventTypes": ["old"]}, resume={"epoch": epoch, "seq": first_seq})
        failed = await next_event(client, "resume_failed", 5)
        assert failed is not None and "no longer holds" in failed["data"]["reason"]
        await client.subscribe({"eventTypes": ["x"]}, resume={"epoch": epoch, "seq": first_seq + 25})
        again = await next_event(client, "resume_failed", 5)
        assert again is not None and "already resumed" in again["data"]["reason"]
        await close_all([watcher, client])
    finally:
        short.stop()


async def test_a_killed_ingest_starts_a_new_epoch_that_clients_are_told_of(tmp_path: Path) -> None:
    own = await asyncio.to_thread(start_server, tmp_path, 2, worker_timeout=3)
    try:
        staying = own.client()
        await staying.connect()
        await staying.subscribe({"eventTypes": ["epoch_test", "epoch_test_end"]})
        own.producer().publish("epoch_test", {"i": 0})
        before = await next_event(staying, "epoch_test", 5)
        assert before is not None

        victim = signal_child(own, "obs-ingest", signal.SIGKILL)
        await asyncio.to_thread(wait_replaced, own, "obs-ingest", victim)
        changed = await next_event(staying, "epoch_changed", 10)
        assert changed is not None and changed["data"]["previous"] == before["epoch"]

        returning = own.client()
        await returning.connect()
        await returning.subscribe(
            {"eventTypes": ["epoch_test", "epoch_test_end"]},
            resume={"epoch": before["epoch"], "seq": before["seq"]},
        )
        assert await next_event(returning, "resume_failed", 5) is not None
        producer = own.producer()  # one socket: ZeroMQ keeps order only within a socket
        for i in range(1, 4):
            producer.publish("epoch_test", {"i": i})
        producer.publish("epoch_test_end", {})
        for client in (staying, returning):
            received = await collect_until(client, "epoch_test_end", timeout=15)
            assert numbers(received, "epoch_test") == [1, 2, 3]
            assert {e["epoch"] for e in received} == {changed["data"]["epoch"]}
        await close_all([staying, returning])
    finally:
        own.stop()


async def test_a_malformed_resume_refuses_the_subscribe(server: ServerProcess) -> None:
    client = server.client()
    await client.connect()
    with pytest.raises(ClientError) as refused:
        await client.request("subscribe", {"filters": {"eventTypes": ["raw"]}, "resume": {"epoch": 7}})
    assert refused.value.code == "INVALID_MESSAGE"
    assert await client.unsubscribe() == []
    await client.close()


async def test_a_resume_before_the_worker_has_heard_the_bus_waits_for_it(tmp_path: Path) -> None:
    # A slow beat leaves a restarted worker a few seconds without knowing the epoch.
    slow = await asyncio.to_thread(start_server, tmp_path, 1, bus_beat_interval=5, worker_timeout=10)
    try:
        watcher = slow.client()
        await watcher.connect()
        await watcher.subscribe({"eventTypes": ["early"]})
        slow.producer().publish("early", {"i": 0})
        first = await next_event(watcher, "early", 5)
        assert first is not None
        victim = signal_child(slow, "obs-worker-1", signal.SIGKILL)
        await asyncio.to_thread(wait_replaced, slow, "obs-worker-1", victim)
        client = slow.client()
        for _ in range(50):
            try:
                await client.connect(timeout=2)
                break
            except Exception:
                await asyncio.sleep(0.1)
        await client.subscribe(
            {"eventTypes": ["early"]}, resume={"epoch": first["epoch"], "seq": first["seq"]}
        )
        slow.producer().publish("early", {"i": 1})
        done = await next_event(client, "resumed", 10)
        assert done is not None, "the resume should wait for the epoch, not fail"
        await client.close()
    finally:
        slow.stop()


async def test_a_second_resume_during_a_replay_does_not_disturb_its_order(server: ServerProcess) -> None:
    producer = server.producer()
    watcher = server.client()
    await watcher.connect()
    await watcher.subscribe({"eventTypes": ["twice", "twice_end"]})
    for i in range(200):
        producer.publish("twice", {"i": i})
    producer.publish("twice_end", {})
    stream = await collect_until(watcher, "twice_end")
    start = stream[0]
    client = server.client()
    await client.connect()
    resume = {"epoch": start["epoch"], "seq": start["seq"]}
    client.send({"type": "subscribe", "data": {"filters": {"eventTypes": ["twice"]}, "resume": resume}})
    client.send({"type": "subscribe", "data": {"filters": {"eventTypes": ["twice_end"]}, "resume": resume}})
    messages = []
    async with asyncio.timeout(10):
        while (message := await client.receive()) is not None and message["type"] != "resumed":
            messages.append(message)
    replayed = [m["data"]["i"] for m in messages if m["type"] == "twice"]
    assert replayed == list(range(1, 200))
    assert any(m["type"] == "resume_failed" and "already" in m["data"]["reason"] for m in messages)
    await close_all([watcher, client])


async def test_resuming_ahead_of_this_worker_never_resends_what_the_client_had(server: ServerProcess) -> None:
    """A client that left a worker a few events ahead of this one must not get those events again."""
    watcher = server.client()
    await watcher.connect()
    await watcher.subscribe({"eventTypes": ["ahead"]})
    producer = server.producer()
    producer.publish("ahead", {"i": 0})
    mark = await next_event(watcher, "ahead", 5)
    assert mark is not None
    client = server.client()
    await client.connect()
    await client.subscribe(
        {"eventTypes": ["ahead", "ahead_end"]}, resume={"epoch": mark["epoch"], "seq": mark["seq"] + 3}
    )
    for i in range(1, 6):
        producer.publish("ahead", {"i": i})
    producer.publish("ahead_end", {})
    received = await collect_until(client, "ahead_end")
    assert numbers(received, "ahead") == [4, 5]
    await close_all([watcher, client])
