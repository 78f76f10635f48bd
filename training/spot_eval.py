"""How well the discriminator spots artifacts, reported the CNNDetection way.

Real = the autoencoder's reconstruction of a held-out image, fake = its repaired damaged version, at
the run's drop rate and at lower ones. Plus false alarms on raw, unaltered images: held-out images as
stored, and full-size photographs scored per tile (64 px tiles, half overlap, mean artifact
probability per photo). Artifact probability = sigmoid(-real_logit); the default threshold is 0.5.
With `generator`, the pairs come from another run's autoencoder and repair net: artifacts the
discriminator never trained against (CNNDetection's test on unseen generators).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score
from torch.utils.data import DataLoader

from contract.images import to_rgb
from contract.views import tiles

from . import checkpoint
from .data import IMAGE_SUFFIXES, ImageArrayDataset, eval_transform, load_images
from .networks import to_disc_input
from .steps import disc_size, make_pair

THRESHOLD = 0.5


@torch.no_grad()
def artifact_probability(disc, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """[-1, 1] images -> (artifact probability per image, drop probability per mask location)."""
    logits, mask_logits = disc(to_disc_input(images))
    real_logit = (logits[:, 1] - logits[:, 0]).float()
    return torch.sigmoid(-real_logit).cpu().numpy(), torch.sigmoid(-mask_logits.float()).cpu().numpy()


def detection_metrics(p_real: np.ndarray, p_fake: np.ndarray, threshold: float = THRESHOLD) -> dict:
    y = np.r_[np.zeros(len(p_real)), np.ones(len(p_fake))]
    s = np.r_[p_real, p_fake]
    return {
        "roc_auc": float(roc_auc_score(y, s)),
        "ap": float(average_precision_score(y, s)),
        "acc": float(((s > threshold) == y).mean()),
        "real_acc": float((p_real <= threshold).mean()),
        "fake_acc": float((p_fake > threshold).mean()),
    }


@torch.no_grad()
def pair_scores(nets: dict, cfg, batches, generator: torch.Generator) -> dict[str, np.ndarray]:
    """The one scorer of spotting, in training and after it. Per batch, a real/repaired pair at
    `cfg.train.drop_rate` (masks drawn from `generator`), scored in one forward with the raw images:
    artifact probabilities of `real`, `fake` and `raw`, and the fakes' drop probabilities (`drop_p`)
    against the locations truly dropped (`dropped`)."""
    found: dict[str, list[np.ndarray]] = {"real": [], "fake": [], "raw": [], "drop_p": [], "dropped": []}
    for images, _ in batches:
        n = len(images)
        real, fake, keep = make_pair(nets, images, cfg, generator)
        p, mask_p = artifact_probability(nets["disc"], disc_size(torch.cat([real, fake, images]), cfg))
        found["real"].append(p[:n])
        found["fake"].append(p[n : 2 * n])
        found["raw"].append(p[2 * n :])
        found["drop_p"].append(mask_p[n : 2 * n].ravel())
        found["dropped"].append((1 - keep).cpu().numpy().ravel())
    return {k: np.concatenate(v) for k, v in found.items()}


def mask_ap(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Average precision of the predicted drop-mask ({} when nothing, or everything, was dropped)."""
    dropped = scores["dropped"]
    if not 0 < dropped.sum() < len(dropped):
        return {}
    return {"mask_ap": float(average_precision_score(dropped, scores["drop_p"]))}


def score_pairs(nets: dict, cfg, batches, drop_rate: float, seed: int = 0) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg.train.drop_rate = drop_rate
    scores = pair_scores(nets, cfg, batches, torch.Generator().manual_seed(seed))
    return {"drop_rate": drop_rate, **detection_metrics(scores["real"], scores["fake"]), **mask_ap(scores)}


