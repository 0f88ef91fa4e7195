"""ZeroMQ sockets on an asyncio loop without zmq.asyncio's per-message futures.

A socket's ``FD`` is edge-triggered: it signals that *something* changed, not that a message is
waiting. So a reader drains until ``EAGAIN``; when it stops early to keep the loop fair it
schedules itself again, because the FD will not fire for messages already queued.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import zmq

from core.errors import BootError


def bind(
    context: zmq.Context[zmq.Socket[bytes]],
    kind: int,
    endpoint: str,
    option: str,
    *,
    sndhwm: int | None = None,
    rcvhwm: int | None = None,
    maxmsgsize: int | None = None,
) -> zmq.Socket[bytes]:
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if sndhwm is not None:
        sock.setsockopt(zmq.SNDHWM, sndhwm)
    if rcvhwm is not None:
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
    if maxmsgsize is not None:
        sock.setsockopt(zmq.MAXMSGSIZE, maxmsgsize)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise BootError(f"cannot bind {option} {endpoint}: {exc.strerror}") from None
    return sock


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
