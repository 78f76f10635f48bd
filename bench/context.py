"""What every benchmark records beside its numbers, and how it times a call."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import onnxruntime as ort

from .server import REPO


def hardware() -> dict:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "onnxruntime": ort.__version__,
            "providers": ort.get_available_providers()}  # fmt: skip


def commit() -> str:
    """HEAD, "-dirty" when tracked files differ from it (the benchmarks' own outputs excepted)."""
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    outputs = [":!bench/results", ":!bench/RESULTS.md"]
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *outputs], cwd=REPO,
                           capture_output=True)  # fmt: skip
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def timed(fn, items_per_call: int, seconds: float) -> float:
    """Items per second of `fn` over at least `seconds` (and 3 calls), after 2 warm-up calls."""
    fn(), fn()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls * items_per_call / (time.perf_counter() - start)
