"""The Open Inference Protocol over gRPC (SPOT_GRPC_PORT) against a real uvicorn process, driven by Triton's
own gRPC client: the same answers as ONNX Runtime, the same checks and API key as the HTTP routes."""

import json
import re
import subprocess
import sys
import time
from concurrent import futures

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from bench.server import Server, free_port

from .test_oip import preprocessed


@pytest.fixture(scope="module")
def grpc_server(model_dir):
    port = free_port()
    s = Server(model_dir, grpc_port=str(port), api_key="k3y")
    s.grpc = f"127.0.0.1:{port}"
    yield s
    s.stop()


@pytest.fixture()
def triton_client(grpc_server):
    client = triton.InferenceServerClient(grpc_server.grpc)
    yield client
    client.close()


KEY = {"authorization": "Bearer k3y"}


def health_status(address: str, service: str = "") -> str:
    """grpc.health.v1, as Kubernetes' gRPC probe and grpc_health_probe ask it."""
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def test_health_and_metadata_as_tritonclient_reads_them(triton_client, model_dir, grpc_server):
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready("spot-tiny") and triton_client.is_model_ready("spot-tiny", "1")
    assert triton_client.get_server_metadata().name == "spot-artifacts"
    assert health_status(grpc_server.grpc) == health_status(grpc_server.grpc, "inference.GRPCInferenceService")
    assert health_status(grpc_server.grpc) == "SERVING"
    index = triton_client.get_model_repository_index(as_json=True)
    assert index == {"models": [{"name": "spot-tiny", "version": "1", "state": "READY"}]}
    size = json.loads((model_dir / "model.json").read_text())["input"]["shape"][-1]
    meta = triton_client.get_model_metadata("spot-tiny", as_json=True)
    assert meta["versions"] == ["1"] and meta["inputs"] == [
        {"name": "images", "datatype": "FP32", "shape": ["-1", "3", str(size), str(size)]}  # int64 as JSON text
    ]
    assert [o["name"] for o in meta["outputs"]] == ["conv1", "conv2", "conv3", "conv4", "conv5", "real_logit",
                                                    "mask_logits"]  # fmt: skip
    assert not triton_client.is_model_ready("resnet50") and not triton_client.is_model_ready("spot-tiny", "2")
    with pytest.raises(InferenceServerException, match="not served here") as err:
        triton_client.get_model_metadata("resnet50")
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_infer_equals_onnx_runtime_and_is_counted(triton_client, model_dir, grpc_server):
    import httpx

    batch = preprocessed(model_dir)
    names = ["conv3", "real_logit", "mask_logits"]
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = dict(zip(names, session.run(names, {"images": batch}), strict=False))
    images = triton.InferInput("images", list(batch.shape), "FP32")
    images.set_data_from_numpy(batch)
    outputs = [triton.InferRequestedOutput(n) for n in names]
    result = triton_client.infer("spot-tiny", [images], outputs=outputs, request_id="g-1", headers=KEY)
    response = result.get_response(as_json=True)
    assert response["id"] == "g-1" and response["model_version"] == "1"
    assert response["parameters"]["execution_provider"]["string_param"] == "CPUExecutionProvider"
    for name in names:
        np.testing.assert_allclose(result.as_numpy(name), expected[name], rtol=1e-5, atol=1e-5)
    every = triton_client.infer("spot-tiny", [images], headers=KEY)  # no outputs named: all of them
    assert [o["name"] for o in every.get_response(as_json=True)["outputs"]] == [
        "conv1", "conv2", "conv3", "conv4", "conv5", "real_logit", "mask_logits"
    ]  # fmt: skip
    metrics = httpx.get(f"{grpc_server.url}/metrics").text
    route = "/inference.GRPCInferenceService/ModelInfer"
    assert f'spot_requests_total{{route="{route}",status="OK"}} 2.0' in metrics
    assert f'spot_images_total{{route="{route}"}} 4.0' in metrics


