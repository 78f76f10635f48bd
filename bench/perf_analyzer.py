"""Load over the Open Inference Protocol's gRPC (and HTTP) from perf_analyzer, Triton's own load generator
(C++; like wrk it takes little of a core). The last PyPI wheel that carries the binary is tritonclient
2.41.1; it links libb64 (Debian: `apt-get install libb64-0d`) and libcudart, which it loads on a CPU too
(the CUDA runtime wheel supplies it; no GPU or driver is needed). Made on first use in `.venv-perf`."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .server import REPO

REQUIREMENTS = ["tritonclient==2.41.1", "nvidia-cuda-runtime-cu12==12.9.79"]
VENV = REPO / ".venv-perf"


def ensure(venv: Path = VENV) -> Path:
    """The perf_analyzer binary, installing it first if needed (about 30 s from PyPI)."""
    exe = venv / "bin" / "perf_analyzer"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", *REQUIREMENTS]
        subprocess.run(pip, check=True, timeout=900)
    return exe


def library_path(venv: Path) -> str:
    found = sorted(venv.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    return ":".join([str(p) for p in found] + [os.environ.get("LD_LIBRARY_PATH", "")])


def input_file(images: np.ndarray, name: str, folder: Path) -> Path:
    """perf_analyzer's --input-data JSON: one entry per preprocessed image (real data, not its random
    bytes, which hold NaNs that a careful server refuses)."""
    data = [
        {name: {"b64": base64.b64encode(x.astype("<f4").tobytes()).decode(), "shape": list(x.shape)}} for x in images
    ]
    path = folder / "perf-input.json"
    path.write_text(json.dumps({"data": data}))
    return path


def run(url: str, protocol: str, model: str, inputs: Path, batch: int, clients: int, window_ms: int = 3000,
        venv: Path = VENV) -> dict:  # fmt: skip
    """One concurrency level: images/s and client-side latency percentiles in ms, from perf_analyzer's CSV."""
    if not url.startswith("127.0.0.1:"):
        raise ValueError("benchmarks only talk to 127.0.0.1")
    exe = ensure(venv)
    env = dict(os.environ, LD_LIBRARY_PATH=library_path(venv))
    # perf_analyzer keeps measuring until three windows agree within `stability` %; a short window on a busy
    # 2-core machine may never get there (seen with 500 ms windows): then once more, any three windows taken
    row = None
    for stability in (20, 100):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.csv"
            cmd = [str(exe), "-m", model, "-u", url, "-i", protocol, "-b", str(batch),
                   "--concurrency-range", str(clients), "--input-data", str(inputs), "-p", str(window_ms),
                   "--max-trials", "5", "-s", str(stability), "-f", str(out)]  # fmt: skip
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            if done.returncode == 0 and out.exists():
                row = next(csv.DictReader(io.StringIO(out.read_text())))
                break
            if "Failed to obtain stable measurement" not in done.stdout + done.stderr:
                break
    if row is None:
        raise RuntimeError(f"perf_analyzer failed ({done.returncode}): {(done.stdout + done.stderr)[-1500:]}")
    images = float(row["Inferences/Second"])
    return {
        "images_per_s": images,
        "req_per_s": images / batch,
        "p50_ms": float(row["p50 latency"]) / 1e3,
        "p95_ms": float(row["p95 latency"]) / 1e3,
        "p99_ms": float(row["p99 latency"]) / 1e3,
        "clients": clients,
        "stability_percent": stability,
    }
