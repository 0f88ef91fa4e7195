"""Logging for the supervisor and its children: one line per record, tagged with the process role."""

from __future__ import annotations

import logging
import sys

_role = "supervisor"


class _RoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _role
        return True


def setup_logging(level: str, role: str) -> None:
    global _role
    _role = role
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s [%(role)s] %(name)s: %(message)s"))
    handler.addFilter(_RoleFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("picows").setLevel(max(logging.getLevelName(level), logging.WARNING))
    # watchfiles logs every batch of changes at INFO.
    logging.getLogger("watchfiles").setLevel(max(logging.getLevelName(level), logging.WARNING))


def set_role(role: str) -> None:
    global _role
    _role = role
