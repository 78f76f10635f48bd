"""The training loop: stage 1 trains the autoencoder, stage 2 the repair net against the discriminator;
an optional "detect" stage then trains the discriminator alone against the frozen repair net; the
"supervised" and "rotation" stages are the comparison rows (training/stages.py has the table).

`train(cfg, run_dir)` runs the stages named in `cfg.train.stages`, resuming from `run_dir/checkpoint.pt`
when it exists. It works the same on one CPU and under `torchrun` on many GPUs.
"""

from __future__ import annotations

import json
import logging
import random
import shlex
import sys
import time
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from contract.spec import MAX_ZOOM

from . import checkpoint, dist
from .config import Config, dump
from .data import ImageArrayDataset, ResumableSampler, default_data_root, eval_transform, load_images, train_transform
from .edit_tiles import EditedTiles, load_photos
from .edits import parse_kinds
from .heldout import at_chance, eval_mode, evaluate, save_samples
from .log import MetricLog, forget_records_after
from .networks import build_networks
from .optim import backward_each, make_optimizer, scale_bias_grads, set_lr
from .stages import STAGES, set_phase, stage_steps
from .steps import STEPS

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


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
    edit_set: EditedTiles | None = None  # stage "edits": photo tiles and edited copies, and held-out ones
    edit_val_batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def train(cfg: Config, run_dir: Path, progress: bool = True, state: dict | None = None) -> dict:
    """Run (or resume) every stage in `cfg.train.stages`; returns the last logged metrics. `state`: the
    run folder's checkpoint when the caller has loaded it already (read from `run_dir` otherwise)."""
    info = dist.setup()
    run_dir = Path(run_dir)
    stages = [s.strip() for s in cfg.train.stages.split(",") if s.strip()]
    if unknown := set(stages) - set(STAGES):
        raise ValueError(f"unknown stages {sorted(unknown)}; stages are {', '.join(STAGES)}")
    check_edit_settings(cfg, stages)
    if state is None and (run_dir / CHECKPOINT).exists():
        state = checkpoint.load(run_dir / CHECKPOINT)
    if state is not None and nothing_left(state, cfg, stages, run_dir):
        dist.teardown()
        return {}
    if state is None and "spot" in stages and "ae" not in stages and not initialises(cfg, "ae"):
        log.warning("the spot stage without the ae stage or --init_from: its autoencoder stays untrained")
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(dump(cfg))
        forget_records_after(run_dir, state)
    dist.barrier()
    torch.manual_seed(cfg.train.seed + info.rank)

    nets = build_nets(cfg, state, info.device)
    metric_log = MetricLog(run_dir) if info.is_main else None
    run = Run(cfg, info, run_dir, training_set(cfg), heldout_batches(cfg, info), metric_log, progress)
    if "edits" in stages:
        run.edit_set, run.edit_val_batches = edit_sets(cfg, info, mask_grid(nets["disc"], cfg, info.device))
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
            log.warning(
                "%s: %s stopped at step %d, its held-out pretext accuracy at chance", run_dir, stage, last["step"]
            )
            break
        completed.append(stage)
        state = None
    if metric_log:
        metric_log.close()
    dist.barrier()
    dist.teardown()
    return last


def check_edit_settings(cfg: Config, stages: list[str]) -> None:
    """Refuse edits-stage settings that would train on something else than they say, before any step."""
    t = cfg.train
    if not 1 <= cfg.data.edit_zoom <= MAX_ZOOM:
        raise ValueError(f"data.edit_zoom must be in [1, {MAX_ZOOM}] (model.json spot_zoom), got {cfg.data.edit_zoom}")
    if not 0 <= t.edit_paper_share <= 1:
        raise ValueError(f"train.edit_paper_share must be in [0, 1], got {t.edit_paper_share}")
    if t.edit_paper_share and not t.edit_generator:
        raise ValueError("train.edit_paper_share needs train.edit_generator: the checkpoint that makes the pairs")
    if not t.edit_generator:
        return
    if trained := sorted({"ae", "spot"} & set(stages)):
        raise ValueError(f"edit_generator: stages {trained} would train the generator's networks; use another run")
    if t.init_from and (both := sorted({"ae", "repair"} & set(t.init_networks.split(",")))):
        raise ValueError(f"edit_generator and init_networks both give {both}: name them in one only")
    if cfg.model.ae_size not in (0, cfg.model.image_size):
        raise ValueError("edit_generator makes its pairs from the detector's tiles: ae_size must be image_size")


