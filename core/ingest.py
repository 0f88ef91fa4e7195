"""The ingest pipeline: a producer frame in, a sequenced event and its routing header out.

Each accepted event is serialized here, once, into the exact bytes every client receives;
workers only read the routing header. A frame that fails validation comes back as ``Rejected``
with a short reason (never the payload) and leaves the sequence untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from core.filters import MESSAGE_TYPES
from core.routing import RoutingHeader
from core.state import ConversationRoute, LiveState

MAX_TYPE_CHARS = 64
MAX_ROUTING_VALUES = 64
MAX_ROUTING_STRING = 256

# Types the server itself sends: a producer may not forge them.
RESERVED_TYPES = frozenset(
    {
        "connection_established",
        "subscription_confirmed",
        "subscription_error",
        "unsubscription_confirmed",
        "pong",
        "error",
        "active_conversations",
        "project_activity",
        "projects",
        "server_shutdown",
        "resume_failed",
        "resumed",
        "epoch_changed",
        "token_refreshed",
    }
)


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str


@dataclass(frozen=True, slots=True)
class Published:
    header: RoutingHeader
    payload: bytes


@dataclass(frozen=True, slots=True)
class Control:
    """An instruction for the workers, never delivered to clients (``revoke_session {sid}``)."""

    kind: str
    payload: bytes


REVOKE_SESSION = "revoke_session"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short_string(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_ROUTING_STRING else None


def _project_id(data: dict[str, Any]) -> int | None:
    if _is_int(data.get("projectId")):
        return int(data["projectId"])
    for container in (data.get("projectInfo"), data.get("project")):
        if isinstance(container, dict) and _is_int(container.get("id")):
            return int(container["id"])
    return None


def _names(values: Any) -> list[str]:
    if not isinstance(values, list):
        return []
    return [v for v in values[:MAX_ROUTING_VALUES] if _short_string(v) is not None]


@dataclass(frozen=True, slots=True)
class _Route:
    conversation_id: str | None
    project_id: int | None
    session_id: str | None
    message_types: tuple[str, ...]
    tool_names: tuple[str, ...]
    tool_use_count: int


def read_route(data: dict[str, Any]) -> _Route:
    """Where each routing field is read from; docs/protocol.md lists the same places."""
    message = data.get("message")
    message = message if isinstance(message, dict) else {}
    session_id = _short_string(data.get("sessionId")) or _short_string(message.get("sessionId"))
    message_type = message.get("type")
    tool_uses = message.get("toolUses")
    tool_uses = tool_uses if isinstance(tool_uses, list) else []
    tool_names = _names([t.get("name") for t in tool_uses if isinstance(t, dict)]) + _names(
        data.get("toolNames")
    )
    return _Route(
        conversation_id=_short_string(data.get("conversationId")),
        project_id=_project_id(data),
        session_id=session_id,
        message_types=(message_type,)
        if isinstance(message_type, str) and message_type in MESSAGE_TYPES
        else (),
        tool_names=tuple(dict.fromkeys(tool_names)),
        tool_use_count=len(tool_uses),
    )


class IngestPipeline:
    def __init__(self, epoch: str, state: LiveState, max_event_bytes: int) -> None:
        self.epoch = epoch
        self.state = state
        self.max_event_bytes = max_event_bytes
        self.seq = 0

    def accept(self, frame: bytes, now_ms: float) -> Published | Control | Rejected:
        """``now_ms``: the ingest's clock, epoch milliseconds (a float: the header keeps the fraction)."""
        if len(frame) > self.max_event_bytes:
            return Rejected(f"frame of {len(frame)} bytes exceeds max_event_bytes ({self.max_event_bytes})")
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return Rejected("not valid JSON (or not UTF-8)")
        if not isinstance(message, dict):
            return Rejected("message is not a JSON object")
        type_ = message.get("type")
        if not isinstance(type_, str) or not 0 < len(type_) <= MAX_TYPE_CHARS:
            return Rejected(f"type must be a non-empty string of at most {MAX_TYPE_CHARS} chars")
        if type_ in RESERVED_TYPES:
            return Rejected(f"type {type_!r} is reserved for the server")
        data = message.get("data")
        if not isinstance(data, dict):
            return Rejected("data must be a JSON object")
        if type_ == REVOKE_SESSION:
            sid = _short_string(data.get("sid"))
            if sid is None:
                return Rejected(f"revoke_session needs data.sid, a string of 1 to {MAX_ROUTING_STRING} chars")
            self.state.revoke(sid)
            return Control(REVOKE_SESSION, orjson.dumps({"sid": sid}))
        timestamp = message.get("timestamp")
        if timestamp is None:
            timestamp = int(now_ms)
        elif not (isinstance(timestamp, int | float) and not isinstance(timestamp, bool) and timestamp >= 0):
            return Rejected("timestamp must be a non-negative number of epoch milliseconds")

        route = read_route(data)
        project_id, session_id = route.project_id, route.session_id
        if route.conversation_id is not None and (project_id is None or session_id is None):
            known = self.state.route_of(route.conversation_id)
            if known is not None:
                if project_id is None and known.project_id is not None:
                    project_id = data["projectId"] = known.project_id
                if session_id is None and known.session_id is not None:
                    session_id = data["sessionId"] = known.session_id
        self.state.apply(
            type_,
            data,
            route.conversation_id,
            ConversationRoute(project_id, session_id),
            route.tool_use_count,
            timestamp,
            now_ms,
        )

        self.seq += 1
        payload = orjson.dumps(
            {"type": type_, "data": data, "timestamp": timestamp, "seq": self.seq, "epoch": self.epoch}
        )
        header = RoutingHeader(
            self.seq, self.epoch, type_, project_id, session_id, route.message_types, route.tool_names, now_ms
        )
        return Published(header, payload)
