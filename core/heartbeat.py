"""When to ping a quiet client, and when to give up on one that does not answer.

One sweep over a worker's clients every ``sweep_every`` seconds asks ``check`` about each: no timer,
task or future per connection (picows' own auto-ping keeps a task per connection, about 2 KB each).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.protocol import CloseCode, Disconnect


@dataclass(frozen=True, slots=True)
class SendPing:
    """The client has been silent for the interval: ping it."""


SEND_PING = SendPing()


@dataclass(frozen=True, slots=True)
class Heartbeats:
    interval: float  # silence before a ping
    timeout: float  # how long the pong may take

    @property
    def sweep_every(self) -> float:
        # A quarter of the shorter span: a ping, or a close, comes at most a quarter of it late.
        return min(self.interval, self.timeout) / 4

    def check(
        self, now: float, last_heard: float, ping_sent_at: float | None
    ) -> SendPing | Disconnect | None:
        """``last_heard``: when the client's latest frame arrived; ``ping_sent_at``: when the ping
        still waiting for its pong went out (None: none is)."""
        if ping_sent_at is not None:
            if now - ping_sent_at >= self.timeout:
                reason = f"peer has not replied to ping/heartbeat request within {self.timeout} second(s)"
                return Disconnect(CloseCode.GOING_AWAY, reason)
            return None
        if now - last_heard >= self.interval:
            return SEND_PING
        return None
