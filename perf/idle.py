"""Idle connections: what N subscribed, silent clients cost the server, and how fast they get in.

    python perf/idle.py --connections 10000 --rate 1000
    python perf/idle.py --url ws://127.0.0.1:8080/ --token "$(observatory token --all-projects)" \
        --server-pid <supervisor pid> --connections 2000                     # a running server

Without --url it starts a real observatory (supervisor, ingest, --workers workers; auth on, the
harness's secret) whose connection limits admit N clients from one address. It measures the
server's RSS (every process, psutil) before the ramp, then opens --connections picows clients
spread over --procs load processes, starting --rate handshakes per second in all, each subscribing
once, and times every handshake from the start of the TCP connect to the arrival of
``connection_established``. Once all are subscribed (or have failed), it lets them sit idle for
--idle seconds and measures the server's RSS again and the CPU it used meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import psutil
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fanout import cpu_of, percentile, report, server_processes  # perf/ is this script's own folder

SUBSCRIBE = orjson.dumps({"type": "subscribe", "data": {"filters": {"eventTypes": ["idle_never_sent"]}}})
FD_MARGIN = 64  # descriptors a process needs besides its connections (pipes, the event loop, libraries)


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (no privilege needed); return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class _Idle(WSListener):
    """One client: subscribe when greeted, then count whatever else arrives (nothing, normally)."""

    def __init__(self, started: float, established: asyncio.Future[float], confirmed: asyncio.Future[None]):
        self.started = started
        self.established = established
        self.confirmed = confirmed
        self.state = "greeting"  # then "subscribing", then "idle"
        self.extra = 0  # messages after the subscription was confirmed
        self.closed = False

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        if self.state == "idle":
            self.extra += 1
            return
        received = time.perf_counter()
        kind = orjson.loads(frame.get_payload_as_bytes()).get("type")
        if self.state == "greeting":
            self.state = "subscribing"
            if kind == "connection_established":
                _settle(self.established, (received - self.started) * 1000)
                transport.send(WSMsgType.TEXT, SUBSCRIBE)
            else:
                _settle(self.established, RuntimeError(f"first message was {kind}"))
        else:
            self.state = "idle"
            ok = kind == "subscription_confirmed"
            _settle(self.confirmed, None if ok else RuntimeError(f"subscribe answered with {kind}"))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        if self.state == "greeting":
            _settle(self.established, ConnectionError("closed by the server"))
        elif self.state == "subscribing":
            _settle(self.confirmed, ConnectionError("closed by the server"))


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    """Resolve a future nobody may be waiting for any more (its wait timed out and cancelled it)."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:160]


async def _load(
    url: str, indices: list[int], rate: float, start_wall: float, timeout: float, ctl: Connection
) -> None:
    loop = asyncio.get_running_loop()
    start_loop = loop.time() + (start_wall - time.time())
    handshakes: list[float] = []
    errors: Counter[str] = Counter()
    transports: list[WSTransport] = []
    listeners: list[_Idle] = []
    subscribed = 0

    async def open_one(index: int) -> None:
        nonlocal subscribed
        await asyncio.sleep(max(0.0, start_loop + index / rate - loop.time()))
        established: asyncio.Future[float] = loop.create_future()
        confirmed: asyncio.Future[None] = loop.create_future()
        started = time.perf_counter()
        try:
            transport, listener = await ws_connect(
                lambda: _Idle(started, established, confirmed), url, websocket_handshake_timeout=timeout
            )
        except Exception as exc:
            errors[_reason(exc)] += 1
            return
        transports.append(transport)
        listeners.append(listener)  # type: ignore[arg-type]
        try:
            handshakes.append(await asyncio.wait_for(established, timeout))
            await asyncio.wait_for(confirmed, timeout)
        except Exception as exc:
            errors[_reason(exc)] += 1
            return
        subscribed += 1

    await asyncio.gather(*(open_one(i) for i in indices))
    ctl.send(
        {"handshakes": handshakes, "subscribed": subscribed, "errors": dict(errors), "ramp_done": time.time()}
    )
    await loop.run_in_executor(None, ctl.recv)  # the idle window is measured meanwhile
    outcome = {
        "dropped": sum(listener.closed for listener in listeners),
        "extra_messages": sum(listener.extra for listener in listeners),
        "cpu": sum(os.times()[:2]),
    }
    for transport in transports:
        with contextlib.suppress(Exception):
            transport.send_close()
            transport.disconnect()
    await asyncio.sleep(0.2)
    ctl.send(outcome)