def nothing_left(state: dict, cfg: Config, stages: list[str], run_dir: Path) -> bool:
    """Check that the stored run can go on as asked; True when every stage asked for has finished."""
    stored = Config.from_dict(state["config"])
    if stored.model != cfg.model:
        raise ValueError(f"{run_dir} holds a run with another model config: resume it as is or use a new --run-dir")
    edit_settings = ("data.edit_zoom", "train.edit_generator", "train.edit_paper_share")
    if changed := [k for k in edit_settings if attrgetter(k)(stored) != attrgetter(k)(cfg)]:
        raise ValueError(f"{run_dir} trained with other {', '.join(changed)}: resume it as is or use a new --run-dir")
    finished = [s for s in stages if s in state["completed"]]
    if changed := [s for s in finished if stage_steps(s, cfg) != stage_steps(s, stored)]:
        raise ValueError(
            f"{', '.join(changed)} already finished in {run_dir} at {stage_steps(changed[0], stored)} steps: "
            "to train longer, start a new --run-dir with --init_from pointing at this checkpoint"
        )
    if len(finished) == len(stages):
        log.info("%s: every stage asked for (%s) has already finished; nothing to do", run_dir, ", ".join(stages))
        return True
    log.info("resuming %s from stage %s step %d", run_dir, state["stage"], state["step"])
    return False


def initialises(cfg: Config, name: str) -> bool:
    return bool(cfg.train.init_from) and name in cfg.train.init_networks.split(",")


def build_nets(cfg: Config, state: dict | None, device: torch.device) -> dict:
    """The run's networks: from its checkpoint when resuming, else fresh (some from `init_from`)."""
    nets = build_networks(cfg.model, warp=cfg.train.warp_weight > 0)
    if state is not None:
        for name, sd in state["networks"].items():
            nets[name].load_state_dict(sd)
    elif cfg.train.init_from:
        init = checkpoint.load(Path(cfg.train.init_from))
        load_named(nets, init["networks"], cfg.train.init_networks.split(","), cfg.train.init_from, "init_networks")
        log.info("initialised %s from %s", cfg.train.init_networks, cfg.train.init_from)
    if state is None and cfg.train.edit_generator:
        load_generator(nets, Path(cfg.train.edit_generator))
    for m in nets.values():
        m.to(device, memory_format=memory_format(cfg))
    return nets


def load_named(nets: dict, stored: dict, names: list[str], path, setting: str) -> None:
    """The networks `names` of a checkpoint at `path` (`stored`: its networks) into `nets`; an error names the
    setting that asked for them, or the first mismatch of another width or architecture."""
    for name in names:
        if name not in nets or name not in stored:
            raise ValueError(f"{setting}: {name!r} is not one of {path}'s {sorted(stored)}")
        try:
            nets[name].load_state_dict(stored[name])
        except RuntimeError as exc:
            lines = str(exc).splitlines()
            first = lines[1].strip() if len(lines) > 1 else str(exc)
            raise ValueError(f"{name} in {path} does not fit this model config: {first}") from None


