"""Live state: active conversations, per-project activity buckets, retention and project names."""

from __future__ import annotations

from typing import Any

import pytest

from core.state import ConversationRoute, LiveState

BUCKET = 60_000
RETENTION = 600_000
T0 = 1_700_000_040_000  # a bucket boundary: T0 % BUCKET == 0


def make(max_active: int = 10) -> LiveState:
    return LiveState(max_active=max_active, retention_ms=RETENTION, bucket_ms=BUCKET)


def apply(
    state: LiveState,
    type_: str,
    conversation: str | None,
    ts: float,
    project: int | None = 1,
    session: str | None = "s",
    tools: int = 0,
    data: dict[str, Any] | None = None,
    now: float | None = None,
) -> None:
    """Apply an event that arrives at ``now`` (by default, the moment it is stamped with)."""
    arrival = ts if now is None else now
    state.apply(type_, data or {}, conversation, ConversationRoute(project, session), tools, ts, arrival)


def ids(state: LiveState, project: int | None = None, limit: int = 100) -> list[str]:
    return [c["conversationId"] for c in state.active_conversations(project, limit)["conversations"]]


def test_conversation_lifecycle() -> None:
    state = make()
    apply(state, "conversation_started", "c1", T0, project=4, session="s4")
    [conversation] = state.active_conversations(None, 10)["conversations"]
    assert conversation == {
        "conversationId": "c1",
        "sessionId": "s4",
        "projectId": 4,
        "projectName": None,
        "startTime": T0,
        "lastActivity": T0,
        "messageCount": 0,
        "toolUsageCount": 0,
    }
    apply(state, "message_added", "c1", T0 + 10, project=4, session="s4", tools=2)
    apply(state, "message_added", "c1", T0 + 20, project=None, session=None, tools=1)
    [conversation] = state.active_conversations(None, 10)["conversations"]
    assert (conversation["messageCount"], conversation["toolUsageCount"]) == (2, 3)
    assert (conversation["lastActivity"], conversation["startTime"]) == (T0 + 20, T0)
    assert (conversation["projectId"], conversation["sessionId"]) == (4, "s4")
    apply(state, "conversation_ended", "c1", T0 + 30, project=4)
    assert state.active_conversations(None, 10) == {"conversations": [], "total": 0, "projectId": None}


def test_start_time_from_data_and_late_events_do_not_rewind() -> None:
    state = make()
    apply(state, "conversation_started", "c1", T0, data={"startTime": T0 - 5000})
    apply(state, "message_added", "c1", T0 - 100_000)
    [conversation] = state.active_conversations(None, 10)["conversations"]
    assert (conversation["startTime"], conversation["lastActivity"]) == (T0 - 5000, T0)


def test_message_for_unknown_conversation_makes_it_active() -> None:
    state = make()
    apply(state, "message_added", "c9", T0, tools=1)
    [conversation] = state.active_conversations(None, 10)["conversations"]
    assert (conversation["conversationId"], conversation["messageCount"], conversation["toolUsageCount"]) == (
        "c9",
        1,
        1,
    )


@pytest.mark.parametrize("type_", ["tool_used", "conversation_ended", "whatever"])
def test_other_events_do_not_start_conversations(type_: str) -> None:
    state = make()
    apply(state, type_, "c1", T0)
    assert state.active_conversations(None, 10)["total"] == 0


def test_events_without_conversation_are_ignored_for_activity() -> None:
    state = make()
    apply(state, "message_added", None, T0)
    assert state.active_conversations(None, 10)["total"] == 0
    assert state.project_activity(1, None, None, T0)["buckets"] == []


def test_most_recently_active_first() -> None:
    state = make()
    for i, name in enumerate(["a", "b", "c"]):
        apply(state, "conversation_started", name, T0 + i)
    assert ids(state) == ["c", "b", "a"]
    apply(state, "message_added", "a", T0 + 10)
    assert ids(state) == ["a", "c", "b"]