def _load_process(url: str, indices: list[int], rate: float, timeout: float, ctl: Connection) -> None:
    soft, _ = raise_fd_limit()
    ctl.send({"fd_limit": soft, "needed": len(indices) + FD_MARGIN})
    start_wall = ctl.recv()
    uvloop.run(_load(url, indices, rate, start_wall, timeout, ctl))


def _name(process: psutil.Process) -> str:
    try:
        name = process.name()
    except psutil.Error:
        return f"pid {process.pid}"
    return name if name.startswith("obs-") else "supervisor"


def rss_by_process(processes: list[psutil.Process]) -> dict[str, float]:
    found: dict[str, float] = {}
    for process in processes:
        try:
            found[_name(process)] = found.get(_name(process), 0.0) + process.memory_info().rss / 2**20
        except psutil.Error:
            pass
    return found


@dataclass
class Result:
    connections: int
    rate: int
    procs: int
    connections_established: int
    connections_subscribed: int
    connections_failed: int
    dropped_while_idle: int
    messages_while_idle: int
    ramp_seconds: float
    achieved_rate: float
    handshake_ms_p50: float
    handshake_ms_p95: float
    handshake_ms_p99: float
    handshake_ms_max: float
    server_cpu_seconds_ramp: float
    server_rss_mb_before: float
    server_rss_mb_connected: float
    rss_kb_per_connection: float
    idle_seconds: float
    server_cpu_seconds_idle: float
    server_cpu_percent_idle: float
    load_cpu_seconds: float
    fd_limit_per_load_process: int
    fd_limit_short: bool
    errors: dict[str, int] = field(default_factory=dict)
    rss_mb_by_process_before: dict[str, float] = field(default_factory=dict)
    rss_mb_by_process_connected: dict[str, float] = field(default_factory=dict)


def run(args: argparse.Namespace, url: str, server_pid: int) -> Result:
    context = mp.get_context("spawn")
    procs = max(1, min(args.procs, args.connections))
    # Connection i, wherever it is held, starts i / rate seconds after the common start.
    shares = [list(range(k, args.connections, procs)) for k in range(procs)]
    controls: list[Connection] = []
    workers: list[Any] = []
    for k, share in enumerate(shares):
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_load_process,
            args=(url, share, float(args.rate), args.timeout, theirs),
            name=f"idle-load-{k}",
        )
        process.start()
        controls.append(ours)
        workers.append(process)
    try:
        return _measure(args, controls, server_pid)
    finally:
        for process in workers:
            process.join(10)
            if process.is_alive():
                process.kill()


