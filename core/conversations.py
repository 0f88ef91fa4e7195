"""From transcript entries to Observatory events: projects, conversations, messages, analytics.

``ConversationTracker`` is the transcript watcher's state machine. It is fed the entries read from
one file at a time (``read``) and a clock (``tick``), and answers with the events to publish. It never
reads a file or a clock itself, so every rule below is tested without either:

- A project is keyed by the ``cwd`` of its conversations' first line (its id is a hash of that path).
  It is discovered (``project_discovered``) the first time a line names it.
- A conversation is a ``sessionId``. It starts (``conversation_started``) at its first message line,
  and again when a line arrives after it ended; it ends (``conversation_ended``) once no line has
  come for ``idle_timeout_ms``, measured from its newest line's own timestamp.
- Every message line becomes one ``message_added``; in a batch, the last one of each conversation
  has ``isLatest``. A line whose ``uuid`` was already seen (a rewritten or copied file) is dropped.
- Tokens of one API response count once: the first line with a given (message id, request id)
  carries ``usage``, the lines of the other content blocks of that response carry ``null``.
- Once per ``analytics_interval_ms``: an ``analytics_update`` for each project that had messages
  in the period, and a ``project_updated`` for each project whose figures changed.
- ``announce`` tells a new ingest run (whose live state starts empty) every project and every
  active conversation again.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.errors import StateError
from core.transcripts import Entry, MessageLine, Skipped, SummaryLine, project_id_for, project_name_for

MAX_PROJECTS = 10_000
MAX_CONVERSATIONS = 20_000
MAX_SEEN_UUIDS = 50_000
MAX_USAGE_KEYS = 4096
MAX_WAITING_LINES = 200  # message lines of a conversation whose first line had no cwd yet
MAX_WAITING_CONVERSATIONS = 1000
STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event to publish: the producer's ``type``, ``data`` and ``timestamp`` (epoch ms)."""

    type: str
    data: dict[str, Any]
    timestamp: int


@dataclass(slots=True)
class Project:
    id: int
    name: str
    path: str
    conversation_count: int = 0
    last_activity: int = 0

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "path": self.path}


@dataclass(slots=True)
class Conversation:
    session_id: str
    project_id: int
    start_time: int
    last_activity: int
    message_count: int = 0
    tool_use_count: int = 0
    active: bool = True
    title: str | None = None


@dataclass(slots=True)
class PeriodMetrics:
    messages: int = 0
    user_messages: int = 0
    assistant_messages: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    tool_uses: int = 0
    tool_uses_by_name: Counter[str] = field(default_factory=Counter)


