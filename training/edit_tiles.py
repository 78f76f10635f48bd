"""Tiles of real photos, each beside an edited copy of itself: the detector's data for edits (stage "edits").

A tile is a square crop of a photo at its own resolution; its copy has a random region altered by one of
`kinds` (training/edits.py); both go through the same kind of whole-image processing (`augment`), and only
then are scaled to the model's input: by `zoom` (what /spot scales photos by: model.json `spot_zoom`) down
to half of it, as /spot meets photos of any size. The edit and the processing happen at the photo's own
pixels, as a user's do; the scaling is the detector's own view. One item is the pair stacked on channels,
[6, size, size] in [-1, 1] (raw first), and the drop-mask target on the discriminator's grid, [1, g, g]
(1 = kept: less than half of the cell altered), so that the loop's (images, labels) batches carry it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from contract.images import to_rgb

from .data import IMAGE_SUFFIXES, load_images
from .edits import augment, edit, random_mask

MAX_SIDE = 2048  # photos larger than this are scaled down once when loaded (memory), still far above a tile


def load_photos(folders: str, root: Path | None = None, cache_dir: Path | None = None) -> list[np.ndarray]:
    """Every image under the comma-separated folders (relative ones under `root`), as RGB uint8 arrays.
    An entry that names a data source (`tiny-imagenet:train`, training/data.py) adds each of its images:
    many small real photos, each one tile, beside few large ones."""
    photos = []
    for folder in (f.strip() for f in folders.split(",") if f.strip()):
        path = Path(folder) if Path(folder).is_absolute() or root is None else root / folder
        if not path.is_dir():  # a data source, or an error that names both readings
            try:
                photos.extend(load_images(folder, root, cache_dir).images)
            except ValueError as e:
                raise FileNotFoundError(f"{path} is not a folder, and {folder!r} is not a data source: {e}") from None
            continue
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"no photos under {path}")
        for file in files:
            with Image.open(file) as im:
                img = to_rgb(im)
            img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BICUBIC)
            photos.append(np.asarray(img))
    return photos


class EditedTiles(Dataset):
    """`length` pairs per epoch. Training draws each pair afresh (seeded from torch, so the loader's worker
    seeds decide); `fixed=True` draws pair i from seed i, the same every time (held-out evaluation)."""

    def __init__(
        self,
        photos: list[np.ndarray],
        size: int,
        grid: int,
        kinds: tuple[str, ...],
        length: int,
        fixed: bool = False,
        zoom: float = 1.0,
    ):
        self.photos, self.size, self.grid, self.kinds, self.length = photos, size, grid, kinds, length
        self.fixed, self.zoom = fixed, zoom
        areas = np.array([p.shape[0] * p.shape[1] for p in photos], np.float64)
        self.weights = areas / areas.sum()  # a photo is drawn as often as its area: tiles are uniform over pixels

    def __len__(self) -> int:
        return self.length

    def crop(self, rng: np.random.Generator, side: int = 0) -> np.ndarray:
        """A square of a photo at its own pixels: `side` wide, or drawn from size/zoom to 2 * size/zoom
        (scaled to the input by zoom/2 to zoom), never wider than the photo."""
        photo = self.photos[rng.choice(len(self.photos), p=self.weights)]
        h, w = photo.shape[:2]
        side = min(h, w, side or int(self.size / self.zoom / rng.uniform(0.5, 1.0)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        return photo[top : top + side, left : left + side]

    def to_input(self, rgb: np.ndarray, resample=Image.Resampling.BILINEAR) -> np.ndarray:
        """Scaled to the model's input as /spot scales a photo (bilinear; nearest for a mask)."""
        if rgb.shape[0] == self.size:
            return rgb
        return np.asarray(Image.fromarray(rgb).resize((self.size, self.size), resample))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        seed = i if self.fixed else int(torch.randint(2**62, ()).item())
        rng = np.random.default_rng(seed)
        raw = self.crop(rng)
        side = raw.shape[0]
        mask = random_mask(side, side, rng, area=(0.05, 0.5))
        edited = edit(str(rng.choice(self.kinds)), raw, mask, rng, donor=self.crop(rng, side))
        raw, _ = augment(raw, mask, rng, resize=False)
        edited, mask = augment(edited, mask, rng, resize=False)
        raw, edited = self.to_input(raw), self.to_input(edited)
        mask = self.to_input(mask, Image.Resampling.NEAREST)
        pair = torch.from_numpy(np.concatenate([raw, edited], axis=-1)).permute(2, 0, 1).float() / 127.5 - 1
        cell = self.size // self.grid
        altered = mask.reshape(self.grid, cell, self.grid, cell).mean(axis=(1, 3))
        return pair, torch.from_numpy((altered < 0.5).astype(np.float32))[None]
