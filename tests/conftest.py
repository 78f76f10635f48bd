"""Shared fixtures: the tiny preset, real images from ../shared/data, and an isolated decode cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SPOT_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared data folder {DATA} is missing (set SPOT_DATA)")
    return DATA


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    os.environ["SPOT_CACHE"] = str(path)  # subprocesses (CLI, torchrun) share it
    return path


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`python -m training ...` in a subprocess, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def perturbed_copy(ckpt: Path, network: str, scale: float, out_dir: Path) -> Path:
    """A copy of a checkpoint whose `network` has noise (std `scale`, seed 0) added to its conv kernels
    only, so BN statistics stay valid: another run's weights of the same architecture, made in a test."""
    import torch

    from training import checkpoint

    state = checkpoint.load(ckpt)
    torch.manual_seed(0)
    for value in state["networks"][network].values():
        if value.ndim == 4:
            value.add_(torch.randn_like(value) * scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.save(out_dir / "checkpoint.pt", state)
    return out_dir / "checkpoint.pt"
