"""The subscription index must agree with checking every subscription's filters one by one."""

from __future__ import annotations

import itertools
import random
from collections.abc import Collection, Iterable
from typing import Any

import pytest

from core.filters import FILTER_KINDS, SubscriptionFilters, parse_filters
from core.index import SubscriptionIndex
from core.routing import RoutingHeader
from tests.core.builders import header as h


def f(**kinds: Any) -> SubscriptionFilters:
    result = parse_filters(kinds, 1000)
    assert isinstance(result, SubscriptionFilters), result
    return result


def brute_force(subscriptions: Iterable[tuple[str, SubscriptionFilters]], header: RoutingHeader) -> set[str]:
    return {client for client, filters in subscriptions if filters.matches(header)}


def assert_same(result: Collection[str], expected: set[str]) -> None:
    as_list = list(result)
    assert len(as_list) == len(set(as_list)), f"duplicate recipients: {as_list}"
    assert set(as_list) == expected


def is_empty(index: SubscriptionIndex[Any]) -> bool:
    return (
        len(index) == 0
        and not index._groups
        and not index._unanchored
        and all(not bucket for bucket in index._buckets.values())
    )


SUBSCRIPTIONS: dict[str, SubscriptionFilters] = {
    "everything": f(),
    "project-1": f(projectIds=[1]),
    "project-1-or-2": f(projectIds=[1, 2]),
    "session-a": f(sessionIds=["a"]),
    "session-a-project-2": f(sessionIds=["a"], projectIds=[2]),
    "tools-bash-or-read": f(toolNames=["Bash", "Read"]),
    "tool-edit-project-1": f(toolNames=["Edit"], projectIds=[1]),
    "type-started": f(eventTypes=["conversation_started"]),
    "type-added-or-ended": f(eventTypes=["message_added", "conversation_ended"]),
    "user-or-assistant": f(messageTypes=["user", "assistant"]),
    "system-with-bash": f(messageTypes=["system"], toolNames=["Bash"]),
    "assistant-in-project-2": f(messageTypes=["assistant"], projectIds=[2], eventTypes=["message_added"]),
}

EVENTS: dict[str, RoutingHeader] = {
    "bare": h("other"),
    "started-p1-sa": h("conversation_started", 1, "a"),
    "started-p3": h("conversation_started", 3, "z"),
    "added-p1-user": h("message_added", 1, "b", ("user",)),
    "added-p2-assistant-bash-read": h("message_added", 2, "a", ("assistant",), ("Bash", "Read")),
    "added-p1-edit-bash": h("message_added", 1, "c", ("assistant",), ("Edit", "Bash")),
    "added-system-bash": h("message_added", None, None, ("system",), ("Bash",)),
    "added-system-read": h("message_added", 9, None, ("system",), ("Read",)),
    "ended-p2": h("conversation_ended", 2, "a"),
    "ended-no-route": h("conversation_ended"),
    "unknown-tool": h("message_added", 4, "q", (), ("Grep",)),
    "multi-message-types": h("message_added", 2, None, ("user", "assistant", "user"), ("Read", "Read")),
}


@pytest.mark.parametrize(
    ("sub_name", "event_name"),
    list(itertools.product(SUBSCRIPTIONS, EVENTS)),
    ids=[f"{s}~{e}" for s, e in itertools.product(SUBSCRIPTIONS, EVENTS)],
)
def test_single_subscription_matches_brute_force(sub_name: str, event_name: str) -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.subscribe("c", SUBSCRIPTIONS[sub_name])
    header = EVENTS[event_name]
    assert_same(index.match(header), brute_force([("c", SUBSCRIPTIONS[sub_name])], header))


# Clients hold several subscriptions each, some shared with other clients.
CLIENT_SUBSCRIPTIONS: list[tuple[str, str]] = [
    *((f"solo-{name}", name) for name in SUBSCRIPTIONS),
    ("multi", "project-1"),
    ("multi", "project-1-or-2"),
    ("multi", "tools-bash-or-read"),
    ("multi", "user-or-assistant"),
    ("twin", "project-1"),
    ("twin", "tools-bash-or-read"),
]


