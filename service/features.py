"""Feature maps -> what the client asked for: pooling, L2 normalisation, JSON or base64 encoding."""

from __future__ import annotations

import base64

import numpy as np

POOLS = ("none", "avg", "max", "probe")
NORMALIZE = ("none", "l2")
ENCODINGS = ("json", "base64")
DTYPES = ("float32", "float16")


def adaptive_avg_pool(fmap: np.ndarray, grid: int) -> np.ndarray:
    """C x H x W -> C x grid x grid, the bins of torch's adaptive_avg_pool2d."""
    c, h, w = fmap.shape
    out = np.empty((c, grid, grid), np.float32)
    for i in range(grid):
        y0, y1 = (i * h) // grid, -(-((i + 1) * h) // grid)
        for j in range(grid):
            x0, x1 = (j * w) // grid, -(-((j + 1) * w) // grid)
            out[:, i, j] = fmap[:, y0:y1, x0:x1].mean(axis=(1, 2))
    return out


def pool(fmap: np.ndarray, how: str, probe_grid: int) -> np.ndarray:
    if how == "none":
        return fmap
    if how == "avg":
        return fmap.mean(axis=(1, 2))
    if how == "max":
        return fmap.max(axis=(1, 2))
    return adaptive_avg_pool(fmap, probe_grid).reshape(-1)  # "probe": the linear-probe pooling


def normalize(values: np.ndarray, how: str) -> np.ndarray:
    if how == "l2":
        return values / max(float(np.linalg.norm(values)), 1e-12)
    return values


def encode(values: np.ndarray, encoding: str, dtype: str) -> np.ndarray | str:
    """base64 of little-endian bytes, or the array itself for the JSON encoder to write as numbers."""
    values = np.ascontiguousarray(values, np.dtype(dtype).newbyteorder("<"))
    if encoding == "base64":
        return base64.b64encode(values.tobytes()).decode("ascii")
    return values
