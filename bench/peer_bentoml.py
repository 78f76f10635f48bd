"""The peer: the same exported model served by BentoML with its adaptive batching, doing the same work
as our `/features?layers=conv5&pool=avg` (decode, centre crop, resize, normalise, ONNX Runtime, average
pooling, JSON). Run in its own environment (`.venv-bentoml`, see bench/README.md):

    SPOT_MODEL_DIR=models/spot-tiny64 .venv-bentoml/bin/bentoml serve bench.peer_bentoml:SpotFeatures --port 3000
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
from PIL import Image

from service.model import ExportedModel
from contract.views import centre_view


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class SpotFeatures:
    def __init__(self) -> None:
        self.model = ExportedModel(os.environ["SPOT_MODEL_DIR"], "cpu")

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=1000)
    def features(self, images: list[Image.Image]) -> list[dict]:
        m = self.model
        batch = m.normalize_batch(
            [centre_view(np.asarray(im.convert("RGB")), m.size, m.crop_fraction) for im in images]
        )
        pooled = m.run(batch, ["conv5"])["conv5"].mean(axis=(2, 3))
        return [{"conv5": row.tolist()} for row in pooled]
