"""Plain HTTP on the WebSocket port, as picows responses: the dashboard's files.

The files are read once, when the worker starts, from the ``dashboard`` package; ``core.web``
decides each answer.
"""

from __future__ import annotations

from http import HTTPStatus
from importlib import resources

from multidict import CIMultiDict
from picows import WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener

from core.web import CONTENT_TYPES, Asset, HttpReply, answer_get


def load_assets() -> dict[str, Asset]:
    folder = resources.files("dashboard")
    return {
        entry.name: Asset.of(entry.name, entry.read_bytes())
        for entry in folder.iterdir()
        if entry.is_file() and any(entry.name.endswith(suffix) for suffix in CONTENT_TYPES)
    }


def wants_websocket(request: WSUpgradeRequest) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


def serve_file(request: WSUpgradeRequest, assets: dict[str, Asset]) -> WSUpgradeResponseWithListener:
    reply = answer_get(request.path.decode("latin-1"), request.headers.get("If-None-Match"), assets)
    return WSUpgradeResponseWithListener(to_response(reply), None)


def to_response(reply: HttpReply) -> WSUpgradeResponse:
    response = WSUpgradeResponse()
    response.version = b"HTTP/1.1"
    response.status = HTTPStatus(reply.status)
    response.headers = CIMultiDict({**reply.headers, "Connection": "close"})
    response.body = reply.body or None
    return response
