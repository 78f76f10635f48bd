"""BentoML with its adaptive batching, doing the work of our `/features?layers=conv5&pool=avg` (bench/peers/work.py):
a multipart image upload (BentoML decodes it with Pillow), one row of conv5 features back as JSON. Run in
its own environment (`.venv-bentoml`, bench/peers/__init__.py):

    SPOT_MODEL_DIR=models/spot-tiny64 .venv-bentoml/bin/bentoml serve bench.peers.bentoml_app:SpotFeatures --port 3000
"""

from __future__ import annotations

import bentoml
import numpy as np
from PIL import Image

from bench.peers.work import LAYER, load_model
from contract.views import centre_view


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class SpotFeatures:
    def __init__(self) -> None:
        self.model = load_model()

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=1000)
    def features(self, images: list[Image.Image]) -> list[dict]:
        m = self.model
        batch = m.normalize_batch(
            [centre_view(np.asarray(im.convert("RGB")), m.size, m.crop_fraction) for im in images]
        )
        pooled = m.run(batch, [LAYER])[LAYER].mean(axis=(2, 3))
        return [{LAYER: row.tolist()} for row in pooled]
