"""Hostile input generated from our own OpenAPI schema (schemathesis): no request may get a 5xx, and
the server stays ready. The default run uses a fixed seed; the slow one explores more at random."""

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def fuzz(url: str, examples: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--checks", "not_a_server_error", "--workers", "1",
           "--max-examples", str(examples), "--phases", "examples,coverage,fuzzing", "--no-color",
           "--request-timeout", "30", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_schema_fuzzing_finds_no_server_error(server):
    result = fuzz(server.url, 30, "--seed", "1")
    assert result.returncode == 0, result.stdout[-4000:]
    assert "generated" in result.stdout
    assert httpx.get(f"{server.url}/readyz").json()["ready"] is True


@pytest.mark.slow
def test_longer_random_schema_fuzzing_finds_no_server_error(server):
    result = fuzz(server.url, 500)
    assert result.returncode == 0, result.stdout[-4000:]
    assert httpx.get(f"{server.url}/readyz").json()["ready"] is True
