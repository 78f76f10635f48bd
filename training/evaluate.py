"""Held-out check of a checkpoint: autoencoder PSNR, real-vs-repaired accuracy and ROC-AUC, mask AP.

Images are scored as stored (no crop) unless `crop` says otherwise; drop masks come from a fixed seed.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from . import checkpoint
from .data import ImageArrayDataset, eval_transform, load_images
from .heldout import evaluate
from .stages import SPOTTING


def evaluate_checkpoint(
    ckpt_path, split: str | None = None, crop: float = 1.0, limit: int = 0, batch_size: int = 256
) -> dict:
    nets, cfg, state = checkpoint.load_networks(ckpt_path)
    size = cfg.model.ae_size or cfg.model.image_size
    cfg.data.test_crop = crop
    data = load_images(split or cfg.data.val, cfg.data.root or None, cfg.data.cache_dir or None, size)
    dataset = ImageArrayDataset(data, eval_transform(cfg.data, size))
    if limit:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    batches = list(DataLoader(dataset, batch_size=batch_size, num_workers=0))
    stage = "spot" if set(SPOTTING) & {*state["completed"], state["stage"]} else "ae"
    metrics = evaluate(nets, batches, cfg, stage)
    summary = {"ae/psnr_heldout_db": round(metrics["val/psnr"], 4)}
    return {
        "summary": summary,
        "checkpoint": str(ckpt_path),
        "data": split or cfg.data.val,
        "images": len(dataset),
        "crop": crop,
        "drop_rate": cfg.train.drop_rate,
        "stage": state["stage"],
        "step": state["step"],
        **{k.removeprefix("val/"): round(v, 4) for k, v in metrics.items()},
    }
