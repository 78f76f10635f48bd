"""Repack the first N images per class of the shipped Tiny-ImageNet archives into smaller ones.

Why: a lent GPU machine receives at most 64 MiB with the working tree, and the shipped train archive
is 110 MB. The subset keeps the archive layout, so `SPOT_DATA=<out>` makes `tiny-imagenet:train` and
`tiny-imagenet:val` read it unchanged (training/data.py).

    python scripts/tiny_subset.py --train-per-class 200 --val-per-class 10 --out .gpu/data
"""

from __future__ import annotations

import argparse
import io
import tarfile
from collections import defaultdict
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-imagenet-200"


def repack(src: Path, dst: Path, per_class: int, split: str) -> int:
    """Copy the text files and the first `per_class` JPEGs (by name) of each class; returns the count."""
    with tarfile.open(src, "r:gz") as tar:
        members = [m for m in tar if m.isfile()]
        texts = {m.name: tar.extractfile(m).read() for m in members if m.name.endswith(".txt")}
        class_of = val_classes(texts) if split == "val" else lambda name: name.split("/")[1]
        taken, kept = defaultdict(int), []
        for m in sorted((m for m in members if m.name.endswith(".JPEG")), key=lambda m: m.name):
            cls = class_of(m.name)
            if taken[cls] < per_class:
                taken[cls] += 1
                kept.append((m.name, tar.extractfile(m).read()))
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dst, "w:gz", compresslevel=9) as out:
        for name, data in [*texts.items(), *kept]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return len(kept)


def val_classes(texts: dict):
    """val/images/<file> -> its class (wnid), from val_annotations.txt, read once."""
    ann = texts["val/val_annotations.txt"].decode().splitlines()
    wnid_of = {line.split("\t")[0]: line.split("\t")[1] for line in ann if line.strip()}
    return lambda name: wnid_of[name.rsplit("/", 1)[1]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-per-class", type=int, default=200)
    p.add_argument("--val-per-class", type=int, default=10)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    out = args.out / "tiny-imagenet-200"
    n = repack(SHARED / "train.tar.gz", out / "train.tar.gz", args.train_per_class, "train")
    print(f"train: {n} images -> {out / 'train.tar.gz'} ({(out / 'train.tar.gz').stat().st_size / 2**20:.1f} MiB)")
    n = repack(SHARED / "val.tar.gz", out / "val.tar.gz", args.val_per_class, "val")
    print(f"val: {n} images -> {out / 'val.tar.gz'} ({(out / 'val.tar.gz').stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
