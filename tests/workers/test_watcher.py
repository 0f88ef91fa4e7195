"""The transcript watcher for real: transcripts written line by line in Claude Code's format, an
observatory with its watcher running, and a client that sees the events and queries the state."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from clients.client import ObservatoryClient
from core.transcripts import project_id_for
from tests.harness import (
    ROOT,
    ServerProcess,
    next_event,
    signal_child,
    start_server,
    wait_replaced,
    wait_until,
)
from tests.transcripts import TranscriptWriter, text, thinking, tool_use, usage

SHOP = "/home/dev/shop_api"
WATCH = {"watch": True, "analytics_interval": 0.5, "watch_poll_interval": 0.2}


async def start_watching(tmp_path: Path, **options: Any) -> ServerProcess:
    options = {**WATCH, "transcripts_dir": str(tmp_path / "projects"), **options}
    return await asyncio.to_thread(start_server, tmp_path, 1, **options)


async def subscribed(server: ServerProcess, filters: dict[str, Any] | None = None) -> ObservatoryClient:
    client = server.client()
    await client.connect()
    await client.subscribe(filters or {})
    return client


async def events_until(
    client: ObservatoryClient, done: Any, timeout: float = 10.0, types: frozenset[str] | None = None
) -> list[dict[str, Any]]:
    """Events (with a seq) until ``done(events)`` holds; fails after ``timeout``."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not done(seen):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out; got {[e['type'] for e in seen]}"
        event = await next_event(client, None, remaining)
        if event is not None and "seq" in event and (types is None or event["type"] in types):
            seen.append(event)
    return seen


