"""Every endpoint against a real uvicorn process; results equal ONNX Runtime called directly."""

import base64
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from contract.views import tiles
from service.answers import SpotAnswer
from service.images import decode
from service.model import ExportedModel

from ..conftest import DATA
from .helpers import PHOTO, direct, huge_png_header, png_bytes, truncated_jpeg


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
    # the peak score is the mask's 99th percentile; the answer is what /docs says it is
    for item in (small_r, big_r):
        cells = np.asarray(item["mask"]["values"])
        assert item["peak_score"] == pytest.approx(float(np.percentile(cells, 99)), abs=1e-4)
        assert np.median(cells) - 1e-4 <= item["peak_score"] <= cells.max() + 1e-4
    SpotAnswer.model_validate(r.json())


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


def test_a_zoomed_detector_sees_the_photo_scaled_up_as_if_the_client_had_sent_it_so(model_dir, client, tmp_path):
    """model.json's spot_zoom 2 (a detector trained on tiles scaled up 2x): /spot tiles the photo at twice
    its size, exactly as a zoom-1 model tiles the photo scaled up by the client; the heatmap keeps its size."""
    import httpx

    from bench.server import Server

    zoomed = tmp_path / "zoomed"
    shutil.copytree(model_dir, zoomed)
    meta = json.loads((zoomed / "model.json").read_text())
    (zoomed / "model.json").write_text(json.dumps({**meta, "spot_zoom": 2.0}))
    photo = Image.open(PHOTO).convert("RGB").resize((160, 107), Image.Resampling.BILINEAR)
    server = Server(zoomed)
    try:
        r = httpx.post(f"{server.url}/spot", files=[("files", ("p.png", png_bytes(photo), "image/png"))], timeout=30)
    finally:
        server.stop()
    assert r.status_code == 200, r.text
    item = r.json()["results"][0]
    assert item["tiling"]["scale"] == pytest.approx(2, abs=0.01) and item["tiling"]["scaled_to"] == [320, 214]
    assert np.asarray(item["heatmap"]["values"]).shape == (107, 160)
    scaled_up = photo.resize((320, 214), Image.Resampling.BILINEAR)
    same = client.post("/spot", files=[("files", ("q.png", png_bytes(scaled_up), "image/png"))]).json()["results"][0]
    assert same["tiling"]["tiles"] == item["tiling"]["tiles"] > 1
    assert same["artifact_score"] == pytest.approx(item["artifact_score"], abs=1e-6)
    np.testing.assert_allclose(same["mask"]["values"], item["mask"]["values"], atol=1e-5)


BAD_FILES = {
    "zero bytes": b"",
    "text file": b"hello, I am not an image",
    "truncated jpeg": None,
    "huge-dimension png header": None,
    "html": b"<html><body>no</body></html>",
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_get_400_and_the_server_stays_ready(client, case):
    data = {"truncated jpeg": truncated_jpeg, "huge-dimension png header": huge_png_header}.get(
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


def test_the_web_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "spot?heatmap=overlay" in r.text and 'type="file"' in r.text
