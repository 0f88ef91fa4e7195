"""The routing header that travels on the bus beside each serialized event.

Workers match subscriptions against this header alone, so they never parse an event's JSON: the
ingest reads the routing fields out of the event once and the bytes clients receive stay opaque.

On the bus an event is a two-frame ZeroMQ message ``[header, payload]``; the header is the JSON
array ``[seq, epoch, type, projectId, sessionId, messageTypes, toolNames, publishedMs]``, the last
being when the ingest published it (epoch milliseconds, a float), for the broadcast latency.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson


class RoutingHeader(NamedTuple):
    seq: int
    epoch: str
    type: str
    project_id: int | None
    session_id: str | None
    message_types: tuple[str, ...]
    tool_names: tuple[str, ...]
    published_ms: float = 0.0

    def encode(self) -> bytes:
        return orjson.dumps(tuple(self))

    @classmethod
    def decode(cls, raw: bytes) -> RoutingHeader:
        seq, epoch, type_, project_id, session_id, message_types, tool_names, *rest = orjson.loads(raw)
        published_ms = rest[0] if rest else 0.0
        return cls(
            seq, epoch, type_, project_id, session_id, tuple(message_types), tuple(tool_names), published_ms
        )
