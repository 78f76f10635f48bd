"""Tile outputs -> one artifact score, a drop-mask grid over the whole image and a heatmap at its size."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def cell_shares(starts: list[int], size: int, cell: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along one side of the covered image: (covered cell, tile cell, share) for every pair that overlaps.
    Tile cells are numbered tile by tile. One lies over one covered cell, or two where its tile starts off
    the cell boundaries (the last tile, flush with the edge). Its share of a covered cell: its pixels there,
    each divided by the number of tiles over that pixel (overlaps are averaged), over the cell's pixels."""
    over = np.zeros(length + 1)
    for start in starts:  # tiles over each pixel: a running sum of +1 where a tile starts, -1 past its end
        over[start] += 1
        over[start + size] -= 1
    weight = np.concatenate([[0.0], np.cumsum(1 / np.cumsum(over[:-1]))])  # prefix sums of 1 / tiles over a pixel
    first = (np.asarray(starts)[:, None] + np.arange(0, size, cell)).ravel()  # each tile cell's first pixel
    own, next_ = first // cell, (first + cell - 1) // cell
    straddles = next_ != own
    covered_cell = np.concatenate([own, next_[straddles]])
    tile_cell = np.concatenate([np.arange(len(first)), np.flatnonzero(straddles)])
    cell_end = np.minimum((covered_cell + 1) * cell, length)
    low = np.maximum(first[tile_cell], covered_cell * cell)
    high = np.minimum(first[tile_cell] + cell, cell_end)
    return covered_cell, tile_cell, (weight[high] - weight[low]) / (cell_end - covered_cell * cell)


def to_cells(values: np.ndarray, shares: tuple[np.ndarray, np.ndarray, np.ndarray], cells: int) -> np.ndarray:
    """[rows, tile cells] -> [rows, covered cells]: each covered cell the sum of its tile cells' shares."""
    covered_cell, tile_cell, share = shares
    out = np.zeros((cells, values.shape[0]))
    np.add.at(out, covered_cell, (values[:, tile_cell] * share).T)
    return out.T


