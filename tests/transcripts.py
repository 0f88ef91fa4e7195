"""Claude Code transcripts written the way Claude Code writes them, line by line, for the tests.

    writer = TranscriptWriter(root, cwd="/home/dev/shop_api")
    writer.user("the /orders endpoint returns 500, fix it")
    writer.assistant([thinking("Look first."), text("Reading it."), tool_use("Read", file_path="a.py")])
    writer.tool_result(writer.last_tool_use_id, "1\\timport os")

The folder is the lossy slug Claude Code makes of the working directory; every line carries the
real ``cwd``. An assistant response is written as one line per content block, each repeating the
response's ``message.id``, ``requestId`` and ``usage``, as Claude Code does.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid as uuid_module
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

_counter = itertools.count(1)


def slug(cwd: str) -> str:
    """Claude Code's folder name for a working directory: every non-alphanumeric becomes '-'."""
    return re.sub(r"[^A-Za-z0-9]", "-", cwd)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def thinking(value: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": value, "signature": "EqQB"}


def tool_use(name: str, tool_id: str | None = None, **arguments: Any) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": tool_id or f"toolu_{next(_counter):06d}",
        "name": name,
        "input": arguments,
    }


def usage(
    input_tokens: int = 5, output_tokens: int = 24, cache_read: int = 100, cache_creation: int = 10
) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": cache_creation,
        "cache_read_input_tokens": cache_read,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


class TranscriptWriter:
    def __init__(
        self,
        root: Path,
        cwd: str = "/home/dev/shop_api",
        session_id: str | None = None,
        *,
        file_name: str | None = None,
        sidechain: bool = False,
    ) -> None:
        self.cwd = cwd
        self.session_id = session_id or str(uuid_module.uuid4())
        self.folder = root / slug(cwd)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / (file_name or f"{self.session_id}.jsonl")
        self.sidechain = sidechain
        self.parent: str | None = None
        self.last_uuid: str | None = None
        self.last_tool_use_id: str | None = None
        self.messages = 0  # message lines written (user, assistant, system)
        self.tool_uses = 0

    # --- the entries ---------------------------------------------------------------------------

    def user(self, content: str | list[dict[str, Any]], at: int | None = None) -> dict[str, Any]:
        return self._message("user", {"role": "user", "content": content}, at)

    def tool_result(
        self, tool_use_id: str | None, content: str, is_error: bool = False, at: int | None = None
    ) -> dict[str, Any]:
        block = {"tool_use_id": tool_use_id, "type": "tool_result", "content": content, "is_error": is_error}
        return self.user([block], at)

    def assistant(
        self,
        blocks: str | list[dict[str, Any]],
        *,
        tokens: dict[str, Any] | None = None,
        message_id: str | None = None,
        request_id: str | None = None,
        at: int | None = None,
    ) -> list[dict[str, Any]]:
        """One API response: a line per content block, all with the same id, requestId and usage."""
        blocks = [text(blocks)] if isinstance(blocks, str) else blocks
        message_id = message_id or f"msg_{next(_counter):08d}"
        request_id = request_id or f"req_{next(_counter):08d}"
        lines = []
        for block in blocks:
            if block["type"] == "tool_use":
                self.last_tool_use_id = block["id"]
                self.tool_uses += 1
            body = {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-20250514",
                "content": [block],
                "stop_reason": "tool_use" if block["type"] == "tool_use" else None,
                "stop_sequence": None,
                "usage": tokens or usage(),
            }
            lines.append(self._message("assistant", body, at, requestId=request_id))
        return lines

    def system(self, content: str, subtype: str = "informational", at: int | None = None) -> dict[str, Any]:
        line = self._base("system", at)
        line.update({"content": content, "subtype": subtype, "level": "info"})
        self.messages += 1
        return self._write_line(line)

    def summary(self, title: str, leaf_uuid: str | None = None) -> dict[str, Any]:
        return self._write_line(
            {"type": "summary", "summary": title, "leafUuid": leaf_uuid or self.last_uuid}
        )

    def snapshot(self) -> dict[str, Any]:
        """A line type the watcher does not publish."""
        message_id = str(uuid_module.uuid4())
        return self._write_line(
            {
                "type": "file-history-snapshot",
                "messageId": message_id,
                "snapshot": {"messageId": message_id, "trackedFileBackups": {}, "timestamp": iso(_now())},
                "isSnapshotUpdate": False,
            }
        )

    def encoded_user(self, content: str) -> bytes:
        """A user line encoded but not written, with its newline: for writing it in pieces with ``raw``."""
        line = self._base("user", None)
        line["message"] = {"role": "user", "content": content}
        self.messages += 1
        return orjson.dumps(line) + b"\n"

    def raw(self, data: bytes) -> None:
        """Bytes as they are: half lines, malformed lines, anything."""
        with open(self.path, "ab") as file:
            file.write(data)

    # --- plumbing ------------------------------------------------------------------------------

    def _base(self, kind: str, at: int | None) -> dict[str, Any]:
        uuid = str(uuid_module.uuid4())
        line = {
            "parentUuid": self.parent,
            "isSidechain": self.sidechain,
            "userType": "external",
            "cwd": self.cwd,
            "sessionId": self.session_id,
            "version": "2.0.76",
            "gitBranch": "main",
            "type": kind,
            "uuid": uuid,
            "timestamp": iso(_now() if at is None else at),
        }
        self.parent = self.last_uuid = uuid
        return line

    def _message(self, kind: str, body: dict[str, Any], at: int | None, **extra: Any) -> dict[str, Any]:
        line = self._base(kind, at)
        line["message"] = body
        line.update(extra)
        self.messages += 1
        return self._write_line(line)

    def _write_line(self, line: dict[str, Any]) -> dict[str, Any]:
        with open(self.path, "ab") as file:
            file.write(orjson.dumps(line) + b"\n")
        return line


def _now() -> int:
    return round(time.time() * 1000)
