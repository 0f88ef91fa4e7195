"""The WebSocket worker process: picows on uvloop, one of N sharing the port with SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import logging
import signal

import zmq
from picows import ws_create_server

from core.config import Settings
from core.errors import BootError
from workers.child import Liveness
from workers.hub import Hub
from workers.keys import AuthSetup

log = logging.getLogger("observatory.worker")

LISTEN_BACKLOG = 4096
DRAIN_GRACE = 2.0


async def serve(settings: Settings, auth: AuthSetup, worker_id: int, beat_fd: int, parent_pid: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    hub = Hub(settings, worker_id, auth, context, loop)
    try:
        server = await ws_create_server(
            hub.listener_for,
            settings.host,
            settings.port,
            reuse_port=True,
            backlog=LISTEN_BACKLOG,
            websocket_handshake_timeout=settings.handshake_timeout,
            enable_auto_ping=True,
            auto_ping_idle_timeout=settings.heartbeat_interval,
            auto_ping_reply_timeout=settings.heartbeat_timeout,
            max_frame_size=settings.max_message_bytes,
            logger_name="worker",
        )
    except OSError as exc:
        hub.detach()
        context.term()
        raise BootError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}") from None
    hub.attach()
    liveness = Liveness(beat_fd, parent_pid, stop.set)
    liveness.start()
    log.info("worker %d serving ws://%s:%d/", worker_id, settings.host, settings.port)

    await stop.wait()
    server.close()
    await hub.drain(DRAIN_GRACE)
    liveness.stop()
    hub.detach()
    context.term()
    log.info("worker %d stopped", worker_id)
