"""The Open Inference Protocol (KServe v2, what Triton, KServe and Seldon speak) beside /features and /spot:
preprocessed tensors in, named outputs out, so code written for Triton (tritonclient, a KServe client) runs
against this service, batched together with the other routes. JSON tensors and Triton's binary tensor
extension (raw little-endian bytes after a JSON header of `Inference-Header-Content-Length` bytes), gzip or
deflate bodies as Triton takes them; errors are `{"error": ...}` as the protocol has them: 400 for a bad
request (as in Triton), 404 another model, 413 too large."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import orjson
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from . import __version__
from .model import ExportedModel
from .runtime import Runtime, ServiceError

PREFIX = "/v2"  # every route of the protocol
INFER_ROUTE = f"{PREFIX}/models/{{model_name}}/infer"  # the label its images are counted under
# Room per number for a JSON tensor ("-1.2345678806304932e-05, " is 25 characters, brackets come on top): bounds
# its text before it is parsed, which takes about 40 times the text in memory.
CHARS_PER_NUMBER = 32
SERVER = {
    "name": "spot-artifacts",
    "version": __version__,
    "extensions": ["binary_tensor_data", "model_repository", "model_configuration", "statistics"],
}


class InputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict = {}
    data: list | None = Field(None, description="row-major values, flat or nested; or binary_data_size in parameters")


class RequestedOutput(BaseModel):
    name: str
    parameters: dict = {}


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict = {}
    inputs: list[InputTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


def bad(message: str) -> ServiceError:
    return ServiceError(400, message)


def dims(shape: list) -> list[int]:
    return [-1 if d is None else int(d) for d in shape]


def model_metadata(model: ExportedModel) -> dict:
    """The model as OIP describes one: every output of model.json, all FP32, -1 for the batch."""
    spec = model.meta["input"]
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": spec["name"], "datatype": "FP32", "shape": dims(spec["shape"])}],
        "outputs": [{"name": o["name"], "datatype": "FP32", "shape": dims(o["shape"])} for o in model.meta["outputs"]],
    }


def config_tensor(spec: dict) -> dict:
    """An input or output as config.pbtxt declares it: without the batch axis; one that is only the batch
    axis (real_logit) as dims [1] reshaped to [], Triton's convention (as deploy/triton's generator)."""
    dims = spec["shape"][1:]
    tensor = {"name": spec["name"], "data_type": "TYPE_FP32", "dims": dims or [1]}
    return tensor if dims else tensor | {"reshape": {"shape": []}}


def model_config(model: ExportedModel, runtime: Runtime) -> dict:
    """The model as Triton's model configuration extension describes one (config.pbtxt as JSON, what
    tritonclient's get_model_config and Triton's tools read). max_batch_size is what one request may carry
    (SPOT_MAX_FILES); the batcher runs up to SPOT_MAX_BATCH_SIZE images together (under parameters), in one
    instance per worker process."""
    config = {
        "name": model.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": runtime.settings.max_files,
        "input": [config_tensor(model.meta["input"]) | {"format": "FORMAT_NCHW"}],
        "output": [config_tensor(o) for o in model.meta["outputs"]],
        "instance_group": [
            {
                "name": model.name,
                "count": runtime.instances,
                "kind": "KIND_CPU" if model.provider == "CPUExecutionProvider" else "KIND_GPU",
            }
        ],
        "parameters": {
            "max_images_per_run": {"string_value": str(runtime.settings.max_batch_size)},
            "execution_provider": {"string_value": model.provider},
        },
    }
    if runtime.settings.max_batch_size > 1:  # SPOT_MAX_BATCH_SIZE=1 is batching off
        config["dynamic_batching"] = {"max_queue_delay_microseconds": round(runtime.settings.max_batch_delay_ms * 1000)}
    return config


def flag(parameters: dict, key: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise bad(f"parameter {key} must be true or false, got {value!r}")
    return value


def checked_input(inputs: list, model: ExportedModel, max_images: int):
    """The request's one input tensor (`name`, `datatype`, `shape`, `parameters`: JSON's or gRPC's), checked
    against the model's input; a mistake is a 400 that says what to send."""
    spec = model.meta["input"]
    expected = f"one input {spec['name']!r}, FP32, shape {dims(spec['shape'])} with 1 to {max_images} images"
    if len(inputs) != 1 or inputs[0].name != spec["name"]:
        raise bad(f"inputs {[t.name for t in inputs]}: the model takes {expected}")
    tensor = inputs[0]
    if tensor.datatype != "FP32":
        raise bad(f"input datatype {tensor.datatype}: the model takes {expected}")
    shape = list(tensor.shape)
    if len(shape) != 4 or shape[1:] != spec["shape"][1:] or not 1 <= shape[0] <= max_images:
        raise bad(f"input shape {shape}: the model takes {expected}")
    if "shared_memory_region" in tensor.parameters:
        raise bad("shared memory is not supported: send the data in the request")
    return tensor


def check_output(name: str, parameters, model: ExportedModel) -> None:
    if name not in model.outputs:
        raise bad(f"unknown output {name!r}; valid: {', '.join(model.outputs)}")
    if "classification" in parameters or "shared_memory_region" in parameters:
        raise bad("classification and shared memory outputs are not supported")


@dataclass
class Infer:
    batch: np.ndarray  # [n, 3, size, size] float32, finite
    outputs: list[tuple[str, bool]]  # (name, sent as binary)
    id: str | None


