"""The multi-host proof: the real playbooks (ansible/) deploy an ingest host and workers hosts, each a
network namespace with its own address and sshd (tests/multihost/hosts.py), over SSH, in the `direct`
service mode (no systemd here; the unit files are still rendered and checked). Then, from outside:

1. ``site.yml`` deploys ingest, worker1, worker2 and rogue, a workers host holding a CURVE certificate
   the ingest does not accept; a second run changes nothing;
2. the unit files are rendered under each host's ``observatory_root`` and were checked;
3. events pushed to the ingest reach the clients of both workers hosts, in order; rogue's get none;
4. worker1's link goes down: its client notices within seconds, moves to worker2 and resumes from its
   last (epoch, seq): every event once, in order;
5. ``rolling-update.yml`` restarts worker1 and worker2, one at a time, then the ingest; a client of
   worker2 is told ``server_shutdown``, comes back, resumes, and loses nothing.

The steps run in this order on one cluster (module scope) and build on each other. The hosts share the
machine's file system: each has its own ``observatory_root`` under one world-readable folder (the
service user must reach its virtual environment), removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import itertools
import json
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
import uvloop
import zmq.auth

from clients import ObservatoryClient, Producer
from clients.curve import ClientKeys
from core.auth import mint_token
from tests.harness import ROOT
from tests.multihost.conftest import unavailable
from tests.multihost.hosts import Cluster, NamespacesUnavailable

# Setup (the wheelhouse, the cluster and the first site.yml run) is charged to the first test.
pytestmark = pytest.mark.timeout(420)

log = logging.getLogger(__name__)

ANSIBLE_DIR = ROOT / "ansible"
BIN_DIR = Path(sys.executable).parent  # the virtual environment running the tests: ansible-core is there
INGEST = "ingest"
WORKERS = ("worker1", "worker2")
ROGUE = "rogue"  # a workers host whose certificate is not the one the ingest accepts
HOSTS = (INGEST, *WORKERS, ROGUE)
# rogue holds this certificate; the ingest accepts rogue's own (rogue.key), as for any workers host.
INTRUDER_CERTIFICATE = "intruder"
PRODUCER_CERTIFICATE = "producer"  # the test's own producer: observatory_curve_extra_clients
SERVICE_USER = "observatory"  # the role's default observatory_user, created on the machine
WS_PORT = 8080
INGEST_PORT = 5557

# The roll leaves rogue out (--limit; it would only add its own restart, some 17 s, and proves nothing
# more); the ingest's authorized certificates do not change with the limit. Every service restarts
# (observatory_rolling_force, the default, said explicitly).
ROLL_OPTIONS = ("--limit", ",".join((INGEST, *WORKERS)), "-e", '{"observatory_rolling_force": true}')

WHEELHOUSE_TIMEOUT = 300.0
PLAYBOOK_TIMEOUT = 240.0
DELIVERY_TIMEOUT = 10.0  # events pushed to the ingest reach a connected client within this
SILENCE = 1.0  # how long rogue's client is watched for an event after the others got them all
CLIENT_HEARTBEAT = 1.0  # the clients ping an idle server after 1 s and give up 1 s later
LOSS_TIMEOUT = 10.0  # a client of a cut host notices within this (about twice CLIENT_HEARTBEAT)
RECONNECT_TIMEOUT = 45.0  # from server_shutdown to the resumed events: the drain, restart, /ready
LEFTOVER_TIMEOUT = 5.0
ACCOUNT_REMOVAL_TIMEOUT = 10.0
LOG_TAIL_LINES = 30

TASK_LINE = re.compile(r"^TASK \[(?P<task>.*)\] \**$")
RESULT_LINE = re.compile(r"^(?P<status>ok|changed|skipping|failed|fatal): \[(?P<host>[^\]\s]+)")
RECAP_LINE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>ok=\d+.*)$")


# --- Playbook runs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlaybookRun:
    playbook: str
    returncode: int
    output: str
    seconds: float

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-lines:])

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP: host -> {"ok": ..., "changed": ..., "failed": ...}."""
        recap: dict[str, dict[str, int]] = {}
        lines = self.output.splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("PLAY RECAP")), len(lines))
        for line in lines[start + 1 :]:
            if match := RECAP_LINE.match(line):
                recap[match["host"]] = {
                    key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match["counts"])
                }
        return recap

    def results(self) -> list[tuple[str, str, str]]:
        """(task, host, status) for every result line of the default callback, in output order."""
        found = []
        task = ""
        for line in self.output.splitlines():
            if match := TASK_LINE.match(line):
                task = match["task"]
            elif match := RESULT_LINE.match(line):
                found.append((task, match["host"], match["status"]))
        return found

    def describe(self) -> str:
        return f"ansible-playbook {self.playbook} exited {self.returncode} after {self.seconds:.0f} s"


