"""ONNX export of the discriminator (DESIGN.md contract) that verifies itself, plus model.json and
MODEL_CARD.md. The export folder is the only link between training and the service."""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from contract.spec import ModelSpec, file_sha256

from . import checkpoint
from .card import render
from .config import Config
from .data import ImageArrayDataset, eval_transform, load_images
from .networks import IMAGENET_MEAN_255, Discriminator, to_disc_input
from .pooling import probe_grid
from .probe import probe_tables

log = logging.getLogger(__name__)
logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # its per-initializer INFO lines drown the report
LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]
OUTPUTS = [*LAYERS, "real_logit", "mask_logits"]
TOLERANCE = 1e-4  # max abs difference allowed between ONNX Runtime and PyTorch, relative to scale 1
OPSET = 18


class SpotExport(nn.Module):
    """images -> conv1..conv5, real_logit [N] (positive = real), mask_logits [N, 1, h, w] (positive = kept).

    With `features`, conv1..conv5 come from that discriminator and the two heads from `disc`: the
    self-supervised features beside a detector fine-tuned from them (the detect stage changes the trunk)."""

    def __init__(self, disc: Discriminator, features: Discriminator | None = None):
        super().__init__()
        self.disc = disc
        self.features = features

    def forward(self, images: torch.Tensor):
        feats = self.disc.forward_intermediates(images)
        logits, mask_logits = self.disc.forward_head(feats[-1])
        if self.features is not None:
            feats = self.features.forward_intermediates(images)
        return (*feats, logits[:, 1] - logits[:, 0], mask_logits)


def git_commit(exclude: Path | None = None) -> str:
    """HEAD, "-dirty" when tracked files differ; `exclude` (the export's own folder, rewritten before
    this runs) does not count."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."]
            + ([f":(exclude){exclude.resolve()}"] if exclude else []),
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_discriminator(ckpt_path: Path) -> tuple[Discriminator, Config, dict]:
    nets, cfg, state = checkpoint.load_networks(ckpt_path)
    return nets["disc"].eval().to(memory_format=torch.contiguous_format), cfg, state


def export_onnx(wrapper: SpotExport, size: int, path: Path) -> None:
    wrapper = wrapper.eval()
    example = torch.randn(2, 3, size, size) * 60
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        wrapper,
        (example,),
        dynamo=True,
        verbose=False,
        opset_version=OPSET,
        input_names=["images"],
        output_names=OUTPUTS,
        dynamic_shapes={"images": {0: batch}},
    )
    program.save(str(path), external_data=False)


def compare(wrapper: SpotExport, session: ort.InferenceSession, batches: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per input set, over all outputs: the max abs difference, and the same divided by
    max(1, the output's max |value|) (features on the 0-255 input scale reach the hundreds)."""
    wrapper = wrapper.eval()
    report = {}
    for label, x in batches.items():
        with torch.no_grad():
            expected = [t.numpy() for t in wrapper(x)]
        got = session.run(OUTPUTS, {"images": x.numpy()})
        diffs = [float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=False)]
        scaled = [d / max(1.0, float(np.abs(e).max())) for d, e in zip(diffs, expected, strict=False)]
        report[label] = {"max_abs_diff": max(diffs), "max_scaled_diff": max(scaled)}
    return report


def real_batch(cfg: Config, count: int = 16) -> torch.Tensor:
    """The first `count` held-out images as the discriminator sees them (test crop, 0-255 minus mean)."""
    size = cfg.model.image_size
    data = load_images(cfg.data.val, cfg.data.root or None, cfg.data.cache_dir or None, size)
    dataset = ImageArrayDataset(data, eval_transform(cfg.data, size))
    images = torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))])
    return to_disc_input(images)


