"""LitServe (Lightning AI's FastAPI-based server) with its batching, doing the work of our
`/features?layers=conv5&pool=avg` (bench/peers/work.py): a multipart upload of one or more JPEGs (field
`images`), their conv5 features back as JSON. LitServe's layout: an API server process in front, an
inference worker behind a queue that collects up to `max_batch_size` requests or waits `batch_timeout`.
Run in its own environment (`.venv-litserve`):

    SPOT_MODEL_DIR=models/spot-tiny64 PEER_PORT=8000 .venv-litserve/bin/python -m bench.peers.litserve_app
"""

# no `from __future__ import annotations`: LitServe reads decode_request's and encode_response's annotations
import os

import litserve as ls
import numpy as np

from bench.peers.work import LAYER, load_model, pooled_features

MAX_BATCH = 64
BATCH_TIMEOUT_S = 0.002  # what the service waits at most for company (SPOT_MAX_BATCH_DELAY_MS=2)


class SpotFeatures(ls.LitAPI):
    def setup(self, device):
        self.model = load_model()

    def decode_request(self, request):
        return [upload.file.read() for upload in request.getlist("images")]

    def batch(self, inputs):
        return inputs  # one list of JPEGs per request; predict runs them all at once

    def predict(self, requests):
        rows = pooled_features(self.model, [jpeg for jpegs in requests for jpeg in jpegs])
        return np.split(rows, np.cumsum([len(jpegs) for jpegs in requests])[:-1])

    def unbatch(self, output):
        return output

    def encode_response(self, rows):
        return {LAYER: rows.tolist()}


def main():
    api = SpotFeatures(max_batch_size=MAX_BATCH, batch_timeout=BATCH_TIMEOUT_S, api_path="/features")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=int(os.environ.get("PEER_WORKERS", "1")))
    server.run(host="127.0.0.1", port=int(os.environ["PEER_PORT"]), num_api_servers=1, generate_client_file=False,
               log_level="warning")  # fmt: skip


if __name__ == "__main__":
    main()
