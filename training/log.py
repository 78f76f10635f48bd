"""Run outputs a person or a program can read: metrics as JSON lines plus TensorBoard, and PNG grids."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image


class MetricLog:
    """Appends one JSON object per line to `metrics.jsonl` and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def write(self, stage: str, step: int, metrics: dict[str, float]) -> None:
        record = {"time": round(time.time(), 3), "stage": stage, "step": step}
        record.update({k: float(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer:
            for k, v in metrics.items():
                if math.isfinite(float(v)):
                    self.writer.add_scalar(f"{stage}/{k}", float(v), step)

    def image(self, stage: str, step: int, grid: torch.Tensor) -> None:
        if self.writer:
            self.writer.add_image(f"{stage}/samples", grid, step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def forget_records_after(run_dir: Path, state: dict | None) -> None:
    """Before a run (re)starts in its folder: the records it logged after its checkpoint (or, without one,
    all) go from metrics.jsonl and summary.jsonl, since it logs those steps again; one record a step."""
    completed = state["completed"] if state else []

    def before(record: dict) -> bool:
        if record["stage"] in completed:
            return True
        return bool(state) and record["stage"] == state["stage"] and record.get("step", 0) <= state["step"]

    for name in ("metrics.jsonl", "summary.jsonl"):
        path = Path(run_dir) / name
        if path.exists():
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            path.write_text("".join(f"{line}\n" for line in lines if before(json.loads(line))))


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def sample_grid(rows: list[torch.Tensor], path: Path, columns: int = 8) -> torch.Tensor:
    """Rows of [-1, 1] images (or [0, 1] masks with one channel), each `columns` wide, saved as PNG.

    Masks are upsampled (nearest) to the image size so each column lines up.
    """
    size = rows[0].shape[-2:]
    tiles = []
    for row in rows:
        row = row[:columns].detach().float().cpu()
        if row.shape[1] == 1:  # a mask in [0, 1]
            row = F.interpolate(row, size=size, mode="nearest").expand(-1, 3, -1, -1)
        else:
            row = (row.clamp(-1, 1) + 1) / 2
        tiles.append(row)
    grid = make_grid(torch.cat(tiles), nrow=columns, padding=1, pad_value=1.0)
    save_image(grid, path)
    return grid
