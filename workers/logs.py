"""Logging for the supervisor and its children: one line per record, tagged with the process role.

``log_format = "text"`` writes readable lines; ``"json"`` one JSON object per line for log shippers,
with the fields a record carries in ``extra`` (the access log's client, user, counts, close code) as
keys of their own.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_role = "supervisor"
TEXT_FORMAT = "%(asctime)s %(levelname)-7s [%(role)s] %(name)s: %(message)s"
# The attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "role",
}


class _RoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _role
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "role": getattr(record, "role", _role),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup_logging(level: str, role: str, log_format: str = "text") -> None:
    global _role
    _role = role
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s [%(role)s] %(name)s: %(message)s")
        )
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
