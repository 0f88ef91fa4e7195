"""The dashboard in a real browser: Debian's headless Chromium, a real observatory with its transcript
watcher, and transcripts written line by line as Claude Code writes them."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from core.transcripts import project_id_for
from tests.browser import BrowserPage, open_page
from tests.harness import ServerProcess, signal_child, start_server, wait_replaced
from tests.transcripts import TranscriptWriter, text, tool_use

SHOP, BLOG = "/home/dev/shop_api", "/home/dev/blog"
# Chromium reports a refused or dropped WebSocket on the console itself; the page cannot silence it.
BROWSER_NOISE = ("WebSocket connection to",)
# Every state the connection indicator shows, in order, recorded by the page itself.
RECORD_STATES = """
new MutationObserver(() => {
  const status = document.querySelector('[data-testid="connection-status"]');
  if (!status) return;
  window.__states = window.__states || [];
  const state = status.getAttribute('data-state');
  if (window.__states[window.__states.length - 1] !== state) window.__states.push(state);
}).observe(document, {subtree: true, attributes: true, attributeFilter: ['data-state'], childList: true});
"""


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    root = tmp_path / "projects"
    server = start_server(tmp_path, workers=1, watch=True, transcripts_dir=str(root), analytics_interval=1)
    try:
        yield server, root
    finally:
        server.stop()


@pytest.fixture
def browser() -> Iterator[BrowserPage]:
    with open_page() as opened:
        opened.page.add_init_script(RECORD_STATES)
        yield opened


def open_dashboard(page: Page, server: ServerProcess) -> None:
    page.goto(f"http://127.0.0.1:{server.port}/#token={server.token()}")
    expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "open")


def open_after_a_line(
    watched: tuple[ServerProcess, Path], browser: BrowserPage, line: str
) -> tuple[Page, TranscriptWriter]:
    """A shop_api conversation with one line, and the dashboard open on it with that line in its feed."""
    server, root = watched
    shop = TranscriptWriter(root, cwd=SHOP)
    shop.user(line)
    open_dashboard(browser.page, server)
    expect(feed_item(browser.page, line)).to_have_count(1)
    return browser.page, shop


def feed_item(page: Page, content: str):  # type: ignore[no-untyped-def]
    return page.get_by_test_id("feed").get_by_test_id("feed-item").filter(has_text=content)


def real_errors(browser: BrowserPage) -> list[str]:
    return [e for e in browser.errors if not any(noise in e for noise in BROWSER_NOISE)]


def test_the_page_loads_with_the_projects_and_conversations_and_the_token_leaves_the_address(
    watched: tuple[ServerProcess, Path], browser: BrowserPage
) -> None:
    server, root = watched
    shop = TranscriptWriter(root, cwd=SHOP)
    shop.user("fix the orders endpoint")
    shop.assistant([text("Reading it."), tool_use("Read", file_path="app/orders.py")])
    TranscriptWriter(root, cwd=BLOG).user("write a post")
    page = browser.page
    open_dashboard(page, server)
    expect(page.get_by_test_id("project-item")).to_have_count(2)
    expect(page.get_by_test_id("projects")).to_contain_text("shop_api")
    expect(page.get_by_test_id("conversation-item")).to_have_count(2)
    # The first load shows the recent messages, with their tool uses.
    expect(feed_item(page, "fix the orders endpoint")).to_have_count(1)
    expect(page.get_by_test_id("tool-use").filter(has_text="Read")).to_have_count(1)
    assert "token" not in page.url
    assert real_errors(browser) == []


def test_a_line_appended_to_a_transcript_shows_in_the_feed_within_a_second(
    watched: tuple[ServerProcess, Path], browser: BrowserPage
) -> None:
    page, shop = open_after_a_line(watched, browser, "before the page opened")
    for i in range(3):
        written = time.monotonic()
        shop.user(f"appended line {i}")
        expect(feed_item(page, f"appended line {i}")).to_have_count(1, timeout=1000)
        print(f"line {i} on the page after {(time.monotonic() - written) * 1000:.0f} ms")
    assert real_errors(browser) == []


def test_a_project_filter_hides_another_projects_messages(
    watched: tuple[ServerProcess, Path], browser: BrowserPage
) -> None:
    server, root = watched
    shop, blog = TranscriptWriter(root, cwd=SHOP), TranscriptWriter(root, cwd=BLOG)
    shop.user("shop before")
    blog.user("blog before")
    page = browser.page
    open_dashboard(page, server)
    expect(page.get_by_test_id("project-item")).to_have_count(2)
    page.get_by_test_id("filter-project").select_option(str(project_id_for(SHOP)))
    blog.user("blog after the filter")
    shop.user("shop after the filter")
    expect(feed_item(page, "shop after the filter")).to_have_count(1)
    blog_items = page.locator(f'[data-testid="feed-item"][data-project-id="{project_id_for(BLOG)}"]')
    expect(blog_items).to_have_count(0)
    expect(feed_item(page, "blog after the filter")).to_have_count(0)
    assert real_errors(browser) == []


def test_after_its_worker_is_killed_the_page_reconnects_and_shows_what_it_missed(
    watched: tuple[ServerProcess, Path], browser: BrowserPage
) -> None:
    server, _ = watched
    page, shop = open_after_a_line(watched, browser, "before the crash")
    victim = signal_child(server, "obs-worker-1", signal.SIGKILL)
    expect(page.get_by_test_id("connection-status")).not_to_have_attribute("data-state", "open")
    shop.user("written while no worker served")
    wait_replaced(server, "obs-worker-1", victim)
    expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "open", timeout=20_000)
    expect(feed_item(page, "written while no worker served")).to_have_count(1)
    shop.user("after the reconnect")
    expect(feed_item(page, "after the reconnect")).to_have_count(1)
    expect(feed_item(page, "before the crash")).to_have_count(1)  # not twice
    states = page.evaluate("window.__states")
    assert "reconnecting" in states, states
    assert states[-1] == "open"
    assert real_errors(browser) == []
