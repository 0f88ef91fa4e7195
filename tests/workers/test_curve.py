"""Roles and the CURVE-secured bus, as separate processes on loopback: an ingest host, workers
hosts and a watcher host, each a real observatory; keys made by the real ``observatory keys``."""

from __future__ import annotations

import asyncio
import shutil
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import zmq.auth

from clients import Producer
from clients.curve import ClientKeys
from tests.harness import (
    ROOT,
    ServerProcess,
    free_ports,
    next_event,
    spawn,
    start_server,
    wait_until,
)
from tests.transcripts import TranscriptWriter


def observatory(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "supervisor.py"), *args], capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    made = observatory("keys", "--dir", str(folder), "ingest", "worker", "watcher", "producer", "stranger")
    assert made.returncode == 0, made.stderr
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    for name in ("worker", "watcher", "producer"):  # never the stranger
        shutil.copy(folder / f"{name}.key", authorized)
    return folder


def test_keys_are_written_readable_by_their_owner_only_and_never_replaced_silently(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    assert observatory("keys", "--dir", str(folder), "a", "b").returncode == 0
    for name in ("a", "b"):
        assert stat.S_IMODE((folder / f"{name}.key_secret").stat().st_mode) == 0o600
        public, secret = zmq.auth.load_certificate(folder / f"{name}.key")
        assert secret is None and zmq.auth.load_certificate(folder / f"{name}.key_secret") != (public, None)
    before = (folder / "a.key_secret").read_bytes()
    again = observatory("keys", "--dir", str(folder), "a")
    assert again.returncode == 2 and "exist" in again.stderr
    assert (folder / "a.key_secret").read_bytes() == before
    assert observatory("keys", "--dir", str(folder), "--force", "a").returncode == 0
    assert (folder / "a.key_secret").read_bytes() != before
    assert observatory("keys", "--dir", str(folder), "../escape").returncode == 2


def test_a_server_key_without_a_secret_key_is_a_configuration_error(tmp_path: Path, keys: Path) -> None:
    result = observatory("--role", "workers", "--curve-server-key-file", str(keys / "ingest.key"))
    assert result.returncode == 2 and "curve_secret_key_file" in result.stderr


def ready_status(port: int) -> int:
    try:
        return int(urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2).status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def wait_logged(server: ServerProcess, text: str, timeout: float = 15.0) -> None:
    wait_until(lambda: text in server.log() or server.proc.poll() is not None, timeout, repr(text))
    assert server.proc.poll() is None, server.log()


async def test_hosts_on_a_curve_bus_see_each_other_and_a_stranger_sees_nothing(
    tmp_path: Path, keys: Path
) -> None:
    ingest_port, bus_port, query_port = free_ports(3)
    endpoints = {
        "ingest_endpoint": f"tcp://127.0.0.1:{ingest_port}",
        "bus_endpoint": f"tcp://127.0.0.1:{bus_port}",
        "query_endpoint": f"tcp://127.0.0.1:{query_port}",
    }
    for host in ("ingest-host", "worker", "stranger", "watcher"):
        (tmp_path / host).mkdir()
    servers: list[ServerProcess] = []
    try:
        ingest, _ = spawn(
            tmp_path / "ingest-host",
            1,
            role="ingest",
            curve_secret_key_file=keys / "ingest.key_secret",
            curve_authorized_dir=tmp_path / "authorized",
            **endpoints,
        )
        servers.append(ingest)
        await asyncio.to_thread(wait_logged, ingest, "ingest ready")

        def workers_host(name: str, **extra: Any) -> dict[str, Any]:
            return {
                "role": "workers",
                "curve_secret_key_file": keys / f"{name}.key_secret",
                "curve_server_key_file": keys / "ingest.key",
                **endpoints,
                **extra,
            }

        producer_keys = ClientKeys.load(str(keys / "producer.key_secret"), str(keys / "ingest.key"))
        # start_server returns once its worker has heard the producer's events over the bus.
        trusted = await asyncio.to_thread(
            start_server, tmp_path / "worker", 1, curve=producer_keys, **workers_host("worker")
        )
        servers.append(trusted)
        stranger, _ = spawn(tmp_path / "stranger", 1, **workers_host("stranger"))
        servers.append(stranger)
        watcher, _ = spawn(
            tmp_path / "watcher",
            1,
            role="watcher",
            watch=True,
            watch_poll_interval=0.2,
            transcripts_dir=tmp_path / "projects",
            curve_secret_key_file=keys / "watcher.key_secret",
            curve_server_key_file=keys / "ingest.key",
            **endpoints,
        )
        servers.append(watcher)
        await asyncio.to_thread(wait_logged, ingest, "refused a bus connection with an unknown CURVE key")
        await asyncio.to_thread(wait_until, lambda: ready_status(stranger.port) in (200, 503), 15, "stranger")

        inside = trusted.client()
        await inside.connect()
        await inside.subscribe({})
        outside = stranger.client()
        await outside.connect()
        await outside.subscribe({})

        # The watcher host's events reach the trusted workers host through the ingest host.
        TranscriptWriter(tmp_path / "projects", cwd="/home/dev/curved").user("over the bus")
        assert await next_event(inside, "project_discovered", 15) is not None
        # A producer with the stranger's key pushes nothing; one with an authorized key does.
        stranger_keys = ClientKeys.load(str(keys / "stranger.key_secret"), str(keys / "ingest.key"))
        with Producer(endpoints["ingest_endpoint"], curve=stranger_keys, send_timeout=0, linger=0) as rogue:
            try:
                rogue.publish("forged", {})
            except TimeoutError:
                pass  # no handshake, nowhere to queue: refused at once is as good
        trusted.producer().publish("genuine", {})
        event = await next_event(inside, None, 10)
        while event is not None and event["type"] not in ("genuine", "forged"):
            event = await next_event(inside, None, 10)
        assert event is not None and event["type"] == "genuine"

        # The stranger's workers never hear the bus: not ready, and no event for its clients.
        assert ready_status(stranger.port) == 503
        heard_outside = []
        while (message := await next_event(outside, None, 1.0)) is not None:
            heard_outside.append(message)
        assert [m for m in heard_outside if "seq" in m] == []
        await inside.close()
        await outside.close()
    finally:
        for server in reversed(servers):
            server.stop()
