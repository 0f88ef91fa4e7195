"""State queries between a worker and the ingest: one JSON object each way.

A worker turns a client's query into ``encode_query``; the ingest answers with ``answer_query``;
the worker reads the answer with ``decode_answer``. Both sides share this module so the format
lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from core.history import History
from core.protocol import GetActiveConversations, GetProjects, Query
from core.routing import RoutingHeader
from core.state import LiveState

REPLY_TYPES = {
    "active_conversations": "active_conversations",
    "project_activity": "project_activity",
    "projects": "projects",
    "revoked_sessions": "revoked_sessions",
}
REVOKED_SESSIONS_QUERY = orjson.dumps({"query": "revoked_sessions"})


@dataclass(frozen=True, slots=True)
class QueryAnswer:
    reply_type: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class QueryFailure:
    message: str


def encode_query(request: Query, within: frozenset[int] | None = None) -> bytes:
    """``within``: the only projects the asking connection may see (None: all of them)."""
    scope = None if within is None else sorted(within)
    if isinstance(request, GetProjects):
        return orjson.dumps({"query": "projects", "limit": request.limit, "within": scope})
    if isinstance(request, GetActiveConversations):
        return orjson.dumps(
            {
                "query": "active_conversations",
                "projectId": request.project_id,
                "limit": request.limit,
                "within": scope,
            }
        )
    return orjson.dumps(
        {
            "query": "project_activity",
            "projectId": request.project_id,
            "start": request.start,
            "end": request.end,
        }
    )


def _optional_number(value: Any) -> float | None:
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    raise TypeError("not a number")


def _optional_project(value: Any) -> int | None:
    # orjson parses JSON integers only within 64 bits, so an int here always serializes back.
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise TypeError("not a project id")


def _within(value: Any) -> frozenset[int] | None:
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(p, int) and not isinstance(p, bool) for p in value):
        return frozenset(value)
    raise TypeError("within is not a list of project ids")


def answer_query(state: LiveState, raw: bytes, now_ms: float) -> bytes:
    """The ingest's side; a malformed query (a bug or a foreign peer) gets an error object back."""
    malformed = orjson.dumps({"ok": False, "error": "malformed query"})
    try:
        query = orjson.loads(raw)
        kind = query["query"]
        if kind == "revoked_sessions":
            data = {"sessions": list(state.revoked)}
        elif kind == "active_conversations":
            data = state.active_conversations(
                _optional_project(query["projectId"]), int(query["limit"]), _within(query.get("within"))
            )
        elif kind == "projects":
            data = state.known_projects(int(query["limit"]), _within(query.get("within")))
        elif kind == "project_activity":
            project_id = _optional_project(query["projectId"])
            if project_id is None:
                return malformed
            start, end = _optional_number(query["start"]), _optional_number(query["end"])
            data = state.project_activity(project_id, start, end, now_ms)
        else:
            return orjson.dumps({"ok": False, "error": "unknown query"})
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return malformed
    return orjson.dumps({"ok": True, "type": REPLY_TYPES[kind], "data": data})


def decode_answer(raw: bytes) -> QueryAnswer | QueryFailure:
    try:
        answer = orjson.loads(raw)
        if answer.get("ok"):
            return QueryAnswer(str(answer["type"]), dict(answer["data"]))
        return QueryFailure(str(answer.get("error", "query failed")))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
        return QueryFailure("malformed answer from the ingest")


HISTORY_LIMIT = 10_000  # events in one answer; a longer range takes several queries


def encode_history_query(first: int, last: int) -> bytes:
    return orjson.dumps({"query": "history", "first": first, "last": last})


def answer_history(history: History, raw: bytes) -> list[bytes] | None:
    """The answer frames: a JSON summary, then each event's header and payload. None: not history."""
    try:
        query = orjson.loads(raw)
        if not isinstance(query, dict) or query.get("query") != "history":
            return None
        first, last = int(query["first"]), int(query["last"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    window = history.range(first, last, HISTORY_LIMIT)
    summary = {"ok": True, "complete": window.complete, "oldest": window.oldest, "newest": window.newest}
    frames = [orjson.dumps(summary)]
    for event in window.events:
        frames += (event.header, event.payload)
    return frames


@dataclass(frozen=True, slots=True)
class HistoryAnswer:
    events: list[tuple[RoutingHeader, bytes]]
    complete: bool
    oldest: int
    newest: int


def decode_history(frames: list[bytes]) -> HistoryAnswer | QueryFailure:
    try:
        summary = orjson.loads(frames[0])
        pairs = frames[1:]
        events = [(RoutingHeader.decode(pairs[i]), pairs[i + 1]) for i in range(0, len(pairs) - 1, 2)]
        return HistoryAnswer(
            events, bool(summary["complete"]), int(summary["oldest"]), int(summary["newest"])
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
        return QueryFailure("malformed history from the ingest")
