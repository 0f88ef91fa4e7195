"""``observatory status`` against a running server, and against none."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from tests.harness import ROOT, ServerProcess, free_ports


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
