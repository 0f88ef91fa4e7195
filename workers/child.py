"""What every child process of the supervisor shares: boot, liveness beats, parent watch, exit codes.

Liveness comes from the child's own event loop: a timer on that loop writes one byte to a pipe the
supervisor reads. A wedged loop stops beating and the supervisor kills it; no side thread can keep
a dead loop looking alive.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from core.errors import BootError

EXIT_OK = 0
EXIT_CRASH = 1
# A child that cannot boot (port taken, bad endpoint) exits with this code: the supervisor stops
# everything instead of respawning it forever, as gunicorn's arbiter does with WORKER_BOOT_ERROR.
EXIT_BOOT_ERROR = 3

BEAT_INTERVAL = 1.0
_PR_SET_NAME = 15
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("observatory.child")


def _prctl(option: int, value: object) -> bool:
    try:
        return bool(ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False  # not Linux


def set_process_name(name: str) -> None:
    """Name the process in ps/top (``obs-worker-2``): operators see which child is which."""
    _prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]))


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGTERM when the supervisor dies, even by SIGKILL (Linux).

    Elsewhere the beat timer's parent check still catches it within a second.
    """
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        # The parent died between fork and prctl: nobody would send the signal.
        os._exit(EXIT_OK)


class Liveness:
    """Beats to the supervisor from the event loop and notices when the supervisor is gone."""

    def __init__(self, beat_fd: int, parent_pid: int, on_orphaned: Callable[[], None]) -> None:
        self.beat_fd = beat_fd
        self.parent_pid = parent_pid
        self.on_orphaned = on_orphaned
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        os.set_blocking(self.beat_fd, False)
        self._beat()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def _beat(self) -> None:
        if os.getppid() != self.parent_pid:
            log.warning("supervisor is gone; shutting down")
            self.on_orphaned()
            return
        try:
            os.write(self.beat_fd, b".")
        except BlockingIOError:
            pass  # the supervisor is busy; a full pipe already says we are alive
        except BrokenPipeError:
            self.on_orphaned()
            return
        self._handle = asyncio.get_running_loop().call_later(BEAT_INTERVAL, self._beat)


def run_child(role: str, main: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run a child's main coroutine on uvloop and map how it ended to an exit code."""
    try:
        uvloop.run(main())
    except BootError as exc:
        log.error("%s cannot boot: %s", role, exc)
        return EXIT_BOOT_ERROR
    except Exception:
        log.exception("%s crashed", role)
        return EXIT_CRASH
    return EXIT_OK
