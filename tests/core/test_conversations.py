"""The conversation tracker: transcript entries and a clock in, Observatory events out."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from core import conversations
from core.conversations import STATE_VERSION, ConversationTracker, Outgoing
from core.errors import StateError
from core.transcripts import Entry, parse_line, project_id_for
from tests.transcripts import TranscriptWriter, text, thinking, tool_use, usage

IDLE = 60_000
PERIOD = 30_000
NEVER = 10**12  # an analytics period no test reaches
T0 = 1_770_142_302_000
CWD = "/home/dev/shop_api"
PID = project_id_for(CWD)
PROJECT = {"id": PID, "name": "shop_api", "path": CWD}
OTHER_CWD = "/home/dev/billing"
OTHER_PID = project_id_for(OTHER_CWD)


def make(now: int = T0, period: int = PERIOD) -> ConversationTracker:
    return ConversationTracker(idle_timeout_ms=IDLE, analytics_interval_ms=period, now_ms=now)


def take(writer: TranscriptWriter) -> list[Entry]:
    """The lines the writer wrote since the last take, parsed (the file is emptied for the next)."""
    raw = writer.path.read_bytes()
    writer.path.write_bytes(b"")
    return [parse_line(line) for line in raw.splitlines()]


def kinds(out: list[Outgoing]) -> list[str]:
    return [event.type for event in out]


def added(out: list[Outgoing]) -> list[dict[str, Any]]:
    return [event.data for event in out if event.type == "message_added"]


def contents(out: list[Outgoing]) -> list[str]:
    return [data["message"]["content"] for data in added(out)]


def of_type(out: list[Outgoing], type_: str) -> list[Outgoing]:
    return [event for event in out if event.type == type_]


def result_block(tool_use_id: str, content: str) -> dict[str, Any]:
    return {"tool_use_id": tool_use_id, "type": "tool_result", "content": content, "is_error": False}


def tokens(data: dict[str, Any]) -> dict[str, int]:
    return {
        "inputTokens": data["input_tokens"],
        "outputTokens": data["output_tokens"],
        "cacheCreationInputTokens": data["cache_creation_input_tokens"],
        "cacheReadInputTokens": data["cache_read_input_tokens"],
    }


# --- projects, conversations, messages ---------------------------------------------------------


def test_first_lines_discover_the_project_start_the_conversation_and_add_each_message(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    sid = writer.session_id
    prompt = writer.user("the /orders endpoint returns 500, fix it", at=T0)
    response = writer.assistant(
        [
            thinking("Look first."),
            text("Reading it."),
            tool_use("Read", "toolu_1", file_path="app/orders.py"),
        ],
        at=T0 + 1000,
    )
    result = writer.user([result_block("toolu_1", "1\timport os")], at=T0 + 2000)
    out = make().read(take(writer), T0 + 5000)

    assert kinds(out) == ["project_discovered", "conversation_started"] + ["message_added"] * 5
    assert out[0] == Outgoing(
        "project_discovered", {"project": PROJECT, "conversationCount": 1, "lastActivity": T0}, T0
    )
    assert out[1] == Outgoing(
        "conversation_started",
        {
            "conversationId": sid,
            "sessionId": sid,
            "projectId": PID,
            "projectName": "shop_api",
            "projectInfo": PROJECT,
            "startTime": T0,
        },
        T0,
    )
    assert [data["message"]["id"] for data in added(out)] == [
        prompt["uuid"],
        *(line["uuid"] for line in response),
        result["uuid"],
    ]
    assert [event.timestamp for event in out[2:]] == [T0, T0 + 1000, T0 + 1000, T0 + 1000, T0 + 2000]
    assert out[2].data == {
        "conversationId": sid,
        "projectInfo": PROJECT,
        "isLatest": False,
        "message": {
            "id": prompt["uuid"],
            "parentId": None,
            "type": "user",
            "sessionId": sid,
            "timestamp": T0,
            "content": "the /orders endpoint returns 500, fix it",
            "truncated": False,
            "thinking": None,
            "toolUses": [],
            "toolResults": [],
            "model": None,
            "isSidechain": False,
            "subtype": None,
            "usage": None,
        },
    }
    assert [data["message"]["toolUses"] for data in added(out)][3] == [
        {"id": "toolu_1", "name": "Read", "summary": "app/orders.py"}
    ]


def test_project_discovered_once_conversation_started_once(tmp_path: Path) -> None:
    tracker = make()
    first = TranscriptWriter(tmp_path, cwd=CWD)
    first.user("one", at=T0)
    assert kinds(tracker.read(take(first), T0)) == [
        "project_discovered",
        "conversation_started",
        "message_added",
    ]
    first.user("two", at=T0 + 1)
    assert kinds(tracker.read(take(first), T0 + 1)) == ["message_added"]
    second = TranscriptWriter(tmp_path, cwd=CWD)
    second.user("three", at=T0 + 2)
    out = tracker.read(take(second), T0 + 2)
    assert kinds(out) == ["conversation_started", "message_added"]
    assert out[0].data["conversationId"] == second.session_id
    assert out[0].data["projectId"] == PID
    assert tracker.projects[PID].conversation_count == 2


def test_is_latest_only_on_the_last_message_of_each_conversation_in_a_batch(tmp_path: Path) -> None:
    tracker = make()
    a = TranscriptWriter(tmp_path, cwd=CWD)
    b = TranscriptWriter(tmp_path, cwd=OTHER_CWD)
    entries: list[Entry] = []
    for writer, content, at in [
        (a, "a1", 0),
        (b, "b1", 0),
        (a, "a2", 1),
        (b, "b2", 2),
        (a, "a3", 2),
        (b, "b3", 3),
    ]:
        writer.user(content, at=T0 + at)
        entries += take(writer)
    out = tracker.read(entries, T0 + 3)
    assert [(data["message"]["content"], data["isLatest"]) for data in added(out)] == [
        ("a1", False),
        ("b1", False),
        ("a2", False),
        ("b2", False),
        ("a3", True),
        ("b3", True),
    ]
    a.user("a4", at=T0 + 4)
    a.user("a5", at=T0 + 5)
    assert [data["isLatest"] for data in added(tracker.read(take(a), T0 + 5))] == [False, True]


def test_line_without_timestamp_is_stamped_with_the_read_time(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    line = writer.user("hi", at=T0)
    line["timestamp"] = "not a time"
    tracker = make()
    out = tracker.read([parse_line(orjson.dumps(line))], T0 + 777)
    assert [event.timestamp for event in out] == [T0 + 777] * 3
    assert out[1].data["startTime"] == T0 + 777
    assert added(out)[0]["message"]["timestamp"] is None


# --- tokens: the three lines of one response ---------------------------------------------------


def test_usage_counted_once_per_response_not_once_per_line(tmp_path: Path) -> None:
    first_usage = usage(5, 24, cache_read=100, cache_creation=10)
    second_usage = usage(3, 88, cache_read=200, cache_creation=0)
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.user("fix it", at=T0)
    writer.assistant(
        [thinking("Look first."), text("Reading it."), tool_use("Read", "toolu_1", file_path="a.py")],
        tokens=first_usage,
        at=T0 + 1,
    )
    writer.user([result_block("toolu_1", "import os")], at=T0 + 2)
    writer.assistant([text("Fixed.")], tokens=second_usage, at=T0 + 3)
    tracker = make()
    out = tracker.read(take(writer), T0 + 3)
    assert [data["message"]["usage"] for data in added(out)] == [
        None,
        tokens(first_usage),
        None,
        None,
        None,
        tokens(second_usage),
    ]
    [analytics] = of_type(tracker.tick(T0 + PERIOD), "analytics_update")
    assert analytics == Outgoing(
        "analytics_update",
        {
            "projectId": PID,
            "period": "30s",
            "metrics": {
                "periodStart": T0,
                "periodEnd": T0 + PERIOD,
                "messages": 6,
                "userMessages": 2,
                "assistantMessages": 4,
                "tokensIn": 8,
                "tokensOut": 112,
                "cacheReadTokens": 300,
                "cacheCreationTokens": 10,
                "toolUses": 1,
                "toolUsesByName": {"Read": 1},
                "activeConversations": 1,
            },
        },
        T0 + PERIOD,
    )


def test_a_response_split_across_two_reads_is_counted_once(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    lines = writer.assistant([thinking("a"), text("b"), text("c")], tokens=usage(7, 9, 0, 0), at=T0)
    assert len(lines) == 3
    entries = take(writer)
    tracker = make()
    first = tracker.read(entries[:1], T0)
    second = tracker.read(entries[1:], T0)
    assert [data["message"]["usage"] for data in added(first) + added(second)] == [
        tokens(usage(7, 9, 0, 0)),
        None,
        None,
    ]
    metrics = of_type(tracker.tick(T0 + PERIOD), "analytics_update")[0].data["metrics"]
    assert (metrics["tokensIn"], metrics["tokensOut"]) == (7, 9)


def test_same_message_id_with_another_request_id_is_another_response(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.assistant([text("a")], tokens=usage(1, 2, 0, 0), message_id="msg_1", request_id="req_1", at=T0)
    writer.assistant([text("b")], tokens=usage(10, 20, 0, 0), message_id="msg_1", request_id="req_2", at=T0)
    tracker = make()
    out = tracker.read(take(writer), T0)
    assert [data["message"]["usage"]["inputTokens"] for data in added(out)] == [1, 10]


def test_an_assistant_line_without_message_id_carries_no_usage(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    [line] = writer.assistant([text("a")], tokens=usage(7, 9, 0, 0), at=T0)
    del line["message"]["id"]
    tracker = make()
    [data] = added(tracker.read([parse_line(orjson.dumps(line))], T0))
    assert data["message"]["usage"] is None
    metrics = of_type(tracker.tick(T0 + PERIOD), "analytics_update")[0].data["metrics"]
    assert (metrics["messages"], metrics["tokensIn"], metrics["tokensOut"]) == (1, 0, 0)


# --- duplicates, projects by cwd, sidechains, lines without cwd --------------------------------


def test_same_uuid_read_twice_is_dropped_and_counted(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.user("one", at=T0)
    writer.assistant([text("two")], at=T0 + 1)
    entries = take(writer)
    tracker = make()
    assert len(added(tracker.read(entries, T0 + 1))) == 2
    assert tracker.read(entries, T0 + 2) == []
    assert tracker.skipped == Counter({"duplicate": 2})
    writer.user("three", at=T0 + 3)
    assert contents(tracker.read(entries + take(writer), T0 + 3)) == ["three"]
    assert tracker.skipped == Counter({"duplicate": 4})
    assert tracker.conversations[writer.session_id].message_count == 3


def test_lines_copied_into_another_session_are_dropped(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    original = writer.user("one", at=T0)
    tracker = make()
    tracker.read(take(writer), T0)
    copy = dict(original, sessionId="another-session")
    assert tracker.read([parse_line(orjson.dumps(copy))], T0 + 1) == []
    assert "another-session" not in tracker.conversations
    assert tracker.skipped["duplicate"] == 1


def test_a_conversation_keeps_the_project_of_its_first_cwd(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.user("one", at=T0)
    writer.cwd = OTHER_CWD  # cd elsewhere within the session
    writer.user("two", at=T0 + 1)
    tracker = make()
    out = tracker.read(take(writer), T0 + 1)
    writer.user("three", at=T0 + 2)
    out += tracker.read(take(writer), T0 + 2)
    assert kinds(out) == ["project_discovered", "conversation_started"] + ["message_added"] * 3
    assert [data["projectInfo"] for data in added(out)] == [PROJECT] * 3
    assert list(tracker.projects) == [PID]
    assert tracker.conversations[writer.session_id].project_id == PID


def test_two_cwds_sharing_one_slug_folder_are_two_projects(tmp_path: Path) -> None:
    underscore = TranscriptWriter(tmp_path, cwd="/a/b_c")
    dash = TranscriptWriter(tmp_path, cwd="/a/b-c")
    assert underscore.folder == dash.folder
    underscore.user("one", at=T0)
    dash.user("two", at=T0 + 1)
    tracker = make()
    out = tracker.read(take(underscore), T0 + 1) + tracker.read(take(dash), T0 + 1)
    discovered = [event.data["project"] for event in of_type(out, "project_discovered")]
    assert discovered == [
        {"id": project_id_for("/a/b_c"), "name": "b_c", "path": "/a/b_c"},
        {"id": project_id_for("/a/b-c"), "name": "b-c", "path": "/a/b-c"},
    ]
    assert discovered[0]["id"] != discovered[1]["id"]
    started = {
        event.data["conversationId"]: event.data["projectId"]
        for event in of_type(out, "conversation_started")
    }
    assert started == {underscore.session_id: discovered[0]["id"], dash.session_id: discovered[1]["id"]}


def test_sidechain_lines_belong_to_their_session(tmp_path: Path) -> None:
    main = TranscriptWriter(tmp_path, cwd=CWD)
    agent = TranscriptWriter(
        tmp_path, cwd=CWD, session_id=main.session_id, file_name="agent-a1b2.jsonl", sidechain=True
    )
    main.user("find the bug", at=T0)
    main.assistant([tool_use("Task", "toolu_1", description="Find the bug")], at=T0 + 1)
    agent.user("Find the bug", at=T0 + 2)
    agent.assistant([tool_use("Grep", "toolu_2", pattern="session")], at=T0 + 3)
    tracker = make()
    out = tracker.read(take(main), T0 + 1)
    side = tracker.read(take(agent), T0 + 3)
    assert kinds(side) == ["message_added", "message_added"]
    assert [data["conversationId"] for data in added(side)] == [main.session_id] * 2
    assert [data["message"]["isSidechain"] for data in added(out + side)] == [False, False, True, True]
    conversation = tracker.conversations[main.session_id]
    assert (conversation.message_count, conversation.tool_use_count) == (4, 2)
    assert list(tracker.conversations) == [main.session_id]


def test_lines_without_cwd_wait_for_the_first_line_with_one(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.cwd = None  # type: ignore[assignment]
    writer.user("one", at=T0)
    writer.user("two", at=T0 + 1000)
    tracker = make()
    assert tracker.read(take(writer), T0 + 1000) == []
    assert tracker.skipped == Counter()
    assert writer.session_id not in tracker.conversations
    writer.cwd = CWD
    writer.user("three", at=T0 + 2000)
    out = tracker.read(take(writer), T0 + 2000)
    assert kinds(out) == ["project_discovered", "conversation_started"] + ["message_added"] * 3
    assert contents(out) == ["one", "two", "three"]
    assert [data["projectInfo"] for data in added(out)] == [PROJECT] * 3
    assert tracker.conversations[writer.session_id].message_count == 3


def test_held_lines_are_published_in_file_order_and_open_the_conversation(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.cwd = None  # type: ignore[assignment]
    writer.user("one", at=T0)
    writer.user("two", at=T0 + 1000)
    writer.cwd = CWD
    writer.user("three", at=T0 + 2000)
    out = make().read(take(writer), T0 + 2000)
    assert kinds(out) == ["project_discovered", "conversation_started"] + ["message_added"] * 3
    assert out[1].data["startTime"] == T0
    assert [(data["message"]["content"], data["isLatest"]) for data in added(out)] == [
        ("one", False),
        ("two", False),
        ("three", True),
    ]
    assert [event.timestamp for event in out[2:]] == [T0, T0 + 1000, T0 + 2000]


def test_lines_of_a_known_conversation_need_no_cwd(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.user("one", at=T0)
    tracker = make()
    tracker.read(take(writer), T0)
    writer.cwd = None  # type: ignore[assignment]
    writer.user("two", at=T0 + 1)
    out = tracker.read(take(writer), T0 + 1)
    assert kinds(out) == ["message_added"]
    assert added(out)[0]["projectInfo"] == PROJECT


# --- summaries ---------------------------------------------------------------------------------


def test_summary_of_a_known_message_updates_the_title_once(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    first = writer.user("fix it", at=T0)
    writer.assistant([text("Fixed.")], at=T0 + 1)
    writer.summary("Fix 500 on /orders")
    tracker = make()
    out = tracker.read(take(writer), T0 + 50)
    assert kinds(out)[-1] == "conversation_updated"
    assert out[-1] == Outgoing(
        "conversation_updated",
        {
            "conversationId": writer.session_id,
            "sessionId": writer.session_id,
            "projectId": PID,
            "title": "Fix 500 on /orders",
        },
        T0 + 50,
    )
    writer.summary("Fix 500 on /orders", leaf_uuid=first["uuid"])
    assert tracker.read(take(writer), T0 + 60) == []
    writer.summary("Close the DB session")
    [updated] = tracker.read(take(writer), T0 + 70)
    assert (updated.type, updated.data["title"], updated.timestamp) == (
        "conversation_updated",
        "Close the DB session",
        T0 + 70,
    )
    assert tracker.conversations[writer.session_id].title == "Close the DB session"
    assert tracker.skipped == Counter()


def test_summary_in_a_new_session_file_titles_the_conversation_of_its_leaf(tmp_path: Path) -> None:
    old = TranscriptWriter(tmp_path, cwd=CWD)
    leaf = old.user("fix it", at=T0)
    tracker = make()
    tracker.read(take(old), T0)
    new = TranscriptWriter(tmp_path, cwd=CWD)
    new.summary("Fix 500", leaf_uuid=leaf["uuid"])
    new.user("and now the tests", at=T0 + 10)
    out = tracker.read(take(new), T0 + 10)
    assert kinds(out) == ["conversation_updated", "conversation_started", "message_added"]
    assert out[0].data["conversationId"] == old.session_id
    assert out[1].data["conversationId"] == new.session_id


@pytest.mark.parametrize("leaf", ["not-a-message-uuid", None])
def test_summary_of_an_unknown_message_is_counted(tmp_path: Path, leaf: str | None) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.user("fix it", at=T0)
    tracker = make()
    tracker.read(take(writer), T0)
    line = {"type": "summary", "summary": "Fix 500", "leafUuid": leaf}
    assert tracker.read([parse_line(orjson.dumps(line))], T0 + 1) == []
    assert tracker.skipped == Counter({"summary_of_unknown": 1})
    assert tracker.conversations[writer.session_id].title is None


def test_summary_does_not_start_an_ended_conversation(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.user("fix it", at=T0)
    tracker = make(period=NEVER)
    tracker.read(take(writer), T0)
    assert kinds(tracker.tick(T0 + IDLE)) == ["conversation_ended"]
    writer.summary("Fix 500")
    assert kinds(tracker.read(take(writer), T0 + 2 * IDLE)) == ["conversation_updated"]
    assert tracker.conversations[writer.session_id].active is False
    assert tracker.tick(T0 + 3 * IDLE) == []


def test_skipped_lines_are_counted_by_reason(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.snapshot()
    writer.raw(b'{"type": "queue-operation", "operation": "enqueue"}\n')
    writer.raw(b"{half a line\n")
    writer.raw(b'{"type": "user", "uuid": "no-session"}\n')
    writer.raw(b'{"type": 5}\n')
    writer.snapshot()
    tracker = make()
    assert tracker.read(take(writer), T0) == []
    assert tracker.skipped == Counter(
        {"unknown:file-history-snapshot": 2, "unknown:queue-operation": 1, "malformed": 1, "invalid": 2}
    )


# --- the clock: ends, restarts, analytics, project updates -------------------------------------


def test_conversation_ends_after_idle_timeout_from_its_last_line(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.user("fix it", at=T0)
    writer.assistant(
        [tool_use("Read", "toolu_1", file_path="a.py"), tool_use("Bash", "toolu_2", command="pytest")],
        at=T0 + 4000,
    )
    tracker = make(period=NEVER)
    tracker.read(take(writer), T0 + 4000)
    last = T0 + 4000
    assert tracker.tick(last + IDLE - 1) == []
    assert tracker.tick(last + IDLE) == [
        Outgoing(
            "conversation_ended",
            {
                "conversationId": writer.session_id,
                "sessionId": writer.session_id,
                "projectId": PID,
                "startTime": T0,
                "endTime": last,
                "duration": 4000,
                "messageCount": 3,
                "toolUsageCount": 2,
            },
            last + IDLE,
        )
    ]
    assert tracker.tick(last + 10 * IDLE) == []
    assert tracker.conversations[writer.session_id].active is False


def test_idle_is_measured_from_the_line_timestamp_not_the_read_time(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.user("old", at=T0)
    tracker = make(period=NEVER)
    tracker.read(take(writer), T0 + 5 * IDLE)  # read long after it was written
    assert kinds(tracker.tick(T0 + IDLE)) == ["conversation_ended"]


def test_an_older_line_does_not_move_last_activity_back(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.user("new", at=T0 + 10_000)
    writer.user("late copy of an old one", at=T0)
    tracker = make(period=NEVER)
    tracker.read(take(writer), T0 + 10_000)
    assert tracker.tick(T0 + IDLE + 5000) == []
    [ended] = tracker.tick(T0 + 10_000 + IDLE)
    assert (ended.data["startTime"], ended.data["endTime"], ended.data["duration"]) == (
        T0 + 10_000,
        T0 + 10_000,
        0,
    )


def test_a_line_after_the_end_starts_the_conversation_again(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.user("one", at=T0)
    writer.assistant([tool_use("Read", file_path="a.py")], at=T0 + 1)
    tracker = make(period=NEVER)
    tracker.read(take(writer), T0 + 1)
    assert kinds(tracker.tick(T0 + 1 + IDLE)) == ["conversation_ended"]
    again = T0 + 5 * IDLE
    writer.user("back again", at=again)
    out = tracker.read(take(writer), again)
    assert kinds(out) == ["conversation_started", "message_added"]
    assert out[0].data["startTime"] == again
    assert out[0].data["conversationId"] == writer.session_id
    writer.user("and more", at=again + 500)
    tracker.read(take(writer), again + 500)
    [ended] = tracker.tick(again + 500 + IDLE)
    assert ended.data == {
        "conversationId": writer.session_id,
        "sessionId": writer.session_id,
        "projectId": PID,
        "startTime": again,
        "endTime": again + 500,
        "duration": 500,
        "messageCount": 2,
        "toolUsageCount": 0,
    }
    assert tracker.projects[PID].conversation_count == 1


def test_analytics_once_per_period_for_projects_with_activity_only(tmp_path: Path) -> None:
    shop = TranscriptWriter(tmp_path, cwd=CWD)
    billing = TranscriptWriter(tmp_path, cwd=OTHER_CWD)
    tracker = make()
    shop.user("one", at=T0 + 1)
    billing.user("two", at=T0 + 2)
    tracker.read(take(shop), T0 + 2)
    tracker.read(take(billing), T0 + 2)
    assert tracker.tick(T0 + PERIOD - 1) == []
    first = tracker.tick(T0 + PERIOD)
    assert sorted(event.data["projectId"] for event in of_type(first, "analytics_update")) == sorted(
        [PID, OTHER_PID]
    )
    assert tracker.tick(T0 + PERIOD + 1) == []
    shop.assistant(
        [tool_use("Edit", file_path="a"), tool_use("Read", file_path="a"), tool_use("Edit", file_path="b")],
        at=T0 + PERIOD + 10,
    )
    shop.assistant([tool_use("Bash", command="ls"), tool_use("Edit", file_path="c")], at=T0 + PERIOD + 20)
    tracker.read(take(shop), T0 + PERIOD + 20)
    second = tracker.tick(T0 + 2 * PERIOD)
    [analytics] = of_type(second, "analytics_update")
    assert analytics.data["projectId"] == PID
    metrics = analytics.data["metrics"]
    assert (metrics["periodStart"], metrics["periodEnd"]) == (T0 + PERIOD, T0 + 2 * PERIOD)
    assert (metrics["messages"], metrics["assistantMessages"], metrics["userMessages"]) == (5, 5, 0)
    assert metrics["toolUses"] == 5
    assert list(metrics["toolUsesByName"].items()) == [("Edit", 3), ("Read", 1), ("Bash", 1)]
    assert (metrics["tokensIn"], metrics["tokensOut"]) == (10, 48)  # two responses of usage()


@pytest.mark.parametrize(
    ("interval", "name"),
    [(10_000, "10s"), (500, "0.5s"), (2500, "2.5s"), (100, "0.1s"), (86_400_000, "86400s")],
)
def test_analytics_period_name_follows_the_interval(tmp_path: Path, interval: int, name: str) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.user("one", at=T0)
    tracker = make(period=interval)
    tracker.read(take(writer), T0)
    [analytics] = of_type(tracker.tick(T0 + interval), "analytics_update")
    assert analytics.data["period"] == name


def test_project_updated_for_changed_projects_only(tmp_path: Path) -> None:
    tracker = make()
    shop_a = TranscriptWriter(tmp_path, cwd=CWD)
    shop_b = TranscriptWriter(tmp_path, cwd=CWD)
    billing = TranscriptWriter(tmp_path, cwd=OTHER_CWD)
    shop_a.user("a", at=T0 + 1)
    shop_b.user("b", at=T0 + 2)
    billing.user("c", at=T0 + 3)
    for writer in (shop_a, shop_b, billing):
        tracker.read(take(writer), T0 + 3)
    updates = of_type(tracker.tick(T0 + PERIOD), "project_updated")
    assert [event.data["projectId"] for event in updates] == sorted([PID, OTHER_PID])
    assert {event.data["projectId"]: event.data for event in updates}[PID] == {
        "projectId": PID,
        "changes": {"lastActivity": T0 + 2, "conversationCount": 2, "activeConversations": 2},
        "newActivity": True,
    }
    billing.user("d", at=T0 + PERIOD + 5)
    tracker.read(take(billing), T0 + PERIOD + 5)
    updates = of_type(tracker.tick(T0 + 2 * PERIOD), "project_updated")
    assert [event.data for event in updates] == [
        {
            "projectId": OTHER_PID,
            "changes": {"lastActivity": T0 + PERIOD + 5, "conversationCount": 1, "activeConversations": 1},
            "newActivity": True,
        }
    ]


def test_project_updated_when_a_conversation_ends_without_new_messages(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.user("one", at=T0)
    tracker = make()
    tracker.read(take(writer), T0)
    assert kinds(tracker.tick(T0 + PERIOD)) == ["analytics_update", "project_updated"]
    out = tracker.tick(T0 + 3 * PERIOD)  # the end of the idle timeout and of a period at once
    assert out == [
        Outgoing(
            "conversation_ended",
            {
                "conversationId": writer.session_id,
                "sessionId": writer.session_id,
                "projectId": PID,
                "startTime": T0,
                "endTime": T0,
                "duration": 0,
                "messageCount": 1,
                "toolUsageCount": 0,
            },
            T0 + 3 * PERIOD,
        ),
        Outgoing(
            "project_updated",
            {
                "projectId": PID,
                "changes": {"lastActivity": T0, "conversationCount": 1, "activeConversations": 0},
                "newActivity": False,
            },
            T0 + 3 * PERIOD,
        ),
    ]


# --- conversations known only by their first line -----------------------------------------------


def test_known_conversation_discovers_its_project_without_starting_it(tmp_path: Path) -> None:
    tracker = make()
    assert tracker.known_conversation("s-old", CWD, T0 - 5000) == [
        Outgoing(
            "project_discovered",
            {"project": PROJECT, "conversationCount": 1, "lastActivity": T0 - 5000},
            T0 - 5000,
        )
    ]
    assert tracker.known_conversation("s-old", CWD, T0) == []
    assert tracker.known_conversation("s-older", CWD, T0 - 9000) == []
    assert tracker.tick(T0 + 100 * IDLE) == [
        Outgoing(
            "project_updated",
            {
                "projectId": PID,
                "changes": {"lastActivity": T0 - 5000, "conversationCount": 2, "activeConversations": 0},
                "newActivity": False,
            },
            T0 + 100 * IDLE,
        )
    ]
    writer = TranscriptWriter(tmp_path, cwd=CWD, session_id="s-old")
    writer.user("back", at=T0 + 200 * IDLE)
    out = tracker.read(take(writer), T0 + 200 * IDLE)
    assert kinds(out) == ["conversation_started", "message_added"]
    assert out[0].data["startTime"] == T0 + 200 * IDLE
    assert tracker.projects[PID].conversation_count == 2


def test_known_conversation_after_it_was_read_changes_nothing(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.user("one", at=T0)
    tracker = make()
    tracker.read(take(writer), T0)
    before = tracker.snapshot()
    assert tracker.known_conversation(writer.session_id, OTHER_CWD, T0 + 1) == []
    assert tracker.snapshot() == before


# --- a new ingest run ---------------------------------------------------------------------------


def test_announce_tells_every_project_and_every_active_conversation(tmp_path: Path) -> None:
    tracker = make(period=NEVER)
    ended = TranscriptWriter(tmp_path, cwd=OTHER_CWD)
    ended.user("old", at=T0)
    tracker.read(take(ended), T0)
    tracker.tick(T0 + IDLE)
    tracker.known_conversation("s-known", CWD, T0 - 50)
    active = TranscriptWriter(tmp_path, cwd=CWD)
    active.user("new", at=T0 + IDLE + 10)
    active.user("newer", at=T0 + IDLE + 20)
    tracker.read(take(active), T0 + IDLE + 20)
    now = T0 + IDLE + 30
    assert tracker.announce(now) == [
        Outgoing(
            "project_discovered",
            {
                "project": {"id": OTHER_PID, "name": "billing", "path": OTHER_CWD},
                "conversationCount": 1,
                "lastActivity": T0,
            },
            now,
        ),
        Outgoing(
            "project_discovered",
            {"project": PROJECT, "conversationCount": 2, "lastActivity": T0 + IDLE + 20},
            now,
        ),
        Outgoing(
            "conversation_started",
            {
                "conversationId": active.session_id,
                "sessionId": active.session_id,
                "projectId": PID,
                "projectName": "shop_api",
                "projectInfo": PROJECT,
                "startTime": T0 + IDLE + 10,
            },
            T0 + IDLE + 10,
        ),
    ]


def test_announce_changes_nothing(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.user("one", at=T0)
    tracker = make()
    tracker.read(take(writer), T0)
    before = tracker.snapshot()
    tracker.announce(T0 + 1)
    assert tracker.snapshot() == before
    writer.user("two", at=T0 + 2)
    assert kinds(tracker.read(take(writer), T0 + 2)) == ["message_added"]
    assert make().announce(T0) == []


# --- snapshot and restore ----------------------------------------------------------------------


def busy_tracker(tmp_path: Path) -> tuple[ConversationTracker, TranscriptWriter, TranscriptWriter]:
    """Two projects, an active conversation, an ended one with a title, and counted responses."""
    tracker = make(period=NEVER)
    ended = TranscriptWriter(tmp_path, cwd=OTHER_CWD)
    ended.user("old work", at=T0)
    ended.summary("Old work")
    tracker.read(take(ended), T0)
    tracker.tick(T0 + IDLE)
    active = TranscriptWriter(tmp_path, cwd=CWD)
    active.user("fix it", at=T0 + IDLE)
    active.assistant(
        [text("a"), tool_use("Read", file_path="x")], message_id="msg_A", request_id="req_A", at=T0 + IDLE
    )
    tracker.read(take(active), T0 + IDLE)
    return tracker, active, ended


def test_snapshot_shape() -> None:
    tracker = make()
    tracker.known_conversation("s1", CWD, T0)
    assert tracker.snapshot() == {
        "version": STATE_VERSION,
        "projects": [[PID, "shop_api", CWD, 1, T0]],
        "conversations": [["s1", PID, T0, T0, 0, 0, False, None]],
        "usageKeys": [],
    }


def test_snapshot_through_json_restores_the_same_tracker(tmp_path: Path) -> None:
    tracker, active, ended = busy_tracker(tmp_path)
    state = orjson.loads(orjson.dumps(tracker.snapshot()))
    assert state["usageKeys"] == [["msg_A", "req_A"]]
    assert [row[0] for row in state["conversations"]] == [ended.session_id, active.session_id]
    assert state["conversations"][0][6:] == [False, "Old work"]
    restored = make(now=T0 + IDLE, period=NEVER)
    restored.restore(state)
    assert restored.snapshot() == tracker.snapshot() == state

    active.assistant([text("b")], message_id="msg_A", request_id="req_A", at=T0 + IDLE + 1)
    out = restored.read(take(active), T0 + IDLE + 1)
    assert kinds(out) == ["message_added"]
    assert added(out)[0]["message"]["usage"] is None
    ended.user("back", at=T0 + 2 * IDLE)
    assert kinds(restored.read(take(ended), T0 + 2 * IDLE)) == ["conversation_started", "message_added"]
    [stopped] = restored.tick(T0 + IDLE + 1 + IDLE)
    assert stopped.data["conversationId"] == active.session_id
    assert stopped.data["startTime"] == T0 + IDLE
    assert stopped.data["messageCount"] == 4
    assert stopped.data["toolUsageCount"] == 1


def valid_state() -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "projects": [[OTHER_PID, "billing", OTHER_CWD, 1, T0]],
        "conversations": [["s-x", OTHER_PID, T0, T0 + 5, 2, 1, True, "A title"]],
        "usageKeys": [["msg_X", "req_X"]],
    }


def with_(**changes: Any) -> dict[str, Any]:
    state = valid_state()
    for key, value in changes.items():
        if value is KeyError:
            del state[key]
        else:
            state[key] = value
    return state


GOOD_PROJECT = [OTHER_PID, "billing", OTHER_CWD, 1, T0]
GOOD_CONVERSATION = ["s-x", OTHER_PID, T0, T0 + 5, 2, 1, True, "A title"]


def project_with(index: int, value: Any) -> list[Any]:
    row = list(GOOD_PROJECT)
    row[index] = value
    return row


def conversation_with(index: int, value: Any) -> list[Any]:
    row = list(GOOD_CONVERSATION)
    row[index] = value
    return row


GARBAGE: list[tuple[str, Any]] = [
    ("none", None),
    ("list", [1, 2]),
    ("string", "state"),
    ("empty", {}),
    ("no-version", with_(version=KeyError)),
    ("next-version", with_(version=STATE_VERSION + 1)),
    ("version-text", with_(version=str(STATE_VERSION))),
    ("version-null", with_(version=None)),
    ("no-projects", with_(projects=KeyError)),
    ("no-conversations", with_(conversations=KeyError)),
    ("no-usage-keys", with_(usageKeys=KeyError)),
    ("projects-number", with_(projects=5)),
    ("projects-null", with_(projects=None)),
    ("projects-object", with_(projects={"a": GOOD_PROJECT})),
    ("project-short", with_(projects=[GOOD_PROJECT[:4]])),
    ("project-long", with_(projects=[[*GOOD_PROJECT, 0]])),
    ("project-null", with_(projects=[None])),
    ("project-object", with_(projects=[{"id": OTHER_PID}])),
    ("project-id-bool", with_(projects=[project_with(0, True)])),
    ("project-id-text", with_(projects=[project_with(0, str(OTHER_PID))])),
    ("project-id-float", with_(projects=[project_with(0, 1.5)])),
    ("project-name-number", with_(projects=[project_with(1, 5)])),
    ("project-path-null", with_(projects=[project_with(2, None)])),
    ("project-count-bool", with_(projects=[project_with(3, False)])),
    ("project-activity-null", with_(projects=[project_with(4, None)])),
    ("conversations-number", with_(conversations=7)),
    ("conversation-short", with_(conversations=[GOOD_CONVERSATION[:7]])),
    ("conversation-text-row", with_(conversations=["s-x-row-8"])),
    ("conversation-session-number", with_(conversations=[conversation_with(0, 5)])),
    ("conversation-project-bool", with_(conversations=[conversation_with(1, True)])),
    ("conversation-start-null", with_(conversations=[conversation_with(2, None)])),
    ("conversation-last-float", with_(conversations=[conversation_with(3, 1.0)])),
    ("conversation-messages-bool", with_(conversations=[conversation_with(4, True)])),
    ("conversation-tools-text", with_(conversations=[conversation_with(5, "1")])),
    ("conversation-active-int", with_(conversations=[conversation_with(6, 1)])),
    ("conversation-title-number", with_(conversations=[conversation_with(7, 5)])),
    ("usage-keys-number", with_(usageKeys=3)),
    ("usage-keys-null", with_(usageKeys=None)),
]


@pytest.mark.parametrize("state", [state for _, state in GARBAGE], ids=[name for name, _ in GARBAGE])
def test_restore_of_garbage_raises_and_keeps_the_tracker(tmp_path: Path, state: Any) -> None:
    tracker, active, _ = busy_tracker(tmp_path)
    before = tracker.snapshot()
    with pytest.raises(StateError):
        tracker.restore(state)
    assert tracker.snapshot() == before
    active.user("still here", at=T0 + IDLE + 1)
    assert kinds(tracker.read(take(active), T0 + IDLE + 1)) == ["message_added"]


def test_the_valid_state_of_the_garbage_table_is_restored() -> None:
    tracker = make()
    tracker.restore(valid_state())
    assert tracker.snapshot() == valid_state()


def test_restore_drops_conversations_of_unknown_projects() -> None:
    state = valid_state()
    state["conversations"].append(["s-orphan", 12345, T0, T0, 1, 0, True, None])
    tracker = make()
    tracker.restore(state)
    assert list(tracker.conversations) == ["s-x"]


# --- bounds ------------------------------------------------------------------------------------


def test_conversations_bounded_least_recently_active_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conversations, "MAX_CONVERSATIONS", 2)
    tracker = make()
    writers = [TranscriptWriter(tmp_path, cwd=CWD, session_id=f"s{i}") for i in range(3)]
    for i, writer in enumerate(writers[:2]):
        writer.user("first", at=T0 + i)
        tracker.read(take(writer), T0 + i)
    writers[0].user("again", at=T0 + 10)
    tracker.read(take(writers[0]), T0 + 10)
    writers[2].user("first", at=T0 + 20)
    tracker.read(take(writers[2]), T0 + 20)
    assert list(tracker.conversations) == ["s0", "s2"]
    assert [row[0] for row in tracker.snapshot()["conversations"]] == ["s0", "s2"]


def test_restore_keeps_the_newest_rows_within_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conversations, "MAX_CONVERSATIONS", 2)
    monkeypatch.setattr(conversations, "MAX_USAGE_KEYS", 2)
    state = valid_state()
    state["conversations"] = [[f"s{i}", OTHER_PID, T0, T0, 1, 0, True, None] for i in range(4)]
    state["usageKeys"] = [[f"m{i}", f"r{i}"] for i in range(3)]
    tracker = make()
    tracker.restore(state)
    assert [row[0] for row in tracker.snapshot()["conversations"]] == ["s2", "s3"]
    assert tracker.snapshot()["usageKeys"] == [["m1", "r1"], ["m2", "r2"]]


def test_usage_keys_bounded_oldest_forgotten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conversations, "MAX_USAGE_KEYS", 2)
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    for i in range(3):
        writer.assistant([text(str(i))], message_id=f"m{i}", request_id=f"r{i}", at=T0 + i)
    tracker = make()
    tracker.read(take(writer), T0 + 2)
    assert tracker.snapshot()["usageKeys"] == [["m1", "r1"], ["m2", "r2"]]
    writer.assistant([text("late block of m2")], message_id="m2", request_id="r2", at=T0 + 3)
    writer.assistant([text("late block of m0")], message_id="m0", request_id="r0", at=T0 + 4)
    out = tracker.read(take(writer), T0 + 4)
    assert [data["message"]["usage"] is None for data in added(out)] == [True, False]


def test_seen_uuids_bounded_oldest_forgotten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conversations, "MAX_SEEN_UUIDS", 2)
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    for i in range(3):
        writer.user(str(i), at=T0 + i)
    entries = take(writer)
    tracker = make()
    tracker.read(entries, T0 + 2)
    assert contents(tracker.read(entries[2:], T0 + 3)) == []
    assert contents(tracker.read(entries[:1], T0 + 3)) == ["0"]
    assert tracker.skipped == Counter({"duplicate": 1})


def test_waiting_lines_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conversations, "MAX_WAITING_LINES", 2)
    writer = TranscriptWriter(tmp_path, cwd=CWD)
    writer.cwd = None  # type: ignore[assignment]
    for i in range(3):
        writer.user(f"held {i}", at=T0 + i)
    tracker = make()
    assert tracker.read(take(writer), T0 + 2) == []
    assert tracker.skipped == Counter({"no_cwd": 1})
    writer.cwd = CWD
    writer.user("with cwd", at=T0 + 3)
    assert contents(tracker.read(take(writer), T0 + 3)) == ["held 0", "held 1", "with cwd"]


def test_waiting_conversations_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conversations, "MAX_WAITING_CONVERSATIONS", 1)
    first = TranscriptWriter(tmp_path, cwd=CWD)
    second = TranscriptWriter(tmp_path, cwd=CWD)
    first.cwd = second.cwd = None  # type: ignore[assignment]
    first.user("held", at=T0)
    second.user("not held", at=T0)
    second.user("not held either", at=T0)
    tracker = make()
    assert tracker.read(take(first) + take(second), T0) == []
    assert tracker.skipped == Counter({"no_cwd": 2})


def test_a_line_of_a_conversation_whose_project_was_evicted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A project forgotten to stay within MAX_PROJECTS takes its conversations' memory with it: the
    # next line of one starts the conversation afresh (it used to raise KeyError).
    monkeypatch.setattr(conversations, "MAX_PROJECTS", 2)
    tracker = make()
    writers = [TranscriptWriter(tmp_path, cwd=f"/home/dev/p{i}") for i in range(3)]
    for i, writer in enumerate(writers):
        writer.user("first", at=T0 + i)
        tracker.read(take(writer), T0 + i)
    assert len(tracker.projects) == 2
    writers[0].user("still working", at=T0 + 10)
    out = tracker.read(take(writers[0]), T0 + 10)
    [data] = added(out)
    assert data["message"]["content"] == "still working"
    assert data["projectInfo"]["path"] == "/home/dev/p0"


def test_restore_beyond_max_projects_keeps_no_conversation_without_its_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Conversations are kept only with a kept project (it used to decide from every project row).
    monkeypatch.setattr(conversations, "MAX_PROJECTS", 2)
    cwds = [f"/home/dev/p{i}" for i in range(3)]
    state = {
        "version": STATE_VERSION,
        "projects": [[project_id_for(cwd), cwd.rsplit("/", 1)[1], cwd, 1, T0] for cwd in cwds],
        "conversations": [
            [f"s{i}", project_id_for(cwd), T0, T0, 1, 0, True, None] for i, cwd in enumerate(cwds)
        ],
        "usageKeys": [],
    }
    tracker = make()
    tracker.restore(state)
    assert {c.project_id for c in tracker.conversations.values()} <= set(tracker.projects)
    writer = TranscriptWriter(tmp_path, cwd=cwds[0], session_id="s0")
    writer.user("still working", at=T0 + 10)
    [data] = added(tracker.read(take(writer), T0 + 10))
    assert data["message"]["content"] == "still working"
