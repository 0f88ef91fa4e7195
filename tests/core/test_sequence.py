"""Bus order on a worker: deliver in order, hold and repair holes, drop duplicates, new epochs."""

from __future__ import annotations

import random

import pytest

from core.routing import RoutingHeader
from core.sequence import MAX_HELD, BusOrder, Deliver, Event, Lost, NewEpoch, Repair


def ev(seq: int, epoch: str = "e1") -> Event:
    return RoutingHeader(seq, epoch, "t", None, None, (), ()), b"%d" % seq


def delivered(actions: list[object]) -> list[int]:
    return [e[0].seq for a in actions if isinstance(a, Deliver) for e in a.events]


def started(order: BusOrder, first: int = 1) -> BusOrder:
    actions = order.on_event(*ev(first))
    assert actions[0] == NewEpoch("e1", None) and delivered(actions) == [first]
    return order


def test_a_fresh_worker_starts_from_the_first_event_it_sees() -> None:
    order = BusOrder()
    actions = order.on_event(*ev(41))
    assert actions == [NewEpoch("e1", None), Deliver([ev(41)])]
    assert delivered(order.on_event(*ev(42))) == [42]


def test_duplicates_are_dropped() -> None:
    order = started(BusOrder())
    assert order.on_event(*ev(1)) == []


def test_a_hole_holds_newer_events_until_history_fills_it() -> None:
    order = started(BusOrder())
    assert order.on_event(*ev(4)) == [Repair(2, 3)]
    assert order.on_event(*ev(5)) == []  # held behind the hole
    assert delivered(order.on_repaired([ev(2), ev(3)])) == [2, 3, 4, 5]
    assert delivered(order.on_event(*ev(6))) == [6]


def test_what_history_cannot_fill_is_reported_lost_and_the_rest_flows() -> None:
    order = started(BusOrder())
    order.on_event(*ev(5))
    actions = order.on_repaired([ev(3)])
    assert Lost(2, 2) in actions and Lost(4, 4) in actions
    assert delivered(actions) == [3, 5]


def test_no_answer_at_all_loses_the_hole_only() -> None:
    order = started(BusOrder())
    order.on_event(*ev(3))
    actions = order.on_repaired([])
    assert actions == [Lost(2, 2), Deliver([ev(3)])]


def test_a_second_hole_among_the_held_events_is_repaired_next() -> None:
    order = started(BusOrder())
    order.on_event(*ev(3))
    order.on_event(*ev(6))
    actions = order.on_repaired([ev(2)])
    assert delivered(actions) == [2, 3] and actions[-1] == Repair(4, 5)
    assert delivered(order.on_repaired([ev(4), ev(5)])) == [4, 5, 6]


def test_the_beat_reveals_a_lost_last_event() -> None:
    order = started(BusOrder())
    assert order.on_beat("e1", 1) == []
    assert order.on_beat("e1", 3) == [Repair(2, 3)]
    assert delivered(order.on_repaired([ev(2), ev(3)])) == [2, 3]


def test_a_new_epoch_restarts_from_one_and_repairs_its_beginning() -> None:
    order = started(BusOrder(), first=10)
    actions = order.on_event(*ev(3, epoch="e2"))
    assert actions[0] == NewEpoch("e2", "e1") and actions[1] == Repair(1, 2)
    assert delivered(order.on_repaired([ev(1, "e2"), ev(2, "e2")])) == [1, 2, 3]


def test_a_fresh_worker_hearing_a_beat_first_owes_nothing_before_it() -> None:
    order = BusOrder()
    assert order.on_beat("e1", 50) == [NewEpoch("e1", None)]
    assert delivered(order.on_event(*ev(51))) == [51]


@pytest.mark.parametrize("seed", range(6))
def test_any_mix_of_drops_duplicates_and_reorders_delivers_each_seq_once_in_order(seed: int) -> None:
    rng = random.Random(seed)
    stream = list(range(1, 400))
    arrivals = [s for s in stream if rng.random() > 0.2]  # 20% dropped by the bus
    arrivals += rng.sample(arrivals, 30)  # duplicates, arriving late
    order = started(BusOrder())
    out = [1]
    for seq in arrivals:
        actions = order.on_event(*ev(seq))
        out += delivered(actions)
        while order.repairing is not None:  # history holds everything: answer every repair
            wanted = order.repairing
            out += delivered(order.on_repaired([ev(s) for s in range(wanted.first, wanted.last + 1)]))
    actions = order.on_beat("e1", 399)
    while order.repairing is not None:
        wanted = order.repairing
        out += delivered(actions + order.on_repaired([ev(s) for s in range(wanted.first, wanted.last + 1)]))
        actions = []
    assert out == stream


def test_a_long_hole_is_repaired_page_by_page_and_nothing_is_lost() -> None:
    order = started(BusOrder())
    assert order.on_event(*ev(10)) == [Repair(2, 9)]
    first_page = order.on_repaired([ev(s) for s in range(2, 6)], more=True)
    assert delivered(first_page) == [2, 3, 4, 5] and first_page[-1] == Repair(6, 9)
    assert not any(isinstance(a, Lost) for a in first_page)
    assert delivered(order.on_repaired([ev(s) for s in range(6, 10)])) == [6, 7, 8, 9, 10]


def test_too_much_held_behind_a_hole_gives_the_hole_up() -> None:
    order = started(BusOrder())
    order.on_event(*ev(3))
    actions: list[object] = []
    for seq in range(4, 4 + MAX_HELD):
        actions += order.on_event(*ev(seq))
    assert Lost(2, 2) in actions and order.repairing is None
    assert delivered(actions) == list(range(3, 4 + MAX_HELD))
