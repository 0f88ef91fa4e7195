"""Plain HTTP on the WebSocket port: what a GET that is not an upgrade gets back.

The dashboard's files are held in memory (they are small) and answered from there: ``/`` is
``index.html``, any other path names a file. Only GET reaches here: picows answers any other method
with 400 before it asks us. Every answer closes its connection, as picows does with any answer other
than 101. The decision is made here, from the path and one header; the worker only turns it into
bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# The page renders transcript text, which anyone's Claude Code session may have written: no inline
# script can run, nothing loads from elsewhere, and the page cannot be framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str

    @classmethod
    def of(cls, name: str, body: bytes) -> Asset:
        suffix = name[name.rfind(".") :] if "." in name else ""
        content_type = CONTENT_TYPES.get(suffix, "application/octet-stream")
        return cls(body, content_type, '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"')


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def answer_get(target: str, if_none_match: str | None, assets: Mapping[str, Asset]) -> HttpReply:
    """Answer a GET for one of ``assets`` (keyed by file name); never raises."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    name = "index.html" if path in ("/", "") else path.lstrip("/")
    asset = assets.get(name)
    if asset is None:
        return HttpReply(404, {"Content-Type": "text/plain; charset=utf-8"}, b"not found\n")
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache", **SECURITY_HEADERS}
    if if_none_match is not None and asset.etag in (tag.strip() for tag in if_none_match.split(",")):
        return HttpReply(304, headers)
    headers["Content-Type"] = asset.content_type
    return HttpReply(200, headers, asset.body)
