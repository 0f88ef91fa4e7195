"""One line of a Claude Code transcript in, a typed entry out.

Claude Code appends one JSON object per line to ``~/.claude/projects/<folder>/<sessionId>.jsonl``.
The lines that carry a conversation are ``user``, ``assistant`` and ``system`` messages and
``summary`` titles; everything else (``file-history-snapshot``, ``queue-operation``, types added by
later versions) is passed over and only counted. A message line becomes a ``MessageLine`` whose
``message`` is the protocol's ``NormalizedMessage``, bounded in size so an event stays small whatever
the transcript holds.

Traps of the format, handled here or by the tracker (``core/conversations.py``):

- The folder name is a lossy slug of the working directory (``/a/b_c`` and ``/a/b-c`` share one), so
  the project comes from the ``cwd`` inside the lines, never from the folder name.
- An assistant response is written as one line per content block (thinking, text, tool_use), each
  repeating the response's ``message.id``, ``requestId`` and ``usage``; ``usage_key`` lets the
  tracker count the tokens of a response once.
- ``isSidechain`` lines are written by sub-agents.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

MESSAGE_LINE_TYPES = frozenset({"user", "assistant", "system"})
MAX_CONTENT_CHARS = 8192
MAX_THINKING_CHARS = 4096
MAX_RESULT_CHARS = 2048
MAX_SUMMARY_CHARS = 200
MAX_TITLE_CHARS = 500
MAX_BLOCKS = 64  # tool uses (and tool results) kept per message
MAX_ID_CHARS = 128
# Tool input fields that say best what a call is about, most telling first.
SUMMARY_KEYS = (
    "file_path",
    "notebook_path",
    "path",
    "command",
    "pattern",
    "url",
    "query",
    "description",
    "prompt",
)
_JS_SAFE_MASK = (1 << 53) - 1  # project ids must survive a JavaScript number


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int

    def to_json(self) -> dict[str, int]:
        return {
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "cacheCreationInputTokens": self.cache_creation_input_tokens,
            "cacheReadInputTokens": self.cache_read_input_tokens,
        }


@dataclass(frozen=True, slots=True)
class MessageLine:
    """A user, assistant or system line; ``message`` is its NormalizedMessage without ``usage``."""

    session_id: str
    uuid: str
    type: str
    timestamp: int | None  # epoch ms; None when the line has none or an unreadable one
    cwd: str | None
    message: dict[str, Any]
    tool_names: tuple[str, ...]
    usage: Usage | None
    usage_key: tuple[str, str] | None  # (message.id, requestId): one API response


@dataclass(frozen=True, slots=True)
class SummaryLine:
    """A conversation's title; ``leaf_uuid`` names the last message it summarizes."""

    title: str
    leaf_uuid: str | None


@dataclass(frozen=True, slots=True)
class Skipped:
    """A line that carries nothing to publish: ``reason`` is ``malformed``, ``invalid`` or
    ``unknown``; ``line_type`` is the line's ``type`` when it has a readable one."""

    reason: str
    line_type: str | None = None


Entry = MessageLine | SummaryLine | Skipped


