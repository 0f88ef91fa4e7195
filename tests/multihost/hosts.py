"""Hosts for multi-host tests: Linux network namespaces on one bridge, each with its own address and sshd.

A ``Cluster`` gives every host a network namespace joined to a bridge in the root namespace by a veth
pair, and starts an sshd inside it, so that a test (the controller, on the bridge's own address) can
reach each host over SSH as if it were a machine of its own: ansible, for one. Only the network is
separate: the file system, users and process table are the machine's own.

Everything a cluster creates is named after the test process's pid and lives in a subnet no route of
the machine overlaps, so two runs, or the leftovers of a killed one, never collide; teardown removes
exactly what the cluster created and kills exactly the processes it started and those inside its
namespaces. Needs root, ``ip`` (iproute2) and Debian's openssh-server (``make sshd``).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import psutil

SSHD = Path("/usr/sbin/sshd")
# sshd refuses to start without its privilege separation directory, which Debian's service creates.
PRIVSEP_DIR = Path("/run/sshd")
SSH_PORT = 22
# RFC 2544's range for benchmarking network equipment: reserved for tests, so real networks rarely
# route it; 512 subnets of /24 to choose from.
SUBNET_POOL = IPv4Network("198.18.0.0/15")
SUBNET_PREFIX = 24
MAX_INTERFACE_NAME = 15  # Linux's IFNAMSIZ (16) less the terminating NUL
NAME_PREFIX = "mh"
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
NAMESPACE_INTERFACE = "eth0"  # a host's end of its veth pair, inside its namespace
# Serializes the choice of names and subnet with creating them across processes: a second run on the
# machine sees the first one's bridge route before it chooses.
LOCK_PATH = Path("/run/lock/observatory-multihost.lock")

SSHD_START_TIMEOUT = 10.0
COMMAND_TIMEOUT = 10.0
IP_TIMEOUT = 5.0
STOP_TIMEOUT = 3.0
PROBE_TIMEOUT = 0.5
LOCK_TIMEOUT = 10.0

SSH_OPTIONS = (
    "StrictHostKeyChecking=no",  # the host keys are throwaway,
    "UserKnownHostsFile=/dev/null",  # and so is what ssh would learn of them
    "BatchMode=yes",  # fail rather than prompt
    "IdentitiesOnly=yes",  # the cluster's key only, not an agent's
    "LogLevel=ERROR",  # no "Permanently added ... to the list of known hosts" on every call
    "ConnectTimeout=5",
)
# -F /dev/null: the machine's and the user's ssh_config have no say.
SSH_COMMON_ARGS = ("-F", "/dev/null", *(word for option in SSH_OPTIONS for word in ("-o", option)))


class NamespacesUnavailable(RuntimeError):
    """This machine cannot build a cluster (not root, no network namespaces, no sshd): a reason to skip."""


class ClusterError(RuntimeError):
    """Building or tearing down a cluster went wrong where it should not have."""


@dataclass(frozen=True)
class Host:
    name: str  # what tests call it: "ingest", "worker1"
    namespace: str  # its network namespace, as `ip netns` names it
    address: str  # its IPv4 address on the cluster's bridge
    veth: str  # the root namespace's end of its veth pair: cut() takes this one down
    ssh_port: int = SSH_PORT


class ClusterFactory(Protocol):
    """The fixture cluster_factory (tests/multihost/conftest.py): a started cluster of the named hosts."""

    def __call__(self, host_names: Sequence[str] = ...) -> Cluster: ...


@dataclass(frozen=True)
class SshSettings:
    """What ansible needs to reach the hosts: ansible_ssh_private_key_file and ansible_ssh_common_args;
    the user is root."""

    private_key: Path
    common_args: str


def run_tag(pid: int, sequence: int) -> str:
    """The prefix of every name of one cluster: the pid tells whose run it is, the sequence number tells
    apart the clusters of one process."""
    return f"{NAME_PREFIX}{pid}-{sequence}"


def bridge_name(tag: str) -> str:
    return f"{tag}br"


def veth_name(tag: str, index: int) -> str:
    return f"{tag}v{index}"


def namespace_name(tag: str, host_name: str) -> str:
    return f"{tag}-{host_name}"  # namespace names have no length limit: the host's name makes them readable


def choose_run_tag(pid: int, first_sequence: int, host_count: int, taken_names: Collection[str]) -> str:
    """The first tag from ``first_sequence`` on that no existing namespace or interface starts with (a
    leftover of an earlier process with the same pid, say), and whose names fit in an interface name."""
    for sequence in itertools.count(first_sequence):
        tag = run_tag(pid, sequence)
        longest = max(bridge_name(tag), veth_name(tag, max(host_count - 1, 0)), key=len)
        if len(longest) > MAX_INTERFACE_NAME:
            raise ClusterError(f"interface name {longest!r} is longer than {MAX_INTERFACE_NAME} characters")
        if not any(name.startswith(tag) for name in taken_names):
            return tag
    raise AssertionError("unreachable")


def choose_subnet(start_index: int, routed: Iterable[IPv4Network]) -> IPv4Network:
    """The first /24 of SUBNET_POOL, from ``start_index`` on and wrapping around, that overlaps none of
    the ``routed`` networks (default routes aside: they overlap everything and are less specific)."""
    in_use = [network for network in routed if network.prefixlen > 0]
    candidates = list(SUBNET_POOL.subnets(new_prefix=SUBNET_PREFIX))
    for offset in range(len(candidates)):
        candidate = candidates[(start_index + offset) % len(candidates)]
        if not any(candidate.overlaps(network) for network in in_use):
            return candidate
    raise ClusterError(f"every /{SUBNET_PREFIX} of {SUBNET_POOL} overlaps a route of this machine")


def run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip ARGS`` in the root namespace; ClusterError with its message when it fails and ``check``."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT)
    if check and result.returncode != 0:
        raise ClusterError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def ip_json(*args: str) -> list[dict[str, object]]:
    output = run_ip("-j", *args).stdout.strip()
    return json.loads(output) if output else []  # `ip -j netns list` prints nothing when there is none


def existing_network_names() -> set[str]:
    """The names of the root namespace's interfaces and of every named network namespace."""
    interfaces = {str(link["ifname"]) for link in ip_json("link", "show")}
    namespaces = {str(namespace["name"]) for namespace in ip_json("netns", "list")}
    return interfaces | namespaces


