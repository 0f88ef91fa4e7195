"""The multi-host harness itself: every host answers SSH on an address of its own, hosts reach each
other, cut() and restore() take one off the network and back, and teardown leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import subprocess
from ipaddress import IPv4Network

import psutil
import pytest

from tests.multihost import hosts
from tests.multihost.hosts import (
    Cluster,
    ClusterError,
    ClusterFactory,
    Host,
    NamespacesUnavailable,
    choose_run_tag,
    choose_subnet,
    is_alive,
    run_ip,
    sshd_answers,
)

ECHO_PORT = 8022  # any port: each namespace has its ports to itself
CONNECT_TIMEOUT = 1.0  # how long a connection to a cut host is given before it counts as unreachable
SERVER_TIMEOUT = 5.0

# argv: address port timeout. Exit status 0 when the connection is made.
CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3]))"
# argv: address port timeout. Accepts one connection and sends the address it came from.
SERVE_PEER_ADDRESS = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
server.settimeout(float(sys.argv[3]))
connection, peer = server.accept()
connection.sendall(peer[0].encode())
connection.close()
"""
# argv: address port timeout. Retries until the server listens (bounded), prints what it sends.
READ_FROM_SERVER = """
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[3])
while True:
    try:
        connection = socket.create_connection((sys.argv[1], int(sys.argv[2])), 1.0)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
connection.settimeout(float(sys.argv[3]))
print(connection.recv(100).decode())
"""


def connects(cluster: Cluster, source: Host, target: Host, port: int = hosts.SSH_PORT) -> bool:
    """Whether a process in ``source``'s namespace can open a TCP connection to ``target``."""
    argv = ["python3", "-c", CONNECT, target.address, str(port), str(CONNECT_TIMEOUT)]
    return cluster.exec_in(source, argv).returncode == 0


def network_names() -> tuple[str, str]:
    """`ip netns list` and `ip -o link` of the root namespace, as text."""
    return run_ip("netns", "list").stdout, run_ip("-o", "link", "show").stdout


def live_processes(pids: set[int]) -> list[psutil.Process]:
    """psutil's handles on those of ``pids`` still running (an sshd's child for a finished connection may
    be on its way out)."""
    processes = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            processes.append(psutil.Process(pid))
    return processes


def assert_gone(cluster: Cluster, processes: list[psutil.Process]) -> None:
    namespaces, links = network_names()
    for host in cluster.hosts:
        assert host.namespace not in namespaces
        assert f" {host.veth}@" not in links and f" {host.veth}:" not in links
    assert cluster.bridge and f" {cluster.bridge}:" not in links
    for process in processes:
        # is_running() compares start times too: a newcomer with a recycled pid does not count.
        assert not is_alive(process), process


def test_each_host_answers_ssh_on_an_address_of_its_own(cluster: Cluster) -> None:
    assert [host.name for host in cluster.hosts] == ["ingest", "worker1", "worker2"]
    assert len({host.address for host in cluster.hosts} | {cluster.controller_address}) == 4
    for host in cluster.hosts:
        result = cluster.ssh(host, "ip -4 -o addr show")
        assert result.returncode == 0, result.stderr
        assert f" {host.address}/24 " in result.stdout
        others = [other.address for other in cluster.hosts if other != host] + [cluster.controller_address]
        for address in others:
            assert f" {address}/" not in result.stdout, (host.name, result.stdout)


def test_ssh_args_are_what_ansible_needs(cluster: Cluster) -> None:
    settings = cluster.ssh_args()
    assert settings.private_key.is_file()
    assert "StrictHostKeyChecking=no" in settings.common_args
    assert "BatchMode=yes" in settings.common_args


def test_a_host_reaches_another(cluster: Cluster) -> None:
    ingest, worker1 = cluster["ingest"], cluster["worker1"]
    arguments = [worker1.address, str(ECHO_PORT), str(SERVER_TIMEOUT)]
    server = cluster.start_in(worker1, ["python3", "-c", SERVE_PEER_ADDRESS, *arguments])
    client = cluster.exec_in(ingest, ["python3", "-c", READ_FROM_SERVER, *arguments])
    assert client.returncode == 0, client.stderr
    # The server saw ingest's own address: the hosts talk over the bridge, directly.
    assert client.stdout.strip() == ingest.address
    assert server.wait(timeout=SERVER_TIMEOUT) == 0


