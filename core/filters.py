"""Subscription filters: validation, canonical form, subscription keys and matching.

Kinds combine with AND, the values of one kind with OR. An empty or absent kind does not restrict.
An event that lacks the field a kind names does not match that kind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from core.routing import RoutingHeader

MESSAGE_TYPES = frozenset({"user", "assistant", "system"})
MAX_STRING_VALUE = 256

# Order matters: the subscription index anchors a subscription on the first kind it names, so the
# kinds that split events most finely come first.
FILTER_KINDS = ("sessionIds", "projectIds", "toolNames", "eventTypes", "messageTypes")


@dataclass(frozen=True, slots=True)
class SubscriptionFilters:
    projectIds: frozenset[int] = frozenset()
    eventTypes: frozenset[str] = frozenset()
    sessionIds: frozenset[str] = frozenset()
    messageTypes: frozenset[str] = frozenset()
    toolNames: frozenset[str] = frozenset()

    def kinds(self) -> dict[str, frozenset[Any]]:
        """The kinds this subscription restricts, in anchoring order."""
        return {kind: getattr(self, kind) for kind in FILTER_KINDS if getattr(self, kind)}

    def to_json(self) -> dict[str, list[Any]]:
        """Canonical form: sorted values, restricting kinds only."""
        return {kind: sorted(values) for kind, values in self.kinds().items()}

    @property
    def key(self) -> str:
        """Same filters, same key, on every worker: a client can unsubscribe by either."""
        canonical = orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS)
        return "sub_" + hashlib.blake2b(canonical, digest_size=8).hexdigest()

    def matches(self, header: RoutingHeader) -> bool:
        if self.eventTypes and header.type not in self.eventTypes:
            return False
        if self.projectIds and header.project_id not in self.projectIds:
            return False
        if self.sessionIds and header.session_id not in self.sessionIds:
            return False
        if self.messageTypes and self.messageTypes.isdisjoint(header.message_types):
            return False
        return not (self.toolNames and self.toolNames.isdisjoint(header.tool_names))


@dataclass(frozen=True, slots=True)
class FilterError:
    """Why a filter object was refused; sent to the client as ``subscription_error``."""

    code: str
    message: str


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string_ok(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_STRING_VALUE


def parse_filters(raw: Any, max_values: int) -> SubscriptionFilters | FilterError:
    """Validate a client's ``filters`` object; never raises on bad input."""
    if raw is None:
        return SubscriptionFilters()
    if not isinstance(raw, Mapping):
        return FilterError("INVALID_FILTERS", "filters must be an object")
    unknown = sorted(set(raw) - set(FILTER_KINDS))
    if unknown:
        return FilterError(
            "INVALID_FILTERS",
            f"unknown filter name(s): {', '.join(unknown)[:200]}; known: {', '.join(FILTER_KINDS)}",
        )
    parsed: dict[str, frozenset[Any]] = {}
    for kind, values in raw.items():
        if values is None:
            continue
        if not isinstance(values, list):
            return FilterError("INVALID_FILTERS", f"{kind} must be an array")
        if len(values) > max_values:
            return FilterError("INVALID_FILTERS", f"{kind} has {len(values)} values; at most {max_values}")
        if kind == "projectIds":
            if not all(_is_int(v) for v in values):
                return FilterError("INVALID_FILTERS", "projectIds must hold integers")
        elif not all(_string_ok(v) for v in values):
            return FilterError(
                "INVALID_FILTERS", f"{kind} must hold non-empty strings of at most {MAX_STRING_VALUE} chars"
            )
        elif kind == "messageTypes" and not MESSAGE_TYPES.issuperset(values):
            return FilterError("INVALID_FILTERS", "messageTypes values must be user, assistant or system")
        parsed[kind] = frozenset(values)
    return SubscriptionFilters(**parsed)
