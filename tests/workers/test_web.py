"""The dashboard's files over real HTTP from a running worker, beside the WebSocket on one port."""

from __future__ import annotations

import http.client
from importlib import resources

import pytest

from tests.harness import ServerProcess


def fetch(
    server: ServerProcess, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


SHIPPED = sorted(
    entry.name
    for entry in resources.files("dashboard").iterdir()
    if entry.name.endswith((".html", ".js", ".css"))
)


def test_the_dashboard_is_shipped() -> None:
    assert {"index.html", "app.js", "style.css", "observatory-client.js"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_file_is_served_as_it_is(server: ServerProcess, name: str) -> None:
    status, headers, body = fetch(server, "GET", "/" + name)
    assert status == 200
    assert body == resources.files("dashboard").joinpath(name).read_bytes()
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert headers["connection"] == "close"


def test_the_root_is_the_page_and_needs_no_token(server: ServerProcess) -> None:
    status, headers, body = fetch(server, "GET", "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert b"observatory-client.js" in body or b"app.js" in body


def test_revalidation_with_the_etag_is_304(server: ServerProcess) -> None:
    _, headers, _ = fetch(server, "GET", "/app.js")
    status, _, body = fetch(server, "GET", "/app.js", {"If-None-Match": headers["etag"]})
    assert (status, body) == (304, b"")


def test_unknown_paths_and_methods_are_refused(server: ServerProcess) -> None:
    assert fetch(server, "GET", "/etc/passwd")[0] == 404
    assert fetch(server, "GET", "/../supervisor.py")[0] == 404
    # picows itself answers any method but GET.
    assert fetch(server, "POST", "/")[0] == 400
    assert fetch(server, "HEAD", "/")[0] == 400
