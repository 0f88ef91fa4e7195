"""Connection admission across all workers: the global cap, per-IP connections, per-IP handshakes.

Each worker owns one row of shared counters and writes only its own row; readers add the rows up.
That needs no lock, so a worker that dies holding one cannot wedge the others, and its successor
simply starts from a zeroed row (its connections died with it). Per-IP counts live in a small
count-min sketch: every address maps to one cell in each of ``DEPTH`` hashed rows and its count is
the smallest of those cells, so a collision can only overestimate, never let an address past its
limit. The concurrent check-then-increment of two workers may overshoot a limit by at most one
connection per worker; that is the price of taking no lock on the handshake path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

DEPTH = 2
WIDTH = 4096
WINDOW_SECONDS = 60.0


def ip_cells(address: str) -> tuple[int, ...]:
    """The sketch cell of ``address`` in each row (row-major index into a DEPTH x WIDTH table)."""
    digest = hashlib.blake2b(address.encode(), digest_size=4 * DEPTH).digest()
    return tuple(
        row * WIDTH + int.from_bytes(digest[4 * row : 4 * row + 4], "little") % WIDTH for row in range(DEPTH)
    )


def sketch_estimate(rows: Sequence[Sequence[int]], cells: tuple[int, ...]) -> int:
    """An address's count summed over all workers' sketches: the least of its cells."""
    return min(sum(row[cell] for row in rows) for cell in cells)


def window_of(now: float) -> int:
    return int(now // WINDOW_SECONDS)


@dataclass(frozen=True, slots=True)
class Admit:
    pass


@dataclass(frozen=True, slots=True)
class Reject:
    status: int
    reason: str
    retry_after: int | None = None  # seconds, for 429


ADMIT = Admit()


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    max_connections: int
    max_connections_per_ip: int
    max_handshakes_per_ip: int  # per WINDOW_SECONDS

    def decide(
        self, total_connections: int, ip_connections: int, ip_handshakes: int, now: float
    ) -> Admit | Reject:
        if total_connections >= self.max_connections:
            return Reject(503, "server at connection capacity")
        if ip_connections >= self.max_connections_per_ip:
            return Reject(429, "too many connections from this address", retry_after=5)
        if ip_handshakes >= self.max_handshakes_per_ip:
            retry = int(WINDOW_SECONDS - now % WINDOW_SECONDS) + 1
            return Reject(429, "too many handshakes from this address", retry_after=retry)
        return ADMIT
