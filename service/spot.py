"""Tile outputs -> one artifact score, a drop-mask grid over the whole image and a heatmap at its size."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def assemble(
    real_logits: np.ndarray,
    mask_logits: np.ndarray,
    positions: list[tuple[int, int]],
    size: int,
    covered: tuple[int, int],
) -> tuple[float, np.ndarray]:
    """(artifact score = mean tile probability, drop probability per cell of the covered image).

    A cell is size/grid pixels; where tiles overlap their probabilities are averaged.
    """
    grid = mask_logits.shape[-1]
    cell = size / grid
    h, w = covered
    rows, cols = int(np.ceil(h / cell)), int(np.ceil(w / cell))
    total = np.zeros((rows, cols), np.float64)
    count = np.zeros((rows, cols), np.float64)
    drop = sigmoid(-mask_logits[:, 0].astype(np.float64))
    for (y, x), tile_drop in zip(positions, drop):
        r, c = int(round(y / cell)), int(round(x / cell))
        total[r : r + grid, c : c + grid] += tile_drop[: rows - r, : cols - c]
        count[r : r + grid, c : c + grid] += 1
    score = float(sigmoid(-real_logits.astype(np.float64)).mean())
    return score, (total / np.maximum(count, 1)).astype(np.float32)


def heatmap(cells: np.ndarray, width: int, height: int) -> np.ndarray:
    """Cell grid -> float32 [height, width] by bilinear interpolation."""
    img = Image.fromarray(cells.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(img), 0.0, 1.0)


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
                "cell_pixels": size / grid,
                "values": cells.round(5),
            },
        }
        if heatmap_format != "none":
            values = heatmap(cells, w, h)
            if heatmap_format == "values":
                item["heatmap"] = {"shape": [h, w], "values": values.round(4)}
            else:
                png = heatmap_png(values) if heatmap_format == "png" else overlay_png(rgb, values)
                item["heatmap"] = {"shape": [h, w], "png_base64": base64.b64encode(png).decode()}
        answers.append(item)
    return answers
