"""Model inputs from RGB arrays: one centre-cropped view for /features, overlapping tiles for /spot."""

from __future__ import annotations

import math

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


def tiles_along(length: int, size: int) -> int:
    """How many tiles tile_positions places along a side, counted without listing them (a hostile
    1 x 5,000,000 image costs nothing to count)."""
    return 1 if length <= size else math.ceil((length - size) / (size // 2)) + 1


def tile_count(h: int, w: int, size: int) -> int:
    return tiles_along(h, size) * tiles_along(w, size)


def analysis_size(h: int, w: int, size: int, max_tiles: int = 0, zoom: float = 1.0) -> tuple[int, int]:
    """(height, width) the image is tiled at, aspect kept to the pixel: its own size times `zoom` (the
    model's `spot_zoom`: a detector trained on tiles scaled up so that its strided first layer misses no
    pixel), its shorter side scaled up to the model input if below it; and where that takes more than
    `max_tiles` tiles (0 = no limit), the largest size that takes at most that many, its shorter side never
    below the input (so a very long, thin image may still take more: the caller refuses it)."""
    short = min(h, w)

    def with_shorter_side(side: int) -> tuple[int, int]:
        return round(h * side / short), round(w * side / short)

    largest = max(round(short * zoom), size)
    if not max_tiles or tile_count(*with_shorter_side(largest), size) <= max_tiles:
        return with_shorter_side(largest)
    low, high = size, largest  # tiles grow with the side: bisect for the largest side within the limit
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if tile_count(*with_shorter_side(middle), size) <= max_tiles else (low, middle - 1)
    return with_shorter_side(low)


def tiles(
    rgb: np.ndarray, size: int, max_tiles: int = 0, zoom: float = 1.0
) -> tuple[np.ndarray, list[tuple[int, int]], np.ndarray]:
    """(tiles [T, size, size, 3], their (top, left), the image they cover: the image at analysis_size).
    The heatmap is mapped back to the original resolution afterwards."""
    h, w = rgb.shape[:2]
    if (h, w) != (dims := analysis_size(h, w, size, max_tiles, zoom)):
        rgb = np.asarray(Image.fromarray(rgb).resize(dims[::-1], Image.Resampling.BILINEAR))
        h, w = dims
    positions = [(y, x) for y in tile_positions(h, size) for x in tile_positions(w, size)]
    return np.stack([rgb[y : y + size, x : x + size] for y, x in positions]), positions, rgb