def test_typed_contents_work_as_raw_bytes_do_and_calls_carry_a_request_id(grpc_server, model_dir):
    """KServe clients may send fp32_contents instead of raw bytes: the same answer. The call's x-request-id
    (metadata) comes back in the trailing metadata, as HTTP's X-Request-ID header does."""
    batch = preprocessed(model_dir)[:1]
    request = pb.ModelInferRequest(model_name="spot-tiny")
    tensor = request.inputs.add(name="images", datatype="FP32", shape=batch.shape)
    tensor.contents.fp32_contents.extend(batch.ravel().tolist())
    request.outputs.add(name="real_logit")
    with grpc.insecure_channel(grpc_server.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response, call = stub.ModelInfer.with_call(request, metadata=(*KEY.items(), ("x-request-id", "grpc-5")))
        assert ("x-request-id", "grpc-5") in call.trailing_metadata()
        with pytest.raises(grpc.RpcError) as err:  # refused, with a fresh ID
            stub.ModelInfer(request, metadata=(("x-request-id", "not plain"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert re.fullmatch(r"[0-9a-f]{32}", dict(err.value.trailing_metadata())["x-request-id"])
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (expected,) = session.run(["real_logit"], {"images": batch})
    np.testing.assert_allclose(np.frombuffer(response.raw_output_contents[0], "<f4"), expected, rtol=1e-5)


def nan_image(size: int) -> np.ndarray:
    array = np.zeros((1, 3, size, size), np.float32)
    array[0, 0, 0, 0] = np.nan
    return array


# (case, model name, input name, datatype, the array for the model's input size, outputs, code, message fragment)
BAD = [
    ("wrong input name", "spot-tiny", "input", "FP32", lambda s: np.zeros((1, 3, s, s), np.float32), None,
     "INVALID_ARGUMENT", "the model takes"),
    ("wrong datatype", "spot-tiny", "images", "FP16", lambda s: np.zeros((1, 3, s, s), np.float16), None,
     "INVALID_ARGUMENT", "FP16"),
    ("wrong shape", "spot-tiny", "images", "FP32", lambda s: np.zeros((1, 3, s // 2, s // 2), np.float32), None,
     "INVALID_ARGUMENT", "input shape"),
    ("too many images", "spot-tiny", "images", "FP32", lambda s: np.zeros((17, 3, s, s), np.float32), None,
     "INVALID_ARGUMENT", "1 to 16 images"),
    ("NaN", "spot-tiny", "images", "FP32", nan_image, None, "INVALID_ARGUMENT", "NaN"),
    ("unknown output", "spot-tiny", "images", "FP32", lambda s: np.zeros((1, 3, s, s), np.float32), ["fc7"],
     "INVALID_ARGUMENT", "unknown output"),
    ("other model", "resnet50", "images", "FP32", lambda s: np.zeros((1, 3, s, s), np.float32), None,
     "NOT_FOUND", "not served here"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=lambda c: c[0])
def test_bad_requests_get_the_right_status_and_a_message(triton_client, model_dir, case):
    _, model, name, datatype, make, outputs, code, fragment = case
    array = make(json.loads((model_dir / "model.json").read_text())["input"]["shape"][-1])
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    requested = [triton.InferRequestedOutput(n) for n in outputs] if outputs else None
    with pytest.raises(InferenceServerException, match=fragment) as err:
        triton_client.infer(model, [tensor], outputs=requested, headers=KEY)
    assert err.value.status() == f"StatusCode.{code}"
    assert triton_client.is_server_ready()


def test_the_api_key_guards_infer_and_raw_bytes_must_match_the_shape(triton_client, grpc_server, model_dir):
    size = json.loads((model_dir / "model.json").read_text())["input"]["shape"][-1]
    array = np.zeros((1, 3, size, size), np.float32)
    images = triton.InferInput("images", list(array.shape), "FP32")
    images.set_data_from_numpy(array)
    for headers in (None, {"authorization": "Bearer wrong"}):
        with pytest.raises(InferenceServerException, match="API key") as err:
            triton_client.infer("spot-tiny", [images], headers=headers)
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
    request = pb.ModelInferRequest(model_name="spot-tiny", raw_input_contents=[b"\0" * 100])
    request.inputs.add(name="images", datatype="FP32", shape=[1, 3, size, size])
    with grpc.insecure_channel(grpc_server.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request, metadata=tuple(KEY.items()))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and str(3 * size * size * 4) in err.value.details()
        request.inputs[0].contents.fp32_contents.extend([0.0] * (3 * size * size))
        request.raw_input_contents[0] = b"\0" * (3 * size * size * 4)
        with pytest.raises(grpc.RpcError) as err:  # both forms at once: which one counts?
            stub.ModelInfer(request, metadata=tuple(KEY.items()))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not both" in err.value.details()
        # larger than 16 images need: refused by gRPC before it is parsed
        big = pb.ModelInferRequest(model_name="spot-tiny", raw_input_contents=[b"\0" * 2_000_000])
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(big, metadata=tuple(KEY.items()))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as err:  # Triton's extras not offered: loading models
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="spot-tiny"), metadata=tuple(KEY.items()))
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_without_a_model_it_is_live_not_ready_and_infer_is_unavailable(tmp_path):
    import httpx

    port = free_port()
    s = Server(tmp_path, grpc_port=str(port))  # an empty folder: no model
    try:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live() and not client.is_server_ready()
        assert health_status(f"127.0.0.1:{port}") == "NOT_SERVING"
        (entry,) = client.get_model_repository_index(as_json=True)["models"]
        assert entry["name"] == tmp_path.name and entry["state"] == "UNAVAILABLE" and "model.json" in entry["reason"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # only the ready ones: none
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert not stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models
            assert not stub.ModelStatistics(pb.ModelStatisticsRequest()).model_stats  # every model: none
        assert httpx.get(f"{s.url}/v2/models/stats").json() == {"model_stats": []}
        for path in ("/v2/models/spot-tiny/stats", "/v2/models/spot-tiny/config"):
            r = httpx.get(f"{s.url}{path}")
            assert r.status_code == 503 and "model not loaded" in r.json()["error"]
        images = triton.InferInput("images", [1, 3, 64, 64], "FP32")
        images.set_data_from_numpy(np.zeros((1, 3, 64, 64), np.float32))
        with pytest.raises(InferenceServerException, match="model not loaded") as err:
            client.infer("spot-tiny", [images])
        assert err.value.status() == "StatusCode.UNAVAILABLE"
        client.close()
    finally:
        s.stop()


def test_grpc_calls_share_onnx_runtime_runs_with_http_requests(model_dir):
    """The batcher waits up to 5 s for a second image (a batch of 2 runs as soon as it is full): a gRPC infer
    call and a /features request sent together run as one batch of two."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from ..conftest import DATA

    port = free_port()
    s = Server(model_dir, grpc_port=str(port), max_batch_delay_ms="5000", adaptive_batch_delay="false", run_size="max",
               max_batch_size="2")  # fmt: skip
    size = json.loads((model_dir / "model.json").read_text())["input"]["shape"][-1]
    images = triton.InferInput("images", [1, 3, size, size], "FP32")
    images.set_data_from_numpy(np.zeros((1, 3, size, size), np.float32))
    photo = [("files", ("china.jpg", (DATA / "photos" / "sklearn" / "china.jpg").read_bytes(), "image/jpeg"))]
    try:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        with httpx.Client(base_url=s.url, timeout=30) as c, ThreadPoolExecutor(2) as pool:
            infer = pool.submit(client.infer, "spot-tiny", [images])
            features = pool.submit(c.post, "/features", files=photo)
            assert infer.result().as_numpy("real_logit").shape == (1,) and features.result().status_code == 200
            runs = [line for line in c.get("/metrics").text.splitlines() if line.startswith("spot_batch_size_")]
        assert "spot_batch_size_count 1.0" in runs and "spot_batch_size_sum 2.0" in runs
        # a lone call waits for a second image longer than its deadline: the client gives up, the server
        # counts it cancelled and drops its image instead of running it for no one
        with pytest.raises(InferenceServerException) as err:
            client.infer("spot-tiny", [images], client_timeout=1)
        assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        time.sleep(5)  # past the batch delay
        metrics = httpx.get(f"{s.url}/metrics").text
        assert 'route="/inference.GRPCInferenceService/ModelInfer",status="CANCELLED"} 1.0' in metrics
        assert "spot_batch_size_count 1.0" in metrics and client.is_server_ready()
        client.close()
    finally:
        s.stop()


def test_a_grpc_port_held_by_another_server_is_an_error_before_anything_starts(model_dir):
    """Workers bind the port with SO_REUSEPORT, which would share it unnoticed with a server that does too:
    `python -m service` checks it first and stops with the reason."""
    port = free_port()
    holder = grpc.server(futures.ThreadPoolExecutor(1), options=[("grpc.so_reuseport", 1)])
    holder.add_insecure_port(f"127.0.0.1:{port}")
    holder.start()
    try:
        cmd = [sys.executable, "-m", "service", "--port", str(free_port()), "--grpc-port", str(port),
               "--model-dir", str(model_dir), "--workers", "2"]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    finally:
        holder.stop(0)
    assert r.returncode == 2 and f"gRPC port {port} on 127.0.0.1: Address already in use" in r.stderr, r.stderr


def test_two_workers_share_the_grpc_port(model_dir):
    """Each worker binds the port (SO_REUSEPORT); every connection is answered, and /metrics adds them up."""
    import httpx

    port = free_port()
    s = Server(model_dir, ready="/readyz", workers="2", grpc_port=str(port))
    size = json.loads((model_dir / "model.json").read_text())["input"]["shape"][-1]
    images = triton.InferInput("images", [1, 3, size, size], "FP32")
    images.set_data_from_numpy(np.zeros((1, 3, size, size), np.float32))
    try:
        for _ in range(12):  # a connection each, so the kernel spreads them
            client = triton.InferenceServerClient(f"127.0.0.1:{port}")
            assert client.infer("spot-tiny", [images]).as_numpy("real_logit").shape == (1,)
            client.close()
        metrics = httpx.get(f"{s.url}/metrics").text
        assert 'spot_requests_total{route="/inference.GRPCInferenceService/ModelInfer",status="OK"} 12.0' in metrics
    finally:
        s.stop()