def load_generator(nets: dict, path: Path) -> None:
    """Another run's autoencoder and repair net: the paper's pairs beside the edits (stage "edits", which
    trains the discriminator alone: they stay frozen, in eval mode; check_edit_settings refuses the rest)."""
    state = checkpoint.load(path)
    if not Config.from_dict(state["config"]).model.repair:
        raise ValueError(f"edit_generator: {path} trained without a repair net (model.repair false)")
    load_named(nets, state["networks"], ["ae", "repair"], path, "edit_generator")
    log.info("the paper's pairs made by %s's autoencoder + repair net", path)


def memory_format(cfg: Config) -> torch.memory_format:
    return torch.channels_last if cfg.train.channels_last else torch.contiguous_format


def training_set(cfg: Config) -> ImageArrayDataset:
    size = cfg.model.ae_size or cfg.model.image_size
    images = load_images(cfg.data.train, cfg.data.root or None, cfg.data.cache_dir or None, size)
    return ImageArrayDataset(images, train_transform(cfg.data, size))


def heldout_batches(cfg: Config, info: dist.DistInfo) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed random sample of held-out images (the files are sorted by class), on the main process only."""
    if not info.is_main:
        return []
    size = cfg.model.ae_size or cfg.model.image_size
    images = load_images(cfg.data.val, cfg.data.root or None, cfg.data.cache_dir or None, size)
    val_set = ImageArrayDataset(images, eval_transform(cfg.data, size))
    pick = torch.randperm(len(val_set), generator=torch.Generator().manual_seed(0))
    subset = Subset(val_set, pick[: cfg.train.eval_batches * cfg.train.batch_size].tolist())
    return [
        (x.to(info.device, memory_format=memory_format(cfg)), y.to(info.device))
        for x, y in DataLoader(subset, batch_size=cfg.train.batch_size)
    ]


def edit_sets(
    cfg: Config, info: dist.DistInfo, grid: int
) -> tuple[EditedTiles, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Stage "edits": tiles of `data.edit_photos` with edited copies, and a fixed held-out set of
    `eval_batches` batches from `data.edit_val_photos` (main process only); masks on a `grid` x `grid` grid."""
    if not cfg.data.edit_photos:
        raise ValueError("the edits stage needs --data.edit_photos (comma-separated photo folders)")
    root = Path(cfg.data.root or default_data_root())
    size, kinds = cfg.model.image_size, parse_kinds(cfg.train.edit_kinds)
    photos = load_photos(cfg.data.edit_photos, root, cfg.data.cache_dir or None)
    zoom = cfg.data.edit_zoom
    train = EditedTiles(photos, size, grid, kinds, 400 * cfg.train.batch_size, zoom=zoom)
    if not info.is_main:
        return train, []
    n = cfg.train.eval_batches * cfg.train.batch_size
    val = EditedTiles(load_photos(cfg.data.edit_val_photos, root), size, grid, kinds, n, fixed=True, zoom=zoom)
    return train, [(x.to(info.device), y.to(info.device)) for x, y in DataLoader(val, batch_size=cfg.train.batch_size)]


@torch.no_grad()
def mask_grid(disc: nn.Module, cfg: Config, device: torch.device) -> int:
    """The side of the run's discriminator's drop-mask grid (its mask head's output on one blank image)."""
    with eval_mode({"disc": disc}):
        _, mask_logits = disc(torch.zeros(1, 3, cfg.model.image_size, cfg.model.image_size, device=device))
    return mask_logits.shape[-1]


def resume_random_state(state: dict, info: dist.DistInfo, seed: int) -> None:
    """The checkpoint holds the main process's random state, so one process continues exactly where it
    stopped. Under DDP the other processes reseed from their rank and the stopping point: they still draw
    masks of their own, though not those an uninterrupted run would have (docs/training.md)."""
    if info.rank == 0:
        checkpoint.set_rng_state(state["rng"])
    else:
        where = (list(STAGES).index(state["stage"]) + 1) * 1_000_003 + state["step"]
        reseed = seed + info.rank + 7_919 * where
        torch.manual_seed(reseed)
        random.seed(reseed)


