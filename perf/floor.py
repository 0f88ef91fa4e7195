"""The send floor: what the kernel charges a sender for one WebSocket frame to one client, measured
with the same load processes as fanout.py, so the server's figures can be read against it.

    python perf/floor.py --clients 1000 --rate 100 --duration 8

A bare sender (this process, blocking sockets, TCP_NODELAY, no event loop) answers the clients'
WebSocket handshakes by hand, then sends each event as one ready-made frame to every client, one
``send`` per client per event, the least any server can do without batching. Its *system* CPU per
send is the kernel's floor on this machine under this load; its user CPU is this loop's own.
JSON on stdout, a table on stderr.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import multiprocessing as mp
import resource
import socket
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout import END, EVENT, _load_process, percentile, report  # perf/ is this script's own folder

from core.frames import text_frame

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _accept_websocket(listener: socket.socket) -> socket.socket:
    """One client's opening handshake (RFC 6455 4.2), answered without a library."""
    conn, _ = listener.accept()
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("a client left during its handshake")
        request += chunk
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest())
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def run(args: argparse.Namespace) -> dict[str, Any]:
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    url = f"ws://127.0.0.1:{listener.getsockname()[1]}/"
    context = mp.get_context("spawn")
    per_process = [args.clients // args.procs + (i < args.clients % args.procs) for i in range(args.procs)]
    pipes, processes = [], []
    for count in per_process:
        ready_r, ready_w = context.Pipe(duplex=False)
        finish_r, finish_w = context.Pipe(duplex=False)
        out_r, out_w = context.Pipe(duplex=False)
        process = context.Process(target=_load_process, args=(url, count, 0, ready_w, finish_r, out_w))
        process.start()
        pipes.append((ready_r, finish_w, out_r))
        processes.append(process)
    listener.settimeout(60)
    clients = [_accept_websocket(listener) for _ in range(args.clients)]
    for ready_r, _, _ in pipes:
        if not ready_r.poll(120):
            raise TimeoutError("load processes did not connect in time")
        ready_r.recv()

    padding = "x" * max(args.size - 40, 0)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    deadline = started + args.duration
    sent = 0
    while (now := time.perf_counter()) < deadline:
        due = int((now - started) * args.rate)
        while sent < due:
            sent += 1
            event = {"type": EVENT, "data": {"t": time.time_ns(), "p": padding}, "seq": sent}
            frame = text_frame(orjson.dumps(event))
            for conn in clients:
                conn.send(frame)
        time.sleep(0.0005)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    end = text_frame(orjson.dumps({"type": END}))
    for conn in clients:
        conn.send(end)
    for _, finish_w, _ in pipes:
        finish_w.send(True)
    outcomes = [out_r.recv() if out_r.poll(60) else None for _, _, out_r in pipes]
    for conn in clients:
        conn.close()
    listener.close()
    for process in processes:
        process.join(10)

    latencies: list[float] = []
    received = 0
    load_cpu = 0.0
    for outcome in outcomes:
        if outcome is not None:
            chunk = array("d")
            chunk.frombytes(outcome["latencies"])
            latencies.extend(chunk)
            received += outcome["received"]
            load_cpu += outcome["cpu"]
    latencies.sort()
    sends = sent * args.clients
    return {
        "clients": args.clients,
        "rate": args.rate,
        "size": args.size,
        "duration": round(elapsed, 2),
        "sends": sends,
        "received": received,
        "sender_system_us_per_send": round((after.ru_stime - before.ru_stime) / max(sends, 1) * 1e6, 3),
        "sender_user_us_per_send": round((after.ru_utime - before.ru_utime) / max(sends, 1) * 1e6, 3),
        "latency_ms_p50": round(percentile(latencies, 50), 3),
        "latency_ms_p99": round(percentile(latencies, 99), 3),
        "load_cpu_seconds": round(load_cpu, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=100, help="events per second")
    parser.add_argument("--size", type=int, default=200, help="approximate bytes of event data")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load")
    parser.add_argument("--procs", type=int, default=2, help="load processes holding the clients")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args(argv)
    result = run(args)
    report(result, table=not args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
