"""The routing header's bus encoding: a JSON array in a fixed order, decoded back to tuples."""

from __future__ import annotations

import orjson
import pytest

from core.routing import RoutingHeader


@pytest.mark.parametrize(
    "header",
    [
        RoutingHeader(1, "e1", "conversation_started", None, None, (), ()),
        RoutingHeader(2, "e1", "message_added", 7, "s1", ("user",), ("Bash", "Read")),
        RoutingHeader(2**62, "f" * 16, "x" * 64, -1, "é" * 256, ("assistant",), ("ツール",)),
    ],
    ids=["bare", "full", "edges"],
)
def test_round_trip(header: RoutingHeader) -> None:
    decoded = RoutingHeader.decode(header.encode())
    assert decoded == header
    assert isinstance(decoded.message_types, tuple)
    assert isinstance(decoded.tool_names, tuple)


def test_wire_order() -> None:
    raw = RoutingHeader(3, "e", "t", 4, "s", ("user",), ("A",), 1795717140844.125).encode()
    assert orjson.loads(raw) == [3, "e", "t", 4, "s", ["user"], ["A"], 1795717140844.125]


def test_a_header_without_its_publishing_time_still_decodes() -> None:
    """From a peer that predates the field (a rolling upgrade): the latency is just not known."""
    header = RoutingHeader.decode(b'[3,"e","t",4,"s",["user"],["A"]]')
    assert header == RoutingHeader(3, "e", "t", 4, "s", ("user",), ("A",), 0.0)
