"""Typed training configuration: presets from YAML files plus `--key=value` overrides."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class ModelConfig:
    """Network shapes. Channel counts are the paper's, scaled by `width`."""

    image_size: int = 96  # discriminator input (and autoencoder input unless ae_size is set)
    ae_size: int = 0  # autoencoder resolution; 0 = image_size (imagenet preset: 208 -> 13x13 grid)
    ae_stem_channels: int = 32  # conv_0, 3x3
    ae_channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512])  # stride-2 levels
    disc_channels: list[int] = field(default_factory=lambda: [96, 256, 384, 384, 256])
    disc_fc: int = 4096
    disc_conv1_stride: int = 4  # 4 at >= 64 px; 2 at 32 px keeps conv5 at the encoder grid
    disc_padding: str = "same"  # "same" (STL-10 code) or "valid" (Caffe AlexNet at 227 px)
    width: float = 1.0  # multiplies every channel count (0.5 = the CPU-trainable half width)
    repair: bool = True  # False = ablation: damaged features are decoded as they are
    num_classes: int = 0  # > 0 adds the classifier head of the "supervised" comparison row


@dataclass
class DataConfig:
    """Where images come from and how they are augmented."""

    train: str = "tiny-imagenet:train"  # source spec, see training/data.py
    val: str = "tiny-imagenet:val"
    root: str = ""  # shared data folder; "" = ../shared/data beside the repo, or $SPOT_DATA
    cache_dir: str = ""  # uint8 decode cache; "" = ~/.cache/spot-artifacts or $SPOT_CACHE
    crop_scale_min: float = 0.333  # random area crop (Preprocessor.py)
    brightness: float = 0.25  # multiplicative, ~ +-32/255 at mid grey
    saturation: float = 0.5  # factor in [0.5, 1.5]
    test_crop: float = 0.85  # central crop kept at test time
    num_workers: int = 2
    edit_photos: str = ""  # stage "edits": comma-separated photo folders (under root unless absolute) or data sources
    edit_val_photos: str = "photos/debian_mate_nature"  # its held-out photos, scored at every log interval
    edit_zoom: float = 1.0  # stage "edits": tiles show photos at zoom/2..zoom; /spot at zoom (model.json spot_zoom)


@dataclass
class TrainConfig:
    """Schedule, losses and logging."""

    stages: str = "ae,spot"  # which phases to run, in order
    ae_steps: int = 195_250
    spot_steps: int = 195_250
    supervised_steps: int = 0  # the "supervised" row: the discriminator trained with labels
    detect_steps: int = 0  # stage "detect": the discriminator alone, against the final (frozen) repair net
    detect_heads_only: bool = False  # detect trains the heads alone: conv1..conv5 (the features) stay as they were
    rotation_steps: int = 0  # stage "rotation": the trunk classifies quarter-turns (RotNet), its own pretext row
    edits_steps: int = 0  # stage "edits": the discriminator tells photo tiles from edited copies (training/edits.py)
    edit_kinds: str = "all"  # which edits: "all", a comma-separated list, "-kind" leaves one out
    edit_generator: str = ""  # stage "edits": a checkpoint whose autoencoder + repair net make the paper's pairs
    edit_paper_share: float = 0.0  # the share of each batch's pairs that are the paper's (needs edit_generator)
    rotation_all_four: bool = False  # stage "rotation": every image at all four turns (RotNet), batch_size images
    rotation_weight: float = 0.0  # > 0 in stage "spot": the combined variant, the game plus rotations of real images
    warp_weight: float = 0.0  # > 0 in stage "rotation": the trunk also tells warped pictures (training/warps.py)
    stop_at_chance_step: int = 0  # > 0: at the first log at or past this step, a stage whose held-out pretext
    chance_margin: float = 0.05  # accuracy is within chance_margin of chance stops the run (0 = never)
    batch_size: int = 128  # per process; the discriminator sees 2x this
    lr: float = 3e-4
    beta1: float = 0.5
    eps: float = 1e-5
    weight_decay: float = 5e-5  # the TF L2 5e-5, coupled (Adam, not AdamW)
    final_lr_fraction: float = 0.01
    decay_fraction: float = 0.9  # lr reaches final_lr_fraction at this fraction of the steps
    drop_rate: float = 0.7  # fraction of encoder locations dropped (paper code: keep 0.3)
    ae_weight: float = 30.0
    rec_weight: float = 30.0  # repair net's masked MSE at kept locations
    adv_weight: float = 1.0
    mask_weight: float = 0.1  # 0 = ablation: no mask head loss
    raw_real_fraction: float = 0.0  # share of the "real" half given as raw images, not reconstructions (0 = paper)
    repair_lr_scale: float = 1.0  # the repair net's lr as a fraction of lr (< 1 slows it: a stronger discriminator)
    repair_every: int = 1  # update the repair net every k-th step, the discriminator every step
    paper_loss_quirk: bool = False  # repair loss also contains the discriminator loss, as in the TF code
    bias_grad_scale: float = 2.0  # TF code multiplies bias gradients by 2
    amp: str = "auto"  # "bf16", "none", or "auto" (bf16 on CUDA with bf16 support and on CPU)
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    log_every: int = 50
    sample_every: int = 1000
    ckpt_every: int = 500
    eval_batches: int = 8  # held-out batches scored at each log interval
    init_from: str = ""  # checkpoint whose networks start this run (e.g. a shared stage-1 autoencoder)
    init_networks: str = "ae"  # which of its networks to take, comma-separated