def project_id_for(cwd: str) -> int:
    """A stable project id for a working directory: the same on every start and every host,
    so scoped tokens keep naming the same project."""
    digest = hashlib.blake2b(cwd.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") & _JS_SAFE_MASK) or 1


def project_name_for(cwd: str) -> str:
    """The last component of the working directory, as a person would name the project."""
    stripped = cwd.rstrip("/\\")
    return re.split(r"[/\\]", stripped)[-1] or cwd


def parse_line(raw: bytes) -> Entry:
    """Read one complete line (without its newline); never raises."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Skipped("malformed")
    if not isinstance(line, dict):
        return Skipped("malformed")
    line_type = line.get("type")
    if not isinstance(line_type, str):
        return Skipped("invalid")
    if line_type == "summary":
        return _summary(line)
    if line_type not in MESSAGE_LINE_TYPES:
        return Skipped("unknown", line_type[:64])
    return _message_line(line, line_type)


def _summary(line: dict[str, Any]) -> Entry:
    title = line.get("summary")
    if not isinstance(title, str) or not title:
        return Skipped("invalid", "summary")
    leaf = line.get("leafUuid")
    return SummaryLine(title[:MAX_TITLE_CHARS], _short_id(leaf))


def _message_line(line: dict[str, Any], line_type: str) -> Entry:
    session_id = _short_id(line.get("sessionId"))
    uuid = _short_id(line.get("uuid"))
    if session_id is None or uuid is None:
        return Skipped("invalid", line_type)
    cwd = line.get("cwd")
    body = line.get("message")
    body = body if isinstance(body, dict) else {}
    blocks = _blocks(line.get("content") if line_type == "system" else body.get("content"))
    texts: list[str] = []
    thinking: list[str] = []
    tool_uses: list[dict[str, Any]] = []
    tool_results: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking.append(block["thinking"])
        elif kind == "tool_use" and len(tool_uses) < MAX_BLOCKS:
            use = _tool_use(block)
            if use is not None:
                tool_uses.append(use)
        elif kind == "tool_result" and len(tool_results) < MAX_BLOCKS:
            tool_results.append(_tool_result(block))
        elif kind == "image":
            texts.append("[image]")
    content = "\n".join(texts)
    timestamp = parse_timestamp(line.get("timestamp"))
    message: dict[str, Any] = {
        "id": uuid,
        "parentId": _short_id(line.get("parentUuid")),
        "type": line_type,
        "sessionId": session_id,
        "timestamp": timestamp,
        "content": content[:MAX_CONTENT_CHARS],
        "truncated": len(content) > MAX_CONTENT_CHARS,
        "thinking": "\n".join(thinking)[:MAX_THINKING_CHARS] if thinking else None,
        "toolUses": tool_uses,
        "toolResults": tool_results,
        "model": _short_id(body.get("model")),
        "isSidechain": line.get("isSidechain") is True,
        "subtype": _short_id(line.get("subtype")) if line_type == "system" else None,
    }
    usage = _usage(body.get("usage")) if line_type == "assistant" else None
    message_id, request_id = _short_id(body.get("id")), _short_id(line.get("requestId"))
    usage_key = (message_id, request_id or "") if usage is not None and message_id is not None else None
    return MessageLine(
        session_id=session_id,
        uuid=uuid,
        type=line_type,
        timestamp=timestamp,
        cwd=cwd if isinstance(cwd, str) and cwd else None,
        message=message,
        tool_names=tuple(dict.fromkeys(use["name"] for use in tool_uses)),
        usage=usage,
        usage_key=usage_key,
    )


def _blocks(content: Any) -> list[dict[str, Any]]:
    """Message content is either a string or a list of typed blocks; make it always the list."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [block for block in content if isinstance(block, dict)]
    return []


def _tool_use(block: dict[str, Any]) -> dict[str, Any] | None:
    name = block.get("name")
    if not isinstance(name, str) or not name:
        return None
    return {"id": _short_id(block.get("id")), "name": name[:MAX_ID_CHARS], "summary": _tool_summary(block)}


def _tool_summary(block: dict[str, Any]) -> str | None:
    arguments = block.get("input")
    if not isinstance(arguments, dict):
        return None
    for key in SUMMARY_KEYS:
        value = arguments.get(key)
        if isinstance(value, str) and value:
            return value[:MAX_SUMMARY_CHARS]
    return next((v[:MAX_SUMMARY_CHARS] for v in arguments.values() if isinstance(v, str) and v), None)


def _tool_result(block: dict[str, Any]) -> dict[str, Any]:
    content = block.get("content")
    if isinstance(content, list):
        text = "\n".join(b["text"] for b in _blocks(content) if isinstance(b.get("text"), str))
    else:
        text = content if isinstance(content, str) else ""
    return {
        "toolUseId": _short_id(block.get("tool_use_id")),
        "isError": block.get("is_error") is True,
        "content": text[:MAX_RESULT_CHARS],
    }


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    return Usage(
        input_tokens=_count(raw.get("input_tokens")),
        output_tokens=_count(raw.get("output_tokens")),
        cache_creation_input_tokens=_count(raw.get("cache_creation_input_tokens")),
        cache_read_input_tokens=_count(raw.get("cache_read_input_tokens")),
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _short_id(value: Any) -> str | None:
    return value[:MAX_ID_CHARS] if isinstance(value, str) and value else None


def parse_timestamp(value: Any) -> int | None:
    """ISO 8601 (``2026-02-03T18:11:42.209Z``) to epoch milliseconds; None if unreadable."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None  # a local time of an unknown zone: better none than a wrong one
    return round(moment.timestamp() * 1000)
