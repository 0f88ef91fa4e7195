"""The client wire protocol: parse what clients send, encode what the server answers.

``parse_client_message`` never raises on bad input: it returns a request or a ``ProtocolError``
value, which the worker turns into an ``error`` / ``subscription_error`` message for that client
alone. Decisions that end a connection are ``Disconnect`` values. docs/protocol.md documents every
message, code and close code defined here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from core.filters import FILTER_KINDS, FilterError, SubscriptionFilters, parse_filters

PROTOCOL_VERSION = 1
MAX_REQUEST_ID_CHARS = 128
DEFAULT_CONVERSATION_LIMIT = 100
MAX_CONVERSATION_LIMIT = 1000
DEFAULT_PROJECT_LIMIT = 100
MAX_PROJECT_LIMIT = 1000

RequestId = str | int | None


class ErrorCode:
    INVALID_MESSAGE = "INVALID_MESSAGE"
    UNKNOWN_MESSAGE_TYPE = "UNKNOWN_MESSAGE_TYPE"
    INVALID_FILTERS = "INVALID_FILTERS"
    TOO_MANY_SUBSCRIPTIONS = "TOO_MANY_SUBSCRIPTIONS"
    SUBSCRIPTION_NOT_FOUND = "SUBSCRIPTION_NOT_FOUND"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    QUERY_TIMEOUT = "QUERY_TIMEOUT"
    QUERY_FAILED = "QUERY_FAILED"
    UNAUTHORIZED = "UNAUTHORIZED"


class CloseCode:
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_TEXT = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    TOKEN_EXPIRED = 4001
    SESSION_REVOKED = 4003


# RFC 6455 section 7.4.1: these codes report what happened locally and are never sent in a frame.
_NEVER_SENT_CLOSE_CODES = frozenset({0, 1005, 1006, 1015})


def close_echo_code(received: int) -> int:
    """The code to answer a peer's close frame with: its own, unless that may not go on the wire."""
    if received in _NEVER_SENT_CLOSE_CODES:
        return CloseCode.NORMAL
    if received >= 5000:  # RFC 6455 7.4.2 assigns codes up to 4999 only: the peer broke the protocol
        return CloseCode.PROTOCOL_ERROR
    return received


@dataclass(frozen=True, slots=True)
class Disconnect:
    """A decision to close a connection with this code and reason."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A refused request: answered with ``reply_type`` {code, message}; the connection stays open."""

    code: str
    message: str
    request_id: RequestId = None
    reply_type: str = "error"


@dataclass(frozen=True, slots=True)
class ClientInfo:
    name: str
    version: str


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a reconnecting client left off: the epoch and the last seq it received."""

    epoch: str
    seq: int
    # More subscriptions follow before the replay: hold live events, replay after the last one.
    more: bool = False


@dataclass(frozen=True, slots=True)
class Subscribe:
    filters: SubscriptionFilters
    client_info: ClientInfo | None = None
    request_id: RequestId = None
    resume: Resume | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Neither key nor filters: every subscription of the connection."""

    subscription_key: str | None = None
    filters: SubscriptionFilters | None = None
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class Ping:
    client_timestamp: float | None = None
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class GetActiveConversations:
    project_id: int | None = None
    limit: int = DEFAULT_CONVERSATION_LIMIT
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class GetProjectActivity:
    project_id: int
    start: float | None = None
    end: float | None = None
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class GetProjects:
    limit: int = DEFAULT_PROJECT_LIMIT
    request_id: RequestId = None


@dataclass(frozen=True, slots=True)
class RefreshToken:
    token: str
    request_id: RequestId = None


Query = GetActiveConversations | GetProjectActivity | GetProjects
Request = Subscribe | Unsubscribe | Ping | Query | RefreshToken
CLIENT_MESSAGE_TYPES = (
    "subscribe",
    "unsubscribe",
    "ping",
    "get_active_conversations",
    "get_project_activity",
    "get_projects",
    "refresh_token",
)
MAX_TOKEN_CHARS = 8192


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _invalid(message: str, request_id: RequestId = None) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_MESSAGE, message, request_id)