def routed_networks() -> list[IPv4Network]:
    """Every IPv4 destination the root namespace routes, in all tables (local addresses included)."""
    networks = []
    for route in ip_json("-4", "route", "show", "table", "all"):
        destination = str(route.get("dst", "default"))
        if destination != "default":
            networks.append(IPv4Network(destination, strict=False))
    return networks


def namespace_pids(namespace: str) -> set[int]:
    result = run_ip("netns", "pids", namespace, check=False)  # a deleted namespace has none
    return {int(pid) for pid in result.stdout.split()}


def sshd_answers(address: str, port: int = SSH_PORT, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether an sshd at address:port sends its banner: an open port could be anything, or a process
    too stuck to talk."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as connection:
            return connection.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def is_alive(process: psutil.Process) -> bool:
    """Running, and not a zombie: whoever reaps the orphans of sshd's sessions (pid 1) may take its time,
    and psutil.wait_procs() would wait for it."""
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def machine_lock(timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Held for well under a second by any run; a run stopped while holding it must not hang the next."""
    deadline = time.monotonic() + timeout
    with LOCK_PATH.open("a") as lock_file:
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ClusterError(f"{LOCK_PATH} stayed locked for {timeout} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def sshd_config(host: Host, host_key: Path, authorized_keys: Path, pid_file: Path) -> str:
    return "\n".join(
        [
            f"ListenAddress {host.address}:{host.ssh_port}",
            "AddressFamily inet",
            f"HostKey {host_key}",
            f"PidFile {pid_file}",
            f"AuthorizedKeysFile {authorized_keys}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            # Debian's PAM stack would want a login session of the machine's own.
            "UsePAM no",
            # The key lives under /tmp, which is world-writable: StrictModes would refuse it.
            "StrictModes no",
            # ansible copies its modules with sftp; the built-in server needs no helper binary.
            "Subsystem sftp internal-sftp",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "LogLevel INFO",
            "",
        ]
    )


class Cluster:
    """Hosts as network namespaces on one bridge, each running an sshd that root reaches with a
    throwaway key. ``with Cluster(["ingest", "worker1"]) as cluster:`` builds it and tears it down,
    also when the body fails or is interrupted; so do ``start()`` and ``close()``."""

    _sequence = itertools.count()  # tells apart the clusters of one process
    _sequence_lock = threading.Lock()

    def __init__(self, host_names: Sequence[str], workdir: Path | None = None) -> None:
        if not host_names or len(set(host_names)) != len(host_names):
            raise ValueError(f"host names must be distinct and at least one: {list(host_names)}")
        for name in host_names:
            if not HOST_NAME.fullmatch(name):  # it becomes part of a namespace's name, a file in /run/netns
                raise ValueError(f"host name {name!r} does not match {HOST_NAME.pattern}")
        self.host_names: tuple[str, ...] = tuple(host_names)
        self._given_workdir = workdir
        self.workdir = Path()  # set by start(): keys, sshd configs and logs
        self.hosts: tuple[Host, ...] = ()
        self.bridge = ""
        self.subnet: IPv4Network | None = None
        self.controller_address = ""  # the bridge's address: where the hosts see the test process
        self.private_key = Path()
        # What teardown removes: only what this cluster created, recorded as soon as it exists.
        self._namespaces: list[str] = []
        self._links: list[str] = []
        self._processes: list[subprocess.Popen[str]] = []  # sshds, and whatever start_in() started
        self.sshds: dict[Host, subprocess.Popen[str]] = {}
        self._owns_workdir = False
        self._started = False
        self._closed = False

    # Building

    def __enter__(self) -> Self:
        if not self._started:  # a cluster from cluster_factory is started already
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Build the network, start every sshd and wait until each answers; on any failure (or an
        interrupt) tear down what was built so far and raise."""
        if self._started:
            raise ClusterError("a cluster starts once")
        self._started = True
        if os.geteuid() != 0:
            raise NamespacesUnavailable("network namespaces need root")
        if shutil.which("ip") is None:
            raise NamespacesUnavailable("there is no `ip` (iproute2)")
        if not SSHD.exists():
            raise NamespacesUnavailable(
                f"{SSHD} is missing: install Debian's openssh-server with `make sshd`"
            )
        atexit.register(self.close)  # for an exit that skips the caller's teardown
        try:
            self._prepare_workdir()
            self._generate_keys()
            with machine_lock():
                self._build_network()
            self._start_sshds()
            self._wait_for_sshds()
        except BaseException as failure:
            try:
                self.close()
            except ClusterError as teardown_failure:  # the build's own failure stays the one raised
                failure.add_note(str(teardown_failure))
            raise

    def _prepare_workdir(self) -> None:
        if self._given_workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="multihost-"))
            self._owns_workdir = True
        else:
            self.workdir = self._given_workdir
            self.workdir.mkdir(parents=True, exist_ok=True)

    def _generate_keys(self) -> None:
        self.private_key = self.workdir / "client_key"
        for key in (self.private_key, self._host_key):
            subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    f"multihost {key.name}",
                    "-f",
                    str(key),
                ],
                check=True,
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
            )

    @property
    def _host_key(self) -> Path:
        return self.workdir / "host_key"  # one for all hosts: nobody checks it

    def _build_network(self) -> None:
        pid = os.getpid()
        with Cluster._sequence_lock:
            first_sequence = next(Cluster._sequence)
        tag = choose_run_tag(pid, first_sequence, len(self.host_names), existing_network_names())
        subnet = self.subnet = choose_subnet(pid, routed_networks())
        addresses = list(subnet.hosts())  # .1 for the controller, .2 on for the hosts
        if len(self.host_names) > len(addresses) - 1:
            raise ClusterError(f"{len(self.host_names)} hosts do not fit in {subnet}")
        self.controller_address = str(addresses[0])
        self.hosts = tuple(
            Host(name, namespace_name(tag, name), str(address), veth_name(tag, index))
            for index, (name, address) in enumerate(zip(self.host_names, addresses[1:], strict=False))
        )

        # The first namespace tells whether this machine can have them at all.
        for host in self.hosts:
            result = run_ip("netns", "add", host.namespace, check=False)
            if result.returncode != 0:
                message = f"ip netns add {host.namespace}: {result.stderr.strip()}"
                raise NamespacesUnavailable(message) if not self._namespaces else ClusterError(message)
            self._namespaces.append(host.namespace)

        self.bridge = bridge_name(tag)
        run_ip("link", "add", self.bridge, "type", "bridge")
        self._links.append(self.bridge)
        run_ip("addr", "add", f"{self.controller_address}/{subnet.prefixlen}", "dev", self.bridge)
        run_ip("link", "set", self.bridge, "up")

        for host in self.hosts:
            # Created with its peer already in the namespace: no name there to collide with in the root one.
            run_ip(
                "link",
                "add",
                host.veth,
                "type",
                "veth",
                "peer",
                "name",
                NAMESPACE_INTERFACE,
                "netns",
                host.namespace,
            )
            self._links.append(host.veth)
            run_ip("link", "set", host.veth, "master", self.bridge, "up")
            inside = ("-n", host.namespace)
            run_ip(*inside, "addr", "add", f"{host.address}/{subnet.prefixlen}", "dev", NAMESPACE_INTERFACE)
            run_ip(*inside, "link", "set", NAMESPACE_INTERFACE, "up")
            run_ip(*inside, "link", "set", "lo", "up")
            run_ip(*inside, "route", "add", "default", "via", self.controller_address)

    def _start_sshds(self) -> None:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        authorized_keys = self.private_key.with_suffix(".pub")
        for host in self.hosts:
            config = self.workdir / f"sshd-{host.name}.conf"
            pid_file = self.workdir / f"sshd-{host.name}.pid"
            config.write_text(sshd_config(host, self._host_key, authorized_keys, pid_file))
            # sshd must be started by its absolute path to re-exec itself for each connection.
            self.sshds[host] = self.start_in(
                host, [str(SSHD), "-D", "-e", "-f", str(config)], log=self._sshd_log(host)
            )

    def _sshd_log(self, host: Host) -> Path:
        return self.workdir / f"sshd-{host.name}.log"

    def _wait_for_sshds(self) -> None:
        deadline = time.monotonic() + SSHD_START_TIMEOUT
        waiting = dict(self.sshds)
        while waiting:
            for host, process in list(waiting.items()):
                if process.poll() is not None:
                    raise ClusterError(
                        f"sshd of {host.name} exited with {process.returncode}: {self._log_tail(host)}"
                    )
                if sshd_answers(host.address, host.ssh_port):
                    del waiting[host]
            if waiting and time.monotonic() > deadline:
                names = ", ".join(host.name for host in waiting)
                raise ClusterError(f"no sshd answered within {SSHD_START_TIMEOUT} s on {names}")
            if waiting:
                time.sleep(0.05)

    def _log_tail(self, host: Host) -> str:
        with contextlib.suppress(OSError):
            return self._sshd_log(host).read_text()[-2000:]
        return "(no log)"

    # Using

    def __getitem__(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def _host(self, host: Host | str) -> Host:
        return self[host] if isinstance(host, str) else host

    def ssh_command(self, host: Host | str, command: str) -> list[str]:
        """The argv of ``ssh root@HOST COMMAND`` with the cluster's key."""
        target = self._host(host)
        return [
            "ssh",
            *SSH_COMMON_ARGS,
            "-i",
            str(self.private_key),
            "-p",
            str(target.ssh_port),
            f"root@{target.address}",
            "--",
            command,
        ]

    def ssh(
        self, host: Host | str, command: str, timeout: float = COMMAND_TIMEOUT, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on a host over SSH, as root; its output captured as text."""
        return subprocess.run(
            self.ssh_command(host, command),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            stdin=subprocess.DEVNULL,
        )

    def ssh_args(self) -> SshSettings:
        """For ansible: ansible_ssh_private_key_file and ansible_ssh_common_args (and ansible_user=root)."""
        return SshSettings(self.private_key, " ".join(SSH_COMMON_ARGS))

    def exec_in(
        self,
        host: Host | str,
        argv: Sequence[str],
        timeout: float = COMMAND_TIMEOUT,
        check: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in a host's namespace directly (no SSH), as root; its output captured as text."""
        return subprocess.run(
            ["ip", "netns", "exec", self._host(host).namespace, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def start_in(
        self, host: Host | str, argv: Sequence[str], log: Path | None = None
    ) -> subprocess.Popen[str]:
        """Start a long-running command in a host's namespace: stdout a pipe, or ``log`` with stderr;
        teardown stops it. Its own session, so that a Ctrl-C meant for pytest leaves it to teardown."""
        output = log.open("w") if log is not None else None
        try:
            # `ip netns exec` execs the command: the Popen's pid is the command's own.
            process = subprocess.Popen(
                ["ip", "netns", "exec", self._host(host).namespace, *argv],
                stdin=subprocess.DEVNULL,
                stdout=output if output is not None else subprocess.PIPE,
                stderr=subprocess.STDOUT if output is not None else None,
                text=True,
                start_new_session=True,
            )
        finally:
            if output is not None:
                output.close()  # the child holds its own copy
        self._processes.append(process)
        return process

    def cut(self, host: Host | str) -> None:
        """Take a host off the network: its end of the bridge goes down, its processes keep running."""
        run_ip("link", "set", self._host(host).veth, "down")

    def restore(self, host: Host | str, timeout: float = SSHD_START_TIMEOUT) -> None:
        """Put a cut host back on the network and wait (bounded) until its sshd answers again."""
        target = self._host(host)
        run_ip("link", "set", target.veth, "up")
        deadline = time.monotonic() + timeout
        while not sshd_answers(target.address, target.ssh_port):
            if time.monotonic() > deadline:
                raise ClusterError(f"{target.name} did not answer within {timeout} s of restore()")
            time.sleep(0.05)

    def pids(self) -> set[int]:
        """The processes running in the cluster's namespaces, and those it started that still run."""
        running = {process.pid for process in self._processes if process.poll() is None}
        for namespace in self._namespaces:
            running |= namespace_pids(namespace)
        return running

    # Tearing down

    def close(self) -> None:
        """Stop the processes, then delete the veths, namespaces and bridge this cluster created; nothing
        else. Runs once; everything is attempted, and what failed is raised together at the end."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        problems = self._stop_processes()
        # Deleting a veth deletes its peer in the namespace; the bridge, created first, goes last.
        for link in reversed(self._links):
            result = run_ip("link", "delete", link, check=False)
            if result.returncode != 0 and "Cannot find device" not in result.stderr:
                problems.append(f"ip link delete {link}: {result.stderr.strip()}")
        for namespace in self._namespaces:
            result = run_ip("netns", "delete", namespace, check=False)
            if result.returncode != 0:
                problems.append(f"ip netns delete {namespace}: {result.stderr.strip()}")
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if problems:
            raise ClusterError("teardown: " + "; ".join(problems))

    def _stop_processes(self) -> list[str]:
        """SIGTERM, then SIGKILL, to the processes this cluster started and to every process in its
        namespaces (sshd's sessions, what they left running); a second round for anything that was
        forked meanwhile. Returns what would not die."""
        for signal_name in ("terminate", "kill"):
            survivors = self._namespace_processes()
            for process in self._processes:
                if process.poll() is None:
                    getattr(process, signal_name)()
            for other in survivors:
                with contextlib.suppress(psutil.NoSuchProcess):
                    # psutil checks the pid still belongs to the process it listed, not a newcomer.
                    getattr(other, signal_name)()
            deadline = time.monotonic() + STOP_TIMEOUT
            for process in self._processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(deadline - time.monotonic(), 0.01))
                if process.poll() is not None and process.stdout is not None:
                    process.stdout.close()
            while any(is_alive(other) for other in survivors) and time.monotonic() < deadline:
                time.sleep(0.02)
            if (
                all(process.poll() is not None for process in self._processes)
                and not self._namespace_processes()
            ):
                return []
        alive = [process.pid for process in self._processes if process.poll() is None]
        alive += [process.pid for process in self._namespace_processes()]
        return [f"processes still running after SIGKILL: {sorted(alive)}"] if alive else []

    def _namespace_processes(self) -> list[psutil.Process]:
        """The live processes in this cluster's namespaces that it did not start itself (those it waits
        for as its children); zombies count as gone."""
        children = {process.pid for process in self._processes}
        found = []
        for namespace in self._namespaces:
            for pid in namespace_pids(namespace) - children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process = psutil.Process(pid)
                    if is_alive(process):
                        found.append(process)
        return found
