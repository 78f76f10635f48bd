"""Edits of real photos with a known mask: the alterations /spot must find beyond its own generator's
artifacts (issue 21). Each kind changes pixels inside the mask only and leaves the rest as it was:

- `inpaint_telea`, `inpaint_ns`: OpenCV's classical inpainting (Telea 2004; Navier-Stokes) fills the region;
- `copy_move`: the region is covered with another part of the same photo;
- `splice`: the region is covered with the same place of another photo (the donor);
- `blur`, `sharpen`: a Gaussian blur, an unsharp mask, inside the region;
- `noise`: Gaussian noise inside the region;
- `recompress`: the region comes from a low-quality JPEG of the photo (a local double compression).

`augment` then treats the whole image as CNNDetection does (JPEG 60-100, resizing, slight blur), the same
for raw and edited images, so that the whole-image processing is not what tells them apart.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

cv2.setNumThreads(1)  # loader workers run many of these at once: one thread each

KINDS = ("inpaint_telea", "inpaint_ns", "copy_move", "splice", "blur", "sharpen", "noise", "recompress")


def parse_kinds(spec: str) -> tuple[str, ...]:
    """ "all", or comma-separated kinds; "-k" leaves kind k out (leave-one-kind-out: "all,-splice")."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    chosen = [k for k in KINDS if "all" in names or k in names]
    chosen = [k for k in chosen if f"-{k}" not in names]
    if unknown := {n.lstrip("-") for n in names} - set(KINDS) - {"all"}:
        raise ValueError(f"unknown edit kinds {sorted(unknown)}; kinds: {', '.join(KINDS)}")
    if not chosen:
        raise ValueError(f"no edit kind left in {spec!r}")
    return tuple(chosen)


def held_out_kinds(training: dict) -> tuple[str, ...]:
    """The kinds a detector never trained on, from its model.json's `training` record: the ones its
    `edit_kinds` left out, or every kind when no edits stage ran (the paper's heads only saw their own
    generator's artifacts). What leave-one-kind-out scores it on. A run started from one that trained on
    edits may have seen any kind (the record keeps no earlier `edit_kinds`): none counts as held out."""
    ancestor = training.get("initialised_from")
    while ancestor:
        if ancestor.get("stages", {}).get("edits"):
            return ()
        ancestor = ancestor.get("initialised_from")
    train = training.get("config", {}).get("train", {})
    if "edits" not in train.get("stages", "").split(",") or not train.get("edits_steps", 1):
        return KINDS
    return tuple(k for k in KINDS if k not in parse_kinds(train.get("edit_kinds", "all")))


def random_mask(h: int, w: int, rng: np.random.Generator, area: tuple[float, float] = (0.04, 0.2)) -> np.ndarray:
    """A region covering a random share `area` of the image: an ellipse, a rectangle or a brush stroke,
    somewhere inside it (a boolean HxW array)."""
    target = rng.uniform(*area) * h * w
    canvas = np.zeros((h, w), np.uint8)
    shape = rng.choice(["ellipse", "rectangle", "stroke"])
    if shape == "stroke":
        width = max(2, int(np.sqrt(target) / 4))
        points = [(int(rng.uniform(0, w)), int(rng.uniform(0, h)))]
        while (canvas > 0).sum() < target and len(points) < 40:
            angle, step = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.3) * min(h, w)
            x = int(np.clip(points[-1][0] + step * np.cos(angle), 0, w - 1))
            y = int(np.clip(points[-1][1] + step * np.sin(angle), 0, h - 1))
            cv2.line(canvas, points[-1], (x, y), 255, width)
            points.append((x, y))
    else:
        aspect = rng.uniform(0.5, 2.0)
        half_w = min(w / 2 - 1, np.sqrt(target * aspect) / 2)
        half_h = min(h / 2 - 1, target / (4 * half_w))
        cx, cy = int(rng.uniform(half_w, w - half_w)), int(rng.uniform(half_h, h - half_h))
        if shape == "ellipse":
            cv2.ellipse(canvas, (cx, cy), (int(half_w), int(half_h)), rng.uniform(0, 180), 0, 360, 255, -1)
        else:
            cv2.rectangle(canvas, (int(cx - half_w), int(cy - half_h)), (int(cx + half_w), int(cy + half_h)), 255, -1)
    mask = canvas > 0
    if not mask.any():  # a degenerate draw (tiny image): one central pixel at least
        mask[h // 2, w // 2] = True
    return mask


def shifted(rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo moved so that the masked region shows another part of it (copy-move's source)."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    span_y, span_x = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    dy = int(rng.choice([-1, 1]) * rng.uniform(span_y, max(span_y + 1, h / 2)))
    dx = int(rng.choice([-1, 1]) * rng.uniform(span_x, max(span_x + 1, w / 2)))
    return np.roll(rgb, (dy, dx), axis=(0, 1))


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=int(quality))
    return np.asarray(Image.open(buf).convert("RGB"))


def edit(kind: str, rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None = None):
    """`rgb` (HxWx3 uint8) with the region `mask` altered by `kind`; pixels outside the mask unchanged."""
    h, w = mask.shape
    m8 = mask.astype(np.uint8) * 255
    if kind == "inpaint_telea":
        source = cv2.inpaint(rgb, m8, int(rng.integers(3, 8)), cv2.INPAINT_TELEA)
    elif kind == "inpaint_ns":
        source = cv2.inpaint(rgb, m8, int(rng.integers(3, 8)), cv2.INPAINT_NS)
    elif kind == "copy_move":
        source = shifted(rgb, mask, rng)
    elif kind == "splice":
        if donor is None:
            raise ValueError("splice needs a donor photo")
        source = np.asarray(Image.fromarray(donor).resize((w, h), Image.Resampling.BILINEAR))
    elif kind == "blur":
        source = cv2.GaussianBlur(rgb, (0, 0), rng.uniform(1.5, 4.0))
    elif kind == "sharpen":
        blurred = cv2.GaussianBlur(rgb, (0, 0), rng.uniform(1.0, 3.0))
        source = cv2.addWeighted(rgb, 1 + (a := rng.uniform(0.8, 2.0)), blurred, -a, 0)
    elif kind == "noise":
        noisy = rgb.astype(np.float32) + rng.normal(0, rng.uniform(6, 20), rgb.shape)
        source = noisy.round().clip(0, 255).astype(np.uint8)
    elif kind == "recompress":
        source = jpeg(rgb, rng.integers(10, 40))
    else:
        raise ValueError(f"unknown edit {kind!r}; kinds: {', '.join(KINDS)}")
    return np.where(mask[..., None], source, rgb)


def augment(
    rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator, resize: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Whole-image processing as a photo meets it after an edit (CNNDetection's blur + JPEG augmentation, and
    a resize): each applied with probability 1/2, to raw and edited images alike; the mask follows a resize."""
    if resize and rng.random() < 0.5:
        scale = rng.uniform(0.5, 1.0)
        h, w = mask.shape
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    if rng.random() < 0.5:
        rgb = cv2.GaussianBlur(rgb, (0, 0), rng.uniform(0.1, 1.0))
    if rng.random() < 0.5:
        rgb = jpeg(rgb, rng.integers(60, 101))
    return rgb, mask
