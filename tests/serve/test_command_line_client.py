"""`python -m service.client` against a real server: outputs written only where asked, folders in chunks,
a bad file failing alone."""

import json
import re

import numpy as np
from PIL import Image

from ..conftest import DATA, REPO
from .helpers import PHOTO, truncated_jpeg


def test_command_line_client_writes_overlays_and_features(server, tmp_path):
    import subprocess
    import sys

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
    assert 0 <= report[0]["artifact_score"] <= 1 and 0 <= report[0]["peak_score"] <= 1
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

    photos = sorted((DATA / "photos" / "stl10_unlabeled").rglob("*.png"))[:15]
    for folder, chosen in (("a", photos[:10]), ("b", photos[:5] + photos[10:])):
        (tmp_path / folder).mkdir()
        for photo in chosen:
            shutil.copy(photo, tmp_path / folder / photo.name)
    (tmp_path / "b" / "broken.jpg").write_bytes(truncated_jpeg())
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
