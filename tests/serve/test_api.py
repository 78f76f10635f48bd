"""Every endpoint against a real uvicorn process; results equal ONNX Runtime called directly."""

import base64
import io
import json
import os
import re
import zlib

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from service.images import decode
from service.model import ExportedModel
from service.preprocess import centre_view, tiles

from ..conftest import DATA

PHOTO = DATA / "photos" / "sklearn" / "china.jpg"  # 640 x 427


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def direct(model_dir, rgbs, layers):
    """ONNX Runtime on the same preprocessed tensors, without the service."""
    model = ExportedModel(model_dir, "cpu")
    batch = np.stack([model.normalize(centre_view(rgb, model.size, model.crop_fraction)) for rgb in rgbs])
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip(layers, session.run(layers, {"images": batch}), strict=False))


def test_health_ready_and_models(client, model_dir):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["provider"] == "CPUExecutionProvider"
    assert client.get("/models").json() == json.loads((model_dir / "model.json").read_text())
    assert "/features" in client.get("/openapi.json").json()["paths"]


def test_features_multipart_equal_onnx_runtime(client, model_dir):
    data = PHOTO.read_bytes()
    r = client.post(
        "/features",
        params={"layers": "conv2,conv5", "pool": "none"},
        files=[("files", ("china.jpg", data, "image/jpeg"))],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "spot-tiny" and body["provider"] == "CPUExecutionProvider"
    rgb = decode(data, "x", 10**8, {"JPEG"})
    expected = direct(model_dir, [rgb], ["conv2", "conv5"])
    for layer in ("conv2", "conv5"):
        got = np.asarray(body["results"][0]["features"][layer]["values"], np.float32)
        assert got.shape == expected[layer][0].shape
        np.testing.assert_allclose(got, expected[layer][0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("pool, dims", [("avg", 32), ("max", 32), ("probe", None)])
def test_pooling_and_base64_float16_json_form(client, model_dir, pool, dims):
    meta = json.loads((model_dir / "model.json").read_text())
    imgs = [png_bytes(Image.new("RGB", (50, 40), c)) for c in ((200, 30, 30), (10, 120, 250))]
    payload = {"images": [base64.b64encode(b).decode() for b in imgs], "layers": ["conv5"], "pool": pool,
               "encoding": "base64", "dtype": "float16", "normalize": "l2"}  # fmt: skip
    r = client.post("/features", json=payload)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["name"] for x in results] == ["images[0]", "images[1]"]
    for x in results:
        f = x["features"]["conv5"]
        values = np.frombuffer(base64.b64decode(f["values"]), dtype="<f2")
        assert values.size == (dims or meta["probe_pooling"]["conv5"]["dims"]) == f["shape"][0]
        assert np.linalg.norm(values.astype(np.float32)) == pytest.approx(1.0, abs=1e-2)


def test_json_layers_may_be_comma_separated_as_in_the_query(client):
    image = base64.b64encode(png_bytes(Image.new("RGB", (40, 40), (9, 99, 199)))).decode()
    listed = client.post("/features", json={"images": [image], "layers": ["conv2", "conv5"]})
    joined = client.post("/features", json={"images": [image], "layers": "conv2,conv5"})
    assert joined.status_code == listed.status_code == 200
    assert joined.json()["results"] == listed.json()["results"] and set(listed.json()["results"][0]["features"]) == {
        "conv2",
        "conv5",
    }


def test_unknown_layer_and_pool_list_the_valid_ones(client):
    files = [("files", ("a.png", png_bytes(Image.new("RGB", (40, 40))), "image/png"))]
    r = client.post("/features", params={"layers": "fc7"}, files=files)
    assert r.status_code == 422 and "conv1" in r.json()["detail"] and "fc7" in r.json()["detail"]
    r = client.post("/features", params={"pool": "median"}, files=files)
    assert r.status_code == 422 and "probe" in r.json()["detail"]


def test_spot_untiled_and_tiled_heatmaps_at_image_size(client, model_dir):
    small = png_bytes(Image.new("RGB", (32, 32), (90, 90, 90)))
    big = PHOTO.read_bytes()
    r = client.post(
        "/spot", files=[("files", ("small.png", small, "image/png")), ("files", ("china.jpg", big, "image/jpeg"))]
    )
    assert r.status_code == 200, r.text
    small_r, big_r = r.json()["results"]
    assert small_r["tiling"]["tiles"] == 1 and small_r["mask"]["rows"] == small_r["mask"]["cols"] == 4
    assert np.asarray(small_r["heatmap"]["values"]).shape == (32, 32)
    assert big_r["tiling"]["tiles"] > 100 and np.asarray(big_r["heatmap"]["values"]).shape == (427, 640)
    for item in (small_r, big_r):
        assert 0.0 <= item["artifact_score"] <= 1.0
    # the score is the mean tile probability from ONNX Runtime run directly
    model = ExportedModel(model_dir, "cpu")
    t, _, _ = tiles(decode(big, "x", 10**8, {"JPEG"}), model.size)
    logits = model.run(np.stack([model.normalize(x) for x in t]), ["real_logit"])["real_logit"]
    assert big_r["artifact_score"] == pytest.approx(float((1 / (1 + np.exp(logits))).mean()), abs=1e-5)


def test_spot_overlay_png_has_the_image_size(client):
    r = client.post(
        "/spot", params={"heatmap": "overlay"}, files=[("files", ("c.jpg", PHOTO.read_bytes(), "image/jpeg"))]
    )
    assert r.status_code == 200, r.text
    png = base64.b64decode(r.json()["results"][0]["heatmap"]["png_base64"])
    assert Image.open(io.BytesIO(png)).size == (640, 427)


def test_spot_analyses_a_photo_over_max_tiles_downscaled_with_the_heatmap_at_full_size(client):
    """2560 x 1600 would be about 16,000 tiles of the test model's 32 px: it is analysed at the largest size
    within SPOT_MAX_TILES (1024), exactly as if the client had sent it at that size."""
    data = (DATA / "photos" / "debian_mate_nature" / "Aqua.jpg").read_bytes()
    r = client.post("/spot", params={"heatmap": "png"}, files=[("files", ("aqua.jpg", data, "image/jpeg"))])
    assert r.status_code == 200, r.text
    item = r.json()["results"][0]
    tiling, (w, h) = item["tiling"], item["tiling"]["scaled_to"]
    assert (
        900 < tiling["tiles"] <= 1024
        and tiling["scale"] == pytest.approx(w / 2560)
        and w / h == pytest.approx(1.6, abs=0.01)
    )
    assert Image.open(io.BytesIO(base64.b64decode(item["heatmap"]["png_base64"]))).size == (2560, 1600)
    smaller = Image.fromarray(decode(data, "x", 10**8, {"JPEG"})).resize((w, h), Image.Resampling.BILINEAR)
    r = client.post("/spot", files=[("files", ("smaller.png", png_bytes(smaller), "image/png"))])
    same = r.json()["results"][0]
    assert same["tiling"]["scale"] == 1 and same["tiling"]["tiles"] == tiling["tiles"]
    assert same["artifact_score"] == pytest.approx(item["artifact_score"], abs=1e-6)
    np.testing.assert_allclose(same["mask"]["values"], item["mask"]["values"], atol=1e-5)


def _truncated_jpeg() -> bytes:
    return PHOTO.read_bytes()[:2000]


def _huge_png_header() -> bytes:
    data = bytearray(png_bytes(Image.new("RGB", (8, 8))))
    data[16:24] = (100000).to_bytes(4, "big") + (100000).to_bytes(4, "big")  # IHDR width, height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # a valid chunk: only the size is hostile
    return bytes(data)


BAD_FILES = {
    "zero bytes": b"",
    "text file": b"hello, I am not an image",
    "truncated jpeg": None,
    "huge-dimension png header": None,
    "html": b"<html><body>no</body></html>",
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_get_400_and_the_server_stays_ready(client, case):
    data = {"truncated jpeg": _truncated_jpeg, "huge-dimension png header": _huge_png_header}.get(
        case, lambda: BAD_FILES[case]
    )()
    for route in ("/features", "/spot"):
        r = client.post(route, files=[("files", ("bad", data, "application/octet-stream"))])
        assert r.status_code == 400, (case, r.text)
        assert r.json()["detail"]
    assert client.get("/readyz").status_code == 200


def test_bad_requests_get_clear_4xx(client):
    img = png_bytes(Image.new("RGB", (40, 40)))
    cases = [
        (client.post("/features", files=[("image", ("a.png", img, "image/png"))]), 422, "unknown form fields"),
        (client.post("/features", files=[("files", ("a.png", img, "image/png"))] * 17), 413, "at most 16 per request"),
        (client.post("/features", json={"images": ["***not base64***"]}), 400, "not valid base64"),
        (client.post("/features", json={"imgs": ["aGk="]}), 422, "images"),
        (
            client.post("/features", content=b"{not json", headers={"content-type": "application/json"}),
            400,
            "not valid JSON",
        ),
        (client.post("/features", content=b"raw", headers={"content-type": "text/plain"}), 415, "multipart"),
        (
            client.post("/spot", params={"heatmap": "jpeg"}, files=[("files", ("a.png", img, "image/png"))]),
            422,
            "overlay",
        ),
    ]
    for response, status, text in cases:
        assert response.status_code == status, response.text
        assert text in json.dumps(response.json())
    assert client.get("/readyz").status_code == 200


def test_odd_images_are_converted(client):
    sixteen = png_bytes(Image.fromarray(np.full((30, 30), 40000, np.uint16)))
    cmyk = png_bytes(Image.new("CMYK", (30, 30), (0, 200, 0, 0)), "JPEG")
    grey = png_bytes(Image.new("L", (30, 30), 100))
    rgba = png_bytes(Image.new("RGBA", (30, 30), (0, 0, 0, 0)))
    files = [("files", (f"{i}.img", b, "application/octet-stream")) for i, b in enumerate((sixteen, cmyk, grey, rgba))]
    r = client.post("/features", files=files)
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 4


def test_16_bit_images_are_scaled_by_their_range_not_their_content(client):
    """A 16-bit image is its 8-bit version x 257: the same features; a dark one (all below 256) stays dark
    and one bright pixel does not change how the rest is read."""
    grey = np.asarray(Image.open(PHOTO).convert("L"))
    dark = grey.astype(np.uint16)  # 0..255 out of 65535: nearly black
    bright_pixel = dark.copy()
    bright_pixel[0, 0] = 256

    def features(*arrays):
        files = [("files", (f"{i}.png", png_bytes(Image.fromarray(a)), "image/png")) for i, a in enumerate(arrays)]
        r = client.post("/features", params={"layers": "conv1", "pool": "avg"}, files=files)
        assert r.status_code == 200, r.text
        return [np.array(item["features"]["conv1"]["values"]) for item in r.json()["results"]]

    eight, sixteen, dark_f, bright_f, black = features(
        grey, grey.astype(np.uint16) * 257, dark, bright_pixel, (dark / 257).round().astype(np.uint8)
    )
    np.testing.assert_array_equal(sixteen, eight)
    np.testing.assert_array_equal(dark_f, black)
    np.testing.assert_allclose(bright_f, dark_f, atol=1e-3 * np.abs(eight).max())
    assert np.abs(dark_f - eight).max() > 0.1 * np.abs(eight).max()  # dark is not read as the 8-bit image


def test_missing_or_corrupt_model_is_not_ready_with_a_clear_error(tmp_path, model_dir):
    from bench.server import Server

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((model_dir / "model.json").read_text())
    (broken / "model.onnx").write_bytes((model_dir / "model.onnx").read_bytes()[:1000])
    s = Server(broken)
    try:
        import httpx

        r = httpx.get(f"{s.url}/readyz")
        assert r.status_code == 503 and "sha256" in r.json()["error"]
        assert httpx.post(f"{s.url}/features", files=[("files", ("a.png", b"x", "image/png"))]).status_code == 503
        assert httpx.get(f"{s.url}/v2/health/ready").status_code == 400  # the Open Inference Protocol's "false"
        r = httpx.post(f"{s.url}/v2/models/spot-tiny/infer", json={"inputs": []})
        assert r.status_code == 503 and "sha256" in r.json()["error"]
    finally:
        s.stop()


def test_features_default_to_the_model_json_default_layer(tmp_path, model_dir, client):
    """No `layers` asked for: the layer model.json names (the export's best probe layer), else the last one."""
    import httpx

    from bench.server import Server

    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["default_layer"] == "conv5" and "no linear probe" in meta["default_layer_reason"]
    files = [("files", ("a.png", png_bytes(Image.new("RGB", (40, 30), (90, 20, 200))), "image/png"))]
    assert list(client.post("/features", files=files).json()["results"][0]["features"]) == ["conv5"]
    for default, ready in (("conv3", True), ("conv9", False)):
        folder = tmp_path / default
        folder.mkdir()
        (folder / "model.onnx").write_bytes((model_dir / "model.onnx").read_bytes())
        (folder / "model.json").write_text(json.dumps({**meta, "default_layer": default}))
        s = Server(folder)
        try:
            r = httpx.get(f"{s.url}/readyz")
            if ready:
                got = httpx.post(f"{s.url}/features", files=files).json()["results"][0]["features"]
                assert list(got) == ["conv3"] and httpx.get(f"{s.url}/models").json()["default_layer"] == "conv3"
            else:
                assert r.status_code == 503 and "default_layer 'conv9'" in r.json()["error"]
        finally:
            s.stop()


def test_an_oversized_body_is_refused_before_it_is_read(model_dir):
    import httpx

    from bench.server import Server

    s = Server(model_dir, max_body_bytes="4096")
    try:
        r = httpx.post(f"{s.url}/features", files=[("files", ("a.png", b"x" * 20000, "image/png"))])
        assert r.status_code == 413 and "exceeds the limit of 4096" in r.json()["detail"]
        r = httpx.post(f"{s.url}/v2/models/spot-tiny/infer", content=b"x" * 20000)
        assert r.status_code == 413 and "exceeds the limit of 4096" in r.json()["error"]  # the protocol's key
        assert httpx.get(f"{s.url}/readyz").status_code == 200
        # refused before routing, yet counted under the route asked for (a dashboard of /features sees it)
        text = httpx.get(f"{s.url}/metrics").text
        assert 'spot_requests_total{route="/features",status="413"} 1.0' in text
        assert 'spot_requests_total{route="/v2/models/{model_name}/infer",status="413"} 1.0' in text
        assert 'route="unmatched"' not in text
    finally:
        s.stop()


def test_api_key_guards_inference(model_dir):
    import httpx

    from bench.server import Server

    s = Server(model_dir, api_key="s3cret")
    files = [("files", ("a.png", png_bytes(Image.new("RGB", (40, 40))), "image/png"))]
    try:
        assert httpx.post(f"{s.url}/features", files=files).status_code == 401
        bad = httpx.post(f"{s.url}/spot", files=files, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and "API key" in bad.json()["detail"]
        tensor = {"inputs": [{"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0] * 3072}]}
        assert httpx.post(f"{s.url}/v2/models/spot-tiny/infer", json=tensor).status_code == 401
        assert "spot_images_total{" not in httpx.get(f"{s.url}/metrics").text  # nothing was decoded or run
        assert httpx.post(f"{s.url}/spot", files=files, headers={"Authorization": "s3cret"}).status_code == 401
        assert httpx.post(f"{s.url}/spot", files=files, headers={"Authorization": "Basic s3cret"}).status_code == 401
        good = httpx.post(f"{s.url}/features", files=files, headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200
        assert 'spot_images_total{route="/features"} 1.0' in httpx.get(f"{s.url}/metrics").text
        lower = httpx.post(f"{s.url}/features", files=files, headers={"Authorization": "bearer s3cret"})
        assert lower.status_code == 200  # the scheme is case-insensitive (RFC 7235), the key is not
        assert httpx.post(f"{s.url}/spot", files=files, headers={"Authorization": "Bearer S3CRET"}).status_code == 401
        assert httpx.get(f"{s.url}/healthz").status_code == 200  # health stays open for probes
    finally:
        s.stop()


def test_cors_lets_the_listed_origins_call_the_api_and_only_them(model_dir, client):
    import httpx

    from bench.server import Server

    files = [("files", ("a.png", png_bytes(Image.new("RGB", (40, 40))), "image/png"))]
    app, evil = {"Origin": "https://app.example"}, {"Origin": "https://evil.example"}
    assert "access-control-allow-origin" not in client.post("/spot", files=files, headers=app).headers  # default: none
    s = Server(model_dir, cors_origins="https://app.example, https://other.example", max_body_bytes="4096")
    try:
        ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        preflight = httpx.options(f"{s.url}/spot", headers={**app, **ask})
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == app["Origin"]
        assert httpx.options(f"{s.url}/spot", headers={**evil, **ask}).status_code == 400
        r = httpx.post(f"{s.url}/spot", files=files, headers=app)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == app["Origin"]
        refused = httpx.post(f"{s.url}/features", content=b"x" * 20000, headers=app)  # the Guard's 413, readable
        assert refused.status_code == 413 and refused.headers["access-control-allow-origin"] == app["Origin"]
        assert "access-control-allow-origin" not in httpx.post(f"{s.url}/spot", files=files, headers=evil).headers
    finally:
        s.stop()


def test_openapi_documents_the_multipart_and_json_forms(client):
    spec = client.get("/openapi.json").json()
    for route in ("/features", "/spot"):
        content = spec["paths"][route]["post"]["requestBody"]["content"]
        assert {"multipart/form-data", "application/json"} <= set(content)
    operations = [op["operationId"] for methods in spec["paths"].values() for op in methods.values()]
    assert len(operations) == len(set(operations))  # unique, or code generators refuse the schema


def test_openapi_puts_the_inference_routes_first_with_their_options_and_answers(client):
    """/docs lists paths in the schema's order; each route documents its own options and its answer."""
    spec = client.get("/openapi.json").json()
    assert list(spec["paths"])[:2] == ["/features", "/spot"]
    for route, options, answer in (
        ("/features", ["layers", "pool", "normalize", "encoding", "dtype"], "FeaturesAnswer"),
        ("/spot", ["heatmap"], "SpotAnswer"),
    ):
        operation = spec["paths"][route]["post"]
        assert [p["name"] for p in operation["parameters"]] == options
        json_form = operation["requestBody"]["content"]["application/json"]["schema"]
        assert list(json_form["properties"]) == ["images", *options] and json_form["additionalProperties"] is False
        schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert (
            schema["$ref"].endswith(f"/{answer}") and "results" in spec["components"]["schemas"][answer]["properties"]
        )
    assert spec["paths"]["/readyz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]


def test_a_model_whose_mask_cells_are_not_whole_pixels_is_refused(tmp_path, model_dir):
    from service.model import ModelError

    meta = json.loads((model_dir / "model.json").read_text())
    (tmp_path / "model.onnx").write_bytes((model_dir / "model.onnx").read_bytes())
    (tmp_path / "model.json").write_text(json.dumps({**meta, "mask_grid": 5}))  # 32 px input / 5
    with pytest.raises(ModelError, match="mask_grid 5 must divide input_size"):
        ExportedModel(tmp_path, "cpu")


def _batch_histogram(metrics_text: str) -> dict[str, float]:
    counts = {}
    for line in metrics_text.splitlines():
        if line.startswith("spot_batch_size_bucket"):
            le = line.split('le="')[1].split('"')[0]
            counts[le] = float(line.rsplit(" ", 1)[1])
    return counts


def test_concurrent_requests_are_batched_and_counted(model_dir):
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from bench.server import Server

    s = Server(model_dir, max_batch_delay_ms="20", adaptive_batch_delay="false")
    data = png_bytes(Image.new("RGB", (64, 64), (10, 200, 30)))
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c, ThreadPoolExecutor(16) as pool:
            codes = list(
                pool.map(
                    lambda _: c.post("/features", files=[("files", ("a.png", data, "image/png"))]).status_code,
                    range(64),
                )
            )
            assert codes == [200] * 64
            text = c.get("/metrics").text
        hist = _batch_histogram(text)
        assert hist["+Inf"] < 64  # fewer runs than requests
        assert hist["1.0"] < hist["+Inf"]  # at least one run held more than one image
        assert 'spot_requests_total{route="/features",status="200"} 64.0' in text
        assert 'spot_images_total{route="/features"} 64.0' in text
        assert 'spot_stage_seconds_count{stage="queue"}' in text and 'stage="preprocess"' in text
    finally:
        s.stop()


def test_metrics_show_the_images_waiting_and_which_model_and_provider_serve(model_dir):
    """A first request waits 5 s for company (delay not adaptive): meanwhile its images are pending."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from bench.server import Server

    s = Server(model_dir, max_batch_delay_ms="5000", adaptive_batch_delay="false")
    files = [("files", ("a.png", png_bytes(Image.new("RGB", (64, 64), (10, 200, 30))), "image/png"))] * 3
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c, ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(c.post, "/features", files=files)
            deadline = time.perf_counter() + 4
            while "spot_pending_images 3.0" not in c.get("/metrics").text:  # it waits 5 s for company
                assert time.perf_counter() < deadline and not waiting.done(), "never seen waiting"
                time.sleep(0.05)
            assert waiting.result().status_code == 200
            after = c.get("/metrics").text
        assert "spot_pending_images 0.0" in after
        info = 'spot_model_info{model="spot-tiny",provider="CPUExecutionProvider",version="1"} 1.0'
        assert info in after
    finally:
        s.stop()


def test_altered_is_the_score_against_the_threshold_in_force(model_dir):
    """The same image under a threshold below and above its score: altered flips, the score does not."""
    import httpx

    from bench.server import Server

    files = [("files", ("c.jpg", PHOTO.read_bytes(), "image/jpeg"))]
    seen = {}
    for threshold in ("0.000001", "0.999999"):
        s = Server(model_dir, threshold=threshold)
        try:
            body = httpx.post(f"{s.url}/spot", params={"heatmap": "none"}, files=files, timeout=60).json()
            seen[threshold] = (body["threshold"], body["results"][0]["artifact_score"], body["results"][0]["altered"])
        finally:
            s.stop()
    (low, score, altered_low), (high, score_again, altered_high) = seen["0.000001"], seen["0.999999"]
    assert low < score < high and score == score_again
    assert altered_low is True and altered_high is False


def test_a_threshold_outside_0_to_1_is_refused_at_start():
    """A score is in [0, 1]: a threshold of 5 (or -1) would silently mark nothing (or everything) altered."""
    from pydantic import ValidationError

    from service.config import Settings

    for bad in (-0.1, 1.5):
        with pytest.raises(ValidationError, match="threshold"):
            Settings(threshold=bad)
    assert Settings(threshold=1.0).threshold == 1.0
    assert Settings(threshold=0.0).threshold == 0.0 and Settings().threshold is None  # 0 is a threshold, not unset


def test_a_lone_request_waits_out_the_batch_delay_only_when_the_delay_is_not_adaptive(model_dir):
    import time

    import httpx

    from bench.server import Server

    data = png_bytes(Image.new("RGB", (64, 64), (10, 200, 30)))
    for adaptive, low, high in (("true", 0.0, 0.5), ("false", 0.6, 30.0)):
        s = Server(model_dir, max_batch_delay_ms="600", adaptive_batch_delay=adaptive)
        try:
            with httpx.Client(base_url=s.url, timeout=30) as c:
                for _ in range(3):  # one client, one request at a time: nobody to wait for
                    started = time.perf_counter()
                    assert c.post("/features", files=[("files", ("a.png", data, "image/png"))]).status_code == 200
                    assert low <= time.perf_counter() - started < high, adaptive
        finally:
            s.stop()


def test_the_web_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "spot?heatmap=overlay" in r.text and 'type="file"' in r.text


def test_command_line_client_writes_overlays_and_features(server, tmp_path):
    import subprocess
    import sys

    from ..conftest import REPO

    image = tmp_path / "china.jpg"
    image.write_bytes(PHOTO.read_bytes())
    out = tmp_path / "out"
    base = [sys.executable, "-m", "service.client"]
    r = subprocess.run(
        [*base, "spot", str(image), "--url", server.url, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert 0 <= report[0]["artifact_score"] <= 1
    assert Image.open(out / "china.jpg.overlay.png").size == (640, 427)
    for heatmap, written in (("png", "china.jpg.heatmap.png"), ("none", None)):
        r = subprocess.run(
            [*base, "spot", str(image), "--url", server.url, "--out", str(out / heatmap), "--heatmap", heatmap],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0 and json.loads(r.stdout)[0]["artifact_score"] == report[0]["artifact_score"]
        if written:  # greyscale, at the photo's size
            assert Image.open(out / heatmap / written).mode == "L" and json.loads(r.stdout)[0]["heatmap"]
        else:
            assert not (out / heatmap).exists() and "overlay" not in json.loads(r.stdout)[0]
    r = subprocess.run(
        [*base, "features", str(image), "--url", server.url, "--out", str(out), "--layers", "conv4,conv5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert np.load(out / "china.jpg.conv5.npy").shape == (32,)
    r = subprocess.run(
        [*base, "spot", str(tmp_path / "missing.jpg"), "--url", server.url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "no such file" in r.stderr


def test_command_line_client_takes_folders_in_chunks_and_a_bad_file_costs_only_itself(server, tmp_path):
    """21 images from two folders (more than one request holds; the same names in both), one of them
    truncated: every good image gets its output, the bad one its error, exit status 1."""
    import shutil
    import subprocess
    import sys

    import httpx

    from ..conftest import REPO

    photos = sorted((DATA / "photos" / "stl10_unlabeled").rglob("*.png"))[:15]
    for folder, chosen in (("a", photos[:10]), ("b", photos[:5] + photos[10:])):
        (tmp_path / folder).mkdir()
        for photo in chosen:
            shutil.copy(photo, tmp_path / folder / photo.name)
    (tmp_path / "b" / "broken.jpg").write_bytes(_truncated_jpeg())
    base = [sys.executable, "-m", "service.client"]
    folders = [str(tmp_path / "a"), str(tmp_path / "b")]

    def client(*args):
        cmd = [*base, *args, *folders, "--url", server.url]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)

    r = client("features", "--stack", str(tmp_path / "f.npz"), "--layers", "conv5", "--per-request", "4")
    assert r.returncode == 1 and "1 of 21 images failed" in r.stderr
    report = json.loads(r.stdout)
    (failed,) = [x for x in report if "error" in x]
    assert failed["image"] == str(tmp_path / "b" / "broken.jpg") and failed["error"].startswith("400")
    request_id = re.search(r"\(request ([0-9a-f]{32})\)$", failed["error"]).group(1)  # as the server's log names it
    assert f"[{request_id}]" in server.output()
    stacked = np.load(tmp_path / "f.npz")
    assert list(stacked["names"]) == [x["image"] for x in report if "error" not in x]
    assert stacked["conv5"].shape == (20, 32)
    with open(stacked["names"][13], "rb") as f:
        one = httpx.post(f"{server.url}/features", params={"layers": "conv5"}, files=[("files", f)])
    np.testing.assert_allclose(stacked["conv5"][13], one.json()["results"][0]["features"]["conv5"]["values"], rtol=1e-6)

    r = client("spot", "--out", str(tmp_path / "out"))  # 21 images: two requests of at most 16
    assert r.returncode == 1
    for folder in ("a", "b"):  # the same name in both folders: two overlays, none overwritten
        assert Image.open(tmp_path / "out" / folder / f"{photos[0].name}.overlay.png").size == (96, 96)
    assert sum(1 for _ in (tmp_path / "out").rglob("*.overlay.png")) == 20
    r = client("spot")  # neither --out nor --beside: the scores, and no file written anywhere
    assert r.returncode == 1 and len(json.loads(r.stdout)) == 21
    assert not [x for x in json.loads(r.stdout) if "overlay" in x] and not list(tmp_path.glob("[ab]/*.overlay.png"))
    for _ in range(2):  # beside the images, twice: the overlays written the first time are not inputs
        r = client("spot", "--beside")
        assert r.returncode == 1 and len(json.loads(r.stdout)) == 21
    assert len(list(tmp_path.glob("[ab]/*.overlay.png"))) == 20
    assert not list(tmp_path.rglob("*.overlay.overlay.png"))
    same_name = [str(tmp_path / "a" / photos[0].name), str(tmp_path / "b" / photos[0].name)]
    r = subprocess.run([*base, "spot", *same_name, "--out", str(tmp_path / "o2"), "--url", server.url],
                       cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "would write the same outputs" in r.stderr


def _bits(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _animated_gif() -> bytes:
    frames = [Image.new("P", (40, 40), i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


GOOD = _bits(Image.new("RGB", (40, 40), (50, 60, 70)), "PNG")

# (case, route, request kwargs, expected status, text the message must contain)
CORPUS = [
    ("zero bytes", "/features", {"files": [("files", ("a.jpg", b"", "image/jpeg"))]}, 400, "empty file"),
    ("text file", "/spot", {"files": [("files", ("a.txt", b"just text", "text/plain"))]}, 400, "not a readable image"),
    ("truncated jpeg", "/spot", {"files": [("files", ("t.jpg", PHOTO.read_bytes()[:3000], "image/jpeg"))]}, 400, "t.jpg"),
    ("huge-dimension png header", "/features", {"files": [("files", ("h.png", _huge_png_header(), "image/png"))]}, 400, "exceeds the limit"),
    ("decompression bomb", "/spot", {"files": [("files", ("b.png", _bits(Image.new("1", (8000, 8000)), "PNG"), "image/png"))]}, 400, "64000000 pixels"),
    ("format not allowed", "/features", {"files": [("files", ("a.ppm", _bits(Image.new("RGB", (8, 8)), "PPM"), "image/x-ppm"))]}, 400, "not allowed"),
    ("png signature then garbage", "/features", {"files": [("files", ("g.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png"))]}, 400, "g.png"),
    ("wrong field name", "/features", {"files": [("image", ("a.png", GOOD, "image/png"))]}, 422, "unknown form fields"),
    ("text field named files", "/spot", {"files": [("files", (None, b"not a file"))]}, 422, "file uploads"),
    ("too many files", "/features", {"files": [("files", ("a.png", GOOD, "image/png"))] * 17}, 413, "at most 16"),
    ("invalid base64", "/features", {"json": {"images": ["@@@"]}}, 400, "not valid base64"),
    ("base64 of a text", "/spot", {"json": {"images": [base64.b64encode(b"hello").decode()]}}, 400, "not a readable image"),
    ("empty image list", "/features", {"json": {"images": []}}, 422, "images"),
    ("images not a list", "/features", {"json": {"images": "abc"}}, 422, "images"),
    ("unknown json key", "/spot", {"json": {"images": [base64.b64encode(GOOD).decode()], "colour": "red"}}, 422, "unknown fields ['colour']; valid: images, heatmap\""),
    ("malformed json", "/features", {"content": b'{"images": [', "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ("wrong content type", "/spot", {"content": GOOD, "headers": {"content-type": "image/png"}}, 415, "multipart"),
    ("unknown layer", "/features", {"files": [("files", ("a.png", GOOD, "image/png"))], "params": {"layers": "conv9"}}, 422, "conv5"),
    ("unknown layer in json", "/features", {"json": {"images": [base64.b64encode(GOOD).decode()], "layers": ["fc6"]}}, 422, "conv1"),
    ("unknown pool", "/features", {"files": [("files", ("a.png", GOOD, "image/png"))], "params": {"pool": "sum"}}, 422, "probe"),
    ("unknown normalize", "/features", {"files": [("files", ("a.png", GOOD, "image/png"))], "params": {"normalize": "l1"}}, 422, "l2"),
    ("unknown encoding", "/features", {"files": [("files", ("a.png", GOOD, "image/png"))], "params": {"encoding": "hex"}}, 422, "base64"),
    ("unknown dtype", "/features", {"files": [("files", ("a.png", GOOD, "image/png"))], "params": {"dtype": "int8"}}, 422, "float16"),
    ("unknown heatmap format", "/spot", {"files": [("files", ("a.png", GOOD, "image/png"))], "params": {"heatmap": "gif"}}, 422, "overlay"),
    ("too long and thin to tile", "/spot", {"files": [("files", ("strip.png", _bits(Image.new("RGB", (20000, 32)), "PNG"), "image/png"))]}, 413, "1249 tiles even at 20000x32 exceed the limit of 1024"),
    ("a 1 x 400000 strip", "/spot", {"files": [("files", ("thin.png", _bits(Image.new("L", (400_000, 1)), "PNG"), "image/png"))]}, 413, "799999 tiles even at 12800000x32"),
    ("option in query and body", "/features", {"json": {"images": [base64.b64encode(GOOD).decode()], "pool": "max"}, "params": {"pool": "avg"}}, 422, "pool given both"),
    ("chunked body without length", "/features", {"content": iter([GOOD]), "headers": {"content-type": "application/json"}}, 411, "Content-Length"),
    ("json body not utf-8", "/spot", {"content": b"\xb8\x00{", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ("deeply nested json", "/features", {"content": b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "headers": {"content-type": "application/json"}}, 400, "nested too deeply"),
    ("many multipart text fields", "/features", {"files": [("files", ("a.png", GOOD, "image/png"))] + [(f"f{i}", (None, b"x")) for i in range(100)]}, 400, "Too many fields"),
    ("path traversal in a file name", "/spot", {"files": [("files", ("../../etc/passwd", b"root:x:0:0", "image/png"))]}, 400, "../../etc/passwd"),
    ("a typo'd query parameter", "/features", {"files": [("files", ("a.png", GOOD, "image/png"))], "params": {"layer": "conv5"}}, 422, "unknown query parameters ['layer']; valid: layers, pool"),
    ("an option given twice", "/features", {"files": [("files", ("a.png", GOOD, "image/png"))], "params": [("pool", "avg"), ("pool", "max")]}, 422, "pool given twice"),
    ("the other route's option in json", "/features", {"json": {"images": [base64.b64encode(GOOD).decode()], "heatmap": "png"}}, 422, "unknown fields ['heatmap']; valid: images, layers, pool, normalize, encoding, dtype\""),
    ("the other route's option in the query", "/spot", {"files": [("files", ("a.png", GOOD, "image/png"))], "params": {"layers": "conv5"}}, 422, "unknown query parameters ['layers']; valid: heatmap\""),
    ("a field named file, not files", "/spot", {"files": [("file", ("a.png", GOOD, "image/png"))]}, 422, "unknown form fields ['file']; send images as 'files'"),
    ("an extra file field beside files", "/features", {"files": [("files", ("a.png", GOOD, "image/png")), ("file", ("b.png", GOOD, "image/png"))]}, 422, "unknown form fields ['file']"),
    ("a heatmap of too many values", "/spot", {"files": [("files", ("big.png", _bits(Image.new("1", (5000, 4000)), "PNG"), "image/png"))]}, 413, "heatmap=values for 20000000 pixels exceeds the limit of 16777216"),
    ("a data url that is not base64", "/spot", {"json": {"images": ["data:image/png,abc"]}}, 400, "without ';base64,'"),
    ("one bad image among good ones", "/features", {"files": [("files", ("ok.png", GOOD, "image/png")), ("files", ("bad.png", b"xx", "image/png"))]}, 400, "bad.png"),
]  # fmt: skip


@pytest.mark.parametrize("case, route, kwargs, status, text", CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_input_corpus(client, case, route, kwargs, status, text):
    r = client.post(route, **kwargs)
    assert r.status_code == status, r.text
    assert text in json.dumps(r.json()), r.text
    assert client.get("/readyz").json()["ready"] is True


def test_a_validation_error_does_not_echo_the_input(client):
    """A 1 MB base64 string sent where a list belongs: the 422 says where, without sending the megabyte back."""
    r = client.post("/features", json={"images": base64.b64encode(os.urandom(750_000)).decode()})
    assert r.status_code == 422 and "images" in r.text and len(r.content) < 1000, r.text[:300]


def test_base64_as_browsers_and_tools_write_it(client):
    """A data URL, line-wrapped (the base64 command, MIME), URL-safe without padding: all the same image."""
    standard = base64.b64encode(GOOD).decode()
    forms = [
        standard,
        "data:image/png;base64," + standard,
        "DATA:image/png;BASE64," + standard,
        base64.encodebytes(GOOD).decode(),
        base64.urlsafe_b64encode(GOOD).decode().rstrip("="),
    ]
    r = client.post("/features", json={"images": forms, "layers": ["conv1"]})
    assert r.status_code == 200, r.text
    values = [item["features"]["conv1"]["values"] for item in r.json()["results"]]
    assert all(v == values[0] for v in values)


def test_options_read_kindly_where_it_is_unambiguous(client):
    """Layers repeated or with spaces, a media type in capitals, HEAD on the probes."""
    files = [("files", ("a.png", GOOD, "image/png"))]
    params = [("layers", "conv1, conv2"), ("layers", "conv5"), ("pool", "avg")]
    r = client.post("/features", params=params, files=files)
    assert r.status_code == 200, r.text
    assert list(r.json()["results"][0]["features"]) == ["conv1", "conv2", "conv5"]
    body = json.dumps({"images": [base64.b64encode(GOOD).decode()]})
    r = client.post("/spot", content=body, headers={"content-type": "Application/JSON; charset=UTF-8"})
    assert r.status_code == 200, r.text
    assert client.head("/healthz").status_code == 200 and client.head("/readyz").status_code == 200


@pytest.mark.parametrize("name, data", [("animated gif", _animated_gif()), ("exif rotated", None)])
def test_animated_and_rotated_images_are_accepted(client, name, data):
    if data is None:
        img = Image.new("RGB", (60, 30), (200, 10, 10))
        exif = img.getexif()
        exif[0x0112] = 6  # displayed rotated by 90 degrees
        data = _bits(img, "JPEG", exif=exif)
    r = client.post("/spot", files=[("files", ("x", data, "application/octet-stream"))])
    assert r.status_code == 200, r.text
    item = r.json()["results"][0]
    expected = (40, 40) if name == "animated gif" else (60, 30)  # (height, width) after the EXIF rotation
    assert (item["height"], item["width"]) == expected
    assert np.asarray(item["heatmap"]["values"]).shape == expected


def test_a_required_gpu_that_is_missing_is_an_error_not_a_fallback(model_dir):
    import httpx

    from bench.server import Server

    s = Server(model_dir, providers="cuda", require_gpu="true")
    try:
        r = httpx.get(f"{s.url}/readyz")
        assert r.status_code == 503 and "GPU was required" in r.json()["error"]
    finally:
        s.stop()


def test_overload_is_a_quick_503_with_retry_after_and_visible_in_metrics(model_dir):
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from bench.server import Server

    # a first request waits 300 ms for company; meanwhile only 12 images may queue
    s = Server(
        model_dir, max_queue_images="12", max_batch_delay_ms="300", adaptive_batch_delay="false", threshold="0.9"
    )
    data = png_bytes(Image.new("RGB", (64, 64), (10, 200, 30)))

    def post(_):
        started = time.perf_counter()
        r = c.post("/features", files=[("files", ("a.png", data, "image/png"))])
        return r, time.perf_counter() - started

    try:
        with httpx.Client(base_url=s.url, timeout=30) as c, ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(post, range(24)))
            codes = sorted(r.status_code for r, _ in answers)
            assert 200 in codes and 503 in codes and set(codes) == {200, 503}, codes
            for r, took in answers:
                if r.status_code == 503:
                    assert r.headers["retry-after"] == "1" and "overloaded" in r.json()["detail"]
                    assert took < 0.25  # refused at once, not after the batch delay
            assert c.get("/readyz").json()["ready"] is True
            assert 'spot_requests_total{route="/features",status="503"}' in c.get("/metrics").text
            [stats] = c.get("/v2/models/spot-tiny/stats").json()["model_stats"]  # a rejection is a failure there
            assert stats["inference_stats"]["fail"]["count"] == codes.count(503)
            assert stats["inference_stats"]["success"]["count"] == stats["inference_count"] == codes.count(200)
            thirteen = [("files", (f"{i}.png", data, "image/png")) for i in range(13)]  # more than can ever wait
            r = c.post("/features", files=thirteen)
            assert r.status_code == 413 and "at most 12 can wait" in r.json()["detail"]  # not a 503 to retry
            photo = ("files", ("china.jpg", PHOTO.read_bytes(), "image/jpeg"))
            r = c.post("/spot", files=[photo])  # shrunk to what may wait: 12 tiles, not SPOT_MAX_TILES' 1024
            assert r.status_code == 200 and r.json()["results"][0]["tiling"]["tiles"] <= 12
            r = c.post("/spot", files=[photo, photo])  # two of them cannot wait at once
            assert r.status_code == 413 and "at most 12 can wait" in r.json()["detail"]
            r = c.post("/spot", files=[("files", ("a.png", data, "image/png"))])
            assert r.status_code == 200 and r.json()["threshold"] == 0.9  # SPOT_THRESHOLD overrides the model's
    finally:
        s.stop()


def test_a_request_waiting_too_long_is_a_504_and_the_server_goes_on(model_dir):
    import httpx

    from bench.server import Server

    s = Server(model_dir, request_timeout_s="0.05", max_batch_delay_ms="400", adaptive_batch_delay="false")
    data = png_bytes(Image.new("RGB", (64, 64), (10, 200, 30)))
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            r = c.post("/features", files=[("files", ("a.png", data, "image/png"))])
            assert r.status_code == 504 and "0.05 s" in r.json()["detail"]
            assert c.get("/readyz").json()["ready"] is True
            assert 'spot_requests_total{route="/features",status="504"} 1.0' in c.get("/metrics").text
            [stats] = c.get("/v2/models/spot-tiny/stats").json()["model_stats"]
            fail = stats["inference_stats"]["fail"]  # counted as it timed out, not when its batch came 0.35 s later
            assert (
                fail["count"] == 1
                and 0.04e9 <= fail["ns"] < 0.3e9  # asyncio may fire a timer up to its clock resolution early
                and stats["inference_stats"]["success"]["count"] == 0
            )
    finally:
        s.stop()


def test_sigterm_lets_requests_in_flight_finish_then_exits_0(model_dir):
    import signal
    import threading
    import time

    import httpx

    from bench.server import Server

    s = Server(
        model_dir, max_batch_delay_ms="700", adaptive_batch_delay="false"
    )  # each request sits in the batcher for 0.7 s
    data = png_bytes(Image.new("RGB", (64, 64), (10, 200, 30)))
    answers = []

    def post():
        answers.append(httpx.post(f"{s.url}/features", files=[("files", ("a.png", data, "image/png"))], timeout=30))

    threads = [threading.Thread(target=post) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    s.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert s.proc.wait(30) == 0
    assert [r.status_code for r in answers] == [200] * 3
    try:
        httpx.get(f"{s.url}/healthz", timeout=2)
        raise AssertionError("a stopped server still answered")
    except httpx.ConnectError:
        pass


def test_slow_clients_do_not_starve_the_others(server, client):
    """Slow-loris: 50 connections dribbling a body one byte at a time; normal requests still answer."""
    import socket
    import time

    slow = []
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(
            b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )
        slow.append(sock)
    try:
        for _ in range(3):
            time.sleep(0.3)
            for sock in slow:
                sock.sendall(b" ")
            started = time.perf_counter()
            r = client.post("/features", files=[("files", ("a.png", GOOD, "image/png"))])
            assert r.status_code == 200 and time.perf_counter() - started < 2.0
    finally:
        for sock in slow:
            sock.close()
    assert client.get("/readyz").json()["ready"] is True


def test_two_workers_serve_one_port_and_metrics_add_up(model_dir):
    import signal
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from bench.server import Server

    s = Server(model_dir, ready="/readyz", workers="2")
    data = png_bytes(Image.new("RGB", (64, 64), (10, 200, 30)))
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            with open(f"/proc/{s.proc.pid}/task/{s.proc.pid}/children") as f:
                children = [int(p) for p in f.read().split()]
            assert len(children) >= 2  # the supervisor and its workers (and multiprocessing's tracker)
            started = time.time()
            with ThreadPoolExecutor(8) as pool:
                post = lambda _: c.post("/features", files=[("files", ("a.png", data, "image/png"))])  # noqa: E731
                assert [r.status_code for r in pool.map(post, range(40))] == [200] * 40
            text = c.get("/metrics").text  # answered by one worker, counting both
            assert 'spot_requests_total{route="/features",status="200"} 40.0' in text
            assert 'spot_images_total{route="/features"} 40.0' in text
            info = [line for line in text.splitlines() if line.startswith("spot_model_info{")]
            assert info == ['spot_model_info{model="spot-tiny",provider="CPUExecutionProvider",version="1"} 1.0']
            assert "spot_pending_images 0.0" in text  # the workers' gauges added up: one series
            [stats] = c.get("/v2/models/spot-tiny/stats").json()["model_stats"]  # Triton's statistics: both workers'
            inference = stats["inference_stats"]
            assert stats["inference_count"] == inference["success"]["count"] == inference["queue"]["count"] == 40
            assert 0 < stats["execution_count"] <= 40 and inference["compute_infer"]["ns"] > 0
            assert started * 1000 <= stats["last_inference"] <= time.time() * 1000  # the latest, not a sum
            assert c.get("/v2/models/spot-tiny/config").json()["instance_group"][0]["count"] == 2
    finally:
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(30) == 0


def test_past_max_connections_uvicorn_answers_503_and_the_client_waits_it_out(model_dir, tmp_path):
    """SPOT_MAX_CONNECTIONS=2: with one idle connection held, every other request is uvicorn's own plain 503
    (no Retry-After); the command-line client retries it and gets through once the connection closes."""
    import socket
    import subprocess
    import sys
    import threading
    import time

    import httpx

    from bench.server import Server

    from ..conftest import REPO

    s = Server(model_dir, max_connections="2")
    held = socket.create_connection(("127.0.0.1", s.port))
    try:
        time.sleep(0.2)  # accepted: uvicorn counts it
        r = httpx.post(f"{s.url}/spot", files=[("files", ("c.jpg", PHOTO.read_bytes(), "image/jpeg"))])
        assert r.status_code == 503 and "retry-after" not in r.headers and r.text == "Service Unavailable"
        threading.Timer(1.5, held.close).start()  # the connection goes away while the client waits
        cmd = [sys.executable, "-m", "service.client", "spot", str(PHOTO), "--url", s.url, "--out", str(tmp_path)]
        run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)[0]["tiles"] > 1 and (tmp_path / "china.jpg.overlay.png").exists()
    finally:
        held.close()
        s.stop()


def test_workers_default_to_one_per_core_on_a_cpu_and_one_on_a_gpu(monkeypatch):
    import onnxruntime as ort

    from service.config import Settings, resolve_workers, usable_cores

    cores = usable_cores()
    assert resolve_workers(Settings(workers=3)) == 3  # an explicit SPOT_WORKERS wins
    assert resolve_workers(Settings(workers=0, providers="cpu")) == cores
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert resolve_workers(Settings(workers=0, providers="auto")) == 1
    assert resolve_workers(Settings(workers=0, providers="cpu")) == cores  # CUDA present but not asked for


@pytest.mark.parametrize(
    "files, limit",
    [
        ({"cpu.max": "100000 100000\n"}, 1),  # cgroup v2, docker run --cpus=1
        ({"cpu.max": "150000 100000\n"}, 2),  # --cpus=1.5: rounded up
        ({"cpu.max": "max 100000\n"}, None),  # no limit
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1, half a core
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # no cgroup files: not in a container
    ],
)
def test_a_containers_cpu_limit_caps_the_cores_the_workers_are_counted_from(tmp_path, files, limit):
    from service.config import usable_cores

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cores(tmp_path) == (affinity if limit is None else min(affinity, limit))


def test_a_batch_is_normalised_in_one_pass_exactly_as_image_by_image(model_dir):
    model = ExportedModel(model_dir, "cpu")
    rgbs = np.random.default_rng(0).integers(0, 256, (5, 40, 30, 3), dtype=np.uint8)
    for std in (model.std, np.asarray([58.395, 57.12, 57.375], np.float32)):  # the model's, and ImageNet's
        model.std = std
        one_by_one = np.stack([((rgb.astype(np.float32) - model.mean) / std).transpose(2, 0, 1) for rgb in rgbs])
        batch = model.normalize_batch(list(rgbs))
        assert batch.dtype == np.float32 and batch.flags.c_contiguous and np.array_equal(batch, one_by_one)
        assert np.array_equal(model.normalize(rgbs[2]), one_by_one[2])


def test_padded_batches_run_one_input_shape_and_give_the_same_outputs(model_dir):
    from service.model import ModelError

    model = ExportedModel(model_dir, "cpu")
    model.pad_batches("auto", 8)
    assert model.pad_to == 0  # auto pads on a GPU only...
    model.provider = "CUDAExecutionProvider"
    model.pad_batches("auto", 8)
    assert model.pad_to == 8  # ...as here, where the provider says so
    model.pad_batches("off", 8)
    x = np.random.default_rng(0).uniform(-2, 2, (3, 3, model.size, model.size)).astype(np.float32)
    plain = model.run(x)
    model.pad_batches("on", 8)
    shapes = []
    for session in {id(s): s for s in (model.trunk, model.heads)}.values():
        real_run = session.run
        session.run = lambda names, feeds, real_run=real_run: shapes.append(feeds["images"].shape) or real_run(
            names, feeds
        )
    for n in (1, 3, 8):
        padded = model.run(x[:n] if n <= 3 else np.concatenate([x, x, x[:2]]))
        for name in plain:
            assert padded[name].shape[0] == n
            np.testing.assert_allclose(padded[name][: min(n, 3)], plain[name][: min(n, 3)], rtol=1e-4, atol=1e-4)
    model.run(x, model.layers)
    assert set(shapes) == {(8, 3, model.size, model.size)}
    with pytest.raises(ModelError, match="auto, on or off"):
        model.pad_batches("always", 8)


def test_auto_leaves_out_tensorrt_when_its_libraries_are_missing(monkeypatch):
    import onnxruntime as ort

    import service.model
    from service.model import choose_providers

    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]  # onnxruntime-gpu's list
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    monkeypatch.setattr(service.model, "tensorrt_libraries_present", lambda: False)
    assert choose_providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("tensorrt")[0] == "TensorrtExecutionProvider"  # asked for by name: still tried first
    monkeypatch.setattr(service.model, "tensorrt_libraries_present", lambda: True)
    assert choose_providers("auto") == listed


def test_padding_is_reported_by_readyz_and_keeps_the_answers(model_dir):
    import httpx

    from bench.server import Server

    data = png_bytes(Image.new("RGB", (64, 64), (10, 200, 30)))
    answers = {}
    for pad in ("on", "auto"):  # auto on this CPU: off
        s = Server(model_dir, ready="/readyz", pad_batches=pad, max_batch_size="8")
        try:
            assert httpx.get(f"{s.url}/readyz").json()["padded_batch_size"] == (8 if pad == "on" else None)
            r = httpx.post(f"{s.url}/features?layers=conv5&pool=avg", files=[("files", ("a.png", data, "image/png"))])
            answers[pad] = np.asarray(r.json()["results"][0]["features"]["conv5"]["values"])
        finally:
            s.stop()
    np.testing.assert_allclose(answers["on"], answers["auto"], rtol=1e-4, atol=1e-5)


def test_a_busy_port_is_one_line_that_names_the_way_out():
    """Not uvicorn's bind error and exit: one line naming --port and SPOT_PORT, before anything is loaded."""
    import socket
    import subprocess
    import sys

    from ..conftest import REPO

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        runs = [
            subprocess.run(
                [sys.executable, "-m", "service", *args],
                cwd=REPO,
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=60,
            )
            for args, env in ((["--port", str(port)], {}), ([], {"SPOT_PORT": str(port)}))
        ]
    for r in runs:
        assert r.returncode == 2, r.stderr
        assert (
            r.stderr
            == f"error: port {port} on 127.0.0.1: Address already in use; choose another with --port or SPOT_PORT\n"
        )
