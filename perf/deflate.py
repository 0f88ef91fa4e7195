"""What permessage-deflate costs, and what compressing once per broadcast saves.

Part 1 (in process): deflating one event for each of N clients, as a server with per-client contexts
must, against deflating it once per broadcast, as Observatory does with server_no_context_takeover.
Part 2 (a real server, one worker): N websockets clients receive E events with compression on and
then off; the worker's CPU per delivery and the bytes it sent come from psutil and /metrics.

    .venv/bin/python perf/deflate.py --clients 50 --events 200 --size 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
import psutil
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.deflate import compress
from tests.harness import ServerProcess, start_server

# Words drawn at random (seeded) rather than one sentence repeated: repetition compresses to almost
# nothing and would flatter the figures; this lands near what real transcript text does.
VOCABULARY = (
    "the orders handler session database request response error fix test file read edit bash "
    "python function class import return value context manager close open query table index "
    "migration commit branch review change line code endpoint status timeout retry cache"
)


def event_of(size: int) -> dict[str, object]:
    """A message_added shaped like the watcher's, its text about ``size`` bytes of varied prose."""
    chooser = random.Random(size)
    vocabulary = VOCABULARY.split()
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < size:
        words.append(
            chooser.choice(vocabulary) + chooser.choice(("", "", "", ".", ",", "s", "ed", "_id", "()"))
        )
    text = " ".join(words)[:size]
    return {
        "conversationId": "d284f444-9e56-4318-a472-bc18481b7793",
        "projectInfo": {"id": 2601466105186615, "name": "shop_api", "path": "/home/dev/shop_api"},
        "isLatest": True,
        "message": {"id": "16b2c7aa", "type": "assistant", "content": text, "toolUses": []},
    }


def in_process(size: int, clients: int, rounds: int) -> dict[str, float]:
    payload = orjson.dumps({"type": "message_added", "data": event_of(size), "seq": 1})
    once, each = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        compressed = compress(payload, 15, 3)
        once.append(time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(clients):
            compress(payload, 15, 3)
        each.append(time.perf_counter() - started)
    figures = {
        "event_bytes": len(payload),
        "compressed_bytes": len(compressed),
        "once_per_broadcast_us": statistics.median(once) * 1e6,
        "once_per_client_us": statistics.median(each) * 1e6,
    }
    print(
        f"in process, {len(payload)} B event -> {len(compressed)} B ({len(compressed) / len(payload):.0%}), "
        f"{clients} clients: once per broadcast {figures['once_per_broadcast_us']:.0f} us, "
        f"once per client {figures['once_per_client_us']:.0f} us "
        f"({figures['once_per_client_us'] / figures['once_per_broadcast_us']:.0f}x), median of {rounds}",
        file=sys.stderr,
    )
    return figures


def scrape(server: ServerProcess) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


async def deliver(
    server: ServerProcess, clients: int, events: int, size: int, compression: str | None
) -> dict[str, float]:
    sockets = []
    for _ in range(clients):
        ws = await connect(
            f"ws://127.0.0.1:{server.port}/",
            additional_headers={"Authorization": f"Bearer {server.token()}"},
            compression=compression,
            max_size=2**24,
        )
        await ws.recv()
        await ws.send(
            orjson.dumps({"type": "subscribe", "data": {"filters": {"eventTypes": ["perf"]}}}).decode()
        )
        await ws.recv()
        sockets.append(ws)
    (worker,) = server.pids_named("obs-worker")
    process = psutil.Process(worker)
    before_cpu, before = sum(process.cpu_times()[:2]), scrape(server)
    producer = server.producer()
    data = event_of(size)

    async def drain(ws: object) -> None:
        for _ in range(events):
            await ws.recv()  # type: ignore[attr-defined]

    readers = [asyncio.create_task(drain(ws)) for ws in sockets]
    for _ in range(events):
        producer.publish("perf", data)
        await asyncio.sleep(0.002)
    await asyncio.wait_for(asyncio.gather(*readers), 120)
    cpu, after = sum(process.cpu_times()[:2]) - before_cpu, scrape(server)
    deliveries = clients * events
    sent = after["observatory_bytes_out_total"] - before["observatory_bytes_out_total"]
    runs = after["observatory_compressions_total"] - before["observatory_compressions_total"]
    print(
        f"server, compression {'on ' if compression else 'off'}: {deliveries} deliveries, "
        f"worker CPU {cpu / deliveries * 1e6:.1f} us per delivery, {sent / deliveries:.0f} B per delivery, "
        f"{runs:.0f} deflate runs",
        file=sys.stderr,
    )
    for ws in sockets:
        await ws.close()
    return {
        "compression": bool(compression),
        "deliveries": deliveries,
        "worker_cpu_us_per_delivery": cpu / deliveries * 1e6,
        "bytes_per_delivery": sent / deliveries,
        "deflate_runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--size", type=int, default=10_000, help="bytes of message text per event")
    parser.add_argument("--rounds", type=int, default=200, help="in-process repetitions")
    args = parser.parse_args()
    figures: dict[str, object] = {"in_process": in_process(args.size, args.clients, args.rounds)}
    with tempfile.TemporaryDirectory() as folder:
        server = start_server(Path(folder), workers=1, max_connections_per_ip=10_000)
        try:
            figures["server"] = [
                asyncio.run(deliver(server, args.clients, args.events, args.size, compression))
                for compression in ("deflate", None, "deflate", None)
            ]
        finally:
            server.stop()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