class BatchStream:
    """Training batches in a resumable order: (epoch, position) is where the next batch starts."""

    def __init__(self, train_set: ImageArrayDataset, cfg: Config, info: dist.DistInfo, epoch: int, position: int):
        t = cfg.train
        self.batch_size, self.seed, self.epoch, self.position = t.batch_size, t.seed, epoch, position
        self.sampler = ResumableSampler(train_set, info.world_size, info.rank, t.seed)
        if len(self.sampler) + position < t.batch_size:
            raise ValueError(f"{len(train_set)} training images are fewer than one batch of {t.batch_size} per process")
        self.loader_rng = torch.Generator()  # DataLoader draws its worker base seed here, not from the global RNG
        self.loader = DataLoader(
            train_set,
            generator=self.loader_rng,
            batch_size=t.batch_size,
            sampler=self.sampler,
            num_workers=cfg.data.num_workers,
            drop_last=True,
            pin_memory=info.device.type == "cuda",
            persistent_workers=cfg.data.num_workers > 0,
        )

    def __iter__(self):
        per_epoch = self.sampler.num_samples
        while True:
            self.sampler.set_position(self.epoch, self.position)
            self.loader_rng.manual_seed(self.seed * 100_003 + self.epoch)  # workers' augmentation seeds: per epoch
            for images, labels in self.loader:
                self.position += self.batch_size
                if per_epoch - self.position < self.batch_size:
                    self.epoch, self.position = self.epoch + 1, 0
                yield images, labels


class Window:
    """The training scalars since the last report, averaged (across processes too), and images per second."""

    def __init__(self):
        self.start, self.images, self.sums, self.count = time.time(), 0, {}, 0

    def add(self, scalars: dict, images: int) -> None:
        self.images += images
        for k, v in scalars.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def metrics(self) -> dict[str, float]:
        out = {k: float(dist.mean_across(torch.tensor(v / self.count))) for k, v in self.sums.items()}
        return out | {"img_per_s": self.images / max(time.time() - self.start, 1e-9)}


