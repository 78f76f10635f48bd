"""The work every server in the peer comparison does, written once so that only the serving layer differs:
decode a JPEG, take the centre view, normalise, run the trunk through ONNX Runtime (the service's own
`ExportedModel`: the same sessions, thread settings and trunk-only graph), average-pool conv5."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from contract.views import centre_view
from service.model import ExportedModel

LAYER = "conv5"


def load_model() -> ExportedModel:
    """The model folder named by SPOT_MODEL_DIR (the bench sets it for every peer), on the CPU."""
    return ExportedModel(os.environ["SPOT_MODEL_DIR"], "cpu")


def view(model: ExportedModel, jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as im:
        rgb = np.asarray(im.convert("RGB"))
    return centre_view(rgb, model.size, model.crop_fraction)


def pooled_features(model: ExportedModel, jpegs: list[bytes]) -> np.ndarray:
    """[N, C]: conv5 average-pooled, one row per JPEG, in one ONNX Runtime run."""
    batch = model.normalize_batch([view(model, j) for j in jpegs])
    return model.run(batch, [LAYER])[LAYER].mean(axis=(2, 3))


def feature_maps(model: ExportedModel, images: np.ndarray) -> np.ndarray:
    """[N, C, H, W]: conv5 for a preprocessed NCHW float32 batch (the Open Inference Protocol rows)."""
    return model.run(images, [LAYER])[LAYER]
