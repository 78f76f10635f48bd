"""The shipped model folder: loadable by ONNX Runtime alone, self-consistent, and the service's default."""

import json
import re
import subprocess
import sys

import httpx
import numpy as np
import onnx

from bench.server import Server

from ..conftest import REPO

SHIPPED = REPO / "models" / "spot-tiny64"


def test_shipped_model_is_one_self_contained_file_matching_its_json():
    meta = json.loads((SHIPPED / "model.json").read_text())
    onnx_path = SHIPPED / "model.onnx"
    assert onnx_path.stat().st_size == meta["size_bytes"] <= 50 * 1024 * 1024
    model = onnx.load(str(onnx_path))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert [o.name for o in model.graph.output] == [o["name"] for o in meta["outputs"]]
    assert meta["input"]["shape"] == [None, 3, 64, 64] and meta["training"]["preset"] == "tiny64"


def test_the_card_reports_model_json():
    meta = json.loads((SHIPPED / "model.json").read_text())
    card = (SHIPPED / "MODEL_CARD.md").read_text()
    assert meta["sha256"] in card and meta["training"]["git_commit"] in card
    assert meta["metrics"], "the shipped model must carry its evaluation"
    for name, value in meta["metrics"].items():
        assert f"| {name} | {value} |" in card


def test_its_default_feature_layer_is_its_best_probe_layer():
    """DESIGN.md: `/features` without `layers` gives the best linear-probe layer on the model's own data."""
    meta = json.loads((SHIPPED / "model.json").read_text())
    top1 = {layer: meta["metrics"][f"probe_top1/tiny-imagenet:val/{layer}"] for layer in meta["layers"]}
    assert meta["default_layer"] == max(top1, key=top1.get)


def test_onnx_runtime_alone_runs_it_without_torch():
    code = (
        "import sys, numpy as np; from service.model import ExportedModel; "
        f"m = ExportedModel(r'{SHIPPED}', 'cpu'); out = m.run(np.zeros((3, 3, 64, 64), np.float32)); "
        "assert out['mask_logits'].shape == (3, 1, 4, 4) and out['real_logit'].shape == (3,); "
        "assert 'torch' not in sys.modules; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_its_two_networks_run_apart_and_give_what_the_whole_graph_gives():
    """Version 7's feature maps come from another network than its heads (model.json `features_from`): the
    service keeps a session for each, not a third for the whole graph, and any mix of outputs is still exact."""
    import onnxruntime as ort

    from service.model import ExportedModel

    model = ExportedModel(SHIPPED, "cpu")
    assert not model.one_network and json.loads((SHIPPED / "model.json").read_text())["features_from"]
    x = np.random.default_rng(0).uniform(-120, 130, (3, 3, 64, 64)).astype(np.float32)
    whole = ort.InferenceSession(str(SHIPPED / "model.onnx"), providers=["CPUExecutionProvider"])
    want = dict(zip(model.outputs, whole.run(model.outputs, {"images": x}), strict=False))
    for names in (None, ["mask_logits", "conv2"], ["conv5"], ["real_logit"]):
        got = model.run(x, names)
        assert list(got) == (names or model.outputs)
        for name, values in got.items():
            np.testing.assert_allclose(values, want[name], rtol=1e-5, atol=1e-4)


def test_the_service_serves_it_by_default():
    s = Server(model_dir=SHIPPED)
    try:
        ready = httpx.get(f"{s.url}/readyz").json()
        version = json.loads((SHIPPED / "model.json").read_text())["version"]
        assert ready == {"ready": True, "model": "spot-tiny64", "version": version, "provider": "CPUExecutionProvider",
                         "padded_batch_size": None}  # fmt: skip
    finally:
        s.stop()
    from service.config import Settings

    assert Settings().model_dir == SHIPPED


def test_raw_photographs_are_not_flagged_as_altered(data_root):
    """The shipped model learnt raw photos as real (docs/results.md): unaltered photos score below its threshold,
    a large one (2560 x 1600: analysed downscaled to SPOT_MAX_TILES) too."""
    photos = [
        *sorted((data_root / "photos" / "sklearn").glob("*.jpg")),
        data_root / "photos" / "debian_mate_nature" / "Aqua.jpg",
    ]
    s = Server(model_dir=SHIPPED)
    try:
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
        body = httpx.post(f"{s.url}/spot", files=files, params={"heatmap": "none"}, timeout=120).json()
    finally:
        s.stop()
    assert len(body["results"]) == len(photos) >= 3 and body["results"][-1]["tiling"]["scale"] < 1
    for item in body["results"]:
        assert item["artifact_score"] < body["threshold"], item["name"]


def test_the_documented_snippet_gives_the_services_features(data_root, monkeypatch):
    """docs/service.md's "Without the server" block, run as written (on two real photos, one of them not square), gives
    what /features returns for them: the documented preprocessing is the service's."""
    reference = (REPO / "docs" / "service.md").read_text()
    code = re.search(r"\*\*Without the server\.\*\*.*?```python\n(.*?)```", reference, re.S).group(1)
    photos = [data_root / "photos" / "sklearn" / "china.jpg", data_root / "photos" / "sklearn" / "flower.jpg"]
    assert '["photo.jpg", "other.jpg"]' in code
    code = code.replace('["photo.jpg", "other.jpg"]', repr([str(p) for p in photos]))
    monkeypatch.chdir(REPO)
    namespace: dict = {}
    exec(compile(code, "docs/service.md", "exec"), namespace)
    s = Server(model_dir=SHIPPED)
    try:
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
        body = httpx.post(f"{s.url}/features", files=files, params={"layers": "conv3", "pool": "avg"}).json()
    finally:
        s.stop()
    served = np.array([r["features"]["conv3"]["values"] for r in body["results"]], np.float32)
    assert namespace["features"].shape == served.shape == (2, 192)
    np.testing.assert_allclose(namespace["features"], served, rtol=1e-5, atol=1e-6)