def task_named(task: str, name: str) -> bool:
    """Whether a task, as the output names it ("ROLE : NAME", or NAME), is called NAME..."""
    return task.split(" : ", 1)[-1].startswith(name)


# --- The deployment --------------------------------------------------------------------------------


@dataclass
class Deployment:
    cluster: Cluster
    hosts_root: Path  # each host's observatory_root is a folder of it
    keys: Path
    inventory: Path
    env: dict[str, str]
    token: str
    first_run: PlaybookRun | None = None

    def root(self, host: str) -> Path:
        return self.hosts_root / host

    @staticmethod
    def service(host: str) -> str:
        return "ingest" if host == INGEST else "workers"

    def unit_file(self, host: str) -> Path:
        return self.root(host) / "systemd" / f"observatory-{self.service(host)}.service"

    def log_file(self, host: str) -> Path:
        return self.root(host) / "log" / f"observatory-{self.service(host)}.log"

    def log_text(self, host: str) -> str:
        with contextlib.suppress(OSError):
            return self.log_file(host).read_text(errors="replace")
        return ""

    def diagnose(self, *hosts: str) -> str:
        """The tail of each host's service log, for a failure message."""
        parts = []
        for host in hosts or HOSTS:
            lines = self.log_text(host).splitlines()[-LOG_TAIL_LINES:]
            parts.append(f"--- {self.log_file(host)} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(parts)

    def playbook_argv(self, playbook: str, *extra: str) -> list[str]:
        return [str(BIN_DIR / "ansible-playbook"), "-i", str(self.inventory), playbook, *extra]

    def playbook(self, playbook: str, *extra: str, timeout: float = PLAYBOOK_TIMEOUT) -> PlaybookRun:
        started = time.monotonic()
        process = subprocess.Popen(
            self.playbook_argv(playbook, *extra),
            cwd=ANSIBLE_DIR,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, ansible's forks included: killed whole
        )
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            output += f"\n(killed after {timeout:g} s)"
        run = PlaybookRun(playbook, process.returncode, output, time.monotonic() - started)
        log.info("%s", run.describe())
        return run

    def url(self, host: str) -> str:
        return f"ws://{self.cluster[host].address}:{WS_PORT}/"

    def client(self, host: str, **options: Any) -> ObservatoryClient:
        settings: dict[str, Any] = {
            "token": self.token,
            "request_timeout": 5.0,
            "heartbeat_interval": CLIENT_HEARTBEAT,
            "heartbeat_timeout": CLIENT_HEARTBEAT,
            "auto_reconnect": False,
        }
        settings.update(options)
        return ObservatoryClient(self.url(host), **settings)

    def producer(self) -> Producer:
        keys = ClientKeys.load(
            str(self.keys / f"{PRODUCER_CERTIFICATE}.key_secret"), str(self.keys / f"{INGEST}.key")
        )
        endpoint = f"tcp://{self.cluster[INGEST].address}:{INGEST_PORT}"
        return Producer(endpoint, curve=keys, send_timeout=2.0, linger=2.0)

    def ready(self, host: str) -> tuple[int, str]:
        """GET /ready on a workers host: (status, body)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://{self.cluster[host].address}:{WS_PORT}/ready", timeout=3) as reply:
                return int(reply.status), reply.read().decode()
        except urllib.error.HTTPError as refused:
            return int(refused.code), refused.read().decode()


def build_wheelhouse(directory: Path) -> tuple[Path, float]:
    """The project's wheel and every dependency's, for hosts without the internet (`pip wheel` takes
    what pip's cache holds). Returns the project's wheel and the seconds it took."""
    started = time.monotonic()
    build_dir = ROOT / "build"  # setuptools builds in the source tree: remove what this build leaves
    leftover = None if build_dir.exists() else build_dir
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(directory), str(ROOT)],
            capture_output=True,
            text=True,
            timeout=WHEELHOUSE_TIMEOUT,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
    finally:
        if leftover is not None:
            shutil.rmtree(leftover, ignore_errors=True)
    if result.returncode != 0:
        pytest.fail(f"pip wheel failed ({result.returncode}):\n{result.stderr[-3000:]}", pytrace=False)
    wheels = sorted(directory.glob("observatory-*.whl"))
    assert len(wheels) == 1, f"pip wheel left {wheels} in {directory}"
    return wheels[0], time.monotonic() - started


def make_keys(keys: Path, names: Iterable[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "supervisor.py"), "keys", "--dir", str(keys), *names],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, f"observatory keys failed: {result.stderr}"


def inventory(
    cluster: Cluster, hosts_root: Path, keys: Path, wheelhouse: Path, wheel: Path
) -> dict[str, Any]:
    """What ansible/README.md asks for, for hosts that are namespaces of one machine: root over SSH
    with the cluster's key, direct mode, no packages or kernel settings (the machine's own), installs
    from the wheelhouse, a distinct observatory_root per host, short drains."""
    ssh = cluster.ssh_args()

    def host(name: str, **variables: Any) -> dict[str, Any]:
        return {
            "ansible_host": cluster[name].address,
            "observatory_root": str(hosts_root / name),
            **variables,
        }

    return {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(ssh.private_key),
                "ansible_ssh_common_args": ssh.common_args,
                "ansible_python_interpreter": "/usr/bin/python3",
                "observatory_service_manager": "direct",
                "observatory_tune_kernel": False,
                "observatory_install_packages": False,
                "observatory_keys_dir": str(keys),
                "observatory_wheel": str(wheel),
                "observatory_pip_extra_args": f"--no-index --find-links {wheelhouse}",
                "observatory_curve_extra_clients": [PRODUCER_CERTIFICATE],
                "observatory_workers": 1,  # one worker process per host: two cores for everything
                "observatory_drain_window": 1.0,
                "observatory_graceful_timeout": 3.0,
                "observatory_direct_start_check": 1,
                "observatory_ready_timeout": 30,
            },
            "children": {
                "ingest": {"hosts": {INGEST: host(INGEST)}},
                "workers": {
                    "hosts": {
                        **{name: host(name) for name in WORKERS},
                        # Never ready (it hears no bus): nothing waits for its /ready.
                        ROGUE: host(
                            ROGUE, observatory_curve_name=INTRUDER_CERTIFICATE, observatory_wait_ready=False
                        ),
                    }
                },
            },
        }
    }


def our_leftovers(hosts_root: Path) -> list[psutil.Process]:
    """Processes that run from the hosts' folders (the deployed services: their working directory
    and HOME are there) or are ssh connections through the test's ControlPath folder."""
    marker = str(hosts_root)
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.pid == os.getpid():
                continue
            if (
                process.cwd().startswith(marker)
                or process.environ().get("HOME", "").startswith(marker)
                or any(marker in word for word in process.cmdline())
            ):
                found.append(process)
    return found


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def remove_account(command: str, name: str) -> list[str]:
    """userdel or groupdel, retried for a while: userdel refuses while a process of the user is left,
    and the killed services' zombies are reaped by pid 1 in its own time. What went wrong, if anything."""
    deadline = time.monotonic() + ACCOUNT_REMOVAL_TIMEOUT
    while True:
        result = subprocess.run([command, name], capture_output=True, text=True, timeout=30)
        if result.returncode == 0 or time.monotonic() > deadline:
            return [] if result.returncode == 0 else [f"{command} {name}: {result.stderr.strip()}"]
        time.sleep(0.2)


