"""Optimiser, learning-rate schedule and per-network back-propagation, shared by every stage."""

from __future__ import annotations

import torch
from torch import nn

from .config import Config

LOSS_TARGETS = {
    "ae": ("ae",),
    "disc": ("disc", "rotation"),  # the rotation head only where the stage trains it (the combined variant)
    "repair": ("repair",),
    "supervised": ("disc", "classifier"),
    "rotation": ("disc", "rotation", "warp"),  # the warp head only where the stage trains it (warp_weight)
}


def backward_each(losses: dict[str, torch.Tensor], trained: dict[str, nn.Module]) -> None:
    """Back-propagate each loss into its own networks only: the discriminator's loss never updates the
    repair net and the repair net's loss never updates the discriminator (one shared forward)."""
    names = list(losses)
    for i, name in enumerate(names):
        params = [p for t in LOSS_TARGETS[name] if t in trained for p in trained[t].parameters() if p.requires_grad]
        losses[name].backward(inputs=params, retain_graph=i < len(names) - 1)


def make_optimizer(modules: dict[str, nn.Module], cfg: Config) -> torch.optim.Adam:
    """One Adam for every trained network; L2 (coupled weight decay) on conv weights only, except
    the autoencoder, whose biases are regularised too (slim's regularizers). One parameter group per
    (lr scale, decay): the repair net may learn slower than the discriminator (`repair_lr_scale`)."""
    t = cfg.train
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, module in modules.items():
        scale = t.repair_lr_scale if name == "repair" else 1.0
        for pname, p in module.named_parameters():
            if not p.requires_grad:
                continue
            is_bn = any(
                isinstance(m, nn.BatchNorm2d) for n, m in module.named_modules() if pname.startswith(n + ".") and n
            )
            groups.setdefault((scale, p.ndim > 1 or (name == "ae" and not is_bn)), []).append(p)
    param_groups = [
        {"params": params, "lr_scale": scale, "weight_decay": t.weight_decay if decay else 0.0}
        for (scale, decay), params in sorted(groups.items(), key=lambda kv: (-kv[0][0], not kv[0][1]))
    ]
    return torch.optim.Adam(param_groups, lr=t.lr, betas=(t.beta1, 0.999), eps=t.eps)


def lr_factor(step: int, total: int, cfg: Config) -> float:
    """Linear decay to `final_lr_fraction` at `decay_fraction` of the steps, then constant."""
    t = cfg.train
    progress = min(step / max(1.0, t.decay_fraction * total), 1.0)
    return 1.0 - (1.0 - t.final_lr_fraction) * progress


def set_lr(optimizer: torch.optim.Optimizer, step: int, total: int, cfg: Config) -> None:
    for group in optimizer.param_groups:
        group["lr"] = cfg.train.lr * lr_factor(step, total, cfg) * group.get("lr_scale", 1.0)


def scale_bias_grads(modules: dict[str, nn.Module], factor: float) -> None:
    if factor == 1.0:
        return
    for module in modules.values():
        for name, p in module.named_parameters():
            if name.endswith("bias") and p.grad is not None:
                p.grad.mul_(factor)
