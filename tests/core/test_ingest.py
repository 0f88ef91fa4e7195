"""The ingest pipeline: validation, sequencing, the exact payload, and routing fields for the header."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from core.ingest import MAX_TYPE_CHARS, RESERVED_TYPES, IngestPipeline, Published, Rejected
from core.routing import RoutingHeader
from core.state import LiveState

NOW = 1_700_000_000_000
MAX_BYTES = 2048
SECRET = "SECRET-7f3a"


@pytest.fixture
def pipeline() -> IngestPipeline:
    return IngestPipeline(
        "epoch-1", LiveState(max_active=100, retention_ms=86_400_000, bucket_ms=60_000), MAX_BYTES
    )


def frame(message: Any) -> bytes:
    return message if isinstance(message, bytes) else orjson.dumps(message)


def publish(pipeline: IngestPipeline, message: Any, now: int = NOW) -> Published:
    outcome = pipeline.accept(frame(message), now)
    assert isinstance(outcome, Published), outcome
    return outcome


def test_seq_starts_at_one_and_counts_only_accepted(pipeline: IngestPipeline) -> None:
    good = {"type": "message_added", "data": {}}
    assert publish(pipeline, good).header.seq == 1
    assert isinstance(pipeline.accept(b"nope", NOW), Rejected)
    assert isinstance(pipeline.accept(frame({"type": "error", "data": {}}), NOW), Rejected)
    second = publish(pipeline, good)
    assert second.header.seq == 2
    assert orjson.loads(second.payload)["seq"] == 2
    assert pipeline.seq == 2


def test_payload_shape(pipeline: IngestPipeline) -> None:
    data = {"conversationId": "c1", "nested": {"list": [1, "two", None]}, "unicode": "ツ"}
    published = publish(pipeline, {"type": "conversation_started", "data": data, "extra": "dropped"})
    payload = orjson.loads(published.payload)
    assert payload == {
        "type": "conversation_started",
        "data": data,
        "timestamp": NOW,
        "seq": 1,
        "epoch": "epoch-1",
    }
    assert list(payload) == ["type", "data", "timestamp", "seq", "epoch"]


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [(None, NOW), (0, 0), (1234, 1234), (1234.5, 1234.5), (2**63, 2**63)],
    ids=["null-filled", "zero-kept", "int-kept", "float-kept", "large-kept"],
)
def test_timestamp(pipeline: IngestPipeline, timestamp: Any, expected: Any) -> None:
    payload = orjson.loads(publish(pipeline, {"type": "t", "data": {}, "timestamp": timestamp}).payload)
    assert payload["timestamp"] == expected


def test_timestamp_filled_when_absent(pipeline: IngestPipeline) -> None:
    payload = orjson.loads(publish(pipeline, {"type": "t", "data": {}}, now=NOW + 5).payload)
    assert payload["timestamp"] == NOW + 5


def test_largest_frame_and_type_accepted(pipeline: IngestPipeline) -> None:
    message = {"type": "t" * MAX_TYPE_CHARS, "data": {"pad": ""}}
    padding = MAX_BYTES - len(frame(message))
    message["data"]["pad"] = "p" * padding
    assert len(frame(message)) == MAX_BYTES
    assert publish(pipeline, message).header.type == "t" * MAX_TYPE_CHARS


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type": "t", "data": {"s": "' + SECRET.encode() + b"x" * MAX_BYTES + b'"}}',
        SECRET.encode(),
        b'{"type": "t", "data": {"s": "' + SECRET.encode() + b'\xff"}}',
        b'{"type": "t", "data": {"s": "' + SECRET.encode() + b'"}',
        b"",
        frame([SECRET]),
        frame(SECRET),
        frame(None),
        frame({"data": {"s": SECRET}}),
        frame({"type": "", "data": {"s": SECRET}}),
        frame({"type": "t" * (MAX_TYPE_CHARS + 1), "data": {"s": SECRET}}),
        frame({"type": 5, "data": {"s": SECRET}}),
        frame({"type": None, "data": {"s": SECRET}}),
        frame({"type": [SECRET], "data": {}}),
        frame({"type": "error", "data": {"s": SECRET}}),
        frame({"type": "pong", "data": {"s": SECRET}}),
        frame({"type": "subscription_confirmed", "data": {"s": SECRET}}),
        frame({"type": "server_shutdown", "data": {"s": SECRET}}),
        frame({"type": "t", "payload": {"s": SECRET}}),
        frame({"type": "t", "data": [SECRET]}),
        frame({"type": "t", "data": SECRET}),
        frame({"type": "t", "data": None}),
        frame({"type": "t", "data": {"s": SECRET}, "timestamp": "1700000000000"}),
        frame({"type": "t", "data": {"s": SECRET}, "timestamp": -1}),
        frame({"type": "t", "data": {"s": SECRET}, "timestamp": -0.5}),
        frame({"type": "t", "data": {"s": SECRET}, "timestamp": True}),
        frame({"type": "t", "data": {"s": SECRET}, "timestamp": False}),
        frame({"type": "t", "data": {"s": SECRET}, "timestamp": [1]}),
        frame({"type": "t", "data": {"s": SECRET}, "timestamp": {}}),
    ],
    ids=[
        "too-large",
        "not-json",
        "invalid-utf8",
        "truncated-json",
        "empty",
        "array",
        "string",
        "null",
        "type-missing",
        "type-empty",
        "type-65-chars",
        "type-int",
        "type-null",
        "type-array",
        "reserved-error",
        "reserved-pong",
        "reserved-subscription-confirmed",
        "reserved-server-shutdown",
        "data-missing",
        "data-array",
        "data-string",
        "data-null",
        "timestamp-string",
        "timestamp-negative",
        "timestamp-negative-float",
        "timestamp-true",
        "timestamp-false",
        "timestamp-array",
        "timestamp-object",
    ],
)
def test_rejections(pipeline: IngestPipeline, raw: bytes) -> None:
    outcome = pipeline.accept(raw, NOW)
    assert isinstance(outcome, Rejected)
    assert outcome.reason
    assert SECRET not in outcome.reason
    assert len(outcome.reason) < 200
    assert pipeline.seq == 0
    assert pipeline.state.active_conversations(None, 10)["total"] == 0


def header_of(pipeline: IngestPipeline, data: dict[str, Any], type_: str = "message_added") -> RoutingHeader:
    return publish(pipeline, {"type": type_, "data": data}).header


@pytest.mark.parametrize(
    ("data", "project_id"),
    [
        ({"projectId": 7}, 7),
        ({"projectId": 0}, 0),
        ({"projectInfo": {"id": 8}}, 8),
        ({"project": {"id": 9}}, 9),
        ({"projectId": 1, "projectInfo": {"id": 2}, "project": {"id": 3}}, 1),
        ({"projectInfo": {"id": 2}, "project": {"id": 3}}, 2),
        ({"projectInfo": {"id": "2"}, "project": {"id": 3}}, 3),
        ({"projectId": True}, None),
        ({"projectId": False}, None),
        ({"projectInfo": {"id": True}}, None),
        ({"project": {"id": False}}, None),
        ({"projectId": True, "project": {"id": 4}}, 4),
        ({"projectId": "7"}, None),
        ({"projectId": 7.0}, None),
        ({"projectInfo": 8}, None),
        ({"project": [9]}, None),
        ({}, None),
    ],
    ids=[
        "project-id",
        "project-id-zero",
        "project-info-id",
        "project-id-nested",
        "project-id-wins",
        "project-info-before-project",
        "string-nested-id-skipped",
        "bool-true",
        "bool-false",
        "bool-in-project-info",
        "bool-in-project",
        "bool-falls-through",
        "string",
        "float",
        "project-info-not-object",
        "project-not-object",
        "absent",
    ],
)
def test_header_project_id(pipeline: IngestPipeline, data: dict[str, Any], project_id: int | None) -> None:
    assert header_of(pipeline, data).project_id == project_id


@pytest.mark.parametrize(
    ("data", "session_id"),
    [
        ({"sessionId": "s1"}, "s1"),
        ({"sessionId": "s" * 256}, "s" * 256),
        ({"sessionId": "s" * 257}, None),
        ({"sessionId": ""}, None),
        ({"sessionId": 5}, None),
        ({"message": {"sessionId": "m1"}}, "m1"),
        ({"sessionId": "s1", "message": {"sessionId": "m1"}}, "s1"),
        ({}, None),
    ],
    ids=["plain", "longest", "too-long", "empty", "int", "from-message", "data-wins", "absent"],
)
def test_header_session_id(pipeline: IngestPipeline, data: dict[str, Any], session_id: str | None) -> None:
    assert header_of(pipeline, data).session_id == session_id


@pytest.mark.parametrize(
    ("data", "message_types", "tool_names"),
    [
        ({"message": {"type": "user"}}, ("user",), ()),
        ({"message": {"type": "assistant"}}, ("assistant",), ()),
        ({"message": {"type": "system"}}, ("system",), ()),
        ({"message": {"type": "tool"}}, (), ()),
        ({"message": {"type": 1}}, (), ()),
        ({"message": "user"}, (), ()),
        (
            {
                "message": {
                    "type": "assistant",
                    "toolUses": [{"name": "Read"}, {"name": "Bash"}, {"name": "Read"}],
                }
            },
            ("assistant",),
            ("Read", "Bash"),
        ),
        ({"toolNames": ["Edit", "Grep"]}, (), ("Edit", "Grep")),
        (
            {"message": {"toolUses": [{"name": "Read"}, {"name": "Bash"}]}, "toolNames": ["Bash", "Edit"]},
            (),
            ("Read", "Bash", "Edit"),
        ),
        (
            {"message": {"toolUses": [{"name": 1}, {"id": "x"}, "Bash", {"name": ""}, {"name": "Ok"}]}},
            (),
            ("Ok",),
        ),
        ({"toolNames": ["A", 3, None, "", "x" * 300, "B"]}, (), ("A", "B")),
        ({"toolNames": "Bash"}, (), ()),
        ({"message": {"toolUses": {"name": "Bash"}}}, (), ()),
        ({"toolNames": [f"t{i}" for i in range(100)]}, (), tuple(f"t{i}" for i in range(64))),
    ],
    ids=[
        "user",
        "assistant",
        "system",
        "unknown-message-type",
        "message-type-int",
        "message-not-object",
        "tool-uses-deduplicated",
        "tool-names-field",
        "tool-uses-then-tool-names",
        "bad-tool-use-entries-skipped",
        "bad-tool-names-skipped",
        "tool-names-not-list",
        "tool-uses-not-list",
        "tool-names-capped",
    ],
)
def test_header_message_types_and_tools(
    pipeline: IngestPipeline,
    data: dict[str, Any],
    message_types: tuple[str, ...],
    tool_names: tuple[str, ...],
) -> None:
    header = header_of(pipeline, data)
    assert (header.message_types, header.tool_names) == (message_types, tool_names)


def test_header_type_and_encoding(pipeline: IngestPipeline) -> None:
    data = {"projectId": 3, "sessionId": "s", "message": {"type": "user", "toolUses": [{"name": "Bash"}]}}
    header = header_of(pipeline, data, "message_added")
    assert header == RoutingHeader(1, pipeline.epoch, "message_added", 3, "s", ("user",), ("Bash",), NOW)
    assert RoutingHeader.decode(header.encode()) == header


@pytest.mark.parametrize(
    "message_type",
    [["user"], {"type": "user"}],
    ids=["list", "object"],
)
def test_unhashable_message_type_does_not_raise(pipeline: IngestPipeline, message_type: Any) -> None:
    outcome = pipeline.accept(
        frame({"type": "message_added", "data": {"message": {"type": message_type}}}), NOW
    )
    assert isinstance(outcome, Published)
    assert outcome.header.message_types == ()


@pytest.mark.parametrize(
    "started",
    [
        {"conversationId": "c1", "projectId": 5, "sessionId": "s1"},
        {"conversationId": "c1", "projectInfo": {"id": 5, "name": "P"}, "sessionId": "s1"},
        {"conversationId": "c1", "project": {"id": 5}, "message": {"sessionId": "s1"}},
    ],
    ids=["flat", "project-info", "project-and-message-session"],
)
def test_conversation_ended_route_is_filled(pipeline: IngestPipeline, started: dict[str, Any]) -> None:
    publish(pipeline, {"type": "conversation_started", "data": started})
    ended = publish(pipeline, {"type": "conversation_ended", "data": {"conversationId": "c1"}})
    assert (ended.header.project_id, ended.header.session_id) == (5, "s1")
    assert orjson.loads(ended.payload)["data"] == {"conversationId": "c1", "projectId": 5, "sessionId": "s1"}


def test_partial_route_is_filled_and_given_fields_win(pipeline: IngestPipeline) -> None:
    publish(
        pipeline,
        {"type": "conversation_started", "data": {"conversationId": "c1", "projectId": 5, "sessionId": "s1"}},
    )
    only_session = publish(
        pipeline, {"type": "message_added", "data": {"conversationId": "c1", "sessionId": "s2"}}
    )
    assert (only_session.header.project_id, only_session.header.session_id) == (5, "s2")
    assert orjson.loads(only_session.payload)["data"] == {
        "conversationId": "c1",
        "sessionId": "s2",
        "projectId": 5,
    }
    both = publish(
        pipeline,
        {"type": "message_added", "data": {"conversationId": "c1", "projectId": 6, "sessionId": "s3"}},
    )
    assert (both.header.project_id, both.header.session_id) == (6, "s3")
    assert orjson.loads(both.payload)["data"] == {"conversationId": "c1", "projectId": 6, "sessionId": "s3"}


def test_bool_project_id_is_replaced_by_known_route(pipeline: IngestPipeline) -> None:
    publish(pipeline, {"type": "conversation_started", "data": {"conversationId": "c1", "projectId": 5}})
    ended = publish(
        pipeline, {"type": "conversation_ended", "data": {"conversationId": "c1", "projectId": True}}
    )
    assert ended.header.project_id == 5
    assert orjson.loads(ended.payload)["data"]["projectId"] == 5


def test_unknown_conversation_is_not_filled(pipeline: IngestPipeline) -> None:
    ended = publish(pipeline, {"type": "conversation_ended", "data": {"conversationId": "ghost"}})
    assert (ended.header.project_id, ended.header.session_id) == (None, None)
    assert orjson.loads(ended.payload)["data"] == {"conversationId": "ghost"}


def test_accepted_events_reach_the_state(pipeline: IngestPipeline) -> None:
    route = {"conversationId": "c1", "projectId": 5, "sessionId": "s1"}
    publish(pipeline, {"type": "conversation_started", "data": route})
    publish(
        pipeline, {"type": "message_added", "data": {**route, "message": {"toolUses": [{"name": "A"}, {}]}}}
    )
    [conversation] = pipeline.state.active_conversations(5, 10)["conversations"]
    assert (conversation["messageCount"], conversation["toolUsageCount"]) == (1, 2)
    publish(pipeline, {"type": "conversation_ended", "data": {"conversationId": "c1"}})
    assert pipeline.state.active_conversations(5, 10)["total"] == 0


def test_the_server_reserves_every_type_it_sends_itself() -> None:
    # Pinned here: the bad-input and property tests take the list from the code.
    assert {
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
    } == RESERVED_TYPES
