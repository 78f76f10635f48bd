"""Triton's statistics and model configuration extensions against a real uvicorn process, read with Triton's
own clients (HTTP and gRPC): what Triton's tools and dashboards ask a server for."""

import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from bench.server import Server, free_port
from deploy.triton.make_repository import config_pbtxt

from .test_oip import PHOTOS


def zeros(n: int, size: int) -> np.ndarray:
    return np.zeros((n, 3, size, size), np.float32)


def infer_input(module, batch: np.ndarray):
    tensor = module.InferInput("images", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    return tensor


@pytest.fixture(scope="module")
def both_protocols(model_dir):
    """A server of its own (the statistics start from zero) with gRPC on too, and a client of each kind."""
    port = free_port()
    s = Server(model_dir, grpc_port=str(port))
    http = triton_http.InferenceServerClient(s.url.removeprefix("http://"), network_timeout=30)
    grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    yield s, http, grpc
    http.close()
    grpc.close()
    s.stop()


def test_statistics_count_requests_images_and_batches_from_every_route(both_protocols, model_dir):
    s, http, grpc = both_protocols
    size = http.get_model_metadata("spot-tiny")["inputs"][0]["shape"][-1]
    before = http.get_inference_statistics("spot-tiny")["model_stats"]
    assert before == [
        {
            "name": "spot-tiny",
            "version": "1",
            "last_inference": 0,
            "inference_count": 0,
            "execution_count": 0,
            "inference_stats": {
                k: {"count": 0, "ns": 0}
                for k in (
                    "success",
                    "fail",
                    "queue",
                    "compute_input",
                    "compute_infer",
                    "compute_output",
                    "cache_hit",
                    "cache_miss",
                )  # fmt: skip
            },
            "batch_stats": [],
        }
    ]
    started = time.time()
    photos = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in PHOTOS]
    assert httpx.post(f"{s.url}/features", files=photos, timeout=30).status_code == 200  # a batch of 2
    http.infer("spot-tiny", [infer_input(triton_http, zeros(3, size))])  # 3
    grpc.infer("spot-tiny", [infer_input(triton_grpc, zeros(1, size))])  # 1: one after the other, alone
    finished = time.time()

    [stats] = http.get_inference_statistics("spot-tiny")["model_stats"]
    assert (stats["inference_count"], stats["execution_count"]) == (6, 3)
    assert started * 1000 - 1 <= stats["last_inference"] <= finished * 1000 + 1
    assert [b["batch_size"] for b in stats["batch_stats"]] == [1, 2, 3]
    for batch in stats["batch_stats"]:
        assert all(batch[phase]["count"] == 1 for phase in ("compute_input", "compute_infer", "compute_output"))
        assert batch["compute_infer"]["ns"] > 0
    inference = stats["inference_stats"]
    assert inference["fail"] == {"count": 0, "ns": 0}
    assert {inference[k]["count"] for k in ("success", "queue", "compute_input", "compute_infer")} == {3}
    # one request a batch: the requests' compute time is the batches'
    assert inference["compute_infer"]["ns"] == pytest.approx(
        sum(b["compute_infer"]["ns"] for b in stats["batch_stats"]), abs=10
    )
    parts = sum(inference[k]["ns"] for k in ("queue", "compute_input", "compute_infer", "compute_output"))
    assert parts < inference["success"]["ns"] <= parts + 50_000_000  # queued -> answered: the phases and hand-offs

    assert httpx.get(f"{s.url}/v2/models/stats").json() == {"model_stats": [stats]}  # every model: the one
    assert httpx.get(f"{s.url}/v2/models/spot-tiny/versions/1/stats").json() == {"model_stats": [stats]}
    over_grpc = grpc.get_inference_statistics("spot-tiny")
    assert over_grpc == json_format.ParseDict({"model_stats": [stats]}, pb.ModelStatisticsResponse())
    assert grpc.get_inference_statistics("") == over_grpc
    assert "spot_batch_size_count 3.0" in httpx.get(f"{s.url}/metrics").text  # the same batches as /metrics counts

    for unknown in ("/v2/models/resnet50/stats", "/v2/models/spot-tiny/versions/2/stats"):
        r = httpx.get(f"{s.url}{unknown}")
        assert r.status_code == 404 and "spot-tiny version 1 is" in r.json()["error"]
    with pytest.raises(InferenceServerException, match="not served here") as err:
        grpc.get_inference_statistics("resnet50")
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_model_configuration_describes_the_model_and_its_batching(both_protocols, model_dir):
    s, http, grpc = both_protocols
    meta = httpx.get(f"{s.url}/models").json()
    config = http.get_model_config("spot-tiny")
    assert (
        config
        == {
            "name": "spot-tiny",
            "platform": "onnxruntime_onnx",
            "backend": "onnxruntime",
            "max_batch_size": 16,  # SPOT_MAX_FILES: what one request may carry
            "input": [
                {
                    "name": "images",
                    "data_type": "TYPE_FP32",
                    "format": "FORMAT_NCHW",
                    "dims": meta["input"]["shape"][1:],
                }
            ],  # fmt: skip
            "output": [
                {"name": o["name"], "data_type": "TYPE_FP32", "dims": o["shape"][1:]}
                if o["name"] != "real_logit"
                else {"name": "real_logit", "data_type": "TYPE_FP32", "dims": [1], "reshape": {"shape": []}}  # [N]
                for o in meta["outputs"]
            ],
            "instance_group": [{"name": "spot-tiny", "count": 1, "kind": "KIND_CPU"}],
            "parameters": {
                "max_images_per_run": {"string_value": "64"},
                "execution_provider": {"string_value": "CPUExecutionProvider"},
            },
            "dynamic_batching": {"max_queue_delay_microseconds": 2000},
        }
    )
    assert httpx.get(f"{s.url}/v2/models/spot-tiny/versions/1/config").json() == config
    # the tensors as deploy/triton's generator writes them for Triton itself
    pbtxt = config_pbtxt({**meta, "sha256": "0" * 64}, "spot-tiny", 16, [16], 2000, "CPU", 1)
    written = text_format.Parse(pbtxt, model_config_pb2.ModelConfig())
    served = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    served.input[0].ClearField("format")  # the generator leaves it out: Triton reads NCHW from the model
    assert (list(served.input), list(served.output)) == (list(written.input), list(written.output))
    over_grpc = grpc.get_model_config("spot-tiny", as_json=True)["config"]
    assert over_grpc["max_batch_size"] == 16 and over_grpc["input"][0]["dims"] == [
        str(d) for d in config["input"][0]["dims"]
    ]
    assert over_grpc["dynamic_batching"] == {"max_queue_delay_microseconds": "2000"}  # uint64 as JSON text
    assert "statistics" in http.get_server_metadata()["extensions"]
    assert "model_configuration" in grpc.get_server_metadata(as_json=True)["extensions"]
    with pytest.raises(InferenceServerException, match="not served here"):
        http.get_model_config("resnet50")


