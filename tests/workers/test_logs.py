"""What a real server writes to its log: JSON lines only when asked for JSON, one access line per
closed connection (never its token), none when the access log is off."""

from __future__ import annotations

import asyncio
import http.client
import re
from datetime import datetime
from typing import Any

import orjson
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import ServerProcess, next_event, wait_until

ROLES = {"supervisor", "ingest", "worker 1", "worker 2"}
LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
JWT = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+")
# The text-format line: TIME LEVEL [role] logger: message
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\[[\w ]+\] [\w.]+: "
)


def json_log(server: ServerProcess) -> list[dict[str, Any]]:
    """Every non-empty line of the log, each of which must be a JSON object."""
    entries = []
    for line in server.log().splitlines():
        if not line.strip():
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise AssertionError(f"a log line that is not JSON: {line!r}") from None
        assert isinstance(entry, dict), line
        entries.append(entry)
    return entries


def access_lines(server: ServerProcess) -> list[dict[str, Any]]:
    return [entry for entry in json_log(server) if entry["logger"] == "observatory.access"]


async def test_a_json_server_writes_nothing_but_json_lines(server_factory: Any) -> None:
    server = await asyncio.to_thread(server_factory, log_format="json")
    # Some traffic, so that the workers log too: an access line, and picows refusing a frame.
    client = server.client()
    await client.connect()
    await client.subscribe({"eventTypes": ["json_logged"]})
    server.producer().publish("json_logged", {"ok": True})
    assert await next_event(client, "json_logged", 5) is not None
    await client.close(1000, "done")
    async with websockets.connect(
        server.url, additional_headers=server.authorization(), compression=None, max_size=None, proxy=None
    ) as oversized:
        await oversized.send("x" * 70_000)
        await asyncio.wait_for(oversized.wait_closed(), 5)
    await asyncio.to_thread(server.stop)  # its last words are in the log too

    entries = json_log(server)
    # The supervisor's address line is a record too, and without the local admin token the text
    # format prints for the person at the terminal: a JSON log goes to a shipper.
    (address,) = [e for e in entries if e["message"].startswith("dashboard at ")]
    assert address["logger"] == "observatory.supervisor"
    assert address["message"].startswith(f"dashboard at http://127.0.0.1:{server.port}/;"), address
    assert "token=" not in address["message"]
    assert not JWT.search(server.log()), "a token in a JSON log"
    for entry in entries:
        assert {"time", "level", "role", "logger", "message"} <= set(entry), entry
        assert datetime.fromisoformat(entry["time"]).tzinfo is not None, entry
        assert entry["level"] in LEVELS, entry
        assert isinstance(entry["message"], str) and entry["message"], entry
    assert {entry["role"] for entry in entries} == ROLES
    loggers = {entry["logger"] for entry in entries}
    assert {"observatory.supervisor", "observatory.ingest", "observatory.worker"} <= loggers
    assert "observatory.access" in loggers
    assert "picows" in {logger.split(".")[0] for logger in loggers}, "a third-party logger is JSON too"
    assert entries[-1]["message"] == "observatory stopped (exit 0)"


async def test_a_text_server_prints_its_addresses_then_writes_text_lines(server_factory: Any) -> None:
    server = await asyncio.to_thread(server_factory)
    client = server.client()
    await client.connect()
    await client.close(1000, "done")
    await asyncio.to_thread(server.stop)
    lines = [line for line in server.log().splitlines() if line.strip()]
    # Printed, not logged, before logging starts, for the person who ran it: the only plain lines,
    # carrying the local admin token.
    assert lines[0].startswith(f"observatory: dashboard at http://127.0.0.1:{server.port}/#token=eyJ")
    assert lines[1].startswith(f"observatory: connect with ws://127.0.0.1:{server.port}/?token=eyJ")
    odd = [line for line in lines[2:] if not TEXT_LINE.match(line)]
    assert odd == [], odd
    assert any(
        "[worker 1] observatory.access: " in line or "[worker 2] observatory.access: " in line
        for line in lines
    )


