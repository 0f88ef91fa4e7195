"""Subscription filters: validation, canonical form, keys, and the AND-of-ORs matching rule."""

from __future__ import annotations

from typing import Any

import pytest

from core.filters import MAX_STRING_VALUE, FilterError, SubscriptionFilters, parse_filters
from core.routing import RoutingHeader
from tests.core.builders import header

MAX = 5


def parsed(raw: Any) -> SubscriptionFilters:
    result = parse_filters(raw, MAX)
    assert isinstance(result, SubscriptionFilters), result
    return result


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, SubscriptionFilters()),
        (None, SubscriptionFilters()),
        ({"projectIds": [1, 2]}, SubscriptionFilters(projectIds=frozenset({1, 2}))),
        ({"projectIds": [0, -3, 2**63]}, SubscriptionFilters(projectIds=frozenset({0, -3, 2**63}))),
        ({"eventTypes": ["a", "a", "b"]}, SubscriptionFilters(eventTypes=frozenset({"a", "b"}))),
        ({"sessionIds": ["s" * MAX_STRING_VALUE]}, SubscriptionFilters(sessionIds=frozenset({"s" * 256}))),
        (
            {"messageTypes": ["user", "assistant", "system"]},
            SubscriptionFilters(messageTypes=frozenset({"user", "assistant", "system"})),
        ),
        ({"toolNames": ["Bash", "Read"]}, SubscriptionFilters(toolNames=frozenset({"Bash", "Read"}))),
        (
            {"toolNames": ["t1", "t2", "t3", "t4", "t5"]},
            SubscriptionFilters(toolNames=frozenset({"t1", "t2", "t3", "t4", "t5"})),
        ),
        ({"eventTypes": None, "projectIds": []}, SubscriptionFilters()),
        (
            {
                "projectIds": [7],
                "eventTypes": ["x"],
                "sessionIds": ["s"],
                "messageTypes": ["user"],
                "toolNames": ["T"],
            },
            SubscriptionFilters(
                projectIds=frozenset({7}),
                eventTypes=frozenset({"x"}),
                sessionIds=frozenset({"s"}),
                messageTypes=frozenset({"user"}),
                toolNames=frozenset({"T"}),
            ),
        ),
    ],
    ids=[
        "empty",
        "none",
        "project-ids",
        "project-id-edges",
        "duplicates-collapse",
        "longest-string",
        "all-message-types",
        "tool-names",
        "exactly-max-values",
        "null-and-empty-unrestricted",
        "every-kind",
    ],
)
def test_parse_valid(raw: Any, expected: SubscriptionFilters) -> None:
    assert parse_filters(raw, MAX) == expected


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ([], "object"),
        ("projectIds", "object"),
        (1, "object"),
        (True, "object"),
        ({"projectId": [1]}, "projectId"),
        ({"bogus": [], "eventTypes": ["x"]}, "bogus"),
        ({"eventTypes": "x"}, "eventTypes"),
        ({"projectIds": 1}, "projectIds"),
        ({"toolNames": {"Bash": True}}, "toolNames"),
        ({"sessionIds": ["a", "b", "c", "d", "e", "f"]}, "at most 5"),
        ({"projectIds": ["1"]}, "integers"),
        ({"projectIds": [True]}, "integers"),
        ({"projectIds": [1, False]}, "integers"),
        ({"projectIds": [1.0]}, "integers"),
        ({"projectIds": [None]}, "integers"),
        ({"eventTypes": [""]}, "non-empty"),
        ({"eventTypes": ["x" * (MAX_STRING_VALUE + 1)]}, "non-empty"),
        ({"sessionIds": [1]}, "sessionIds"),
        ({"toolNames": [None]}, "toolNames"),
        ({"toolNames": [["Bash"]]}, "toolNames"),
        ({"messageTypes": ["tool"]}, "messageTypes"),
        ({"messageTypes": ["User"]}, "messageTypes"),
        ({"messageTypes": [1]}, "messageTypes"),
    ],
    ids=[
        "list",
        "string",
        "int",
        "bool",
        "unknown-kind-singular",
        "unknown-kind-beside-known",
        "values-string",
        "values-int",
        "values-object",
        "too-many-values",
        "project-id-string",
        "project-id-bool",
        "project-id-bool-among-ints",
        "project-id-float",
        "project-id-null",
        "empty-string",
        "too-long-string",
        "session-id-int",
        "tool-name-null",
        "tool-name-list",
        "message-type-unknown",
        "message-type-case",
        "message-type-int",
    ],
)
def test_parse_invalid_returns_error(raw: Any, needle: str) -> None:
    result = parse_filters(raw, MAX)
    assert isinstance(result, FilterError)
    assert result.code == "INVALID_FILTERS"
    assert needle in result.message