# --- Fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tools() -> None:
    """What the controller needs besides the cluster's own (root, ip, sshd): checked before anything
    is built."""
    if not (BIN_DIR / "ansible-playbook").exists():
        unavailable(f"there is no {BIN_DIR / 'ansible-playbook'}: pip install -e '.[test]'")
    if shutil.which("systemd-analyze") is None:  # the roles check every unit with it
        unavailable("there is no systemd-analyze: install Debian's systemd with `make units`")


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(folder, the project's wheel): built once per session."""
    directory = tmp_path_factory.mktemp("wheelhouse")
    wheel, seconds = build_wheelhouse(directory)
    log.info("wheelhouse built in %.1f s", seconds)
    return directory, wheel


@pytest.fixture(scope="module")
def hosts_root() -> Iterator[Path]:
    """The hosts' observatory_root folders live here; readable by the service user (pytest's own
    temporary folders are not)."""
    root = Path(tempfile.mkdtemp(prefix="observatory-multihost-"))
    root.chmod(0o755)
    user_before, group_before = user_exists(SERVICE_USER), group_exists(SERVICE_USER)
    yield root
    # The playbook creates the service account on the machine (it is system-wide): remove it again if
    # it did not exist before. Its processes were killed by the cluster's teardown.
    problems = []
    if not user_before and user_exists(SERVICE_USER):
        problems += remove_account("userdel", SERVICE_USER)
    if not group_before and group_exists(SERVICE_USER):
        problems += remove_account("groupdel", SERVICE_USER)
    shutil.rmtree(root, ignore_errors=True)
    if problems:
        warnings.warn(f"the service account stays on this machine: {'; '.join(problems)}", stacklevel=1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, hosts_root: Path) -> Iterator[Cluster]:
    built = Cluster(HOSTS, workdir=tmp_path_factory.mktemp("cluster"))
    try:
        built.start()
    except NamespacesUnavailable as reason:
        unavailable(str(reason))
    try:
        yield built
    finally:
        built.close()  # kills every process in the namespaces: the deployed services too
        deadline = time.monotonic() + LEFTOVER_TIMEOUT
        while (left := our_leftovers(hosts_root)) and time.monotonic() < deadline:
            time.sleep(0.1)
        descriptions = []
        for process in left:
            with contextlib.suppress(psutil.Error):
                descriptions.append(f"{process.pid} {process.cmdline()}")
                process.kill()  # so the next run starts clean; the test still fails
        assert not descriptions, "processes left behind after teardown:\n" + "\n".join(descriptions)


@pytest.fixture(scope="module")
def deployment(
    tools: None,
    tmp_path_factory: pytest.TempPathFactory,
    wheelhouse: tuple[Path, Path],
    hosts_root: Path,
    cluster: Cluster,
) -> Deployment:
    """Keys, token secret and inventory on the controller; then site.yml, once."""
    workdir = tmp_path_factory.mktemp("controller")
    keys = workdir / "keys"
    # One certificate per inventory host (rogue's is authorized, but rogue does not get it), the
    # intruder's (which rogue gets instead), and the test's producer's.
    make_keys(keys, [*HOSTS, INTRUDER_CERTIFICATE, PRODUCER_CERTIFICATE])
    secret = "multihost-" + os.urandom(24).hex()
    (keys / "jwt-secret").write_text(secret + "\n")
    (keys / "jwt-secret").chmod(0o600)
    folder, wheel = wheelhouse
    inventory_file = workdir / "inventory.yml"
    inventory_file.write_text(json.dumps(inventory(cluster, hosts_root, keys, folder, wheel), indent=2))
    control_dir = hosts_root / "ssh"  # short: ssh's ControlPath must fit a socket address
    control_dir.mkdir(mode=0o700)
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
        # No task uses facts: gathering them at every play (and every batch of the roll) only costs time.
        "ANSIBLE_GATHERING": "explicit",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("ANSIBLE_STDOUT_CALLBACK", "ANSIBLE_FORCE_COLOR"):  # the default callback's lines are parsed
        env.pop(name, None)
    token = mint_token(secret, "HS256", user="multihost", projects=None, ttl=3600)
    deployed = Deployment(cluster, hosts_root, keys, inventory_file, env, token)
    first = deployed.playbook("site.yml")
    deployed.first_run = first
    if first.returncode != 0:
        pytest.fail(f"{first.describe()}:\n{first.tail()}\n{deployed.diagnose()}", pytrace=False)
    return deployed


# --- Clients ---------------------------------------------------------------------------------------


T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]], timeout: float) -> T:
    """Run an async scenario on a fresh uvloop loop, bounded."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await scenario()

    return uvloop.run(bounded())


class Stream:
    """Everything a client receives, read in the background, with bounded waits on it."""

    def __init__(self, client: ObservatoryClient) -> None:
        self.client = client
        self.messages: list[dict[str, Any]] = []
        self.ended = False
        self._changed = asyncio.Event()
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while (message := await self.client.receive()) is not None:
            self.messages.append(message)
            self._changed.set()
        self.ended = True
        self._changed.set()

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind and "seq" in m]

    def ids(self, kind: str) -> list[int]:
        return [int(m["data"]["i"]) for m in self.events(kind)]

    def notices(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def index(self, kind: str) -> int:
        return next((i for i, m in enumerate(self.messages) if m["type"] == kind), -1)

    async def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Whether ``condition`` holds within ``timeout`` (or when the stream ends, if sooner)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._changed.clear()
            if condition():
                return True
            remaining = deadline - loop.time()
            if self.ended or remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def has(self, kind: str, count: int, timeout: float = DELIVERY_TIMEOUT) -> bool:
        return await self.wait(lambda: len(self.events(kind)) >= count, timeout)

    def summary(self) -> str:
        kinds = [m["type"] if "seq" not in m else f"{m['type']}#{m['seq']}" for m in self.messages]
        return f"{len(self.messages)} messages{' (stream ended)' if self.ended else ''}: {kinds[-40:]}"

    async def close(self) -> None:
        await self.client.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def publish(producer: Producer, kind: str, ids: Iterable[int]) -> None:
    for i in ids:
        producer.publish(kind, {"i": i})


def ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8': what a client got, readable in a failure message."""
    parts: list[str] = []
    for i in ids:
        if parts and parts[-1].split("-")[-1] == str(i - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{i}"
        else:
            parts.append(str(i))
    return ", ".join(parts) or "nothing"


def order_problem(events: list[dict[str, Any]], expected: list[int]) -> str | None:
    """Why a client's events are not exactly ``expected``, once each and in order (None if they are)."""
    ids = [int(e["data"]["i"]) for e in events]
    seqs = [(e["epoch"], e["seq"]) for e in events]
    if ids != expected:
        return f"got {ranges(ids)} (as {len(ids)} events), expected {ranges(expected)}"
    if len(set(seqs)) != len(seqs) or any(a[0] == b[0] and a[1] >= b[1] for a, b in itertools.pairwise(seqs)):
        return f"seqs not increasing: {seqs}"
    return None


async def close_quietly(*things: Stream | Producer | None) -> None:
    for thing in things:
        with contextlib.suppress(Exception):
            if isinstance(thing, Stream):
                await thing.close()
            elif thing is not None:
                thing.close()


# --- The steps -------------------------------------------------------------------------------------


def test_a_second_site_run_changes_nothing(deployment: Deployment) -> None:
    assert deployment.first_run is not None
    first = deployment.first_run.recap()
    assert set(first) == set(HOSTS), f"PLAY RECAP of the first run: {first}\n{deployment.first_run.tail()}"
    second = deployment.playbook("site.yml")
    assert second.returncode == 0, f"{second.describe()}:\n{second.tail()}\n{deployment.diagnose()}"
    recap = second.recap()
    changed = {host: counts for host, counts in recap.items() if counts.get("changed", 0) != 0}
    what_changed = [(task, host) for task, host, status in second.results() if status == "changed"]
    assert set(recap) == set(HOSTS) and not changed, (
        f"site.yml is not idempotent: PLAY RECAP {recap}; changed: {what_changed}\n{second.tail()}"
    )


def test_the_unit_files_are_rendered_checked_and_run_by_observatoryctl(deployment: Deployment) -> None:
    assert deployment.first_run is not None
    checked = {
        host
        for task, host, status in deployment.first_run.results()
        if task_named(task, "Check the unit file of observatory-") and status == "ok"
    }
    assert checked == set(HOSTS), (
        f"systemd-analyze verify ran (ok) on {sorted(checked)}, not on every host\n"
        + deployment.first_run.tail()
    )
    for host in HOSTS:
        unit = deployment.unit_file(host)
        assert unit.is_file(), f"{host}: no unit file {unit}"
        text = unit.read_text()
        config = deployment.root(host) / "etc" / f"{deployment.service(host)}.toml"
        assert f'ExecStart="{deployment.root(host)}/venv/bin/observatory" --config "{config}"' in text, (
            f"{host}: {unit} does not run this host's observatory:\n{text}"
        )
        status = deployment.cluster.ssh(host, f"{deployment.root(host)}/bin/observatoryctl status")
        assert status.returncode == 0, (
            f"{host}: observatoryctl status exited {status.returncode}: {status.stdout}{status.stderr}\n"
            + deployment.diagnose(host)
        )


def test_events_reach_both_workers_hosts_and_none_reach_the_rogue(deployment: Deployment) -> None:
    count = 30

    async def scenario() -> None:
        streams: dict[str, Stream] = {}
        producer = None
        try:
            for host in (*WORKERS, ROGUE):
                client = deployment.client(host)
                try:
                    await client.connect()
                    await client.subscribe({"eventTypes": ["fanout"]})
                except Exception as error:
                    raise AssertionError(f"{host}: {error!r}\n{deployment.diagnose(host)}") from error
                streams[host] = Stream(client)
            producer = deployment.producer()
            publish(producer, "fanout", range(count))
            for host in WORKERS:
                stream = streams[host]
                await stream.has("fanout", count)
                problem = order_problem(stream.events("fanout"), list(range(count)))
                assert problem is None, (
                    f"{host}'s client, {DELIVERY_TIMEOUT:g} s after {count} events were pushed to the "
                    f"ingest: {problem}\n{deployment.diagnose(INGEST, host)}"
                )
            rogue = streams[ROGUE]
            await rogue.wait(lambda: bool(rogue.events("fanout")), SILENCE)
            assert not rogue.events("fanout"), (
                f"rogue's client got {ranges(rogue.ids('fanout'))}, but rogue's certificate is not "
                f"authorized on the ingest\n{deployment.diagnose(INGEST, ROGUE)}"
            )
        finally:
            await close_quietly(producer, *streams.values())

    run(scenario, 60)
    status, body = deployment.ready(ROGUE)
    assert status == 503, f"rogue's /ready answered {status} {body}\n{deployment.diagnose(ROGUE)}"
    intruder, _ = zmq.auth.load_certificate(deployment.keys / f"{INTRUDER_CERTIFICATE}.key")
    ingest_log = deployment.log_text(INGEST)
    assert "unknown CURVE key" in ingest_log and intruder.decode() in ingest_log, (
        f"the ingest did not log refusing rogue's key {intruder.decode()}\n{deployment.diagnose(INGEST)}"
    )
    for host in WORKERS:
        status, body = deployment.ready(host)
        assert status == 200, f"{host}'s /ready answered {status} {body}\n{deployment.diagnose(host)}"


def test_a_cut_workers_host_loses_its_clients_which_resume_on_the_other(deployment: Deployment) -> None:
    """worker1's link goes down with events flowing: its client notices by its heartbeat, connects to
    worker2 (the failover is the application's: the client takes one URL) and resumes from the last
    (epoch, seq) it got. Every event once, in order, across the two connections."""
    kind = "failover"
    filters = {"eventTypes": [kind]}

    async def scenario() -> None:
        first = second = None
        producer = deployment.producer()
        try:
            client = deployment.client("worker1")
            await client.connect()
            await client.subscribe(filters)
            first = Stream(client)
            publish(producer, kind, range(0, 10))
            assert await first.has(kind, 10), (
                f"worker1's client before the cut: {ranges(first.ids(kind))}\n"
                + deployment.diagnose("worker1")
            )

            deployment.cluster.cut("worker1")
            cut_at = time.monotonic()
            publish(producer, kind, range(10, 20))  # worker1 hears them; its client cannot
            lost = await first.wait(lambda: first.ended, LOSS_TIMEOUT)
            assert lost, (
                f"worker1's client was still connected {LOSS_TIMEOUT:g} s after worker1 was cut off "
                f"(its heartbeat: {CLIENT_HEARTBEAT:g} s): {first.summary()}"
            )
            log.info("the client noticed the cut after %.1f s", time.monotonic() - cut_at)
            publish(producer, kind, range(20, 30))  # after the loss, before the failover

            assert client.last_epoch is not None and client.last_seq is not None
            resume = {"epoch": client.last_epoch, "seq": client.last_seq}
            moved = deployment.client("worker2")
            await moved.connect()
            second = Stream(moved)
            await moved.subscribe(filters, resume=resume)
            publish(producer, kind, range(30, 40))  # after the failover

            await second.wait(lambda: 39 in second.ids(kind), DELIVERY_TIMEOUT)
            resumed = second.notices("resumed")
            assert resumed, (
                f"worker2 did not resume from {resume}: {second.summary()}\n{deployment.diagnose('worker2')}"
            )
            problem = order_problem(first.events(kind) + second.events(kind), list(range(40)))
            assert problem is None, (
                f"across worker1 (before the cut) and worker2 (resumed from {resume}, {resumed[0]['data']}): "
                f"{problem}\n{deployment.diagnose(INGEST, 'worker2')}"
            )
        finally:
            await close_quietly(producer, first, second)

    run(scenario, 60)


def test_a_rolling_update_drains_each_workers_host_and_its_clients_lose_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    """rolling-update.yml with worker1 back on the network: worker1 and worker2 restarted one after the
    other, the ingest last. A client of worker2 is told server_shutdown, comes back to
    worker2 by itself (the client reconnects, with the resume) and misses none of the events pushed
    while it was away; the ingest's restart then starts a new epoch."""
    deployment.cluster.restore("worker1")
    kind = "rolling"
    output = tmp_path / "rolling-update.out"

    async def scenario() -> PlaybookRun:
        stream = None
        producer = deployment.producer()
        roll = None
        try:
            client = deployment.client(
                "worker2",
                auto_reconnect=True,
                reconnect_base=0.2,
                reconnect_max=1.0,
                max_reconnect_attempts=200,
            )
            await client.connect()
            stream = Stream(client)
            await client.subscribe({"eventTypes": [kind]})
            publish(producer, kind, range(0, 10))
            assert await stream.has(kind, 10), f"before the update: {stream.summary()}"

            started = time.monotonic()
            with output.open("w") as sink:
                roll = await asyncio.create_subprocess_exec(
                    *deployment.playbook_argv("rolling-update.yml", *ROLL_OPTIONS),
                    cwd=ANSIBLE_DIR,
                    env=deployment.env,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: killed whole if the test fails
                )
            told = await stream.wait(lambda: bool(stream.notices("server_shutdown")), PLAYBOOK_TIMEOUT)
            assert told, (
                f"worker2's client was never told server_shutdown: {stream.summary()}\n"
                f"{output.read_text()[-4000:]}\n{deployment.diagnose('worker2')}"
            )
            publish(producer, kind, range(10, 20))  # the client is away: worker2 drains, restarts
            back = await stream.wait(lambda: 19 in stream.ids(kind), RECONNECT_TIMEOUT)
            assert back, (
                f"{RECONNECT_TIMEOUT:g} s after server_shutdown, worker2's client has "
                f"{ranges(stream.ids(kind))}: {stream.summary()}\n{deployment.diagnose('worker2')}"
            )
            remaining = PLAYBOOK_TIMEOUT - (time.monotonic() - started)
            try:
                returncode = await asyncio.wait_for(roll.wait(), max(remaining, 1.0))
            except TimeoutError:
                returncode = -1
            result = PlaybookRun(
                "rolling-update.yml", returncode, output.read_text(), time.monotonic() - started
            )
            assert returncode == 0, f"{result.describe()}:\n{result.tail()}\n{deployment.diagnose()}"
            # The ingest's restart came last: the client hears of the new epoch (within a bus beat).
            await stream.wait(lambda: bool(stream.notices("epoch_changed")), 5.0)
            problem = order_problem(stream.events(kind), list(range(20)))
            assert problem is None, f"worker2's client across the update: {problem}\n{stream.summary()}"
            assert 0 <= stream.index("resumed") < stream.index("epoch_changed"), (
                f"expected the resume on worker2, then the ingest's new epoch: {stream.summary()}"
            )
            return result
        finally:
            if roll is not None and roll.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(roll.pid, signal.SIGKILL)
                await roll.wait()
            await close_quietly(producer, stream)

    roll = run(scenario, PLAYBOOK_TIMEOUT + 30)
    restarts = [
        host
        for task, host, status in roll.results()
        if task_named(task, "Restart the service (direct)") and status == "changed"
    ]
    assert restarts == [*WORKERS, INGEST], (
        f"restarts in this order: {restarts}; expected each workers host once, then the ingest\n{roll.tail()}"
    )
    recap = roll.recap()
    assert all(
        counts.get("failed", 1) == 0 and counts.get("unreachable", 1) == 0 for counts in recap.values()
    ), f"PLAY RECAP {recap}"