def photo_false_alarms(disc, folder: Path, size: int, threshold: float = THRESHOLD, zoom: float = 1.0) -> dict:
    """Per photo: mean tile artifact probability (tiled at the model's zoom, as /spot tiles it when the photo is
    within its tile limit); a false alarm above the threshold."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    per_photo = {}
    for path in files:
        with Image.open(path) as im:
            image = np.asarray(to_rgb(im))
        t = torch.from_numpy(tiles(image, size, zoom=zoom)[0]).permute(0, 3, 1, 2).float() / 127.5 - 1
        probs = np.concatenate([artifact_probability(disc, t[i : i + 256])[0] for i in range(0, len(t), 256)])
        per_photo[str(path.relative_to(folder))] = {"tiles": len(t), "score": float(probs.mean())}
    scores = np.array([v["score"] for v in per_photo.values()])
    return {"photos": len(scores), "false_alarm_rate": float((scores > threshold).mean()), "per_photo": per_photo}


def heldout_as_stored(cfg) -> ImageArrayDataset:
    """The run's held-out images at the autoencoder's size, uncropped: the pairs' source."""
    size = cfg.model.ae_size or cfg.model.image_size
    data = load_images(cfg.data.val, cfg.data.root or None, cfg.data.cache_dir or None, size)
    as_stored = copy.deepcopy(cfg.data)
    as_stored.test_crop = 1.0
    return ImageArrayDataset(data, eval_transform(as_stored, size))


def spot_eval(
    ckpt_path: Path,
    drop_rates: list[float],
    photos: Path | None,
    limit: int = 0,
    batch_size: int = 256,
    generator: Path | None = None,
) -> dict:
    nets, cfg, state = checkpoint.load_networks(ckpt_path)
    pair_cfg = cfg
    if generator:  # another run's autoencoder + repair net make the pairs; this run's discriminator judges
        other, other_cfg, _ = checkpoint.load_networks(generator)
        nets = {"ae": other["ae"], "repair": other.get("repair"), "disc": nets["disc"]}
        pair_cfg = copy.deepcopy(cfg)
        pair_cfg.model.repair = other_cfg.model.repair
    for m in nets.values():
        if m is not None:
            m.eval()
    dataset = heldout_as_stored(cfg)
    if limit:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    batches = list(DataLoader(dataset, batch_size=batch_size))
    raw = np.concatenate([artifact_probability(nets["disc"], disc_size(x, cfg))[0] for x, _ in batches])
    results = {
        "checkpoint": str(ckpt_path),
        "generator": str(generator or ckpt_path),
        "data": cfg.data.val,
        "images": len(dataset),
        "trained_drop_rate": cfg.train.drop_rate,
        "threshold": THRESHOLD,
        "pairs": [score_pairs(nets, pair_cfg, batches, rate) for rate in drop_rates],
        "raw_heldout_false_alarm_rate": float((raw > THRESHOLD).mean()),
    }
    if photos:
        results["raw_photos"] = photo_false_alarms(nets["disc"], photos, cfg.model.image_size, zoom=cfg.data.edit_zoom)
    results["summary"] = summarize(results, f"spot@{Path(generator).parent.name}" if generator else "spot")
    return results


def significant(value: float) -> float:
    """Six significant digits: short in a card, and never 0.99998 shown as a perfect 1.0."""
    return float(f"{value:.6g}")


def summarize(results: dict, prefix: str = "spot") -> dict[str, float]:
    """Flat headline numbers for model.json and the model card (prefix spot@RUN: another run's generator)."""
    out = {}
    for pair in results["pairs"]:
        for key in ("roc_auc", "ap", "acc", "real_acc", "fake_acc", "mask_ap"):
            if key in pair:
                out[f"{prefix}/{key}@drop{pair['drop_rate']}"] = significant(pair[key])
    if prefix != "spot":  # the false alarms do not depend on the generator: the plain report has them
        return out
    out["spot/false_alarm_raw_heldout"] = significant(results["raw_heldout_false_alarm_rate"])
    if "raw_photos" in results:
        out["spot/false_alarm_raw_photos"] = significant(results["raw_photos"]["false_alarm_rate"])
    return out
