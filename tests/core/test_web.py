"""Plain HTTP on the WebSocket port: which file, which status, which headers."""

from __future__ import annotations

import pytest

from core.web import SECURITY_HEADERS, Asset, answer_get

PAGE = Asset.of("index.html", b"<!doctype html><title>Observatory</title>")
SCRIPT = Asset.of("app.js", b"console.log('hi')")
ASSETS = {"index.html": PAGE, "app.js": SCRIPT}


@pytest.mark.parametrize(
    ("target", "asset"),
    [
        ("/", PAGE),
        ("", PAGE),
        ("/index.html", PAGE),
        ("/?token=abc", PAGE),
        ("/app.js", SCRIPT),
        ("/app.js?v=2", SCRIPT),
    ],
)
def test_get_serves_the_named_file_with_its_type(target: str, asset: Asset) -> None:
    reply = answer_get(target, None, ASSETS)
    assert (reply.status, reply.body) == (200, asset.body)
    assert reply.headers["Content-Type"] == asset.content_type
    assert reply.headers["ETag"] == asset.etag


@pytest.mark.parametrize(
    "target", ["/missing.js", "/../core/web.py", "/%2e%2e/x", "/dashboard/index.html", "/index.html/"]
)
def test_anything_else_is_404(target: str) -> None:
    reply = answer_get(target, None, ASSETS)
    assert reply.status == 404 and reply.body == b"not found\n"


@pytest.mark.parametrize("if_none_match", [PAGE.etag, f'"other", {PAGE.etag}', f" {PAGE.etag} "])
def test_a_matching_etag_is_304_without_body(if_none_match: str) -> None:
    reply = answer_get("/", if_none_match, ASSETS)
    assert (reply.status, reply.body) == (304, b"")
    assert reply.headers["ETag"] == PAGE.etag


def test_a_stale_etag_gets_the_file() -> None:
    assert answer_get("/", '"stale"', ASSETS).status == 200


def test_every_file_carries_the_security_headers() -> None:
    reply = answer_get("/", None, ASSETS)
    for name, value in SECURITY_HEADERS.items():
        assert reply.headers[name] == value
    assert "script-src" not in SECURITY_HEADERS["Content-Security-Policy"]  # default-src 'self' covers it
    assert "'unsafe-inline'" not in SECURITY_HEADERS["Content-Security-Policy"]


def test_etags_follow_the_content() -> None:
    assert Asset.of("a.js", b"1").etag != Asset.of("a.js", b"2").etag
    assert Asset.of("a.js", b"1").etag == Asset.of("b.js", b"1").etag
    assert Asset.of("x.unknown", b"").content_type == "application/octet-stream"
