"""One transcript line in, one entry out: message lines, summaries, and everything passed over."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.transcripts import (
    MAX_BLOCKS,
    MAX_CONTENT_CHARS,
    MAX_ID_CHARS,
    MAX_RESULT_CHARS,
    MAX_SUMMARY_CHARS,
    MAX_THINKING_CHARS,
    MAX_TITLE_CHARS,
    Entry,
    MessageLine,
    Skipped,
    SummaryLine,
    Usage,
    parse_line,
    parse_timestamp,
    project_id_for,
    project_name_for,
)
from tests.transcripts import TranscriptWriter, slug, text, thinking, tool_use, usage

SESSION = "d284f444-9e56-4318-a472-bc18481b7793"
UUID = "442d98c4-2a51-4c3e-9f0e-0d7d2b1f6a01"
PARENT = "063fa523-8b0e-4a5b-9d0c-6a1f2c3d4e02"
CWD = "/home/dev/shop_api"
STAMP, STAMP_MS = "2026-02-03T18:11:42.209Z", 1_770_142_302_209
MODEL = "claude-sonnet-4-20250514"


# --- lines as Claude Code writes them ------------------------------------------------------------


def base(type_: str, **extra: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "parentUuid": PARENT,
        "isSidechain": False,
        "userType": "external",
        "cwd": CWD,
        "sessionId": SESSION,
        "version": "2.0.76",
        "gitBranch": "main",
        "type": type_,
        "uuid": UUID,
        "timestamp": STAMP,
    }
    line.update(extra)
    return line


def user(content: Any, **extra: Any) -> dict[str, Any]:
    return base("user", message={"role": "user", "content": content}, **extra)


def assistant(
    blocks: list[dict[str, Any]],
    tokens: Any = None,
    message_id: Any = "msg_01Vq",
    request_id: Any = "req_011CR74a",
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": blocks,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage(5, 24, cache_read=17299, cache_creation=262) if tokens is None else tokens,
    }
    return base("assistant", message=body, requestId=request_id, **extra)


def system(content: Any, subtype: Any = "compact_boundary", **extra: Any) -> dict[str, Any]:
    return base("system", content=content, subtype=subtype, level="info", **extra)


def tool_result(content: Any, is_error: Any = False, tool_use_id: Any = "toolu_014q") -> dict[str, Any]:
    return {"tool_use_id": tool_use_id, "type": "tool_result", "content": content, "is_error": is_error}


def image() -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}


def parse(line: Any) -> Entry:
    return parse_line(orjson.dumps(line))


def message_line(line: dict[str, Any]) -> MessageLine:
    entry = parse(line)
    assert isinstance(entry, MessageLine), entry
    return entry


def message(line: dict[str, Any]) -> dict[str, Any]:
    return message_line(line).message


# --- message lines, whole ------------------------------------------------------------------------


def test_user_prompt_as_a_string_whole_entry() -> None:
    entry = message_line(user("the /orders endpoint returns 500, fix it"))
    assert entry == MessageLine(
        session_id=SESSION,
        uuid=UUID,
        type="user",
        timestamp=STAMP_MS,
        cwd=CWD,
        message={
            "id": UUID,
            "parentId": PARENT,
            "type": "user",
            "sessionId": SESSION,
            "timestamp": STAMP_MS,
            "content": "the /orders endpoint returns 500, fix it",
            "truncated": False,
            "thinking": None,
            "toolUses": [],
            "toolResults": [],
            "model": None,
            "isSidechain": False,
            "subtype": None,
        },
        tool_names=(),
        usage=None,
        usage_key=None,
    )


def test_assistant_tool_use_line_whole_entry() -> None:
    line = assistant([tool_use("Read", "toolu_014q", file_path="/home/dev/shop_api/app/orders.py")])
    entry = message_line(line)
    assert entry == MessageLine(
        session_id=SESSION,
        uuid=UUID,
        type="assistant",
        timestamp=STAMP_MS,
        cwd=CWD,
        message={
            "id": UUID,
            "parentId": PARENT,
            "type": "assistant",
            "sessionId": SESSION,
            "timestamp": STAMP_MS,
            "content": "",
            "truncated": False,
            "thinking": None,
            "toolUses": [{"id": "toolu_014q", "name": "Read", "summary": "/home/dev/shop_api/app/orders.py"}],
            "toolResults": [],
            "model": MODEL,
            "isSidechain": False,
            "subtype": None,
        },
        tool_names=("Read",),
        usage=Usage(5, 24, 262, 17299),
        usage_key=("msg_01Vq", "req_011CR74a"),
    )


def test_first_line_has_no_parent() -> None:
    assert message(user("hi", parentUuid=None))["parentId"] is None


# --- message content: a table ---------------------------------------------------------------------

CONTENT_CASES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (user("fix it"), {"content": "fix it", "toolUses": [], "toolResults": []}),
    (user([text("fix"), text("it")]), {"content": "fix\nit", "truncated": False}),
    (user([text("look at this"), image()]), {"content": "look at this\n[image]"}),
    (user([image()]), {"content": "[image]"}),
    (user([]), {"content": "", "thinking": None}),
    (user(None), {"content": ""}),
    (user(42), {"content": ""}),
    (user(["not a block", 3, None, text("kept")]), {"content": "kept"}),
    (user([{"type": "text", "text": 5}, {"type": "text"}]), {"content": ""}),
    (base("user"), {"content": "", "model": None}),
    (base("user", message="not an object"), {"content": ""}),
    (
        user([tool_result("1\timport os\n2\tfrom db import session\n")]),
        {
            "content": "",
            "toolResults": [
                {
                    "toolUseId": "toolu_014q",
                    "isError": False,
                    "content": "1\timport os\n2\tfrom db import session\n",
                }
            ],
        },
    ),
    (
        user([tool_result([text("first"), image(), text("second")], is_error=True)]),
        {"toolResults": [{"toolUseId": "toolu_014q", "isError": True, "content": "first\nsecond"}]},
    ),
    (
        user([tool_result("boom", is_error="true", tool_use_id=None)]),
        {"toolResults": [{"toolUseId": None, "isError": False, "content": "boom"}]},
    ),
    (
        user([tool_result(None), tool_result({"text": "x"})]),
        {
            "toolResults": [
                {"toolUseId": "toolu_014q", "isError": False, "content": ""},
                {"toolUseId": "toolu_014q", "isError": False, "content": ""},
            ]
        },
    ),
    (
        user([tool_result("r" * (MAX_RESULT_CHARS + 1))]),
        {"toolResults": [{"toolUseId": "toolu_014q", "isError": False, "content": "r" * MAX_RESULT_CHARS}]},
    ),
    (assistant([text("Let me read the orders handler.")]), {"content": "Let me read the orders handler."}),
    (
        assistant([thinking("Look at the handler first.")]),
        {"content": "", "thinking": "Look at the handler first."},
    ),
    (
        assistant([thinking("one"), text("said"), thinking("two")]),
        {"content": "said", "thinking": "one\ntwo"},
    ),
    (assistant([{"type": "thinking", "thinking": None}]), {"thinking": None}),
    (
        assistant([tool_use("Bash", "toolu_1", command="pytest -q", description="Run the tests")]),
        {"content": "", "toolUses": [{"id": "toolu_1", "name": "Bash", "summary": "pytest -q"}]},
    ),
    (
        assistant([{"type": "tool_use", "id": "toolu_2", "input": {"command": "ls"}}]),
        {"toolUses": []},
    ),
    (
        assistant([{"type": "tool_use", "id": "toolu_2", "name": "", "input": {}}]),
        {"toolUses": []},
    ),
    (
        assistant([{"type": "tool_use", "name": "Read", "input": {"file_path": "a.py"}}]),
        {"toolUses": [{"id": None, "name": "Read", "summary": "a.py"}]},
    ),
    (
        assistant([{"type": "tool_use", "id": "i" * 200, "name": "N" * 200, "input": {}}]),
        {"toolUses": [{"id": "i" * MAX_ID_CHARS, "name": "N" * MAX_ID_CHARS, "summary": None}]},
    ),
    (
        assistant([{"type": "server_tool_use", "name": "web_search"}, {"type": "redacted_thinking"}]),
        {"content": "", "thinking": None, "toolUses": []},
    ),
    (system("Conversation compacted"), {"content": "Conversation compacted", "subtype": "compact_boundary"}),
    (system([text("a"), text("b")], subtype=None), {"content": "a\nb", "subtype": None}),
    (system("x", subtype=5), {"subtype": None}),
    (user("hi", subtype="compact_boundary"), {"subtype": None}),
    (user("hi", isSidechain=True), {"isSidechain": True}),
    (user("hi", isSidechain="true"), {"isSidechain": False}),
    (user("hi", isSidechain=1), {"isSidechain": False}),
    (user("hi", parentUuid=""), {"parentId": None}),
    (user("hi", uuid="u" * 200), {"id": "u" * MAX_ID_CHARS}),
    (user("hi", sessionId="s" * 200), {"sessionId": "s" * MAX_ID_CHARS}),
]


@pytest.mark.parametrize(("line", "expected"), CONTENT_CASES)
def test_message_fields(line: dict[str, Any], expected: dict[str, Any]) -> None:
    normalized = message(line)
    assert {key: normalized[key] for key in expected} == expected


def test_system_content_is_the_line_content_not_the_message_body() -> None:
    line = system("from the line")
    line["message"] = {"content": "from a body"}
    assert message(line)["content"] == "from the line"


def test_user_line_content_is_the_message_body_not_the_line() -> None:
    line = user("from the body")
    line["content"] = "from the line"
    assert message(line)["content"] == "from the body"


# --- tool summaries ----------------------------------------------------------------------------

SUMMARY_CASES: list[tuple[Any, str | None]] = [
    ({"command": "ls", "file_path": "a.py"}, "a.py"),
    ({"notebook_path": "n.ipynb", "file_path": "a.py"}, "a.py"),
    ({"path": "src", "notebook_path": "n.ipynb"}, "n.ipynb"),
    ({"command": "ls", "path": "src"}, "src"),
    ({"pattern": "TODO", "command": "ls -la"}, "ls -la"),
    ({"url": "https://example.com", "pattern": "def main"}, "def main"),
    ({"query": "fastapi lifespan", "url": "https://example.com"}, "https://example.com"),
    ({"description": "Find the bug", "query": "fastapi lifespan"}, "fastapi lifespan"),
    ({"prompt": "explore the repo", "description": "Find the bug"}, "Find the bug"),
    ({"other": "o", "prompt": "explore the repo"}, "explore the repo"),
    ({"file_path": "", "command": "ls"}, "ls"),
    ({"file_path": 5, "command": "ls"}, "ls"),
    ({"todos": [{"content": "x"}], "mode": "plan", "other": "y"}, "plan"),
    ({"limit": 5, "todos": []}, None),
    ({}, None),
    ("not an object", None),
    (None, None),
    ({"command": "c" * (MAX_SUMMARY_CHARS + 50)}, "c" * MAX_SUMMARY_CHARS),
    ({"only": "o" * (MAX_SUMMARY_CHARS + 1)}, "o" * MAX_SUMMARY_CHARS),
]


@pytest.mark.parametrize(("arguments", "summary"), SUMMARY_CASES)
def test_tool_summary_picks_the_most_telling_input(arguments: Any, summary: str | None) -> None:
    block = {"type": "tool_use", "id": "toolu_1", "name": "Tool", "input": arguments}
    assert message(assistant([block]))["toolUses"] == [{"id": "toolu_1", "name": "Tool", "summary": summary}]


def test_tool_names_are_distinct_in_first_use_order() -> None:
    line = assistant(
        [tool_use("Read", file_path="a"), tool_use("Bash", command="ls"), tool_use("Read", path="b")]
    )
    entry = message_line(line)
    assert entry.tool_names == ("Read", "Bash")
    assert [use["name"] for use in entry.message["toolUses"]] == ["Read", "Bash", "Read"]


# --- bounds ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "truncated"),
    [
        (MAX_CONTENT_CHARS - 1, False),
        (MAX_CONTENT_CHARS, False),
        (MAX_CONTENT_CHARS + 1, True),
        (50_000, True),
    ],
)
def test_content_bounded_and_marked_truncated(length: int, truncated: bool) -> None:
    normalized = message(user("x" * length))
    assert normalized["content"] == "x" * min(length, MAX_CONTENT_CHARS)
    assert normalized["truncated"] is truncated


def test_joined_blocks_count_towards_the_content_bound() -> None:
    half = MAX_CONTENT_CHARS // 2
    normalized = message(user([text("a" * half), text("b" * half)]))  # one joining newline too many
    assert normalized["content"] == "a" * half + "\n" + "b" * (half - 1)
    assert normalized["truncated"] is True


def test_thinking_bounded() -> None:
    normalized = message(assistant([thinking("t" * (MAX_THINKING_CHARS + 100))]))
    assert normalized["thinking"] == "t" * MAX_THINKING_CHARS


def test_at_most_max_blocks_tool_uses_and_results() -> None:
    uses = [tool_use(f"Tool{i}", f"toolu_{i}", command=str(i)) for i in range(MAX_BLOCKS + 6)]
    entry = message_line(assistant(uses))
    assert [use["id"] for use in entry.message["toolUses"]] == [f"toolu_{i}" for i in range(MAX_BLOCKS)]
    assert entry.tool_names == tuple(f"Tool{i}" for i in range(MAX_BLOCKS))
    results = [tool_result(str(i), tool_use_id=f"toolu_{i}") for i in range(MAX_BLOCKS + 6)]
    kept = message(user(results))["toolResults"]
    assert [result["toolUseId"] for result in kept] == [f"toolu_{i}" for i in range(MAX_BLOCKS)]


def test_nameless_tool_uses_do_not_take_a_place_among_the_kept() -> None:
    nameless = [{"type": "tool_use", "id": f"bad_{i}", "input": {}} for i in range(MAX_BLOCKS)]
    entry = message_line(assistant([*nameless, tool_use("Read", "toolu_last", file_path="a.py")]))
    assert entry.message["toolUses"] == [{"id": "toolu_last", "name": "Read", "summary": "a.py"}]


# --- usage -------------------------------------------------------------------------------------


def test_usage_and_its_key_on_assistant_lines() -> None:
    entry = message_line(assistant([text("hi")], tokens=usage(3, 88, cache_read=17600, cache_creation=0)))
    assert entry.usage == Usage(
        input_tokens=3, output_tokens=88, cache_creation_input_tokens=0, cache_read_input_tokens=17600
    )
    assert entry.usage.to_json() == {
        "inputTokens": 3,
        "outputTokens": 88,
        "cacheCreationInputTokens": 0,
        "cacheReadInputTokens": 17600,
    }
    assert entry.usage_key == ("msg_01Vq", "req_011CR74a")
    assert "usage" not in entry.message


@pytest.mark.parametrize(
    ("line", "usage_", "key"),
    [
        (assistant([text("a")], request_id=None), Usage(5, 24, 262, 17299), ("msg_01Vq", "")),
        (assistant([text("a")], message_id=None), Usage(5, 24, 262, 17299), None),
        (assistant([text("a")], message_id=7), Usage(5, 24, 262, 17299), None),
        (assistant([text("a")], tokens="many"), None, None),
        (assistant([text("a")], tokens={}), Usage(0, 0, 0, 0), ("msg_01Vq", "req_011CR74a")),
        (
            assistant(
                [text("a")],
                tokens={
                    "input_tokens": -1,
                    "output_tokens": True,
                    "cache_read_input_tokens": "9",
                    "cache_creation_input_tokens": 2.5,
                },
            ),
            Usage(0, 0, 0, 0),
            ("msg_01Vq", "req_011CR74a"),
        ),
        (
            base(
                "user", message={"role": "user", "content": "hi", "id": "m", "usage": usage()}, requestId="r"
            ),
            None,
            None,
        ),
        (
            {**system("s"), "message": {"id": "m", "usage": usage()}, "requestId": "r"},
            None,
            None,
        ),
    ],
    ids=[
        "no-request-id",
        "no-message-id",
        "message-id-not-text",
        "usage-not-object",
        "usage-empty",
        "counts-not-counts",
        "user-line",
        "system-line",
    ],
)
def test_usage_edge_cases(line: dict[str, Any], usage_: Usage | None, key: tuple[str, str] | None) -> None:
    entry = message_line(line)
    assert (entry.usage, entry.usage_key) == (usage_, key)


def test_the_lines_of_one_response_share_the_usage_key(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path)
    writer.assistant([thinking("Look first."), text("Reading it."), tool_use("Read", file_path="a.py")])
    writer.assistant("Done.")
    entries = [parse_line(raw) for raw in writer.path.read_bytes().splitlines()]
    assert all(isinstance(entry, MessageLine) for entry in entries)
    keys = [entry.usage_key for entry in entries if isinstance(entry, MessageLine)]
    assert keys[0] == keys[1] == keys[2] != keys[3]
    assert len(set(keys)) == 2


# --- summaries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            {"type": "summary", "summary": "Fix 500 on /orders", "leafUuid": UUID},
            SummaryLine("Fix 500 on /orders", UUID),
        ),
        ({"type": "summary", "summary": "No leaf"}, SummaryLine("No leaf", None)),
        ({"type": "summary", "summary": "Leaf not text", "leafUuid": 5}, SummaryLine("Leaf not text", None)),
        (
            {"type": "summary", "summary": "T" * (MAX_TITLE_CHARS + 1), "leafUuid": "l" * 200},
            SummaryLine("T" * MAX_TITLE_CHARS, "l" * MAX_ID_CHARS),
        ),
        ({"type": "summary", "summary": "", "leafUuid": UUID}, Skipped("invalid", "summary")),
        ({"type": "summary", "summary": ["x"], "leafUuid": UUID}, Skipped("invalid", "summary")),
        ({"type": "summary", "leafUuid": UUID}, Skipped("invalid", "summary")),
    ],
)
def test_summary_lines(line: dict[str, Any], expected: Entry) -> None:
    assert parse(line) == expected


# --- lines passed over -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            {
                "type": "file-history-snapshot",
                "messageId": UUID,
                "snapshot": {"messageId": UUID, "trackedFileBackups": {}, "timestamp": STAMP},
                "isSnapshotUpdate": False,
            },
            Skipped("unknown", "file-history-snapshot"),
        ),
        (
            {"type": "queue-operation", "operation": "enqueue", "timestamp": STAMP, "sessionId": SESSION},
            Skipped("unknown", "queue-operation"),
        ),
        (base("attachment"), Skipped("unknown", "attachment")),
        (base("User"), Skipped("unknown", "User")),
        (base(""), Skipped("unknown", "")),
        (base("t" * 100), Skipped("unknown", "t" * 64)),
        (base(None), Skipped("invalid")),
        (base(5), Skipped("invalid")),
        (base(["user"]), Skipped("invalid")),
        ({"sessionId": SESSION, "uuid": UUID}, Skipped("invalid")),
        ({key: value for key, value in user("hi").items() if key != "sessionId"}, Skipped("invalid", "user")),
        ({key: value for key, value in user("hi").items() if key != "uuid"}, Skipped("invalid", "user")),
        (user("hi", sessionId=""), Skipped("invalid", "user")),
        (user("hi", uuid=""), Skipped("invalid", "user")),
        (assistant([text("a")], sessionId=123), Skipped("invalid", "assistant")),
        (system("s", uuid=None), Skipped("invalid", "system")),
    ],
)
def test_unknown_and_invalid_lines(line: Any, expected: Skipped) -> None:
    assert parse(line) == expected


HALF_LINE = orjson.dumps(user("the /orders endpoint returns 500"))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"not json",
        b"[1, 2]",
        b"[]",
        b"42",
        b"-1.5",
        b'"user"',
        b"null",
        b"true",
        HALF_LINE[: len(HALF_LINE) // 2],
        HALF_LINE[:-1],
        HALF_LINE.replace(b"the /orders", b"the \xff/orders"),
        HALF_LINE.replace(b"the /orders", b"the \xed\xa0\x80/orders"),
        HALF_LINE.replace(b"the /orders", b"the \\ud800/orders"),
        b"\xef\xbb\xbf" + HALF_LINE,
        HALF_LINE + b"{}",
        b"[" * 5000 + b"]" * 5000,
        b'{"type": "user", "x": NaN}',
    ],
    ids=[
        "empty",
        "blank",
        "text",
        "array",
        "empty-array",
        "integer",
        "float",
        "string",
        "null",
        "true",
        "half-line",
        "no-closing-brace",
        "invalid-utf8",
        "encoded-surrogate",
        "escaped-lone-surrogate",
        "byte-order-mark",
        "two-objects",
        "deep-nesting",
        "nan",
    ],
)
def test_malformed_lines(raw: bytes) -> None:
    assert parse_line(raw) == Skipped("malformed")


@pytest.mark.parametrize("cwd", ["", 5, None, ["/home/dev"], {"path": "/x"}])
def test_unusable_cwd_is_none_and_the_line_is_kept(cwd: Any) -> None:
    entry = message_line(user("hi", cwd=cwd))
    assert (entry.cwd, entry.message["content"]) == (None, "hi")


def test_missing_cwd_is_none() -> None:
    line = user("hi")
    del line["cwd"]
    assert message_line(line).cwd is None


def test_lines_written_by_the_writer(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path, cwd="/home/dev/shop_api")
    writer.snapshot()
    prompt = writer.user("the /orders endpoint returns 500, fix it")
    writer.assistant(
        [thinking("Look first."), text("Reading it."), tool_use("Read", file_path="app/orders.py")]
    )
    writer.tool_result(writer.last_tool_use_id, "1\timport os")
    writer.system("Conversation compacted")
    writer.summary("Fix 500 on /orders")
    entries = [parse_line(raw) for raw in writer.path.read_bytes().splitlines()]
    assert [type(entry).__name__ for entry in entries] == [
        "Skipped",
        "MessageLine",
        "MessageLine",
        "MessageLine",
        "MessageLine",
        "MessageLine",
        "MessageLine",
        "SummaryLine",
    ]
    assert entries[0] == Skipped("unknown", "file-history-snapshot")
    assert entries[7] == SummaryLine("Fix 500 on /orders", writer.last_uuid)
    lines = [entry for entry in entries if isinstance(entry, MessageLine)]
    assert [line.type for line in lines] == ["user", "assistant", "assistant", "assistant", "user", "system"]
    assert {line.session_id for line in lines} == {writer.session_id}
    assert {line.cwd for line in lines} == {"/home/dev/shop_api"}
    assert lines[0].uuid == prompt["uuid"]
    assert [line.message["parentId"] for line in lines[1:]] == [line.uuid for line in lines[:-1]]
    assert lines[3].message["toolUses"][0]["summary"] == "app/orders.py"
    assert lines[4].message["toolResults"] == [
        {"toolUseId": writer.last_tool_use_id, "isError": False, "content": "1\timport os"}
    ]
    assert lines[5].message["subtype"] == "informational"


# --- timestamps --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-02-03T18:11:42.209Z", 1_770_142_302_209),
        ("2026-02-03T18:11:42Z", 1_770_142_302_000),
        ("2026-02-03T18:11:42.209+00:00", 1_770_142_302_209),
        ("2026-02-03T20:11:42.209+02:00", 1_770_142_302_209),
        ("2026-02-03T13:11:42.209-05:00", 1_770_142_302_209),
        ("2026-02-03T18:11:42.2096Z", 1_770_142_302_210),
        ("2026-02-03T18:11:42.209999Z", 1_770_142_302_210),
        ("2026-02-03T18:11:42.2094Z", 1_770_142_302_209),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59.999Z", -1),
        ("2026-02-03T18:11:42.209", None),
        ("2026-02-03", None),
        ("yesterday", None),
        ("", None),
        ("2026-02-30T18:11:42Z", None),
        ("2026-02-03T25:11:42Z", None),
        ("2026-02-03T18:11:42.209Z" + " " * 50, None),
        (1_770_142_302_209, None),
        (1_770_142_302.209, None),
        (None, None),
        (["2026-02-03T18:11:42.209Z"], None),
    ],
)
def test_parse_timestamp(value: Any, expected: int | None) -> None:
    assert parse_timestamp(value) == expected


def test_every_millisecond_is_exact() -> None:
    for ms in range(1000):
        assert parse_timestamp(f"2026-02-03T18:11:42.{ms:03d}Z") == 1_770_142_302_000 + ms
        assert parse_timestamp(f"2099-12-31T23:59:59.{ms:03d}Z") == 4_102_444_799_000 + ms


@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00.000Z"]
)
def test_extreme_timestamps_do_not_raise(value: str) -> None:
    assert isinstance(parse_timestamp(value), int)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2026-02-03T18:11:42.209Z", STAMP_MS), ("2026-02-03T18:11:42.209", None), ("soon", None), (5, None)],
)
def test_line_timestamp(value: Any, expected: int | None) -> None:
    entry = message_line(user("hi", timestamp=value))
    assert (entry.timestamp, entry.message["timestamp"]) == (expected, expected)


# --- projects ----------------------------------------------------------------------------------


def test_project_id_is_pinned_so_it_is_the_same_on_every_host() -> None:
    assert project_id_for("/home/dev/shop_api") == 2_601_466_105_186_615
    assert project_id_for("/home/dev/shop_api") == project_id_for("/home/dev/shop_api")


@pytest.mark.parametrize(
    "cwd",
    ["/home/dev/shop_api", "/", "", "C:\\Users\\dev\\shop", "/home/dév/ツ", "/a/b_c", "/a/b-c", "x" * 5000],
)
def test_project_id_fits_a_javascript_number(cwd: str) -> None:
    project_id = project_id_for(cwd)
    assert 0 < project_id < 2**53
    assert isinstance(project_id, int)


def test_paths_sharing_one_slug_folder_are_different_projects() -> None:
    assert slug("/a/b_c") == slug("/a/b-c") == slug("/a/b.c")
    assert len({project_id_for("/a/b_c"), project_id_for("/a/b-c"), project_id_for("/a/b.c")}) == 3


def test_paths_are_hashed_as_written() -> None:
    assert project_id_for("/a/b") != project_id_for("/a/b/")
    assert project_name_for("/a/b") == project_name_for("/a/b/") == "b"


def test_ids_of_many_paths_are_distinct() -> None:
    ids = {project_id_for(f"/home/dev/project-{i}") for i in range(10_000)}
    assert len(ids) == 10_000


@pytest.mark.parametrize(
    ("cwd", "name"),
    [
        ("/home/dev/shop_api", "shop_api"),
        ("/home/dev/shop_api/", "shop_api"),
        ("/home/dev/shop_api//", "shop_api"),
        ("C:\\Users\\dev\\shop", "shop"),
        ("C:\\Users\\dev\\shop\\", "shop"),
        ("C:/Users/dev/shop", "shop"),
        ("\\\\server\\share\\repo", "repo"),
        ("shop", "shop"),
        ("/", "/"),
        ("//", "//"),
        ("C:\\", "C:"),
    ],
)
def test_project_name(cwd: str, name: str) -> None:
    assert project_name_for(cwd) == name


# --- never raises ------------------------------------------------------------------------------

KNOWN_KEYS = [
    "type",
    "sessionId",
    "uuid",
    "parentUuid",
    "cwd",
    "timestamp",
    "message",
    "content",
    "subtype",
    "isSidechain",
    "requestId",
    "summary",
    "leafUuid",
    "role",
    "model",
    "id",
    "usage",
    "input_tokens",
    "output_tokens",
    "text",
    "thinking",
    "name",
    "input",
    "tool_use_id",
    "is_error",
    "file_path",
    "command",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(
        ["user", "assistant", "system", "summary", "text", "thinking", "tool_use", "tool_result"]
    ),
    st.sampled_from(["image", STAMP, "2026-02-03T18:11:42", "s", "u"]),
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=5), children, max_size=8),
    ),
    max_leaves=40,
)


def check_entry(entry: Entry) -> None:
    assert isinstance(entry, MessageLine | SummaryLine | Skipped)
    if isinstance(entry, MessageLine):
        orjson.dumps(entry.message)
        assert len(entry.message["content"]) <= MAX_CONTENT_CHARS
        assert len(entry.message["toolUses"]) <= MAX_BLOCKS
        assert len(entry.message["toolResults"]) <= MAX_BLOCKS


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parse_line_never_raises_on_bytes(raw: bytes) -> None:
    check_entry(parse_line(raw))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(KNOWN_KEYS), JSON, max_size=12))
def test_parse_line_never_raises_on_lines_of_the_right_shape(line: dict[str, Any]) -> None:
    check_entry(parse_line(orjson.dumps(line)))


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["user", "assistant", "system"]),
    st.lists(st.dictionaries(st.sampled_from(KNOWN_KEYS), JSON, max_size=6), max_size=6),
    JSON,
)
def test_parse_line_never_raises_on_message_lines_with_odd_blocks(
    type_: str, blocks: list[dict[str, Any]], tokens: Any
) -> None:
    line = (
        assistant(blocks, tokens=tokens) if type_ == "assistant" else base(type_, message={"content": blocks})
    )
    line["content"] = blocks
    entry = parse_line(orjson.dumps(line))
    assert isinstance(entry, MessageLine)
    check_entry(entry)