@pytest.mark.parametrize("event_name", list(EVENTS))
def test_all_subscriptions_together_match_brute_force(event_name: str) -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for client, name in CLIENT_SUBSCRIPTIONS:
        index.subscribe(client, SUBSCRIPTIONS[name])
    assert len(index) == len(SUBSCRIPTIONS)
    header = EVENTS[event_name]
    expected = brute_force(((c, SUBSCRIPTIONS[n]) for c, n in CLIENT_SUBSCRIPTIONS), header)
    assert_same(index.match(header), expected)


@pytest.mark.parametrize("event_name", list(EVENTS))
def test_matched_keys_are_the_matching_subscriptions_each_once(event_name: str) -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for client, name in CLIENT_SUBSCRIPTIONS:
        index.subscribe(client, SUBSCRIPTIONS[name])
    header = EVENTS[event_name]
    keys = index.match_keys(header)
    assert len(keys) == len(set(keys))
    assert set(keys) == {filters.key for filters in SUBSCRIPTIONS.values() if filters.matches(header)}


@pytest.mark.parametrize(
    ("event_name", "expected"),
    [
        ("bare", {"solo-everything"}),
        ("ended-no-route", {"solo-everything", "solo-type-added-or-ended"}),
        (
            "added-p2-assistant-bash-read",
            {
                "solo-everything",
                "solo-project-1-or-2",
                "solo-session-a",
                "solo-session-a-project-2",
                "solo-tools-bash-or-read",
                "solo-type-added-or-ended",
                "solo-user-or-assistant",
                "solo-assistant-in-project-2",
                "multi",
                "twin",
            },
        ),
    ],
)
def test_explicit_expectations(event_name: str, expected: set[str]) -> None:
    """A few hand-written answers, so the brute force is not the only oracle."""
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for client, name in CLIENT_SUBSCRIPTIONS:
        index.subscribe(client, SUBSCRIPTIONS[name])
    assert_same(index.match(EVENTS[event_name]), expected)


def test_client_with_several_matching_subscriptions_gets_event_once() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for filters in (f(), f(projectIds=[1]), f(toolNames=["A", "B"]), f(messageTypes=["user"])):
        index.subscribe("c", filters)
    result = index.match(h("message_added", 1, None, ("user",), ("A", "B")))
    assert list(result) == ["c"]


def test_group_anchored_on_multi_valued_kind_counted_once() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.subscribe("c1", f(toolNames=["A", "B"]))
    index.subscribe("c2", f(messageTypes=["user", "assistant"]))
    result = index.match(h(message_types=("user", "assistant"), tools=("A", "B")))
    assert sorted(result) == ["c1", "c2"]


def test_same_filters_share_one_group() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    key1 = index.subscribe("c1", f(projectIds=[2, 1]))
    key2 = index.subscribe("c2", f(projectIds=[1, 2, 1]))
    assert key1 == key2 == f(projectIds=[1, 2]).key
    assert len(index) == 1
    assert index.subscribe("c1", f(projectIds=[1, 2])) == key1
    assert len(index) == 1
    assert sorted(index.match(h(project=2))) == ["c1", "c2"]
    assert index.filters_of(key1) == f(projectIds=[1, 2])
    assert index.filters_of("sub_missing") is None


@pytest.mark.parametrize(
    "filters",
    [
        f(),
        f(projectIds=[1, 2]),
        f(sessionIds=["s"], toolNames=["T"]),
        f(toolNames=["A", "B"]),
        f(messageTypes=["user"]),
    ],
    ids=["unanchored", "projects", "session-anchor", "tools", "message-types"],
)
def test_unsubscribe_removes_group_and_buckets(filters: SubscriptionFilters) -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    key = index.subscribe("c1", filters)
    index.subscribe("c2", filters)
    assert index.unsubscribe("c1", key) is True
    assert len(index) == 1
    assert index.unsubscribe("c1", key) is False
    assert index.unsubscribe("c2", key) is True
    assert is_empty(index)
    assert index.filters_of(key) is None
    assert list(index.match(h("x", 1, "s", ("user",), ("A", "B", "T")))) == []


def test_unsubscribe_keeps_other_groups_in_shared_bucket() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    k1 = index.subscribe("c1", f(projectIds=[1]))
    index.subscribe("c2", f(projectIds=[1], eventTypes=["x"]))
    assert index.unsubscribe("c1", k1)
    assert list(index.match(h("x", 1))) == ["c2"]
    assert list(index._buckets["projectIds"]) == [1]


