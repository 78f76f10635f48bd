"""Helpers for the deploy tests: the pinned lint tools installed beside this Python (pyproject's dev extra)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO

BIN = Path(sys.executable).parent


def run_tool(name: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Runs a dev-extra tool; a missing one fails (these lints are never skipped)."""
    exe = BIN / name
    if not exe.exists():
        pytest.fail(f"{name} is not installed beside {sys.executable}: pip install -e '.[dev]'")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
