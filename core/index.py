"""The subscription index: which clients an event goes to, without scanning those that cannot match.

Clients with identical filters share one *group*, so a thousand dashboards watching the same
project cost one filter check per event, not a thousand. Each group is filed under one *anchor*:
the first kind its filters name (in ``FILTER_KINDS`` order) and each value of that kind. An event
looks up only the buckets of its own type, project, session, message types and tool names, plus
the groups with no filter at all; only those candidates are checked against the full filters.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable
from typing import Any, Generic, TypeVar

from core.filters import FILTER_KINDS, SubscriptionFilters
from core.routing import RoutingHeader

ClientT = TypeVar("ClientT", bound=Hashable)


class _Group(Generic[ClientT]):
    __slots__ = ("anchor", "filters", "key", "members", "snapshot")

    def __init__(self, key: str, filters: SubscriptionFilters) -> None:
        self.key = key
        self.filters = filters
        kinds = filters.kinds()
        self.anchor: tuple[str, frozenset[Any]] | None = next(iter(kinds.items()), None)
        self.members: set[ClientT] = set()
        # A broadcast iterates this immutable copy, so a client removed mid-broadcast (closed as a
        # slow consumer, say) cannot break the iteration, and steady state pays no copy.
        self.snapshot: tuple[ClientT, ...] | None = None

    def recipients(self) -> tuple[ClientT, ...]:
        if self.snapshot is None:
            self.snapshot = tuple(self.members)
        return self.snapshot


class SubscriptionIndex(Generic[ClientT]):
    def __init__(self) -> None:
        self._groups: dict[str, _Group[ClientT]] = {}
        self._unanchored: dict[str, _Group[ClientT]] = {}
        self._buckets: dict[str, dict[Any, dict[str, _Group[ClientT]]]] = {k: {} for k in FILTER_KINDS}

    def __len__(self) -> int:
        """Number of distinct subscriptions (groups)."""
        return len(self._groups)

    def subscribe(self, client: ClientT, filters: SubscriptionFilters) -> str:
        key = filters.key
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(key, filters)
            self._file(group)
        if client not in group.members:
            group.members.add(client)
            group.snapshot = None
        return key

    def unsubscribe(self, client: ClientT, key: str) -> bool:
        group = self._groups.get(key)
        if group is None or client not in group.members:
            return False
        group.members.discard(client)
        group.snapshot = None
        if not group.members:
            del self._groups[key]
            self._unfile(group)
        return True

    def filters_of(self, key: str) -> SubscriptionFilters | None:
        group = self._groups.get(key)
        return None if group is None else group.filters

    def match(self, header: RoutingHeader) -> Collection[ClientT]:
        """The clients the event goes to, each once."""
        matched = self._matching(header)
        if not matched:
            return ()
        if len(matched) == 1:
            return matched[0].recipients()
        recipients: set[ClientT] = set()
        for group in matched:
            recipients.update(group.members)
        return recipients

    def match_keys(self, header: RoutingHeader) -> list[str]:
        """The keys of the subscriptions the event matches, each once."""
        return [group.key for group in self._matching(header)]

    def _matching(self, header: RoutingHeader) -> list[_Group[ClientT]]:
        matched: list[_Group[ClientT]] = [g for g in self._unanchored.values() if g.filters.matches(header)]
        buckets = self._buckets
        self._collect(matched, buckets["sessionIds"], header.session_id, header)
        self._collect(matched, buckets["projectIds"], header.project_id, header)
        for tool in header.tool_names:
            self._collect(matched, buckets["toolNames"], tool, header)
        self._collect(matched, buckets["eventTypes"], header.type, header)
        for message_type in header.message_types:
            self._collect(matched, buckets["messageTypes"], message_type, header)
        return matched

    @staticmethod
    def _collect(
        matched: list[_Group[ClientT]],
        bucket: dict[Any, dict[str, _Group[ClientT]]],
        value: Any,
        header: RoutingHeader,
    ) -> None:
        if value is None:
            return
        groups = bucket.get(value)
        if groups:
            for group in groups.values():
                # A group anchored on a multi-valued kind can be reached through two of the event's
                # values (two tool names); it must still be counted once.
                if group.filters.matches(header) and group not in matched:
                    matched.append(group)

    def _file(self, group: _Group[ClientT]) -> None:
        if group.anchor is None:
            self._unanchored[group.key] = group
            return
        kind, values = group.anchor
        for value in values:
            self._buckets[kind].setdefault(value, {})[group.key] = group

    def _unfile(self, group: _Group[ClientT]) -> None:
        if group.anchor is None:
            del self._unanchored[group.key]
            return
        kind, values = group.anchor
        bucket = self._buckets[kind]
        for value in values:
            groups = bucket[value]
            del groups[group.key]
            if not groups:
                del bucket[value]