@pytest.mark.parametrize("token_via", ["query", "header"])
async def test_the_access_line_tells_the_connection_and_never_its_token(
    server_factory: Any, token_via: str
) -> None:
    # DEBUG: whatever the server logs at any level must leave the token out.
    server = await asyncio.to_thread(server_factory, log_format="json", log_level="DEBUG")
    user = f"auditor-{token_via}"
    token = server.token(user=user)
    client = server.client(token=token, token_via=token_via)
    info = await client.connect()
    await client.subscribe({"eventTypes": ["audited"]})  # message 1
    producer = server.producer()
    for i in range(3):
        producer.publish("audited", {"i": i})
    events = [await next_event(client, "audited", 5) for _ in range(3)]
    assert all(event is not None for event in events)
    await client.ping()  # message 2
    await asyncio.sleep(0.1)  # a connection that lasted a measurable while
    await client.close(1000, "bye")

    def logged() -> list[dict[str, Any]]:
        return [line for line in access_lines(server) if line.get("client") == info["clientId"]]

    await asyncio.to_thread(wait_until, lambda: bool(logged()), 5, "the access line")
    (line,) = logged()
    assert line["level"] == "INFO" and line["role"] in ("worker 1", "worker 2")
    assert line["address"] == "127.0.0.1"
    assert line["user"] == user
    assert 0.1 <= line["duration"] < 30
    assert line["messagesIn"] == 2
    # The greeting, two replies and the three events.
    assert line["messagesOut"] == 1 + 2 + 3
    assert (line["closeCode"], line["closeReason"]) == (1000, "bye")
    assert info["clientId"] in line["message"] and user in line["message"]

    await asyncio.to_thread(server.stop)
    text = server.log()
    assert token not in text
    signature = token.rsplit(".", 1)[1]
    assert signature not in text, "a part of the token is in the log"


async def test_refused_handshakes_and_plain_http_are_not_in_the_access_log(server_factory: Any) -> None:
    server = await asyncio.to_thread(server_factory, log_format="json")
    await asyncio.to_thread(wait_until, lambda: connections_active(server) == 0, 5, "the probes to go")
    logged_before = len(access_lines(server))
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(
            server.url, additional_headers={"Authorization": "Bearer nonsense"}, open_timeout=5, proxy=None
        ):
            pass
    for path in ("/metrics", "/health", "/ready", "/", "/no-such-file"):
        await asyncio.to_thread(get, server, path)
    marker = server.client()
    info = await marker.connect()
    await marker.close(1000, "marker")
    await asyncio.to_thread(
        wait_until,
        lambda: any(e["client"] == info["clientId"] for e in access_lines(server)),
        5,
        "the marker",
    )
    new = access_lines(server)[logged_before:]
    assert [entry["client"] for entry in new] == [info["clientId"]]


def get(server: ServerProcess, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def connections_active(server: ServerProcess) -> float | None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        body = connection.getresponse().read().decode()
    finally:
        connection.close()
    for family in text_string_to_metric_families(body):
        if family.name == "observatory_connections_active":
            return float(family.samples[0].value)
    return None


async def test_no_access_line_when_the_access_log_is_off(server_factory: Any) -> None:
    server = await asyncio.to_thread(server_factory, log_format="json", access_log="false")
    client = server.client()
    await client.connect()
    await client.ping()
    await client.close(1000, "bye")
    # Once no connection is open, the workers have seen every close (the harness's probes' too): an
    # access line would be written by then.
    await asyncio.to_thread(wait_until, lambda: connections_active(server) == 0, 5, "every close")
    await asyncio.to_thread(server.stop)
    entries = json_log(server)
    assert entries, "the server logged nothing at all"
    assert [entry for entry in entries if entry["logger"] == "observatory.access"] == []
    assert "observatory.access" not in server.log()
