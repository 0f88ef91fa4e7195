"""Real servers for the tests: free ports, a started supervisor, bounded waits, exact cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as connect_sync

from clients import ObservatoryClient, Producer
from clients.curve import ClientKeys
from core.auth import mint_token

ROOT = Path(__file__).resolve().parent.parent
BOOT_TIMEOUT = 20.0
TEST_SECRET = "observatory-test-secret-that-is-long-enough-for-hs256"


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free now; held open together so they are distinct."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    ingest_endpoint: str
    workers: int
    log_path: Path
    producers: list[Producer] = field(default_factory=list)
    secret: str | bytes | None = TEST_SECRET  # what the harness signs tokens with
    algorithm: str = "HS256"
    audience: str | None = None
    issuer: str | None = None
    ssl_context: ssl.SSLContext | None = None  # set: the server speaks wss:// and clients trust it
    curve: ClientKeys | None = None  # set: the bus is CURVE-secured and producers push with these keys

    @property
    def url(self) -> str:
        return f"{'wss' if self.ssl_context else 'ws'}://127.0.0.1:{self.port}/"

    def token(self, projects: list[int] | None = None, **claims: Any) -> str:
        """A token for this server: every project and permission unless told otherwise."""
        assert self.secret is not None, "this server runs without authentication"
        return mint_token(
            self.secret,
            self.algorithm,
            user=claims.pop("user", "tester"),
            projects=projects,
            permissions=claims.pop("permissions", ("admin",)),
            ttl=claims.pop("ttl", 3600),
            audience=self.audience,
            issuer=self.issuer,
            **claims,
        )

    def client(self, **options: Any) -> ObservatoryClient:
        """A client that authenticates with an all-powerful token (or ``token=`` given)."""
        if self.secret is not None:
            options.setdefault("token", self.token())
        options.setdefault("ssl_context", self.ssl_context)
        # Most tests watch the server close a client on purpose; reconnection tests opt back in.
        options.setdefault("auto_reconnect", False)
        return ObservatoryClient(self.url, **options)

    def authorization(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"} if self.secret else {}

    def url_with_token(self) -> str:
        return f"{self.url}?token={self.token()}" if self.secret else self.url

    def producer(self) -> Producer:
        producer = Producer(self.ingest_endpoint, send_timeout=5.0, linger=1.0, curve=self.curve)
        self.producers.append(producer)
        return producer

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def pids_named(self, prefix: str) -> list[int]:
        """Children by process name: ``obs-ingest``, ``obs-worker-1``, ..."""
        found = []
        for child in self.children():
            with contextlib.suppress(psutil.NoSuchProcess):
                # A killed child stays a zombie, still named, until the supervisor reaps it.
                if child.name().startswith(prefix) and child.status() != psutil.STATUS_ZOMBIE:
                    found.append(child.pid)
        return found

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the supervisor, wait for it; then make sure nothing it started survives."""
        for producer in self.producers:
            producer.close()
        self.producers.clear()
        descendants = self.children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for child in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        return self.proc.returncode


def spawn(
    tmp_path: Path, workers: int = 2, env: dict[str, str] | None = None, **options: Any
) -> tuple[ServerProcess, list[str]]:
    port, ingest, bus, query = free_ports(4)
    flags = {
        "port": port,
        "workers": workers,
        "ingest_endpoint": f"tcp://127.0.0.1:{ingest}",
        "bus_endpoint": f"tcp://127.0.0.1:{bus}",
        "query_endpoint": f"tcp://127.0.0.1:{query}",
        "log_level": "INFO",
        # Tests open many connections from one address; the per-address defaults are for the open network.
        "max_connections_per_ip": 10_000,
        "max_handshakes_per_ip": 1_000_000,
        "drain_window": 1,  # stopping servers in tests need not pace their clients for long
        # The transcript watcher would read the real ~/.claude: tests that want it point it elsewhere.
        "watch": False,
        **options,
    }
    argv = [sys.executable, str(ROOT / "supervisor.py")]
    for name, value in flags.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    log_path = tmp_path / f"observatory-{port}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "OBSERVATORY_JWT_SECRET": TEST_SECRET,
                # Never the real home: a first start would write its generated secret there.
                "XDG_CONFIG_HOME": str(tmp_path / "config"),
                "XDG_STATE_HOME": str(tmp_path / "state"),
                **(env or {}),
            },
        )
    secret = None if str(flags.get("auth", "true")).lower() in ("false", "off", "0", "no") else TEST_SECRET
    server = ServerProcess(
        proc,
        port,
        str(flags["ingest_endpoint"]),
        workers,
        log_path,
        secret=secret,
        audience=flags.get("jwt_audience"),
        issuer=flags.get("jwt_issuer"),
    )
    return server, argv


