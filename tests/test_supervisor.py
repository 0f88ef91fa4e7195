"""The supervisor with real processes: start, restart, liveness, clean stop, no orphans, boot errors."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jwt
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients import ObservatoryClient
from core.transcripts import project_id_for
from tests.harness import (
    ROOT,
    TEST_SECRET,
    ServerProcess,
    close_all,
    free_ports,
    next_event,
    signal_child,
    spawn,
    start_server,
    wait_ready,
    wait_replaced,
    wait_until,
)


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


async def test_a_killed_workers_connections_and_subscriptions_are_no_longer_counted(tmp_path: Path) -> None:
    """Its successor writes the other row of the slot; the supervisor must zero the dead one's, or its
    connections would hold max_connections and the gauges until the slot's next restart."""
    server = await asyncio.to_thread(start_server, tmp_path, 1, max_connections=4)
    try:
        clients = [server.client() for _ in range(4)]
        for client in clients:
            await client.connect()
            await client.subscribe({"eventTypes": ["anything"]})
        assert scraped(server, "observatory_connections_active") == 4
        victim = signal_child(server, "obs-worker-1", signal.SIGKILL)
        await asyncio.to_thread(wait_replaced, server, "obs-worker-1", victim)
        await wait_ready(server)
        assert scraped(server, "observatory_connections_active") == 0
        assert scraped(server, "observatory_subscriptions") == 0
        again = [server.client() for _ in range(4)]
        for client in again:
            await client.connect()  # the cap of 4 counts only live connections
        assert scraped(server, "observatory_connections_active") == 4
        await close_all(again)
    finally:
        server.stop()


def scraped(server: ServerProcess, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    return next(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and not sample.labels
    )


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


def run_observatory(
    args: list[str], env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "supervisor.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
        cwd=ROOT,
    )


def test_no_auth_beyond_loopback_needs_insecure(tmp_path: Path) -> None:
    refused = run_observatory(["--auth", "false", "--host", "0.0.0.0"], {})
    assert refused.returncode == 2
    assert "refusing to serve 0.0.0.0 without authentication" in refused.stderr
    server, _ = spawn(tmp_path, workers=1, auth="false", host="0.0.0.0", insecure="true")
    try:
        asyncio.run(wait_ready(server))
        assert "authentication is OFF" in server.log()
    finally:
        server.stop()


def test_no_auth_on_loopback_is_allowed_and_said(tmp_path: Path) -> None:
    server = start_server(tmp_path, workers=1, auth="false")
    try:
        assert "authentication is OFF" in server.log()
    finally:
        server.stop()


def test_first_start_generates_a_private_secret_and_prints_a_working_address(tmp_path: Path) -> None:
    config_home = tmp_path / "home-config"
    server, _ = spawn(
        tmp_path, workers=1, env={"OBSERVATORY_JWT_SECRET": "", "XDG_CONFIG_HOME": str(config_home)}
    )
    try:
        secret_file = config_home / "observatory" / "jwt-secret"
        wait_until(lambda: "connect with ws://" in server.log(), 15, "the printed address")
        assert secret_file.stat().st_mode & 0o777 == 0o600
        assert (secret_file.parent.stat().st_mode & 0o777) == 0o700
        address = server.log().split("connect with ", 1)[1].split()[0]
        server.secret = secret_file.read_text().strip()
        asyncio.run(wait_ready(server))

        async def use(address: str) -> None:
            client = ObservatoryClient(address)
            assert (await client.connect())["clientId"]
            await client.close()

        asyncio.run(use(address))
        minted = run_observatory(
            ["token", "--project", "5", "--ttl", "60", "--user", "bob", "--session", "s9"],
            {"OBSERVATORY_JWT_SECRET": "", "XDG_CONFIG_HOME": str(config_home)},
        )
        assert minted.returncode == 0, minted.stderr
        claims = jwt.decode(minted.stdout.strip(), server.secret, algorithms=["HS256"])
        assert claims["sub"] == "bob" and claims["projectIds"] == [5] and claims["sid"] == "s9"
        assert claims["permissions"] == ["query", "subscribe"]
        assert 55 <= claims["exp"] - claims["iat"] <= 60
    finally:
        server.stop()


def test_token_command_names_projects_by_their_working_directory() -> None:
    minted = run_observatory(
        ["token", "--project-dir", "/home/dev/shop_api", "--project", "7"],
        {"OBSERVATORY_JWT_SECRET": TEST_SECRET},
    )
    assert minted.returncode == 0, minted.stderr
    claims = jwt.decode(minted.stdout.strip(), TEST_SECRET, algorithms=["HS256"])
    assert claims["projectIds"] == [7, project_id_for("/home/dev/shop_api")]


def test_the_start_prints_the_dashboard_with_its_token_in_the_fragment(tmp_path: Path) -> None:
    server, _ = spawn(tmp_path, workers=1)
    try:
        wait_until(lambda: "dashboard at http://" in server.log(), 15, "the dashboard's address")
        address = server.log().split("dashboard at ", 1)[1].split()[0]
        assert address.startswith(f"http://127.0.0.1:{server.port}/#token=")
        token = address.split("#token=", 1)[1]
        assert jwt.decode(token, TEST_SECRET, algorithms=["HS256"])["permissions"] == ["admin"]
    finally:
        server.stop()


def test_token_command_refuses_without_projects_and_with_a_public_key(tmp_path: Path) -> None:
    no_projects = run_observatory(["token"], {"OBSERVATORY_JWT_SECRET": TEST_SECRET})
    assert no_projects.returncode == 2 and "--all-projects" in no_projects.stderr
    key = tmp_path / "public.pem"
    key.write_text("-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n")
    public = run_observatory(
        ["token", "--all-projects"],
        {"OBSERVATORY_JWT_SECRET": "", "OBSERVATORY_JWT_PUBLIC_KEY_FILE": str(key)},
    )
    assert public.returncode == 2 and "public key" in public.stderr


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OBSERVATORY_JWT_SECRET": "short"}, "too short"),
        (
            {"OBSERVATORY_JWT_SECRET": TEST_SECRET, "OBSERVATORY_JWT_ALGORITHMS": "RS256"},
            "cannot be used with",
        ),
        ({"OBSERVATORY_JWT_SECRET_FILE": "/nonexistent/secret"}, "cannot read jwt_secret_file"),
    ],
    ids=["short-secret", "algorithm-family", "missing-secret-file"],
)
def test_bad_key_configuration_is_a_clear_error(env: dict[str, str], expected: str) -> None:
    result = run_observatory([], {"OBSERVATORY_JWT_SECRET": "", **env})
    assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr


