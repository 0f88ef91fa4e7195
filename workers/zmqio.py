"""ZeroMQ sockets on an asyncio loop without zmq.asyncio's per-message futures.

A socket's ``FD`` is edge-triggered: it signals that *something* changed, not that a message is
waiting. So a reader drains until ``EAGAIN``; when it stops early to keep the loop fair it
schedules itself again, because the FD will not fire for messages already queued.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterator

import zmq

from core.errors import BootError
from workers.curve import BusKeys, serve_securely


def bind(
    context: zmq.Context[zmq.Socket[bytes]],
    kind: int,
    endpoint: str,
    option: str,
    *,
    sndhwm: int | None = None,
    rcvhwm: int | None = None,
    maxmsgsize: int | None = None,
    curve: BusKeys | None = None,
) -> zmq.Socket[bytes]:
    sock = context.socket(kind)
    if curve is not None:
        serve_securely(sock, curve)
    sock.setsockopt(zmq.LINGER, 0)
    if sndhwm is not None:
        sock.setsockopt(zmq.SNDHWM, sndhwm)
    if rcvhwm is not None:
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
    if maxmsgsize is not None:
        sock.setsockopt(zmq.MAXMSGSIZE, maxmsgsize)
    problem = _live_ipc_owner(endpoint)
    if problem is None:
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            problem = exc.strerror
    if problem is not None:
        sock.close(linger=0)
        raise BootError(f"cannot bind {option} {endpoint}: {problem}")
    return sock


def _live_ipc_owner(endpoint: str) -> str | None:
    """ZeroMQ binds ipc:// by replacing the socket file: a second server would silently steal it."""
    if not endpoint.startswith("ipc://"):
        return None
    path = endpoint[len("ipc://") :]
    if not os.path.exists(path):
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return None  # a stale file left by a process that died: safe to replace
    return "already in use by a running process"


def drain_batch(
    sock: zmq.Socket[bytes], limit: int, resume: Callable[[], None] | None
) -> Iterator[list[bytes]]:
    """Yield up to ``limit`` multipart messages; if more may be waiting, call ``resume`` soon."""
    for _ in range(limit):
        try:
            yield sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
    if resume is not None:
        asyncio.get_running_loop().call_soon(resume)
