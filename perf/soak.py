"""Soak: a steady load with clients churning for a long time; memory of every process must stay flat.

    python perf/soak.py --duration 600 --clients 200 --rate 200 --churn 0.1

Starts a real observatory, keeps ``--clients`` subscribed clients, and every ``--churn-every``
seconds closes a fraction of them and opens as many new ones (half of which resume where a closed
one left off), while a producer publishes ``--rate`` events/s. Every ``--sample`` seconds it records
the RSS of the supervisor, the ingest and each worker. At the end it reports, per process, RSS at
the start and the end, the peak, and the growth per minute over the second half of the run (the
first half includes warm-up: the history filling, the allocator settling); and whether any client
saw a hole or a duplicate in its stream.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clients import ObservatoryClient
from tests.harness import ServerProcess, start_server


@dataclass
class Watched:
    client: ObservatoryClient
    last_seq: int | None = None
    epoch: str | None = None
    holes: int = 0
    duplicates: int = 0
    received: int = 0
    resume_failures: int = 0
    expect_jump: bool = False  # after resume_failed the server said it cannot fill the gap

    def on_event(self, message: dict[str, Any]) -> None:
        if message.get("type") == "resume_failed":
            self.resume_failures += 1
            self.expect_jump = True
            return
        seq = message.get("seq")
        if not isinstance(seq, int) or message.get("type") != "soak":
            return
        if self.last_seq is not None and message.get("epoch") == self.epoch:
            if seq <= self.last_seq:
                self.duplicates += 1
            elif seq != self.last_seq + 1 and not self.expect_jump:
                self.holes += 1
        self.expect_jump = False
        self.last_seq, self.epoch = seq, message.get("epoch")
        self.received += 1


@dataclass
class Samples:
    times: list[float] = field(default_factory=list)
    rss: dict[str, list[float]] = field(default_factory=dict)

    def take(self, server: ServerProcess, started: float) -> None:
        self.times.append(time.monotonic() - started)
        for name, process in processes(server).items():
            try:
                value = process.memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                value = float("nan")
            self.rss.setdefault(name, []).append(value)


def processes(server: ServerProcess) -> dict[str, psutil.Process]:
    found = {"supervisor": psutil.Process(server.proc.pid)}
    for child in found["supervisor"].children():
        try:
            found[child.name()] = child
        except psutil.NoSuchProcess:
            pass
    return found


def slope_per_minute(times: list[float], values: list[float]) -> float:
    """Least-squares growth of values over the second half of the run, in units per minute."""
    half = len(times) // 2
    xs, ys = times[half:], values[half:]
    if len(xs) < 2:
        return 0.0
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return (
        0.0
        if spread == 0
        else sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread * 60
    )


async def open_client(server: ServerProcess, resume_from: Watched | None = None) -> Watched:
    client = server.client()
    await client.connect()
    watched = Watched(client)
    client.on("*", watched.on_event)
    resume = None
    if resume_from is not None and resume_from.last_seq is not None:
        resume = {"epoch": resume_from.epoch, "seq": resume_from.last_seq}
        watched.last_seq, watched.epoch = resume_from.last_seq, resume_from.epoch
    await client.subscribe({"eventTypes": ["soak"]}, resume=resume)
    return watched


async def produce(server: ServerProcess, rate: float, size: int, until: float) -> int:
    producer = server.producer()
    padding = "x" * size
    sent = 0
    started = time.monotonic()
    while (now := time.monotonic()) < until:
        due = int((now - started) * rate)
        while sent < due:
            producer.publish("soak", {"i": sent, "p": padding})
            sent += 1
        await asyncio.sleep(0.005)
    return sent


async def soak(args: argparse.Namespace, server: ServerProcess) -> dict[str, Any]:
    rng = random.Random(args.seed)
    started = time.monotonic()
    until = started + args.duration
    clients = [await open_client(server) for _ in range(args.clients)]
    retired: list[Watched] = []
    samples = Samples()
    samples.take(server, started)
    producing = asyncio.ensure_future(produce(server, args.rate, args.size, until))
    next_sample = started + args.sample
    churned = 0
    while time.monotonic() < until:
        await asyncio.sleep(min(args.churn_every, max(until - time.monotonic(), 0)))
        leaving = rng.sample(range(len(clients)), int(len(clients) * args.churn))
        for index in sorted(leaving, reverse=True):
            gone = clients.pop(index)
            await gone.client.close()
            retired.append(gone)
            clients.append(await open_client(server, resume_from=gone if rng.random() < 0.5 else None))
            churned += 1
        if time.monotonic() >= next_sample:
            samples.take(server, started)
            next_sample += args.sample
    sent = await producing
    await asyncio.sleep(1.0)
    samples.take(server, started)
    everyone = clients + retired
    for watched in clients:
        await watched.client.close()
    report = {
        name: {
            "rss_mb_start": round(values[0], 1),
            "rss_mb_end": round(values[-1], 1),
            "rss_mb_peak": round(max(values), 1),
            "growth_mb_per_min_second_half": round(slope_per_minute(samples.times, values), 3),
        }
        for name, values in samples.rss.items()
    }
    return {
        "duration_s": args.duration,
        "clients": args.clients,
        "rate": args.rate,
        "events_sent": sent,
        "clients_churned": churned,
        "deliveries": sum(w.received for w in everyone),
        "holes": sum(w.holes for w in everyone),  # gaps the server did not announce
        "resume_failures": sum(w.resume_failures for w in everyone),
        "duplicates": sum(w.duplicates for w in everyone),
        "processes": report,
        "samples": {
            "t": [round(t, 1) for t in samples.times],
            **{k: [round(v, 1) for v in vs] for k, vs in samples.rss.items()},
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=float, default=600.0, help="seconds (the reliability issue asks >= 600)"
    )
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--size", type=int, default=200, help="bytes of padding per event")
    parser.add_argument("--churn", type=float, default=0.1, help="fraction of clients replaced each round")
    parser.add_argument("--churn-every", type=float, default=5.0, help="seconds between churn rounds")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--history-size",
        type=int,
        default=20_000,
        help="the ingest's history: small enough to fill early, so the second half shows steady state",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    server = start_server(
        Path(tempfile.mkdtemp(prefix="soak-")),
        workers=args.workers,
        log_level="WARNING",
        history_size=args.history_size,
    )
    try:
        result = asyncio.run(soak(args, server))
    finally:
        server.stop()
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
