"""Batching across requests, its metrics, the threshold in force, and padded batches."""

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from service.model import ExportedModel

from .helpers import PHOTO, png_bytes


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

    s = Server(model_dir, max_batch_delay_ms="20", adaptive_batch_delay="false", run_size="max")
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

    s = Server(model_dir, max_batch_delay_ms="5000", adaptive_batch_delay="false", run_size="max")
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
        s = Server(model_dir, max_batch_delay_ms="600", adaptive_batch_delay=adaptive, run_size="max")
        try:
            with httpx.Client(base_url=s.url, timeout=30) as c:
                for _ in range(3):  # one client, one request at a time: nobody to wait for
                    started = time.perf_counter()
                    assert c.post("/features", files=[("files", ("a.png", data, "image/png"))]).status_code == 200
                    assert low <= time.perf_counter() - started < high, adaptive
        finally:
            s.stop()


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


def test_run_size_auto_times_each_graph_at_start_and_says_so(model_dir):
    import re

    import httpx

    from bench.server import Server

    s = Server(model_dir, ready="/readyz", run_size="auto", max_batch_size="16")
    try:
        data = png_bytes(Image.new("RGB", (64, 64), (10, 200, 30)))
        r = httpx.post(f"{s.url}/features", files=[("files", ("a.png", data, "image/png"))] * 3, timeout=30)
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        [sizes] = re.findall(r"images per run: up to (\d+) \(trunk\), (\d+) \(heads\)", s.output())
        assert all(int(n) in (1, 2, 4, 8, 16) for n in sizes)
    finally:
        s.stop()
