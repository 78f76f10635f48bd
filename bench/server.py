"""A real `python -m service` process on 127.0.0.1: started, waited for, stopped (tests and benchmarks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import httpx

from service.config import Settings, resolve_workers

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server command listening on 127.0.0.1:`port`, started and waited for until `ready` answers 200."""

    def __init__(
        self, cmd: list[str], port: int, env: dict, ready: str, timeout: float, stop_timeout: float = 10, cwd=REPO
    ):
        self.port, self.stop_timeout = port, stop_timeout
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (kept open for the server's life; a pipe could fill and stall it)
        # its own process group, so that stop() also ends what it spawned (LitServe's workers outlived it)
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}{ready}", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{cmd[0]} did not start: {self.output()[-2000:]}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM to the server (it drains), then SIGKILL to whatever of its group is left: a measurement
        that follows must have the cores to itself."""
        self.proc.terminate()
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(self.stop_timeout)
        with suppress(ProcessLookupError):  # the group is empty: nothing outlived it
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class Server(ServerProcess):
    """`python -m service` (of the checkout at `cwd`); `env` keys become SPOT_* settings, e.g.
    Server(model_dir, max_batch_size="1"). One process unless `workers` is given (the service's default
    is one per core on a CPU): tests and single-process rows measure one batcher."""

    def __init__(self, model_dir: Path, ready: str = "/healthz", timeout: float = 60, cwd: Path = REPO, **env: str):
        port = free_port()
        env = {"workers": "1", **env}
        environ = dict(os.environ, OMP_NUM_THREADS="1", **{f"SPOT_{k.upper()}": v for k, v in env.items()})
        cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port),
               "--model-dir", str(model_dir)]  # fmt: skip
        super().__init__(cmd, port, environ, ready, timeout, cwd=cwd)
        # as many as the service starts: SPOT_WORKERS=0 is one per core on a CPU, one on a GPU
        self.wait_for_workers(
            resolve_workers(Settings(**{k: env[k] for k in ("workers", "providers") if k in env})), timeout
        )

    def wait_for_workers(self, workers: int, timeout: float) -> None:
        """`ready` answers once one worker is up; a measurement (or a test of how connections are shared)
        that began then would find the others still loading the model, and their share on the first."""
        deadline = time.time() + timeout
        while self.output().count("Application startup complete.") < workers:
            if time.time() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{workers} workers did not start: {self.output()[-2000:]}")
            time.sleep(0.05)
