"""The exported model: model.json + model.onnx, checked against its sha256, run by ONNX Runtime."""

from __future__ import annotations

import ctypes
import logging
import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort

from contract.spec import ModelSpec, SpecError

log = logging.getLogger(__name__)
GPU_PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
HEAD_OUTPUTS = ["real_logit", "mask_logits"]  # what /spot asks for


class ModelError(RuntimeError):
    """The model folder is missing, corrupt or cannot run as asked."""


def tensorrt_libraries_present() -> bool:
    """onnxruntime-gpu lists TensorRT whether or not TensorRT itself is installed, and then every session
    logs an "EP Error" before falling back to CUDA (seen on an H200 without TensorRT); `auto` asks first."""
    try:
        ctypes.CDLL("libnvinfer.so.10")
    except OSError:
        return False
    return True


def choose_providers(setting: str) -> list[str]:
    available = ort.get_available_providers()
    if setting == "cpu":
        return ["CPUExecutionProvider"]
    if setting in GPU_PROVIDERS:
        return [GPU_PROVIDERS[setting], "CPUExecutionProvider"]
    if setting != "auto":
        raise ModelError(f"providers must be auto, cpu, cuda or tensorrt, got {setting!r}")
    if "TensorrtExecutionProvider" in available and not tensorrt_libraries_present():
        available = [p for p in available if p != "TensorrtExecutionProvider"]
    return [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available] + [
        "CPUExecutionProvider"
    ]


