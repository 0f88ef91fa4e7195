"""Token buckets: per-client message limits and rate-limited logging."""

from __future__ import annotations

from dataclasses import dataclass

from core.protocol import CloseCode, Disconnect


class TokenBucket:
    """``capacity`` tokens at most, refilled at ``rate`` tokens per second; time is passed in."""

    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def retry_after(self, now: float) -> float:
        """Seconds until one token is available again."""
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate


ABUSE_FACTOR = 10


class MessageLimiter:
    """A client's message budget, and the point where refusing is no longer enough.

    Messages beyond the budget are refused with a retry time. A client that keeps going at
    ``ABUSE_FACTOR`` times its rate drains a second, larger bucket too, and is then disconnected.
    """

    __slots__ = ("abuse", "budget")

    def __init__(self, per_minute: float, burst: float, now: float) -> None:
        self.budget = TokenBucket(per_minute / 60.0, burst, now)
        self.abuse = TokenBucket(ABUSE_FACTOR * per_minute / 60.0, ABUSE_FACTOR * burst, now)

    def admit(self, now: float) -> Throttled | Disconnect | None:
        """None: go ahead."""
        if self.budget.take(now):
            return None
        if not self.abuse.take(now):
            return Disconnect(CloseCode.POLICY_VIOLATION, "message rate limit abused")
        return Throttled(self.budget.retry_after(now))


@dataclass(frozen=True, slots=True)
class Throttled:
    retry_after: float  # seconds