def parse_client_message(
    payload: bytes | str, max_filter_values: int
) -> Request | ProtocolError | Disconnect:
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        if isinstance(payload, bytes) and not _is_utf8(payload):
            # RFC 6455 8.1: a text message that is not UTF-8 fails the connection.
            return Disconnect(CloseCode.INVALID_TEXT, "text message is not valid UTF-8")
        return _invalid("message is not valid JSON")
    if not isinstance(message, dict):
        return _invalid("message must be a JSON object")

    request_id = message.get("requestId")
    if request_id is not None and not (
        _is_int(request_id) or (isinstance(request_id, str) and len(request_id) <= MAX_REQUEST_ID_CHARS)
    ):
        return _invalid(f"requestId must be an integer or a string of at most {MAX_REQUEST_ID_CHARS} chars")

    kind = message.get("type")
    if not isinstance(kind, str):
        return _invalid("type must be a string", request_id)
    data = message.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return _invalid("data must be an object", request_id)

    parser = _PARSERS.get(kind)
    if parser is None:
        shown = kind if len(kind) <= 64 else kind[:64] + "..."
        return ProtocolError(ErrorCode.UNKNOWN_MESSAGE_TYPE, f"unknown message type: {shown}", request_id)
    return parser(data, request_id, max_filter_values)


def _is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _filter_error(error: FilterError, request_id: RequestId) -> ProtocolError:
    return ProtocolError(error.code, error.message, request_id, "subscription_error")


def _parse_subscribe(data: dict[str, Any], request_id: RequestId, max_values: int) -> Request | ProtocolError:
    if "filters" not in data:
        return ProtocolError(
            ErrorCode.INVALID_FILTERS,
            "subscribe needs data.filters (an object; {} subscribes to everything)",
            request_id,
            "subscription_error",
        )
    filters = parse_filters(data["filters"], max_values)
    if isinstance(filters, FilterError):
        return _filter_error(filters, request_id)
    raw_info = data.get("clientInfo")
    client_info = None
    if raw_info is not None:
        if not (
            isinstance(raw_info, dict)
            and isinstance(raw_info.get("name", ""), str)
            and isinstance(raw_info.get("version", ""), str)
        ):
            return _invalid("clientInfo must be an object with string name and version", request_id)
        client_info = ClientInfo(str(raw_info.get("name", ""))[:128], str(raw_info.get("version", ""))[:64])
    raw_resume = data.get("resume")
    resume = None
    if raw_resume is not None:
        fields = raw_resume if isinstance(raw_resume, dict) else {}
        epoch, seq = fields.get("epoch"), fields.get("seq")
        if not (
            isinstance(epoch, str)
            and 0 < len(epoch) <= 64
            and isinstance(seq, int)
            and not isinstance(seq, bool)
        ):
            return _invalid("resume must be {epoch: string, seq: integer >= 0}", request_id)
        more = fields.get("more", False)
        if seq < 0 or not isinstance(more, bool):
            return _invalid("resume must be {epoch: string, seq: integer >= 0, more?: boolean}", request_id)
        resume = Resume(epoch, seq, more)
    return Subscribe(filters, client_info, request_id, resume)


def _parse_unsubscribe(
    data: dict[str, Any], request_id: RequestId, max_values: int
) -> Request | ProtocolError:
    key = data.get("subscriptionKey")
    if key is not None and not isinstance(key, str):
        return _invalid("subscriptionKey must be a string", request_id)
    filters = None
    if data.get("filters") is not None:
        parsed = parse_filters(data["filters"], max_values)
        if isinstance(parsed, FilterError):
            return _filter_error(parsed, request_id)
        filters = parsed
    return Unsubscribe(key, filters, request_id)