def _measure(args: argparse.Namespace, controls: list[Connection], server_pid: int) -> Result:
    limits = [_recv(control, 60) for control in controls]
    fd_limit = min(limit["fd_limit"] for limit in limits)
    short = any(limit["fd_limit"] < limit["needed"] for limit in limits)
    if short:
        print(
            f"idle: a load process may hold only {fd_limit} descriptors and needs up to "
            f"{max(limit['needed'] for limit in limits)}: raise the hard limit (ulimit -Hn) or add --procs",
            file=sys.stderr,
        )
    server = server_processes(server_pid)
    time.sleep(args.settle)
    rss_before = rss_by_process(server)
    cpu_ramp = cpu_of(server)
    start_wall = time.time() + 0.3
    for control in controls:
        control.send(start_wall)
    ramps = [_recv(control, args.connections / args.rate + args.timeout * 3 + 60) for control in controls]
    cpu_ramp = cpu_of(server) - cpu_ramp
    # Let the last subscriptions and the allocator settle, then watch the server do nothing.
    time.sleep(args.settle)
    server = server_processes(server_pid)
    cpu_before = cpu_of(server)
    idle_started = time.perf_counter()
    time.sleep(args.idle)
    idle_seconds = time.perf_counter() - idle_started
    cpu_idle = cpu_of(server) - cpu_before
    rss_after = rss_by_process(server)
    for control in controls:
        control.send(True)
    outcomes = [_recv(control, 60) for control in controls]

    handshakes = sorted(h for ramp in ramps for h in ramp["handshakes"])
    errors: Counter[str] = Counter()
    for ramp in ramps:
        errors.update(ramp["errors"])
    subscribed = sum(ramp["subscribed"] for ramp in ramps)
    ramp_seconds = max(ramp["ramp_done"] for ramp in ramps) - start_wall
    before, after = sum(rss_before.values()), sum(rss_after.values())
    return Result(
        connections=args.connections,
        rate=args.rate,
        procs=len(controls),
        connections_established=len(handshakes),
        connections_subscribed=subscribed,
        connections_failed=args.connections - subscribed,
        dropped_while_idle=sum(outcome["dropped"] for outcome in outcomes),
        messages_while_idle=sum(outcome["extra_messages"] for outcome in outcomes),
        ramp_seconds=round(ramp_seconds, 2),
        achieved_rate=round(len(handshakes) / max(ramp_seconds, 1e-9), 1),
        handshake_ms_p50=round(percentile(handshakes, 50), 3),
        handshake_ms_p95=round(percentile(handshakes, 95), 3),
        handshake_ms_p99=round(percentile(handshakes, 99), 3),
        handshake_ms_max=round(max(handshakes, default=float("nan")), 3),
        server_cpu_seconds_ramp=round(cpu_ramp, 2),
        server_rss_mb_before=round(before, 1),
        server_rss_mb_connected=round(after, 1),
        rss_kb_per_connection=round((after - before) * 1024 / max(subscribed, 1), 2),
        idle_seconds=round(idle_seconds, 2),
        server_cpu_seconds_idle=round(cpu_idle, 3),
        server_cpu_percent_idle=round(cpu_idle / idle_seconds * 100, 2),
        load_cpu_seconds=round(sum(outcome["cpu"] for outcome in outcomes), 2),
        fd_limit_per_load_process=fd_limit,
        fd_limit_short=short,
        errors=dict(errors.most_common(10)),
        rss_mb_by_process_before={k: round(v, 1) for k, v in sorted(rss_before.items())},
        rss_mb_by_process_connected={k: round(v, 1) for k, v in sorted(rss_after.items())},
    )


def _recv(control: Connection, timeout: float) -> Any:
    if not control.poll(timeout):
        raise TimeoutError(f"a load process did not answer within {timeout:.0f}s")
    return control.recv()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=1000, help="idle subscribed clients to open")
    parser.add_argument("--rate", type=int, default=1000, help="handshakes started per second, in all")
    parser.add_argument("--procs", type=int, default=4, help="load processes holding the clients")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds to measure the idle server's CPU")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds before each RSS reading")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds a handshake or subscribe may take"
    )
    parser.add_argument("--workers", type=int, default=2, help="server workers (when starting one)")
    parser.add_argument("--url", help="target a running server instead of starting one")
    parser.add_argument("--token", help="a token for that server (with --url; see 'observatory token')")
    parser.add_argument("--server-pid", type=int, help="its supervisor pid, for CPU and RSS (with --url)")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.rate < 1 or args.procs < 1:
        parser.error("--connections, --rate and --procs must be positive")
    if args.url and not args.server_pid:
        parser.error("--url needs --server-pid: the figures are the server's")

    # The server started below inherits the raised limit too: each worker holds about N / workers sockets.
    soft, hard = raise_fd_limit()
    server = None
    if args.url:
        url, pid = args.url, args.server_pid
        if args.token:
            url += ("&" if "?" in url else "?") + "token=" + args.token
    else:
        from tests.harness import start_server

        if args.connections // args.workers + FD_MARGIN * 4 > soft:
            print(
                f"idle: each server worker may hold only {soft} descriptors (hard limit {hard}); "
                f"{args.connections} connections over {args.workers} workers may not all be admitted",
                file=sys.stderr,
            )
        server = start_server(
            Path(tempfile.mkdtemp(prefix="idle-")),
            workers=args.workers,
            max_connections=args.connections + 1000,
            max_connections_per_ip=max(args.connections + 1000, 10_000),
            max_handshakes_per_ip=max(args.connections * 10, 1_000_000),
            log_level="WARNING",
        )
        url, pid = server.url_with_token(), server.proc.pid
    try:
        result = run(args, url, pid)
    finally:
        if server is not None:
            server.stop()
    report(asdict(result), table=not args.json)
    if result.connections_subscribed < args.connections:
        print(
            f"idle: only {result.connections_subscribed} of {args.connections} connections were "
            f"established and subscribed; see errors",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
