"""A short version of the benchmark suite, so that it cannot rot (slow: it loads the machine)."""

import json
import subprocess
import sys

import pytest

from ..conftest import REPO


@pytest.mark.slow
def test_engine_benchmark_short(tmp_path):
    out = tmp_path / "engine.json"
    cmd = [sys.executable, "-m", "bench.engine", "--seconds", "0.05", "--out", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert 2 * report["macs_per_image"] / 1e6 == pytest.approx(46.6, abs=0.1)  # the shipped half-width model
    assert set(report["rows"]) == {"onnxruntime", "onnxruntime_with_decode", "pytorch_fp32", "pytorch_bf16"}
    assert all(v > 0 for row in report["rows"].values() for v in row.values())
    assert out.with_suffix(".md").exists() and out.with_suffix(".png").stat().st_size > 1000


@pytest.mark.slow
def test_batching_benchmark_short(tmp_path):
    out = tmp_path / "batching.json"
    cmd = [sys.executable, "-m", "bench.batching", "--seconds", "2", "--clients", "8", "--out", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads(out.read_text())["runs"][0]
    assert run["batching_on"]["non2xx"] == run["batching_off"]["non2xx"] == 0
    assert run["batching_off"]["images_per_run"] == pytest.approx(1.0, abs=0.05)
    assert run["batching_on"]["images_per_run"] > 1
