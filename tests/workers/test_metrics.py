"""/metrics, /health and /ready against real servers: the counts agree with the traffic exactly, every
worker reports the whole server, and health and readiness follow what the server goes through.

The counts are compared as moves between two settled scrapes (two scrapes in a row that agree), so
what earlier tests of the module did, and closes still in flight, do not matter.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import time
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import orjson
import psutil
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from clients import ObservatoryClient
from core.metrics import (
    LATENCY_BUCKETS_MS,
    Count,
    Gauge,
    HealthThresholds,
    bucket_cell,
    close_cell,
    count_cell,
    gauge_cell,
)
from tests.harness import ServerProcess, close_all, next_event, signal_child
from workers import metrics as metrics_module
from workers.metrics import ServerView
from workers.shared import SharedCounters, SharedMetrics

Samples = dict[str, float]

# Moves a test does not pin unless it says so: the latency histogram's buckets and sum depend on the
# machine's speed, the peak on what the module did before.
UNPINNED = ("observatory_broadcast_latency_seconds_bucket", "observatory_broadcast_latency_seconds_sum")
PEAK = "observatory_connections_peak"


# --- HTTP and the Prometheus text ---------------------------------------------------------------


def fetch(server: ServerProcess, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def fetch_json(server: ServerProcess, path: str) -> tuple[int, dict[str, Any]]:
    status, body = fetch(server, path)
    return status, orjson.loads(body)


def key(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[key(sample.name, sample.labels)] = sample.value
    return samples


def scrape(server: ServerProcess) -> Samples:
    status, body = fetch(server, "/metrics")
    assert status == 200, body
    return parse(body.decode())


def figures(samples: Samples) -> Samples:
    """Everything but the processes' CPU and memory, which move by themselves."""
    return {k: v for k, v in samples.items() if not k.startswith("observatory_process_")}


def settled(server: ServerProcess, timeout: float = 5.0) -> Samples:
    """Scrape until two scrapes in a row agree: nothing is in flight any more."""
    deadline = time.monotonic() + timeout
    previous = figures(scrape(server))
    while time.monotonic() < deadline:
        time.sleep(0.1)
        current = figures(scrape(server))
        if current == previous:
            return current
        previous = current
    raise AssertionError(f"the counts did not settle within {timeout}s")


async def settled_async(server: ServerProcess) -> Samples:
    return await asyncio.to_thread(settled, server)


def moved(before: Samples, after: Samples, ignore: Iterable[str] = ()) -> dict[str, float]:
    """What changed, and by how much; the keys that start with one of ``ignore`` left out."""
    skipped = (*UNPINNED, PEAK, *ignore)
    return {
        k: after.get(k, 0.0) - before.get(k, 0.0)
        for k in sorted(set(before) | set(after))
        if after.get(k, 0.0) != before.get(k, 0.0) and not k.startswith(skipped)
    }


def errors(code: str) -> str:
    return key("observatory_errors_total", {"code": code})


def closed(code: int) -> str:
    return key("observatory_connections_closed_total", {"code": str(code)})


# --- clients ------------------------------------------------------------------------------------


