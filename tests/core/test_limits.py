"""Connection admission: the sketch cells of an address, the count-min estimate, and the decision."""

from __future__ import annotations

import hashlib
import itertools
import random

import pytest

from core.limits import (
    ADMIT,
    DEPTH,
    WIDTH,
    WINDOW_SECONDS,
    AdmissionLimits,
    Admit,
    Reject,
    ip_cells,
    sketch_estimate,
    window_of,
)

LIMITS = AdmissionLimits(max_connections=100, max_connections_per_ip=5, max_handshakes_per_ip=10)
NOW = 1_700_000_010.0  # 30 seconds into a window


# --- builders ---------------------------------------------------------------------------------------


def empty_row() -> list[int]:
    return [0] * (DEPTH * WIDTH)


def add(row: list[int], address: str, count: int = 1) -> None:
    """What a worker does when it admits ``count`` connections from ``address``."""
    for cell in ip_cells(address):
        row[cell] += count


def random_addresses(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    v4 = [".".join(str(rng.randrange(256)) for _ in range(4)) for _ in range(n // 2)]
    v6 = [":".join(f"{rng.randrange(65536):x}" for _ in range(8)) for _ in range(n - n // 2)]
    return v4 + v6


def colliding_in_row(row: int) -> tuple[str, str]:
    """Two real addresses sharing their cell in ``row`` and no other."""
    seen: dict[int, str] = {}
    for i in itertools.count():
        address = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
        cells = ip_cells(address)
        other = seen.get(cells[row])
        if other is not None and all(
            a != b for r, (a, b) in enumerate(zip(ip_cells(other), cells, strict=True)) if r != row
        ):
            return other, address
        seen[cells[row]] = address
    raise AssertionError("unreachable")


# --- ip_cells ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.0.0.1", "255.255.255.255", "::1", "2001:db8::1", "::ffff:192.0.2.1", "", "unix"],
)
def test_ip_cells_one_per_row_within_its_range(address: str) -> None:
    cells = ip_cells(address)
    assert len(cells) == DEPTH
    for row, cell in enumerate(cells):
        assert isinstance(cell, int)
        assert row * WIDTH <= cell < (row + 1) * WIDTH
    assert ip_cells(address) == cells


def test_ip_cells_rows_in_range_for_many_addresses() -> None:
    for address in random_addresses(2000, seed=1):
        for row, cell in enumerate(ip_cells(address)):
            assert row * WIDTH <= cell < (row + 1) * WIDTH, (address, row, cell)


def test_ip_cells_is_deterministic_and_not_salted() -> None:
    # Every worker process must map an address to the same cells, so no per-process hash seed.
    assert ip_cells("192.0.2.1") == ip_cells("192.0.2.1")
    known = {address: ip_cells(address) for address in ("192.0.2.1", "::1")}
    for address, cells in known.items():
        digest = hashlib.blake2b(address.encode(), digest_size=4 * DEPTH).digest()
        expected = tuple(
            row * WIDTH + int.from_bytes(digest[4 * row : 4 * row + 4], "little") % WIDTH
            for row in range(DEPTH)
        )
        assert cells == expected


def test_ip_cells_separate_different_addresses() -> None:
    addresses = random_addresses(1000, seed=7)
    assert len(set(addresses)) == len(addresses)
    distinct = {ip_cells(address) for address in addresses}
    assert len(distinct) >= 0.99 * len(addresses)
    # Each row on its own spreads addresses too: far more distinct cells than a bad hash would give.
    for row in range(DEPTH):
        assert len({ip_cells(address)[row] for address in addresses}) > 800


def test_neighbouring_addresses_differ() -> None:
    addresses = [f"192.0.2.{i}" for i in range(256)]
    assert len({ip_cells(address) for address in addresses}) == 256


# --- sketch_estimate --------------------------------------------------------------------------------


def test_estimate_sums_workers_and_takes_the_least_row() -> None:
    cells = (5, WIDTH + 9)
    worker_a, worker_b, worker_c = empty_row(), empty_row(), empty_row()
    worker_a[5], worker_a[WIDTH + 9] = 2, 3
    worker_b[5], worker_b[WIDTH + 9] = 4, 1
    worker_c[5], worker_c[WIDTH + 9] = 0, 7
    # Row 0 sums to 6, row 1 to 11: the estimate is the smaller.
    assert sketch_estimate([worker_a, worker_b, worker_c], cells) == 6
    assert sketch_estimate([worker_a], cells) == 2
    assert sketch_estimate([worker_b], cells) == 1
    assert sketch_estimate([worker_c], cells) == 0


def test_estimate_of_an_unseen_address_is_zero() -> None:
    rows = [empty_row() for _ in range(3)]
    add(rows[0], "192.0.2.1", 4)
    assert sketch_estimate(rows, ip_cells("192.0.2.1")) == 4
    assert sketch_estimate(rows, ip_cells("192.0.2.2")) == 0
    assert sketch_estimate([empty_row()], ip_cells("192.0.2.1")) == 0


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_estimate_counts_an_address_across_workers(workers: int) -> None:
    rows = [empty_row() for _ in range(workers)]
    for i in range(10):
        add(rows[i % workers], "198.51.100.7")
    add(rows[0], "198.51.100.8", 3)
    assert sketch_estimate(rows, ip_cells("198.51.100.7")) == 10
    assert sketch_estimate(rows, ip_cells("198.51.100.8")) == 3


@pytest.mark.parametrize("row", range(DEPTH))
def test_collision_in_one_row_does_not_inflate_the_estimate(row: int) -> None:
    quiet, busy = colliding_in_row(row)
    assert ip_cells(quiet)[row] == ip_cells(busy)[row]
    rows = [empty_row(), empty_row()]
    add(rows[0], quiet, 2)
    add(rows[0], busy, 50)
    add(rows[1], busy, 50)
    assert sketch_estimate(rows, ip_cells(quiet)) == 2
    assert sketch_estimate(rows, ip_cells(busy)) == 100


def test_hand_built_collision_never_exceeds_the_true_count() -> None:
    quiet, busy = (3, WIDTH + 100), (3, WIDTH + 200)  # same cell in row 0 only
    rows = [empty_row(), empty_row()]
    for true_quiet in range(4):
        for true_busy in (0, 1, 9, 1000):
            for row in rows:
                row[:] = [0] * len(row)
            for cell in quiet:
                rows[0][cell] += true_quiet
            for cell in busy:
                rows[1][cell] += true_busy
            assert sketch_estimate(rows, quiet) == true_quiet
            assert sketch_estimate(rows, busy) == true_busy


def test_estimate_never_underestimates() -> None:
    rng = random.Random(3)
    addresses = random_addresses(300, seed=11)
    rows = [empty_row() for _ in range(3)]
    truth: dict[str, int] = {}
    for address in addresses:
        count = rng.randrange(1, 4)
        add(rows[rng.randrange(3)], address, count)
        truth[address] = truth.get(address, 0) + count
    overestimated = 0
    for address, count in truth.items():
        estimate = sketch_estimate(rows, ip_cells(address))
        assert estimate >= count
        overestimated += estimate > count
    assert overestimated <= 0.05 * len(truth)


# --- window_of --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (0.0, 0),
        (59.999, 0),
        (60.0, 1),
        (61.5, 1),
        (119.0, 1),
        (120.0, 2),
        (1_700_000_010.0, 28_333_333),
        (1_699_999_980.0, 28_333_333),
        (1_699_999_979.9, 28_333_332),
    ],
    ids=[
        "zero",
        "end-of-first",
        "second",
        "inside-second",
        "end-of-second",
        "third",
        "now",
        "start",
        "before",
    ],
)
def test_window_of(now: float, expected: int) -> None:
    assert window_of(now) == expected
    assert isinstance(window_of(now), int)


def test_window_is_sixty_seconds() -> None:
    assert WINDOW_SECONDS == 60.0
    assert window_of(NOW + WINDOW_SECONDS) == window_of(NOW) + 1


# --- AdmissionLimits.decide -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "ip", "handshakes"),
    [(0, 0, 0), (99, 4, 9), (50, 0, 9), (99, 4, 0)],
    ids=["idle", "one-below-every-limit", "handshakes-just-under", "connections-just-under"],
)
def test_admit_under_every_limit(total: int, ip: int, handshakes: int) -> None:
    result = LIMITS.decide(total, ip, handshakes, NOW)
    assert result == ADMIT
    assert isinstance(result, Admit)


@pytest.mark.parametrize(
    ("total", "ip", "handshakes"),
    [(100, 0, 0), (101, 0, 0), (5000, 0, 0), (100, 5, 10), (100, 99, 99)],
    ids=["at-cap", "above-cap", "far-above-cap", "at-every-limit", "over-every-limit"],
)
def test_global_cap_is_503_and_comes_first(total: int, ip: int, handshakes: int) -> None:
    result = LIMITS.decide(total, ip, handshakes, NOW)
    assert isinstance(result, Reject), result
    assert result.status == 503
    assert result.retry_after is None
    assert "capacity" in result.reason


@pytest.mark.parametrize(
    ("ip", "handshakes"),
    [(5, 0), (6, 0), (5, 10), (50, 50)],
    ids=["at-limit", "above-limit", "handshakes-also-over", "far-above"],
)
def test_per_ip_connections_is_429_before_handshakes(ip: int, handshakes: int) -> None:
    result = LIMITS.decide(99, ip, handshakes, NOW)
    assert isinstance(result, Reject), result
    assert result.status == 429
    assert "connections" in result.reason
    assert isinstance(result.retry_after, int)
    assert result.retry_after > 0


@pytest.mark.parametrize(
    ("now", "retry_after"),
    [
        (0.0, 61),
        (1.0, 60),
        (30.0, 31),
        (59.0, 2),
        (90.0, 31),
        (1_700_000_010.0, 31),
        (1_700_000_039.0, 2),
    ],
    ids=["window-start", "one-in", "half-way", "last-second", "second-window", "now", "later"],
)
def test_per_ip_handshakes_is_429_until_the_next_window(now: float, retry_after: int) -> None:
    seconds_left = WINDOW_SECONDS - now % WINDOW_SECONDS
    assert retry_after == seconds_left + 1
    for handshakes in (10, 11, 1000):
        result = LIMITS.decide(0, 0, handshakes, now)
        assert result == Reject(429, "too many handshakes from this address", retry_after=retry_after)


@pytest.mark.parametrize("now", [0.25, 29.5, 59.5, 59.999, 1_700_000_019.75])
def test_handshake_retry_after_fractional_now(now: float) -> None:
    result = LIMITS.decide(0, 0, 10, now)
    assert isinstance(result, Reject) and result.retry_after is not None
    seconds_left = WINDOW_SECONDS - now % WINDOW_SECONDS
    assert seconds_left < result.retry_after <= seconds_left + 1


def test_handshake_retry_lands_in_a_later_window() -> None:
    rng = random.Random(5)
    for now in [rng.uniform(0, 2e9) for _ in range(2000)] + [k * 60.0 for k in range(100)]:
        result = LIMITS.decide(0, 0, 10, now)
        assert isinstance(result, Reject) and result.retry_after is not None
        assert 1 <= result.retry_after <= WINDOW_SECONDS + 1
        assert window_of(now + result.retry_after) == window_of(now) + 1, now


@pytest.mark.parametrize(
    ("limits", "args", "expected"),
    [
        (AdmissionLimits(1, 1, 1), (0, 0, 0), 200),
        (AdmissionLimits(1, 1, 1), (1, 0, 0), 503),
        (AdmissionLimits(1, 1, 1), (0, 1, 0), 429),
        (AdmissionLimits(1, 1, 1), (0, 0, 1), 429),
        (AdmissionLimits(0, 5, 5), (0, 0, 0), 503),
        (AdmissionLimits(10, 0, 5), (0, 0, 0), 429),
        (AdmissionLimits(10, 5, 0), (0, 0, 0), 429),
    ],
    ids=["tiny-admit", "tiny-cap", "tiny-ip", "tiny-handshakes", "zero-cap", "zero-ip", "zero-handshakes"],
)
def test_limit_edges(limits: AdmissionLimits, args: tuple[int, int, int], expected: int) -> None:
    result = limits.decide(*args, NOW)
    assert (200 if isinstance(result, Admit) else result.status) == expected


def test_precedence_across_every_combination() -> None:
    for total, ip, handshakes in itertools.product((99, 100), (4, 5), (9, 10)):
        result = LIMITS.decide(total, ip, handshakes, NOW)
        if total >= 100:
            assert isinstance(result, Reject) and result.status == 503
        elif ip >= 5:
            assert isinstance(result, Reject) and "connections" in result.reason
        elif handshakes >= 10:
            assert isinstance(result, Reject) and "handshakes" in result.reason
        else:
            assert result == ADMIT
