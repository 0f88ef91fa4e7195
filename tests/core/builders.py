"""Small builders shared by the core tests."""

from __future__ import annotations

from core.routing import RoutingHeader


def header(
    type_: str = "message_added",
    project: int | None = None,
    session: str | None = None,
    message_types: tuple[str, ...] = (),
    tools: tuple[str, ...] = (),
) -> RoutingHeader:
    """A routing header with sensible defaults, as the ingest would build it."""
    return RoutingHeader(1, "epoch", type_, project, session, message_types, tools)
