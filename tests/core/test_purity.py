"""``core`` performs no I/O: none of its modules imports a networking, process or OS module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import core

FORBIDDEN = frozenset(
    {
        "socket",
        "asyncio",
        "selectors",
        "subprocess",
        "multiprocessing",
        "threading",
        "signal",
        "os",
        "zmq",
        "picows",
        "uvloop",
        "psutil",
        "http",
        "urllib",
        "ssl",
    }
)
# Pure string functions living in otherwise forbidden packages (query-string decoding for tokens).
ALLOWED = frozenset({"urllib.parse"})
CORE_DIR = Path(core.__file__).resolve().parent
SOURCES = sorted(CORE_DIR.rglob("*.py"))


def imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def is_forbidden(name: str) -> bool:
    return name not in ALLOWED and name.split(".")[0] in FORBIDDEN


def test_sources_found() -> None:
    assert {p.name for p in SOURCES} >= {"config.py", "filters.py", "index.py", "ingest.py", "state.py"}


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_no_io_imports(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    offending = {name for name in imported_modules(tree) if is_forbidden(name)}
    assert not offending, f"{path.name} imports {sorted(offending)}"


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("import os", True),
        ("import os.path as p", True),
        ("from http.client import HTTPConnection", True),
        ("from asyncio import sleep", True),
        ("def f():\n    import socket", True),
        ("__import__('subprocess')", True),
        ("import importlib\nimportlib.import_module('zmq')", True),
        ("import orjson\nfrom core.errors import ConfigError\nfrom . import x", False),
        ("import osmosis", False),
        ("from urllib.parse import parse_qs", False),
        ("from urllib.request import urlopen", True),
    ],
    ids=[
        "import",
        "dotted-alias",
        "from-dotted",
        "from",
        "nested",
        "dunder-import",
        "import-module",
        "clean",
        "prefix",
        "urllib-parse-allowed",
        "urllib-request",
    ],
)
def test_detector(source: str, caught: bool) -> None:
    names = imported_modules(ast.parse(source))
    assert any(is_forbidden(name) for name in names) is caught
