"""model.json as a typed spec: the fields the service relies on, checked when training writes the file
and when the service reads it, so a folder one side accepts the other can serve (models/README.md)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_ZOOM = 4.0


class SpecError(ValueError):
    """model.json is missing a field, or a field contradicts another; the message names it."""


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    input_size: int  # square: the model sees input_size x input_size RGB images
    mean: tuple[float, float, float]  # x = (pixel - mean) / std, pixels 0..255
    std: tuple[float, float, float]
    crop_fraction: float  # /features' centre crop: this fraction of the shorter side
    layers: tuple[str, ...]  # feature maps, conv1..conv5
    default_layer: str  # what /features returns unasked
    outputs: tuple[str, ...]  # every graph output, the layers and the heads
    mask_grid: int  # the drop mask is mask_grid x mask_grid cells, each input_size / mask_grid pixels wide
    spot_threshold: float  # /spot calls an image altered above this artifact score
    spot_zoom: float  # /spot tiles an image scaled by this (the detector's training tiles were)
    sha256: str  # of model.onnx
    raw: dict[str, Any] = field(repr=False, compare=False)  # everything model.json holds

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> ModelSpec:
        try:
            pre = meta["preprocessing"]
            layers = tuple(meta["layers"])
            spec = cls(
                name=str(meta["name"]),
                version=str(meta["version"]),
                input_size=int(pre["input_size"]),
                mean=tuple(float(v) for v in pre["mean"]),
                std=tuple(float(v) for v in pre["std"]),
                crop_fraction=float(pre.get("crop_fraction", 1.0)),
                layers=layers,
                default_layer=str(meta.get("default_layer", layers[-1] if layers else "")),  # older folders: the last
                outputs=tuple(o["name"] for o in meta["outputs"]),
                mask_grid=int(meta["mask_grid"]),
                spot_threshold=float(meta.get("spot_threshold", 0.5)),
                spot_zoom=float(meta.get("spot_zoom", 1.0)),  # older folders: their own size
                sha256=str(meta["sha256"]),
                raw=meta,
            )
        except KeyError as exc:
            raise SpecError(f"model.json has no {exc.args[0]!r}") from None
        except (TypeError, ValueError, IndexError) as exc:
            raise SpecError(f"model.json: a field has the wrong type ({exc})") from None
        spec.check()
        return spec

    @classmethod
    def read(cls, folder: Path) -> ModelSpec:
        path = Path(folder) / "model.json"
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(meta)

    def check(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3 or not all(self.std):
            raise SpecError(f"model.json: mean and std need 3 values each, std non-zero: {self.mean}, {self.std}")
        if not 0 < self.crop_fraction <= 1:
            raise SpecError(f"model.json: crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if not self.layers or not set(self.layers) <= set(self.outputs):
            raise SpecError(f"model.json: layers {list(self.layers)} must be outputs {list(self.outputs)}")
        if self.default_layer not in self.layers:
            raise SpecError(f"model.json: default_layer {self.default_layer!r} is not one of {list(self.layers)}")
        if self.mask_grid <= 0 or self.input_size % self.mask_grid:
            raise SpecError(f"model.json: mask_grid {self.mask_grid} must divide input_size {self.input_size}")
        if not 0 <= self.spot_threshold <= 1:
            raise SpecError(f"model.json: spot_threshold must be in [0, 1], got {self.spot_threshold}")
        if not 1 <= self.spot_zoom <= MAX_ZOOM:  # each step up multiplies a photo's tiles by its square
            raise SpecError(f"model.json: spot_zoom must be in [1, {MAX_ZOOM}], got {self.spot_zoom}")

    def verify(self, onnx_path: Path) -> None:
        """The model file is the one model.json describes (not corrupt, not replaced)."""
        if file_sha256(onnx_path) != self.sha256:
            raise SpecError(f"{onnx_path} does not match the sha256 in model.json: corrupt or replaced")