@pytest.mark.parametrize(
    ("client", "key"),
    [("ghost", "known"), ("c1", "sub_0000000000000000"), ("c1", "")],
    ids=["unknown-client", "unknown-key", "empty-key"],
)
def test_unsubscribe_unknown_returns_false(client: str, key: str) -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    known = index.subscribe("c1", f(projectIds=[1]))
    assert index.unsubscribe(client, known if key == "known" else key) is False
    assert len(index) == 1
    assert list(index.match(h(project=1))) == ["c1"]


@pytest.mark.parametrize("groups", [1, 2], ids=["one-group", "several-groups"])
def test_recipients_snapshot_survives_removal_during_iteration(groups: int) -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    keys = [index.subscribe(c, f(projectIds=[1])) for c in ("a", "b", "c", "d")]
    if groups == 2:
        index.subscribe("e", f())
    expected = {"a", "b", "c", "d"} | ({"e"} if groups == 2 else set())
    recipients = index.match(h(project=1))
    seen = []
    for client in recipients:
        seen.append(client)
        for other in ("a", "b", "c", "d"):
            index.unsubscribe(other, keys[0])
    assert sorted(seen) == sorted(expected)
    assert set(recipients) == expected
    assert list(index.match(h(project=1))) == (["e"] if groups == 2 else [])


def test_recipients_reflect_later_subscribe() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.subscribe("a", f(projectIds=[1]))
    assert list(index.match(h(project=1))) == ["a"]
    index.subscribe("b", f(projectIds=[1]))
    assert sorted(index.match(h(project=1))) == ["a", "b"]


POOLS: dict[str, list[Any]] = {
    "projectIds": [1, 2, 3, 4],
    "sessionIds": ["s1", "s2", "s3"],
    "eventTypes": ["conversation_started", "message_added", "conversation_ended", "other"],
    "messageTypes": ["user", "assistant", "system"],
    "toolNames": ["Bash", "Read", "Edit", "Grep", "Write"],
}


def random_filters(rng: random.Random) -> SubscriptionFilters:
    kinds: dict[str, list[Any]] = {}
    for kind in FILTER_KINDS:
        if rng.random() < 0.3:
            kinds[kind] = rng.sample(POOLS[kind], rng.randint(1, 3))
    return f(**kinds)


def random_header(rng: random.Random) -> RoutingHeader:
    def maybe(pool: list[Any]) -> Any:
        return rng.choice(pool) if rng.random() < 0.8 else None

    return RoutingHeader(
        rng.randint(1, 10**6),
        "epoch",
        rng.choice(POOLS["eventTypes"]),
        maybe(POOLS["projectIds"]),
        maybe(POOLS["sessionIds"]),
        tuple(rng.sample(POOLS["messageTypes"], rng.randint(0, 2))),
        tuple(rng.sample(POOLS["toolNames"], rng.randint(0, 3))),
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 12345])
def test_random_index_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    index: SubscriptionIndex[int] = SubscriptionIndex()
    subscriptions: list[tuple[int, SubscriptionFilters]] = []
    for _ in range(300):
        client, filters = rng.randrange(60), random_filters(rng)
        index.subscribe(client, filters)
        if (client, filters) not in subscriptions:
            subscriptions.append((client, filters))
    events = [random_header(rng) for _ in range(300)]
    matched_any = 0
    for header in events:
        expected = {c for c, flt in subscriptions if flt.matches(header)}
        result = index.match(header)
        assert len(list(result)) == len(expected)
        assert set(result) == expected, header
        matched_any += bool(expected)
    assert matched_any > 100  # the pools are small enough for the test to mean something

    # Drop half the subscriptions and compare again, then drop the rest: nothing may remain.
    rng.shuffle(subscriptions)
    half = len(subscriptions) // 2
    for client, filters in subscriptions[:half]:
        assert index.unsubscribe(client, filters.key)
    for header in events:
        expected = {c for c, flt in subscriptions[half:] if flt.matches(header)}
        assert set(index.match(header)) == expected
        assert len(list(index.match(header))) == len(expected)
    for client, filters in subscriptions[half:]:
        assert index.unsubscribe(client, filters.key)
    assert is_empty(index)
