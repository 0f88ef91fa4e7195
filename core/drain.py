"""How a worker lets its clients go: paced closes and spread-out returns.

A reconnect storm (every client of a restarted server coming back in the same second) is the most
common outage of servers like this one. So the closes are spread evenly over a drain window, and
each client is told to come back after its own delay: at least a second, then spread over the
window again, so returns arrive at about the rate the closes went out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MIN_RECONNECT_AFTER_MS = 1000


@dataclass(frozen=True, slots=True)
class Farewell:
    close_at: float  # seconds after the drain starts
    reconnect_after_ms: int


def drain_plan(clients: int, window: float, rng: random.Random) -> list[Farewell]:
    if clients == 0:
        return []
    step = window / clients
    spread_ms = int(window * 1000)
    return [
        Farewell(index * step, MIN_RECONNECT_AFTER_MS + rng.randint(0, spread_ms)) for index in range(clients)
    ]