class Raw:
    """A ``websockets`` connection offering no compression: the frames exactly as the server sent them."""

    def __init__(self, ws: ClientConnection, hello: dict[str, Any]) -> None:
        self.ws = ws
        self.worker: int = hello["data"]["capabilities"]["worker"]

    @classmethod
    async def open(cls, server: ServerProcess) -> Raw:
        ws = await websockets.connect(
            server.url,
            additional_headers=server.authorization(),
            compression=None,
            open_timeout=5,
            max_size=None,
            proxy=None,
        )
        return cls(ws, orjson.loads(await asyncio.wait_for(ws.recv(), 5)))

    async def request(self, message: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        """Send a request; the bytes sent and the reply."""
        raw = orjson.dumps(message)
        await self.ws.send(raw.decode())
        return raw, orjson.loads(await asyncio.wait_for(self.ws.recv(), 5))

    async def read(self, count: int, timeout: float = 10.0) -> list[str]:
        frames = []
        for _ in range(count):
            frame = await asyncio.wait_for(self.ws.recv(), timeout)
            assert isinstance(frame, str), "a binary frame"
            frames.append(frame)
        return frames

    async def close(self) -> None:
        await self.ws.close()


async def raw_on_both_workers(server: ServerProcess, each: int) -> list[Raw]:
    """At least ``each`` connections on every worker (the kernel spreads them at random)."""
    clients: list[Raw] = []
    try:
        for _ in range(60):
            if all(sum(c.worker == w for c in clients) >= each for w in range(1, server.workers + 1)):
                return clients
            clients.append(await Raw.open(server))
    except BaseException:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        raise
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    raise AssertionError("60 connections never reached every worker")


async def clients_on_both_workers(server: ServerProcess, each: int) -> list[ObservatoryClient]:
    clients: list[ObservatoryClient] = []
    try:
        for _ in range(60):
            workers = [c.info["capabilities"]["worker"] for c in clients if c.info]
            if all(workers.count(w) >= each for w in range(1, server.workers + 1)):
                return clients
            client = server.client()
            await client.connect(timeout=5)
            clients.append(client)
    except BaseException:
        await close_all(clients)
        raise
    await close_all(clients)
    raise AssertionError("60 connections never reached every worker")


async def replies(client: ObservatoryClient, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The next ``count`` messages but the greeting (which the client's queue holds too)."""
    got: list[dict[str, Any]] = []
    while len(got) < count:
        message = await next_event(client, None, timeout)
        assert message is not None, f"only {len(got)} of {count} replies: {got}"
        if message["type"] != "connection_established":
            got.append(message)
    return got


async def read_until_closed(client: ObservatoryClient, timeout: float = 10.0) -> list[dict[str, Any]]:
    got = []
    deadline = time.monotonic() + timeout
    while (message := await next_event(client, None, max(deadline - time.monotonic(), 0))) is not None:
        if message["type"] != "connection_established":
            got.append(message)
    assert not client.is_connected, f"still connected after {timeout}s"
    return got


# --- the shared rows, without a server ------------------------------------------------------------


def test_a_broadcast_is_counted_once_for_all_its_recipients() -> None:
    shared = SharedMetrics(3)
    row = shared.row(1)
    row.broadcast(recipients=500, payload_bytes=500 * 40, latency_ms=0.3)
    row.broadcast(recipients=2, payload_bytes=80, latency_ms=-1.0)  # a clock stepped back
    cells = shared.all_rows()[1]
    assert cells[count_cell(Count.BROADCASTS)] == 2
    assert cells[count_cell(Count.MESSAGES_SENT)] == 502
    assert cells[count_cell(Count.BYTES_OUT)] == 20_080
    assert cells[count_cell(Count.LATENCY_SUM_US)] == 300
    assert cells[bucket_cell(0.3)] == 1 and cells[bucket_cell(0.0)] == 1
    assert all(value == 0 for index in (0, 2) for value in shared.all_rows()[index]), "another row moved"


def test_a_broadcast_without_a_publishing_time_is_counted_but_not_timed() -> None:
    shared = SharedMetrics(1)
    shared.row(0).broadcast(recipients=3, payload_bytes=120, latency_ms=None)
    cells = shared.all_rows()[0]
    assert (cells[count_cell(Count.BROADCASTS)], cells[count_cell(Count.MESSAGES_SENT)]) == (1, 3)
    assert cells[count_cell(Count.BYTES_OUT)] == 120
    assert cells[count_cell(Count.LATENCY_SUM_US)] == 0
    assert all(cells[bucket_cell(b)] == 0 for b in (*LATENCY_BUCKETS_MS, float("inf")))


def test_a_row_ignores_unknown_error_codes_and_files_unknown_closes_under_zero() -> None:
    shared = SharedMetrics(1)
    row = shared.row(0)
    row.error("NO_SUCH_CODE")
    assert not any(shared.all_rows()[0])
    row.closed(4321)
    row.closed(1000)
    assert shared.all_rows()[0][close_cell(0)] == 1
    assert shared.all_rows()[0][close_cell(1000)] == 1


def test_a_successor_in_a_row_keeps_the_counters_and_the_peak_but_not_the_subscriptions() -> None:
    shared = SharedMetrics(2)
    first = shared.row(0)
    first.count(Count.MESSAGES_RECEIVED, 7)
    first.add_gauge(Gauge.SUBSCRIPTIONS, 4)
    first.note_peak(9)
    first.note_peak(3)  # the peak never goes down
    assert shared.all_rows()[0][gauge_cell(Gauge.PEAK_CONNECTIONS)] == 9
    shared.row(0)  # a restarted worker takes the row
    cells = shared.all_rows()[0]
    assert cells[count_cell(Count.MESSAGES_RECEIVED)] == 7
    assert cells[gauge_cell(Gauge.SUBSCRIPTIONS)] == 0
    assert cells[gauge_cell(Gauge.PEAK_CONNECTIONS)] == 9


def test_a_forked_child_s_counts_are_seen_by_the_parent() -> None:
    shared = SharedMetrics(2)
    pid = os.fork()
    if pid == 0:
        try:
            shared.row(1).count(Count.EVENTS_ACCEPTED, 42)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 10
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    assert shared.all_rows()[1][count_cell(Count.EVENTS_ACCEPTED)] == 42


def test_health_forgets_a_burst_once_it_is_out_of_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(metrics_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    shared = SharedMetrics(1)
    view = ServerView(SharedCounters(1), shared, os.getpid(), HealthThresholds(1 << 44, 0.05, 100.0))
    row = shared.row(0)
    view.sample()  # the worker starts: nothing counted yet
    clock[0] += 1
    for _ in range(50):  # a burst: every message an error
        row.count(Count.MESSAGES_RECEIVED)
        row.error("INVALID_MESSAGE")
    health, processes = view.health()
    assert (health.status, health.http_status) == ("unhealthy", 503)
    assert os.getpid() in {process.pid for process in processes}
    while clock[0] < 1000.0 + metrics_module.HEALTH_WINDOW + 2 * metrics_module.SAMPLE_EVERY:
        clock[0] += metrics_module.SAMPLE_EVERY
        row.count(Count.MESSAGES_RECEIVED, 10)  # clean traffic from now on
        view.sample()
        if clock[0] - 1000.0 <= metrics_module.HEALTH_WINDOW:
            assert view.health()[0].status == "unhealthy", clock[0] - 1000.0
    health, _ = view.health()
    assert (health.status, health.http_status) == ("healthy", 200), health
    rate = next(check for check in health.checks if check.name == "error_rate")
    assert rate.value == 0.0


# --- /metrics -----------------------------------------------------------------------------------


async def test_every_worker_reports_the_same_totals_of_the_whole_server(server: ServerProcess) -> None:
    clients = await clients_on_both_workers(server, 2)
    try:
        connected = await settled_async(server)
        for i, client in enumerate(clients):
            await client.subscribe({"eventTypes": [f"same_totals_{i}"]})
        baseline = await settled_async(server)
        assert moved(connected, baseline, ignore=("observatory_bytes_in_total",)) == {
            "observatory_messages_received_total": len(clients),
            "observatory_subscriptions": len(clients),
        }
        # Plain GETs land on either worker at random: every scrape must be the same.
        for _ in range(20):
            assert figures(await asyncio.to_thread(scrape, server)) == baseline
        # And each worker in turn, the other one stopped so it cannot answer.
        for answering, stopped in (("obs-worker-1", "obs-worker-2"), ("obs-worker-2", "obs-worker-1")):
            signal_child(server, stopped, signal.SIGSTOP)
            try:
                answer = await asyncio.to_thread(scrape_while_one_is_stopped, server)
            finally:
                signal_child(server, stopped, signal.SIGCONT)
            assert figures(answer) == baseline, f"{answering} disagrees"
    finally:
        await close_all(clients)


def scrape_while_one_is_stopped(server: ServerProcess) -> Samples:
    """A GET that lands on the stopped worker waits in its queue: give it up and try again."""
    for _ in range(40):
        try:
            status, body = fetch(server, "/metrics", timeout=0.5)
        except (TimeoutError, OSError):
            continue
        assert status == 200
        return parse(body.decode())
    raise AssertionError("no GET reached the running worker in 40 tries")


async def test_the_counts_agree_exactly_with_the_traffic(server: ServerProcess) -> None:
    before_connecting = await settled_async(server)
    clients = await raw_on_both_workers(server, 2)
    n = len(clients)
    try:
        connected = await settled_async(server)
        assert moved(before_connecting, connected) == {
            "observatory_connections_active": n,
            "observatory_connections_opened_total": n,
        }
        assert connected[PEAK] >= connected["observatory_connections_active"]

        subscribe = {"type": "subscribe", "data": {"filters": {"eventTypes": ["counted_flow"]}}}
        sent = 0
        for client in clients:
            raw, reply = await client.request(subscribe)
            assert reply["type"] == "subscription_confirmed", reply
            sent += len(raw)
        subscribed = await settled_async(server)
        assert moved(connected, subscribed) == {
            "observatory_messages_received_total": n,
            "observatory_bytes_in_total": sent,
            "observatory_subscriptions": n,
        }

        p = 5
        producer = server.producer()
        for i in range(p):
            producer.publish("counted_flow", {"i": i, "pad": "z" * (10 * i)})
        frames = [await client.read(p) for client in clients]
        for got in frames:
            assert [orjson.loads(frame)["data"]["i"] for frame in got] == list(range(p))
        assert all(got == frames[0] for got in frames), "every client gets the very same bytes"
        delivered = await settled_async(server)
        # Whole frames as written: a 2-byte header under 126 bytes of payload, 4 up to 64 KiB.
        out = sum(on_the_wire(frame) for got in frames for frame in got)
        assert out == n * sum(on_the_wire(frame) for frame in frames[0])
        assert moved(subscribed, delivered) == {
            "observatory_messages_sent_total": n * p,
            "observatory_broadcasts_total": 2 * p,  # once per event on each worker with subscribers
            "observatory_ingest_events_accepted_total": p,
            "observatory_bytes_out_total": out,
            "observatory_broadcast_latency_seconds_count": 2 * p,
        }
        buckets_moved = {k: delivered[k] - subscribed[k] for k in delivered if k.startswith(UNPINNED[0])}
        assert buckets_moved[key(UNPINNED[0], {"le": "+Inf"})] == 2 * p
        assert delivered[UNPINNED[1]] > subscribed[UNPINNED[1]], "the latency sum did not grow"
    finally:
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
    left = await settled_async(server)
    assert moved(delivered, left) == {
        "observatory_connections_active": -n,
        "observatory_subscriptions": -n,
        closed(1000): n,
    }


def on_the_wire(text: str) -> int:
    payload = len(text.encode())
    return payload + (2 if payload < 126 else 4)


DOCUMENTED = {  # docs/operations.md, the metric reference: family name (without _total) and type
    **{
        f"observatory_{name}": "counter"
        for name in (
            "connections_opened",
            "handshakes_refused",
            "messages_sent",
            "messages_received",
            "messages_failed",
            "messages_dropped",
            "bytes_out",
            "bytes_in",
            "broadcasts",
            "rate_limited",
            "slow_consumers",
            "bus_gaps_repaired",
            "bus_events_repaired",
            "bus_events_lost",
            "ingest_events_accepted",
            "ingest_events_rejected",
            "compressions",
            "watcher_lines",
            "watcher_lines_skipped",
            "watcher_events",
            "errors",
            "connections_closed",
            "process_cpu_seconds",
        )
    },
    "observatory_connections_active": "gauge",
    "observatory_connections_peak": "gauge",
    "observatory_subscriptions": "gauge",
    "observatory_process_resident_memory_bytes": "gauge",
    "observatory_broadcast_latency_seconds": "histogram",
}


def test_the_exposition_holds_exactly_the_documented_series(server: ServerProcess) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        body = response.read().decode()
    finally:
        connection.close()
    assert response.status == 200
    assert headers["content-type"] == "text/plain; version=1.0.0; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    families = {family.name: family for family in text_string_to_metric_families(body)}
    assert {name: family.type for name, family in families.items()} == DOCUMENTED
    assert all(family.documentation for family in families.values())
    assert not any(sample.name.endswith("_created") for f in families.values() for sample in f.samples)
    codes = [sample.labels["code"] for sample in families["observatory_errors"].samples]
    assert codes == [
        "INVALID_MESSAGE",
        "UNKNOWN_MESSAGE_TYPE",
        "INVALID_FILTERS",
        "TOO_MANY_SUBSCRIPTIONS",
        "SUBSCRIPTION_NOT_FOUND",
        "RATE_LIMIT_EXCEEDED",
        "QUERY_TIMEOUT",
        "QUERY_FAILED",
        "UNAUTHORIZED",
    ]
    closes = [sample.labels["code"] for sample in families["observatory_connections_closed"].samples]
    documented = "1000 1001 1002 1003 1007 1008 1009 1011 1013 4001 4003 1006 0"
    assert closes == documented.split()


def test_the_latency_histogram_is_cumulative_and_counts_every_broadcast(server: ServerProcess) -> None:
    samples = settled(server)
    bounds = [key(UNPINNED[0], {"le": repr(b / 1000)}) for b in LATENCY_BUCKETS_MS]
    infinite = key(UNPINNED[0], {"le": "+Inf"})
    assert set(bounds) | {infinite} == {k for k in samples if k.startswith(UNPINNED[0])}
    counts = [samples[b] for b in [*bounds, infinite]]
    assert counts == sorted(counts), "the buckets are not cumulative"
    assert counts[-1] == samples["observatory_broadcast_latency_seconds_count"]
    assert samples["observatory_broadcast_latency_seconds_count"] == samples["observatory_broadcasts_total"]
    assert samples["observatory_broadcasts_total"] > 0  # the harness's own probes, at least
    assert samples[UNPINNED[1]] >= 0


async def test_bad_messages_move_their_error_counts(server: ServerProcess) -> None:
    client = server.client()
    await client.connect()
    try:
        before = await settled_async(server)
        bad = [b"not json at all"] * 3 + [
            orjson.dumps({"type": "no_such_type", "requestId": i, "data": {}}) for i in range(4)
        ]
        for payload in bad:
            client.send_raw(payload)
        codes = sorted(message["data"]["code"] for message in await replies(client, len(bad)))
        assert codes == ["INVALID_MESSAGE"] * 3 + ["UNKNOWN_MESSAGE_TYPE"] * 4
        after = await settled_async(server)
        assert moved(before, after) == {
            "observatory_messages_received_total": 7,
            "observatory_bytes_in_total": sum(len(payload) for payload in bad),
            errors("INVALID_MESSAGE"): 3,
            errors("UNKNOWN_MESSAGE_TYPE"): 4,
        }
    finally:
        await client.close()


async def test_replies_are_not_counted_in_messages_sent(server: ServerProcess) -> None:
    # docs/operations.md: messages_sent and bytes_out count live events only; replies and notices
    # appear only in the access log's messagesOut.
    client = await Raw.open(server)
    try:
        before = await settled_async(server)
        raw, pong = await client.request({"type": "ping", "requestId": 1, "data": {}})
        assert pong["type"] == "pong"
        after = await settled_async(server)
        assert moved(before, after) == {
            "observatory_messages_received_total": 1,
            "observatory_bytes_in_total": len(raw),
        }
    finally:
        await client.close()


def test_the_help_text_of_messages_sent_says_what_it_counts(server: ServerProcess) -> None:
    # It once read "Events and replies queued to clients", the opposite of what is counted.
    status, body = fetch(server, "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    help_text = families["observatory_messages_sent"].documentation.lower()
    assert "event" in help_text and "repl" not in help_text, help_text


async def test_closes_are_counted_by_their_code(server: ServerProcess) -> None:
    before = await settled_async(server)
    polite = server.client()
    await polite.connect()
    await polite.close(1000, "done")
    unusual = await Raw.open(server)
    await unusual.ws.close(code=4000, reason="an application's own code")
    dropped = await Raw.open(server)
    dropped.ws.transport.abort()  # no close frame at all
    await asyncio.wait_for(dropped.ws.wait_closed(), 5)
    oversized = await Raw.open(server)
    # Two fragments adding up to more than max_message_bytes (64 KiB): Observatory closes with 1009.
    await oversized.ws.send(["x" * 40_000, "x" * 40_000])
    await asyncio.wait_for(oversized.ws.wait_closed(), 5)
    assert oversized.ws.close_code == 1009
    after = await settled_async(server)
    assert moved(before, after) == {
        "observatory_connections_opened_total": 4,
        closed(1000): 1,
        closed(0): 1,
        closed(1006): 1,
        closed(1009): 1,
    }


async def test_an_oversized_single_frame_is_refused_not_read(server: ServerProcess) -> None:
    # picows refuses a frame over max_frame_size (1009) but its parser goes on reading the frame and
    # hands it over all the same; ClientSession ignores frames once a close has been sent (it used to
    # act on them: count the message, answer it, even subscribe or query).
    before = await settled_async(server)
    oversized = await Raw.open(server)
    await oversized.ws.send("x" * 70_000)
    await asyncio.wait_for(oversized.ws.wait_closed(), 5)
    assert oversized.ws.close_code == 1009
    after = await settled_async(server)
    moves = moved(before, after, ignore=("observatory_connections_closed_total",))
    assert moves == {"observatory_connections_opened_total": 1}
    # picows closes by itself: counted under the code the client echoes (1009), or 1006 without one.
    assert after[closed(1009)] + after[closed(1006)] == before[closed(1009)] + before[closed(1006)] + 1


async def test_a_refused_handshake_is_counted(server: ServerProcess) -> None:
    before = await settled_async(server)
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(
            server.url, additional_headers={"Authorization": "Bearer not-a-token"}, open_timeout=5, proxy=None
        ):
            pass
    assert refused.value.response.status_code == 401
    after = await settled_async(server)
    assert moved(before, after) == {"observatory_handshakes_refused_total": 1}


async def test_rate_limits_and_a_flood_are_counted(server_factory: Any) -> None:
    # A budget of 3 messages, refilled once a minute: nothing refills during the test.
    strict = await asyncio.to_thread(server_factory, message_rate_burst=3, message_rate_limit=1)
    client = strict.client()
    await client.connect()
    ping = orjson.dumps({"type": "ping", "data": {}})
    before = await settled_async(strict)
    for _ in range(8):
        client.send_raw(ping)
    got = [message["type"] for message in await replies(client, 8)]
    assert got == ["pong"] * 3 + ["error"] * 5
    throttled = await settled_async(strict)
    assert moved(before, throttled) == {
        "observatory_messages_received_total": 8,
        "observatory_bytes_in_total": 8 * len(ping),
        "observatory_rate_limited_total": 5,
        errors("RATE_LIMIT_EXCEEDED"): 5,
    }

    # Going on at far more than ten times the rate: refused a while longer, then closed with 1008.
    for _ in range(100):
        client.send_raw(ping)
    flood = await read_until_closed(client)
    assert client.close_code == 1008
    refused = sum(1 for m in flood if m["type"] == "error" and m["data"]["code"] == "RATE_LIMIT_EXCEEDED")
    assert len(flood) == refused, "a flooding client got something other than refusals"
    assert 30 <= 5 + refused <= 32, "the abuse bucket holds ten bursts (plus what refills meanwhile)"
    flooded = await settled_async(strict)
    assert moved(throttled, flooded) == {
        "observatory_messages_received_total": refused + 1,  # the last one is the one that closed it
        "observatory_bytes_in_total": (refused + 1) * len(ping),
        "observatory_rate_limited_total": refused,
        errors("RATE_LIMIT_EXCEEDED"): refused,
        "observatory_connections_active": -1,
        closed(1008): 1,
    }


def test_every_process_reports_its_cpu_and_memory(server: ServerProcess) -> None:
    status, body = fetch(server, "/metrics")
    assert status == 200
    lines: dict[str, dict[tuple[str, int], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name.startswith("observatory_process_"):
                labels = (sample.labels["process"], int(sample.labels["pid"]))
                lines.setdefault(sample.name, {})[labels] = sample.value
    assert set(lines) == {
        "observatory_process_cpu_seconds_total",
        "observatory_process_resident_memory_bytes",
    }
    children = {
        (name, pid)
        for name in ("obs-ingest", "obs-worker-1", "obs-worker-2")
        for pid in server.pids_named(name)
    }
    assert len(children) == 3
    for name, seen in lines.items():
        assert set(seen) - children == {(psutil.Process(server.proc.pid).name(), server.proc.pid)}, name
        assert children <= set(seen), name
    assert all(cpu >= 0 for cpu in lines["observatory_process_cpu_seconds_total"].values())
    assert all(rss > 1_000_000 for rss in lines["observatory_process_resident_memory_bytes"].values())


# --- /health ------------------------------------------------------------------------------------


def health_of(server: ServerProcess) -> tuple[int, dict[str, Any], dict[str, str]]:
    status, body = fetch_json(server, "/health")
    return status, body, {check["name"]: check["status"] for check in body["checks"]}


async def test_a_fresh_server_is_healthy(server_factory: Any) -> None:
    fresh = await asyncio.to_thread(server_factory)
    await settled_async(fresh)  # the harness's probes have gone
    status, body, checks = await asyncio.to_thread(health_of, fresh)
    assert (status, body["status"]) == (200, "healthy"), body
    assert checks == {"memory": "ok", "error_rate": "ok", "latency": "ok", "connections": "info"}
    for check in body["checks"]:
        assert set(check) == {"name", "status", "value", "threshold", "message"}
    processes = {process["pid"]: process for process in body["processes"]}
    assert set(processes) == {fresh.proc.pid, *fresh.pids_named("obs-")}
    assert {processes[pid]["name"] for pid in fresh.pids_named("obs-")} == {
        "obs-ingest",
        "obs-worker-1",
        "obs-worker-2",
    }
    assert all(p["rssBytes"] > 0 and p["cpuSeconds"] >= 0 for p in processes.values())
    memory = next(check for check in body["checks"] if check["name"] == "memory")
    assert memory["value"] == sum(p["rssBytes"] for p in processes.values())

    client = fresh.client()
    await client.connect()
    try:
        status, body, checks = await asyncio.to_thread(health_of, fresh)
        assert (status, body["status"], checks["connections"]) == (200, "healthy", "ok")
        connections = next(check for check in body["checks"] if check["name"] == "connections")
        assert connections["value"] == 1
    finally:
        await client.close()


async def test_mostly_invalid_messages_make_the_server_unhealthy(server_factory: Any) -> None:
    strict = await asyncio.to_thread(server_factory, health_error_rate=0.1)
    client = strict.client()
    await client.connect()
    try:
        for _ in range(2):
            client.send_raw(b'{"type": "ping", "data": {}}')
        for _ in range(10):
            client.send_raw(b"{ nope")
        kinds = [message["type"] for message in await replies(client, 12)]
        assert sorted(kinds) == ["error"] * 10 + ["pong"] * 2
        totals = await asyncio.to_thread(scrape, strict)
        received = totals["observatory_messages_received_total"]
        for _ in range(10):  # whichever worker answers
            status, body, checks = await asyncio.to_thread(health_of, strict)
            assert (status, body["status"]) == (503, "unhealthy"), body
            assert checks == {"memory": "ok", "error_rate": "unhealthy", "latency": "ok", "connections": "ok"}
            rate = next(check for check in body["checks"] if check["name"] == "error_rate")
            assert rate["threshold"] == 0.1
            # Each worker's window began when it started (at most a minute ago): it holds these 12
            # messages and perhaps some of the harness's probes, which may have reached the worker
            # that started first before the other took its first sample.
            counted = int(rate["message"].split()[3])
            assert rate["message"] == f"10 errors for {counted} client messages"
            assert 12 <= counted <= received
            assert rate["value"] == round(10 / counted, 4)
    finally:
        await client.close()


async def test_a_slow_broadcast_is_a_warning_served_with_200(server_factory: Any) -> None:
    picky = await asyncio.to_thread(server_factory, health_latency_ms=0.001)
    client = picky.client()
    await client.connect()
    try:
        await client.subscribe({"eventTypes": ["slow_enough"]})
        producer = picky.producer()
        for i in range(3):
            producer.publish("slow_enough", {"i": i})
        for _ in range(3):
            assert await next_event(client, "slow_enough", 5) is not None
        for _ in range(6):
            status, body, checks = await asyncio.to_thread(health_of, picky)
            assert (status, body["status"]) == (200, "warning"), body
            assert checks == {"memory": "ok", "error_rate": "ok", "latency": "warning", "connections": "ok"}
            latency = next(check for check in body["checks"] if check["name"] == "latency")
            assert latency["value"] > 0.001 and latency["threshold"] == 0.001
    finally:
        await client.close()


def test_too_much_memory_is_a_warning_served_with_200(server_factory: Any) -> None:
    tight = server_factory(health_memory_bytes=1_048_576)
    settled(tight)  # the harness's probes have gone
    for _ in range(6):
        status, body, checks = health_of(tight)
        assert (status, body["status"]) == (200, "warning"), body
        assert checks == {"memory": "warning", "error_rate": "ok", "latency": "ok", "connections": "info"}
        memory = next(check for check in body["checks"] if check["name"] == "memory")
        assert memory["threshold"] == 1_048_576
        assert memory["value"] == sum(p["rssBytes"] for p in body["processes"]) > 1_048_576


# --- /ready -------------------------------------------------------------------------------------


def test_a_serving_server_is_ready(server: ServerProcess) -> None:
    for _ in range(10):
        assert fetch_json(server, "/ready") == (200, {"ready": True, "reason": None})


def ready_until(server: ServerProcess, status: int, timeout: float) -> tuple[float, dict[str, Any]]:
    """Poll /ready until it answers ``status`` six times in a row (both workers, most likely);
    the seconds it took to the first of them, and that answer."""
    started = deadline = time.monotonic()
    deadline += timeout
    first: tuple[float, dict[str, Any]] | None = None
    streak = 0
    while time.monotonic() < deadline:
        got, body = fetch_json(server, "/ready")
        if got == status:
            if first is None:
                first = (time.monotonic() - started, body)
            streak += 1
            if streak == 6:
                return first
        else:
            first, streak = None, 0
        time.sleep(0.05)
    raise AssertionError(f"/ready did not settle on {status} within {timeout}s")


def test_ready_goes_503_while_the_ingest_is_silent_and_back_after(server_factory: Any) -> None:
    watched = server_factory()  # the ingest beats every second; three silent beats make it unready
    assert fetch_json(watched, "/ready")[0] == 200
    victim = signal_child(watched, "obs-ingest", signal.SIGSTOP)
    try:
        took, body = ready_until(watched, 503, timeout=8)
        assert body == {"ready": False, "reason": "no word from the ingest on the bus"}
        assert 1.5 <= took <= 6.0, f"unready after {took:.1f}s of silence"
    finally:
        os.kill(victim, signal.SIGCONT)
    took, body = ready_until(watched, 200, timeout=5)
    assert body == {"ready": True, "reason": None}
    assert took < 3.0


async def test_ready_goes_503_while_draining(server_factory: Any) -> None:
    # Three clients on each worker, closed one every two seconds: each worker drains for four.
    draining = await asyncio.to_thread(server_factory, drain_window=6)
    clients = await clients_on_both_workers(draining, 3)
    try:
        assert (await asyncio.to_thread(fetch_json, draining, "/ready"))[0] == 200
        draining.proc.send_signal(signal.SIGTERM)
        _, body = await asyncio.to_thread(ready_until, draining, 503, 3.0)
        assert body == {"ready": False, "reason": "draining"}
        assert await asyncio.to_thread(draining.proc.wait, 30) == 0
    finally:
        await close_all(clients)
