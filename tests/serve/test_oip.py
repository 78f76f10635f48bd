"""The Open Inference Protocol (KServe v2) routes against a real uvicorn process, driven by Triton's own
client (tritonclient.http): the protocol as Triton users' code speaks it, JSON and binary tensors."""

import gzip
import json
import struct
import zlib

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from contract.views import centre_view
from service.images import decode
from service.model import ExportedModel

from ..conftest import DATA

PHOTOS = [DATA / "photos" / "sklearn" / name for name in ("china.jpg", "flower.jpg")]


@pytest.fixture()
def triton_client(server):
    client = triton.InferenceServerClient(server.url.removeprefix("http://"), connection_timeout=30, network_timeout=30)
    yield client
    client.close()


def preprocessed(model_dir) -> np.ndarray:
    """Real photos made into the model's input by the service's own preprocessing."""
    model = ExportedModel(model_dir, "cpu")
    rgbs = [decode(p.read_bytes(), p.name, 10**8, {"JPEG"}) for p in PHOTOS]
    return np.stack([model.normalize(centre_view(rgb, model.size, model.crop_fraction)) for rgb in rgbs])


def test_health_metadata_and_readiness_as_tritonclient_reads_them(triton_client, model_dir, client):
    meta = json.loads((model_dir / "model.json").read_text())
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready(meta["name"]) and triton_client.is_model_ready(meta["name"], meta["version"])
    assert not triton_client.is_model_ready("resnet50") and not triton_client.is_model_ready(meta["name"], "999")
    assert "binary_tensor_data" in triton_client.get_server_metadata()["extensions"]
    described = triton_client.get_model_metadata(meta["name"])
    assert described["versions"] == [meta["version"]]
    assert described["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, *meta["input"]["shape"][1:]]}]
    assert [(o["name"], o["shape"]) for o in described["outputs"]] == [
        (o["name"], [-1, *o["shape"][1:]]) for o in meta["outputs"]
    ]
    with pytest.raises(InferenceServerException, match="not served here"):
        triton_client.get_model_metadata("resnet50")
    infer = client.get("/openapi.json").json()["paths"]["/v2/models/{model_name}/infer"]["post"]
    assert "inputs" in infer["requestBody"]["content"]["application/json"]["schema"]["properties"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_onnx_runtime_on_the_same_tensors(triton_client, model_dir, client, binary):
    batch = preprocessed(model_dir)
    names = ["conv2", "conv5", "real_logit", "mask_logits"]
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = dict(zip(names, session.run(names, {"images": batch}), strict=False))
    images = triton.InferInput("images", list(batch.shape), "FP32")
    images.set_data_from_numpy(batch, binary_data=binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in names]
    before = client.get("/metrics").text
    result = triton_client.infer(  # the binary request also compressed, as tritonclient can send it
        "spot-tiny", [images], outputs=outputs, request_id="req-7", model_version="1",
        request_compression_algorithm="gzip" if binary else None,
    )  # fmt: skip
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_name"] == "spot-tiny"
    assert response["parameters"]["execution_provider"] == "CPUExecutionProvider"
    assert [o["name"] for o in response["outputs"]] == names
    for name in names:
        np.testing.assert_allclose(result.as_numpy(name), expected[name], rtol=1e-5, atol=1e-5)
    counted = [client.get("/metrics").text, before]
    per_text = [
        sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith('spot_images_total{route="/v2'))
        for text in counted
    ]
    assert per_text[0] - per_text[1] == len(batch)


def test_no_outputs_named_means_all_of_them_in_binary(triton_client, model_dir):
    batch = preprocessed(model_dir)[:1]
    images = triton.InferInput("images", list(batch.shape), "FP32")
    images.set_data_from_numpy(batch)
    result = triton_client.infer("spot-tiny", [images])
    meta = json.loads((model_dir / "model.json").read_text())
    assert [o["name"] for o in result.get_response()["outputs"]] == [o["name"] for o in meta["outputs"]]
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    assert result.as_numpy("conv1").shape == (1, *meta["outputs"][0]["shape"][1:])


def raw(header: dict, tail: bytes = b"", length: str | bytes | None = None) -> dict:
    """httpx keyword arguments for a body of JSON `header` then `tail` (Triton's binary extension)."""
    head = json.dumps(header).encode()
    return {"content": head + tail, "headers": {"Inference-Header-Content-Length": length or str(len(head))}}


def compressed(body: bytes, encoding: str) -> dict:
    data = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    return {"content": data, "headers": {"Content-Encoding": encoding}}


def test_the_repository_index_lists_the_model_served(triton_client, client):
    """Triton's model repository extension, read-only: tritonclient's get_model_repository_index works."""
    assert triton_client.get_model_repository_index() == [{"name": "spot-tiny", "version": "1", "state": "READY"}]
    assert client.post("/v2/repository/index", json={"ready": True}).json()[0]["state"] == "READY"
    for body in (b"[1]", b"{", b'{"ready": "yes"}'):
        r = client.post("/v2/repository/index", content=body)
        assert r.status_code == 400 and "error" in r.json(), body
    assert "model_repository" in triton_client.get_server_metadata()["extensions"]


def tensor(shape, datatype="FP32", name="images", **fields) -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, **fields}


