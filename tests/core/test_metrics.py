"""The layout of a row of counts, the sum of the rows, and what the sums say about health."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pytest

from core.metrics import (
    CLOSE_CODES,
    ERROR_CODES,
    LATENCY_BUCKETS_MS,
    ROW_CELLS,
    Count,
    Gauge,
    HealthThresholds,
    Totals,
    bucket_cell,
    close_cell,
    count_cell,
    error_cell,
    evaluate_health,
    gauge_cell,
    totals,
)
from core.protocol import ErrorCode

INF_BUCKET = len(LATENCY_BUCKETS_MS)  # the index of the +Inf bucket among the buckets


def every_cell() -> list[int]:
    cells = [count_cell(count) for count in Count]
    cells += [cell for code in ERROR_CODES if (cell := error_cell(code)) is not None]
    cells += [close_cell(code) for code in CLOSE_CODES]
    cells += [bucket_cell(bound) for bound in LATENCY_BUCKETS_MS] + [bucket_cell(math.inf)]
    cells += [gauge_cell(gauge) for gauge in Gauge]
    return cells


def err(code: str) -> int:
    cell = error_cell(code)
    assert cell is not None, code
    return cell


def bucket_index(latency_ms: float) -> int:
    return bucket_cell(latency_ms) - bucket_cell(0.0)


# --- the layout -------------------------------------------------------------------------------------


def test_every_cell_is_distinct_and_the_cells_fill_the_row_exactly() -> None:
    cells = every_cell()
    assert len(cells) == len(set(cells)), "two figures share a cell"
    assert set(cells) == set(range(ROW_CELLS)), "a cell outside the row, or a hole in it"


def test_every_error_code_has_a_cell_and_an_unknown_code_has_none() -> None:
    assert all(error_cell(code) is not None for code in ERROR_CODES)
    assert error_cell("NOT_A_CODE") is None
    assert error_cell("") is None


@pytest.mark.parametrize("index", range(len(LATENCY_BUCKETS_MS)))
def test_a_latency_exactly_on_a_bound_falls_in_that_bound_s_bucket(index: int) -> None:
    bound = LATENCY_BUCKETS_MS[index]
    assert bucket_index(bound) == index
    assert bucket_index(math.nextafter(bound, math.inf)) == index + 1
    if index > 0:
        assert bucket_index(math.nextafter(LATENCY_BUCKETS_MS[index - 1], math.inf)) == index


def test_the_lowest_and_the_highest_latencies() -> None:
    assert bucket_index(0.0) == 0
    assert bucket_index(-5.0) == 0  # a clock step backwards still lands somewhere
    assert bucket_index(LATENCY_BUCKETS_MS[-1] + 0.001) == INF_BUCKET
    assert bucket_index(1e12) == INF_BUCKET
    assert bucket_index(math.inf) == INF_BUCKET
    assert bucket_cell(math.inf) < gauge_cell(Gauge(0)), "the +Inf bucket runs into the gauges"


def test_close_codes_have_cells_of_their_own_and_unknown_codes_share_the_zero_cell() -> None:
    known = {code: close_cell(code) for code in CLOSE_CODES}
    assert len(set(known.values())) == len(CLOSE_CODES)
    assert close_cell(1006) != close_cell(0)
    for unknown in (1004, 1005, 1010, 1012, 1014, 1015, 2999, 3000, 4000, 4002, 4999, 65535, -1):
        assert unknown not in CLOSE_CODES
        assert close_cell(unknown) == close_cell(0), unknown


# --- the sum of the rows ----------------------------------------------------------------------------


def empty_row() -> list[int]:
    return [0] * ROW_CELLS


_MOVED = {Count.MESSAGES_SENT, Count.EVENTS_ACCEPTED, Count.LATENCY_SUM_US}  # the counts set below


def test_totals_sum_the_rows_and_take_the_highest_peak() -> None:
    a, b, c = empty_row(), empty_row(), empty_row()
    a[count_cell(Count.MESSAGES_SENT)], b[count_cell(Count.MESSAGES_SENT)] = 7, 5
    b[count_cell(Count.EVENTS_ACCEPTED)] = 11
    a[count_cell(Count.LATENCY_SUM_US)], c[count_cell(Count.LATENCY_SUM_US)] = 1500, 2500
    a[err(ErrorCode.INVALID_MESSAGE)] = 2
    c[err(ErrorCode.INVALID_MESSAGE)] = 3
    b[err(ErrorCode.QUERY_TIMEOUT)] = 1
    a[close_cell(1000)], b[close_cell(1000)], c[close_cell(4321)] = 4, 6, 1
    a[bucket_cell(0.05)], b[bucket_cell(0.05)], c[bucket_cell(99_999.0)] = 1, 2, 3
    a[gauge_cell(Gauge.SUBSCRIPTIONS)], b[gauge_cell(Gauge.SUBSCRIPTIONS)] = 3, 4
    a[gauge_cell(Gauge.PEAK_CONNECTIONS)] = 9
    b[gauge_cell(Gauge.PEAK_CONNECTIONS)] = 12
    c[gauge_cell(Gauge.PEAK_CONNECTIONS)] = 10

    summed = totals([a, b, c], connections=5)

    assert summed.counts[Count.MESSAGES_SENT] == 12
    assert summed.counts[Count.EVENTS_ACCEPTED] == 11
    assert set(summed.counts) == set(Count)
    assert all(summed.counts[count] == 0 for count in Count if count not in _MOVED)
    assert list(summed.errors) == list(ERROR_CODES), "every error code, even those never seen"
    assert summed.errors[ErrorCode.INVALID_MESSAGE] == 5
    assert summed.errors[ErrorCode.QUERY_TIMEOUT] == 1
    assert summed.errors_total == 6
    assert list(summed.closes) == list(CLOSE_CODES), "every close code, even those never seen"
    assert summed.closes[1000] == 10 and summed.closes[0] == 1
    assert sum(summed.closes.values()) == 11
    assert len(summed.buckets) == len(LATENCY_BUCKETS_MS) + 1
    assert summed.buckets[0] == 3 and summed.buckets[INF_BUCKET] == 3
    assert summed.latency_count == 6
    assert summed.latency_sum_ms == 4.0
    assert summed.subscriptions == 7
    assert summed.peak_connections == 12, "the peak is the highest any row saw, not a sum"
    assert summed.connections == 5


def test_totals_of_no_rows_and_of_empty_rows_are_zero() -> None:
    for rows in ([], [empty_row(), empty_row()]):
        summed = totals(rows, connections=0)
        assert all(value == 0 for value in summed.counts.values())
        assert set(summed.errors) == set(ERROR_CODES) and summed.errors_total == 0
        assert set(summed.closes) == set(CLOSE_CODES) and not any(summed.closes.values())
        assert summed.buckets == (0,) * (len(LATENCY_BUCKETS_MS) + 1)
        assert (summed.subscriptions, summed.peak_connections, summed.latency_count) == (0, 0, 0)


# --- health -----------------------------------------------------------------------------------------

LIMITS = HealthThresholds(memory_bytes=1_000_000, error_rate=0.05, latency_ms=100.0)


def snapshot(
    received: int = 0,
    errors: int = 0,
    latencies_ms: Iterable[float] = (),
    connections: int = 3,
) -> Totals:
    """The totals of a server that has seen this much since it started."""
    row = empty_row()
    row[count_cell(Count.MESSAGES_RECEIVED)] = received
    row[err(ErrorCode.INVALID_MESSAGE)] = errors
    for latency in latencies_ms:
        row[bucket_cell(latency)] += 1
        row[count_cell(Count.LATENCY_SUM_US)] += round(latency * 1000)
    return totals([row], connections)


def test_a_quiet_healthy_server() -> None:
    health = evaluate_health(snapshot(), snapshot(received=100, latencies_ms=[1.0]), 500_000, LIMITS)
    assert (health.status, health.http_status) == ("healthy", 200)
    assert [check.name for check in health.checks] == ["memory", "error_rate", "latency", "connections"]
    assert all(check.status == "ok" for check in health.checks)
    assert health.checks[0].to_json() == {
        "name": "memory",
        "status": "ok",
        "value": 500_000,
        "threshold": 1_000_000,
        "message": "0 MiB resident across the server's processes",
    }


def test_exactly_on_every_threshold_is_still_healthy() -> None:
    before = snapshot()
    now = snapshot(received=100, errors=5, latencies_ms=[100.0, 100.0])
    health = evaluate_health(before, now, LIMITS.memory_bytes, LIMITS)
    assert (health.status, health.http_status) == ("healthy", 200)
    values = {check.name: check.value for check in health.checks}
    assert values == {"memory": 1_000_000, "error_rate": 0.05, "latency": 100.0, "connections": 3}


def test_memory_above_its_threshold_is_a_warning_served_with_200() -> None:
    health = evaluate_health(snapshot(), snapshot(received=10), LIMITS.memory_bytes + 1, LIMITS)
    assert (health.status, health.http_status) == ("warning", 200)
    memory = health.checks[0]
    assert (memory.name, memory.status, memory.value, memory.threshold) == (
        "memory",
        "warning",
        1_000_001,
        1_000_000,
    )


def test_an_error_rate_above_its_threshold_is_unhealthy_with_503() -> None:
    health = evaluate_health(snapshot(), snapshot(received=100, errors=6), 500_000, LIMITS)
    assert (health.status, health.http_status) == ("unhealthy", 503)
    rate = next(check for check in health.checks if check.name == "error_rate")
    assert (rate.status, rate.value, rate.threshold) == ("unhealthy", 0.06, 0.05)
    assert rate.message == "6 errors for 100 client messages"


def test_an_old_burst_of_errors_outside_the_window_does_not_count() -> None:
    # 900 errors long ago: cumulatively 900/1100 is far above 5%, but this window had none.
    before = snapshot(received=1000, errors=900)
    now = snapshot(received=1100, errors=900)
    health = evaluate_health(before, now, 500_000, LIMITS)
    assert (health.status, health.http_status) == ("healthy", 200)
    rate = next(check for check in health.checks if check.name == "error_rate")
    assert rate.value == 0.0 and rate.message == "0 errors for 100 client messages"


def test_a_burst_inside_the_window_counts_however_clean_the_past() -> None:
    # Cumulatively 10 in a million is nothing; within the window it is every message.
    before = snapshot(received=1_000_000)
    now = snapshot(received=1_000_010, errors=10)
    health = evaluate_health(before, now, 500_000, LIMITS)
    assert (health.status, health.http_status) == ("unhealthy", 503)
    assert next(check.value for check in health.checks if check.name == "error_rate") == 1.0


def test_no_client_message_in_the_window_is_an_error_rate_of_zero() -> None:
    for before, now in (
        (snapshot(), snapshot()),
        (snapshot(received=50, errors=50), snapshot(received=50, errors=50)),
        (snapshot(received=50), snapshot(received=50, errors=3)),  # late errors (query timeouts)
    ):
        health = evaluate_health(before, now, 500_000, LIMITS)
        rate = next(check for check in health.checks if check.name == "error_rate")
        assert (rate.status, rate.value) == ("ok", 0.0)


def test_a_mean_latency_above_its_threshold_is_a_warning() -> None:
    health = evaluate_health(snapshot(), snapshot(latencies_ms=[150.0, 100.0]), 500_000, LIMITS)
    assert (health.status, health.http_status) == ("warning", 200)
    latency = next(check for check in health.checks if check.name == "latency")
    assert (latency.status, latency.value, latency.threshold) == ("warning", 125.0, 100.0)
    assert latency.message == "mean broadcast latency over 2 broadcasts, ms"


def test_the_mean_latency_is_of_the_window_only() -> None:
    slow_past = [5000.0] * 10
    before = snapshot(latencies_ms=slow_past)
    now = snapshot(latencies_ms=[*slow_past, 40.0, 60.0])
    latency = next(c for c in evaluate_health(before, now, 0, LIMITS).checks if c.name == "latency")
    assert (latency.status, latency.value) == ("ok", 50.0)
    # No broadcast in the window: a latency of 0, not a division by zero.
    quiet = next(c for c in evaluate_health(now, now, 0, LIMITS).checks if c.name == "latency")
    assert (quiet.status, quiet.value) == ("ok", 0.0)


def test_no_connection_is_information_and_still_healthy() -> None:
    health = evaluate_health(snapshot(connections=0), snapshot(connections=0), 500_000, LIMITS)
    assert (health.status, health.http_status) == ("healthy", 200)
    connections = health.checks[-1]
    assert connections.to_json() == {
        "name": "connections",
        "status": "info",
        "value": 0,
        "threshold": None,
        "message": "no client is connected",
    }
    one = evaluate_health(snapshot(), snapshot(connections=1), 500_000, LIMITS).checks[-1]
    assert (one.status, one.value, one.message) == ("ok", 1, "1 connected")


@pytest.mark.parametrize(
    ("rss", "errors", "latency", "connections", "status", "http_status"),
    [
        (2_000_000, 0, 1.0, 0, "warning", 200),  # a warning beats information
        (2_000_000, 0, 500.0, 3, "warning", 200),  # two warnings are a warning
        (2_000_000, 50, 1.0, 3, "unhealthy", 503),  # unhealthy beats a warning
        (500_000, 50, 500.0, 0, "unhealthy", 503),
        (2_000_000, 50, 500.0, 0, "unhealthy", 503),  # everything wrong at once
        (500_000, 0, 1.0, 0, "healthy", 200),  # information alone
    ],
)
def test_the_worst_check_decides(
    rss: int, errors: int, latency: float, connections: int, status: str, http_status: int
) -> None:
    before = snapshot(connections=connections)
    now = snapshot(received=100, errors=errors, latencies_ms=[latency], connections=connections)
    health = evaluate_health(before, now, rss, LIMITS)
    assert (health.status, health.http_status) == (status, http_status)
