"""A checkpoint back from an exported model: the discriminator that `export` wrote into model.onnx,
rebuilt as PyTorch weights, so a model whose run folder is gone can still be re-exported (new features
beside its heads, `export --features-from`).

The export folds each BatchNorm of the discriminator into the graph; this reads the folded tensors by
name and chooses statistics that give the same numbers: conv5's BatchNorm becomes mean = -(folded conv
bias), variance = 1 - eps and shift = (added constant) / 2 (BiasOnlyBatchNorm adds its shift twice).
`recover` checks every output against ONNX Runtime on real images before it writes anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from . import checkpoint
from .config import Config
from .export import real_batch
from .networks import BN_EPS, build_networks

PREFIX = "disc."  # SpotExport's discriminator (the heads' network); "features." is the feature network
TOLERANCE = 1e-4  # max abs difference allowed, relative to max(1, |output|), as export checks


def _added_constant(model: onnx.ModelProto, producer_input: str, initializers: dict) -> np.ndarray:
    """The initializer added (Add node) to the output of the node that reads `producer_input`."""
    producer = next(n for n in model.graph.node if producer_input in n.input)
    adder = next(n for n in model.graph.node if n.op_type == "Add" and producer.output[0] in n.input)
    (name,) = [i for i in adder.input if i in initializers]
    return initializers[name]


def discriminator_state(model: onnx.ModelProto, disc_state: dict) -> dict:
    """`disc_state` (a freshly built discriminator's state dict, for names and shapes) filled from the graph."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    state = {}
    for key, value in disc_state.items():
        name = PREFIX + key
        if name in inits:
            state[key] = torch.from_numpy(inits[name].copy()).reshape(value.shape)
    # conv5 + bn5: Conv(x, W, b) then Add(c): y = conv(x) + b + c.
    folded_bias = inits[PREFIX + "conv5.weight_bias"]
    state["bn5.running_mean"] = torch.from_numpy(-folded_bias.copy())
    state["bn5.running_var"] = torch.full_like(state["bn5.running_mean"], 1 - BN_EPS)
    shift = _added_constant(model, PREFIX + "conv5.weight", inits)
    state["bn5.bias"] = torch.from_numpy(shift.reshape(-1).copy()) / 2
    # bn_fc1: BatchNormalization with its statistics by name (scale 1, bias 0), then Add(c).
    shift = _added_constant(model, PREFIX + "bn_fc1.running_mean", inits)
    state["bn_fc1.bias"] = torch.from_numpy(shift.reshape(-1).copy()) / 2
    for key in ("bn5.num_batches_tracked", "bn_fc1.num_batches_tracked"):
        state[key] = disc_state[key]
    if missing := sorted(set(disc_state) - set(state)):
        raise ValueError(f"the model's graph lacks {missing}: not a spot-artifacts export of this architecture")
    return state


def recover(model_dir: Path, out: Path, images: np.ndarray | None = None) -> dict:
    """Write `out` (a checkpoint holding the discriminator of `model_dir`) after checking that it gives
    ONNX Runtime's real_logit and mask_logits on `images` (NCHW, the model's input scale; default: the
    first held-out images of the model's own validation set). Returns the check."""
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    cfg = Config.from_dict(meta["training"]["config"])
    if images is None:
        images = real_batch(cfg).numpy()
    disc = build_networks(cfg.model)["disc"]
    model = onnx.load(str(Path(model_dir) / "model.onnx"))
    disc.load_state_dict(discriminator_state(model, disc.state_dict()))
    disc.eval()
    session = ort.InferenceSession(str(Path(model_dir) / "model.onnx"), providers=["CPUExecutionProvider"])
    got = dict(
        zip(["real_logit", "mask_logits"], session.run(["real_logit", "mask_logits"], {"images": images}), strict=False)
    )
    with torch.no_grad():
        logits, mask_logits = disc(torch.from_numpy(images))
    mine = {"real_logit": (logits[:, 1] - logits[:, 0]).numpy(), "mask_logits": mask_logits.numpy()}
    check = {
        k: float(np.abs(mine[k] - got[k]).max() / max(1.0, float(np.abs(got[k]).max())))
        for k in ("real_logit", "mask_logits")
    }
    if max(check.values()) > TOLERANCE:
        raise RuntimeError(f"the rebuilt discriminator differs from {model_dir}'s graph beyond {TOLERANCE}: {check}")
    training = meta["training"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save(
        out,
        {
            "config": cfg.to_dict(),
            "stage": training["steps"]["stage"],
            "step": training["steps"]["step"],
            "completed": training["steps"]["completed"],
            "networks": {"disc": disc.state_dict()},
            "wall_time": training.get("wall_time_s", 0.0),
            "hardware": training.get("hardware", "unknown"),
            "command": training.get("command", "unknown"),
            "initialised_from": training.get("initialised_from"),
            "recovered_from": {"model": str(model_dir), "version": meta["version"], "sha256": meta["sha256"]},
        },
    )
    return {"out": str(out), "max_scaled_diff": check}
