"""The GPU variant of the suite: the engine on CUDA (fp32, and fp16 from `onnxruntime.transformers.float16`
with float32 inputs and outputs kept) beside the CPU on the same machine, the outputs checked against the
CPU's, and the service on `SPOT_PROVIDERS=cuda` + `SPOT_REQUIRE_GPU=true` under the suite's wrk load
(/features and /spot, batching on and off, 16 images per request, one process and several sharing the GPU).

    python -m bench.gpu --model-dir models/spot-tiny64 --out bench/results/gpu.json   # where ORT has CUDA
    python -m bench.gpu --render bench/results/gpu.json     # bench/results/gpu.md from a saved run

`--providers cpu` runs every step on the CPU instead (the slow test's smoke run, on any machine).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from service.model import HEAD_OUTPUTS, cut_graph

from . import service
from .context import commit, hardware, timed
from .engine import BATCHES
from .load import jpeg_crops, write_bodies
from .report import best, service_table
from .server import REPO

PROVIDERS = {"cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"], "cpu": ["CPUExecutionProvider"]}


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        return out.stdout.strip() or "none"
    except (OSError, subprocess.SubprocessError):
        return "none"


def fp16(graph: onnx.ModelProto) -> onnx.ModelProto:
    """The graph in float16 with float32 inputs and outputs (ONNX Runtime's own converter)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(graph, keep_io_types=True)


def engine_rows(model_dir: Path, device: str, seconds: float) -> dict:
    """Images/s per batch size of the graphs the service runs (trunk for /features, heads for /spot), on
    `device` in fp32 and fp16 and on the CPU in fp32, decoded input (host to device copies included);
    the first call at each batch size (cuDNN's algorithm search happens there); the largest difference
    from the CPU's outputs."""
    graph = onnx.load(str(model_dir / "model.onnx"))
    layers = json.loads((model_dir / "model.json").read_text())["layers"]
    size = graph.graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    x_all = np.random.default_rng(0).uniform(-120, 130, (max(BATCHES), 3, size, size)).astype(np.float32)
    rows, first_call_ms, max_abs_diff = {}, {}, {}
    for part, outputs in (("trunk", layers), ("heads", HEAD_OUTPUTS)):
        cut = cut_graph(graph, outputs)
        variants = {f"cpu_fp32_{part}": (cut, PROVIDERS["cpu"]), f"{device}_fp32_{part}": (cut, PROVIDERS[device])}
        variants[f"{device}_fp16_{part}"] = (fp16(cut), PROVIDERS[device])
        reference = None
        for name, (g, providers) in variants.items():
            session = ort.InferenceSession(g.SerializeToString(), providers=providers)
            rows[name], first_call_ms[name] = {}, {}
            for b in BATCHES:
                x = np.ascontiguousarray(x_all[:b])
                start = time.perf_counter()
                session.run(None, {"images": x})
                first_call_ms[name][str(b)] = 1000 * (time.perf_counter() - start)
                rows[name][str(b)] = timed(lambda: session.run(None, {"images": x}), b, seconds)
            out = session.run(None, {"images": x_all[:16]})
            if reference is None:
                reference = out
            else:
                max_abs_diff[name] = max(float(np.abs(a - r).max()) for a, r in zip(out, reference))
            print(name, {b: round(v) for b, v in rows[name].items()}, flush=True)
    return {"rows": rows, "first_call_ms": first_call_ms, "max_abs_diff_vs_cpu": max_abs_diff}


def service_rows(model_dir: Path, photos: Path, device: str, clients: list[int], seconds: float, workers: int) -> dict:
    jpegs = jpeg_crops(photos)
    settings = {"providers": device, "require_gpu": "true"} if device != "cpu" else {"providers": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        bodies = {k: write_bodies(jpegs, Path(tmp) / f"x{k}", per_request=k) for k in (1, 16)}
        level = dict(model_dir=model_dir, bodies=bodies, seconds=seconds, **settings)
        few = [c for c in clients if c <= 16]
        out = {}
        for route in ("features", "spot"):
            out[route] = {}
            for batching in (True, False):
                out[route]["on" if batching else "off"] = service.sweep(
                    route=route, per_request=1, clients=clients, batching=batching, **level
                )
                print(route, batching, {c: round(r["images_per_s"]) for c, r in out[route]["on" if batching else "off"].items()}, flush=True)  # fmt: skip
        out["features_16_per_request"] = {"on": service.sweep(route="features", per_request=16, clients=few, **level)}
        if workers > 1:
            out["features_workers"] = {
                "workers": workers,
                "on": service.sweep(route="features", per_request=1, clients=clients, workers=str(workers), **level),
            }
    return out


def markdown(r: dict) -> str:
    hw, eng = r["hardware"], r["engine"]
    dev = r["device"]
    out = [
        "# GPU variant of the benchmark suite",
        "",
        f"Written by `{r['command']}` at commit `{r['commit']}` (started {r['started']}, {r['minutes']} min);"
        " `python -m bench.gpu --render` re-renders it. bench/README.md says how the run was set up.",
        "",
        f"Machine: {hw['gpu']}; {hw['cpu']}, {hw['cores']} cores; Python {hw['python']}, ONNX Runtime"
        f" {hw['onnxruntime']} ({', '.join(hw['providers'])}). Model: `{r['model_dir']}`. Speeds from this one run.",
        "",
        "## Engine: ONNX Runtime called directly",
        "",
        "Images per second on decoded float32 input (the host-to-device copy and back included, as the service"
        " pays them); `trunk` = conv1..conv5, the graph /features runs; `heads` = what /spot runs.",
        "",
        "| batch | " + " | ".join(eng["rows"]) + " |",
        "|---|" + "---|" * len(eng["rows"]),
    ]
    for b in map(str, BATCHES):
        out.append(f"| {b} | " + " | ".join(f"{eng['rows'][k][b]:.0f}" for k in eng["rows"]) + " |")
    ratios = []
    for part in ("trunk", "heads"):
        g32, cpu = eng["rows"][f"{dev}_fp32_{part}"], eng["rows"][f"cpu_fp32_{part}"]
        g16 = eng["rows"][f"{dev}_fp16_{part}"]
        b32, b16, bc = (max(v.values()) for v in (g32, g16, cpu))
        ratios.append(
            f"{part}: best {dev} fp32 / best CPU fp32 = **{b32 / bc:.2f}**, fp16 / fp32 = **{b16 / b32:.2f}**"
        )
    diffs = ", ".join(f"{k} {v:.2g}" for k, v in eng["max_abs_diff_vs_cpu"].items())
    first = {k: v for k, v in eng["first_call_ms"].items() if not k.startswith("cpu")}
    out += [
        "",
        "; ".join(ratios) + ".",
        "",
        f"Largest absolute difference from the CPU's outputs (16 images): {diffs}.",
        "",
        "First call at each batch size, ms (cuDNN picks its algorithms there, once per shape): "
        + "; ".join(f"{k}: " + ", ".join(f"{b}: {ms:.0f}" for b, ms in v.items()) for k, v in first.items())
        + ".",
        "",
        "## The service",
        "",
    ]
    svc = r["service"]
    for route, label in (("features", "`/features?layers=conv5&pool=avg`"), ("spot", "`/spot?heatmap=none`")):
        on, off = svc[route]["on"], svc[route]["off"]
        out += [f"{label}, one image per request, one server process, batching on (and off):", ""]
        out += service_table(on, off) + [""]
        c, row = best(on)
        part = "trunk" if route == "features" else "heads"
        engine_best = max(eng["rows"][f"{dev}_fp32_{part}"].values())
        out += [
            f"Best: {row['images_per_s']:.0f} img/s at {c} clients = **{row['images_per_s'] / engine_best:.2f}** of the"
            f" engine's best ({dev} fp32, {part}: {engine_best:.0f} img/s); batching on / off at 16 clients:"
            f" **{on['16']['images_per_s'] / off['16']['images_per_s']:.2f}**."
            if "16" in on
            else "",
            "",
        ]
    out += ["`/features`, 16 images per request, batching on:", ""]
    out += service_table(svc["features_16_per_request"]["on"], None) + [""]
    if "features_workers" in svc:
        w = svc["features_workers"]
        out += [f"`/features`, one image per request, `SPOT_WORKERS={w['workers']}` processes sharing the GPU:", ""]
        out += service_table(w["on"], None) + [""]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=REPO / "models" / "spot-tiny64")
    p.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "photos")
    p.add_argument("--providers", choices=sorted(PROVIDERS), default="cuda")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--seconds", type=float, default=4, help="per load level, after a 2 s warm-up")
    p.add_argument("--engine-seconds", type=float, default=0.5)
    p.add_argument("--workers", type=int, default=4, help="processes sharing the GPU in the last sweep; 1 to skip")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu.json")
    p.add_argument("--commit", default=commit(), help="the tree's commit, where the copy run has no git history")
    p.add_argument("--render", type=Path, help="only write the markdown beside this saved JSON")
    args = p.parse_args()
    if args.render:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        return
    if args.providers == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit(
            f"ONNX Runtime has no CUDA provider here ({ort.get_available_providers()}); --providers cpu to smoke-test"
        )
    started = datetime.datetime.now(datetime.timezone.utc)
    model_dir = args.model_dir.resolve()
    report = {
        "command": "python -m bench.gpu " + " ".join(sys.argv[1:]),
        "commit": args.commit,
        "started": started.isoformat(timespec="seconds"),
        "hardware": {**hardware(), "gpu": gpu_name()},
        "model_dir": str(model_dir.relative_to(REPO) if model_dir.is_relative_to(REPO) else model_dir),
        "device": args.providers,
        "engine": engine_rows(model_dir, args.providers, args.engine_seconds),
    }
    report["service"] = service_rows(model_dir, args.photos, args.providers, args.clients, args.seconds, args.workers)
    report["minutes"] = round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds() / 60, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
