"""Training throughput per stage (img/s): the optimised path against plain fp32 eager, in one run.

Batches are fixed random tensors, so the numbers measure the networks and the update, not decoding.
"""

from __future__ import annotations

import copy
import time

import torch

from . import dist
from .config import Config
from .networks import build_networks
from .optim import backward_each, make_optimizer
from .stages import set_phase
from .steps import STEPS

VARIANTS = {
    "fp32_eager": {"amp": "none", "channels_last": False},
    "fp32_channels_last": {"amp": "none", "channels_last": True},
    "bf16": {"amp": "bf16", "channels_last": False},
    "bf16_channels_last": {"amp": "bf16", "channels_last": True},
}


def time_stage(cfg: Config, stage: str, steps: int, warmup: int = 3) -> float:
    torch.manual_seed(0)
    nets = build_networks(cfg.model)
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    for m in nets.values():
        m.to(memory_format=fmt)
    trained = set_phase(nets, stage, cfg)
    optimizer = make_optimizer(trained, cfg)
    size = cfg.model.ae_size or cfg.model.image_size
    images = (torch.rand(cfg.train.batch_size, 3, size, size) * 2 - 1).contiguous(memory_format=fmt)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        with dist.autocast(torch.device("cpu"), cfg.train.amp):
            losses, _ = STEPS[stage](nets, images, None, cfg)
        optimizer.zero_grad(set_to_none=True)
        backward_each(losses, trained)
        optimizer.step()
    return steps * cfg.train.batch_size / (time.perf_counter() - start)


def measure(cfg: Config, steps: int = 20) -> dict:
    """img/s for each stage and variant, and each variant's ratio to fp32 eager."""
    results = {
        "preset": cfg.preset,
        "batch_size": cfg.train.batch_size,
        "width": cfg.model.width,
        "image_size": cfg.model.image_size,
        "threads": torch.get_num_threads(),
        "hardware": dist.describe_hardware(),
        "steps": steps,
        "stages": {},
    }
    for stage in ("ae", "spot"):
        rates = {}
        for name, settings in VARIANTS.items():
            variant = copy.deepcopy(cfg)
            variant.train.amp, variant.train.channels_last = settings["amp"], settings["channels_last"]
            rates[name] = time_stage(variant, stage, steps)
        base = rates["fp32_eager"]
        results["stages"][stage] = {
            n: {"img_per_s": round(r, 1), "vs_fp32_eager": round(r / base, 3)} for n, r in rates.items()
        }
    return results