def init_provenance(cfg) -> dict | None:
    """A run that started from another run's networks: the stages they come from (stage 1 for the autoencoder
    alone; every stage of that run for a discriminator or repair net) with their steps, and the other run's
    wall time when the last of them ended (its summary.jsonl; cumulative), so a card's wall time covers them;
    and where that run started from yet another, its own provenance, nested. A checkpoint that `recover` rebuilt from an
    export has no run folder: it carries that provenance itself."""
    if not cfg.train.init_from:
        return None
    if recovered := recovered_provenance(cfg):
        return recovered
    config = Path(cfg.train.init_from).parent / "config.json"
    before = init_provenance(Config.from_dict(json.loads(config.read_text()))) if config.exists() else None
    summary = Path(cfg.train.init_from).parent / "summary.jsonl"
    stages = [json.loads(line) for line in summary.read_text().splitlines()] if summary.exists() else []
    # the autoencoder alone comes from stage 1; a discriminator (or repair net) from every stage the run had
    whole = set(cfg.train.init_networks.split(",")) - {"ae"}
    taken = [s for s in stages if whole or s["stage"] == "ae"]
    return {
        "checkpoint": cfg.train.init_from,
        "networks": cfg.train.init_networks,
        "stages": {s["stage"]: s["steps"] for s in taken},
        "wall_time_s": taken[-1]["wall_time_s"] if taken else None,
        **({"initialised_from": before} if before else {}),
    }


def recovered_provenance(cfg) -> dict | None:
    """init_provenance of a run that started from a recovered checkpoint: what its model.json said."""
    path = Path(cfg.train.init_from)
    if not path.exists() or (path.parent / "summary.jsonl").exists():
        return None
    state = checkpoint.load(path)
    if not state.get("recovered_from"):
        return None
    return {
        "checkpoint": cfg.train.init_from,
        "networks": cfg.train.init_networks,
        "stages": {state["stage"]: state["step"]},
        "wall_time_s": float(state.get("wall_time", 0.0)),
        "recovered_from": state["recovered_from"],
        **({"initialised_from": state["initialised_from"]} if state.get("initialised_from") else {}),
    }


def provenance(ckpt_path: Path, cfg: Config, state: dict, command: str | None) -> dict:
    """Where a checkpoint's weights came from, for the card: steps, wall time, hardware, command, and the
    runs it started from."""
    return {
        "checkpoint": str(ckpt_path),
        "steps": {"stage": state["stage"], "step": state["step"], "completed": state["completed"]},
        "wall_time_s": float(state.get("wall_time", 0.0)),
        "hardware": state.get("hardware", "unknown"),
        "command": command or state.get("command") or "unknown",
        # a recovered checkpoint (python -m training recover) carries what its model.json said
        "initialised_from": state.get("initialised_from") or init_provenance(cfg),
        **({"recovered_from": state["recovered_from"]} if state.get("recovered_from") else {}),
    }


def best_probe_layer(metrics: dict, train_data: str) -> tuple[str, str]:
    """The layer `/features` returns when none is asked for (DESIGN.md: the best probe layer): the highest
    top-1 of the linear probe on the training data's own dataset (else the first probe table measured);
    the last layer when no probe was measured. Returns the layer and why."""
    tables = probe_tables(metrics)
    if not tables:
        return LAYERS[-1], "the last layer (no linear probe measured)"
    dataset = train_data.split(":")[0]
    table = next((t for t in sorted(tables) if t.split(":")[0] == dataset), sorted(tables)[0])
    best = max(LAYERS, key=lambda layer: tables[table].get(layer, float("-inf")))
    return best, f"the best top-1 of the {table} linear probe"


def export_checked(wrapper: nn.Module, cfg: Config, onnx_path: Path) -> dict:
    """Write the ONNX graph, check it, and compare ONNX Runtime with PyTorch on random and real batches."""
    size = cfg.model.image_size
    export_onnx(wrapper, size, onnx_path)
    onnx.checker.check_model(onnx.load(str(onnx_path)), full_check=True)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    batches = {
        "random_batch1": torch.randn(1, 3, size, size, generator=gen) * 60,
        "random_batch7": torch.randn(7, 3, size, size, generator=gen) * 60,
        "real_images": real_batch(cfg),
    }
    check = compare(wrapper, session, batches)
    if max(c["max_scaled_diff"] for c in check.values()) > TOLERANCE:
        raise RuntimeError(f"ONNX Runtime differs from PyTorch beyond {TOLERANCE}: {check}")
    return check