def watcher_counts(server: ServerProcess) -> dict[str, float]:
    """The watcher's counters, as /metrics reports them."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    return {
        sample.name.removeprefix("observatory_watcher_").removesuffix("_total"): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("observatory_watcher_")
    }


def of_type(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == type_]


def count(type_: str, n: int) -> Any:
    return lambda events: len(of_type(events, type_)) >= n


async def test_lines_written_appear_as_events_in_order(tmp_path: Path) -> None:
    server = await start_watching(tmp_path)
    try:
        client = await subscribed(server)
        writer = TranscriptWriter(tmp_path / "projects", cwd=SHOP)
        writer.snapshot()
        prompt = writer.user("the /orders endpoint returns 500, fix it")
        writer.assistant(
            [
                thinking("Look at the handler."),
                text("Let me read it."),
                tool_use("Read", file_path="app/orders.py"),
            ],
            tokens=usage(input_tokens=7, output_tokens=30),
        )
        writer.tool_result(writer.last_tool_use_id, "1\timport os")
        writer.assistant("Fixed: the session is now closed.", tokens=usage(input_tokens=3, output_tokens=11))
        events = await events_until(client, count("message_added", 6))
        assert [e["type"] for e in events[:2]] == ["project_discovered", "conversation_started"]
        project_id = project_id_for(SHOP)
        assert events[0]["data"]["project"] == {"id": project_id, "name": "shop_api", "path": SHOP}
        started = events[1]["data"]
        assert (started["conversationId"], started["projectId"]) == (writer.session_id, project_id)
        messages = [e["data"] for e in of_type(events, "message_added")]
        first = messages[0]["message"]
        assert (first["id"], first["type"], first["content"]) == (
            prompt["uuid"],
            "user",
            prompt["message"]["content"],
        )
        assert [m["message"]["type"] for m in messages] == [
            "user",
            "assistant",
            "assistant",
            "assistant",
            "user",
            "assistant",
        ]
        assert messages[1]["message"]["thinking"] == "Look at the handler."
        assert messages[3]["message"]["toolUses"][0]["name"] == "Read"
        assert messages[3]["message"]["toolUses"][0]["summary"] == "app/orders.py"
        assert messages[4]["message"]["toolResults"][0]["content"] == "1\timport os"
        # One response written as three lines: its tokens ride on the first line only.
        assert [m["message"]["usage"] is not None for m in messages] == [
            False,
            True,
            False,
            False,
            False,
            True,
        ]
        assert all(m["projectInfo"]["id"] == project_id for m in messages)
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs)
        counted = await asyncio.to_thread(watcher_counts, server)
        assert counted["lines"] == 7 and counted["lines_skipped"] == 1  # the snapshot line
        assert counted["events"] >= 8  # discovered, started, six messages (and maybe analytics by now)
        analytics = await events_until(
            client, count("analytics_update", 1), types=frozenset({"analytics_update"})
        )
        metrics = analytics[0]["data"]["metrics"]
        assert (metrics["tokensIn"], metrics["tokensOut"]) == (10, 41)
        assert (metrics["messages"], metrics["toolUses"], metrics["toolUsesByName"]) == (6, 1, {"Read": 1})
        await client.close()
    finally:
        server.stop()


async def test_query_counts_equal_the_lines_written(tmp_path: Path) -> None:
    server = await start_watching(tmp_path)
    try:
        client = await subscribed(server, {"eventTypes": ["message_added"]})
        shop = TranscriptWriter(tmp_path / "projects", cwd=SHOP)
        blog = TranscriptWriter(tmp_path / "projects", cwd="/home/dev/blog")
        for i in range(4):
            shop.user(f"step {i}")
            shop.assistant(
                [text("on it"), tool_use("Bash", command="make"), tool_use("Edit", file_path="a.py")]
            )
        blog.user("hello")
        blog.snapshot()
        written = shop.messages + blog.messages
        await events_until(client, count("message_added", written))
        active = await client.get_active_conversations()
        by_id = {c["conversationId"]: c for c in active["conversations"]}
        assert active["total"] == 2
        assert by_id[shop.session_id]["messageCount"] == shop.messages == 16
        assert by_id[shop.session_id]["toolUsageCount"] == shop.tool_uses == 8
        assert by_id[blog.session_id]["messageCount"] == 1
        assert by_id[shop.session_id]["projectName"] == "shop_api"
        activity = await client.get_project_activity(project_id_for(SHOP))
        assert activity["totals"] == {
            "messages": 16,
            "conversations": 1,
            "toolUses": 8,
            "activeConversations": 1,
        }
        projects = await client.get_projects()
        assert {p["projectId"]: p["projectName"] for p in projects["projects"]} == {
            project_id_for(SHOP): "shop_api",
            project_id_for("/home/dev/blog"): "blog",
        }
        assert {p["projectPath"] for p in projects["projects"]} == {SHOP, "/home/dev/blog"}
        scoped = server.client(token=server.token(projects=[project_id_for(SHOP)]))
        await scoped.connect()
        assert [p["projectName"] for p in (await scoped.get_projects())["projects"]] == ["shop_api"]
        await scoped.close()
        await client.close()
    finally:
        server.stop()


async def test_idle_conversation_ends_and_a_new_line_starts_it_again(tmp_path: Path) -> None:
    server = await start_watching(tmp_path, conversation_idle_timeout=1.5)
    try:
        client = await subscribed(server, {"eventTypes": ["conversation_started", "conversation_ended"]})
        writer = TranscriptWriter(tmp_path / "projects", cwd=SHOP)
        writer.user("one")
        writer.assistant([text("two"), tool_use("Grep", pattern="TODO")])
        events = await events_until(client, count("conversation_ended", 1))
        assert [e["type"] for e in events] == ["conversation_started", "conversation_ended"]
        ended = events[1]["data"]
        assert (ended["conversationId"], ended["messageCount"], ended["toolUsageCount"]) == (
            writer.session_id,
            3,
            1,
        )
        assert ended["duration"] == ended["endTime"] - ended["startTime"] >= 0
        writer.user("back again")
        again = await events_until(client, count("conversation_started", 1))
        assert again[0]["data"]["conversationId"] == writer.session_id
        await client.close()
    finally:
        server.stop()


async def test_a_restarted_watcher_publishes_nothing_twice(tmp_path: Path) -> None:
    server = await start_watching(tmp_path)
    try:
        client = await subscribed(server, {"eventTypes": ["message_added", "conversation_started"]})
        writer = TranscriptWriter(tmp_path / "projects", cwd=SHOP)
        first = [writer.user("before")["uuid"]]
        await events_until(client, count("message_added", 1))
        time.sleep(1.0)  # past the state file's save interval
        for signum in (signal.SIGTERM, signal.SIGKILL):
            victim = signal_child(server, "obs-watcher", signum)
            await asyncio.to_thread(wait_replaced, server, "obs-watcher", victim)
            first.append(writer.user(f"after {signum.name}")["uuid"])
            await asyncio.sleep(1.0)
        later = await events_until(client, count("message_added", 2), timeout=10)
        await asyncio.sleep(1.0)
        while (extra := await next_event(client, None, 0.2)) is not None:
            later.append(extra)
        ids = [e["data"]["message"]["id"] for e in of_type(later, "message_added")]
        assert ids == first[1:], "a restart published a line again, or lost one"
        assert not of_type(later, "conversation_started")
        await client.close()
    finally:
        server.stop()
    state_file = tmp_path / "state" / "observatory" / "watcher-state.json"
    assert state_file.stat().st_mode & 0o777 == 0o600, "project paths and titles are the owner's"
    # The whole server again, over the same state: still nothing old.
    server = await start_watching(tmp_path)
    try:
        client = await subscribed(server, {"eventTypes": ["message_added"]})
        writer.user("after a full restart")
        events = await events_until(client, count("message_added", 1))
        await asyncio.sleep(0.5)
        assert await next_event(client, "message_added", 0.5) is None
        assert events[0]["data"]["message"]["content"] == "after a full restart"
        await client.close()
    finally:
        server.stop()


async def test_messy_files_are_read_line_by_line_and_never_stop_the_watcher(tmp_path: Path) -> None:
    server = await start_watching(tmp_path, max_transcript_line_bytes=4096)
    try:
        client = await subscribed(server, {"eventTypes": ["message_added"]})
        writer = TranscriptWriter(tmp_path / "projects", cwd=SHOP)
        writer.user("first")
        writer.raw(b"{this is not json\n")
        writer.raw(b'{"type": "queue-operation", "operation": "enqueue"}\n')
        writer.raw(b'{"type": "user", "message": ' + b'"' + b"x" * 10_000 + b'"}\n')  # too long
        await events_until(client, count("message_added", 1))
        # A line the writer has not finished: nothing until its newline arrives.
        encoded = writer.encoded_user("written in two goes")
        writer.raw(encoded[:40])
        assert await next_event(client, "message_added", 0.8) is None
        writer.raw(encoded[40:])
        event = await next_event(client, "message_added", 5)
        assert event is not None and event["data"]["message"]["content"] == "written in two goes"
        # Truncated and rewritten: read again from the start; lines already published are not repeated.
        content = writer.path.read_bytes()
        writer.path.write_bytes(b"")
        await asyncio.sleep(0.5)
        writer.path.write_bytes(content)
        writer.user("after the rewrite")
        event = await next_event(client, "message_added", 5)
        assert event is not None and event["data"]["message"]["content"] == "after the rewrite"
        # Files and folders come and go.
        writer.path.unlink()
        other = TranscriptWriter(tmp_path / "projects", cwd="/srv/new-project")
        other.user("a new folder")
        event = await next_event(client, "message_added", 5)
        assert event is not None and event["data"]["projectInfo"]["name"] == "new-project"
        assert len(server.pids_named("obs-watcher")) == 1
        log = server.log()
        assert log.count("is not a JSON object") == 1
        assert "skipped a line longer than 4096 bytes" in log
        await client.close()
    finally:
        server.stop()


async def test_a_transcripts_folder_that_appears_later_is_watched(tmp_path: Path) -> None:
    server = await start_watching(tmp_path, watch_mode="poll")
    try:
        client = await subscribed(server, {"eventTypes": ["message_added"]})
        await asyncio.sleep(0.5)
        writer = TranscriptWriter(tmp_path / "projects", cwd=SHOP)
        writer.user("the folder did not exist when the server started")
        event = await next_event(client, "message_added", 10)
        assert event is not None and event["data"]["conversationId"] == writer.session_id
        assert "waiting for" in server.log()
        # Appends within one second of each other: a poller that compares mtimes to the second misses some.
        for i in range(3):
            writer.user(f"quick {i}")
            await asyncio.sleep(0.05)
        quick = [await next_event(client, "message_added", 3) for _ in range(3)]
        assert [e and e["data"]["message"]["content"] for e in quick] == ["quick 0", "quick 1", "quick 2"]
        await client.close()
    finally:
        server.stop()


async def test_first_start_backfills_only_recent_conversations(tmp_path: Path) -> None:
    root = tmp_path / "projects"
    old = TranscriptWriter(root, cwd="/home/dev/old-project")
    old.user("last week")
    week_ago = time.time() - 7 * 86_400
    os.utime(old.path, (week_ago, week_ago))
    recent = TranscriptWriter(root, cwd=SHOP)
    recent.user("an hour ago", at=round((time.time() - 3600) * 1000))
    server = await start_watching(tmp_path, watch_backfill=86_400)
    try:
        client = await subscribed(server)
        projects = await client.get_projects()
        deadline = time.monotonic() + 10
        while projects["total"] < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            projects = await client.get_projects()
        names = {p["projectName"] for p in projects["projects"]}
        assert names == {"old-project", "shop_api"}, "both projects are known"
        active = await client.get_active_conversations()
        assert [c["conversationId"] for c in active["conversations"]] == [recent.session_id]
        old.user("today")
        # The backfill may still be arriving: read on to the new line; the old file's past never comes.
        events = await events_until(
            client,
            lambda seen: any(e["data"]["message"]["content"] == "today" for e in seen),
            types=frozenset({"message_added"}),
        )
        assert "last week" not in [e["data"]["message"]["content"] for e in events]
        await client.close()
    finally:
        server.stop()


async def test_a_watcher_that_cannot_boot_leaves_the_server_serving(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    server = await start_watching(tmp_path, watch_state_file=str(blocker / "state.json"))
    try:
        wait_until(lambda: "serving without it" in server.log(), 10, "the watcher's boot error")
        client = await subscribed(server, {"eventTypes": ["still_here"]})
        server.producer().publish("still_here", {})
        assert await next_event(client, "still_here", 5) is not None
        assert server.pids_named("obs-watcher") == []
        await client.close()
    finally:
        server.stop()


async def test_after_an_ingest_restart_the_queries_know_the_projects_again(tmp_path: Path) -> None:
    server = await start_watching(tmp_path)
    try:
        client = await subscribed(server, {"eventTypes": ["message_added"]})
        writer = TranscriptWriter(tmp_path / "projects", cwd=SHOP)
        writer.user("before the ingest dies")
        await events_until(client, count("message_added", 1))
        await asyncio.sleep(1.5)  # the watcher hears the first run's beat
        victim = signal_child(server, "obs-ingest", signal.SIGKILL)
        await asyncio.to_thread(wait_replaced, server, "obs-ingest", victim)
        deadline = time.monotonic() + 10
        projects: dict[str, Any] = {"total": 0}
        while projects["total"] == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            try:
                projects = await client.get_projects()
            except Exception:  # the new ingest may not answer queries yet
                continue
        assert [p["projectName"] for p in projects["projects"]] == ["shop_api"]
        active = await client.get_active_conversations()
        assert [c["conversationId"] for c in active["conversations"]] == [writer.session_id]
        assert "announcing what it has to know again" in server.log()
        await client.close()
    finally:
        server.stop()


async def test_observatory_watch_runs_a_lone_watcher_into_another_servers_ingest(tmp_path: Path) -> None:
    server = await asyncio.to_thread(start_server, tmp_path, 1)  # the team's server: no watcher of its own
    laptop = tmp_path / "laptop"
    argv = [
        sys.executable,
        str(ROOT / "supervisor.py"),
        "watch",
        "--ingest-endpoint",
        server.ingest_endpoint,
        "--transcripts-dir",
        str(laptop / "projects"),
        "--watch-state-file",
        str(laptop / "state.json"),
    ]
    log_path = tmp_path / "watch.log"
    with open(log_path, "wb") as log_file:
        watch = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        client = await subscribed(server, {"eventTypes": ["message_added"]})
        writer = TranscriptWriter(laptop / "projects", cwd=SHOP)
        writer.user("from a team member's machine")
        event = await next_event(client, "message_added", 10)
        assert event is not None and event["data"]["message"]["content"] == "from a team member's machine"
        watch.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(watch.wait, 10) == 0
        assert (laptop / "state.json").exists()
        await client.close()
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(5)
        server.stop()
