"""MLServer (Seldon) with its adaptive batching, serving two models that do the work of our routes
(bench/peers/work.py) over the Open Inference Protocol, REST and gRPC:

- `features-jpeg`: JPEGs as a BYTES tensor (base64 in REST's JSON, MLServer's Base64Codec; raw over gRPC),
  conv5 average-pooled back: the multipart-upload rows' work, in the protocol MLServer speaks;
- the model's own name (`spot-tiny64`): the preprocessed NCHW float32 tensor in, conv5 out, as our `/v2`
  (REST: JSON only, MLServer has no binary tensor extension; gRPC: raw tensor contents).

`python -m bench.peers.mlserver_app` (in `.venv-mlserver`) writes the settings MLServer's docs describe
(settings.json, one model-settings.json per model) to a temporary folder and runs `mlserver start` on it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from mlserver import MLModel
from mlserver.codecs import Base64Codec, NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from bench.peers.work import LAYER, feature_maps, load_model, pooled_features

MAX_BATCH = 64
MAX_BATCH_TIME_S = 0.002  # what the service waits at most for company (SPOT_MAX_BATCH_DELAY_MS=2)


class FeaturesJpeg(MLModel):
    async def load(self) -> bool:
        self.model = load_model()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        jpegs = Base64Codec.decode_input(payload.inputs[0])
        pooled = pooled_features(self.model, jpegs)
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output(LAYER, pooled)])


class SpotTensor(MLModel):
    async def load(self) -> bool:
        self.model = load_model()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        maps = feature_maps(self.model, NumpyCodec.decode_input(payload.inputs[0]))
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output(LAYER, maps)])


def write_repository(folder: Path, model_name: str) -> None:
    settings = {
        "host": "127.0.0.1",
        "http_port": int(os.environ["PEER_PORT"]),
        "grpc_port": int(os.environ["PEER_GRPC_PORT"]),
        "metrics_port": int(os.environ["PEER_METRICS_PORT"]),
        "parallel_workers": int(os.environ.get("PEER_WORKERS", "1")),
        "debug": False,
        "metrics_endpoint": None,
        "logging_settings": None,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    for name, cls in (("features-jpeg", FeaturesJpeg), (model_name, SpotTensor)):
        (folder / name).mkdir()
        model = {
            "name": name,
            "implementation": f"bench.peers.mlserver_app.{cls.__name__}",
            "max_batch_size": MAX_BATCH,
            "max_batch_time": MAX_BATCH_TIME_S,
        }
        (folder / name / "model-settings.json").write_text(json.dumps(model))


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="mlserver-"))
    write_repository(folder, json.loads((Path(os.environ["SPOT_MODEL_DIR"]) / "model.json").read_text())["name"])
    mlserver = Path(os.environ.get("VIRTUAL_ENV", Path(__file__).parents[2] / ".venv-mlserver")) / "bin" / "mlserver"
    os.execv(str(mlserver), [str(mlserver), "start", str(folder)])


if __name__ == "__main__":
    main()