def test_limit_project_filter_and_total() -> None:
    state = make()
    for i, (name, project) in enumerate([("a", 1), ("b", 2), ("c", 1), ("d", 1), ("e", None)]):
        apply(state, "conversation_started", name, T0 + i, project=project)
    everything = state.active_conversations(None, 2)
    assert [c["conversationId"] for c in everything["conversations"]] == ["e", "d"]
    assert (everything["total"], everything["projectId"]) == (5, None)
    project_1 = state.active_conversations(1, 2)
    assert [c["conversationId"] for c in project_1["conversations"]] == ["d", "c"]
    assert (project_1["total"], project_1["projectId"]) == (3, 1)
    assert ids(state, project=2) == ["b"]
    assert state.active_conversations(99, 10) == {"conversations": [], "total": 0, "projectId": 99}


def test_eviction_beyond_max_active() -> None:
    state = make(max_active=3)
    for i, name in enumerate(["a", "b", "c"]):
        apply(state, "conversation_started", name, T0 + i)
    apply(state, "message_added", "a", T0 + 5)  # a is now the most recent; b the least
    apply(state, "conversation_started", "d", T0 + 6)
    assert ids(state) == ["d", "a", "c"]
    apply(state, "conversation_started", "e", T0 + 7)
    assert ids(state) == ["e", "d", "a"]
    assert state.active_conversations(None, 100)["total"] == 3


def test_routes_are_remembered_merged_and_bounded() -> None:
    state = make(max_active=2)
    apply(state, "conversation_started", "c1", T0, project=3, session=None)
    apply(state, "message_added", "c1", T0, project=None, session="s3")
    assert state.route_of("c1") == ConversationRoute(3, "s3")
    apply(state, "conversation_ended", "c1", T0, project=None, session=None)
    assert state.route_of("c1") == ConversationRoute(3, "s3")  # outlives the conversation
    assert state.route_of("nope") is None
    for i in range(20):
        apply(state, "conversation_started", f"x{i}", T0 + i)
    assert len(state.routes) <= 4 * 2
    assert state.route_of("c1") is None
    assert state.route_of("x19") is not None


def test_activity_buckets_and_totals() -> None:
    state = make()
    apply(state, "conversation_started", "c1", T0 + 1_000, project=1)
    apply(state, "message_added", "c1", T0 + 2_000, project=1, tools=2)
    apply(state, "message_added", "c1", T0 + BUCKET + 5, project=1, tools=0)
    apply(state, "conversation_started", "c2", T0 + 3 * BUCKET, project=1)
    apply(state, "message_added", "c3", T0 + 3 * BUCKET, project=2, tools=7)  # another project
    apply(state, "conversation_ended", "c2", T0 + 3 * BUCKET + 1, project=1)
    result = state.project_activity(1, T0, T0 + 4 * BUCKET, T0 + 4 * BUCKET)
    assert result["projectId"] == 1
    assert result["bucketMs"] == BUCKET
    assert result["timeRange"] == {"start": T0, "end": T0 + 4 * BUCKET}
    assert result["buckets"] == [
        {"start": T0, "messages": 1, "conversations": 1, "toolUses": 2},
        {"start": T0 + BUCKET, "messages": 1, "conversations": 0, "toolUses": 0},
        {"start": T0 + 3 * BUCKET, "messages": 0, "conversations": 1, "toolUses": 0},
    ]
    assert result["totals"] == {"messages": 2, "conversations": 2, "toolUses": 2, "activeConversations": 1}
    other = state.project_activity(2, T0, T0 + 4 * BUCKET, T0 + 4 * BUCKET)
    assert other["totals"] == {"messages": 1, "conversations": 0, "toolUses": 7, "activeConversations": 1}