def _parse_ping(data: dict[str, Any], request_id: RequestId, _: int) -> Request | ProtocolError:
    timestamp = data.get("timestamp")
    if timestamp is not None and not _is_number(timestamp):
        return _invalid("timestamp must be a number", request_id)
    return Ping(timestamp, request_id)


def _parse_active_conversations(
    data: dict[str, Any], request_id: RequestId, _: int
) -> Request | ProtocolError:
    project_id = data.get("projectId")
    if project_id is not None and not _is_int(project_id):
        return _invalid("projectId must be an integer", request_id)
    limit = data.get("limit", DEFAULT_CONVERSATION_LIMIT)
    if not _is_int(limit) or not 1 <= limit <= MAX_CONVERSATION_LIMIT:
        return _invalid(f"limit must be an integer from 1 to {MAX_CONVERSATION_LIMIT}", request_id)
    return GetActiveConversations(project_id, limit, request_id)


def _parse_project_activity(data: dict[str, Any], request_id: RequestId, _: int) -> Request | ProtocolError:
    project_id = data.get("projectId")
    if not isinstance(project_id, int) or isinstance(project_id, bool):
        return _invalid("projectId is required and must be an integer", request_id)
    time_range = data.get("timeRange")
    if time_range is None:
        return GetProjectActivity(project_id, None, None, request_id)
    if not isinstance(time_range, Mapping):
        return _invalid("timeRange must be an object {start, end} in epoch milliseconds", request_id)
    start, end = time_range.get("start"), time_range.get("end")
    if (start is not None and not _is_number(start)) or (end is not None and not _is_number(end)):
        return _invalid("timeRange.start and timeRange.end must be numbers (epoch ms)", request_id)
    if start is not None and end is not None and start > end:
        return _invalid("timeRange.start is after timeRange.end", request_id)
    return GetProjectActivity(project_id, start, end, request_id)


def _parse_projects(data: dict[str, Any], request_id: RequestId, _: int) -> Request | ProtocolError:
    limit = data.get("limit", DEFAULT_PROJECT_LIMIT)
    if not _is_int(limit) or not 1 <= limit <= MAX_PROJECT_LIMIT:
        return _invalid(f"limit must be an integer from 1 to {MAX_PROJECT_LIMIT}", request_id)
    return GetProjects(limit, request_id)


def _parse_refresh_token(data: dict[str, Any], request_id: RequestId, _: int) -> Request | ProtocolError:
    token = data.get("token")
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
        return _invalid(f"token must be a non-empty string of at most {MAX_TOKEN_CHARS} chars", request_id)
    return RefreshToken(token, request_id)


_PARSERS = {
    "subscribe": _parse_subscribe,
    "unsubscribe": _parse_unsubscribe,
    "ping": _parse_ping,
    "get_active_conversations": _parse_active_conversations,
    "get_project_activity": _parse_project_activity,
    "get_projects": _parse_projects,
    "refresh_token": _parse_refresh_token,
}


def now_ms() -> int:
    """Protocol timestamps are epoch milliseconds."""
    return int(time.time() * 1000)


def encode_message(
    type_: str, data: Mapping[str, Any], timestamp_ms: int, request_id: RequestId = None
) -> bytes:
    """A server-originated message (not a bus event) as the text frame the client receives."""
    message: dict[str, Any] = {"type": type_, "data": data, "timestamp": timestamp_ms}
    if request_id is not None:
        message["requestId"] = request_id
    return orjson.dumps(message)


def encode_error(error: ProtocolError, timestamp_ms: int) -> bytes:
    return encode_message(
        error.reply_type, {"code": error.code, "message": error.message}, timestamp_ms, error.request_id
    )


def capabilities(worker_id: int) -> dict[str, Any]:
    return {
        "protocolVersion": PROTOCOL_VERSION,
        "messageTypes": list(CLIENT_MESSAGE_TYPES),
        "filterKinds": list(FILTER_KINDS),
        "queries": ["get_active_conversations", "get_project_activity", "get_projects"],
        "requestIds": True,
        "worker": worker_id,
    }
