"""PyTriton: NVIDIA Triton Inference Server's C++ HTTP and gRPC front ends (and its dynamic batcher) with a
Python callable behind them, serving two models that do the work of our routes (bench/peers/work.py):

- `features-jpeg`: one JPEG as a BYTES tensor (Triton's binary tensor extension carries it raw), conv5
  average-pooled back: the multipart-upload rows' work, in the protocol Triton speaks;
- the model's own name (`spot-tiny64`): the preprocessed NCHW float32 tensor in, conv5 out, as our `/v2`.

Run in its own environment (`.venv-pytriton`):

    SPOT_MODEL_DIR=models/spot-tiny64 PEER_PORT=8000 PEER_GRPC_PORT=8001 \
        .venv-pytriton/bin/python -m bench.peers.pytriton_app
"""

from __future__ import annotations

import os

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

from bench.peers.work import feature_maps, load_model, pooled_features

MAX_BATCH = 64
# PyTriton's default restrictions less `statistics`: perf_analyzer (the gRPC load) reads the server's statistics
OPEN_STATISTICS = TritonSecurityConfig(restricted_endpoints=["shared-memory", "model-repository", "trace", "logging"])
QUEUE_DELAY_US = 2000  # what the service waits at most for company (SPOT_MAX_BATCH_DELAY_MS=2)


def main() -> None:
    model = load_model()
    probe = feature_maps(model, np.zeros((1, 3, model.size, model.size), np.float32))
    channels, h, w = probe.shape[1:]

    @batch
    def features_jpeg(jpeg: np.ndarray) -> dict:
        return {"conv5": pooled_features(model, [bytes(row[0]) for row in jpeg]).astype(np.float32)}

    @batch
    def features_tensor(images: np.ndarray) -> dict:
        return {"conv5": feature_maps(model, images)}

    batching = ModelConfig(
        max_batch_size=MAX_BATCH, batcher=DynamicBatcher(max_queue_delay_microseconds=QUEUE_DELAY_US)
    )
    config = TritonConfig(
        http_address="127.0.0.1", http_port=int(os.environ["PEER_PORT"]),
        grpc_address="127.0.0.1", grpc_port=int(os.environ["PEER_GRPC_PORT"]),
        metrics_port=int(os.environ["PEER_METRICS_PORT"]), allow_metrics=False, log_verbose=0,
    )  # fmt: skip
    instances = int(os.environ.get("PEER_WORKERS", "1"))
    with Triton(config=config, security_config=OPEN_STATISTICS) as triton:
        triton.bind(
            model_name="features-jpeg", infer_func=[features_jpeg] * instances,
            inputs=[Tensor(name="jpeg", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="conv5", dtype=np.float32, shape=(channels,))],
            config=batching, strict=False,
        )  # fmt: skip
        triton.bind(
            model_name=model.name, infer_func=[features_tensor] * instances,
            inputs=[Tensor(name="images", dtype=np.float32, shape=(3, model.size, model.size))],
            outputs=[Tensor(name="conv5", dtype=np.float32, shape=(channels, h, w))],
            config=batching, strict=False,
        )  # fmt: skip
        triton.serve()


if __name__ == "__main__":
    main()