def assemble(
    real_logits: np.ndarray,
    mask_logits: np.ndarray,
    positions: list[tuple[int, int]],
    size: int,
    covered: tuple[int, int],
) -> tuple[float, np.ndarray]:
    """(artifact score = mean tile probability, drop probability per cell of the covered image).

    A cell is size/grid pixels of the covered image. The tiles' cells are laid on the image where their
    pixels are, since the last tile along a side sits flush with the edge, off the cell boundaries; where
    tiles overlap their probabilities are averaged pixel by pixel, and a cell is the mean over its pixels
    (the last row and column of cells may be partial). Tiles form a grid (every row start with every
    column start), so this goes one side at a time, at cell resolution: the cost grows with the tiles.
    """
    grid = mask_logits.shape[-1]
    cell = size // grid
    h, w = covered
    rows, cols = sorted({y for y, _ in positions}), sorted({x for _, x in positions})
    row_of, col_of = {y: n * grid for n, y in enumerate(rows)}, {x: n * grid for n, x in enumerate(cols)}
    drop = np.zeros((len(rows) * grid, len(cols) * grid))  # every tile's cells side by side
    for (y, x), tile_drop in zip(positions, sigmoid(-mask_logits[:, 0].astype(np.float64)), strict=True):
        r, c = row_of[y], col_of[x]
        drop[r : r + grid, c : c + grid] = tile_drop
    across = to_cells(drop, cell_shares(cols, size, cell, w), -(-w // cell))  # [tile cell rows, covered cols]
    cells = to_cells(across.T, cell_shares(rows, size, cell, h), -(-h // cell)).T
    score = float(sigmoid(-real_logits.astype(np.float64)).mean())
    return score, cells.astype(np.float32)


def peak(cells: np.ndarray) -> float:
    """The drop-mask's 99th percentile: how likely the most suspect 1% of the image was altered. The artifact
    score averages over every tile and a small edit covers a few; this one it cannot dilute."""
    return float(np.percentile(cells, 99))


def between_cells(length: int, covered: int, cell: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along one side of the output: for each pixel, the cell centre at or before it, the one after, and how
    far it is from the first to the second. Centres are those of the cells' pixels on the covered image (a
    partial last cell's too), and the output is that image stretched to `length` pixels."""
    starts = np.arange(0, covered, cell)
    centres = (starts + np.minimum(starts + cell, covered)) / 2
    at = (np.arange(length) + 0.5) * covered / length  # the pixels' centres on the covered image
    before = np.clip(np.searchsorted(centres, at, side="right") - 1, 0, len(centres) - 1)
    after = np.minimum(before + 1, len(centres) - 1)
    gap = centres[after] - centres[before]
    return before, after, np.clip((at - centres[before]) / np.where(gap > 0, gap, 1), 0, 1).astype(np.float32)


def heatmap(cells: np.ndarray, cell: int, covered: tuple[int, int], width: int, height: int) -> np.ndarray:
    """Cell grid -> float32 [height, width]: linear between cell centres along each side (constant beyond
    the outermost), the covered image mapped onto the original's size."""
    top, bottom, down = between_cells(height, covered[0], cell)
    left, right, across = between_cells(width, covered[1], cell)
    rows = cells[:, left] * (1 - across) + cells[:, right] * across  # [cell rows, width]
    values = rows[top] * (1 - down)[:, None] + rows[bottom] * down[:, None]
    return np.clip(values, 0.0, 1.0).astype(np.float32)


def heatmap_png(values: np.ndarray) -> bytes:
    """Greyscale PNG: white = likely altered."""
    return _png(Image.fromarray((values * 255).round().astype(np.uint8), mode="L"))


def overlay_png(rgb: np.ndarray, values: np.ndarray, alpha: float = 0.6) -> bytes:
    """The image with red laid over it in proportion to the artifact probability."""
    red = np.zeros_like(rgb, dtype=np.float32)
    red[..., 0] = 255
    a = (values[..., None] * alpha).astype(np.float32)
    out = rgb.astype(np.float32) * (1 - a) + red * a
    return _png(Image.fromarray(out.round().astype(np.uint8)))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def results(per_image: list, outputs: dict[str, np.ndarray], heatmap_format: str, size: int, grid: int) -> list[dict]:
    """One /spot answer per image from the outputs of all its tiles (`per_image`: name, rgb, tiles,
    their positions, the covered image). Arrays stay numpy: the response encoder writes them directly."""
    answers, offset = [], 0
    for name, rgb, t, positions, covered in per_image:
        part = slice(offset, offset + len(t))
        offset += len(t)
        score, cells = assemble(
            outputs["real_logit"][part], outputs["mask_logits"][part], positions, size, covered.shape[:2]
        )
        h, w = rgb.shape[:2]
        item = {
            "name": name,
            "artifact_score": score,
            "peak_score": round(peak(cells), 5),
            "width": w,
            "height": h,
            "tiling": {
                "tiles": len(t),
                "tile_size": size,
                "stride": size // 2,
                "scaled_to": list(covered.shape[1::-1]),  # [width, height] tiled: the mask's pixels
                # < 1: a large image analysed downscaled (SPOT_MAX_TILES); > 1: a small one scaled up
                "scale": round(min(covered.shape[1] / w, covered.shape[0] / h), 6),
            },
            "mask": {
                "rows": cells.shape[0],
                "cols": cells.shape[1],
                "cell_pixels": size // grid,
                "values": cells.round(5),
            },
        }
        if heatmap_format != "none":
            values = heatmap(cells, size // grid, covered.shape[:2], w, h)
            if heatmap_format == "values":
                item["heatmap"] = {"shape": [h, w], "values": values.round(4)}
            else:
                png = heatmap_png(values) if heatmap_format == "png" else overlay_png(rgb, values)
                item["heatmap"] = {"shape": [h, w], "png_base64": base64.b64encode(png).decode()}
        answers.append(item)
    return answers
