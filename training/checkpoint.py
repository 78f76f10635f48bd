"""Self-describing checkpoints: networks, optimizer, step, config and RNG state, written atomically
and loaded with `weights_only=True` (no pickled code is ever executed)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or corrupt."""


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, state: dict) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: never a truncated file."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.tmp*"):  # left by a run killed mid-write
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, disallowed globals
        raise CheckpointError(f"checkpoint {path} is corrupt or not a spot-artifacts checkpoint: {exc}") from exc
    missing = {"config", "stage", "step", "networks"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {sorted(missing)}: not a spot-artifacts checkpoint")
    return state


def load_networks(path: Path, map_location="cpu") -> tuple[dict, object, dict]:
    """Rebuild every network a checkpoint holds from its own config: (networks, Config, raw state)."""
    from .config import Config
    from .networks import build_networks

    state = load(path, map_location)
    cfg = Config.from_dict(state["config"])
    nets = build_networks(cfg.model)
    for name, sd in state["networks"].items():
        if name in nets:
            nets[name].load_state_dict(sd)
    return nets, cfg, state