async def test_a_rolling_restart_refuses_no_handshake_even_with_one_worker(tmp_path: Path) -> None:
    server = await asyncio.to_thread(start_server, tmp_path, 1, drain_window=1)
    try:
        (before,) = server.pids_named("obs-worker-1")
        staying = server.client(auto_reconnect=True, reconnect_base=0.1)
        await staying.connect()
        server.proc.send_signal(signal.SIGHUP)
        outcomes = []
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            client = server.client()
            try:
                await client.connect(timeout=3)
                outcomes.append("ok")
                await client.close()
            except Exception as exc:
                outcomes.append(repr(exc))
            await asyncio.sleep(0.05)
        assert outcomes and all(o == "ok" for o in outcomes), [o for o in outcomes if o != "ok"][:3]
        after = server.pids_named("obs-worker-1")
        assert after and before not in after
        assert await next_event(staying, "reconnected", 10) is not None  # handed over, and came back
        await staying.close()
    finally:
        server.stop()


async def test_sigterm_paces_the_goodbyes_and_refuses_newcomers(tmp_path: Path) -> None:
    server = await asyncio.to_thread(start_server, tmp_path, 1, drain_window=2, graceful_timeout=6)
    try:
        clients = [server.client() for _ in range(20)]
        await asyncio.gather(*(c.connect() for c in clients))
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        refused = server.client()
        with pytest.raises(Exception, match="503"):
            await refused.connect(timeout=3)
        notices = await asyncio.gather(*(next_event(c, "server_shutdown", 5) for c in clients))
        arrivals = sorted(n["timestamp"] for n in notices if n)
        assert len(arrivals) == 20 and arrivals[-1] - arrivals[0] >= 1500  # spread over the window
        delays = {n["data"]["reconnectAfter"] for n in notices if n}
        assert len(delays) > 10 and all(1000 <= d <= 3000 for d in delays)
        assert await asyncio.to_thread(server.proc.wait, 15) == 0
    finally:
        server.stop()


def test_a_crash_loop_stops_the_restarts_of_that_slot(own_server: ServerProcess) -> None:
    victims: list[int] = []
    for _ in range(5):
        wait_until(lambda: set(own_server.pids_named("obs-worker-1")) - set(victims), 15, "worker 1 back")
        victims.append(signal_child(own_server, "obs-worker-1", signal.SIGKILL))
    wait_until(lambda: "no more restarts" in own_server.log(), 10, "the crash loop to be reported")
    time.sleep(1.0)
    assert own_server.pids_named("obs-worker-1") == []
    assert own_server.proc.poll() is None  # worker 2 still serves
    assert len(own_server.pids_named("obs-worker-2")) == 1
