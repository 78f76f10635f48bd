"""A real exported model (tiny preset, a few steps) and a real uvicorn process on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bench.server import Server

from ..conftest import REPO


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, cache_dir, data_root) -> Path:
    root = tmp_path_factory.mktemp("serve-model")
    train = [sys.executable, "-m", "training", "train", "--preset", "tiny", "--run-dir", str(root / "run"),
             "--no-progress", "--ae_steps=4", "--spot_steps=4", "--log_every=2"]  # fmt: skip
    subprocess.run(train, cwd=REPO, check=True, capture_output=True, timeout=300)
    export = [
        sys.executable,
        "-m",
        "training",
        "export",
        "--checkpoint",
        str(root / "run" / "checkpoint.pt"),
        "--out",
        str(root / "spot-tiny"),
    ]
    subprocess.run(export, cwd=REPO, check=True, capture_output=True, timeout=300)
    return root / "spot-tiny"


@pytest.fixture(scope="module")
def server(model_dir):
    s = Server(model_dir)
    yield s
    s.stop()


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c
