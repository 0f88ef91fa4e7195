"""``observatory status`` against a running server, and against none."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT, ServerProcess, free_ports, start_server


def status(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "supervisor.py"), "status", *arguments],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


async def test_status_prints_the_live_figures_of_the_server(server: ServerProcess) -> None:
    clients = [server.client() for _ in range(3)]
    for client in clients:
        await client.connect()
        await client.subscribe({"eventTypes": ["status_probe"]})
    producer = server.producer()
    for i in range(7):
        producer.publish("status_probe", {"i": i})
    await asyncio.sleep(0.5)
    shown = await asyncio.to_thread(status, env={"WS_PORT": str(server.port)})  # the port from the config
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[0]: line.split()[1:] for line in shown.stdout.splitlines()[2:] if line.strip()}
    assert shown.stdout.startswith(f"observatory at http://127.0.0.1:{server.port}: ")
    assert lines["connections"][0] == "3", shown.stdout  # open now
    assert lines["subscriptions"][0] == "3"
    assert int(lines["messages"][0]) >= 3 * 7
    for name in ("observatory", "obs-ingest", "obs-worker-1", "obs-worker-2"):
        assert name in lines, shown.stdout
    for client in clients:
        await client.close()


def test_status_without_a_server_says_so() -> None:
    (port,) = free_ports(1)
    shown = status("--url", f"http://127.0.0.1:{port}")
    assert shown.returncode == 1
    assert f"no server at http://127.0.0.1:{port}" in shown.stderr


def test_status_of_an_unhealthy_server_exits_3(tmp_path: Path) -> None:
    sick = start_server(tmp_path, workers=1, health_memory_bytes=1_048_576, health_error_rate=0.0)
    try:

        async def misbehave() -> None:
            client = sick.client()
            await client.connect()
            with contextlib.suppress(Exception):
                await client.request("no_such_request", {})
            await client.close()

        asyncio.run(misbehave())
        shown = status("--url", f"http://127.0.0.1:{sick.port}")
        assert shown.returncode == 3, shown.stdout
        assert "unhealthy" in shown.stdout and "warning: memory" in shown.stdout
    finally:
        sick.stop()