def start_server(
    tmp_path: Path,
    workers: int = 2,
    ssl_context: ssl.SSLContext | None = None,
    signing: tuple[bytes, str] | None = None,
    curve: ClientKeys | None = None,
    **options: Any,
) -> ServerProcess:
    """``signing``: the private key and algorithm of an issuer whose public key the server trusts;
    ``curve``: the keys this test's producers push with, on a CURVE-secured bus."""
    server, _ = spawn(tmp_path, workers, **options)
    server.ssl_context = ssl_context
    server.curve = curve
    if signing is not None:
        server.secret, server.algorithm = signing
    try:
        asyncio.run(wait_ready(server))
    except BaseException:
        server.stop()
        raise RuntimeError(f"server did not become ready; its log:\n{server.log()}") from None
    return server


async def wait_ready(server: ServerProcess, timeout: float = BOOT_TIMEOUT) -> None:
    """Every worker accepts connections and hears the bus (ZeroMQ SUB joins late)."""
    deadline = time.monotonic() + timeout
    probes: dict[int, ObservatoryClient] = {}
    try:
        while len(probes) < server.workers:
            if server.proc.poll() is not None:
                raise RuntimeError(f"observatory exited with {server.proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("workers did not all come up")
            client = server.client()
            try:
                info = await client.connect(timeout=2.0)
            except Exception:  # not listening yet, or closed mid-handshake
                await asyncio.sleep(0.1)
                continue
            worker = info["capabilities"]["worker"]
            if worker in probes:
                await client.close()
                # The other workers may still be booting: do not spend a low handshake limit meanwhile.
                await asyncio.sleep(0.05)
                continue
            await client.subscribe({"eventTypes": ["harness_probe"]})
            probes[worker] = client
        producer = server.producer()
        heard: set[int] = set()
        while heard != set(probes):
            if time.monotonic() > deadline:
                raise TimeoutError("workers did not hear the bus")
            producer.publish("harness_probe", {})
            for worker, client in probes.items():
                if await next_event(client, "harness_probe", 0.05) is not None:
                    heard.add(worker)
    finally:
        for client in probes.values():
            await client.close()


async def next_event(client: ObservatoryClient, type_: str | None, timeout: float) -> dict[str, Any] | None:
    """The next message of this type (any type if None) within ``timeout``, else None."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return None
        try:
            message = await client.receive(remaining)
        except TimeoutError:
            return None
        if message is None:
            return None  # the connection closed
        if type_ is None or message.get("type") == type_:
            return message


async def collect_until(
    client: ObservatoryClient, sentinel_type: str, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Every event (messages with a ``seq``) up to and excluding the first of ``sentinel_type``."""
    seen: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        message = await next_event(client, None, max(remaining, 0))
        if message is None:
            raise TimeoutError(f"no {sentinel_type} within {timeout}s; got {[m.get('type') for m in seen]}")
        if message.get("type") == sentinel_type:
            return seen
        if "seq" in message:
            seen.append(message)


async def connect_all(server: ServerProcess, count: int) -> list[ObservatoryClient]:
    clients = [server.client() for _ in range(count)]
    await asyncio.gather(*(c.connect() for c in clients))
    return clients


async def close_all(clients: Iterable[ObservatoryClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def signal_child(server: ServerProcess, name: str, signum: int) -> int:
    (victim,) = server.pids_named(name)
    os.kill(victim, signum)
    return victim


def wait_replaced(server: ServerProcess, name: str, victim: int) -> None:
    wait_until(lambda: server.pids_named(name) not in ([], [victim]), 10, f"a new {name}")


class Bystander:
    """A subscriber read by its own thread for as long as a module runs.

    It uses the ``websockets`` library's synchronous client, so it survives the fresh event loop each
    test runs on; it watches one numbered series of events and knows when the series has ended.
    """

    def __init__(self, server: ServerProcess, series: str, series_end: str, timeout: float = 5.0) -> None:
        self.series, self.series_end, self.timeout = series, series_end, timeout
        self.stack = contextlib.ExitStack()
        self.ws: ClientConnection = self.stack.enter_context(
            connect_sync(
                server.url,
                additional_headers=server.authorization(),
                open_timeout=timeout,
                max_size=None,
                compression=None,
                proxy=None,
            )
        )
        hello = orjson.loads(self.ws.recv(timeout=timeout))
        assert hello["type"] == "connection_established"
        self.worker: int = hello["data"]["capabilities"]["worker"]
        self.messages: list[dict[str, Any]] = []
        self.ended = threading.Event()
        self.thread: threading.Thread | None = None

    def subscribe(self) -> Bystander:
        request = {"type": "subscribe", "data": {"filters": {"eventTypes": [self.series, self.series_end]}}}
        self.ws.send(orjson.dumps(request).decode())
        reply = orjson.loads(self.ws.recv(timeout=self.timeout))
        assert reply["type"] == "subscription_confirmed", reply
        self.thread = threading.Thread(target=self._read, name=f"bystander-w{self.worker}", daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        try:
            for raw in self.ws:
                message = orjson.loads(raw)
                self.messages.append(message)
                if message.get("type") == self.series_end:
                    self.ended.set()
        except ConnectionClosed:
            pass
        finally:
            self.ended.set()

    def close(self) -> None:
        self.stack.close()
        if self.thread is not None:
            self.thread.join(5)