def parse_infer(body: bytes, header_length: str | None, model: ExportedModel, max_images: int) -> Infer:
    """An infer request checked against the model's one input; every mistake is a 400 that says what to send."""
    json_end = len(body)
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
            raise bad(f"Inference-Header-Content-Length {header_length!r} must be a byte count within the body")
        json_end = int(header_length)
    spec = model.meta["input"]
    most = max_images * math.prod(spec["shape"][1:]) * CHARS_PER_NUMBER + (1 << 16)
    if json_end > most:
        raise ServiceError(413, f"a JSON part of {json_end} bytes is more than {max_images} images need ({most})")
    try:
        request = InferRequest.model_validate_json(body[:json_end])
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        raise bad(f"not an inference request: {problems}") from None
    tensor = checked_input(request.inputs, model, max_images)
    shape = tensor.shape
    count, size = math.prod(shape), tensor.parameters.get("binary_data_size")
    if size is not None:
        if tensor.data is not None:
            raise bad("give the input's data or its binary_data_size, not both")
        if size != 4 * count or isinstance(size, bool):
            raise bad(f"binary_data_size {size!r}: shape {shape} in FP32 is {4 * count} bytes")
        if len(body) - json_end != size:
            raise bad(f"{len(body) - json_end} bytes follow the JSON header; binary_data_size says {size}")
        batch = np.frombuffer(body, "<f4", count, json_end).astype(np.float32).reshape(shape)
    else:
        if json_end != len(body):
            raise bad(f"{len(body) - json_end} bytes follow the JSON header but no input has binary_data_size")
        if tensor.data is None:
            raise bad("the input has no data: give data (row-major numbers) or parameters.binary_data_size")
        try:
            values = np.array(tensor.data)
        except (ValueError, TypeError, RecursionError):
            raise bad("input data must be numbers, flat or nested row-major with equal lengths") from None
        if values.dtype.kind not in "iuf":
            raise bad("input data must be numbers, flat or nested row-major with equal lengths")
        if values.size != count:
            raise bad(f"input data holds {values.size} values; shape {shape} needs {count}")
        batch = values.astype(np.float32).reshape(shape)
    if not np.isfinite(batch).all():
        raise bad("input holds NaN or infinite values")
    binary_default = flag(request.parameters, "binary_data_output", False)
    wanted = request.outputs or [RequestedOutput(name=name) for name in model.outputs]
    outputs: dict[str, bool] = {}
    for out in wanted:
        check_output(out.name, out.parameters, model)
        outputs[out.name] = flag(out.parameters, "binary_data", binary_default)
    return Infer(batch, list(outputs.items()), request.id)


def infer_response(model: ExportedModel, results: dict[str, np.ndarray], request: Infer) -> Response:
    """JSON when every output is JSON; else the JSON header, then the binary outputs in order."""
    tensors, blobs = [], []
    for name, binary in request.outputs:
        values = np.ascontiguousarray(results[name], "<f4")
        tensor = {"name": name, "datatype": "FP32", "shape": list(values.shape)}
        if binary:
            tensor["parameters"] = {"binary_data_size": values.nbytes}
            blobs.append(values.tobytes())
        else:
            tensor["data"] = values.ravel()
        tensors.append(tensor)
    head = {"model_name": model.name, "model_version": model.version}
    if request.id is not None:
        head["id"] = request.id
    head |= {"parameters": {"execution_provider": model.provider}, "outputs": tensors}
    header = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *blobs]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def decompressed(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate body (tritonclient's request_compression_algorithm), at most `limit` bytes once
    inflated (the body limit holds for what is inside, too)."""
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise ServiceError(415, f"Content-Encoding {encoding} is not supported; send gzip, deflate or identity")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise bad(f"the body is not valid {encoding}: {exc}") from None
    if len(out) > limit:
        raise ServiceError(413, f"the body inflates to more than the limit of {limit} bytes")
    if not inflater.eof:
        raise bad(f"the {encoding} body is truncated")
    return out


def served(runtime: Runtime, name: str, version: str | None) -> ExportedModel:
    """The loaded model when the request names it (any version: none, or gRPC's "", means the one served);
    else a 404, or the 503 of a model not loaded."""
    model = runtime.model()
    if name != model.name or (version and version != model.version):
        wanted = f"{name} version {version}" if version else name
        raise ServiceError(404, f"model {wanted} is not served here; {model.name} version {model.version} is")
    return model


def model_stats(runtime: Runtime, name: str | None, version: str | None = None) -> list[dict]:
    """Triton's statistics of the model named; with no name, of every model served: the one, or none while
    it is not loaded."""
    if name:
        return [runtime.statistics(served(runtime, name, version))]
    try:
        return [runtime.statistics(runtime.model())]
    except ServiceError:
        return []


def repository_index(runtime: Runtime, ready_only: bool) -> list[dict]:
    """The model repository extension's index: the one model served, READY, or UNAVAILABLE with the reason."""
    try:
        model = runtime.model()
        entries = [{"name": model.name, "version": model.version, "state": "READY"}]
    except ServiceError as exc:
        entries = [{"name": runtime.folder_name, "state": "UNAVAILABLE", "reason": str(exc.detail)}]
    return [e for e in entries if e["state"] == "READY" or not ready_only]
