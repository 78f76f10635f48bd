"""Datasets: the shipped archives (read as streams, decoded once into a uint8 cache) or any image
folder; the paper's augmentation (Preprocessor.py) with torchvision transforms.

Source specs: `cifar10:train`, `cifar10:test`, `tiny-imagenet:train`, `tiny-imagenet:val`,
`cifar10-sample` (the 4,000 lossless CIFAR images), `folder:/path/to/images` (labels from the first
sub-folder level, ImageFolder style).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, DistributedSampler
from torchvision.transforms import InterpolationMode, v2
from tqdm import tqdm

from contract.images import to_rgb  # the service's conversion: training sees images as it will

from .config import DataConfig

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def default_data_root() -> Path:
    return Path(os.environ.get("SPOT_DATA") or SHARED_DATA)


def default_cache_dir() -> Path:
    return Path(os.environ.get("SPOT_CACHE") or Path.home() / ".cache" / "spot-artifacts")


def decode(data: bytes, name: str, size: int | None = None) -> np.ndarray | None:
    """Bytes -> HxWx3 uint8 (square `size` if given: shorter side resized, centre crop); None if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            img = to_rgb(im)
            if size:
                img = ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC)
            return np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - any decoder error means "skip this file"
        log.warning("skipping unreadable image %s: %s", name, exc)
        return None


@dataclass
class ImageArray:
    images: np.ndarray  # N x H x W x 3 uint8
    labels: np.ndarray  # N int64 (-1 where unknown)
    classes: list[str]


def _decode_all(items: list[tuple[str, bytes, int]], size: int | None, desc: str) -> tuple[list[np.ndarray], list[int]]:
    images, labels = [], []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # PIL releases the GIL
        decoded = pool.map(lambda it: decode(it[1], it[0], size), items, chunksize=256)
        for (_, _, label), img in zip(items, tqdm(decoded, total=len(items), desc=desc, leave=False), strict=False):
            if img is None:
                continue
            if images and img.shape != images[0].shape:
                img = np.asarray(ImageOps.fit(Image.fromarray(img), images[0].shape[1::-1], Image.Resampling.BICUBIC))
            images.append(img)
            labels.append(label)
    return images, labels


def _read_tar(path: Path, keep) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            if member.isfile() and keep(member.name):
                yield member.name, tar.extractfile(member).read()


def _load_cifar10(root: Path, split: str) -> ImageArray:
    files = [(n, b) for n, b in _read_tar(root / "cifar10" / f"{split}.tar.gz", lambda n: n.endswith(".jpg"))]
    classes = sorted({n.split("/")[1] for n, _ in files})
    items = [(n, b, classes.index(n.split("/")[1])) for n, b in sorted(files)]
    images, labels = _decode_all(items, None, f"decode cifar10:{split}")
    return ImageArray(np.stack(images), np.array(labels, dtype=np.int64), classes)


def _load_tiny_imagenet(root: Path, split: str) -> ImageArray:
    files = dict(_read_tar(root / "tiny-imagenet-200" / f"{split}.tar.gz", lambda n: n.endswith((".JPEG", ".txt"))))
    wnids = files.get("wnids.txt") or files.get(f"{split}/wnids.txt")  # at the archive root as shipped
    if wnids is None:
        raise FileNotFoundError(f"tiny-imagenet-200/{split}.tar.gz has no wnids.txt")
    classes = sorted(wnids.decode().split())
    if split == "val":
        ann = files["val/val_annotations.txt"].decode().splitlines()
        wnid_of = {line.split("\t")[0]: line.split("\t")[1] for line in ann if line.strip()}
        label = lambda n: classes.index(wnid_of[n.rsplit("/", 1)[1]])  # noqa: E731
    else:
        label = lambda n: classes.index(n.split("/")[1])  # noqa: E731
    items = [(n, b, label(n)) for n, b in sorted(files.items()) if n.endswith(".JPEG")]
    images, labels = _decode_all(items, None, f"decode tiny-imagenet:{split}")
    return ImageArray(np.stack(images), np.array(labels, dtype=np.int64), classes)


def _load_cifar10_sample(root: Path) -> ImageArray:
    folder = root / "cifar10-lossless-sample"
    sheets = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("cifar10_batch_*.png"))]
    if not sheets:
        raise ValueError(f"cifar10-sample: no cifar10_batch_*.png in {folder}")
    images = np.concatenate([s.reshape(s.shape[0], 32, 32, 3) for s in sheets])  # one image per row
    labels = np.load(folder / "labels.npy").astype(np.int64)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return ImageArray(np.ascontiguousarray(images), labels[: len(images)], classes)