def cut_graph(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """The graph cut down to `outputs`. ONNX Runtime runs every node whatever outputs are asked for, and
    the heads' fc1 (a 4096 x 4096 matrix at full width, read from memory for every batch) is most of a
    small batch's time, so /features gets its own session without the heads; /spot gets one without the
    feature maps, which matters when they come from a second network (model.json `features_from`)."""
    return onnx.utils.Extractor(model).extract_model([model.graph.input[0].name], outputs)


class ExportedModel:
    """Reads the contract of models/README.md; `run` maps a float32 NCHW batch to named outputs (on the
    trunk-only session when only feature maps are asked for)."""

    def __init__(
        self, folder: Path, providers: str = "auto", require_gpu: bool = False, threads: int = 0, spin: bool = True
    ):
        folder = Path(folder)
        onnx_path = folder / "model.onnx"
        if not (folder / "model.json").is_file() or not onnx_path.is_file():
            raise ModelError(f"{folder} must hold model.json and model.onnx")
        try:
            self.spec = ModelSpec.read(folder)
            self.spec.verify(onnx_path)
        except SpecError as exc:
            raise ModelError(f"{folder}: {exc}") from None
        self.meta = self.spec.raw
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads wait for work by burning a core: on a small CPU that core is the HTTP layer's.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.layers: list[str] = list(self.spec.layers)
        # What /features returns when no layer is asked for: the export's best probe layer (older folders: the last).
        self.default_layer: str = self.spec.default_layer
        try:
            graph = onnx.load(str(onnx_path))
            heads = cut_graph(graph, HEAD_OUTPUTS)
            # One network gives every output: the heads need all of it, so the whole graph serves /spot and any
            # mix of outputs. Two networks (model.json `features_from`): the heads' graph and the trunk share
            # nothing, so a mix runs each on its own and no third session is kept (docs/service.md: memory per worker).
            self.one_network = len(heads.graph.node) == len(graph.graph.node)
            self.heads = ort.InferenceSession(
                (graph if self.one_network else heads).SerializeToString(),
                options,
                providers=choose_providers(providers),
            )
            trunk = cut_graph(graph, self.layers)
            self.trunk = ort.InferenceSession(trunk.SerializeToString(), options, providers=choose_providers(providers))
        except Exception as exc:  # noqa: BLE001 - ORT and onnx raise their own types for a bad graph
            raise ModelError(f"ONNX Runtime cannot load {onnx_path}: {exc}") from None
        self.provider = self.heads.get_providers()[0]
        if require_gpu and self.provider == "CPUExecutionProvider":
            raise ModelError("a GPU was required (SPOT_REQUIRE_GPU) but ONNX Runtime runs on the CPU")
        self.size = self.spec.input_size
        self.mean = np.asarray(self.spec.mean, np.float32)
        self.std = np.asarray(self.spec.std, np.float32)
        self.crop_fraction = self.spec.crop_fraction
        self.outputs = list(self.spec.outputs)
        self.grid = self.spec.mask_grid
        self.zoom = self.spec.spot_zoom
        self.name, self.version = self.spec.name, self.spec.version
        self.pad_to = 0  # set by pad_batches()
        self.run_sizes: dict[str, int] = {}  # set by choose_run_sizes(): per graph, the most images worth one run

    def pad_batches(self, setting: str, size: int) -> None:
        """Run every batch padded to `size` images (`setting` auto: on a GPU only). ONNX Runtime's CUDA
        convolutions re-plan whenever the batch size differs from the last run's: measured on an H200
        (bench/results/gpu-before-fixed-shape.json), varying batches cut /features to 34 img/s at 4 clients
        against 625 with batching off. One shape is planned once, at warm-up. The price is paid at low load:
        a lone image runs as a full batch (trunk: 1.15 ms for 64 against 0.37 ms for 4 on that GPU), so one
        client got 354 img/s against 488 with batching off."""
        if setting not in ("auto", "on", "off"):
            raise ModelError(f"pad_batches must be auto, on or off, got {setting!r}")
        on = setting == "on" or (setting == "auto" and self.provider != "CPUExecutionProvider")
        self.pad_to = size if on else 0

    def choose_run_sizes(self, largest: int, within: float = 0.05, repeats: int = 2) -> dict[str, int]:
        """Per graph (`trunk`: feature maps only, `heads`: the rest), the smallest batch up to `largest` whose
        time per image is within `within` of the fastest batch's, timed here. A batch larger than that gains
        nothing and makes its requests wait for each other: on one CPU thread the shipped trunk takes 0.43 ms
        per image at batch 4 and at 64 (the heads 0.65 and 0.54). What this leaves out is the event loop's
        cost per run, which is why it is not the default (SPOT_RUN_SIZE, bench/README.md). Not with
        pad_batches: every run is one padded shape there, and a GPU gains from every image it is given."""
        if self.pad_to:
            return self.run_sizes
        sizes = sorted({min(2**k, largest) for k in range(largest.bit_length() + 1)})
        for graph, names in (("trunk", self.layers), ("heads", list(HEAD_OUTPUTS))):
            per_image = {}
            for n in sizes:
                batch = np.zeros((n, 3, self.size, self.size), np.float32)
                self.run(batch, names)  # the first run of a shape allocates
                times = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    self.run(batch, names)
                    times.append(time.perf_counter() - started)
                per_image[n] = min(times) / n
            best = min(per_image.values())
            self.run_sizes[graph] = min(n for n in sizes if per_image[n] <= best * (1 + within))
        return self.run_sizes

    def run_size(self, names: list[str], largest: int) -> int:
        """The most images worth one run for these outputs (choose_run_sizes), at most `largest`."""
        graph = "trunk" if all(name in self.layers for name in names) else "heads"
        return min(largest, self.run_sizes.get(graph, largest))

    def normalize(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> 3xHxW float32 on the model's scale."""
        return self.normalize_batch(rgb[None])[0]

    def normalize_batch(self, rgbs) -> np.ndarray:
        """Same-size HxWx3 uint8 images (a list, or an NxHxWx3 array) -> an NCHW float32 batch on the model's
        scale, written once in place without per-image temporaries (bit-identical to `normalize` image by image)."""
        x = np.stack(rgbs).transpose(0, 3, 1, 2)
        out = np.empty(x.shape, np.float32)
        np.subtract(x, self.mean[:, None, None], out=out)
        return np.divide(out, self.std[:, None, None], out=out)

    def run(self, batch: np.ndarray, names: list[str] | None = None) -> dict[str, np.ndarray]:
        names = names or self.outputs
        n = len(batch)
        if n < self.pad_to:
            batch = np.concatenate([batch, np.zeros((self.pad_to - n, *batch.shape[1:]), np.float32)])
        feeds = {"images": np.ascontiguousarray(batch, np.float32)}
        layers = [name for name in names if name in self.layers]
        others = [name for name in names if name not in self.layers]
        if not others:
            outputs = dict(zip(layers, self.trunk.run(layers, feeds), strict=True))
        elif not layers or self.one_network:
            outputs = dict(zip(names, self.heads.run(names, feeds), strict=True))
        else:  # two networks, outputs of both
            outputs = dict(zip(layers, self.trunk.run(layers, feeds), strict=True)) | dict(
                zip(others, self.heads.run(others, feeds), strict=True)
            )
        return {name: outputs[name][:n] for name in names}

    def warm_up(self) -> None:
        self.run(np.zeros((1, 3, self.size, self.size), np.float32), self.layers)
        self.run(np.zeros((1, 3, self.size, self.size), np.float32), HEAD_OUTPUTS)
