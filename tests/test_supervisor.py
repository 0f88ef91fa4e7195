"""The supervisor with real processes: start, restart, liveness, clean stop, no orphans, boot errors."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.harness import (
    ROOT,
    TEST_SECRET,
    ServerProcess,
    free_ports,
    next_event,
    spawn,
    start_server,
    wait_ready,
)


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def signal_child(server: ServerProcess, name: str, signum: int) -> int:
    (victim,) = server.pids_named(name)
    os.kill(victim, signum)
    return victim


def wait_replaced(server: ServerProcess, name: str, victim: int) -> None:
    wait_until(lambda: server.pids_named(name) not in ([], [victim]), 10, f"a new {name}")


@pytest.fixture
def own_server(tmp_path: Path) -> ServerProcess:
    """A server this test may break; the fixture still removes whatever is left of it."""
    server = start_server(tmp_path, workers=2, worker_timeout=3, graceful_timeout=5)
    yield server  # type: ignore[misc]
    server.stop()


async def test_sigterm_tells_clients_closes_1001_and_leaves_no_child(own_server: ServerProcess) -> None:
    clients = [own_server.client() for _ in range(6)]
    await asyncio.gather(*(c.connect() for c in clients))
    children = own_server.children()
    assert len(children) == 3
    own_server.proc.send_signal(signal.SIGTERM)
    for client in clients:
        notice = await next_event(client, "server_shutdown", 5)
        assert notice is not None and notice["data"]["reconnectAfter"] > 0
        assert await client.receive(5) is None
        assert client.close_code == 1001
    assert await asyncio.to_thread(own_server.proc.wait, 10) == 0
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


async def test_killed_worker_is_restarted_and_serves(own_server: ServerProcess) -> None:
    victim = signal_child(own_server, "obs-worker-1", signal.SIGKILL)
    await asyncio.to_thread(wait_replaced, own_server, "obs-worker-1", victim)
    await wait_ready(own_server)
    assert f"worker 1 (pid {victim}) was killed by SIGKILL" in own_server.log()


async def test_killed_ingest_is_restarted_and_events_flow_again(own_server: ServerProcess) -> None:
    victim = signal_child(own_server, "obs-ingest", signal.SIGKILL)
    await asyncio.to_thread(wait_replaced, own_server, "obs-ingest", victim)
    # The workers' ZeroMQ sockets reconnect by themselves; wait_ready proves the bus carries again.
    await wait_ready(own_server)


def test_wedged_worker_is_killed_and_replaced(own_server: ServerProcess) -> None:
    # A stopped process still exists, but its loop can no longer beat.
    victim = signal_child(own_server, "obs-worker-2", signal.SIGSTOP)
    wait_until(lambda: f"worker 2 (pid {victim}) missed its beats" in own_server.log(), 10, "the kill")
    wait_replaced(own_server, "obs-worker-2", victim)


def test_children_exit_when_the_supervisor_is_killed(own_server: ServerProcess) -> None:
    children = own_server.children()
    assert len(children) == 3
    own_server.proc.kill()
    own_server.proc.wait(5)
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"orphans left: {alive}"


def test_port_in_use_is_a_boot_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server, _ = spawn(tmp_path, workers=1, port=port)
        try:
            assert server.proc.wait(15) == 3
        finally:
            server.stop()
    assert f"cannot listen on 127.0.0.1:{port}: already in use" in server.log()


def test_ingest_endpoint_in_use_stops_everything_with_the_boot_error_code(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        server, _ = spawn(tmp_path, workers=2, ingest_endpoint=endpoint)
        try:
            assert server.proc.wait(15) == 3
        finally:
            server.stop()
    log = server.log()
    assert f"cannot bind ingest_endpoint {endpoint}" in log
    assert "cannot boot; stopping observatory" in log
    assert log.count("started ingest") == 1, "a child that cannot boot must not be respawned"


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--port", "0"], {}, "port (from --port): 0 is below 1"),
        ([], {"WS_PORT": "eighty"}, "port (from WS_PORT): 'eighty' is not an integer"),
        (["--log-level", "chatty"], {}, "log_level (from --log-level)"),
        (["--bus-endpoint", "127.0.0.1:1"], {}, "is not a ZeroMQ endpoint"),
        (["--config", "/nonexistent/observatory.toml"], {}, "cannot read config file"),
    ],
    ids=["port-range", "env-not-int", "log-level", "endpoint-scheme", "missing-config"],
)
def test_bad_configuration_is_a_clear_error(args: list[str], env: dict[str, str], expected: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "supervisor.py"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_config_file_env_and_flags_layer(tmp_path: Path) -> None:
    port, ingest, bus, query = free_ports(4)
    config = tmp_path / "observatory.toml"
    config.write_text(f'port = 1\nworkers = 1\ningest_endpoint = "tcp://127.0.0.1:{ingest}"\n')
    env = {
        **os.environ,
        "OBSERVATORY_BUS": f"tcp://127.0.0.1:{bus}",
        "WS_PORT": "2",
        "OBSERVATORY_JWT_SECRET": TEST_SECRET,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    argv = [
        sys.executable,
        str(ROOT / "supervisor.py"),
        "--config",
        str(config),
        "--port",
        str(port),
        "--query-endpoint",
        f"tcp://127.0.0.1:{query}",
    ]
    log_path = tmp_path / "layers.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
    server = ServerProcess(proc, port, f"tcp://127.0.0.1:{ingest}", 1, log_path)
    try:
        asyncio.run(wait_ready(server))
        assert f"producers push to tcp://127.0.0.1:{ingest}" in server.log()
        assert f"bus tcp://127.0.0.1:{bus}" in server.log()
    finally:
        assert server.stop() == 0


def test_python_supervisor_py_help_lists_every_option() -> None:
    from core.config import OPTIONS

    result = subprocess.run(
        [sys.executable, str(ROOT / "supervisor.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 0
    for option in OPTIONS:
        assert option.flag in result.stdout and option.env in result.stdout


async def test_sighup_replaces_every_worker_while_the_port_keeps_serving(own_server: ServerProcess) -> None:
    before = set(own_server.pids_named("obs-worker"))
    ingest = own_server.pids_named("obs-ingest")
    own_server.proc.send_signal(signal.SIGHUP)

    def replaced() -> bool:
        after = set(own_server.pids_named("obs-worker"))
        return len(after) == 2 and not after & before

    await asyncio.to_thread(wait_until, replaced, 20, "both workers replaced")
    assert own_server.pids_named("obs-ingest") == ingest
    assert own_server.proc.poll() is None
    await wait_ready(own_server)


def test_a_second_server_cannot_steal_live_ipc_endpoints(tmp_path: Path) -> None:
    endpoints = {name: f"ipc://{tmp_path}/{name}.sock" for name in ("ingest", "bus", "query")}
    ipc = {f"{name}_endpoint": endpoint for name, endpoint in endpoints.items()}
    first = start_server(tmp_path, workers=1, **ipc)
    try:
        second, _ = spawn(tmp_path, workers=1, **ipc)
        try:
            assert second.proc.wait(15) == 3
        finally:
            second.stop()
        assert f"cannot bind ingest_endpoint {endpoints['ingest']}: already in use" in second.log()
        asyncio.run(wait_ready(first))  # the first one still owns its bus
    finally:
        first.stop()