class StageRun:
    """One stage of a run: the networks it trains, their optimiser and its batches, from where it stopped."""

    def __init__(self, stage: str, nets: dict, run: Run, resume: dict | None):
        cfg, info = run.cfg, run.info
        self.stage, self.nets, self.run, self.total = stage, nets, run, stage_steps(stage, cfg)
        self.trained = set_phase(nets, stage, cfg)
        self.optimizer = make_optimizer(self.trained, cfg)
        self.step = 0
        if resume is not None:
            self.optimizer.load_state_dict(resume["optimizer"])
            self.step = resume["step"]
        where = (resume["epoch"], resume["position"]) if resume else (0, 0)
        dataset = run.edit_set if stage == "edits" else run.train_set
        self.val_batches = run.edit_val_batches if stage == "edits" else run.val_batches
        self.stream = BatchStream(dataset, cfg, info, *where)
        wrapped = {k: DDP(m) if info.distributed else m for k, m in nets.items() if k in self.trained}
        self.step_nets = {**nets, **wrapped}
        if cfg.train.compile:
            self.step_nets = {k: torch.compile(m) if k in self.trained else m for k, m in self.step_nets.items()}

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        """Forward both halves once, then back-propagate each loss into its own network only."""
        cfg, device, t = self.run.cfg, self.run.info.device, self.run.cfg.train
        labels = labels.to(device, non_blocking=True)
        images = images.to(device, non_blocking=True, memory_format=memory_format(cfg))
        set_lr(self.optimizer, self.step, self.total, cfg)
        with dist.autocast(device, t.amp):
            losses, scalars = STEPS[self.stage](self.step_nets, images, labels, cfg)
        if "repair" in losses and ("repair" not in self.trained or self.step % t.repair_every):
            del losses["repair"]  # the discriminator alone takes this step (or this whole stage)
        self.optimizer.zero_grad(set_to_none=True)
        backward_each(losses, self.trained)
        scale_bias_grads(self.trained, t.bias_grad_scale)
        self.optimizer.step()
        self.step += 1
        return scalars

    def report(self, window: Window, bar: tqdm) -> dict:
        """The window's training figures, plus the held-out ones (main process), logged."""
        metrics = window.metrics() | {"lr": self.optimizer.param_groups[0]["lr"], "epoch": self.stream.epoch}
        if self.run.info.is_main:
            metrics.update(evaluate(self.nets, self.val_batches, self.run.cfg, self.stage))
            self.run.metric_log.write(self.stage, self.step, metrics)
            shown = {k.split("/")[-1]: f"{v:.3g}" for k, v in metrics.items() if k.startswith(("loss", "val/"))}
            bar.set_postfix(shown | {"img/s": f"{metrics['img_per_s']:.0f}"})
        return metrics

    def still_at_chance(self, metrics: dict) -> bool:
        """At the first report at or after `stop_at_chance_step`: is the pretext unlearnt? (the main process decides)"""
        t = self.run.cfg.train
        if not t.stop_at_chance_step or not self.step - t.log_every < t.stop_at_chance_step <= self.step:
            return False
        stop = torch.tensor(float(self.run.info.is_main and at_chance(self.stage, metrics, self.run.cfg)))
        return float(dist.mean_across(stop)) > 0

    def save(self, completed: list[str], wall_time: float) -> None:
        run = self.run
        if run.info.is_main:
            checkpoint.save(
                run.run_dir / CHECKPOINT,
                {
                    "config": run.cfg.to_dict(),
                    "stage": self.stage,
                    "step": self.step,
                    "epoch": self.stream.epoch,
                    "position": self.stream.position,
                    "completed": completed + ([self.stage] if self.step >= self.total else []),
                    "networks": {k: m.state_dict() for k, m in self.nets.items()},
                    "optimizer": self.optimizer.state_dict(),
                    "rng": checkpoint.rng_state(),
                    "wall_time": wall_time,
                    "world_size": run.info.world_size,
                    "hardware": dist.describe_hardware(),
                    "command": shlex.join(sys.orig_argv),
                },
            )
        dist.barrier()


def run_stage(stage: str, nets: dict, run: Run, resume: dict | None, completed: list[str], wall_time: float):
    """Train one stage to its step count (from `resume` if given); returns (last metrics, wall time)."""
    t, info = run.cfg.train, run.info
    s = StageRun(stage, nets, run, resume)
    bar = tqdm(
        total=s.total,
        initial=s.step,
        desc=stage,
        unit="step",
        disable=not (run.progress and info.is_main),
        dynamic_ncols=True,
    )
    started, window, last = time.time(), Window(), {}
    batches = iter(s.stream)
    while s.step < s.total:
        window.add(s.train_step(*next(batches)), t.batch_size * info.world_size)
        bar.update(1)
        if s.step % t.log_every == 0 or s.step == s.total:
            last, window = s.report(window, bar), Window()
            if s.still_at_chance(last):
                s.save(completed, wall_time + time.time() - started)
                last = {**last, "stopped_at_chance": True, "step": s.step}
                break
        if info.is_main and STAGES[stage].samples and (s.step % t.sample_every == 0 or s.step == s.total):
            path = run.run_dir / "samples" / f"{stage}-{s.step:07d}.png"
            run.metric_log.image(stage, s.step, save_samples(nets, run.val_batches[0][0], run.cfg, stage, path))
        if s.step % t.ckpt_every == 0 or s.step == s.total:
            s.save(completed, wall_time + time.time() - started)
    bar.close()
    wall_time += time.time() - started
    if info.is_main:
        summary = {"stage": stage, "steps": s.step, "wall_time_s": wall_time, **last}
        with open(run.run_dir / "summary.jsonl", "a") as f:
            f.write(json.dumps(summary) + "\n")
    return last, wall_time
