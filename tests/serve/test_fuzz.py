"""Hostile input generated from our own OpenAPI schema (schemathesis): no request may get a 5xx, and
the server stays ready. The default run uses a fixed seed; the slow one explores more at random."""

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def fuzz(url: str, workdir: Path, examples: int, *extra: str) -> subprocess.CompletedProcess:
    """schemathesis in a scratch folder (it keeps a cache of what it found there), with the served model's
    name and version for the /v2 paths, so that infer bodies reach the parser instead of a 404."""
    model = httpx.get(f"{url}/models").json()
    (workdir / "schemathesis.toml").write_text(
        f'[parameters]\n"path.model_name" = "{model["name"]}"\n"path.model_version" = "{model["version"]}"\n'
    )
    cmd = [str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--checks", "not_a_server_error", "--workers", "1",
           "--max-examples", str(examples), "--phases", "examples,coverage,fuzzing", "--no-color",
           "--request-timeout", "30", *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=900)


def test_schema_fuzzing_finds_no_server_error(server, tmp_path):
    result = fuzz(server.url, tmp_path, 30, "--seed", "1")
    assert result.returncode == 0, result.stdout[-4000:]
    assert "generated" in result.stdout
    assert httpx.get(f"{server.url}/readyz").json()["ready"] is True


@pytest.mark.slow
def test_longer_random_schema_fuzzing_finds_no_server_error(server, tmp_path):
    result = fuzz(server.url, tmp_path, 500)
    assert result.returncode == 0, result.stdout[-4000:]
    assert httpx.get(f"{server.url}/readyz").json()["ready"] is True
