"""The Python client (`service.client.SpotClient`) against a real server: every image form it takes gives the
same answer as the server called directly, its arrays have the right shapes, and failures name their image."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.client import ServerError, SpotClient

from .helpers import PHOTO, png_bytes, truncated_jpeg
from .test_soak import statuses


def test_features_from_every_image_form_equal_the_server_called_directly(server, client):
    pil = Image.open(PHOTO)
    pil.load()
    forms = [PHOTO, str(PHOTO), PHOTO.read_bytes(), pil, np.asarray(pil), np.asarray(pil.convert("L"))]
    with SpotClient(server.url, per_request=4, concurrency=2) as c:  # 6 images: two requests at once
        got = c.features(forms, layers=["conv2", "conv5"], pool="avg")
        default = c.features([PHOTO])
        model = c.model()
    assert set(got) == {"conv2", "conv5"} and got["conv5"].dtype == np.float32
    direct = client.post("/features", params={"layers": "conv2,conv5"}, files=[("files", PHOTO.read_bytes())])
    for layer in ("conv2", "conv5"):
        want = np.asarray(direct.json()["results"][0]["features"][layer]["values"], np.float32)
        assert got[layer].shape == (6, *want.shape)
        for i in range(5):  # a path, bytes, a PIL image or its array: the same pixels reach the model
            np.testing.assert_allclose(got[layer][i], want, rtol=1e-6, atol=1e-6)
        assert not np.allclose(got[layer][5], want, rtol=1e-3)  # the greyscale one is another image
    assert list(default) == [model["default_layer"]] and model["name"] == "spot-tiny"


def test_spot_gives_arrays_at_the_images_sizes(server):
    small = Image.new("RGB", (50, 30), (200, 40, 40))
    with SpotClient(server.url) as c:
        big, little = c.spot([PHOTO, small], heatmap="values")
        [as_png] = c.spot([small], heatmap="png")
        [plain] = c.spot([small])
    assert big["heatmap"]["values"].shape == (427, 640) and little["heatmap"]["values"].shape == (30, 50)
    mask = big["mask"]["values"]
    assert mask.dtype == np.float32 and mask.shape == (big["mask"]["rows"], big["mask"]["cols"])
    assert mask.shape == tuple(math.ceil(s / big["mask"]["cell_pixels"]) for s in big["tiling"]["scaled_to"][::-1])
    assert 0 <= mask.min() <= mask.max() <= 1 and 0 <= big["artifact_score"] <= 1 and big["tiling"]["tiles"] > 1
    assert Image.open(io.BytesIO(as_png["heatmap"]["png"])).size == (50, 30)
    assert "heatmap" not in plain and plain["artifact_score"] == pytest.approx(little["artifact_score"])


def test_a_failing_image_is_named_and_nothing_else_is_lost(server):
    good = png_bytes(Image.new("RGB", (64, 64), (10, 200, 30)))
    with SpotClient(server.url) as c:
        with pytest.raises(ServerError) as failed:
            c.features([good, truncated_jpeg(), good])
        assert failed.value.status == 400 and "1 of 3 images failed: image 1 (image1)" in str(failed.value)
        with pytest.raises(ServerError) as unknown:  # the same for every request: raised at once
            c.features([good], layers=["conv9"])
        assert unknown.value.status == 422 and "conv1" in str(unknown.value)
        with pytest.raises(ValueError, match="uint8"):
            c.features([np.zeros((8, 8, 3), np.float32)])
        assert c.features([good], layers=["conv3"])["conv3"].shape[0] == 1  # the client still works


def test_detection_metrics_equal_sklearns_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from service.evaluate import average_precision, roc_auc, row

    rng = np.random.default_rng(0)
    for n in (2, 7, 300):
        scores = rng.integers(0, 5, n) / 4  # many ties
        altered = rng.random(n) < 0.4
        altered[:2] = [True, False]
        assert roc_auc(scores, altered) == pytest.approx(roc_auc_score(altered, scores), abs=1e-12)
        assert average_precision(scores, altered) == pytest.approx(average_precision_score(altered, scores), abs=1e-12)
    one_kind = row([0.2, 0.9], [False, True], [False, False])
    assert one_kind["ap"] is None and one_kind["roc_auc"] is None and one_kind["real_acc"] == 0.5
    assert one_kind["fake_acc"] is None and one_kind["acc"] == 0.5


def test_evaluate_reports_cnndetections_figures_for_labelled_folders(server, tmp_path):
    """Two datasets in CNNDetection's layout (0_real/, 1_fake/ under class folders), an unlabelled image and an
    unreadable one: the rows agree with the scores /spot gives each image, the bad image is named."""
    import subprocess
    import sys

    from sklearn.metrics import average_precision_score, roc_auc_score

    from ..conftest import DATA, REPO

    photos = sorted((DATA / "photos" / "stl10_unlabeled").rglob("*.png"))[:12]
    labels = {}
    for k, photo in enumerate(photos):
        altered = k % 2 == 1
        folder = tmp_path / ("gen_a" if k < 8 else "gen_b") / "cat" / ("1_fake" if altered else "0_real")
        folder.mkdir(parents=True, exist_ok=True)
        rgb = np.asarray(Image.open(photo).convert("RGB")).copy()
        if altered:  # a crude alteration: a flat square pasted in
            rgb[20:60, 20:60] = rgb[20:60, 20:60].mean((0, 1))
        Image.fromarray(rgb).save(folder / f"{k}.png")
        labels[folder / f"{k}.png"] = altered
    (tmp_path / "gen_a" / "notes.png").write_bytes(png_bytes(Image.new("RGB", (64, 64))))  # no label
    (tmp_path / "gen_b" / "cat" / "1_fake" / "broken.jpg").write_bytes(truncated_jpeg())
    cmd = [sys.executable, "-m", "service.client", "evaluate", str(tmp_path / "gen_a"), str(tmp_path / "gen_b")]
    out = tmp_path / "out"
    r = subprocess.run(
        [*cmd, "--url", server.url, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 1 and "1 of 13 images failed" in r.stderr, r.stderr
    report = json.loads(r.stdout)
    assert json.loads((out / "evaluation.json").read_text()) == report
    with open(out / "scores.csv") as f:
        scores = {Path(row["image"]): row for row in csv.DictReader(f)}
    assert report["unlabelled"] == 1 and [f["image"] for f in report["failed"]] == [
        str(tmp_path / "gen_b" / "cat" / "1_fake" / "broken.jpg")
    ]
    with SpotClient(server.url) as c:
        answers = dict(zip(labels, c.spot(list(labels)), strict=False))
    assert set(scores) == set(labels)  # every scored image, its truth and its score
    for path, written in scores.items():
        assert written["altered_truth"] == str(labels[path]) and written["dataset"] in path.parts
        assert float(written["artifact_score"]) == pytest.approx(answers[path]["artifact_score"])
    assert report["threshold"] == next(iter(answers.values()))["threshold"]
    rows = {**report["datasets"], "all": report["all"]}
    for name, keep in (("gen_a", lambda p: "gen_a" in p.parts), ("gen_b", lambda p: "gen_b" in p.parts), ("all", bool)):
        chosen = [p for p in labels if keep(p)]
        y = np.array([labels[p] for p in chosen])
        s = np.array([answers[p]["artifact_score"] for p in chosen])
        flagged = np.array([answers[p]["altered"] for p in chosen])
        got = rows[name]
        assert (got["real"], got["fake"]) == (int((~y).sum()), int(y.sum()))
        assert got["roc_auc"] == pytest.approx(roc_auc_score(y, s)) and got["ap"] == pytest.approx(
            average_precision_score(y, s)
        )
        assert got["acc"] == pytest.approx((flagged == y).mean())
        assert got["fake_acc"] == pytest.approx(flagged[y].mean())
        assert got["real_acc"] == pytest.approx((~flagged[~y]).mean())


def test_labels_follow_cnndetections_folders_in_any_case_and_through_links(tmp_path):
    from service.client import image_files
    from service.evaluate import label

    root = tmp_path / "1_fake"
    assert label(root / "x.png", root) is True  # the dataset folder itself names the label
    assert label(tmp_path / "Real" / "x.png", tmp_path) is False and label(tmp_path / "FAKE" / "a" / "x.png", tmp_path)
    assert label(tmp_path / "1_fake" / "0_real" / "x.png", tmp_path) is None  # both: unlabelled
    assert label(tmp_path / "other" / "x.png", tmp_path) is None
    (tmp_path / "store").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "store" / "a.png")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "0_real").symlink_to(tmp_path / "store")  # a farm of links, as datasets often are
    (tmp_path / "store" / "loop").symlink_to(tmp_path / "ds")  # and a link back up: no endless walk
    assert image_files(tmp_path / "ds") == [tmp_path / "ds" / "0_real" / "a.png"]


def test_the_client_keeps_going_past_unreadable_files_odd_modes_and_a_small_server_limit(server, tmp_path):
    """A missing file fails alone; a CMYK PIL image is sent as the server would convert it; 40 images in
    requests of 40 to a server taking 16 are split in halves and all answered."""
    good = png_bytes(Image.new("RGB", (64, 64), (10, 200, 30)))
    rgb = Image.open(PHOTO).convert("RGB")
    with SpotClient(server.url, per_request=40) as c:
        answers = dict(c.results("features", {"layers": "conv5"}, [good, tmp_path / "missing.png", good]))
        assert answers[1]["status"] == 400 and "missing.png" in answers[1]["error"]
        assert answers[0]["features"]["conv5"]["values"] == answers[2]["features"]["conv5"]["values"]
        cmyk, plain = c.features([rgb.convert("CMYK"), rgb.convert("CMYK").convert("RGB")], layers=["conv5"])["conv5"]
        np.testing.assert_allclose(cmyk, plain, rtol=1e-6, atol=1e-6)
        before = statuses(server.url)["200"]
        many = c.features([good] * 40, layers=["conv5"])["conv5"]
    assert many.shape[0] == 40 and np.allclose(many, many[0])
    assert statuses(server.url)["200"] - before == 4  # four requests of 10, not 40 of one


def test_the_client_needs_none_of_the_servers_libraries():
    """What `pip install .[client]` gives (httpx, numpy, Pillow) is enough: no FastAPI, ONNX Runtime, torch..."""
    import ast
    import subprocess
    import sys

    from ..conftest import REPO

    code = (
        "import sys, numpy as np; from service import client, evaluate; "
        "client.upload(np.zeros((4, 4, 3), np.uint8), 0); "
        "print(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    loaded = set(ast.literal_eval(r.stdout))
    assert {"httpx", "numpy", "PIL"} <= loaded, r.stderr
    server_side = {"fastapi", "starlette", "uvicorn", "onnxruntime", "onnx", "pydantic", "torch", "grpc", "sklearn"}
    assert not loaded & server_side
