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


def tile_count(h: int, w: int, size: int) -> int:
    return len(tile_positions(h, size)) * len(tile_positions(w, size))


def analysis_size(h: int, w: int, size: int, max_tiles: int = 0) -> tuple[int, int]:
    """(height, width) the image is tiled at, aspect kept. Scaled up so that its shorter side is at least the
    model input; scaled down when at its own size it would take more than `max_tiles` tiles (0 = no limit):
    about the largest size within the limit, but never a shorter side below the input (so a very long, thin image
    may still exceed it)."""
    smallest = size / min(h, w)  # the scale at which the shorter side is the input's

    def at(scale: float) -> tuple[int, int]:
        return max(size, round(h * scale)), max(size, round(w * scale))

    scale = max(1.0, smallest)
    if not max_tiles or tile_count(*at(scale), size) <= max_tiles:
        return at(scale)
    scale *= (max_tiles / tile_count(*at(scale), size)) ** 0.5  # about right: tiles grow with the area
    while scale > smallest and tile_count(*at(scale), size) > max_tiles:
        scale *= 0.98
    return at(max(scale, smallest))


def tiles(rgb: np.ndarray, size: int, max_tiles: int = 0) -> tuple[np.ndarray, list[tuple[int, int]], np.ndarray]:
    """(tiles [T, size, size, 3], their (top, left), the image they cover: the image at analysis_size).
    The heatmap is mapped back to the original resolution afterwards."""
    h, w = rgb.shape[:2]
    if (h, w) != (dims := analysis_size(h, w, size, max_tiles)):
        rgb = np.asarray(Image.fromarray(rgb).resize(dims[::-1], Image.Resampling.BILINEAR))
        h, w = dims
    positions = [(y, x) for y in tile_positions(h, size) for x in tile_positions(w, size)]
    return np.stack([rgb[y : y + size, x : x + size] for y, x in positions]), positions, rgb
