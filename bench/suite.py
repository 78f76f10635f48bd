"""The whole benchmark suite in one run: the engine limit, the service over a concurrency sweep (/features
and /spot, batching on and off, 1 and 16 images per request), the peers (BentoML, LitServe, MLServer,
PyTriton) against ours on the shipped model (bench/peer.py), training throughput, the GPU variant where a
GPU is present, and a profile of where the service's time goes. Writes bench/results/suite.json,
bench/RESULTS.md and the plots beside them.

    python -m bench                 # about 30 minutes on 2 cores; --quick for a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import onnxruntime

from . import engine, gpu, peer, profile, report, service
from .context import commit, hardware
from .load import jpeg_crops, write_bodies
from .peers.registry import PEERS
from .server import REPO

FULL_WIDTH = REPO / "runs" / "bench-full"
SHIPPED = REPO / "models" / "spot-tiny64"  # the peers serve the shipped model (issue 24)
BUILD_FULL_WIDTH = [
    # the shipped architecture at full width (the paper's channel counts, 168.7 MFLOP per image, like the
    # 154.5 MFLOP model of ../shared/docs/SERVING_ANCHORS.md); one supervised step: effectively random weights
    [sys.executable, "-m", "training", "train", "--preset", "tiny64", "--run-dir", str(FULL_WIDTH), "--no-progress",
     "--model.width=1", "--train.stages=supervised", "--train.supervised_steps=1"],
    [sys.executable, "-m", "training", "export", "--checkpoint", str(FULL_WIDTH / "checkpoint.pt"),
     "--out", str(FULL_WIDTH / "export")],
]  # fmt: skip


def full_width_model() -> Path:
    if not (FULL_WIDTH / "export" / "model.json").exists():
        for cmd in BUILD_FULL_WIDTH:
            subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=1800)
    return FULL_WIDTH / "export"


def training_speed(presets: list[str], steps: int) -> dict:
    out = {}
    for preset in presets:
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [
                sys.executable,
                "-m",
                "training",
                "speed",
                "--preset",
                preset,
                "--steps",
                str(steps),
                "--out",
                f.name,
            ]
            subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=1800)
            out[preset] = json.loads(Path(f.name).read_text())
    return out


def peer_rows(quick: bool, photos: Path, clients: list[int], seconds: float) -> dict:
    """Every peer against ours on the shipped model (bench/peer.py); a quick run only with the environments
    already made (making them takes minutes)."""
    ready = [p for p in PEERS if (p.venv / ".installed").exists()]
    if quick and not ready:
        return {"skipped": "no peer environment made yet (a full run makes them)"}
    return peer.measure(SHIPPED, photos, clients, seconds, ready if quick else PEERS)


def service_rows(clients: list[int], **level) -> dict:
    """Our server under load, each variant a sweep over `clients` (16 images per request: up to 16 clients)."""
    few = [c for c in clients if c <= 16]
    workers = str(max(2, os.cpu_count() or 1))  # SPOT_WORKERS: one per core
    sweep = functools.partial(service.sweep, **level)
    return {
        "features": {
            "on": sweep(route="features", per_request=1, clients=clients),
            "off": sweep(route="features", per_request=1, clients=clients, batching=False),
        },
        "spot": {
            "on": sweep(route="spot", per_request=1, clients=clients),
            "off": sweep(route="spot", per_request=1, clients=clients, batching=False),
        },
        "features_16_per_request": {"on": sweep(route="features", per_request=16, clients=few)},
        "features_1_onnxruntime_thread": {  # the event loop keeps a core to itself
            "on": sweep(route="features", per_request=1, clients=clients, intra_op_threads="1"),
        },
        "features_workers_per_core": {  # a process per core, each with one ONNX Runtime thread
            "on": sweep(route="features", per_request=1, clients=clients, workers=workers),
        },
        "features_16_per_request_workers_per_core": {
            "on": sweep(route="features", per_request=16, clients=few, workers=workers),
        },
        "spot_workers_per_core": {"on": sweep(route="spot", per_request=1, clients=clients, workers=workers)},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, help="default: the full-width model, built on first use")
    p.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "photos")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--seconds", type=float, default=8, help="per load level, after a 2 s warm-up")
    p.add_argument("--engine-seconds", type=float, default=2, help="per engine measurement")
    p.add_argument("--presets", nargs="*", default=["tiny64", "cifar32"], help="training speed; none to skip")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 s levels, clients 1 and 4, no training")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="suite.json and the plots")
    p.add_argument("--results-md", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = p.parse_args()
    if args.quick:
        args.clients, args.seconds, args.engine_seconds, args.presets = [1, 4], 1, 0.05, []
    model_dir = (args.model_dir or full_width_model()).resolve()
    started = datetime.datetime.now(datetime.UTC)
    jpegs = jpeg_crops(args.photos)
    with tempfile.TemporaryDirectory() as tmp:
        bodies = {k: write_bodies(jpegs, Path(tmp) / f"x{k}", per_request=k) for k in (1, 16)}
        level = dict(model_dir=model_dir, bodies=bodies, seconds=args.seconds)
        sections = {
            "engine": lambda: engine.measure(model_dir, args.photos, args.engine_seconds),
            "service": lambda: service_rows(args.clients, **level),
            "peers": lambda: peer_rows(args.quick, args.photos, args.clients, args.seconds),
            "gpu": lambda: (
                gpu.measure(model_dir, args.photos, "cuda", args.clients, args.seconds, args.engine_seconds, 4)
                if "CUDAExecutionProvider" in onnxruntime.get_available_providers()
                else {"skipped": "no CUDA provider on this machine"}
            ),
            "profile": lambda: profile.measure(
                model_dir, bodies[1], clients=max(args.clients), seconds=min(6, 2 + args.seconds)
            ),
            "training": lambda: training_speed(args.presets, steps=10),
        }
        results = {}
        args.out.mkdir(parents=True, exist_ok=True)
        for name, measure in sections.items():
            results[name] = measure()
            # kept as it goes: a section that fails late does not cost the half hour before it
            (args.out / "suite.partial.json").write_text(json.dumps(results, indent=2) + "\n")
    suite = {
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "commit": commit(),
        "started": started.isoformat(timespec="seconds"),
        "minutes": round((datetime.datetime.now(datetime.UTC) - started).total_seconds() / 60, 1),
        "hardware": hardware(),
        "model_dir": str(model_dir.relative_to(REPO) if model_dir.is_relative_to(REPO) else model_dir),
        "clients": args.clients,
        "seconds": args.seconds,
        **results,
    }
    (args.out / "suite.json").write_text(json.dumps(suite, indent=2) + "\n")
    report.write(suite, args.out, args.results_md)
    (args.out / "suite.partial.json").unlink()
    print(args.results_md.read_text())


if __name__ == "__main__":
    main()
