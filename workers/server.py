"""picows' WebSocket server, with the client's address known when the handshake is decided.

picows hands its listener factory the parsed upgrade request but not the peer's address, and the
per-address limits must answer 429 *before* the upgrade. So this module builds the server the way
``picows.ws_create_server`` does, with a protocol subclass that notes the peer in
``connection_made`` and passes it to our factory. It depends on the constructor of picows'
``WSProtocol``, which is why pyproject.toml pins picows to one minor version; every integration
test goes through here, so a change there fails loudly.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

from picows import WSAutoPingStrategy, WSUpgradeRequest
from picows.picows import WSProtocol  # type: ignore[attr-defined]

Decide = Callable[[WSUpgradeRequest, str | None], Any]

# picows' smallest read buffer: it grows for a larger message, and most connections only ever read
# small requests. 16 KiB each made 10,000 idle connections hold 140 MB more (perf/README.md).
READ_BUFFER_INITIAL = 2048


def _accept_token_lists(request: WSUpgradeRequest) -> WSUpgradeRequest:
    """RFC 6455 4.2.1 asks that Connection *include* the Upgrade token; Firefox sends
    ``keep-alive, Upgrade``. picows validates after our factory and wants the bare token, so a
    list that includes it is reduced to it here."""
    connection = request.headers.get("Connection", "")
    tokens = {token.strip().lower() for token in connection.split(",")}
    if "upgrade" in tokens and connection.strip().lower() != "upgrade":
        request.headers["Connection"] = "Upgrade"
    return request


class _PeerAwareProtocol(WSProtocol):  # type: ignore[misc]
    def __init__(self, decide: Decide, options: dict[str, Any]) -> None:
        self.peer: str | None = None
        super().__init__(
            None,  # host:port, client side only
            None,  # path, client side only
            False,  # is_client_side
            lambda request: decide(_accept_token_lists(request), self.peer),
            options["logger"],
            True,  # disconnect_on_exception
            options["handshake_timeout"],
            False,  # enable_auto_ping: the hub's heartbeat sweep pings, with no task per connection
            10.0,  # auto-ping idle timeout (unused)
            10.0,  # auto-ping reply timeout (unused)
            WSAutoPingStrategy.PING_WHEN_IDLE,
            True,  # enable_auto_pong
            options["max_frame_size"],
            None,  # extra_headers, client side only
            READ_BUFFER_INITIAL,
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        super().connection_made(transport)


async def create_server(
    decide: Decide,
    host: str,
    port: int,
    *,
    handshake_timeout: float,
    max_frame_size: int,
    ssl_context: ssl.SSLContext | None,
    backlog: int,
) -> asyncio.AbstractServer:
    """Listen on ``host:port`` with SO_REUSEPORT; ``decide(request, peer_ip)`` admits each handshake."""
    options = {
        # An adapter, not a Logger: picows gives each connection a child Logger of a Logger it is
        # handed (about 700 bytes each), and uses an adapter as it is.
        "logger": logging.LoggerAdapter(logging.getLogger("picows.worker")),
        "handshake_timeout": handshake_timeout,
        "max_frame_size": max_frame_size,
    }
    # uvloop's own transport rather than aiofastnet's (which picows uses when given the choice): the
    # same CPU per delivery, 5 KB less per connection, and a shorter handshake tail (perf/README.md).
    server: asyncio.AbstractServer = await asyncio.get_running_loop().create_server(
        lambda: _PeerAwareProtocol(decide, options),
        host=host,
        port=port,
        reuse_port=True,
        backlog=backlog,
        ssl=ssl_context,
    )
    return server
