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

from service.model import HEAD_OUTPUTS, cut_graph, tensorrt_libraries_present

from . import report, service
from .context import commit, hardware, timed
from .engine import BATCHES
from .load import jpeg_crops, write_bodies
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
    from the CPU's outputs. TensorRT fp16 too where its libraries are present (none on the GPU lent here)."""
    graph = onnx.load(str(model_dir / "model.onnx"))
    layers = json.loads((model_dir / "model.json").read_text())["layers"]
    size = graph.graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    x_all = np.random.default_rng(0).uniform(-120, 130, (max(BATCHES), 3, size, size)).astype(np.float32)
    rows, first_call_ms, max_abs_diff = {}, {}, {}
    for part, outputs in (("trunk", layers), ("heads", HEAD_OUTPUTS)):
        cut = cut_graph(graph, outputs)
        variants = {f"cpu_fp32_{part}": (cut, PROVIDERS["cpu"]), f"{device}_fp32_{part}": (cut, PROVIDERS[device])}
        variants[f"{device}_fp16_{part}"] = (fp16(cut), PROVIDERS[device])
        if device == "cuda" and tensorrt_libraries_present():  # TensorRT builds its own fp16 engine from fp32
            trt = [("TensorrtExecutionProvider", {"trt_fp16_enable": True}), *PROVIDERS["cuda"]]
            variants[f"tensorrt_fp16_{part}"] = (cut, trt)
        reference = None
        for name, (g, providers) in variants.items():
            session = ort.InferenceSession(g.SerializeToString(), providers=providers)
            rows[name], first_call_ms[name] = {}, {}
            for b in BATCHES:
                x = np.ascontiguousarray(x_all[:b])
                start = time.perf_counter()
                session.run(None, {"images": x})
                first_call_ms[name][str(b)] = 1000 * (time.perf_counter() - start)
                rows[name][str(b)] = timed(lambda s=session, x=x: s.run(None, {"images": x}), b, seconds)
            out = session.run(None, {"images": x_all[:16]})
            if reference is None:
                reference = out
            else:
                max_abs_diff[name] = max(float(np.abs(a - r).max()) for a, r in zip(out, reference, strict=False))
            print(name, {b: round(v) for b, v in rows[name].items()}, flush=True)
    return {"rows": rows, "first_call_ms": first_call_ms, "max_abs_diff_vs_cpu": max_abs_diff}


