"""Fan-out benchmark: C subscribed clients, R events/s of S bytes for T seconds, latency and loss.

    python perf/fanout.py --clients 100 --rate 1000 --size 200 --duration 10
    python perf/fanout.py --url ws://127.0.0.1:8080/ --ingest tcp://127.0.0.1:5557 ...  # a running server

Without --url it starts a real observatory (supervisor, ingest, workers) on free ports and stops
it afterwards. Clients are picows clients on uvloop spread over --procs load processes. Every
event carries its publish time; latency is publish -> receipt in the client, on one clock.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import tempfile
import time
import urllib.request
from array import array
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import psutil
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clients import Producer

EVENT = "perf_event"
END = "perf_end"


class _Receiver(WSListener):
    def __init__(self, latencies: array[float], done: asyncio.Event) -> None:
        self.latencies = latencies
        self.done = done
        self.seqs = 0
        self.last_seq = 0
        self.disorder = 0

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        received = time.time_ns()
        message = orjson.loads(frame.get_payload_as_bytes())
        kind = message.get("type")
        if kind == EVENT:
            self.latencies.append((received - message["data"]["t"]) / 1e6)
            if message["seq"] <= self.last_seq:
                self.disorder += 1
            self.last_seq = message["seq"]
            self.seqs += 1
        elif kind == END:
            self.done.set()


async def _load(
    url: str, clients: int, stalled: int, ready: Connection, finish: Connection
) -> dict[str, Any]:
    latencies: array[float] = array("d")
    receivers: list[_Receiver] = []
    dones: list[asyncio.Event] = []
    handshakes: list[float] = []
    subscribe = orjson.dumps({"type": "subscribe", "data": {"filters": {"eventTypes": [EVENT, END]}}})
    for _ in range(clients):
        done = asyncio.Event()
        started = time.perf_counter()
        transport, receiver = await ws_connect(lambda d=done: _Receiver(latencies, d), url)
        handshakes.append((time.perf_counter() - started) * 1000)
        transport.send(WSMsgType.TEXT, subscribe)
        receivers.append(receiver)  # type: ignore[arg-type]
        dones.append(done)
    stalled_transports = []
    for _ in range(stalled):
        transport, _ = await ws_connect(lambda: WSListener(), url)
        transport.send(WSMsgType.TEXT, subscribe)
        stalled_transports.append(transport)
    await asyncio.sleep(0.5)  # let every subscription be confirmed
    for transport in stalled_transports:
        transport.underlying_transport.pause_reading()  # subscribed, and never reads again
    ready.send(True)
    await asyncio.get_running_loop().run_in_executor(None, finish.recv)
    await asyncio.wait([asyncio.ensure_future(d.wait()) for d in dones], timeout=30)
    return {
        "latencies": latencies.tobytes(),
        "received": sum(r.seqs for r in receivers),
        "disorder": sum(r.disorder for r in receivers),
        "ended": sum(d.is_set() for d in dones),
        "handshakes": handshakes,
        "cpu": sum(os.times()[:2]),
    }


def _load_process(
    url: str, clients: int, stalled: int, ready: Connection, finish: Connection, out: Connection
) -> None:
    out.send(uvloop.run(_load(url, clients, stalled, ready, finish)))


def percentile(ordered: list[float], q: float) -> float:
    """The q-th percentile of an already sorted list (nearest rank)."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


@dataclass
class Result:
    clients: int
    stalled: int
    rate: int
    size: int
    duration: float
    events_sent: int
    deliveries_expected: int
    deliveries_received: int
    loss: int
    out_of_order: int
    deliveries_per_second: float
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float
    latency_ms_max: float
    server_latency_ms_p50: float
    server_latency_ms_p99: float
    handshake_ms_p50: float
    handshake_ms_p95: float
    handshake_ms_p99: float
    server_cpu_seconds: float
    server_cpu_us_per_delivery: float
    server_cpu_us_per_delivery_user: float
    server_cpu_us_per_delivery_system: float
    server_cpu_seconds_by_process: dict[str, float]
    server_rss_mb_idle: float
    server_rss_mb_peak: float
    load_cpu_seconds: float
    achieved_rate: float