@torch.no_grad()
def graph_description(wrapper: nn.Module, cfg: Config, metrics: dict) -> dict:
    """model.json's description of the graph: input, preprocessing, outputs, layers, pooling, mask grid."""
    size = cfg.model.image_size
    shapes = {n: list(t.shape[1:]) for n, t in zip(OUTPUTS, wrapper(torch.zeros(1, 3, size, size)), strict=True)}
    descriptions = {
        "real_logit": "real-vs-artifact logit; positive = real, sigmoid(-x) = artifact score",
        "mask_logits": "drop-mask logits on the encoder grid; positive = kept (no artifact there)",
    }
    default_layer, default_layer_why = best_probe_layer(metrics, cfg.data.train)
    return {
        "input": {"name": "images", "shape": [None, 3, size, size], "dtype": "float32"},
        "preprocessing": {
            "input_size": size,
            "color_order": "RGB",
            "pixel_range": [0, 255],
            "mean": list(IMAGENET_MEAN_255),
            "std": [1.0, 1.0, 1.0],
            "formula": "x = (pixel - mean) / std, pixel in 0..255, NCHW",
            "crop_fraction": cfg.data.test_crop,
            "interpolation": "bilinear",
        },
        "outputs": [
            {"name": n, "shape": [None, *shapes[n]], "description": descriptions.get(n, f"{n} feature map after ReLU")}
            for n in OUTPUTS
        ],
        "layers": LAYERS,
        "default_layer": default_layer,
        "default_layer_reason": default_layer_why,
        "feature_info": [
            {"name": f.name, "channels": f.channels, "reduction": f.reduction} for f in wrapper.disc.feature_info
        ],
        "probe_pooling": {
            n: {
                "kind": "adaptive_avg",
                "grid": (g := probe_grid(shapes[n][0], shapes[n][-1])),
                "dims": shapes[n][0] * g * g,
            }
            for n in LAYERS
        },
        "mask_grid": shapes["mask_logits"][-1],
        "spot_zoom": cfg.data.edit_zoom,  # /spot scales photos as the detector's training tiles were
    }


def export(
    ckpt_path: Path,
    out_dir: Path,
    name: str | None = None,
    version: str = "1",
    metrics: dict | None = None,
    train_command: str | None = None,
    threshold: float = 0.5,
    features_from: Path | None = None,
    features_command: str | None = None,
) -> dict:
    """Write model.onnx, model.json and MODEL_CARD.md into `out_dir`; returns model.json's content.
    `features_from`: another checkpoint of the same architecture whose conv1..conv5 give the feature
    outputs (the heads stay `ckpt_path`'s)."""
    disc, cfg, state = load_discriminator(Path(ckpt_path))
    features, features_state = None, None
    if features_from:
        features, features_cfg, features_state = load_discriminator(Path(features_from))
        if features_cfg.model != cfg.model:
            raise ValueError(f"{features_from} holds another architecture than {ckpt_path}")
    wrapper = SpotExport(disc, features)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    check = export_checked(wrapper, cfg, onnx_path)
    meta = {
        "name": name or out_dir.name,
        "version": version,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "format": "onnx",
        "opset": OPSET,
        **graph_description(wrapper, cfg, metrics or {}),
        "spot_threshold": threshold,
        "sha256": file_sha256(onnx_path),
        "size_bytes": onnx_path.stat().st_size,
        "export_check": {"tolerance_scaled": TOLERANCE, **check},
        "training": {
            "preset": cfg.preset,
            "config": cfg.to_dict(),
            "data": cfg.data.train,
            **provenance(ckpt_path, cfg, state, train_command),
            "world_size": int(state.get("world_size", 1)),
            "git_commit": git_commit(out_dir),
            "torch_version": torch.__version__,
        },
        "features_from": (
            provenance(features_from, features_cfg, features_state, features_command) if features_from else None
        ),
        "metrics": metrics or {},
    }
    ModelSpec.from_dict(meta)  # the contract the service reads it by: a bad field fails here, not there
    (out_dir / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out_dir / "MODEL_CARD.md").write_text(render(meta))
    log.info("exported %s (%d bytes), export check %s", onnx_path, meta["size_bytes"], check)
    return meta
