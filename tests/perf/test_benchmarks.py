"""A few seconds of each benchmark, so perf/ never rots; the figures themselves are not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.harness import ROOT


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