def report(figures: dict[str, Any], table: bool) -> None:
    """The figures as JSON on stdout and, unless only JSON is wanted, as a table on stderr."""
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    if table:
        width = max(len(k) for k in figures)
        for key, value in figures.items():
            print(f"{key:<{width}}  {value}", file=sys.stderr)


def server_processes(root_pid: int) -> list[psutil.Process]:
    root = psutil.Process(root_pid)
    return [root, *root.children(recursive=True)]


def cpu_of(processes: list[psutil.Process]) -> float:
    return sum(user + system for user, system in cpu_by_process(processes).values())


def cpu_by_process(processes: list[psutil.Process]) -> dict[str, tuple[float, float]]:
    """(user, system) CPU seconds of each live process, by its title (``obs-worker-1``...)."""
    times: dict[str, tuple[float, float]] = {}
    for process in processes:
        try:
            name = process.name()
            used = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        if name in times:
            name = f"{name}-{process.pid}"
        times[name] = (used.user, used.system)
    return times


def server_latency_buckets(url: str) -> dict[float, float]:
    """The server's own broadcast latency histogram (publish -> write at a worker), cumulative counts
    by upper bound in ms, from /metrics on the WebSocket port; {} if it cannot be read."""
    http = url.replace("wss://", "https://", 1).replace("ws://", "http://", 1).split("?", 1)[0]
    try:
        text = urllib.request.urlopen(http.rstrip("/") + "/metrics", timeout=5).read().decode()
    except (OSError, ValueError):
        return {}
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "observatory_broadcast_latency_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets[float(sample.labels["le"]) * 1000] = sample.value
    return buckets


def bucket_percentile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound (ms) of the bucket holding the q-th percentile of what was added in between."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return float("nan")
    wanted = counts[-1] * q / 100
    return next(bound for bound, count in zip(bounds, counts, strict=True) if count >= wanted)


