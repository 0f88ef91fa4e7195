"""Plain HTTP on the WebSocket port, as picows responses: /metrics, /health, /ready, and the
dashboard's files.

The files are read once, when the worker starts, from the ``dashboard`` package; ``core.web``
decides their answers. /metrics and /health report the whole server, whichever worker answers.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from importlib import resources
from typing import Any

import orjson
from multidict import CIMultiDict
from picows import WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener
from prometheus_client import CONTENT_TYPE_LATEST

from core.web import CONTENT_TYPES, Asset, HttpReply, answer_get
from workers.metrics import ServerView

NO_STORE = {"Cache-Control": "no-store"}


def load_assets() -> dict[str, Asset]:
    folder = resources.files("dashboard")
    return {
        entry.name: Asset.of(entry.name, entry.read_bytes())
        for entry in folder.iterdir()
        if entry.is_file() and any(entry.name.endswith(suffix) for suffix in CONTENT_TYPES)
    }


def wants_websocket(request: WSUpgradeRequest) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


class WebAnswers:
    def __init__(self, view: ServerView, readiness: Callable[[], str | None]) -> None:
        self.assets = load_assets()
        self.view = view
        self.readiness = readiness  # None when ready, else why not

    def respond(self, request: WSUpgradeRequest) -> WSUpgradeResponseWithListener:
        target = request.path.decode("latin-1")
        path = target.split("?", 1)[0]
        if path == "/metrics":
            reply = HttpReply(200, {"Content-Type": CONTENT_TYPE_LATEST, **NO_STORE}, self.view.prometheus())
        elif path == "/health":
            health, processes = self.view.health()
            body = {
                "status": health.status,
                "checks": [check.to_json() for check in health.checks],
                "processes": [process.to_json() for process in processes],
            }
            reply = _json(health.http_status, body)
        elif path == "/ready":
            reason = self.readiness()
            reply = _json(200 if reason is None else 503, {"ready": reason is None, "reason": reason})
        else:
            reply = answer_get(target, request.headers.get("If-None-Match"), self.assets)
        return WSUpgradeResponseWithListener(to_response(reply), None)


def _json(status: int, body: dict[str, Any]) -> HttpReply:
    return HttpReply(status, {"Content-Type": "application/json", **NO_STORE}, orjson.dumps(body))


def to_response(reply: HttpReply) -> WSUpgradeResponse:
    response = WSUpgradeResponse()
    response.version = b"HTTP/1.1"
    response.status = HTTPStatus(reply.status)
    response.headers = CIMultiDict({**reply.headers, "Connection": "close"})
    response.body = reply.body or None
    return response
