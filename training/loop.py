"""The training loop: stage 1 trains the autoencoder, stage 2 the repair net against the discriminator;
an optional "detect" stage then trains the discriminator alone against the frozen repair net.

`train(cfg, run_dir)` runs the stages named in `cfg.train.stages`, resuming from `run_dir/checkpoint.pt`
when it exists. It works the same on one CPU and under `torchrun` on many GPUs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from . import checkpoint, dist
from .artifacts import damage, sample_keep_mask
from .config import Config, dump
from .data import ImageArrayDataset, ResumableSampler, load_images, eval_transform, train_transform
from .log import MetricLog, forget_records_after, sample_grid
from .networks import Discriminator, build_networks, to_disc_input
from .steps import STEPS, disc_size, make_pair, psnr_db, rotation_logits

log = logging.getLogger(__name__)
STAGES = ("ae", "spot", "supervised", "detect", "rotation")
SPOTTING = ("spot", "detect")  # stages that make real/repaired pairs
CHECKPOINT = "checkpoint.pt"


# ----------------------------------------------------------------------------------------------
# Held-out evaluation, reported beside the training losses.


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
def evaluate(nets: dict, batches: list[tuple[torch.Tensor, torch.Tensor]], cfg: Config, stage: str) -> dict[str, float]:
    with eval_mode(nets):
        return _evaluate(nets, batches, cfg, stage)


def _evaluate(
    nets: dict, batches: list[tuple[torch.Tensor, torch.Tensor]], cfg: Config, stage: str
) -> dict[str, float]:
    gen = torch.Generator(device=batches[0][0].device).manual_seed(1234)  # the same masks every time
    psnrs, real_scores, fake_scores, raw_scores, drop_scores, drop_targets, correct = [], [], [], [], [], [], []
    turns_correct = []
    for images, labels in batches:
        if stage == "supervised":
            logits = nets["classifier"](nets["disc"].forward_features(to_disc_input(images)))
            correct.append((logits.argmax(1).cpu() == labels.cpu()).float())
            continue
        if stage == "rotation" or cfg.train.rotation_weight > 0 and stage in SPOTTING:
            rot_logits, turns = rotation_logits(nets, images, cfg)
            turns_correct.append((rot_logits.argmax(1) == turns).float().cpu())
        if stage == "rotation":
            continue
        psnrs.append(psnr_db(images, nets["ae"](images)))
        if stage not in SPOTTING:
            continue
        n = len(images)
        real, fake, keep = make_pair(nets, images, cfg, gen)
        logits, mask_logits = nets["disc"](to_disc_input(disc_size(torch.cat([real, fake, images]), cfg)))
        score = (logits[:, 1] - logits[:, 0]).float().cpu()  # positive = real
        real_scores.append(score[:n])
        fake_scores.append(score[n : 2 * n])
        raw_scores.append(score[2 * n :])
        drop_scores.append(-mask_logits[n : 2 * n].float().flatten().cpu())
        drop_targets.append((1 - keep).flatten().cpu())
    if stage == "supervised":
        return {"val/top1": float(torch.cat(correct).mean())}
    rotation = {"val/rotation_acc": float(torch.cat(turns_correct).mean())} if turns_correct else {}
    if stage == "rotation":
        return rotation
    out = {"val/psnr": float(torch.stack(psnrs).mean()), **rotation}
    if stage in SPOTTING:
        real_s, fake_s = torch.cat(real_scores), torch.cat(fake_scores)
        out["val/acc_real"] = float((real_s > 0).float().mean())
        out["val/acc_fake"] = float((fake_s <= 0).float().mean())
        out["val/acc_raw"] = float((torch.cat(raw_scores) > 0).float().mean())  # raw images scored real
        is_fake = torch.cat([torch.zeros_like(real_s), torch.ones_like(fake_s)]).numpy()
        out["val/auc"] = float(roc_auc_score(is_fake, -torch.cat([real_s, fake_s]).numpy()))
        targets = torch.cat(drop_targets).numpy()
        if 0 < targets.sum() < len(targets):
            out["val/mask_ap"] = float(average_precision_score(targets, torch.cat(drop_scores).numpy()))
    return out


def pretext_accuracy(stage: str, metrics: dict, cfg: Config) -> tuple[float, float] | None:
    """(held-out accuracy at the stage's own task, chance), or None for a stage without one (ae)."""
    if stage == "rotation":
        return metrics["val/rotation_acc"], 0.25
    if stage in SPOTTING:
        return (metrics["val/acc_real"] + metrics["val/acc_fake"]) / 2, 0.5
    if stage == "supervised":
        return metrics["val/top1"], 1 / cfg.model.num_classes
    return None


def at_chance(stage: str, metrics: dict, cfg: Config) -> bool:
    """Is the pretext still unlearnt (within `chance_margin` of chance)? Decided on the main process."""
    found = pretext_accuracy(stage, metrics, cfg)
    return found is not None and found[0] <= found[1] + cfg.train.chance_margin


# ----------------------------------------------------------------------------------------------
# Optimiser and schedule.


LOSS_TARGETS = {
    "ae": ("ae",),
    "disc": ("disc", "rotation"),  # the rotation head only where the stage trains it (the combined variant)
    "repair": ("repair",),
    "supervised": ("disc", "classifier"),
    "rotation": ("disc", "rotation"),
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


def scale_bias_grads(modules: dict[str, nn.Module], factor: float) -> None:
    if factor == 1.0:
        return
    for module in modules.values():
        for name, p in module.named_parameters():
            if name.endswith("bias") and p.grad is not None:
                p.grad.mul_(factor)


# ----------------------------------------------------------------------------------------------
# The loop.


def stage_modules(nets: dict, stage: str, cfg: Config) -> dict[str, nn.Module]:
    """Which networks a stage trains: all others are frozen (requires_grad False, eval mode)."""
    if stage == "ae":
        return {"ae": nets["ae"]}
    if stage == "supervised":
        if "classifier" not in nets:
            raise ValueError("the supervised stage needs --model.num_classes > 0")
        return {"disc": nets["disc"], "classifier": nets["classifier"]}
    trained = {"disc": nets["disc"]}
    if stage == "rotation" or stage == "spot" and cfg.train.rotation_weight > 0:
        trained["rotation"] = nets["rotation"]
    if cfg.model.repair and stage == "spot":
        trained["repair"] = nets["repair"]
    return trained


def stage_steps(stage: str, cfg: Config) -> int:
    t = cfg.train
    return {
        "ae": t.ae_steps,
        "spot": t.spot_steps,
        "supervised": t.supervised_steps,
        "detect": t.detect_steps,
        "rotation": t.rotation_steps,
    }[stage]


HEAD_MODULES = ("mask_head", "fc1", "bn_fc1", "dropout", "fc2")  # the discriminator's heads; the rest: the trunk
HEADS = tuple(f"{m}." for m in HEAD_MODULES)


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


def train(cfg: Config, run_dir: Path, progress: bool = True) -> dict:
    """Run (or resume) every stage in `cfg.train.stages`; returns the last logged metrics."""
    info = dist.setup()
    run_dir = Path(run_dir)
    stages = [s.strip() for s in cfg.train.stages.split(",") if s.strip()]
    if unknown := set(stages) - set(STAGES):
        raise ValueError(f"unknown stages {sorted(unknown)}; stages are {', '.join(STAGES)}")

    # Resume if this run folder has a checkpoint: it carries its own config.
    state = None
    if (run_dir / CHECKPOINT).exists():
        state = checkpoint.load(run_dir / CHECKPOINT)
        stored = Config.from_dict(state["config"])
        if stored.model != cfg.model:
            raise ValueError(f"{run_dir} holds a run with another model config: resume it as is or use a new --run-dir")
        finished = [s for s in stages if s in state["completed"]]
        if changed := [s for s in finished if stage_steps(s, cfg) != stage_steps(s, stored)]:
            raise ValueError(
                f"{', '.join(changed)} already finished in {run_dir} at {stage_steps(changed[0], stored)} steps: "
                "to train longer, start a new --run-dir with --init_from pointing at this checkpoint"
            )
        if len(finished) == len(stages):
            log.info("%s: every stage asked for (%s) has already finished; nothing to do", run_dir, ", ".join(stages))
            dist.teardown()
            return {}
        log.info("resuming %s from stage %s step %d", run_dir, state["stage"], state["step"])
    elif "spot" in stages and "ae" not in stages and not (cfg.train.init_from and "ae" in cfg.train.init_networks):
        log.warning("the spot stage without the ae stage or --init_from: its autoencoder stays untrained")
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(dump(cfg))
        forget_records_after(run_dir, state)
    dist.barrier()
    torch.manual_seed(cfg.train.seed + info.rank)

    # Construct networks.
    nets = build_networks(cfg.model)
    if state is not None:
        for name, sd in state["networks"].items():
            nets[name].load_state_dict(sd)
    elif cfg.train.init_from:
        init = checkpoint.load(Path(cfg.train.init_from))
        for name in cfg.train.init_networks.split(","):
            if name not in nets or name not in init["networks"]:
                raise ValueError(
                    f"init_networks: {name!r} is not one of {cfg.train.init_from}'s {sorted(init['networks'])}"
                )
            try:
                nets[name].load_state_dict(init["networks"][name])
            except RuntimeError as exc:  # another width or architecture: its first mismatch says which
                lines = str(exc).splitlines()
                first = lines[1].strip() if len(lines) > 1 else str(exc)
                raise ValueError(f"{name} in {cfg.train.init_from} does not fit this model config: {first}") from None
        log.info("initialised %s from %s", cfg.train.init_networks, cfg.train.init_from)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    for m in nets.values():
        m.to(info.device, memory_format=memory_format)

    # Data.
    data_cfg = cfg.data
    size = cfg.model.ae_size or cfg.model.image_size
    train_set = ImageArrayDataset(
        load_images(data_cfg.train, data_cfg.root or None, data_cfg.cache_dir or None, size),
        train_transform(data_cfg, size),
    )
    val_set = ImageArrayDataset(
        load_images(data_cfg.val, data_cfg.root or None, data_cfg.cache_dir or None, size),
        eval_transform(data_cfg, size),
    )
    # A fixed random sample of held-out images (the files are sorted by class).
    pick = torch.randperm(len(val_set), generator=torch.Generator().manual_seed(0))[
        : cfg.train.eval_batches * cfg.train.batch_size
    ]
    val_batches = (
        [
            (images.to(info.device, memory_format=memory_format), labels.to(info.device))
            for images, labels in DataLoader(Subset(val_set, pick.tolist()), batch_size=cfg.train.batch_size)
        ]
        if info.is_main
        else []
    )
    run = Run(cfg, info, run_dir, train_set, val_batches, MetricLog(run_dir) if info.is_main else None, progress)

    completed = list(state["completed"]) if state else []
    wall_time = state.get("wall_time", 0.0) if state else 0.0
    if state is not None:  # where the run stopped: mid-stage, or at the end of one and so before the next
        resume_random_state(state, info, cfg.train.seed)
    last = {}
    for stage in stages:
        if stage in completed:
            continue
        resume = state if state and state["stage"] == stage else None
        last, wall_time = run_stage(stage, nets, run, resume, completed, wall_time)
        if last.get("stopped_at_chance"):
            log.warning("%s: %s stopped at step %d, its held-out pretext accuracy at chance", run_dir, stage, last["step"])
            break
        completed.append(stage)
        state = None
    if run.metric_log:
        run.metric_log.close()
    dist.barrier()
    dist.teardown()
    return last


def resume_random_state(state: dict, info: dist.DistInfo, seed: int) -> None:
    """The checkpoint holds the main process's random state, so one process continues exactly where it
    stopped. Under DDP the other processes reseed from their rank and the stopping point: they still draw
    masks of their own, though not those an uninterrupted run would have (docs/training.md)."""
    if info.rank == 0:
        checkpoint.set_rng_state(state["rng"])
    else:
        where = (STAGES.index(state["stage"]) + 1) * 1_000_003 + state["step"]
        reseed = seed + info.rank + 7_919 * where
        torch.manual_seed(reseed)
        random.seed(reseed)


@dataclass
class Run:
    """What every stage of one run shares."""

    cfg: Config
    info: dist.DistInfo
    run_dir: Path
    train_set: ImageArrayDataset
    val_batches: list[tuple[torch.Tensor, torch.Tensor]]
    metric_log: MetricLog | None
    progress: bool


def run_stage(stage: str, nets: dict, run: Run, resume: dict | None, completed: list[str], wall_time: float):
    """Train one stage to its step count (from `resume` if given); returns (last metrics, wall time)."""
    cfg, info, run_dir, metric_log, val_batches, train_set = (
        run.cfg,
        run.info,
        run.run_dir,
        run.metric_log,
        run.val_batches,
        run.train_set,
    )
    t = cfg.train
    total = stage_steps(stage, cfg)
    trained = set_phase(nets, stage, cfg)
    optimizer = make_optimizer(trained, cfg)
    step, epoch, position = 0, 0, 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        step, epoch, position = resume["step"], resume["epoch"], resume["position"]
    wrapped = {k: DDP(m) if info.distributed else m for k, m in nets.items() if k in trained}
    step_nets = {**nets, **wrapped}
    if t.compile:
        step_nets = {k: torch.compile(m) if k in trained else m for k, m in step_nets.items()}

    sampler = ResumableSampler(train_set, info.world_size, info.rank, t.seed)
    if len(sampler) + position < t.batch_size:
        raise ValueError(f"{len(train_set)} training images are fewer than one batch of {t.batch_size} per process")
    loader_rng = torch.Generator()  # DataLoader draws its worker base seed here, not from the global RNG
    loader = DataLoader(
        train_set,
        generator=loader_rng,
        batch_size=t.batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        drop_last=True,
        pin_memory=info.device.type == "cuda",
        persistent_workers=cfg.data.num_workers > 0,
    )
    per_epoch = sampler.num_samples

    def batches():
        nonlocal epoch, position
        while True:
            sampler.set_position(epoch, position)
            loader_rng.manual_seed(t.seed * 100_003 + epoch)  # workers' augmentation seeds: per epoch
            for images, labels in loader:
                position += t.batch_size
                if per_epoch - position < t.batch_size:
                    epoch, position = epoch + 1, 0
                yield images, labels

    def save_checkpoint():
        if info.is_main:
            checkpoint.save(
                run_dir / CHECKPOINT,
                {
                    "config": cfg.to_dict(),
                    "stage": stage,
                    "step": step,
                    "epoch": epoch,
                    "position": position,
                    "completed": completed + ([stage] if step >= total else []),
                    "networks": {k: m.state_dict() for k, m in nets.items()},
                    "optimizer": optimizer.state_dict(),
                    "rng": checkpoint.rng_state(),
                    "wall_time": wall_time + (time.time() - started),
                    "world_size": info.world_size,
                    "hardware": dist.describe_hardware(),
                    "command": shlex.join(sys.orig_argv),
                },
            )
        dist.barrier()

    images_per_step = t.batch_size * info.world_size
    bar = tqdm(
        total=total,
        initial=step,
        desc=stage,
        unit="step",
        disable=not (run.progress and info.is_main),
        dynamic_ncols=True,
    )
    started = time.time()
    window_start, window_images, sums, count = time.time(), 0, {}, 0
    last = {}
    stream = batches()
    while step < total:
        images, labels = next(stream)
        labels = labels.to(info.device, non_blocking=True)
        images = images.to(
            info.device,
            non_blocking=True,
            memory_format=torch.channels_last if t.channels_last else torch.contiguous_format,
        )
        for group in optimizer.param_groups:
            group["lr"] = t.lr * lr_factor(step, total, cfg) * group.get("lr_scale", 1.0)

        # Forward both halves once, then back-propagate each loss into its own network only.
        with dist.autocast(info.device, t.amp):
            losses, scalars = STEPS[stage](step_nets, images, labels, cfg)
        if "repair" in losses and ("repair" not in trained or step % t.repair_every):
            del losses["repair"]  # the discriminator alone takes this step (or this whole stage)
        optimizer.zero_grad(set_to_none=True)
        backward_each(losses, trained)
        scale_bias_grads(trained, t.bias_grad_scale)
        optimizer.step()
        step += 1

        # Report.
        window_images += images_per_step
        for k, v in scalars.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        count += 1
        bar.update(1)
        if step % t.log_every == 0 or step == total:
            elapsed = time.time() - window_start
            metrics = {k: float(dist.mean_across(torch.tensor(v / count))) for k, v in sums.items()}
            metrics["img_per_s"] = window_images / max(elapsed, 1e-9)
            metrics["lr"] = optimizer.param_groups[0]["lr"]
            metrics["epoch"] = epoch
            if info.is_main:
                metrics.update(evaluate(nets, val_batches, cfg, stage))
                metric_log.write(stage, step, metrics)
                bar.set_postfix(
                    {k.split("/")[-1]: f"{v:.3g}" for k, v in metrics.items() if k.startswith(("loss", "val/"))}
                    | {"img/s": f"{metrics['img_per_s']:.0f}"}
                )
            last = metrics
            window_start, window_images, sums, count = time.time(), 0, {}, 0
            if t.stop_at_chance_step and step - t.log_every < t.stop_at_chance_step <= step:
                stop = torch.tensor(float(info.is_main and at_chance(stage, metrics, cfg)))
                if float(dist.mean_across(stop)) > 0:  # the main process decides for all
                    save_checkpoint()
                    last = {**last, "stopped_at_chance": True, "step": step}
                    break
        if info.is_main and stage not in ("supervised", "rotation") and (step % t.sample_every == 0 or step == total):
            grid = save_samples(nets, val_batches[0][0], cfg, stage, run_dir / "samples" / f"{stage}-{step:07d}.png")
            metric_log.image(stage, step, grid)
        if step % t.ckpt_every == 0 or step == total:
            save_checkpoint()
    bar.close()
    wall_time += time.time() - started
    if info.is_main:
        summary = {"stage": stage, "steps": step, "wall_time_s": wall_time, **last}
        with open(run_dir / "summary.jsonl", "a") as f:
            f.write(json.dumps(summary) + "\n")
    return last, wall_time


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
    if stage in SPOTTING:
        gen = torch.Generator(device=images.device).manual_seed(0)
        keep = sample_keep_mask(len(images), z.shape[-2:], cfg.train.drop_rate, images.device, gen)
        damaged = damage(z, keep)
        repaired = nets["repair"](ae, damaged, keep) if cfg.model.repair else ae.decode(damaged)
        _, mask_logits = nets["disc"](to_disc_input(disc_size(repaired, cfg)))
        rows += [ae.decode(damaged), repaired, 1 - keep, torch.sigmoid(-mask_logits.float())]  # white = dropped
    return rows
