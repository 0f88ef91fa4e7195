"""The heartbeat decision: ping after the interval of silence, close when the pong is late."""

from __future__ import annotations

import pytest

from core.heartbeat import SEND_PING, Heartbeats
from core.protocol import CloseCode, Disconnect

BEATS = Heartbeats(interval=30.0, timeout=10.0)


@pytest.mark.parametrize(
    ("now", "last_heard", "ping_sent_at", "expected"),
    [
        (100.0, 100.0, None, None),  # just heard
        (129.9, 100.0, None, None),  # not yet silent for the interval
        (130.0, 100.0, None, SEND_PING),  # silent for exactly the interval
        (500.0, 100.0, None, SEND_PING),
        (135.0, 100.0, 130.0, None),  # pinged, the pong may still come
        (135.0, 134.0, 130.0, None),  # other traffic does not answer the ping, nor end the wait
    ],
)
def test_check(now: float, last_heard: float, ping_sent_at: float | None, expected: object) -> None:
    assert BEATS.check(now, last_heard, ping_sent_at) == expected


@pytest.mark.parametrize("late_by", [0.0, 0.1, 1000.0])
def test_a_pong_later_than_the_timeout_closes_with_1001(late_by: float) -> None:
    verdict = BEATS.check(140.0 + late_by, 139.0, 130.0)
    assert verdict == Disconnect(
        CloseCode.GOING_AWAY, "peer has not replied to ping/heartbeat request within 10.0 second(s)"
    )


@pytest.mark.parametrize(
    ("interval", "timeout", "every"), [(30.0, 10.0, 2.5), (0.3, 0.3, 0.075), (5.0, 20.0, 1.25)]
)
def test_the_sweep_is_a_quarter_of_the_shorter_span(interval: float, timeout: float, every: float) -> None:
    assert Heartbeats(interval, timeout).sweep_every == pytest.approx(every)