ZEROS = [0.0] * (3 * 32 * 32)
FOUR = struct.pack("<f", 0.0) * (3 * 32 * 32)
# fmt: off
BAD_REQUESTS = [
    ("not json", {"content": b"\x00\xff{"}, 400, "not an inference request"),
    ("a json list", {"json": [1, 2]}, 400, "not an inference request"),
    ("no inputs", {"json": {"inputs": []}}, 400, "inputs"),
    ("wrong input name", {"json": {"inputs": [tensor([1, 3, 32, 32], name="x", data=ZEROS)]}}, 400, "'images'"),
    ("two inputs", {"json": {"inputs": [tensor([1, 3, 32, 32], data=ZEROS)] * 2}}, 400, "one input"),
    ("integer datatype", {"json": {"inputs": [tensor([1, 3, 32, 32], "INT8", data=ZEROS)]}}, 400, "datatype INT8"),
    ("wrong image size", {"json": {"inputs": [tensor([1, 3, 64, 64], data=ZEROS)]}}, 400, "[-1, 3, 32, 32]"),
    ("no images", {"json": {"inputs": [tensor([0, 3, 32, 32], data=[])]}}, 400, "1 to 16 images"),
    ("too many images", {"json": {"inputs": [tensor([10**12, 3, 32, 32], data=[])]}}, 400, "1 to 16 images"),
    ("too few values", {"json": {"inputs": [tensor([1, 3, 32, 32], data=ZEROS[:-1])]}}, 400, "needs 3072"),
    ("strings", {"json": {"inputs": [tensor([1, 3, 32, 32], data=["0"] * 3072)]}}, 400, "must be numbers"),
    ("ragged nesting", {"json": {"inputs": [tensor([1, 3, 32, 32], data=[[0.0], [0.0, 1.0]])]}}, 400, "equal lengths"),
    ("no data", {"json": {"inputs": [tensor([1, 3, 32, 32])]}}, 400, "has no data"),
    ("infinity", {"json": {"inputs": [tensor([1, 3, 32, 32], data=[1e39] * 3072)]}}, 400, "infinite"),
    ("NaN in binary", raw({"inputs": [tensor([1, 3, 32, 32], parameters={"binary_data_size": 12288})]},
                          struct.pack("<f", float("nan")) * 3072), 400, "NaN"),
    ("binary size wrong", raw({"inputs": [tensor([1, 3, 32, 32], parameters={"binary_data_size": 100})]}, FOUR),
     400, "is 12288 bytes"),
    ("binary bytes missing", raw({"inputs": [tensor([1, 3, 32, 32], parameters={"binary_data_size": 12288})]},
                                 FOUR[:-4]), 400, "12284 bytes follow"),
    ("bytes but no binary input", raw({"inputs": [tensor([1, 3, 32, 32], data=ZEROS)]}, b"xxxx"),
     400, "no input has binary_data_size"),
    ("data and binary", raw({"inputs": [tensor([1, 3, 32, 32], data=ZEROS, parameters={"binary_data_size": 12288})]},
                            FOUR), 400, "not both"),
    ("header length past the body", raw({"inputs": []}, length="999999"), 400, "within the body"),
    ("header length not a number", raw({"inputs": []}, length="-5"), 400, "within the body"),
    ("unknown output", {"json": {"inputs": [tensor([1, 3, 32, 32], data=ZEROS)], "outputs": [{"name": "fc7"}]}},
     400, "valid: conv1, conv2"),
    ("binary_data not a flag", {"json": {"inputs": [tensor([1, 3, 32, 32], data=ZEROS)],
                                         "outputs": [{"name": "conv1", "parameters": {"binary_data": "yes"}}]}},
     400, "true or false"),
    ("classification", {"json": {"inputs": [tensor([1, 3, 32, 32], data=ZEROS)],
                                 "outputs": [{"name": "conv1", "parameters": {"classification": 3}}]}},
     400, "not supported"),
    ("superscript digits as the length", raw({"inputs": []}, length=b"\xb9\xb2"), 400, "within the body"),
    ("a JSON tensor larger than 16 images", {"json": {"inputs": [tensor([16, 3, 32, 32], data=[1.5] * 600_000)]}},
     413, "more than 16 images need"),
    ("brotli body", {"json": {"inputs": []}, "headers": {"Content-Encoding": "br"}}, 415, "gzip, deflate"),
    ("broken gzip", {"content": b"\x1f\x8b not gzip", "headers": {"Content-Encoding": "gzip"}}, 400, "not valid gzip"),
    ("truncated deflate",
     {"content": zlib.compress(b'{"inputs": []}')[:-6], "headers": {"Content-Encoding": "deflate"}}, 400, "truncated"),
    ("a gzip bomb", compressed(b" " * 40_000_000, "gzip"), 413, "inflates to more than"),
    ("deflate, inside a bad request", compressed(b'{"inputs": []}', "deflate"), 400, "inputs"),
]
# fmt: on