def test_unknown_kind_message_is_bounded() -> None:
    result = parse_filters({"x" * 5000: []}, MAX)
    assert isinstance(result, FilterError)
    assert len(result.message) < 400


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"projectIds": [1, 2]}, {"projectIds": [2, 1]}),
        ({"projectIds": [1, 2]}, {"projectIds": [2, 1, 2, 1]}),
        ({"eventTypes": ["a"], "projectIds": [3]}, {"projectIds": [3], "eventTypes": ["a"]}),
        ({}, {"eventTypes": [], "toolNames": None}),
        ({}, None),
        (
            {"toolNames": ["b", "a"], "messageTypes": ["user"]},
            {"messageTypes": ["user", "user"], "toolNames": ["a", "b"]},
        ),
    ],
    ids=["value-order", "duplicates", "kind-order", "empty-kinds", "none-vs-empty", "mixed"],
)
def test_same_filters_same_key(first: Any, second: Any) -> None:
    assert parsed(first).key == parsed(second).key


def test_key_shape_and_stability() -> None:
    key = parsed({"projectIds": [1]}).key
    assert key.startswith("sub_")
    assert len(key) == 4 + 16
    int(key[4:], 16)
    assert key == SubscriptionFilters(projectIds=frozenset({1})).key


def test_different_filters_different_keys() -> None:
    variants = [
        {},
        {"projectIds": [1]},
        {"projectIds": [2]},
        {"projectIds": [1, 2]},
        {"sessionIds": ["1"]},
        {"eventTypes": ["1"]},
        {"toolNames": ["1"]},
        {"eventTypes": ["a", "b"]},
        {"eventTypes": ["ab"]},
        {"eventTypes": ["a"], "toolNames": ["b"]},
        {"eventTypes": ["b"], "toolNames": ["a"]},
        {"messageTypes": ["user"]},
        {"messageTypes": ["user", "system"]},
    ]
    keys = [parsed(v).key for v in variants]
    assert len(set(keys)) == len(keys)


def test_to_json_is_canonical() -> None:
    filters = parsed({"toolNames": ["b", "a"], "projectIds": [3, 1, 2], "sessionIds": [], "eventTypes": None})
    assert filters.to_json() == {"projectIds": [1, 2, 3], "toolNames": ["a", "b"]}
    assert list(filters.to_json()) == ["projectIds", "toolNames"]
    assert SubscriptionFilters().to_json() == {}
    assert parse_filters(filters.to_json(), MAX) == filters


@pytest.mark.parametrize(
    ("raw", "event", "expected"),
    [
        ({}, header(), True),
        ({}, header("anything", 5, "s", ("user",), ("Bash",)), True),
        ({"projectIds": [1, 2]}, header(project=2), True),
        ({"projectIds": [1, 2]}, header(project=3), False),
        ({"projectIds": [1]}, header(project=None), False),
        ({"sessionIds": ["s1"]}, header(session="s1"), True),
        ({"sessionIds": ["s1"]}, header(session=None), False),
        ({"eventTypes": ["a", "b"]}, header("b"), True),
        ({"eventTypes": ["a", "b"]}, header("c"), False),
        ({"messageTypes": ["user"]}, header(message_types=("user",)), True),
        ({"messageTypes": ["user"]}, header(message_types=("assistant",)), False),
        ({"messageTypes": ["user"]}, header(message_types=()), False),
        ({"toolNames": ["Bash", "Edit"]}, header(tools=("Read", "Edit")), True),
        ({"toolNames": ["Bash"]}, header(tools=("Read",)), False),
        ({"toolNames": ["Bash"]}, header(tools=()), False),
        ({"projectIds": [1], "eventTypes": ["a"]}, header("a", 1), True),
        ({"projectIds": [1], "eventTypes": ["a"]}, header("b", 1), False),
        ({"projectIds": [1], "eventTypes": ["a"]}, header("a", 2), False),
        (
            {
                "projectIds": [1, 2],
                "sessionIds": ["s"],
                "toolNames": ["T", "U"],
                "messageTypes": ["user", "system"],
            },
            header("x", 2, "s", ("system",), ("U",)),
            True,
        ),
        (
            {
                "projectIds": [1, 2],
                "sessionIds": ["s"],
                "toolNames": ["T", "U"],
                "messageTypes": ["user", "system"],
            },
            header("x", 2, "s", ("system",), ()),
            False,
        ),
    ],
    ids=[
        "empty-matches-bare",
        "empty-matches-full",
        "project-or-hit",
        "project-miss",
        "project-absent",
        "session-hit",
        "session-absent",
        "event-type-or-hit",
        "event-type-miss",
        "message-type-hit",
        "message-type-miss",
        "message-type-absent",
        "tool-any-of-many",
        "tool-miss",
        "tool-absent",
        "and-both-hit",
        "and-type-miss",
        "and-project-miss",
        "all-kinds-hit",
        "all-kinds-tool-absent",
    ],
)
def test_matches(raw: Any, event: RoutingHeader, expected: bool) -> None:
    assert parsed(raw).matches(event) is expected
