"""Linear probes on the frozen discriminator (PAPER.md section 6, scaled to our input sizes).

Per layer conv1..conv5: the feature map after ReLU, adaptive-average-pooled to about 9k dims
(`pooling.probe_grid`), standardised with train-set statistics (what BatchNorm without affine does at
test time), then one linear classifier trained with SGD + Nesterov momentum on a piecewise schedule
(the authors' follow-up convention: lr x [1, 0.1, 0.02, 0.004, 0.0008] at 0/8/40/70/90% of the steps).
Features are extracted once from the centre crop; the classifiers train on the cached features.
Two BatchNorm protocols: the statistics the pretext left (`game`), or statistics re-estimated on the
probe's own training images (`probe-data`, what the authors' classifier does: PAPER.md section 6).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from contract.spec import ModelSpec

from .config import Config
from .data import ImageArrayDataset, eval_transform, load_images
from .networks import Discriminator, to_disc_input
from .pooling import probe_grid

log = logging.getLogger(__name__)
LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]
LR_POINTS = (0.0, 0.08, 0.40, 0.70, 0.90)
LR_FACTORS = (1.0, 0.1, 0.02, 0.004, 0.0008)


@dataclass
class ProbeSchedule:
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0


FeatureFn = Callable[[torch.Tensor], list[torch.Tensor]]  # images in [-1, 1] -> [conv1..conv5 maps]


BN_PROTOCOLS = ("game", "probe-data")
BN_IMAGES = 10_240  # probe training images the re-estimated statistics average over


def torch_features(disc: Discriminator) -> FeatureFn:
    disc.eval()
    return lambda images: disc.forward_intermediates(to_disc_input(images))


@torch.no_grad()
def reestimate_batchnorm(disc: Discriminator, dataset, images: int = BN_IMAGES, batch_size: int = 256) -> int:
    """Replace every BatchNorm's running statistics by their average over `images` seeded random images
    of `dataset` (a cumulative average: batch k gets momentum 1/k). Returns how many BatchNorms changed."""
    norms = [m for m in disc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:images].tolist()
    momenta = [m.momentum for m in norms]
    disc.eval()
    for m in norms:
        m.reset_running_stats()
        m.train()
    for k, (batch, _) in enumerate(DataLoader(torch.utils.data.Subset(dataset, pick), batch_size=batch_size), 1):
        for m in norms:
            m.momentum = 1.0 / k
        disc(to_disc_input(batch))
    for m, momentum in zip(norms, momenta, strict=False):
        m.momentum = momentum
    disc.eval()
    return len(norms)


def onnx_features(model_dir: Path) -> FeatureFn:
    """The exported model run by ONNX Runtime: the probe then measures exactly what the service serves."""
    import onnxruntime as ort

    spec = ModelSpec.read(model_dir)
    spec.verify(model_dir / "model.onnx")
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return lambda images: [torch.from_numpy(a) for a in session.run(LAYERS, {"images": to_disc_input(images).numpy()})]


@torch.no_grad()
def extract(features: FeatureFn, dataset, batch_size: int = 256, desc: str = "features") -> tuple[dict, np.ndarray]:
    """{layer: float16 [N, dims]} probe-pooled features, and the labels."""
    feats: dict[str, list[np.ndarray]] = {n: [] for n in LAYERS}
    labels = []
    for images, y in tqdm(DataLoader(dataset, batch_size=batch_size), desc=desc, leave=False):
        for name, f in zip(LAYERS, features(images), strict=False):
            g = probe_grid(f.shape[1], f.shape[-1])
            feats[name].append(F.adaptive_avg_pool2d(f, g).flatten(1).half().numpy())
        labels.append(y.numpy())
    return {n: np.concatenate(v) for n, v in feats.items()}, np.concatenate(labels)


def lr_at(progress: float, base: float) -> float:
    factor = LR_FACTORS[0]
    for point, f in zip(LR_POINTS, LR_FACTORS, strict=False):
        if progress >= point:
            factor = f
    return base * factor


def train_linear(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    classes: int,
    schedule: ProbeSchedule,
) -> float:
    """Top-1 accuracy on the test features of a linear classifier trained on standardised train features."""
    gen = torch.Generator().manual_seed(schedule.seed)
    mean = torch.from_numpy(train_x.astype(np.float32).mean(0))
    std = torch.from_numpy(train_x.astype(np.float32).std(0)).clamp(min=1e-5)
    linear = torch.nn.Linear(train_x.shape[1], classes)
    torch.nn.init.normal_(linear.weight, std=0.005, generator=gen)
    torch.nn.init.zeros_(linear.bias)
    decay, no_decay = [linear.weight], [linear.bias]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": schedule.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=schedule.lr,
        momentum=schedule.momentum,
        nesterov=True,
    )
    x_all, y_all = torch.from_numpy(train_x), torch.from_numpy(train_y)
    steps_per_epoch = max(1, len(x_all) // schedule.batch_size)
    total = schedule.epochs * steps_per_epoch
    step = 0
    for _ in range(schedule.epochs):
        order = torch.randperm(len(x_all), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * schedule.batch_size : (i + 1) * schedule.batch_size]
            for group in opt.param_groups:
                group["lr"] = lr_at(step / total, schedule.lr)
            loss = F.cross_entropy(linear((x_all[idx].float() - mean) / std), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test_x), 4096):
            x = (torch.from_numpy(test_x[i : i + 4096]).float() - mean) / std
            correct += int((linear(x).argmax(1) == torch.from_numpy(test_y[i : i + 4096])).sum())
    return correct / len(test_x)


def probe(
    features: FeatureFn,
    cfg: Config,
    train_spec: str,
    test_spec: str,
    schedule: ProbeSchedule,
    limit: int = 0,
    layers: list[str] = LAYERS,
) -> dict:
    """Top-1 per layer of linear probes trained on `train_spec` labels and tested on `test_spec`."""
    size = cfg.model.image_size
    started = time.time()
    arrays = {
        spec: load_images(spec, cfg.data.root or None, cfg.data.cache_dir or None, size)
        for spec in (train_spec, test_spec)
    }
    for spec, data in arrays.items():
        if unlabelled := int((data.labels < 0).sum()):
            raise ValueError(f"{spec}: a probe needs every image in a class subfolder; {unlabelled} are not")
    # A label is a position in its own set's class list: the test set's are matched to the train set's by
    # name, checked before any feature is extracted.
    learnt, tested = list(arrays[train_spec].classes), list(arrays[test_spec].classes)
    if unknown := sorted(set(tested) - set(learnt)):
        raise ValueError(
            f"{test_spec} has classes {train_spec} has not ({', '.join(unknown[:5])}"
            f"{', ...' if len(unknown) > 5 else ''}): a probe can only be tested on the classes it learnt"
        )
    sets = {}
    for spec in arrays:  # once when train and test are the same set
        dataset = ImageArrayDataset(arrays[spec], eval_transform(cfg.data, size))
        if limit:  # a seeded random subset: the archives are sorted by class, a prefix would hold a few
            keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:limit]
            dataset = torch.utils.data.Subset(dataset, keep.sort().values.tolist())
        sets[spec] = extract(features, dataset, desc=f"features {spec}")
    (train_feats, train_y), (test_feats, test_y) = sets[train_spec], sets[test_spec]
    test_y = np.array([learnt.index(c) for c in tested])[test_y]
    classes = len(learnt)
    top1 = {}
    for layer in tqdm(layers, desc="probes", leave=False):
        top1[layer] = train_linear(train_feats[layer], train_y, test_feats[layer], test_y, classes, schedule)
        log.info("%s top-1 %.4f", layer, top1[layer])
    return {
        "train": train_spec,
        "test": test_spec,
        "classes": classes,
        "train_images": len(train_y),
        "test_images": len(test_y),
        "dims": {n: int(train_feats[n].shape[1]) for n in LAYERS},
        "schedule": schedule.__dict__,
        "top1": top1,
        "wall_time_s": round(time.time() - started, 1),
    }


def probe_summary(result: dict) -> dict:
    """The flat metrics a model card carries: probe_top1/<test set>/<layer>."""
    return {f"probe_top1/{result['test']}/{layer}": round(v, 4) for layer, v in result["top1"].items()}


def gap_summary(ours: list[dict], references: list[dict]) -> dict[str, float]:
    """probe_gap_closed/<test set>: the mean over conv2..conv5 of the supervised gap our probes close, for
    each test set with a probe of ours, of a random init (model "random:...") and of a supervised trunk.
    Each further supervised trunk of that test set, in the order given, adds
    probe_gap_closed/<test set>/<its run folder>; two references that would share a key are an error."""
    out = {}
    for report in ours:
        same = [r for r in references if r["test"] == report["test"]]
        random = next((r for r in same if r["model"].startswith("random:")), None)
        supervised = [r for r in same if not r["model"].startswith("random:")]
        for i, reference in enumerate(supervised if random else []):
            gap = gap_closed(report["top1"], random["top1"], reference["top1"])["mean_conv2_conv5"]
            key = f"probe_gap_closed/{report['test']}"
            if i:
                key += f"/{Path(reference['model']).parent.name}"
            if key in out or key.endswith("/"):
                raise ValueError(f"reference probe {reference['model']!r} gives the key {key!r} twice or empty")
            out[key] = round(gap, 4)
    return out


def probe_tables(metrics: dict) -> dict[str, dict[str, float]]:
    """probe_summary read back from a model card's flat metrics: {test set: {layer: top-1}}."""
    tables: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith("probe_top1/"):
            _, test, layer = key.rsplit("/", 2)
            tables.setdefault(test, {})[layer] = value
    return tables


def gap_closed(ours: dict, random: dict, supervised: dict) -> dict:
    """(ours - random) / (supervised - random) per layer, and the mean over conv2..conv5."""
    fractions = {n: (ours[n] - random[n]) / (supervised[n] - random[n]) for n in LAYERS if supervised[n] != random[n]}
    later = [fractions[n] for n in LAYERS[1:] if n in fractions]
    return {"per_layer": fractions, "mean_conv2_conv5": sum(later) / len(later) if later else float("nan")}
