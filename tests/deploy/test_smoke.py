"""docker/smoke.sh as a (slow) test: build the CPU image, run it, query it with a real photo.

Needs a Docker daemon. Where Docker Hub cannot be reached, build a local base first and pass it:
`docker/test-base.sh && BASE=spot-test/python:3.11-bookworm python -m pytest -m slow tests/deploy`."""

from __future__ import annotations

import os
import subprocess

import pytest

from ..conftest import REPO


@pytest.mark.slow
def test_cpu_image_smoke(data_root):
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("no Docker daemon: apt-get install -y docker.io, then start dockerd")
    env = {**os.environ, "SPOT_DATA": str(data_root)}
    result = subprocess.run(["docker/smoke.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and result.stdout.rstrip().endswith("PASS"), result.stdout + result.stderr