@pytest.mark.parametrize("case, kwargs, status, text", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_infer_requests_get_an_error_that_says_what_to_send(client, case, kwargs, status, text):
    r = client.post("/v2/models/spot-tiny/infer", **kwargs)
    assert r.status_code == status, r.text
    assert text in r.json()["error"]
    assert client.get("/v2/health/ready").status_code == 200


def test_unknown_model_or_version_is_404_everywhere(client):
    body = {"inputs": [tensor([1, 3, 32, 32], data=ZEROS)]}
    for path in ("/v2/models/resnet50", "/v2/models/spot-tiny/versions/2", "/v2/models/resnet50/ready"):
        r = client.get(path)
        assert r.status_code == 404 and "spot-tiny version 1 is" in r.json()["error"]
    r = client.post("/v2/models/spot-tiny/versions/2/infer", json=body)
    assert r.status_code == 404 and "spot-tiny version 2 is not served" in r.json()["error"]
    assert client.post("/v2/models/spot-tiny/versions/1/infer", json=body).status_code == 200


def test_infer_requests_share_onnx_runtime_runs_with_features_requests(model_dir):
    """The batcher waits up to 5 s for a second image (delay not adaptive; a batch of 2 runs as soon as it is
    full): an infer request and a /features request sent together run as one batch of two."""
    from concurrent.futures import ThreadPoolExecutor

    from bench.server import Server

    s = Server(model_dir, max_batch_delay_ms="5000", adaptive_batch_delay="false", max_batch_size="2", run_size="max")
    body = {"inputs": [tensor([1, 3, 32, 32], data=ZEROS)], "outputs": [{"name": "conv5"}]}
    photo = [("files", ("china.jpg", PHOTOS[0].read_bytes(), "image/jpeg"))]
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c, ThreadPoolExecutor(2) as pool:
            infer = pool.submit(c.post, "/v2/models/spot-tiny/infer", json=body)
            features = pool.submit(c.post, "/features", files=photo)
            assert infer.result().status_code == 200 and features.result().status_code == 200
            runs = [line for line in c.get("/metrics").text.splitlines() if line.startswith("spot_batch_size_")]
        assert "spot_batch_size_count 1.0" in runs and "spot_batch_size_sum 2.0" in runs
    finally:
        s.stop()


def test_the_most_images_as_json_numbers_in_full_precision_are_taken():
    """SPOT_MAX_FILES images of the longest float32 text (negative, full repr, with json.dumps' ", ": 25
    characters a number) stay under the JSON bound, on the shipped 64 px model (24 a number refused them)."""
    from bench.server import Server

    from ..conftest import REPO

    values = np.full((16, 3, 64, 64), -1.2345678e-05, np.float32)
    body = json.dumps({"inputs": [tensor(list(values.shape), data=values.ravel().tolist())]})
    s = Server(REPO / "models" / "spot-tiny64")
    try:
        r = httpx.post(f"{s.url}/v2/models/spot-tiny64/infer", content=body, timeout=60)
        assert r.status_code == 200, r.text[:300]
        assert {o["name"]: o["shape"] for o in r.json()["outputs"]}["real_logit"] == [16]
    finally:
        s.stop()
