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
