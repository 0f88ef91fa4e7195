"""A few seconds of the fan-out benchmark, so perf/ never rots; the figures are not asserted."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.harness import ROOT


def test_fanout_smoke_run_delivers_everything_in_order() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "perf" / "fanout.py"),
            "--clients",
            "6",
            "--procs",
            "2",
            "--rate",
            "50",
            "--duration",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["events_sent"] >= 40
    assert figures["loss"] == 0 and figures["out_of_order"] == 0
    assert figures["latency_ms_p99"] > 0 and figures["server_cpu_seconds"] > 0


def test_soak_smoke_run_reports_flat_memory_and_no_holes() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "perf" / "soak.py"),
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
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["clients_churned"] >= 2 and figures["deliveries"] > 0
    assert figures["holes"] == 0 and figures["duplicates"] == 0
    assert {"supervisor", "obs-ingest", "obs-worker-1", "obs-worker-2"} <= set(figures["processes"])
