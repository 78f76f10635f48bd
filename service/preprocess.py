"""Model inputs from RGB arrays: one centre-cropped view for /features, overlapping tiles for /spot."""

from __future__ import annotations

import numpy as np
from PIL import Image


def centre_view(rgb: np.ndarray, size: int, crop_fraction: float) -> np.ndarray:
    """The test-time view of training: centre crop keeping `crop_fraction` of the shorter side, resized."""
    h, w = rgb.shape[:2]
    side = max(1, round(min(h, w) * crop_fraction))
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(rgb[top : top + side, left : left + side])
    return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))


def tile_positions(length: int, size: int) -> list[int]:
    """Starts of tiles of `size` at half overlap along one axis, the last one flush with the edge."""
    if length <= size:
        return [0]
    return sorted({*range(0, length - size + 1, size // 2), length - size})


def tiles(rgb: np.ndarray, size: int) -> tuple[np.ndarray, list[tuple[int, int]], np.ndarray]:
    """(tiles [T, size, size, 3], their (top, left), the image they cover).

    An image smaller than the model input on a side is scaled up so that side equals the input size;
    the heatmap is mapped back to the original resolution afterwards.
    """
    h, w = rgb.shape[:2]
    if min(h, w) < size:
        scale = size / min(h, w)
        rgb = np.asarray(
            Image.fromarray(rgb).resize(
                (max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR
            )
        )
        h, w = rgb.shape[:2]
    positions = [(y, x) for y in tile_positions(h, size) for x in tile_positions(w, size)]
    return np.stack([rgb[y : y + size, x : x + size] for y, x in positions]), positions, rgb
