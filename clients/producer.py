"""The producer API: push events to the ingest over ZeroMQ.

    with Producer("tcp://127.0.0.1:5557") as producer:
        producer.publish("message_added", {"conversationId": "c1", "projectInfo": {"id": 1}})

ZeroMQ queues messages while the ingest is down or restarting, up to ``high_water_mark``; past
that ``publish`` waits at most ``send_timeout`` seconds and then raises ``TimeoutError``.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

import orjson
import zmq

from clients.curve import ClientKeys

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5557"


class Producer:
    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        high_water_mark: int = 100_000,
        send_timeout: float = 5.0,
        linger: float = 5.0,
        curve: ClientKeys | None = None,
    ) -> None:
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._socket = self._context.socket(zmq.PUSH)
        if curve is not None:  # an ingest across hosts: ClientKeys.load(own secret, ingest's public)
            curve.apply(self._socket)
        self._socket.setsockopt(zmq.SNDHWM, high_water_mark)
        self._socket.setsockopt(zmq.SNDTIMEO, int(send_timeout * 1000))
        self._socket.setsockopt(zmq.LINGER, int(linger * 1000))
        self._socket.connect(endpoint)
        self.endpoint = endpoint

    def publish(self, type: str, data: dict[str, Any], timestamp: float | None = None) -> None:
        """Send one event; the ingest stamps ``seq`` and ``epoch`` (and ``timestamp`` if omitted)."""
        message: dict[str, Any] = {"type": type, "data": data}
        message["timestamp"] = int(time.time() * 1000) if timestamp is None else timestamp
        self.publish_raw(orjson.dumps(message))

    def publish_raw(self, frame: bytes) -> None:
        """Send one frame as is: for tools that serialize themselves, and for testing validation."""
        try:
            self._socket.send(frame)
        except zmq.Again:
            raise TimeoutError(f"the ingest at {self.endpoint} is not taking events") from None

    def close(self) -> None:
        """Flush what is queued (within ``linger``) and release the socket."""
        self._socket.close()
        self._context.term()

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
