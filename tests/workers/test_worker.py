"""The worker over real sockets: the specification's test strategy, then the rest of the protocol.

Every test talks to a real observatory (supervisor, ingest, two workers) through real WebSocket
clients and pushes events through the real producer API.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from picows import WSCloseCode, WSListener, ws_connect

from core.errors import ClientError
from tests.harness import ServerProcess, close_all, collect_until, connect_all, next_event, start_server

# --- the specification's tests ------------------------------------------------------------------


async def test_connection_established_carries_client_id_and_server_time(server: ServerProcess) -> None:
    client = server.client()
    info = await client.connect()
    assert info["clientId"]
    assert abs(info["serverTime"] - time.time() * 1000) < 1000
    assert info["limits"]["maxSubscriptions"] == 50
    assert info["limits"]["messageRateLimit"] == 100
    assert "subscribe" in info["capabilities"]["messageTypes"]
    await client.close()


async def test_subscribed_client_receives_broadcast_message_added_intact(server: ServerProcess) -> None:
    client = server.client()
    await client.connect()
    await client.subscribe({"projectIds": [101], "eventTypes": ["message_added"]})
    data = {
        "conversationId": "test-conv-1",
        "message": {"id": "msg-1", "content": "Hello world \u2603", "type": "user"},
        "projectInfo": {"id": 101, "name": "Test Project"},
    }
    server.producer().publish("message_added", data, timestamp=1234)
    event = await next_event(client, "message_added", 5)
    assert event is not None
    assert event["data"] == data
    assert event["timestamp"] == 1234
    assert isinstance(event["seq"], int) and isinstance(event["epoch"], str)
    await client.close()


async def test_fifty_concurrent_clients_all_receive_one_broadcast(server: ServerProcess) -> None:
    clients = await connect_all(server, 50)
    await asyncio.gather(*(c.subscribe({"eventTypes": ["test_event_fifty"]}) for c in clients))
    server.producer().publish("test_event_fifty", {"message": "Performance test"})
    events = await asyncio.gather(*(next_event(c, "test_event_fifty", 5) for c in clients))
    assert all(e is not None and e["data"] == {"message": "Performance test"} for e in events)
    assert len({e["seq"] for e in events if e}) == 1
    await close_all(clients)


async def test_project_filter_delivers_exactly_the_project_events(server: ServerProcess) -> None:
    client = server.client()
    await client.connect()
    await client.subscribe({"projectIds": [1], "eventTypes": ["message_added"]})
    await client.subscribe({"eventTypes": ["sentinel_project_filter"]})
    producer = server.producer()
    for project in (1, 2, 1):
        producer.publish("message_added", {"conversationId": f"pf-{project}", "projectId": project})
    producer.publish("sentinel_project_filter", {})
    received = await collect_until(client, "sentinel_project_filter")
    assert [e["data"]["projectId"] for e in received] == [1, 1]
    await client.close()


async def test_malformed_json_gets_invalid_message(server: ServerProcess) -> None:
    client = server.client()
    await client.connect()
    client.send_raw("invalid json")
    error = await next_event(client, "error", 5)
    assert error is not None and error["data"]["code"] == "INVALID_MESSAGE"
    assert await client.ping() >= 0  # the connection is still usable
    await client.close()


async def test_rapid_pings_hit_the_rate_limit(server: ServerProcess) -> None:
    client = server.client()
    await client.connect()
    for i in range(200):
        client.send({"type": "ping", "data": {"timestamp": 1}, "requestId": f"p{i}"})
    error = await next_event(client, "error", 5)
    assert error is not None and error["data"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert error["data"]["retryAfter"] > 0
    assert error["requestId"] == "p20"  # the burst is 20: the 21st is the first refused
    await client.close()


# --- beyond the specification -------------------------------------------------------------------


async def test_two_workers_every_client_gets_every_event_in_order_once(server: ServerProcess) -> None:
    clients = await connect_all(server, 24)
    workers = {c.info["capabilities"]["worker"] for c in clients if c.info}
    assert workers == {1, 2}, "SO_REUSEPORT should spread 24 connections over both workers"
    await asyncio.gather(*(c.subscribe({"eventTypes": ["ordered", "ordered_end"]}) for c in clients))
    producer = server.producer()
    for i in range(300):
        producer.publish("ordered", {"i": i})
    producer.publish("ordered_end", {})
    streams = await asyncio.gather(*(collect_until(c, "ordered_end") for c in clients))
    for stream in streams:
        assert [e["data"]["i"] for e in stream] == list(range(300))
        seqs = [e["seq"] for e in stream]
        assert seqs == sorted(set(seqs)) and seqs[-1] - seqs[0] == 299
    await close_all(clients)


EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("message_added", {"projectId": 7, "sessionId": "s-a", "message": {"type": "user"}}),
    (
        "message_added",
        {
            "projectInfo": {"id": 7},
            "sessionId": "s-b",
            "message": {"type": "assistant", "toolUses": [{"name": "Bash"}, {"name": "Read"}]},
        },
    ),
    ("message_added", {"projectId": 8, "sessionId": "s-c", "message": {"type": "system"}}),
    ("analytics_update", {"projectId": 8, "toolNames": ["Edit"]}),
    ("project_discovered", {"project": {"id": 9, "name": "nine"}}),
    ("custom_event", {"note": "no routing fields at all"}),
]
FILTER_CASES: list[tuple[str, dict[str, Any], list[int]]] = [
    ("everything", {}, [0, 1, 2, 3, 4, 5]),
    ("project", {"projectIds": [7]}, [0, 1]),
    ("projects-or", {"projectIds": [7, 9]}, [0, 1, 4]),
    ("event-type", {"eventTypes": ["message_added"]}, [0, 1, 2]),
    ("session", {"sessionIds": ["s-b", "s-c"]}, [1, 2]),
    ("message-type", {"messageTypes": ["assistant", "system"]}, [1, 2]),
    ("tool", {"toolNames": ["Read"]}, [1]),
    ("tool-from-data", {"toolNames": ["Edit", "Bash"]}, [1, 3]),
    ("project-and-type", {"projectIds": [8], "eventTypes": ["message_added"]}, [2]),
    ("project-and-message-type", {"projectIds": [7], "messageTypes": ["user"]}, [0]),
    ("type-and-tool", {"eventTypes": ["message_added"], "toolNames": ["Bash"]}, [1]),
    ("custom-type", {"eventTypes": ["custom_event"]}, [5]),
    ("nothing-matches", {"projectIds": [7], "sessionIds": ["s-c"]}, []),
]


@pytest.mark.parametrize(
    ("filters", "expected"), [c[1:] for c in FILTER_CASES], ids=[c[0] for c in FILTER_CASES]
)
async def test_filter_kinds_and_their_combinations(
    server: ServerProcess, filters: dict[str, Any], expected: list[int]
) -> None:
    client = server.client()
    await client.connect()
    confirmed = await client.request("subscribe", {"filters": filters})
    assert confirmed["data"]["filters"] == {k: sorted(v) for k, v in filters.items()}
    await client.subscribe({"eventTypes": ["sentinel_filters"]})
    producer = server.producer()
    marker = time.monotonic_ns()
    for index, (type_, data) in enumerate(EVENTS):
        producer.publish(type_, {**data, "case": index, "marker": marker})
    producer.publish("sentinel_filters", {})
    received = await collect_until(client, "sentinel_filters")
    assert [e["data"]["case"] for e in received if e["data"].get("marker") == marker] == expected
    await client.close()


async def test_overlapping_subscriptions_deliver_each_event_once(server: ServerProcess) -> None:
    client = server.client()
    await client.connect()
    await client.subscribe({"projectIds": [31]})
    await client.subscribe({"eventTypes": ["overlap"]})
    await client.subscribe({"eventTypes": ["overlap"], "projectIds": [31]})
    await client.subscribe({"eventTypes": ["sentinel_overlap"]})
    producer = server.producer()
    producer.publish("overlap", {"projectId": 31})
    producer.publish("sentinel_overlap", {})
    received = await collect_until(client, "sentinel_overlap")
    assert [e["type"] for e in received] == ["overlap"]
    await client.close()


async def test_resubscribing_the_same_filters_is_idempotent(server: ServerProcess) -> None:
    client = server.client()
    await client.connect()
    first = await client.subscribe({"projectIds": [2, 1], "eventTypes": ["x"]})
    again = await client.subscribe({"eventTypes": ["x"], "projectIds": [1, 2, 2]})
    assert first == again
    assert await client.unsubscribe() == [first]
    await client.close()


async def test_unsubscribe_by_key_by_filters_and_all(server: ServerProcess) -> None:
    client = server.client()
    await client.connect()
    by_key = await client.subscribe({"eventTypes": ["unsub_a"]})
    await client.subscribe({"eventTypes": ["unsub_b"]})
    await client.subscribe({"eventTypes": ["unsub_c"]})
    sentinel = await client.subscribe({"eventTypes": ["sentinel_unsub"]})
    assert await client.unsubscribe(subscription_key=by_key) == [by_key]
    removed = await client.unsubscribe(filters={"eventTypes": ["unsub_b"]})
    assert len(removed) == 1
    with pytest.raises(ClientError) as missing:
        await client.unsubscribe(subscription_key=by_key)
    assert missing.value.code == "SUBSCRIPTION_NOT_FOUND"
    producer = server.producer()
    for type_ in ("unsub_a", "unsub_b", "unsub_c"):
        producer.publish(type_, {})
    producer.publish("sentinel_unsub", {})
    assert [e["type"] for e in await collect_until(client, "sentinel_unsub")] == ["unsub_c"]

    remaining = await client.unsubscribe()
    assert sentinel in remaining and len(remaining) == 2
    await client.subscribe({"eventTypes": ["sentinel_unsub_2"]})
    producer.publish("unsub_c", {})
    producer.publish("sentinel_unsub_2", {})
    assert await collect_until(client, "sentinel_unsub_2") == []
    await client.close()


async def test_too_many_subscriptions(tmp_path: Path) -> None:
    # Fifty quick subscribes would hit the default burst of 20 first: this server allows more.
    roomy = await asyncio.to_thread(start_server, tmp_path, 1, message_rate_burst=200)
    try:
        client = roomy.client()
        await client.connect()
        keys = await asyncio.gather(*(client.subscribe({"projectIds": [i]}) for i in range(50)))
        assert len(set(keys)) == 50
        with pytest.raises(ClientError) as refused:
            await client.subscribe({"projectIds": [999]})
        assert refused.value.code == "TOO_MANY_SUBSCRIPTIONS"
        assert await client.subscribe({"projectIds": [0]}) == keys[0]  # one it holds: still fine
        await client.close()
    finally:
        roomy.stop()


@pytest.mark.parametrize(
    ("raw", "reply_type", "code"),
    [
        (b"[1, 2]", "error", "INVALID_MESSAGE"),
        (b'{"type": 5}', "error", "INVALID_MESSAGE"),
        (b'{"type": "ping", "data": []}', "error", "INVALID_MESSAGE"),
        (b'{"type": "launch_missiles"}', "error", "UNKNOWN_MESSAGE_TYPE"),
        (
            b'{"type": "subscribe", "data": {"filters": {"projectIds": ["1"]}}}',
            "subscription_error",
            "INVALID_FILTERS",
        ),
        (
            b'{"type": "subscribe", "data": {"filters": {"colour": ["red"]}}}',
            "subscription_error",
            "INVALID_FILTERS",
        ),
        (
            b'{"type": "subscribe", "data": {"filters": {"eventTypes": ' + orjson.dumps(["t"] * 101) + b"}}}",
            "subscription_error",
            "INVALID_FILTERS",
        ),
        (b'{"type": "get_project_activity", "data": {}}', "error", "INVALID_MESSAGE"),
    ],
    ids=[
        "array",
        "type-not-string",
        "data-not-object",
        "unknown-type",
        "project-not-int",
        "unknown-filter",
        "101-values",
        "activity-without-project",
    ],
)
async def test_bad_messages_get_their_error_and_the_connection_lives(
    server: ServerProcess, raw: bytes, reply_type: str, code: str
) -> None:
    client = server.client()
    await client.connect()
    client.send_raw(raw)
    reply = await next_event(client, reply_type, 5)
    assert reply is not None and reply["data"]["code"] == code
    assert await client.ping() >= 0
    await client.close()


async def test_request_id_is_echoed(server: ServerProcess) -> None:
    client = server.client()
    await client.connect()
    client.send({"type": "ping", "data": {}, "requestId": "abc"})
    client.send({"type": "nope", "requestId": 17})
    # Replies carrying a requestId the client did not issue reach the event stream.
    pong = await next_event(client, "pong", 5)
    error = await next_event(client, "error", 5)
    assert pong is not None and pong["requestId"] == "abc"
    assert error is not None and error["requestId"] == 17
    await client.close()


async def test_bad_clients_leave_the_others_streams_intact(server: ServerProcess) -> None:
    good = server.client()
    await good.connect()
    await good.subscribe({"eventTypes": ["intact", "intact_end"]})
    vandals = await connect_all(server, 4)
    producer = server.producer()
    for i in range(100):
        producer.publish("intact", {"i": i})
        vandal = vandals[i % len(vandals)]
        if vandal.is_connected:
            if i % 3 == 0:
                vandal.send_raw(b"\xff\xfe not utf-8")
            elif i % 3 == 1:
                vandal.send_raw(b"\x00\x01", binary=True)
            else:
                vandal.send_raw(b'{"type": "subscribe", "data": {"filters": 5}}')
    async with websockets.connect(
        server.url, max_size=None, additional_headers=server.authorization()
    ) as oversized:
        await oversized.send("x" * 70_000)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(oversized.recv(), 5)
            await asyncio.wait_for(oversized.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    producer.publish("intact_end", {})
    assert [e["data"]["i"] for e in await collect_until(good, "intact_end")] == list(range(100))
    await close_all([good, *vandals])


async def test_websockets_library_client_and_fragmented_messages(server: ServerProcess) -> None:
    async with websockets.connect(server.url, additional_headers=server.authorization()) as ws:
        hello = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert hello["type"] == "connection_established"
        request = orjson.dumps(
            {"type": "subscribe", "data": {"filters": {"eventTypes": ["frag"]}}, "requestId": 1}
        )
        await ws.send(iter([request[:10].decode(), request[10:30].decode(), request[30:].decode()]))
        confirmed = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert confirmed["type"] == "subscription_confirmed" and confirmed["requestId"] == 1
        server.producer().publish("frag", {"ok": True})
        event = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert event["type"] == "frag" and event["data"] == {"ok": True}


async def test_queries_answer_from_state_built_by_real_events(server: ServerProcess) -> None:
    client = server.client()
    await client.connect()
    await client.subscribe({"eventTypes": ["sentinel_queries"]})
    producer = server.producer()
    project = 4242
    for conversation in ("q-a", "q-b"):
        producer.publish(
            "conversation_started",
            {
                "conversationId": conversation,
                "sessionId": f"s-{conversation}",
                "projectId": project,
                "projectName": "queries",
            },
        )
    producer.publish(
        "message_added",
        {
            "conversationId": "q-a",
            "message": {"type": "assistant", "toolUses": [{"name": "Bash"}, {"name": "Grep"}]},
        },
    )
    producer.publish("message_added", {"conversationId": "q-b", "message": {"type": "user"}})
    producer.publish("conversation_ended", {"conversationId": "q-b"})
    producer.publish("sentinel_queries", {})
    await collect_until(client, "sentinel_queries")

    active = await client.get_active_conversations(project_id=project)
    assert active["total"] == 1
    (conversation,) = active["conversations"]
    assert conversation["conversationId"] == "q-a"
    assert conversation["sessionId"] == "s-q-a"
    assert conversation["messageCount"] == 1 and conversation["toolUsageCount"] == 2
    assert conversation["projectName"] == "queries"

    activity = await client.get_project_activity(project)
    assert activity["totals"] == {"messages": 2, "conversations": 2, "toolUses": 2, "activeConversations": 1}
    future = await client.get_project_activity(project, start=time.time() * 1000 + 3_600_000)
    assert future["totals"]["messages"] == 0

    reply = await client.request("get_active_conversations", {"limit": 1})
    assert len(reply["data"]["conversations"]) == 1
    await client.close()


class _Mute(WSListener):
    """A client that never answers pings."""


async def test_a_client_that_stops_answering_pings_is_closed(tmp_path: Path) -> None:
    quick = await asyncio.to_thread(start_server, tmp_path, 1, heartbeat_interval=0.3, heartbeat_timeout=0.3)
    try:
        started = time.monotonic()
        transport, _ = await ws_connect(_Mute, quick.url_with_token(), enable_auto_pong=False)
        await asyncio.wait_for(transport.wait_disconnected(), 10)
        assert time.monotonic() - started < 5
        healthy = quick.client(heartbeat_interval=0.3, heartbeat_timeout=0.3)
        await healthy.connect()
        await asyncio.sleep(1.5)  # several ping rounds: a client that answers stays connected
        assert healthy.is_connected
        await healthy.close()
    finally:
        quick.stop()


async def test_a_close_without_a_status_code_is_answered_with_1000(server: ServerProcess) -> None:
    transport, _ = await ws_connect(WSListener, server.url_with_token())
    transport.send_close(WSCloseCode.NO_INFO)
    await asyncio.wait_for(transport.wait_disconnected(), 5)
    assert transport.close_handshake is not None and transport.close_handshake.recv is not None
    assert transport.close_handshake.recv.code == WSCloseCode.OK


async def test_with_a_flush_interval_events_and_replies_still_arrive_whole_and_in_order(
    tmp_path: Path,
) -> None:
    server = await asyncio.to_thread(start_server, tmp_path, 1, flush_interval=0.05)
    try:
        client = server.client()
        await client.connect()
        await client.subscribe({"eventTypes": ["flushed"]})
        producer = server.producer()
        for i in range(50):
            producer.publish("flushed", {"i": i, "pad": "x" * (i * 50)})
        received = [await next_event(client, "flushed", 5) for _ in range(50)]
        assert [e["data"]["i"] for e in received if e] == list(range(50))
        assert await client.ping() >= 0  # a reply waits at most the interval
        await client.close()
    finally:
        server.stop()
