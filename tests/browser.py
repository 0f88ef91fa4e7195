"""A real browser for tests: Debian's headless Chromium driven by Playwright, bounded and always closed."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, WebError, sync_playwright
from playwright.sync_api import Error as PlaywrightError

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; `playwright install` cannot download here
# Without the background-networking flags this machine's closed network refuses Chromium's connections.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ACTION_TIMEOUT = 5.0  # seconds, for every Playwright action and navigation
LAUNCH_TIMEOUT = 20.0
CLOSE_TIMEOUT = 10.0  # then the browser's process group is killed


@dataclass
class BrowserPage:
    page: Page
    pid: int | None  # the browser process; Playwright starts it as its own process group
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions, in order


def require_chromium() -> None:
    """Skip without Chromium, or fail when the environment variable CI is set."""
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: install Debian's chromium with `make browser`"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def open_page(
    action_timeout: float = ACTION_TIMEOUT, close_timeout: float = CLOSE_TIMEOUT
) -> Iterator[BrowserPage]:
    """A page in a fresh headless Chromium with an empty profile; errors from any of its pages collected."""
    require_chromium()
    with (
        tempfile.TemporaryDirectory(prefix="browser-test-", ignore_cleanup_errors=True) as profile,
        sync_playwright() as playwright,
    ):
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=LAUNCH_TIMEOUT * 1000
        )
        pid: int | None = None
        try:
            pid = _browser_pid(context)
            context.set_default_timeout(action_timeout * 1000)
            context.set_default_navigation_timeout(action_timeout * 1000)
            opened = BrowserPage(context.pages[0] if context.pages else context.new_page(), pid)

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    opened.errors.append(f"console.error: {message.text} ({message.location['url']})")

            def on_error(error: WebError) -> None:
                opened.errors.append(f"uncaught: {error.error.message}")

            context.on("console", on_console)
            context.on("weberror", on_error)
            yield opened
        finally:
            _close(context, pid, close_timeout)


def _browser_pid(context: BrowserContext) -> int | None:
    browser = context.browser
    if browser is None:
        return None
    processes = browser.new_browser_cdp_session().send("SystemInfo.getProcessInfo")["processInfo"]
    return next((p["id"] for p in processes if p["type"] == "browser"), None)


def _close(context: BrowserContext, pid: int | None, timeout: float) -> None:
    """Close the browser; if that hangs, kill exactly its process group (the pid leads it) or the pid."""

    def kill() -> None:
        assert pid is not None
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)

    watchdog = threading.Timer(timeout, kill) if pid is not None else None
    if watchdog is not None:
        watchdog.daemon = True
        watchdog.start()
    try:
        context.close()
    except PlaywrightError:
        pass  # the browser died or was killed: it is gone either way
    finally:
        if watchdog is not None:
            watchdog.cancel()
