"""A few seconds of each benchmark, so perf/ never rots; the figures themselves are not asserted."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.harness import ROOT, TEST_SECRET, start_server


def run_benchmark(script: str, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(ROOT / "perf" / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


def test_fanout_smoke_run_delivers_everything_in_order() -> None:
    figures = run_benchmark(
        "fanout.py", "--clients", "6", "--procs", "2", "--rate", "50", "--duration", "1", "--json"
    )
    assert figures["events_sent"] >= 40
    assert figures["loss"] == 0 and figures["out_of_order"] == 0
    assert figures["latency_ms_p99"] > 0 and figures["server_cpu_seconds"] > 0


def test_floor_smoke_run_counts_every_send() -> None:
    figures = run_benchmark(
        "floor.py", "--clients", "6", "--procs", "2", "--rate", "50", "--duration", "1", "--json"
    )
    assert figures["sends"] >= 6 * 40 and figures["received"] == figures["sends"]
    assert figures["sender_system_us_per_send"] > 0 and figures["latency_ms_p99"] > 0


def test_soak_smoke_run_reports_memory_and_no_holes() -> None:
    figures = run_benchmark(
        "soak.py",
        "--duration",
        "4",
        "--clients",
        "8",
        "--rate",
        "50",
        "--churn-every",
        "1",
        "--churn",
        "0.25",
        "--sample",
        "1",
        "--history-size",
        "100",
    )
    assert figures["clients_churned"] >= 2 and figures["deliveries"] > 0
    assert figures["holes"] == 0 and figures["duplicates"] == 0
    assert {"supervisor", "obs-ingest", "obs-worker-1", "obs-worker-2"} <= set(figures["processes"])


def test_deflate_smoke_run_compresses_once_per_broadcast() -> None:
    figures = run_benchmark("deflate.py", "--clients", "3", "--events", "10", "--rounds", "5")
    assert figures["in_process"]["compressed_bytes"] < figures["in_process"]["event_bytes"]
    on, off = figures["server"][0], figures["server"][1]
    assert on["deliveries"] == off["deliveries"] == 30
    assert on["deflate_runs"] == 10 and off["deflate_runs"] == 0
    assert on["bytes_per_delivery"] < off["bytes_per_delivery"] / 2


def test_idle_smoke_run_admits_and_measures_every_connection() -> None:
    figures = run_benchmark(
        "idle.py", "--connections", "20", "--rate", "100", "--procs", "2", "--idle", "1", "--json"
    )
    assert figures["connections_established"] == figures["connections_subscribed"] == 20
    assert figures["connections_failed"] == 0, figures["errors"]
    assert figures["dropped_while_idle"] == figures["messages_while_idle"] == 0
    assert 0 < figures["handshake_ms_p50"] <= figures["handshake_ms_p99"] <= figures["handshake_ms_max"]
    assert figures["handshake_ms_p99"] < 5000
    assert figures["server_rss_mb_before"] > 0 and figures["server_rss_mb_connected"] > 0
    assert {"supervisor", "obs-ingest", "obs-worker-1", "obs-worker-2"} <= set(
        figures["rss_mb_by_process_connected"]
    )
    assert figures["server_cpu_seconds_idle"] >= 0 and not figures["fd_limit_short"]


def clean_environment() -> dict[str, str]:
    """This environment without the settings the locustfile reads (an exported token would win)."""
    ours = ("OBSERVATORY_TOKEN", "OBSERVATORY_JWT_", "OBSERVATORY_LOAD_", "OBSERVATORY_INGEST", "LOCUST_")
    return {k: v for k, v in os.environ.items() if not k.startswith(ours)}


def locust_rows(csv_path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(csv_path, newline="") as file:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(file)}


def test_locust_headless_run_times_every_event_with_no_gap(tmp_path: Path) -> None:
    # locust monkey-patches the standard library when imported: it only ever runs in its own process.
    server = start_server(tmp_path, workers=2, log_level="WARNING")
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(ROOT / "perf" / "locustfile.py"),
                "--headless",
                "--users",
                "4",  # the producer (spawned first) and 3 subscribers
                "--spawn-rate",
                "20",
                "--run-time",
                "4s",
                "--host",
                f"ws://127.0.0.1:{server.port}",
                "--csv",
                str(tmp_path / "locust"),
                "--only-summary",
            ],
            capture_output=True,
            text=True,
            timeout=90,
            cwd=tmp_path,
            env={
                **clean_environment(),
                "OBSERVATORY_JWT_SECRET": TEST_SECRET,  # auth is on: the locustfile mints its token
                "OBSERVATORY_INGEST": server.ingest_endpoint,
                "OBSERVATORY_LOAD_RATE": "50",
            },
        )
    finally:
        server.stop()
    # Locust exits 1 when any request failed: a refused handshake, a gap, a broken connection.
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    rows = locust_rows(tmp_path / "locust_stats.csv")
    assert {name for _, name in rows} == {"connect", "subscribe", "locust_event", "publish", "Aggregated"}
    for (_, name), row in rows.items():
        assert row["Failure Count"] == "0", (name, row)
    assert rows["WS", "connect"]["Request Count"] == rows["WS", "subscribe"]["Request Count"] == "3"
    published = int(rows["ZMQ", "publish"]["Request Count"])
    received = int(rows["WS", "locust_event"]["Request Count"])
    assert published >= 100  # 50/s for 4 s; the CSV is written every second, so it lags a little
    assert received >= 2 * published  # three subscribers, each connected within the first second
    assert 0 < float(rows["WS", "locust_event"]["Average Response Time"]) < 1000


def test_locust_subscriber_reports_a_sequence_gap_as_a_failure() -> None:
    # The server never loses an event in the run above; feed a subscriber a stream with holes instead.
    script = """
import importlib.util, sys, time
import orjson
spec = importlib.util.spec_from_file_location("locustfile", sys.argv[1])
locustfile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(locustfile)
from locust.env import Environment

environment = Environment(user_classes=[locustfile.Subscriber])
fired = []
environment.events.request.add_listener(lambda **request: fired.append(request))
locustfile.Subscriber.host = "ws://127.0.0.1:9"
user = locustfile.Subscriber(environment)
user.on_start()

def deliver(seq, epoch="e1", kind="gap_test", **data):
    message = {"type": kind, "seq": seq, "epoch": epoch, "data": data}
    user._on_message(orjson.dumps(message), time.time_ns())

user.every_seq = True  # what a {} subscription under an all-projects token is confirmed as
for seq in (1, 2, 4, 4, 5):
    deliver(seq, t=time.time_ns())
deliver(6, kind="untimed")  # another producer's event: counted and checked, not timed
deliver(1, epoch="e2", t=time.time_ns())  # the ingest restarted: numbering starts again, no gap
user.every_seq = False  # a filtered subscription: the producer's own count is checked instead
for n in (1, 2, 5):
    deliver(10 + n, epoch="e2", p="producer-a", n=n, t=time.time_ns())
print(orjson.dumps([[r["name"], r["exception"] is not None, r["response_time"]] for r in fired]).decode())
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "perf" / "locustfile.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**clean_environment(), "OBSERVATORY_TOKEN": "unused"},
    )
    assert result.returncode == 0, result.stderr
    fired = json.loads(result.stdout.strip().splitlines()[-1])
    failures = [index for index, (_, failed, _) in enumerate(fired) if failed]
    assert len(fired) == 10 and failures == [2, 3, 9]  # seq 4 after 2, seq 4 again, count 5 after 2
    assert fired[5][::2] == ["untimed", None]
    assert all(name == "gap_test" and latency >= 0 for name, _, latency in fired[:5] + fired[6:])