class ConversationTracker:
    def __init__(self, *, idle_timeout_ms: int, analytics_interval_ms: int, now_ms: int) -> None:
        self.idle_timeout_ms = idle_timeout_ms
        self.analytics_interval_ms = analytics_interval_ms
        self.projects: OrderedDict[int, Project] = OrderedDict()
        self.conversations: OrderedDict[str, Conversation] = OrderedDict()  # least recently active first
        self.skipped: Counter[str] = Counter()  # "malformed", "invalid", "duplicate", "unknown:<type>"
        self._seen_uuids: OrderedDict[str, str] = OrderedDict()  # uuid -> session id
        self._usage_keys: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._waiting: dict[str, list[MessageLine]] = {}
        self._period_start = now_ms
        self._period: dict[int, PeriodMetrics] = {}
        self._changed_projects: set[int] = set()

    # --- input ---------------------------------------------------------------------------------

    def read(self, entries: Iterable[Entry], now_ms: int) -> list[Outgoing]:
        """The entries of one read of one file, in file order."""
        out: list[Outgoing] = []
        latest: dict[str, dict[str, Any]] = {}  # conversation -> its last message_added data
        for entry in entries:
            if isinstance(entry, MessageLine):
                self._message(entry, now_ms, out, latest)
            elif isinstance(entry, SummaryLine):
                self._summary(entry, out, now_ms)
            else:
                self._skip(entry)
        for data in latest.values():
            data["isLatest"] = True
        return out

    def known_conversation(self, session_id: str, cwd: str, last_activity: int) -> list[Outgoing]:
        """A conversation seen only by its first line (a file left out of the backfill): its project
        is discovered and counted, but nothing of it is published as started or added."""
        if session_id in self.conversations:
            return []
        out: list[Outgoing] = []
        project = self._project(cwd, last_activity, out)
        project.last_activity = max(project.last_activity, last_activity)
        project.conversation_count += 1
        self._remember(Conversation(session_id, project.id, last_activity, last_activity, active=False))
        self._changed_projects.add(project.id)
        return out

    def _skip(self, entry: Skipped) -> None:
        self.skipped[f"unknown:{entry.line_type}" if entry.reason == "unknown" else entry.reason] += 1

    def _message(
        self, line: MessageLine, now_ms: int, out: list[Outgoing], latest: dict[str, dict[str, Any]]
    ) -> None:
        if line.uuid in self._seen_uuids:
            self.skipped["duplicate"] += 1
            return
        conversation = self.conversations.get(line.session_id)
        if conversation is not None and conversation.project_id not in self.projects:
            del self.conversations[line.session_id]  # its project was forgotten: start it afresh
            conversation = None
        if conversation is None and line.cwd is None:
            self._hold(line)
            return
        if conversation is None or not conversation.active:
            # Lines held for want of a cwd came first in the file: they open the conversation.
            held = [h for h in self._waiting.pop(line.session_id, ()) if h.uuid not in self._seen_uuids]
            first = held[0] if held else line
            start = now_ms if first.timestamp is None else first.timestamp
            conversation = self._start(line.session_id, line.cwd, conversation, start, out)
            for earlier in held:
                self._add(earlier, conversation, now_ms, out, latest)
        self._add(line, conversation, now_ms, out, latest)

    def _hold(self, line: MessageLine) -> None:
        waiting = self._waiting.get(line.session_id)
        if waiting is None and len(self._waiting) < MAX_WAITING_CONVERSATIONS:
            waiting = self._waiting[line.session_id] = []
        if waiting is not None and len(waiting) < MAX_WAITING_LINES:
            waiting.append(line)
        else:
            self.skipped["no_cwd"] += 1

    def _add(
        self,
        line: MessageLine,
        conversation: Conversation,
        now_ms: int,
        out: list[Outgoing],
        latest: dict[str, dict[str, Any]],
    ) -> None:
        self._see(line.uuid, line.session_id)
        timestamp = now_ms if line.timestamp is None else line.timestamp
        project = self.projects[conversation.project_id]
        conversation.message_count += 1
        conversation.tool_use_count += len(line.message["toolUses"])
        conversation.last_activity = max(conversation.last_activity, timestamp)
        self.conversations.move_to_end(line.session_id)
        project.last_activity = max(project.last_activity, timestamp)
        self._changed_projects.add(project.id)
        message = dict(line.message, usage=self._count_usage(line))
        data = {
            "conversationId": line.session_id,
            "projectInfo": project.info(),
            "isLatest": False,
            "message": message,
        }
        latest[line.session_id] = data
        self._add_to_period(project.id, line, message)
        out.append(Outgoing("message_added", data, timestamp))

    def _start(
        self,
        session_id: str,
        cwd: str | None,
        ended: Conversation | None,
        timestamp: int,
        out: list[Outgoing],
    ) -> Conversation:
        if ended is None:
            assert cwd is not None
            project = self._project(cwd, timestamp, out)
            project.conversation_count += 1
            conversation = Conversation(session_id, project.id, timestamp, timestamp)
            self._remember(conversation)
        else:
            conversation = ended
            project = self.projects[conversation.project_id]
            conversation.active = True
            conversation.start_time = conversation.last_activity = timestamp
            conversation.message_count = conversation.tool_use_count = 0
        out.append(
            Outgoing(
                "conversation_started",
                {
                    "conversationId": session_id,
                    "sessionId": session_id,
                    "projectId": project.id,
                    "projectName": project.name,
                    "projectInfo": project.info(),
                    "startTime": timestamp,
                },
                timestamp,
            )
        )
        return conversation

    def _project(self, cwd: str, timestamp: int, out: list[Outgoing]) -> Project:
        project_id = project_id_for(cwd)
        project = self.projects.get(project_id)
        if project is not None:
            self.projects.move_to_end(project_id)
            return project
        project = Project(project_id, project_name_for(cwd), cwd, last_activity=timestamp)
        self.projects[project_id] = project
        if len(self.projects) > MAX_PROJECTS:
            self.projects.popitem(last=False)
        out.append(
            Outgoing(
                "project_discovered",
                {"project": project.info(), "conversationCount": 1, "lastActivity": timestamp},
                timestamp,
            )
        )
        return project

    def _remember(self, conversation: Conversation) -> None:
        self.conversations[conversation.session_id] = conversation
        while len(self.conversations) > MAX_CONVERSATIONS:
            self.conversations.popitem(last=False)

    def _see(self, uuid: str, session_id: str) -> None:
        self._seen_uuids[uuid] = session_id
        if len(self._seen_uuids) > MAX_SEEN_UUIDS:
            self._seen_uuids.popitem(last=False)

    def _count_usage(self, line: MessageLine) -> dict[str, int] | None:
        if line.usage is None or line.usage_key is None or line.usage_key in self._usage_keys:
            return None
        self._usage_keys[line.usage_key] = None
        if len(self._usage_keys) > MAX_USAGE_KEYS:
            self._usage_keys.popitem(last=False)
        return line.usage.to_json()

    def _add_to_period(self, project_id: int, line: MessageLine, message: dict[str, Any]) -> None:
        metrics = self._period.setdefault(project_id, PeriodMetrics())
        metrics.messages += 1
        metrics.user_messages += line.type == "user"
        metrics.assistant_messages += line.type == "assistant"
        metrics.tool_uses += len(message["toolUses"])
        metrics.tool_uses_by_name.update(use["name"] for use in message["toolUses"])
        usage = message["usage"]
        if usage is not None:
            metrics.tokens_in += usage["inputTokens"]
            metrics.tokens_out += usage["outputTokens"]
            metrics.cache_read_tokens += usage["cacheReadInputTokens"]
            metrics.cache_creation_tokens += usage["cacheCreationInputTokens"]

    def _summary(self, line: SummaryLine, out: list[Outgoing], now_ms: int) -> None:
        session_id = self._seen_uuids.get(line.leaf_uuid) if line.leaf_uuid is not None else None
        conversation = self.conversations.get(session_id) if session_id is not None else None
        if conversation is None:
            self.skipped["summary_of_unknown"] += 1
            return
        if conversation.title == line.title:
            return
        conversation.title = line.title
        out.append(
            Outgoing(
                "conversation_updated",
                {
                    "conversationId": conversation.session_id,
                    "sessionId": conversation.session_id,
                    "projectId": conversation.project_id,
                    "title": line.title,
                },
                now_ms,
            )
        )

    def announce(self, now_ms: int) -> list[Outgoing]:
        """Everything a new ingest run should know again: each project, each active conversation."""
        out = [
            Outgoing(
                "project_discovered",
                {
                    "project": project.info(),
                    "conversationCount": project.conversation_count,
                    "lastActivity": project.last_activity,
                },
                now_ms,
            )
            for project in self.projects.values()
        ]
        for conversation in self.conversations.values():
            if conversation.active and conversation.project_id in self.projects:
                project = self.projects[conversation.project_id]
                out.append(
                    Outgoing(
                        "conversation_started",
                        {
                            "conversationId": conversation.session_id,
                            "sessionId": conversation.session_id,
                            "projectId": project.id,
                            "projectName": project.name,
                            "projectInfo": project.info(),
                            "startTime": conversation.start_time,
                        },
                        conversation.start_time,
                    )
                )
        return out

    # --- time ----------------------------------------------------------------------------------

    def tick(self, now_ms: int) -> list[Outgoing]:
        """End idle conversations; at the end of a period, report analytics and project changes."""
        out: list[Outgoing] = []
        for conversation in self.conversations.values():
            if conversation.active and now_ms - conversation.last_activity >= self.idle_timeout_ms:
                out.append(self._end(conversation, now_ms))
        if now_ms - self._period_start >= self.analytics_interval_ms:
            out.extend(self._close_period(now_ms))
        return out

    def _end(self, conversation: Conversation, now_ms: int) -> Outgoing:
        conversation.active = False
        self._changed_projects.add(conversation.project_id)
        return Outgoing(
            "conversation_ended",
            {
                "conversationId": conversation.session_id,
                "sessionId": conversation.session_id,
                "projectId": conversation.project_id,
                "startTime": conversation.start_time,
                "endTime": conversation.last_activity,
                "duration": conversation.last_activity - conversation.start_time,
                "messageCount": conversation.message_count,
                "toolUsageCount": conversation.tool_use_count,
            },
            now_ms,
        )

    def _close_period(self, now_ms: int) -> list[Outgoing]:
        out: list[Outgoing] = []
        active = Counter(c.project_id for c in self.conversations.values() if c.active)
        period = f"{self.analytics_interval_ms / 1000:g}s"
        for project_id, metrics in self._period.items():
            if project_id not in self.projects:
                continue
            out.append(
                Outgoing(
                    "analytics_update",
                    {
                        "projectId": project_id,
                        "period": period,
                        "metrics": {
                            "periodStart": self._period_start,
                            "periodEnd": now_ms,
                            "messages": metrics.messages,
                            "userMessages": metrics.user_messages,
                            "assistantMessages": metrics.assistant_messages,
                            "tokensIn": metrics.tokens_in,
                            "tokensOut": metrics.tokens_out,
                            "cacheReadTokens": metrics.cache_read_tokens,
                            "cacheCreationTokens": metrics.cache_creation_tokens,
                            "toolUses": metrics.tool_uses,
                            "toolUsesByName": dict(metrics.tool_uses_by_name.most_common()),
                            "activeConversations": active[project_id],
                        },
                    },
                    now_ms,
                )
            )
        for project_id in sorted(self._changed_projects):
            project = self.projects.get(project_id)
            if project is None:
                continue
            out.append(
                Outgoing(
                    "project_updated",
                    {
                        "projectId": project_id,
                        "changes": {
                            "lastActivity": project.last_activity,
                            "conversationCount": project.conversation_count,
                            "activeConversations": active[project_id],
                        },
                        "newActivity": project_id in self._period,
                    },
                    now_ms,
                )
            )
        self._period = {}
        self._changed_projects = set()
        self._period_start = now_ms
        return out

    # --- persistence ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What a restart needs so that nothing is published twice: plain JSON types."""
        return {
            "version": STATE_VERSION,
            "projects": [
                [p.id, p.name, p.path, p.conversation_count, p.last_activity] for p in self.projects.values()
            ],
            "conversations": [
                [
                    c.session_id,
                    c.project_id,
                    c.start_time,
                    c.last_activity,
                    c.message_count,
                    c.tool_use_count,
                    c.active,
                    c.title,
                ]
                for c in self.conversations.values()
            ],
            "usageKeys": [list(key) for key in self._usage_keys],
        }

    def restore(self, state: Any) -> None:
        """Take back a ``snapshot``; raises ``StateError`` (and keeps nothing) if it is not one."""
        try:
            if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
                raise TypeError("not a tracker state of this version")
            projects = [_project_row(row) for row in state["projects"]]
            conversations = [_conversation_row(row) for row in state["conversations"]]
            usage_keys = [(str(k[0]), str(k[1])) for k in state["usageKeys"] if _is_pair(k)]
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"unreadable watcher state: {exc}") from None
        self.projects = OrderedDict((p.id, p) for p in projects[-MAX_PROJECTS:])
        known = set(self.projects)
        self.conversations = OrderedDict(
            (c.session_id, c) for c in conversations[-MAX_CONVERSATIONS:] if c.project_id in known
        )
        self._usage_keys = OrderedDict.fromkeys(usage_keys[-MAX_USAGE_KEYS:])


def _ints(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _project_row(row: Any) -> Project:
    project_id, name, path, count, last = row
    if not (_ints((project_id, count, last)) and isinstance(name, str) and isinstance(path, str)):
        raise ValueError(f"bad project {row!r:.200}")
    return Project(project_id, name, path, count, last)


def _conversation_row(row: Any) -> Conversation:
    session_id, project_id, start, last, messages, tools, active, title = row
    if not (
        isinstance(session_id, str)
        and _ints((project_id, start, last, messages, tools))
        and isinstance(active, bool)
        and (title is None or isinstance(title, str))
    ):
        raise ValueError(f"bad conversation {row!r:.200}")
    return Conversation(session_id, project_id, start, last, messages, tools, active, title)


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)
