"""The linters CI holds us to: ruff on everything, strict mypy on core/."""

from __future__ import annotations

import subprocess
import sys

from tests.harness import ROOT


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stdout


def test_mypy_strict_on_core() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "core"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stdout
