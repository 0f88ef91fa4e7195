"""The ingest process over real ZeroMQ: bad producer messages are dropped, good ones still flow."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import zmq

from tests.harness import ServerProcess, collect_until

SECRET = "do-not-log-this-payload"

BAD_FRAMES: list[tuple[str, list[bytes]]] = [
    ("not-json", [b"{nope " + SECRET.encode()]),
    ("not-utf8", [b'{"type": "x", "data": {"s": "\xff\xfe"}}']),
    ("array", [b"[1, 2, 3]"]),
    ("no-type", [orjson.dumps({"data": {"s": SECRET}})]),
    ("empty-type", [orjson.dumps({"type": "", "data": {}})]),
    ("long-type", [orjson.dumps({"type": "t" * 65, "data": {}})]),
    ("type-not-string", [orjson.dumps({"type": 7, "data": {}})]),
    ("reserved-type", [orjson.dumps({"type": "connection_established", "data": {"s": SECRET}})]),
    ("data-not-object", [orjson.dumps({"type": "ingest_ok", "data": [SECRET]})]),
    ("no-data", [orjson.dumps({"type": "ingest_ok"})]),
    ("bad-timestamp", [orjson.dumps({"type": "ingest_ok", "data": {}, "timestamp": "yesterday"})]),
    ("negative-timestamp", [orjson.dumps({"type": "ingest_ok", "data": {}, "timestamp": -1})]),
    ("two-frames", [orjson.dumps({"type": "ingest_ok", "data": {}}), b"extra"]),
    ("oversized", [orjson.dumps({"type": "ingest_ok", "data": {"blob": SECRET + "x" * 1_100_000}})]),
]


@pytest.mark.parametrize("frames", [f for _, f in BAD_FRAMES], ids=[name for name, _ in BAD_FRAMES])
async def test_invalid_message_is_dropped_and_the_next_valid_one_arrives(
    server: ServerProcess, frames: list[bytes]
) -> None:
    client = server.client()
    await client.connect()
    await client.subscribe({"eventTypes": ["ingest_ok", "ingest_end"]})
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(server.ingest_endpoint)
    try:
        push.send_multipart(frames)
        push.send(orjson.dumps({"type": "ingest_ok", "data": {"after": "bad"}}))
        push.send(orjson.dumps({"type": "ingest_end", "data": {}}))
        received = await collect_until(client, "ingest_end")
    finally:
        push.close()
        context.term()
    assert [e["data"] for e in received] == [{"after": "bad"}]
    await client.close()


async def test_rejections_are_logged_without_the_payload(server: ServerProcess) -> None:
    server.producer().publish_raw(b"{broken " + SECRET.encode())
    for _ in range(50):
        if "dropped producer message" in server.log():
            break
        await asyncio.sleep(0.1)
    log = server.log()
    assert "dropped producer message" in log
    assert SECRET not in log


async def test_sequence_numbers_are_consecutive_across_producers(server: ServerProcess) -> None:
    client = server.client()
    await client.connect()
    await client.subscribe({"eventTypes": ["seq_check", "seq_end"]})
    producers = [server.producer() for _ in range(3)]
    for i in range(60):
        producers[i % 3].publish("seq_check", {"i": i})
    await asyncio.sleep(0.2)
    producers[0].publish("seq_end", {})
    received = await collect_until(client, "seq_end")
    seqs = [e["seq"] for e in received]
    assert len(seqs) == 60 and seqs == list(range(seqs[0], seqs[0] + 60))
    assert len({e["epoch"] for e in received}) == 1
    await client.close()
