"""Stage policy as one table: what each stage trains, how long, whether it makes real/repaired pairs,
what its held-out pretext accuracy is and what chance is for it. The loop reads only this table."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .config import Config
from .networks import Discriminator


@dataclass(frozen=True)
class Stage:
    steps: str  # the cfg.train field holding its step count
    trains: tuple[str, ...]  # the networks it always trains (the rest are frozen, in eval mode)
    pairs: bool  # makes real/repaired pairs (spotting), so held-out spotting figures and sample grids
    pretext: str | None  # its held-out accuracy in the logged metrics; None: no pretext (ae)
    samples: bool = True  # writes sample grids of the autoencoder's (and repair net's) images


STAGES = {
    "ae": Stage("ae_steps", ("ae",), pairs=False, pretext=None),
    "spot": Stage("spot_steps", ("disc",), pairs=True, pretext="val/spot_acc"),  # + repair, + rotation: below
    "supervised": Stage("supervised_steps", ("disc", "classifier"), pairs=False, pretext="val/top1", samples=False),
    "detect": Stage("detect_steps", ("disc",), pairs=True, pretext="val/spot_acc"),
    "rotation": Stage("rotation_steps", ("disc", "rotation"), pairs=False, pretext="val/rotation_acc", samples=False),
    "edits": Stage("edits_steps", ("disc",), pairs=False, pretext="val/edit_acc", samples=False),
}
SPOTTING = tuple(name for name, s in STAGES.items() if s.pairs)
HEAD_MODULES = ("mask_head", "fc1", "bn_fc1", "dropout", "fc2")  # the discriminator's heads; the rest: the trunk
HEADS = tuple(f"{m}." for m in HEAD_MODULES)


def stage_steps(stage: str, cfg: Config) -> int:
    return getattr(cfg.train, STAGES[stage].steps)


def chance(stage: str, cfg: Config) -> float:
    """Accuracy by guessing at the stage's pretext: two classes, four turns, or the labels' classes."""
    return {
        "val/spot_acc": 0.5,
        "val/edit_acc": 0.5,
        "val/rotation_acc": 0.25,
        "val/top1": 1 / max(1, cfg.model.num_classes),
    }[STAGES[stage].pretext]


def stage_modules(nets: dict, stage: str, cfg: Config) -> dict[str, nn.Module]:
    """Which networks a stage trains: the table's, plus the repair net in the game (when the model has
    one), the rotation head in the combined variant (`train.rotation_weight`) and the warp head beside the
    rotations (`train.warp_weight`)."""
    if stage == "supervised" and "classifier" not in nets:
        raise ValueError("the supervised stage needs --model.num_classes > 0")
    names = list(STAGES[stage].trains)
    if stage == "spot" and cfg.train.rotation_weight > 0:
        names.append("rotation")
    if stage == "rotation" and cfg.train.warp_weight > 0:
        names.append("warp")
    if stage == "spot" and cfg.model.repair:
        names.append("repair")
    return {name: nets[name] for name in names}


def heads_only(stage: str, cfg: Config) -> bool:
    return stage == "detect" and cfg.train.detect_heads_only


def trainable(module: nn.Module, stage: str, cfg: Config) -> list[nn.Parameter]:
    """Parameters a stage updates: the supervised and rotation rows leave the discriminator's own heads
    alone; a heads-only detect stage trains nothing else (conv1..conv5, the features, stay as the game left them)."""
    if stage in ("supervised", "rotation") and isinstance(module, Discriminator):
        return [p for n, p in module.named_parameters() if not n.startswith(HEADS)]
    if heads_only(stage, cfg):
        return [p for n, p in module.named_parameters() if n.startswith(HEADS)]
    return list(module.parameters())


def set_phase(nets: dict, stage: str, cfg: Config) -> dict[str, nn.Module]:
    """Only the stage's own networks train (requires_grad, train mode); the rest are frozen, in eval mode."""
    trained = stage_modules(nets, stage, cfg)
    for name, m in nets.items():
        m.requires_grad_(False).train(name in trained)
        if name in trained:
            for p in trainable(m, stage, cfg):
                p.requires_grad_(True)
    if heads_only(stage, cfg):  # the trunk's BatchNorm statistics stay frozen too
        for name, child in nets["disc"].named_children():
            if name not in HEAD_MODULES:
                child.eval()
    return trained
