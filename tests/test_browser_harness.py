"""tests/browser.py itself: real pages in Debian's headless Chromium, their DOM, their JS errors, cleanup."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from tests import browser
from tests.browser import open_page

HEAD = b"<!doctype html><meta charset=utf-8><link rel=icon href='data:,'><p id=out>static</p>"
PAGES = {
    "/": HEAD + b"<script>document.getElementById('out').textContent = 'from script';</script>",
    "/broken": HEAD + b"<script>console.error('logged on purpose'); noSuchFunction();</script>",
}


class PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = PAGES.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the test output to failures


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """PAGES served on 127.0.0.1, on a port the kernel picks, from a thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)
    thread = threading.Thread(target=server.serve_forever, name="test-pages", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_script_writes_into_the_dom_without_errors(site: str) -> None:
    with open_page() as opened:
        opened.page.goto(f"{site}/")
        assert opened.page.text_content("#out") == "from script"
        assert opened.errors == []


def test_console_errors_and_uncaught_exceptions_are_collected(site: str) -> None:
    with open_page() as opened:
        opened.page.goto(f"{site}/broken")
        opened.page.evaluate("0")  # a round trip: the events the page sent before it are delivered
        assert opened.page.text_content("#out") == "static"
        assert len(opened.errors) == 2, opened.errors
        assert "logged on purpose" in opened.errors[0]
        assert "noSuchFunction is not defined" in opened.errors[1]


def test_a_browser_that_hangs_on_close_is_killed() -> None:
    started = time.monotonic()
    with open_page(close_timeout=1.0) as opened:
        assert opened.pid is not None
        os.kill(opened.pid, signal.SIGSTOP)  # it can no longer answer Browser.close
    assert time.monotonic() - started < 15
    with contextlib.suppress(psutil.NoSuchProcess):
        assert psutil.Process(opened.pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("ci", [None, "true"])
def test_missing_chromium_skips_or_fails_under_ci(monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    monkeypatch.setattr(browser, "CHROMIUM", Path("/nonexistent/chromium"))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match="make browser"), open_page():
        pass
