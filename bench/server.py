"""A real `python -m service` process on 127.0.0.1: started, waited for, stopped (tests and benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`env` keys become SPOT_* settings, e.g. Server(model_dir, max_batch_size="1")."""

    def __init__(self, model_dir: Path, ready: str = "/healthz", timeout: float = 60, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = dict(os.environ, OMP_NUM_THREADS="1", **{f"SPOT_{k.upper()}": v for k, v in env.items()})
        cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port),
               "--model-dir", str(model_dir)]  # fmt: skip
        self.log = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would stall the server
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=environ, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}{ready}", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start: {self.output()[-2000:]}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