def rss_mb(processes: list[psutil.Process]) -> float:
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def run(args: argparse.Namespace, url: str, ingest: str, server_pid: int) -> Result:
    context = mp.get_context("spawn")
    per_process = [args.clients // args.procs + (i < args.clients % args.procs) for i in range(args.procs)]
    pipes = []
    workers = []
    for index, count in enumerate(per_process):
        ready_r, ready_w = context.Pipe(duplex=False)
        finish_r, finish_w = context.Pipe(duplex=False)
        out_r, out_w = context.Pipe(duplex=False)
        stalled = args.stalled if index == 0 else 0
        process = context.Process(target=_load_process, args=(url, count, stalled, ready_w, finish_r, out_w))
        process.start()
        pipes.append((ready_r, finish_w, out_r))
        workers.append(process)
    for ready_r, _, _ in pipes:
        if not ready_r.poll(120):
            raise TimeoutError("load processes did not connect in time")
        ready_r.recv()

    server = server_processes(server_pid)
    rss_idle = rss_mb(server)
    cpu_before = cpu_by_process(server)
    latency_before = server_latency_buckets(url)
    payload = "x" * max(args.size - 40, 0)
    producer = Producer(ingest)
    sent = 0
    rss_peak = rss_idle
    started = time.perf_counter()
    deadline = started + args.duration
    next_rss = started
    while (now := time.perf_counter()) < deadline:
        due = int((now - started) * args.rate)
        while sent < due:
            producer.publish(EVENT, {"t": time.time_ns(), "p": payload})
            sent += 1
        if now >= next_rss:
            rss_peak = max(rss_peak, rss_mb(server))
            next_rss = now + 0.5
        time.sleep(0.0005)
    elapsed = time.perf_counter() - started
    producer.publish(END, {})
    for _, finish_w, _ in pipes:
        finish_w.send(True)
    outcomes = [out_r.recv() if out_r.poll(60) else None for _, _, out_r in pipes]
    cpu_after = cpu_by_process(server)
    latency_after = server_latency_buckets(url)
    cpu_spent = {
        name: (user - cpu_before.get(name, (0.0, 0.0))[0], system - cpu_before.get(name, (0.0, 0.0))[1])
        for name, (user, system) in cpu_after.items()
    }
    cpu_user = sum(user for user, _ in cpu_spent.values())
    cpu_system = sum(system for _, system in cpu_spent.values())
    cpu_used = cpu_user + cpu_system
    producer.close()
    for process in workers:
        process.join(10)

    latencies: list[float] = []
    handshakes: list[float] = []
    received = disorder = 0
    load_cpu = 0.0
    for outcome in outcomes:
        if outcome is None:
            continue
        chunk = array("d")
        chunk.frombytes(outcome["latencies"])
        latencies.extend(chunk)
        handshakes.extend(outcome["handshakes"])
        received += outcome["received"]
        disorder += outcome["disorder"]
        load_cpu += outcome["cpu"]
    expected = sent * args.clients
    latencies.sort()
    handshakes.sort()
    return Result(
        clients=args.clients,
        stalled=args.stalled,
        rate=args.rate,
        size=args.size,
        duration=round(elapsed, 2),
        events_sent=sent,
        deliveries_expected=expected,
        deliveries_received=received,
        loss=expected - received,
        out_of_order=disorder,
        deliveries_per_second=round(received / elapsed),
        latency_ms_p50=round(percentile(latencies, 50), 3),
        latency_ms_p95=round(percentile(latencies, 95), 3),
        latency_ms_p99=round(percentile(latencies, 99), 3),
        latency_ms_max=round(max(latencies, default=float("nan")), 3),
        server_latency_ms_p50=bucket_percentile(latency_before, latency_after, 50),
        server_latency_ms_p99=bucket_percentile(latency_before, latency_after, 99),
        handshake_ms_p50=round(percentile(handshakes, 50), 3),
        handshake_ms_p95=round(percentile(handshakes, 95), 3),
        handshake_ms_p99=round(percentile(handshakes, 99), 3),
        server_cpu_seconds=round(cpu_used, 3),
        server_cpu_us_per_delivery=round(cpu_used / max(received, 1) * 1e6, 3),
        server_cpu_us_per_delivery_user=round(cpu_user / max(received, 1) * 1e6, 3),
        server_cpu_us_per_delivery_system=round(cpu_system / max(received, 1) * 1e6, 3),
        server_cpu_seconds_by_process={name: round(u + s, 3) for name, (u, s) in sorted(cpu_spent.items())},
        server_rss_mb_idle=round(rss_idle, 1),
        server_rss_mb_peak=round(rss_peak, 1),
        load_cpu_seconds=round(load_cpu, 2),
        achieved_rate=round(sent / elapsed, 1),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=int, default=1000, help="events per second")
    parser.add_argument("--size", type=int, default=200, help="approximate bytes of event data")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    parser.add_argument("--procs", type=int, default=2, help="load processes holding the clients")
    parser.add_argument(
        "--stalled", type=int, default=0, help="extra subscribers that never read (not measured)"
    )
    parser.add_argument("--workers", type=int, default=2, help="server workers (when starting one)")
    parser.add_argument(
        "--server-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an option for the server it starts, e.g. flush_interval=0.01 (repeat for several)",
    )
    parser.add_argument("--url", help="target a running server instead of starting one")
    parser.add_argument("--token", help="a token for that server (with --url; see 'observatory token')")
    parser.add_argument("--ingest", default="tcp://127.0.0.1:5557", help="its producer endpoint (with --url)")
    parser.add_argument("--server-pid", type=int, help="its supervisor pid, for CPU and RSS (with --url)")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args(argv)

    server = None
    if args.url:
        url, ingest, pid = args.url, args.ingest, args.server_pid or os.getpid()
        if args.token:
            url += ("&" if "?" in url else "?") + "token=" + args.token
    else:
        from tests.harness import start_server

        server = start_server(
            Path(tempfile.mkdtemp(prefix="fanout-")),
            workers=args.workers,
            max_connections=max((args.clients + args.stalled) * 2, 1000),
            log_level="WARNING",
            **dict(option.split("=", 1) for option in args.server_option),
        )
        url, ingest, pid = server.url_with_token(), server.ingest_endpoint, server.proc.pid
    try:
        result = run(args, url, ingest, pid)
    finally:
        if server is not None:
            server.stop()
    report(asdict(result), table=not args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
