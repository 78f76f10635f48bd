"""A short version of the benchmark suite (`python -m bench --quick`), so that it cannot rot (slow: it
loads the machine for about a minute)."""

import json
import subprocess
import sys

import pytest

from ..conftest import REPO


@pytest.mark.slow
def test_the_suite_runs_short_and_writes_results_and_plots(tmp_path):
    md = tmp_path / "RESULTS.md"
    cmd = [sys.executable, "-m", "bench", "--quick", "--model-dir", str(REPO / "models" / "spot-tiny64"),
           "--out", str(tmp_path), "--results-md", str(md)]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert 2 * suite["engine"]["macs_per_image"] / 1e6 == pytest.approx(46.6, abs=0.1)  # the shipped model
    assert {"onnxruntime", "onnxruntime_with_decode", "pytorch_fp32", "pytorch_bf16"} <= set(suite["engine"]["rows"])
    for route in ("features", "spot"):
        on, off = suite["service"][route]["on"], suite["service"][route]["off"]
        assert all(r["non2xx"] == 0 and r["socket_errors"] == 0 for r in [*on.values(), *off.values()])
        assert all(r["images_per_run"] == pytest.approx(1.0) for r in off.values())  # batching off: one per run
        assert on["4"]["images_per_run"] > 1  # four clients: the batcher gathers them
    assert suite["service"]["features_16_per_request"]["on"]["1"]["images_per_run"] == pytest.approx(16)
    text = md.read_text()
    assert "## The targets (issue 6)" in text and suite["commit"] in text and suite["hardware"]["cpu"] in text
    for png in ("engine.png", "service.png", "latency.png"):
        assert (tmp_path / png).stat().st_size > 5000


@pytest.mark.slow
def test_the_gpu_variant_runs_short_on_the_cpu_and_writes_its_report(tmp_path):
    """`python -m bench.gpu` on the CPU provider: every step the GPU run takes, so that it cannot rot where
    no GPU is lent (about a minute)."""
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "-m", "bench.gpu", "--providers", "cpu", "--clients", "1", "4", "--seconds", "1",
           "--engine-seconds", "0.05", "--workers", "2", "--out", str(out)]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads(out.read_text())
    assert {"cpu_fp32_trunk", "cpu_fp16_trunk", "cpu_fp32_heads", "cpu_fp16_heads"} == set(run["engine"]["rows"])
    diffs = run["engine"]["max_abs_diff_vs_cpu"]
    assert set(diffs) == {"cpu_fp16_trunk", "cpu_fp16_heads"} and all(d < 0.5 for d in diffs.values())  # fp16 ~ fp32
    svc = run["service"]
    for route in ("features", "spot"):
        assert all(r["non2xx"] == 0 for r in [*svc[route]["on"].values(), *svc[route]["off"].values()])
        assert all(r["images_per_run"] == pytest.approx(1.0) for r in svc[route]["off"].values())
    assert svc["features_16_per_request"]["on"]["1"]["images_per_run"] == pytest.approx(16)
    assert svc["features_workers"]["workers"] == svc["spot_workers"]["workers"] == 2
    assert set(svc["spot_workers"]["off"]) == {"1", "4"}  # no level of 16 or more asked: every one
    text = out.with_suffix(".md").read_text()
    assert "# GPU variant of the benchmark suite" in text and "of the engine's best" in text


def test_results_md_quotes_a_gpu_run_in_the_suite_or_beside_it():
    """Section 5 of RESULTS.md: the suite's own GPU part where it ran on a GPU, else a separate
    `python -m bench.gpu` run (bench/results/gpu.json) quoted by its command and figures."""
    from bench import report

    suite = json.loads((REPO / "bench" / "results" / "suite.json").read_text())
    gpu_run = json.loads((REPO / "bench" / "results" / "gpu.json").read_text())
    beside = report.markdown(suite, gpu_run)
    assert gpu_run["command"] in beside and "(results/gpu.md)" in beside and "of the engine's best" in beside
    inside = report.markdown({**suite, "gpu": {k: v for k, v in gpu_run.items() if k not in ("command", "commit")}})
    section = inside[inside.index("## 5. GPU variant") : inside.index("## Profile")]
    assert "### Engine" in section and "### The service" in section and "Not run" not in section


@pytest.mark.slow
def test_every_peer_serves_the_shipped_model_and_is_measured_short(tmp_path):
    """The peer comparison in short (bench/peer.py): every peer installs, starts, answers what the model
    answers, and takes the load without an error (makes the peers' environments on first use: minutes)."""
    out = tmp_path / "peers.json"
    cmd = [sys.executable, "-m", "bench.peer", "--clients", "1", "4", "--seconds", "1", "--out", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stderr[-3000:]
    servers = json.loads(out.read_text())["servers"]
    assert set(servers) == {"ours", "BentoML", "LitServe", "MLServer", "PyTriton"}
    for name, r in servers.items():
        assert "error" not in r, (name, r.get("error"))
        assert r["max_abs_diff"] < 1e-3
        rows = [row for kind in ("jpeg", "oip_http", "oip_grpc") for per in r[kind].values() for row in per.values()]
        assert all(row["images_per_s"] > 0 for row in rows)
        assert all(row.get("non2xx", 0) == 0 and row.get("socket_errors", 0) == 0 for row in rows)
    for name in ("ours", "MLServer", "PyTriton"):  # the Open Inference Protocol over HTTP, 1 and 16 per request
        assert set(servers[name]["oip_http"]) == {"1", "16"}
    assert set(servers["ours"]["oip_grpc"]) == set(servers["PyTriton"]["oip_grpc"]) == {"1", "16"}
    assert "failed to get model config" in servers["MLServer"]["oip_grpc_error"]  # perf_analyzer needs it