def test_cut_takes_a_host_off_the_network_and_restore_brings_it_back(cluster: Cluster) -> None:
    ingest, worker1 = cluster["ingest"], cluster["worker1"]
    assert connects(cluster, ingest, worker1)

    cluster.cut(worker1)
    assert not sshd_answers(worker1.address, timeout=CONNECT_TIMEOUT)  # from the controller
    assert not connects(cluster, ingest, worker1)
    # The others are still on the network, and worker1 is still running behind the cut.
    assert cluster.ssh(ingest, "true").returncode == 0
    assert cluster.sshds[worker1].poll() is None
    assert connects(cluster, worker1, worker1)

    cluster.restore(worker1)
    result = cluster.ssh(worker1, "echo back")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "back\n"
    assert connects(cluster, ingest, worker1)


def test_teardown_leaves_no_namespace_interface_or_process(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(["solo1", "solo2"])
    # One process started by the cluster, one left behind by an SSH session (not the cluster's child).
    started = cluster.start_in("solo1", ["sleep", "300"])
    left_behind = cluster.ssh("solo2", "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!")
    assert left_behind.returncode == 0, left_behind.stderr
    pids = cluster.pids()
    sshds = {process.pid for process in cluster.sshds.values()}
    assert {started.pid, int(left_behind.stdout), *sshds} <= pids
    processes = live_processes(pids)
    namespaces, links = network_names()
    assert all(host.namespace in namespaces for host in cluster.hosts)
    assert cluster.bridge in links

    cluster.close()
    assert_gone(cluster, processes)
    cluster.close()  # a second time does nothing


def test_an_interrupt_tears_the_cluster_down(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(["solo"])
    processes = live_processes(cluster.pids())
    with pytest.raises(KeyboardInterrupt), cluster:
        raise KeyboardInterrupt
    assert_gone(cluster, processes)


def test_a_build_that_fails_tears_down_what_it_built(
    cluster_factory: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster_factory(["probe"])  # skips here when this machine cannot have namespaces
    monkeypatch.setattr(hosts, "sshd_config", lambda *_: "NoSuchOption yes\n")
    failing = Cluster(["broken"])
    try:
        with pytest.raises(ClusterError, match="sshd of broken exited"):
            failing.start()
        assert_gone(failing, [])
    finally:
        failing.close()  # does nothing unless start() wrongly succeeded


def test_a_machine_that_refuses_namespaces_is_unavailable(
    cluster_factory: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster_factory(["probe"])  # skips here when this machine cannot have namespaces
    real_run_ip = hosts.run_ip

    def refuse_namespaces(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if args[:2] == ("netns", "add"):
            return subprocess.CompletedProcess(["ip", *args], 1, "", "Operation not permitted\n")
        return real_run_ip(*args, check=check)

    monkeypatch.setattr(hosts, "run_ip", refuse_namespaces)
    refused = Cluster(["refused"])
    with pytest.raises(NamespacesUnavailable, match=r"ip netns add .*: Operation not permitted"):
        refused.start()
    assert refused.bridge == ""  # namespaces come first: nothing else was built


def test_two_clusters_at_once_do_not_collide(cluster_factory: ClusterFactory) -> None:
    first, second = cluster_factory(["same"]), cluster_factory(["same"])
    assert first.subnet != second.subnet
    assert first.bridge != second.bridge
    assert first["same"].namespace != second["same"].namespace
    assert first.ssh("same", "true").returncode == 0
    assert second.ssh("same", "true").returncode == 0


def test_names_skip_leftovers_and_fit_interface_names() -> None:
    leftovers = {"mh4194304-0br", "mh4194304-1-ingest"}  # of a killed run with the same pid
    assert choose_run_tag(4194304, 0, 3, leftovers) == "mh4194304-2"
    with pytest.raises(ClusterError, match="longer than 15"):
        choose_run_tag(4194304, 0, 10_000, set())


def test_the_subnet_overlaps_no_route() -> None:
    pool = list(hosts.SUBNET_POOL.subnets(new_prefix=24))
    routed = [IPv4Network("0.0.0.0/0"), pool[5], IPv4Network(f"{pool[6].network_address + 7}/32")]
    assert choose_subnet(5, routed) == pool[7]
    assert choose_subnet(len(pool) - 1, [pool[-1]]) == pool[0]
    with pytest.raises(ClusterError, match="overlaps"):
        choose_subnet(0, [hosts.SUBNET_POOL])


def test_without_root_nothing_is_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NamespacesUnavailable, match="root"):
        Cluster(["ingest"]).start()