def test_requests_that_time_out_count_as_failures_and_batching_off_shows_in_the_config(model_dir):
    """SPOT_REQUEST_TIMEOUT_S=0: every request is a 504 before the model takes it; the batcher drops it when
    its turn comes and counts it as failed."""
    s = Server(model_dir, request_timeout_s="0", max_batch_size="1")
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            photo = [("files", ("china.jpg", PHOTOS[0].read_bytes(), "image/jpeg"))]
            assert c.post("/features", files=photo).status_code == 504
            deadline = time.time() + 10
            while (stats := c.get("/v2/models/spot-tiny/stats").json()["model_stats"][0])["inference_stats"]["fail"][
                "count"
            ] == 0 and time.time() < deadline:
                time.sleep(0.05)
            inference = stats["inference_stats"]
            assert inference["fail"]["count"] == 1 and inference["fail"]["ns"] > 0
            assert inference["success"]["count"] == 0 and stats["execution_count"] == 0
            config = c.get("/v2/models/spot-tiny/config").json()
            assert (
                "dynamic_batching" not in config and config["parameters"]["max_images_per_run"]["string_value"] == "1"
            )
    finally:
        s.stop()


def test_a_big_photos_tiles_count_as_one_request_in_runs_of_at_most_max_batch_size(model_dir):
    s = Server(model_dir, max_batch_size="4", run_size="max")
    try:
        with httpx.Client(base_url=s.url, timeout=60) as c:
            photo = [("files", ("china.jpg", PHOTOS[0].read_bytes(), "image/jpeg"))]
            r = c.post("/spot", files=photo)
            assert r.status_code == 200
            tiles = r.json()["results"][0]["tiling"]["tiles"]
            assert tiles > 4
            [stats] = c.get("/v2/models/spot-tiny/stats").json()["model_stats"]
            sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}
            assert max(sizes) <= 4 and sum(size * n for size, n in sizes.items()) == tiles == stats["inference_count"]
            assert stats["execution_count"] == sum(sizes.values()) == -(-tiles // 4)
            assert stats["inference_stats"]["success"]["count"] == 1
            assert f"spot_batch_size_count {stats['execution_count']}.0" in c.get("/metrics").text
    finally:
        s.stop()
