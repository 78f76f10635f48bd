"""A checkpoint back from an exported model: the discriminator that `export` wrote into model.onnx,
rebuilt as PyTorch weights, so a model whose run folder is gone can still be re-exported (new features
beside its heads, `export --features-from`).

The export folds each BatchNorm of the discriminator into the graph; this reads the folded tensors by
name and chooses statistics that give the same numbers: conv5's BatchNorm becomes mean = -(folded conv
bias), variance = 1 - eps and shift = (added constant) / 2 (BiasOnlyBatchNorm adds its shift twice).
`recover` checks every output against ONNX Runtime on real images before it writes anything.

`--network features` rebuilds the feature network instead (conv1..conv5 of an export made with
`--features-from`, the self-supervised trunk beside the detector): the start of a run that trains those
features on (the heads it carries are the detector's, on another trunk: only conv1..conv5 are checked).
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
TRUNK = ("conv1.", "conv2.", "conv3.", "conv4.", "conv5.", "bn5.")  # what the feature network holds
NETWORKS = ("disc", "features")
TOLERANCE = 1e-4  # max abs difference allowed, relative to max(1, |output|), as export checks


def _added_constant(model: onnx.ModelProto, producer_input: str, initializers: dict) -> np.ndarray:
    """The initializer added (Add node) to the output of the node that reads `producer_input`."""
    producer = next(n for n in model.graph.node if producer_input in n.input)
    adder = next(n for n in model.graph.node if n.op_type == "Add" and producer.output[0] in n.input)
    (name,) = [i for i in adder.input if i in initializers]
    return initializers[name]


def discriminator_state(model: onnx.ModelProto, disc_state: dict, network: str = "disc") -> dict:
    """`disc_state` (a freshly built discriminator's state dict, for names and shapes) filled from the graph;
    conv1..conv5 from `network` ("disc" or "features"), the heads from the discriminator."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    trunk = f"{network}."
    if network != "disc" and trunk + "conv1.weight" not in inits:
        raise ValueError(f"the model's graph has no separate {network} network (exported without --features-from)")
    # A conv's bias is read as its node's input, not by name: the exporter shares a tensor that two
    # networks hold equal (a bias the feature run never changed) under one of their names.
    bias_of = {n.input[1]: n.input[2] for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2}
    state = {}
    for key, value in disc_state.items():
        name = (trunk if key.startswith(TRUNK) else PREFIX) + key
        if key.endswith(".bias") and name.replace(".bias", ".weight") in bias_of:
            name = bias_of[name.replace(".bias", ".weight")]
        if name in inits:
            state[key] = torch.from_numpy(inits[name].copy()).reshape(value.shape)
    # conv5 + bn5: Conv(x, W, b) then Add(c): y = conv(x) + b + c.
    folded_bias = inits[bias_of[trunk + "conv5.weight"]]
    state["bn5.running_mean"] = torch.from_numpy(-folded_bias.copy())
    state["bn5.running_var"] = torch.full_like(state["bn5.running_mean"], 1 - BN_EPS)
    shift = _added_constant(model, trunk + "conv5.weight", inits)
    state["bn5.bias"] = torch.from_numpy(shift.reshape(-1).copy()) / 2
    # bn_fc1: BatchNormalization with its statistics by name (scale 1, bias 0), then Add(c).
    shift = _added_constant(model, PREFIX + "bn_fc1.running_mean", inits)
    state["bn_fc1.bias"] = torch.from_numpy(shift.reshape(-1).copy()) / 2
    for key in ("bn5.num_batches_tracked", "bn_fc1.num_batches_tracked"):
        state[key] = disc_state[key]
    if missing := sorted(set(disc_state) - set(state)):
        raise ValueError(f"the model's graph lacks {missing}: not a spot-artifacts export of this architecture")
    return state


def recover(model_dir: Path, out: Path, images: np.ndarray | None = None, network: str = "disc") -> dict:
    """Write `out` (a checkpoint holding the discriminator of `model_dir`, or with `network="features"` its
    feature network) after checking that it gives ONNX Runtime's outputs on `images` (NCHW, the model's
    input scale; default: the first held-out images of the model's own validation set): real_logit and
    mask_logits for the discriminator, conv1..conv5 for the feature network. Returns the check."""
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    cfg = Config.from_dict(meta["training"]["config"])
    if images is None:
        images = real_batch(cfg).numpy()
    disc = build_networks(cfg.model)["disc"]
    model = onnx.load(str(Path(model_dir) / "model.onnx"))
    disc.load_state_dict(discriminator_state(model, disc.state_dict(), network))
    disc.eval()
    session = ort.InferenceSession(str(Path(model_dir) / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        if network == "disc":
            logits, mask_logits = disc(torch.from_numpy(images))
            mine = {"real_logit": (logits[:, 1] - logits[:, 0]).numpy(), "mask_logits": mask_logits.numpy()}
        else:
            names = [f.name for f in disc.feature_info]
            mine = dict(
                zip(names, (f.numpy() for f in disc.forward_intermediates(torch.from_numpy(images))), strict=True)
            )
    got = dict(zip(mine, session.run(list(mine), {"images": images}), strict=True))
    check = {k: float(np.abs(mine[k] - got[k]).max() / max(1.0, float(np.abs(got[k]).max()))) for k in mine}
    if max(check.values()) > TOLERANCE:
        raise RuntimeError(
            f"the rebuilt {network} network differs from {model_dir}'s graph beyond {TOLERANCE}: {check}"
        )
    # the provenance of what was rebuilt: the feature network's own run where the export names one
    training = meta["training"] if network == "disc" else meta["features_from"]
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
            "recovered_from": {
                "model": str(model_dir),
                "version": meta["version"],
                "sha256": meta["sha256"],
                "network": network,
            },
        },
    )
    return {"out": str(out), "max_scaled_diff": check}
