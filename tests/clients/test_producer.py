"""The producer API against real ZeroMQ sockets."""

from __future__ import annotations

import time

import orjson
import pytest
import zmq

from clients import Producer
from tests.harness import free_ports


@pytest.fixture
def pull_endpoint() -> tuple[zmq.Socket[bytes], str]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVTIMEO, 5000)
    endpoint = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    pull.bind(endpoint)
    yield pull, endpoint  # type: ignore[misc]
    pull.close(linger=0)
    context.term()


def test_publish_sends_one_json_frame_with_a_timestamp(pull_endpoint: tuple[zmq.Socket[bytes], str]) -> None:
    pull, endpoint = pull_endpoint
    with Producer(endpoint) as producer:
        before = int(time.time() * 1000)
        producer.publish("message_added", {"conversationId": "c"})
        producer.publish("message_added", {"conversationId": "d"}, timestamp=5)
        first = pull.recv_multipart()
        second = orjson.loads(pull.recv())
    assert len(first) == 1
    message = orjson.loads(first[0])
    assert message["type"] == "message_added" and message["data"] == {"conversationId": "c"}
    assert before <= message["timestamp"] <= time.time() * 1000
    assert second["timestamp"] == 5


def test_publish_raw_sends_bytes_as_they_are(pull_endpoint: tuple[zmq.Socket[bytes], str]) -> None:
    pull, endpoint = pull_endpoint
    with Producer(endpoint) as producer:
        producer.publish_raw(b"anything at all")
        assert pull.recv() == b"anything at all"


def test_publish_times_out_when_no_ingest_takes_events() -> None:
    endpoint = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    producer = Producer(endpoint, high_water_mark=1, send_timeout=0.2, linger=0)
    try:
        with pytest.raises(TimeoutError):
            for _ in range(10):
                producer.publish("x", {})
    finally:
        producer.close()