def service_rows(model_dir: Path, photos: Path, device: str, clients: list[int], seconds: float, workers: int) -> dict:
    jpegs = jpeg_crops(photos)
    settings = {"providers": device, "require_gpu": "true"} if device != "cpu" else {"providers": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        bodies = {k: write_bodies(jpegs, Path(tmp) / f"x{k}", per_request=k) for k in (1, 16)}
        level = dict(model_dir=model_dir, bodies=bodies, seconds=seconds, **settings)
        few = [c for c in clients if c <= 16]

        def on_off(route: str, levels: list[int] = clients, **extra) -> dict:
            """One image per request, batching on and off, each over every client count in `levels`."""
            measured = {}
            for key, batching in (("on", True), ("off", False)):
                rows = service.sweep(route=route, per_request=1, clients=levels, batching=batching, **extra, **level)
                measured[key] = rows
                print(route, extra, key, {c: round(r["images_per_s"]) for c, r in rows.items()}, flush=True)
            return measured

        out = {route: on_off(route) for route in ("features", "spot")}
        out["features_16_per_request"] = {"on": service.sweep(route="features", per_request=16, clients=few, **level)}
        if workers > 1:  # several processes: the HTTP layer, one core each, no longer the bound (bench/README.md)
            busy = [c for c in clients if c >= 16] or clients  # where batching can pay; issue 4 asks at 16
            for route in ("features", "spot"):
                out[f"{route}_workers"] = {"workers": workers, **on_off(route, busy, workers=str(workers))}
    return out


def measure(
    model_dir: Path, photos: Path, device: str, clients: list[int], seconds: float, engine_seconds: float, workers: int
) -> dict:
    """The whole GPU variant for one model (the suite calls this where ONNX Runtime has CUDA)."""
    started = datetime.datetime.now(datetime.UTC)
    run = {
        "started": started.isoformat(timespec="seconds"),
        "hardware": {**hardware(), "gpu": gpu_name()},
        "model_dir": str(model_dir.relative_to(REPO) if model_dir.is_relative_to(REPO) else model_dir),
        "device": device,
        "engine": engine_rows(model_dir, device, engine_seconds),
        "service": service_rows(model_dir, photos, device, clients, seconds, workers),
    }
    run["minutes"] = round((datetime.datetime.now(datetime.UTC) - started).total_seconds() / 60, 1)
    return run


def summary(r: dict) -> list[str]:
    """The headline figures, a bullet each (RESULTS.md quotes them)."""
    eng, svc, dev = r["engine"]["rows"], r["service"], r["device"]
    out = []
    for route, part in (("features", "trunk"), ("spot", "heads")):
        on, off = svc[route]["on"], svc[route]["off"]
        c, row = report.best(on)
        top, at64 = max(eng[f"{dev}_fp32_{part}"].values()), eng[f"{dev}_fp32_{part}"]["64"]
        line = (
            f"- `/{route}`, one image per request, one process: best {row['images_per_s']:.0f} img/s ({c} clients) ="
            f" **{row['images_per_s'] / top:.3f}** of the engine's best ({dev} fp32, {part}, {top:.0f} img/s;"
            f" {at64:.0f} at batch 64, the service's largest)"
        )
        if "16" in on and "16" in off:
            line += f"; batching on / off at 16 clients **{on['16']['images_per_s'] / off['16']['images_per_s']:.2f}**"
        out.append(line)
    for route in ("features", "spot"):
        if f"{route}_workers" not in svc:
            continue
        w = svc[f"{route}_workers"]
        c, row = report.best(w["on"])
        line = f"- `/{route}` with `SPOT_WORKERS={w['workers']}` sharing the GPU: {row['images_per_s']:.0f} img/s"
        line += f" ({c} clients)"
        if "16" in w["on"] and "16" in w.get("off", {}):
            on_off = w["on"]["16"]["images_per_s"] / w["off"]["16"]["images_per_s"]
            line += f"; batching on / off at 16 clients **{on_off:.2f}**"
        out.append(line)
    for part in ("trunk", "heads"):
        b32, b16, bc = (max(eng[f"{k}_{part}"].values()) for k in (f"{dev}_fp32", f"{dev}_fp16", "cpu_fp32"))
        out.append(
            f"- engine, {part}: best {dev} fp32 / best CPU fp32 (same machine) **{b32 / bc:.2f}**,"
            f" fp16 / fp32 **{b16 / b32:.2f}**"
        )
    return out


def body(r: dict, level: str = "##") -> str:
    """Machine, engine table, service tables (headings at `level`, so RESULTS.md can nest them)."""
    hw, eng, dev, svc = r["hardware"], r["engine"], r["device"], r["service"]
    out = [
        f"Machine: {hw['gpu']}; {hw['cpu']}, {hw['cores']} cores; Python {hw['python']}, ONNX Runtime"
        f" {hw['onnxruntime']} ({', '.join(hw['providers'])}). Model: `{r['model_dir']}`. Speeds from this one run.",
        "",
        *summary(r),
        "",
        f"{level} Engine: ONNX Runtime called directly",
        "",
        "Images per second on decoded float32 input (the host-to-device copy and back included, as the service"
        " pays them); `trunk` = conv1..conv5, the graph /features runs; `heads` = what /spot runs.",
        "",
        "| batch | " + " | ".join(eng["rows"]) + " |",
        "|---|" + "---|" * len(eng["rows"]),
    ]
    for b in map(str, BATCHES):
        out.append(f"| {b} | " + " | ".join(f"{eng['rows'][k][b]:.0f}" for k in eng["rows"]) + " |")
    diffs = ", ".join(f"{k} {v:.2g}" for k, v in eng["max_abs_diff_vs_cpu"].items())
    first = {k: v for k, v in eng["first_call_ms"].items() if not k.startswith("cpu")}
    out += ["", f"Largest absolute difference from the CPU's outputs (16 images): {diffs}.", ""]
    if first:
        cells = "; ".join(f"{k}: " + ", ".join(f"{b}: {ms:.0f}" for b, ms in v.items()) for k, v in first.items())
        out += [f"First call at each batch size, ms (cuDNN picks its algorithms there): {cells}.", ""]
    out += [
        f"{level} The service on `SPOT_PROVIDERS={dev}`",
        "",
        "Batching on = the service's defaults (up to 64 images per run; on a GPU, from commit `f43ee74` on, every"
        " run padded to 64: `SPOT_PAD_BATCHES=auto`; runs at earlier commits were not padded); off ="
        " `SPOT_MAX_BATCH_SIZE=1`. Images per run count the requests' images, not the padding.",
        "",
    ]
    for route, label in (("features", "`/features?layers=conv5&pool=avg`"), ("spot", "`/spot?heatmap=none`")):
        out += [f"{label}, one image per request, one server process, batching on (and off):", ""]
        out += report.service_table(svc[route]["on"], svc[route]["off"]) + [""]
    out += ["`/features`, 16 images per request, batching on:", ""]
    out += report.service_table(svc["features_16_per_request"]["on"], None) + [""]
    for route in ("features", "spot"):
        if f"{route}_workers" in svc:
            w = svc[f"{route}_workers"]
            out += [f"`/{route}`, one image per request, `SPOT_WORKERS={w['workers']}` processes sharing the GPU:", ""]
            out += report.service_table(w["on"], w.get("off")) + [""]
    return "\n".join(out)


def markdown(r: dict) -> str:
    return (
        f"# GPU variant of the benchmark suite\n\nWritten by `{r['command']}` at commit `{r['commit']}` (started"
        f" {r['started']}, {r['minutes']} min); `python -m bench.gpu --render` re-renders it; bench/README.md says"
        " how the run was set up.\n\n" + body(r)
    )


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
    run = {
        "command": "python -m bench.gpu " + " ".join(sys.argv[1:]),
        "commit": args.commit,
        **measure(args.model_dir.resolve(), args.photos, args.providers, args.clients, args.seconds,
                  args.engine_seconds, args.workers),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(run, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(run))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
