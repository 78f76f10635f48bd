"""A real exported model (tiny preset, a few steps) and a real uvicorn process on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ..conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class Server:
    def __init__(self, model_dir: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = dict(os.environ, OMP_NUM_THREADS="1", **{f"SPOT_{k.upper()}": v for k, v in env.items()})
        cmd = [
            sys.executable,
            "-m",
            "service",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--model-dir",
            str(model_dir),
        ]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start: {self.proc.stdout.read().decode()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server(model_dir):
    s = Server(model_dir)
    yield s
    s.stop()


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c