@dataclass
class Config:
    preset: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        cfg = cls()
        d = dict(d)
        cfg.preset = str(d.pop("preset", cfg.preset))
        for key, value in _flatten(d).items():
            set_key(cfg, key, value)
        return cfg


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def valid_keys() -> list[str]:
    sections = {k: v for k, v in Config().to_dict().items() if isinstance(v, dict)}
    return sorted(_flatten(sections))


def _resolve_key(key: str) -> str:
    """Full dotted name for `key`; a bare field name is accepted when it is unambiguous."""
    keys = valid_keys()
    if key in keys:
        return key
    matches = [k for k in keys if k.split(".")[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise KeyError(f"ambiguous config key {key!r}: use one of {matches}")
    raise KeyError(f"unknown config key {key!r}; valid keys: {', '.join(keys)}")


def _coerce(value, typ, key: str):
    """Convert a YAML or command-line value to the field's declared type, or fail loudly."""
    origin = typing.get_origin(typ)
    if isinstance(value, str) and typ in (int, float):
        try:
            number = float(value)
        except ValueError:
            raise TypeError(f"{key}: expected {typ.__name__}, got {value!r}") from None
        if typ is int and not number.is_integer():
            raise TypeError(f"{key}: expected int, got {value!r}")
        return typ(number)
    if isinstance(value, str) and typ is not str:
        value = yaml.safe_load(value)  # "0.5" -> 0.5, "[1, 2]" -> [1, 2], "true" -> True
    if origin is list:
        (item,) = typing.get_args(typ)
        if not isinstance(value, list):
            raise TypeError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item, key) for v in value]
    if typ is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{key}: expected true/false, got {value!r}")
        return value
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is str and not isinstance(value, str):
        return str(value)
    if not isinstance(value, typ) or isinstance(value, bool) and typ is not bool:
        raise TypeError(f"{key}: expected {typ.__name__}, got {value!r}")
    return value


def set_key(cfg: Config, key: str, value) -> None:
    section_name, name = _resolve_key(key).split(".")
    section = getattr(cfg, section_name)
    hints = typing.get_type_hints(type(section))
    setattr(section, name, _coerce(value, hints[name], f"{section_name}.{name}"))


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(preset: str, overrides: list[str] | dict | None = None) -> Config:
    """Preset file (or a path to a YAML file) plus overrides, type-checked."""
    path = Path(preset) if preset.endswith((".yaml", ".yml")) else PRESET_DIR / f"{preset}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"unknown preset {preset!r}; presets: {', '.join(list_presets())}")
    cfg = Config.from_dict(yaml.safe_load(path.read_text()) or {})
    cfg.preset = path.stem
    apply_overrides(cfg, overrides or [])
    return cfg


def apply_overrides(cfg: Config, overrides: list[str] | dict) -> None:
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    for key, value in items:
        set_key(cfg, key, value)


def parse_override(arg: str) -> tuple[str, str]:
    if not arg.startswith("--") or "=" not in arg:
        raise ValueError(f"override {arg!r} must look like --key=value")
    key, value = arg[2:].split("=", 1)
    return key, value


def dump(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), indent=2)
