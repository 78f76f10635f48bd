"""The serving stacks a user would pick instead of ours, each in its own environment (never in the service's
dependencies), each serving the shipped ONNX model through the service's own `ExportedModel`
(bench/peers/work.py) so that only the serving layer differs. One table says how each is installed,
started, asked, and what it speaks; bench/peer.py measures them."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..server import REPO, ServerProcess, free_port

RUNTIME = ["onnxruntime==1.31.1", "onnx==1.23.2", "pillow==13.0.0"]  # the model runtime: ours, pinned alike
DEBIAN_PYTHON = "/usr/bin/python3.11"  # PyTriton's stub breaks on CPython >= 3.11.6 (pytriton issue #51)


@dataclass(frozen=True)
class Peer:
    name: str
    requirements: list[str]
    settings: str  # its batching and processes, as configured (bench/peers/<app>.py)
    command: list[str]  # run with the environment's python or its bin/ directory first; ports come as PEER_* env
    ready: str  # the path that answers 200 once the model is loaded
    jpeg: str  # how one upload looks: "multipart" (field `images`), "oip-binary" or "oip-base64" (model features-jpeg)
    route: str  # where the uploads go
    oip_binary: bool = False  # speaks the Open Inference Protocol with binary tensors over HTTP (else JSON)
    oip: bool = False  # serves the preprocessed-tensor model over the Open Inference Protocol (HTTP and gRPC)
    python: str = field(default=sys.executable)

    @property
    def venv(self) -> Path:
        return REPO / f".venv-{self.name.lower()}"

    @property
    def version(self) -> str:
        return self.requirements[0]


PEERS = [
    Peer("BentoML", ["bentoml==1.4.40", *RUNTIME, "numpy==2.4.6"],
         "1 worker; adaptive batching, max 64 images, max latency 1,000 ms (its batching learns the delay)",
         ["bin/bentoml", "serve", "bench.peers.bentoml_app:SpotFeatures", "--host", "127.0.0.1", "--port", "{port}"],
         "/readyz", "multipart", "/features"),
    Peer("LitServe", ["litserve==0.2.19", *RUNTIME, "numpy==2.4.6", "python-multipart==0.0.34"],
         "1 API server process, 1 inference worker; batching max 64 requests, batch_timeout 2 ms",
         ["bin/python", "-m", "bench.peers.litserve_app"], "/health", "multipart", "/features"),
    Peer("MLServer", ["mlserver==1.7.1", *RUNTIME, "numpy==2.4.6", "uvloop==0.21.0"],
         "1 parallel worker; adaptive batching max_batch_size 64, max_batch_time 2 ms",
         ["bin/python", "-m", "bench.peers.mlserver_app"], "/v2/models/features-jpeg/ready", "oip-base64",
         "/v2/models/features-jpeg/infer", oip=True),
    Peer("PyTriton", ["nvidia-pytriton==0.7.0", *RUNTIME],
         "Triton 2.51 front ends, 1 model instance; dynamic batcher max 64, max queue delay 2 ms",
         ["bin/python", "-m", "bench.peers.pytriton_app"], "/v2/models/features-jpeg/ready", "oip-binary",
         "/v2/models/features-jpeg/infer", oip_binary=True, oip=True, python=DEBIAN_PYTHON),
]  # fmt: skip


def ensure_venv(peer: Peer) -> None:
    """Creates the peer's environment on first use (30 s to 2 min from PyPI)."""
    if (peer.venv / "bin" / "python").exists() and (peer.venv / ".installed").exists():
        return
    subprocess.run([peer.python, "-m", "venv", "--clear", str(peer.venv)], check=True)
    pip = [str(peer.venv / "bin" / "pip"), "install", "--quiet", *peer.requirements]
    subprocess.run(pip, check=True, timeout=1200)
    (peer.venv / ".installed").write_text("\n".join(peer.requirements) + "\n")


class PeerServer(ServerProcess):
    """A peer on 127.0.0.1 (HTTP on `port`, gRPC on `grpc_port` where it speaks it), started and waited for."""

    def __init__(self, peer: Peer, model_dir: Path, timeout: float = 180):
        port, self.grpc_port = free_port(), free_port()
        cmd = [str(peer.venv / c) if c.startswith("bin/") else c.replace("{port}", str(port)) for c in peer.command]
        env = dict(os.environ, SPOT_MODEL_DIR=str(model_dir), PYTHONPATH=str(REPO), VIRTUAL_ENV=str(peer.venv),
                   PEER_PORT=str(port), PEER_GRPC_PORT=str(self.grpc_port),
                   PEER_METRICS_PORT=str(free_port()))  # fmt: skip
        env.pop("OMP_NUM_THREADS", None)
        super().__init__(cmd, port, env, peer.ready, timeout, stop_timeout=30)


def jpeg_request(peer_jpeg: str, jpegs: list[bytes]) -> tuple[dict, bytes]:
    """One upload of `jpegs` in a peer's own protocol, as (JSON header, binary part): multipart is made by
    bench.load.write_bodies instead."""
    output = [{"name": "conv5", "parameters": {"binary_data": False}}]
    if peer_jpeg == "oip-binary":  # BYTES: each element a 4-byte little-endian length, then the bytes
        data = b"".join(len(j).to_bytes(4, "little") + j for j in jpegs)
        tensor = {
            "name": "jpeg",
            "shape": [len(jpegs), 1],
            "datatype": "BYTES",
            "parameters": {"binary_data_size": len(data)},
        }
        return {"inputs": [tensor], "outputs": output}, data
    if peer_jpeg == "oip-base64":
        tensor = {"name": "jpeg", "shape": [len(jpegs)], "datatype": "BYTES", "parameters": {"content_type": "base64"},
                  "data": [base64.b64encode(j).decode() for j in jpegs]}  # fmt: skip
        return {"inputs": [tensor], "outputs": [{"name": "conv5"}]}, b""
    raise ValueError(f"no OIP upload for {peer_jpeg!r}")


def tensor_request(images: np.ndarray, binary: bool) -> tuple[dict, bytes]:
    """A preprocessed batch for the Open Inference Protocol: binary tensor data, or JSON where the server has
    no binary extension (MLServer's REST)."""
    tensor = {"name": "images", "shape": list(images.shape), "datatype": "FP32"}
    if binary:
        data = images.astype("<f4").tobytes()
        tensor["parameters"] = {"binary_data_size": len(data)}
        return {"inputs": [tensor], "outputs": [{"name": "conv5", "parameters": {"binary_data": True}}]}, data
    return {"inputs": [{**tensor, "data": images.ravel().tolist()}], "outputs": [{"name": "conv5"}]}, b""


def answer_features(body: bytes) -> np.ndarray:
    """[N, C] conv5 features from any server's JSON answer to an upload (ours, BentoML, LitServe, OIP)."""
    doc = json.loads(body)
    if isinstance(doc, dict) and "results" in doc:  # ours
        return np.array([r["features"]["conv5"]["values"] for r in doc["results"]])
    if isinstance(doc, dict) and "outputs" in doc:  # the Open Inference Protocol
        out = next(o for o in doc["outputs"] if o["name"] == "conv5")
        return np.array(out["data"], np.float64).reshape(out["shape"])
    if isinstance(doc, list):  # BentoML: one dict per image
        return np.array([d["conv5"] for d in doc])
    return np.atleast_2d(np.array(doc["conv5"]))  # LitServe
