"""Fixtures for tests against real processes; ``async def`` tests run on a fresh uvloop loop."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tests.harness import ServerProcess, start_server

ASYNC_TEST_TIMEOUT = 60.0


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    arguments: dict[str, Any] = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    uvloop.run(asyncio.wait_for(pyfuncitem.obj(**arguments), ASYNC_TEST_TIMEOUT))
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One observatory with two workers, shared by a module's tests (each uses its own filters)."""
    running = start_server(tmp_path_factory.mktemp("server"), workers=2)
    yield running
    running.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers of one's own with ``server_factory(**options)`` (two workers each); every one
    is stopped at the end of the test."""
    started: list[ServerProcess] = []

    def start(**options: Any) -> ServerProcess:
        started.append(start_server(tmp_path, 2, **options))
        return started[-1]

    yield start
    for server in started:
        server.stop()
