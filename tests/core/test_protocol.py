"""Client messages in, server messages out: every request parses or yields a ProtocolError, never raises."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from core.filters import SubscriptionFilters
from core.protocol import (
    CLIENT_MESSAGE_TYPES,
    DEFAULT_CONVERSATION_LIMIT,
    MAX_REQUEST_ID_CHARS,
    ClientInfo,
    CloseCode,
    Disconnect,
    ErrorCode,
    GetActiveConversations,
    GetProjectActivity,
    Ping,
    ProtocolError,
    Subscribe,
    Unsubscribe,
    capabilities,
    close_echo_code,
    encode_error,
    encode_message,
    parse_client_message,
)

MAX_VALUES = 3


def parse(message: Any) -> Any:
    raw = message if isinstance(message, bytes | str) else orjson.dumps(message)
    return parse_client_message(raw, MAX_VALUES)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"type": "subscribe", "data": {"filters": {}}}, Subscribe(SubscriptionFilters())),
        ({"type": "subscribe", "data": {"filters": None}}, Subscribe(SubscriptionFilters())),
        (
            {
                "type": "subscribe",
                "requestId": "r1",
                "data": {"filters": {"projectIds": [2, 1]}, "clientInfo": {"name": "dash", "version": "1.2"}},
            },
            Subscribe(SubscriptionFilters(projectIds=frozenset({1, 2})), ClientInfo("dash", "1.2"), "r1"),
        ),
        (
            {"type": "subscribe", "data": {"filters": {}, "clientInfo": {}}},
            Subscribe(SubscriptionFilters(), ClientInfo("", "")),
        ),
        (
            {
                "type": "subscribe",
                "data": {"filters": {}, "clientInfo": {"name": "n" * 500, "version": "v" * 500}},
            },
            Subscribe(SubscriptionFilters(), ClientInfo("n" * 128, "v" * 64)),
        ),
        ({"type": "unsubscribe"}, Unsubscribe()),
        ({"type": "unsubscribe", "data": None}, Unsubscribe()),
        (
            {"type": "unsubscribe", "data": {"subscriptionKey": "sub_1"}, "requestId": 0},
            Unsubscribe("sub_1", None, 0),
        ),
        (
            {"type": "unsubscribe", "data": {"filters": {"eventTypes": ["x"]}}},
            Unsubscribe(None, SubscriptionFilters(eventTypes=frozenset({"x"}))),
        ),
        ({"type": "unsubscribe", "data": {"filters": None}}, Unsubscribe()),
        ({"type": "ping"}, Ping()),
        ({"type": "ping", "data": {"timestamp": 12.5}, "requestId": 7}, Ping(12.5, 7)),
        ({"type": "ping", "data": {"timestamp": 1700000000000}}, Ping(1700000000000)),
        ({"type": "get_active_conversations"}, GetActiveConversations(None, DEFAULT_CONVERSATION_LIMIT)),
        (
            {"type": "get_active_conversations", "data": {"projectId": 3, "limit": 1}},
            GetActiveConversations(3, 1),
        ),
        ({"type": "get_active_conversations", "data": {"limit": 1000}}, GetActiveConversations(None, 1000)),
        (
            {"type": "get_active_conversations", "data": {"projectId": None}},
            GetActiveConversations(None, 100),
        ),
        ({"type": "get_project_activity", "data": {"projectId": 1}}, GetProjectActivity(1)),
        (
            {"type": "get_project_activity", "data": {"projectId": 0, "timeRange": None}},
            GetProjectActivity(0),
        ),
        (
            {
                "type": "get_project_activity",
                "data": {"projectId": 1, "timeRange": {"start": 10, "end": 20.5}},
            },
            GetProjectActivity(1, 10, 20.5),
        ),
        (
            {"type": "get_project_activity", "data": {"projectId": 1, "timeRange": {"start": 5}}},
            GetProjectActivity(1, 5, None),
        ),
        (
            {"type": "get_project_activity", "data": {"projectId": 1, "timeRange": {"end": 5}}},
            GetProjectActivity(1, None, 5),
        ),
        ({"type": "get_project_activity", "data": {"projectId": 1, "timeRange": {}}}, GetProjectActivity(1)),
        (
            {"type": "get_project_activity", "data": {"projectId": 1, "timeRange": {"start": 5, "end": 5}}},
            GetProjectActivity(1, 5, 5),
        ),
        ({"type": "ping", "requestId": "x" * MAX_REQUEST_ID_CHARS}, Ping(None, "x" * MAX_REQUEST_ID_CHARS)),
        ({"type": "ping", "requestId": None}, Ping()),
        ('{"type": "ping", "requestId": "é"}', Ping(None, "é")),
    ],
    ids=[
        "subscribe-everything",
        "subscribe-null-filters",
        "subscribe-full",
        "subscribe-empty-client-info",
        "subscribe-client-info-truncated",
        "unsubscribe-all-no-data",
        "unsubscribe-null-data",
        "unsubscribe-by-key",
        "unsubscribe-by-filters",
        "unsubscribe-null-filters",
        "ping",
        "ping-float-timestamp",
        "ping-int-timestamp",
        "active-defaults",
        "active-project-limit-1",
        "active-limit-max",
        "active-null-project",
        "activity",
        "activity-null-range",
        "activity-range",
        "activity-start-only",
        "activity-end-only",
        "activity-empty-range",
        "activity-start-equals-end",
        "request-id-longest",
        "request-id-null",
        "str-payload",
    ],
)
def test_valid_messages(message: Any, expected: Any) -> None:
    assert parse(message) == expected


def test_every_client_message_type_has_a_parser() -> None:
    for kind in CLIENT_MESSAGE_TYPES:
        data = {"filters": {}} if kind == "subscribe" else {"projectId": 1, "token": "t"}
        result = parse({"type": kind, "data": data})
        assert not isinstance(result, ProtocolError), (kind, result)


INVALID = ErrorCode.INVALID_MESSAGE
FILTERS = ErrorCode.INVALID_FILTERS
UNKNOWN = ErrorCode.UNKNOWN_MESSAGE_TYPE


@pytest.mark.parametrize(
    ("message", "code", "request_id"),
    [
        (b"not json", INVALID, None),
        (b"", INVALID, None),
        (b'{"type": "ping", "data": {}', INVALID, None),
        ('{"type": "ping", "x": "\ud800"}', INVALID, None),
        ([], INVALID, None),
        ("null", INVALID, None),
        ('"ping"', INVALID, None),
        ("42", INVALID, None),
        ({"data": {}}, INVALID, None),
        ({"data": {}, "requestId": "r"}, INVALID, "r"),
        ({"type": 1, "requestId": 7}, INVALID, 7),
        ({"type": None, "requestId": 7}, INVALID, 7),
        ({"type": "ping", "data": [], "requestId": "r"}, INVALID, "r"),
        ({"type": "ping", "data": "x"}, INVALID, None),
        ({"type": "ping", "data": 1}, INVALID, None),
        ({"type": "ping", "requestId": 1.5}, INVALID, None),
        ({"type": "ping", "requestId": True}, INVALID, None),
        ({"type": "ping", "requestId": ["r"]}, INVALID, None),
        ({"type": "ping", "requestId": {"r": 1}}, INVALID, None),
        ({"type": "ping", "requestId": "x" * (MAX_REQUEST_ID_CHARS + 1)}, INVALID, None),
        ({"type": "subscribe_all", "requestId": "r"}, UNKNOWN, "r"),
        ({"type": "", "requestId": 3}, UNKNOWN, 3),
        ({"type": "PING"}, UNKNOWN, None),
        ({"type": "pong"}, UNKNOWN, None),
        ({"type": "subscribe", "requestId": "r"}, FILTERS, "r"),
        ({"type": "subscribe", "data": {"clientInfo": {}}}, FILTERS, None),
        ({"type": "subscribe", "data": {"filters": []}, "requestId": "r"}, FILTERS, "r"),
        ({"type": "subscribe", "data": {"filters": {"projectIds": "1"}}}, FILTERS, None),
        ({"type": "subscribe", "data": {"filters": {"projectIds": [1, 2, 3, 4]}}}, FILTERS, None),
        ({"type": "subscribe", "data": {"filters": {"nope": []}}}, FILTERS, None),
        ({"type": "subscribe", "data": {"filters": {"messageTypes": ["tool"]}}}, FILTERS, None),
        (
            {"type": "subscribe", "data": {"filters": {}, "clientInfo": "dash"}, "requestId": "r"},
            INVALID,
            "r",
        ),
        ({"type": "subscribe", "data": {"filters": {}, "clientInfo": {"name": 1}}}, INVALID, None),
        ({"type": "subscribe", "data": {"filters": {}, "clientInfo": {"version": 2}}}, INVALID, None),
        ({"type": "subscribe", "data": {"filters": {}, "clientInfo": {"name": None}}}, INVALID, None),
        ({"type": "subscribe", "data": {"filters": {}, "clientInfo": []}}, INVALID, None),
        ({"type": "unsubscribe", "data": {"subscriptionKey": 5}, "requestId": "r"}, INVALID, "r"),
        ({"type": "unsubscribe", "data": {"subscriptionKey": ["k"]}}, INVALID, None),
        ({"type": "unsubscribe", "data": {"filters": {"bogus": []}}, "requestId": 9}, FILTERS, 9),
        ({"type": "unsubscribe", "data": {"filters": "x"}}, FILTERS, None),
        ({"type": "ping", "data": {"timestamp": "1"}, "requestId": "r"}, INVALID, "r"),
        ({"type": "ping", "data": {"timestamp": True}}, INVALID, None),
        ({"type": "ping", "data": {"timestamp": [1]}}, INVALID, None),
        ({"type": "get_active_conversations", "data": {"limit": 0}, "requestId": "r"}, INVALID, "r"),
        ({"type": "get_active_conversations", "data": {"limit": -5}}, INVALID, None),
        ({"type": "get_active_conversations", "data": {"limit": 1001}}, INVALID, None),
        ({"type": "get_active_conversations", "data": {"limit": "10"}}, INVALID, None),
        ({"type": "get_active_conversations", "data": {"limit": 10.0}}, INVALID, None),
        ({"type": "get_active_conversations", "data": {"limit": True}}, INVALID, None),
        ({"type": "get_active_conversations", "data": {"projectId": "1"}}, INVALID, None),
        ({"type": "get_active_conversations", "data": {"projectId": True}}, INVALID, None),
        ({"type": "get_active_conversations", "data": {"projectId": 1.5}}, INVALID, None),
        ({"type": "get_project_activity", "requestId": "r"}, INVALID, "r"),
        ({"type": "get_project_activity", "data": {"projectId": None}}, INVALID, None),
        ({"type": "get_project_activity", "data": {"projectId": "1"}}, INVALID, None),
        ({"type": "get_project_activity", "data": {"projectId": True}}, INVALID, None),
        ({"type": "get_project_activity", "data": {"projectId": 1.0}}, INVALID, None),
        ({"type": "get_project_activity", "data": {"projectId": 1, "timeRange": "today"}}, INVALID, None),
        ({"type": "get_project_activity", "data": {"projectId": 1, "timeRange": [1, 2]}}, INVALID, None),
        (
            {"type": "get_project_activity", "data": {"projectId": 1, "timeRange": {"start": "0"}}},
            INVALID,
            None,
        ),
        (
            {"type": "get_project_activity", "data": {"projectId": 1, "timeRange": {"end": True}}},
            INVALID,
            None,
        ),
        (
            {
                "type": "get_project_activity",
                "data": {"projectId": 1, "timeRange": {"start": 9, "end": 8}},
                "requestId": 4,
            },
            INVALID,
            4,
        ),
    ],
    ids=[
        "not-json",
        "empty",
        "truncated-json",
        "lone-surrogate-str",
        "array",
        "null",
        "string",
        "number",
        "type-missing",
        "type-missing-echoes-request-id",
        "type-int",
        "type-null",
        "data-array",
        "data-string",
        "data-int",
        "request-id-float",
        "request-id-bool",
        "request-id-array",
        "request-id-object",
        "request-id-too-long",
        "unknown-type",
        "empty-type",
        "type-case-sensitive",
        "server-type-from-client",
        "subscribe-no-data",
        "subscribe-no-filters",
        "subscribe-filters-array",
        "subscribe-filter-values-string",
        "subscribe-too-many-values",
        "subscribe-unknown-kind",
        "subscribe-bad-message-type",
        "client-info-string",
        "client-info-name-int",
        "client-info-version-int",
        "client-info-name-null",
        "client-info-array",
        "unsubscribe-key-int",
        "unsubscribe-key-array",
        "unsubscribe-bad-filters",
        "unsubscribe-filters-string",
        "ping-timestamp-string",
        "ping-timestamp-bool",
        "ping-timestamp-array",
        "active-limit-zero",
        "active-limit-negative",
        "active-limit-too-big",
        "active-limit-string",
        "active-limit-float",
        "active-limit-bool",
        "active-project-string",
        "active-project-bool",
        "active-project-float",
        "activity-project-missing",
        "activity-project-null",
        "activity-project-string",
        "activity-project-bool",
        "activity-project-float",
        "activity-range-string",
        "activity-range-array",
        "activity-start-string",
        "activity-end-bool",
        "activity-start-after-end",
    ],
)
def test_invalid_messages(message: Any, code: str, request_id: Any) -> None:
    result = parse(message)
    assert isinstance(result, ProtocolError)
    reply_type = "subscription_error" if code == FILTERS else "error"
    assert (result.code, result.reply_type, result.request_id) == (code, reply_type, request_id)
    assert result.message


@pytest.mark.parametrize(
    "payload",
    [b'{"type": "ping", "x": "\xff\xfe"}', b"\xc3\x28", b"\xed\xa0\x80"],
    ids=["in-a-string", "bad-continuation", "surrogate"],
)
def test_text_that_is_not_utf8_fails_the_connection_with_1007(payload: bytes) -> None:
    assert parse_client_message(payload, 100) == Disconnect(
        CloseCode.INVALID_TEXT, "text message is not valid UTF-8"
    )


def test_valid_utf8_that_is_not_json_is_only_an_error() -> None:
    result = parse_client_message("caf\u00e9 au lait".encode(), 100)
    assert isinstance(result, ProtocolError) and result.code == INVALID


def test_unknown_type_is_named_but_bounded() -> None:
    short = parse({"type": "frobnicate"})
    assert isinstance(short, ProtocolError)
    assert "frobnicate" in short.message
    long = parse({"type": "y" * 10_000})
    assert isinstance(long, ProtocolError)
    assert long.code == UNKNOWN
    assert len(long.message) < 200


def test_max_filter_values_is_honoured() -> None:
    message = orjson.dumps({"type": "subscribe", "data": {"filters": {"toolNames": ["a", "b", "c", "d"]}}})
    assert isinstance(parse_client_message(message, 3), ProtocolError)
    assert isinstance(parse_client_message(message, 4), Subscribe)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("pong", {"serverTime": 5}, 123), {"type": "pong", "data": {"serverTime": 5}, "timestamp": 123}),
        (("pong", {}, 1, None), {"type": "pong", "data": {}, "timestamp": 1}),
        (("pong", {}, 1, 0), {"type": "pong", "data": {}, "timestamp": 1, "requestId": 0}),
        (("pong", {}, 1, "r-1"), {"type": "pong", "data": {}, "timestamp": 1, "requestId": "r-1"}),
    ],
    ids=["no-request-id", "none-request-id", "zero-request-id", "string-request-id"],
)
def test_encode_message(args: tuple[Any, ...], expected: dict[str, Any]) -> None:
    assert orjson.loads(encode_message(*args)) == expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            ProtocolError("INVALID_MESSAGE", "bad", None),
            {"type": "error", "data": {"code": "INVALID_MESSAGE", "message": "bad"}, "timestamp": 9},
        ),
        (
            ProtocolError("INVALID_FILTERS", "no", "r", "subscription_error"),
            {
                "type": "subscription_error",
                "data": {"code": "INVALID_FILTERS", "message": "no"},
                "timestamp": 9,
                "requestId": "r",
            },
        ),
    ],
    ids=["error", "subscription-error"],
)
def test_encode_error(error: ProtocolError, expected: dict[str, Any]) -> None:
    assert orjson.loads(encode_error(error, 9)) == expected


def test_parse_error_round_trips_to_wire() -> None:
    error = parse({"type": "subscribe", "data": {"filters": {"projectIds": ["x"]}}, "requestId": 42})
    assert isinstance(error, ProtocolError)
    wire = orjson.loads(encode_error(error, 1))
    assert wire["type"] == "subscription_error"
    assert wire["requestId"] == 42
    assert wire["data"]["code"] == "INVALID_FILTERS"


def test_capabilities() -> None:
    caps = capabilities(3)
    assert caps["worker"] == 3
    assert caps["messageTypes"] == list(CLIENT_MESSAGE_TYPES)
    assert caps["protocolVersion"] == 1
    orjson.dumps(caps)


@pytest.mark.parametrize(
    ("received", "answer"),
    [
        (1000, 1000),
        (1001, 1001),
        (4001, 4001),
        (4999, 4999),
        (0, 1000),
        (1005, 1000),
        (1006, 1000),
        (1015, 1000),
        (5000, 1002),
        (65535, 1002),
    ],
)
def test_close_echo_code(received: int, answer: int) -> None:
    assert close_echo_code(received) == answer
