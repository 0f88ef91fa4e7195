"""Fixtures for tests against several hosts: network namespaces with an sshd each (tests/multihost/hosts.py).

Every test under this directory carries the marker ``multihost``: ``-m multihost`` runs them alone,
``-m "not multihost"`` leaves them out; a plain run includes them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.multihost.hosts import Cluster, ClusterError, ClusterFactory, NamespacesUnavailable

HERE = Path(__file__).resolve().parent
DEFAULT_HOST_NAMES = ("ingest", "worker1", "worker2")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A hook of this conftest sees the whole session's items: mark only those from this directory.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.multihost)


def unavailable(reason: str) -> None:
    """Skip, or fail when the environment variable CI is set: CI must run these (as tests/browser.py)."""
    message = f"multi-host tests cannot run here: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[ClusterFactory]:
    """Build clusters with ``cluster_factory(["ingest", "worker1"])``: running, each host's sshd
    answering; every one is torn down at the end of the test (or earlier with ``close()``)."""
    built: list[Cluster] = []

    def build(host_names: Sequence[str] = DEFAULT_HOST_NAMES) -> Cluster:
        cluster = Cluster(host_names, workdir=tmp_path / f"cluster{len(built)}")
        try:
            cluster.start()  # tears down what it built when it fails
        except NamespacesUnavailable as error:
            unavailable(str(error))
        built.append(cluster)
        return cluster

    yield build
    failures: list[ClusterError] = []
    for cluster in reversed(built):
        try:
            cluster.close()
        except ClusterError as failure:  # the others are still torn down
            failures.append(failure)
    if failures:
        raise failures[0]


@pytest.fixture
def cluster(cluster_factory: ClusterFactory) -> Cluster:
    """Three hosts, ingest, worker1 and worker2, for one test."""
    return cluster_factory(DEFAULT_HOST_NAMES)