@pytest.mark.parametrize(
    ("start", "end", "bucket_starts"),
    [
        (T0, T0 + 10 * BUCKET, [T0, T0 + BUCKET, T0 + 3 * BUCKET]),
        (T0 + BUCKET, T0 + 10 * BUCKET, [T0 + BUCKET, T0 + 3 * BUCKET]),
        (T0 + BUCKET - 1, T0 + 10 * BUCKET, [T0, T0 + BUCKET, T0 + 3 * BUCKET]),
        (T0 + 1, T0 + BUCKET, [T0, T0 + BUCKET]),
        (T0, T0 + BUCKET - 1, [T0]),
        (T0 + 2 * BUCKET, T0 + 2 * BUCKET + 10, []),
        (T0 + 4 * BUCKET, T0 + 5 * BUCKET, []),
    ],
    ids=[
        "all",
        "from-second-bucket",
        "start-inside-first-bucket",
        "partial-overlap-both-ends",
        "end-before-second-bucket",
        "gap",
        "after-everything",
    ],
)
def test_activity_time_range(start: float, end: float, bucket_starts: list[int]) -> None:
    state = make()
    for offset in (0, BUCKET, 3 * BUCKET):
        apply(state, "message_added", "c1", T0 + offset + 7)
    result = state.project_activity(1, start, end, T0 + 10 * BUCKET)
    assert [b["start"] for b in result["buckets"]] == bucket_starts
    assert result["totals"]["messages"] == len(bucket_starts)


def test_default_range_is_the_retention_window() -> None:
    state = make()
    apply(state, "message_added", "c1", T0)
    now = T0 + RETENTION - BUCKET
    result = state.project_activity(1, None, None, now)
    assert result["timeRange"] == {"start": now - RETENTION, "end": now}
    assert result["totals"]["messages"] == 1
    later = T0 + RETENTION + BUCKET
    assert state.project_activity(1, None, None, later)["buckets"] == []


def test_retention_expires_old_buckets() -> None:
    state = make()
    apply(state, "message_added", "c1", T0)
    apply(state, "message_added", "c1", T0 + RETENTION)  # exactly the retention later: kept
    now = T0 + RETENTION
    everything = state.project_activity(1, 0, now, now)
    assert [b["start"] for b in everything["buckets"]] == [T0, T0 + RETENTION]
    apply(state, "message_added", "c1", T0 + RETENTION + BUCKET)
    now = T0 + RETENTION + BUCKET
    everything = state.project_activity(1, 0, now, now)
    assert [b["start"] for b in everything["buckets"]] == [T0 + RETENTION, T0 + RETENTION + BUCKET]
    assert everything["totals"]["messages"] == 2


def test_idle_project_reports_nothing_older_than_the_retention() -> None:
    state = make()
    apply(state, "message_added", "c1", T0)
    later = T0 + RETENTION + BUCKET  # no new event, so nothing was expired eagerly
    assert state.project_activity(1, 0, later, later)["buckets"] == []
    assert state.project_activity(1, None, None, later)["totals"]["messages"] == 0


def test_unknown_project_activity_is_empty() -> None:
    state = make()
    result = state.project_activity(42, None, None, T0)
    assert result["projectName"] is None
    assert result["buckets"] == []
    assert result["totals"] == {"messages": 0, "conversations": 0, "toolUses": 0, "activeConversations": 0}


@pytest.mark.parametrize(
    ("data", "name"),
    [
        ({"projectInfo": {"id": 1, "name": "from-info"}}, "from-info"),
        ({"project": {"id": 1, "name": "from-project"}}, "from-project"),
        ({"projectName": "from-field"}, "from-field"),
        ({"projectInfo": {"name": "info"}, "projectName": "field"}, "info"),
        ({"projectName": "n" * 1000}, "n" * 256),
        ({"projectInfo": {"name": 5}}, None),
        ({}, None),
    ],
    ids=["project-info", "project", "project-name", "info-wins", "truncated", "non-string", "absent"],
)
def test_project_names(data: dict[str, Any], name: str | None) -> None:
    state = make()
    apply(state, "conversation_started", "c1", T0, project=1, data=data)
    assert state.project_activity(1, None, None, T0)["projectName"] == name
    [conversation] = state.active_conversations(None, 10)["conversations"]
    if "projectName" in data:
        assert conversation["projectName"] == data["projectName"][:256]
    else:
        assert conversation["projectName"] == name