def _load_folder(path: Path, size: int) -> ImageArray:
    if not path.is_dir():
        raise FileNotFoundError(f"image folder {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {path}")
    subdirs = sorted({p.relative_to(path).parts[0] for p in files if len(p.relative_to(path).parts) > 1})
    label = lambda p: subdirs.index(p.relative_to(path).parts[0]) if len(p.relative_to(path).parts) > 1 else -1  # noqa: E731
    items = [(str(p), p.read_bytes(), label(p)) for p in files]
    images, labels = _decode_all(items, size, f"decode {path}")
    if not images:
        raise ValueError(f"none of the {len(files)} files under {path} could be decoded")
    return ImageArray(np.stack(images), np.array(labels, dtype=np.int64), subdirs)


def load_images(spec: str, root: Path | None = None, cache_dir: Path | None = None, size: int = 64) -> ImageArray:
    """Decode a source once into `cache_dir` (uint8 .npy, memory-mapped on later loads)."""
    root = Path(root or default_data_root())
    cache_dir = Path(cache_dir or default_cache_dir())
    kind, _, arg = spec.partition(":")
    if kind == "folder":
        key = f"folder-{hashlib.sha1(str(Path(arg).resolve()).encode()).hexdigest()[:12]}-{size}"
    elif root.resolve() != SHARED_DATA.resolve():  # another copy of the data (data.root): a cache of its own
        key = f"{spec}@{hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]}"
    else:
        key = spec
    stem = cache_dir / key.replace(":", "-").replace("/", "_")
    if (stem.with_suffix(".json")).exists():
        meta = json.loads(stem.with_suffix(".json").read_text())
        return ImageArray(np.load(f"{stem}.images.npy", mmap_mode="r"), np.load(f"{stem}.labels.npy"), meta["classes"])
    if kind != "folder" and not root.is_dir():
        raise ValueError(f"{spec}: the data root {root} is not a folder (data.root, or SPOT_DATA)")
    if kind == "cifar10" and arg in ("train", "test"):
        data = _load_cifar10(root, arg)
    elif kind == "tiny-imagenet" and arg in ("train", "val"):
        data = _load_tiny_imagenet(root, arg)
    elif kind == "cifar10-sample":
        data = _load_cifar10_sample(root)
    elif kind == "folder" and arg:
        data = _load_folder(Path(arg), size)
    else:
        raise ValueError(
            f"unknown data source {spec!r}; "
            "use cifar10:train|test, tiny-imagenet:train|val, cifar10-sample, folder:PATH"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    for suffix, array in ((".images.npy", data.images), (".labels.npy", data.labels)):
        tmp = Path(f"{stem}{suffix}.tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, f"{stem}{suffix}")
    tmp = stem.with_suffix(f".json.tmp{os.getpid()}")
    tmp.write_text(
        json.dumps({"spec": spec, "count": len(data.labels), "shape": list(data.images.shape), "classes": data.classes})
    )
    os.replace(tmp, stem.with_suffix(".json"))  # written last: its presence marks a complete cache
    return data


def train_transform(cfg: DataConfig, size: int) -> v2.Compose:
    """Random area crop (0.33-1, aspect 3/4-4/3, bilinear or bicubic), flip, brightness/saturation jitter."""
    crop = lambda interp: v2.RandomResizedCrop(size, (cfg.crop_scale_min, 1.0), (0.75, 4 / 3), interp, antialias=True)  # noqa: E731
    return v2.Compose(
        [
            v2.RandomChoice([crop(InterpolationMode.BILINEAR), crop(InterpolationMode.BICUBIC)]),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=cfg.brightness, saturation=cfg.saturation),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.5] * 3),  # -> [-1, 1]
        ]
    )


def eval_transform(cfg: DataConfig, size: int) -> v2.Compose:
    """Central crop keeping `test_crop` of the side, resized to `size`; no colour change."""
    return v2.Compose(
        [
            v2.Lambda(lambda x: v2.functional.center_crop(x, [round(min(x.shape[-2:]) * cfg.test_crop)] * 2)),
            v2.Resize([size, size], antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )


class ImageArrayDataset(Dataset):
    """uint8 HxWx3 array -> (image in [-1, 1] as CxHxW float, label)."""

    def __init__(self, data: ImageArray, transform):
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(np.array(self.data.images[i])).permute(2, 0, 1)
        return self.transform(x), int(self.data.labels[i])


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start part-way into an epoch, so a resumed run sees the same data."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start
