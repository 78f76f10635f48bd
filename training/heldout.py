"""Held-out evaluation during training, reported beside the losses: each stage's pretext accuracy
(spotting through the same scorer as `spot-eval`), the autoencoder's PSNR, and the sample grids."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from .artifacts import damage, sample_keep_mask
from .config import Config
from .log import sample_grid
from .networks import to_disc_input
from .spot_eval import THRESHOLD, artifact_probability, detection_metrics, mask_ap, pair_scores
from .stages import STAGES, chance
from .steps import disc_size, psnr_db, rotation_and_warp_logits, rotation_logits

Batches = list[tuple[torch.Tensor, torch.Tensor]]


@contextlib.contextmanager
def eval_mode(nets: dict):
    """Every network in eval mode inside; each module's own mode restored after (a frozen trunk stays frozen)."""
    modes = [(m, m.training) for net in nets.values() for m in net.modules()]
    for net in nets.values():
        net.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@torch.no_grad()
def evaluate(nets: dict, batches: Batches, cfg: Config, stage: str) -> dict[str, float]:
    """The stage's held-out figures: top-1 (supervised), rotation accuracy (rotation, and the combined
    variant), warp accuracy (rotation with `warp_weight`), PSNR (ae and the spotting stages), real/fake/raw
    accuracy, ROC-AUC and mask AP (spotting)."""
    with eval_mode(nets):
        if stage == "supervised":
            return {"val/top1": top1(nets, batches)}
        if stage == "edits":
            return edit_detection(nets, batches)
        out = {}
        if stage == "rotation" or STAGES[stage].pairs and cfg.train.rotation_weight > 0:
            out["val/rotation_acc"] = rotation_accuracy(nets, batches, cfg)
        if stage == "rotation" and cfg.train.warp_weight > 0:
            out["val/warp_acc"] = warp_accuracy(nets, batches, cfg)
        if stage == "rotation":
            return out
        out["val/psnr"] = float(torch.stack([psnr_db(x, nets["ae"](x)) for x, _ in batches]).mean())
        if STAGES[stage].pairs:
            out |= spotting(nets, batches, cfg)
        return out


def top1(nets: dict, batches: Batches) -> float:
    correct = [
        (nets["classifier"](nets["disc"].forward_features(to_disc_input(x))).argmax(1).cpu() == y.cpu()).float()
        for x, y in batches
    ]
    return float(torch.cat(correct).mean())


def rotation_accuracy(nets: dict, batches: Batches, cfg: Config) -> float:
    correct = []
    for images, _ in batches:
        logits, turns = rotation_logits(nets, images, cfg)
        correct.append((logits.argmax(1) == turns).float().cpu())
    return float(torch.cat(correct).mean())


def warp_accuracy(nets: dict, batches: Batches, cfg: Config) -> float:
    """The share of held-out pictures (half of them bent, the same warps every time) told warped or not."""
    generator = torch.Generator(device=batches[0][0].device).manual_seed(1234)
    correct = []
    for images, _ in batches:
        _, (logits, bent) = rotation_and_warp_logits(nets, images, cfg, generator=generator)
        correct.append((logits.argmax(1) == bent).float().cpu())
    return float(torch.cat(correct).mean())


def spotting(nets: dict, batches: Batches, cfg: Config) -> dict[str, float]:
    generator = torch.Generator(device=batches[0][0].device).manual_seed(1234)  # the same masks every time
    scores = pair_scores(nets, cfg, batches, generator)
    raw = {"val/acc_raw": float((scores["raw"] <= THRESHOLD).mean())}  # raw images scored real
    return detection_figures(scores, "val/spot_acc") | raw


def detection_figures(scores: dict[str, np.ndarray], pretext: str) -> dict[str, float]:
    """Real and fake accuracy, their mean (the pretext accuracy, logged as `pretext`), ROC-AUC, mask AP."""
    found = detection_metrics(scores["real"], scores["fake"])
    return {
        "val/acc_real": found["real_acc"],
        "val/acc_fake": found["fake_acc"],
        pretext: (found["real_acc"] + found["fake_acc"]) / 2,  # balanced
        "val/auc": found["roc_auc"],
        **{f"val/{k}": v for k, v in mask_ap(scores).items()},
    }


def edit_detection(nets: dict, batches: Batches) -> dict[str, float]:
    """Held-out photo tiles against their edited copies: accuracies, ROC-AUC, and the drop-mask's AP."""
    raw, edited, drop_p, dropped = [], [], [], []
    for pairs, keep in batches:
        p, mask_p = artifact_probability(nets["disc"], torch.cat([pairs[:, :3], pairs[:, 3:]]))
        raw.append(p[: len(pairs)])
        edited.append(p[len(pairs) :])
        drop_p.append(mask_p[len(pairs) :].ravel())
        dropped.append((1 - keep).cpu().numpy().ravel())
    scores = {"real": np.concatenate(raw), "fake": np.concatenate(edited)}
    scores |= {"drop_p": np.concatenate(drop_p), "dropped": np.concatenate(dropped)}
    return detection_figures(scores, "val/edit_acc")


def pretext_accuracy(stage: str, metrics: dict, cfg: Config) -> tuple[float, float] | None:
    """(held-out accuracy at the stage's own task, chance), or None for a stage without one (ae)."""
    key = STAGES[stage].pretext
    if key is None:
        return None
    if key == "val/spot_acc" and key not in metrics:  # logs written before it was logged
        return (metrics["val/acc_real"] + metrics["val/acc_fake"]) / 2, 0.5
    return metrics[key], chance(stage, cfg)


def at_chance(stage: str, metrics: dict, cfg: Config) -> bool:
    """Is the pretext still unlearnt (within `chance_margin` of chance)? Decided on the main process."""
    found = pretext_accuracy(stage, metrics, cfg)
    return found is not None and found[0] <= found[1] + cfg.train.chance_margin


@torch.no_grad()
def save_samples(nets: dict, images: torch.Tensor, cfg: Config, stage: str, path: Path) -> torch.Tensor:
    """Rows: input, reconstruction, damaged (decoded as is), repaired, true and predicted drop-mask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with eval_mode(nets):
        return sample_grid(sample_rows(nets, images[:8], cfg, stage), path)


def sample_rows(nets: dict, images: torch.Tensor, cfg: Config, stage: str) -> list[torch.Tensor]:
    ae = nets["ae"]
    z = ae.encode(images)
    rows = [images, ae.decode(z)]
    if STAGES[stage].pairs:
        gen = torch.Generator(device=images.device).manual_seed(0)
        keep = sample_keep_mask(len(images), z.shape[-2:], cfg.train.drop_rate, images.device, gen)
        damaged = damage(z, keep)
        repaired = nets["repair"](ae, damaged, keep) if cfg.model.repair else ae.decode(damaged)
        _, mask_logits = nets["disc"](to_disc_input(disc_size(repaired, cfg)))
        rows += [ae.decode(damaged), repaired, 1 - keep, torch.sigmoid(-mask_logits.float())]  # white = dropped
    return rows
