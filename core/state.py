"""The ingest's live state: active conversations and per-project activity over time.

It answers the clients' queries and fills routing fields an event lacks (a ``conversation_ended``
names only its conversation; the state knows that conversation's project and session).
Everything is bounded: active conversations, routes and project names by count, activity by age
measured on the ingest's clock (never on producers' timestamps).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

MAX_REVOKED_SESSIONS = 100_000


@dataclass(slots=True)
class Conversation:
    conversation_id: str
    session_id: str | None
    project_id: int | None
    project_name: str | None
    start_time: float
    last_activity: float
    message_count: int = 0
    tool_use_count: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "conversationId": self.conversation_id,
            "sessionId": self.session_id,
            "projectId": self.project_id,
            "projectName": self.project_name,
            "startTime": self.start_time,
            "lastActivity": self.last_activity,
            "messageCount": self.message_count,
            "toolUsageCount": self.tool_use_count,
        }


@dataclass(slots=True)
class ActivityCounts:
    messages: int = 0
    conversations: int = 0
    tool_uses: int = 0

    def to_json(self) -> dict[str, int]:
        return {"messages": self.messages, "conversations": self.conversations, "toolUses": self.tool_uses}


@dataclass(slots=True)
class KnownProject:
    name: str | None = None
    path: str | None = None
    last_activity: float | None = None


@dataclass(frozen=True, slots=True)
class ConversationRoute:
    project_id: int | None
    session_id: str | None


@dataclass(slots=True)
class _ProjectActivity:
    buckets: dict[int, ActivityCounts] = field(default_factory=dict)


class LiveState:
    def __init__(self, max_active: int, retention_ms: float, bucket_ms: float) -> None:
        self.max_active = max_active
        self.retention_ms = retention_ms
        self.bucket_ms = int(bucket_ms)
        # Active conversations, least recently active first, so eviction pops from the front.
        self.active: OrderedDict[str, Conversation] = OrderedDict()
        # Routes outlive activity (an event may name a conversation that just ended); bounded too.
        self.routes: OrderedDict[str, ConversationRoute] = OrderedDict()
        # Every project an event named, most recently named last; bounded like the routes.
        self.projects: OrderedDict[int, KnownProject] = OrderedDict()
        self._activity: dict[int, _ProjectActivity] = {}
        self._swept_bucket = 0
        # Revoked token sessions, so that a worker that starts later still refuses them.
        self.revoked: OrderedDict[str, None] = OrderedDict()

    def revoke(self, session_id: str) -> None:
        self.revoked[session_id] = None
        self.revoked.move_to_end(session_id)
        while len(self.revoked) > MAX_REVOKED_SESSIONS:
            self.revoked.popitem(last=False)

    def route_of(self, conversation_id: str) -> ConversationRoute | None:
        return self.routes.get(conversation_id)

    def remember_route(self, conversation_id: str, route: ConversationRoute) -> None:
        known = self.routes.get(conversation_id)
        if known is not None:
            route = ConversationRoute(
                route.project_id if route.project_id is not None else known.project_id,
                route.session_id if route.session_id is not None else known.session_id,
            )
        self.routes[conversation_id] = route
        self.routes.move_to_end(conversation_id)
        while len(self.routes) > 4 * self.max_active:
            self.routes.popitem(last=False)

    def apply(
        self,
        type_: str,
        data: dict[str, Any],
        conversation_id: str | None,
        route: ConversationRoute,
        tool_use_count: int,
        timestamp_ms: float,
        now_ms: float,
    ) -> None:
        """Fold one accepted event, stamped ``timestamp_ms`` and arriving at ``now_ms``, into the state."""
        self._sweep(now_ms)
        if route.project_id is not None:
            self._learn_project(route.project_id, type_, data, timestamp_ms)
        if conversation_id is None:
            return
        self.remember_route(conversation_id, route)
        if type_ == "conversation_started":
            conversation = self._touch(conversation_id, route, data, timestamp_ms)
            start = data.get("startTime")
            if isinstance(start, int | float) and not isinstance(start, bool):
                conversation.start_time = start
            self._count(route.project_id, timestamp_ms, now_ms, conversations=1)
        elif type_ == "message_added":
            conversation = self._touch(conversation_id, route, data, timestamp_ms)
            conversation.message_count += 1
            conversation.tool_use_count += tool_use_count
            self._count(route.project_id, timestamp_ms, now_ms, messages=1, tool_uses=tool_use_count)
        elif type_ == "conversation_ended":
            self.active.pop(conversation_id, None)

    def _learn_project(self, project_id: int, type_: str, data: dict[str, Any], timestamp_ms: float) -> None:
        project = self.projects.get(project_id)
        if project is None:
            project = self.projects[project_id] = KnownProject()
            while len(self.projects) > 4 * self.max_active:
                self.projects.popitem(last=False)
        else:
            self.projects.move_to_end(project_id)
        name, path = _project_name(data), _project_path(data)
        if name is not None:
            project.name = name
        if path is not None:
            project.path = path
        activity = _last_activity(type_, data, timestamp_ms)
        if activity is not None and (project.last_activity is None or activity > project.last_activity):
            project.last_activity = activity

    def _touch(
        self, conversation_id: str, route: ConversationRoute, data: dict[str, Any], timestamp_ms: float
    ) -> Conversation:
        conversation = self.active.get(conversation_id)
        if conversation is None:
            conversation = Conversation(
                conversation_id=conversation_id,
                session_id=route.session_id,
                project_id=route.project_id,
                project_name=None,
                start_time=timestamp_ms,
                last_activity=timestamp_ms,
            )
            self.active[conversation_id] = conversation
            while len(self.active) > self.max_active:
                self.active.popitem(last=False)
        else:
            self.active.move_to_end(conversation_id)
        conversation.last_activity = max(conversation.last_activity, timestamp_ms)
        if conversation.session_id is None:
            conversation.session_id = route.session_id
        if conversation.project_id is None:
            conversation.project_id = route.project_id
        name = data.get("projectName")
        if isinstance(name, str):
            conversation.project_name = name[:256]
        elif conversation.project_name is None and conversation.project_id is not None:
            conversation.project_name = self.project_name(conversation.project_id)
        return conversation

    def _count(
        self,
        project_id: int | None,
        timestamp_ms: float,
        now_ms: float,
        messages: int = 0,
        conversations: int = 0,
        tool_uses: int = 0,
    ) -> None:
        """Count activity in the bucket of the event's time, kept within the retention window.

        Producers' clocks are not ours: an event from the future counts now, and one older than the
        retention is not counted at all, so neither can grow a project past its window.
        """
        if project_id is None or timestamp_ms < now_ms - self.retention_ms:
            return
        moment = min(timestamp_ms, now_ms)
        activity = self._activity.setdefault(project_id, _ProjectActivity())
        bucket_start = int(moment) // self.bucket_ms * self.bucket_ms
        counts = activity.buckets.get(bucket_start)
        if counts is None:
            counts = activity.buckets[bucket_start] = ActivityCounts()
        counts.messages += messages
        counts.conversations += conversations
        counts.tool_uses += tool_uses

    def _sweep(self, now_ms: float) -> None:
        """Drop buckets past the retention, and projects left with none, once per bucket width."""
        current = int(now_ms) // self.bucket_ms
        if current == self._swept_bucket:
            return
        self._swept_bucket = current
        horizon = now_ms - self.retention_ms - self.bucket_ms
        for project_id in list(self._activity):
            buckets = self._activity[project_id].buckets
            for start in [start for start in buckets if start < horizon]:
                del buckets[start]
            if not buckets:
                del self._activity[project_id]

    def active_conversations(
        self, project_id: int | None, limit: int, within: frozenset[int] | None = None
    ) -> dict[str, Any]:
        """Most recently active first; ``within`` restricts to those projects (a scoped token)."""
        selected = [
            c
            for c in reversed(self.active.values())
            if (project_id is None or c.project_id == project_id)
            and (within is None or c.project_id in within)
        ]
        return {
            "conversations": [c.to_json() for c in selected[:limit]],
            "total": len(selected),
            "projectId": project_id,
        }

    def project_name(self, project_id: int) -> str | None:
        project = self.projects.get(project_id)
        return None if project is None else project.name

    def known_projects(self, limit: int, within: frozenset[int] | None = None) -> dict[str, Any]:
        """Most recently active first (projects with no known activity last)."""
        active = Counter(c.project_id for c in self.active.values())
        selected = [
            (project_id, project)
            for project_id, project in reversed(self.projects.items())
            if within is None or project_id in within
        ]
        selected.sort(key=lambda item: -(item[1].last_activity or 0))
        return {
            "projects": [
                {
                    "projectId": project_id,
                    "projectName": project.name,
                    "projectPath": project.path,
                    "lastActivity": project.last_activity,
                    "activeConversations": active[project_id],
                }
                for project_id, project in selected[:limit]
            ],
            "total": len(selected),
        }

    def project_activity(
        self, project_id: int, start: float | None, end: float | None, now_ms: float
    ) -> dict[str, Any]:
        end = int(now_ms) if end is None else end
        # Expired buckets are swept only when events arrive: a quiet server may still hold some, and
        # they must not be reported.
        horizon = int(max(now_ms - self.retention_ms, 0))
        start = horizon if start is None else max(start, horizon)
        activity = self._activity.get(project_id)
        totals = ActivityCounts()
        buckets = []
        if activity is not None:
            for bucket_start in sorted(activity.buckets):
                if bucket_start + self.bucket_ms <= start or bucket_start > end:
                    continue
                counts = activity.buckets[bucket_start]
                totals.messages += counts.messages
                totals.conversations += counts.conversations
                totals.tool_uses += counts.tool_uses
                buckets.append({"start": bucket_start, **counts.to_json()})
        active = sum(1 for c in self.active.values() if c.project_id == project_id)
        return {
            "projectId": project_id,
            "projectName": self.project_name(project_id),
            "timeRange": {"start": start, "end": end},
            "bucketMs": self.bucket_ms,
            "totals": {**totals.to_json(), "activeConversations": active},
            "buckets": buckets,
        }


def _project_path(data: dict[str, Any]) -> str | None:
    for container in (data.get("projectInfo"), data.get("project")):
        if isinstance(container, dict) and isinstance(container.get("path"), str):
            return str(container["path"])[:1024]
    return None


def _last_activity(type_: str, data: dict[str, Any], timestamp_ms: float) -> float | None:
    """The moment an event says its project was last active: a message's or a conversation's own
    time, or the figure a project event carries; reports sent on a timer say nothing about it."""
    if type_ in ("message_added", "conversation_started"):
        return timestamp_ms
    if type_ == "project_discovered":
        value = data.get("lastActivity")
    elif type_ == "project_updated":
        changes = data.get("changes")
        value = changes.get("lastActivity") if isinstance(changes, dict) else None
    else:
        return None
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _project_name(data: dict[str, Any]) -> str | None:
    for container in (data.get("projectInfo"), data.get("project")):
        if isinstance(container, dict) and isinstance(container.get("name"), str):
            return str(container["name"])[:256]
    name = data.get("projectName")
    return name[:256] if isinstance(name, str) else None
