"""Token bucket: a burst of ``capacity``, then ``rate`` per second; time is passed in."""

from __future__ import annotations

import pytest

from core.protocol import CloseCode, Disconnect
from core.ratelimit import MessageLimiter, Throttled, TokenBucket


def test_burst_then_refusal() -> None:
    bucket = TokenBucket(rate=1.0, capacity=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(100.5) is False


def test_refill_over_time() -> None:
    bucket = TokenBucket(rate=2.0, capacity=2, now=0.0)
    assert bucket.take(0.0) and bucket.take(0.0)
    assert not bucket.take(0.0)
    assert not bucket.take(0.25)
    assert bucket.take(0.5)
    assert not bucket.take(0.5)
    assert bucket.take(1.5) and bucket.take(1.5)
    assert not bucket.take(1.5)


def test_refill_is_capped_at_capacity() -> None:
    bucket = TokenBucket(rate=10.0, capacity=3, now=0.0)
    results = [bucket.take(1000.0) for _ in range(5)]
    assert results == [True, True, True, False, False]


def test_time_going_backwards_adds_nothing() -> None:
    bucket = TokenBucket(rate=1.0, capacity=1, now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


@pytest.mark.parametrize(
    ("now", "expected"),
    [(0.0, 0.5), (0.25, 0.25), (0.5, 0.0), (3.0, 0.0)],
    ids=["empty", "half-refilled", "exactly-refilled", "long-after"],
)
def test_retry_after(now: float, expected: float) -> None:
    bucket = TokenBucket(rate=2.0, capacity=1, now=0.0)
    assert bucket.take(0.0)
    assert bucket.retry_after(now) == pytest.approx(expected)


def test_retry_after_is_zero_with_tokens_left() -> None:
    bucket = TokenBucket(rate=1.0, capacity=2, now=0.0)
    assert bucket.take(0.0)
    assert bucket.retry_after(0.0) == 0.0


def test_message_limiter_allows_the_burst_then_throttles_with_a_retry_time() -> None:
    limiter = MessageLimiter(per_minute=60, burst=5, now=0.0)
    assert [limiter.admit(0.0) for _ in range(5)] == [None] * 5
    throttled = limiter.admit(0.0)
    assert isinstance(throttled, Throttled) and throttled.retry_after == pytest.approx(1.0)
    assert limiter.admit(1.0) is None  # one token back after a second at 60/min


def test_message_limiter_disconnects_a_client_that_keeps_going_at_ten_times_the_rate() -> None:
    limiter = MessageLimiter(per_minute=60, burst=5, now=0.0)
    outcomes = [limiter.admit(i * 0.01) for i in range(200)]  # 100/s, far above 1/s
    assert Disconnect(CloseCode.POLICY_VIOLATION, "message rate limit abused") in outcomes
    first = outcomes.index(Disconnect(CloseCode.POLICY_VIOLATION, "message rate limit abused"))
    assert first > 5 + 50  # the burst, then ten times the burst of refusals, roughly


def test_message_limiter_never_disconnects_a_client_at_its_limit() -> None:
    limiter = MessageLimiter(per_minute=60, burst=5, now=0.0)
    outcomes = [limiter.admit(i * 0.5) for i in range(400)]  # 2/s: throttled half the time, for minutes
    assert not any(isinstance(o, Disconnect) for o in outcomes)