def test_project_name_known_earlier_fills_new_conversations() -> None:
    state = make()
    apply(state, "project_updated", None, T0, project=1, data={"projectInfo": {"name": "Known"}})
    apply(state, "conversation_started", "c1", T0, project=1)
    [conversation] = state.active_conversations(None, 10)["conversations"]
    assert conversation["projectName"] == "Known"


def test_project_name_needs_a_project_id() -> None:
    state = make()
    apply(state, "conversation_started", "c1", T0, project=None, data={"projectInfo": {"name": "orphan"}})
    assert state.projects == {}


def test_a_timestamp_from_the_future_counts_at_the_ingest_clock() -> None:
    state = make()
    apply(state, "message_added", "c1", T0 + 10 * RETENTION, now=T0)
    assert [b["start"] for b in state.project_activity(1, None, None, T0)["buckets"]] == [T0]


def test_a_timestamp_older_than_the_retention_is_not_counted() -> None:
    state = make()
    apply(state, "message_added", "c1", T0 - RETENTION - 1, now=T0)
    assert state.project_activity(1, 0, T0, T0)["totals"]["messages"] == 0
    assert state.active_conversations(None, 10)["conversations"][0]["messageCount"] == 1


def test_many_old_timestamps_never_grow_a_project_past_its_window() -> None:
    state = make()
    for minute in range(100):
        apply(state, "message_added", "c1", T0 - minute * BUCKET, now=T0)
    assert len(state.project_activity(1, 0, T0, T0)["buckets"]) <= RETENTION // BUCKET + 1


def test_the_sweep_drops_expired_buckets_and_empty_projects() -> None:
    state = make()
    apply(state, "message_added", "c1", T0, project=1)
    apply(state, "message_added", "c2", T0 + 2 * RETENTION, project=2)  # time moves on: project 1 expires
    assert set(state._activity) == {2}


def test_project_names_are_bounded() -> None:
    state = make(max_active=2)
    for project in range(20):
        apply(
            state, "project_discovered", None, T0, project=project, data={"project": {"name": f"p{project}"}}
        )
    assert len(state.projects) == 8
    assert state.project_name(19) == "p19"
    assert state.project_name(0) is None


def test_known_projects_most_recently_active_first_with_their_path_and_active_count() -> None:
    state = make()
    apply(
        state,
        "project_discovered",
        None,
        T0,
        project=1,
        data={"project": {"name": "a", "path": "/a"}, "lastActivity": T0 - 5},
    )
    apply(
        state,
        "conversation_started",
        "c1",
        T0 + 10,
        project=2,
        data={"projectInfo": {"name": "b", "path": "/b"}},
    )
    apply(state, "analytics_update", None, T0 + 99_999, project=1)  # a timed report is no activity
    answer = state.known_projects(10)
    assert answer["total"] == 2
    assert answer["projects"] == [
        {
            "projectId": 2,
            "projectName": "b",
            "projectPath": "/b",
            "lastActivity": T0 + 10,
            "activeConversations": 1,
        },
        {
            "projectId": 1,
            "projectName": "a",
            "projectPath": "/a",
            "lastActivity": T0 - 5,
            "activeConversations": 0,
        },
    ]
    assert state.known_projects(1)["projects"][0]["projectId"] == 2
    assert [p["projectId"] for p in state.known_projects(10, within=frozenset({1}))["projects"]] == [1]


def test_project_updated_moves_last_activity_forward_only() -> None:
    state = make()
    apply(state, "project_updated", None, T0, project=1, data={"changes": {"lastActivity": T0 + 50}})
    apply(state, "project_updated", None, T0, project=1, data={"changes": {"lastActivity": T0 + 10}})
    apply(state, "project_updated", None, T0, project=1, data={"changes": {"lastActivity": "soon"}})
    assert state.known_projects(10)["projects"][0]["lastActivity"] == T0 + 50
