"""Worker <-> ingest state queries: encode, answer, decode; malformed input gives a failure, not a crash."""

from __future__ import annotations

import orjson
import pytest

from core.protocol import GetActiveConversations, GetProjectActivity
from core.queries import QueryAnswer, QueryFailure, answer_query, decode_answer, encode_query
from core.state import ConversationRoute, LiveState

T0 = 1_700_000_040_000
NOW = T0 + 120_000


@pytest.fixture
def state() -> LiveState:
    live = LiveState(max_active=100, retention_ms=3_600_000, bucket_ms=60_000)
    for i, (conversation, project) in enumerate([("a", 1), ("b", 2), ("c", 1)]):
        route = ConversationRoute(project, f"s-{conversation}")
        live.apply(
            "conversation_started", {"projectName": f"p{project}"}, conversation, route, 0, T0 + i, T0 + i
        )
        live.apply("message_added", {}, conversation, route, 2, T0 + 60_000 + i, T0 + 60_000 + i)
    return live


@pytest.mark.parametrize(
    "request_",
    [
        GetActiveConversations(),
        GetActiveConversations(project_id=1, limit=1),
        GetActiveConversations(project_id=7, limit=5),
        GetProjectActivity(1),
        GetProjectActivity(2, start=T0, end=T0 + 30_000),
        GetProjectActivity(1, start=T0 + 60_000, end=None),
        GetProjectActivity(99, start=None, end=NOW),
    ],
    ids=[
        "active-all",
        "active-project-limit",
        "active-unknown-project",
        "activity",
        "activity-range",
        "activity-start",
        "activity-unknown",
    ],
)
def test_round_trip(state: LiveState, request_: GetActiveConversations | GetProjectActivity) -> None:
    answer = decode_answer(answer_query(state, encode_query(request_), NOW))
    if isinstance(request_, GetActiveConversations):
        expected = QueryAnswer(
            "active_conversations", state.active_conversations(request_.project_id, request_.limit)
        )
    else:
        expected = QueryAnswer(
            "project_activity", state.project_activity(request_.project_id, request_.start, request_.end, NOW)
        )
    assert answer == expected


def test_round_trip_content(state: LiveState) -> None:
    answer = decode_answer(answer_query(state, encode_query(GetActiveConversations(1, 10)), NOW))
    assert isinstance(answer, QueryAnswer)
    assert [c["conversationId"] for c in answer.data["conversations"]] == ["c", "a"]
    assert answer.data["total"] == 2
    activity = decode_answer(answer_query(state, encode_query(GetProjectActivity(1, T0, NOW)), NOW))
    assert isinstance(activity, QueryAnswer)
    assert activity.data["totals"]["messages"] == 2
    assert activity.data["totals"]["toolUses"] == 4
    assert activity.data["projectName"] == "p1"


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", "malformed query"),
        (b"garbage", "malformed query"),
        (b"\xff", "malformed query"),
        (b"[]", "malformed query"),
        (b"null", "malformed query"),
        (b'"active_conversations"', "malformed query"),
        (b"{}", "malformed query"),
        (b'{"query": "active_conversations"}', "malformed query"),
        (b'{"query": "active_conversations", "projectId": null, "limit": "ten"}', "malformed query"),
        (b'{"query": "active_conversations", "projectId": null, "limit": null}', "malformed query"),
        (b'{"query": "project_activity", "projectId": 1}', "malformed query"),
        (b'{"query": "project_activity", "projectId": "one", "start": null, "end": null}', "malformed query"),
        (b'{"query": "project_activity", "projectId": null, "start": null, "end": null}', "malformed query"),
        (b'{"query": "drop_tables"}', "unknown query"),
        (b'{"query": ["active_conversations"]}', "unknown query"),
    ],
    ids=[
        "empty",
        "not-json",
        "invalid-utf8",
        "array",
        "null",
        "string",
        "no-query",
        "missing-fields",
        "limit-string",
        "limit-null",
        "activity-missing-range",
        "activity-project-string",
        "activity-project-null",
        "unknown-kind",
        "kind-array",
    ],
)
def test_malformed_query_gets_error_answer(state: LiveState, raw: bytes, error: str) -> None:
    answer = answer_query(state, raw, NOW)
    assert orjson.loads(answer) == {"ok": False, "error": error}
    assert decode_answer(answer) == QueryFailure(error)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage",
        b"\xff\xfe",
        b"null",
        b"[]",
        b"[1, 2]",
        b'"ok"',
        b"17",
        b'{"ok": true}',
        b'{"ok": true, "type": "active_conversations"}',
        b'{"ok": true, "type": "x", "data": 5}',
        b'{"ok": true, "type": "x", "data": "ab"}',
        b'{"ok": true, "type": "x", "data": null}',
    ],
    ids=[
        "empty",
        "not-json",
        "invalid-utf8",
        "null",
        "empty-array",
        "array",
        "string",
        "number",
        "ok-without-type",
        "ok-without-data",
        "data-number",
        "data-string",
        "data-null",
    ],
)
def test_decode_garbage_is_failure(raw: bytes) -> None:
    assert isinstance(decode_answer(raw), QueryFailure)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"ok": false, "error": "boom"}', "boom"),
        (b'{"ok": false}', "query failed"),
        (b"{}", "query failed"),
    ],
    ids=["with-error", "without-error", "empty-object"],
)
def test_decode_failure_message(raw: bytes, message: str) -> None:
    assert decode_answer(raw) == QueryFailure(message)


@pytest.mark.parametrize(
    "project_id",
    [b"1e300", b"-1e19", b"18446744073709551616"],
    ids=["huge-float", "below-i64", "above-u64"],
)
def test_out_of_range_project_id_gets_error_answer(state: LiveState, project_id: bytes) -> None:
    raw = b'{"query": "project_activity", "projectId": ' + project_id + b', "start": null, "end": null}'
    assert decode_answer(answer_query(state, raw, NOW)) == QueryFailure("malformed query")
