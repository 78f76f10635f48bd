"""Dynamic batching on vs off at N concurrent clients, one JPEG per request, measured in one run.

    python -m bench.batching --model-dir models/spot-tiny64 --out bench/results/batching-tiny64.json

For each model: the engine's own gain from batching (ONNX Runtime called directly at batch 1 and at
max_batch_size, decoded input) bounds what a server can gain; then the same server with
max_batch_size=32 and with max_batch_size=1, each under the same wrk load, and the mean batch size
read back from its /metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from service.model import ExportedModel

from .context import commit, hardware, timed
from .load import jpeg_crops, write_bodies, wrk
from .server import REPO, Server


def engine_images_per_s(model_dir: Path, batch: int, seconds: float = 3.0) -> float:
    """ONNX Runtime alone on random decoded input: the ceiling for any server of this model."""
    model = ExportedModel(model_dir, "cpu")
    x = np.random.default_rng(0).uniform(0, 255, (batch, 3, model.size, model.size)).astype(np.float32)
    return timed(lambda: model.run(x), batch, seconds)


def batch_size_stats(url: str) -> dict:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
    runs = samples.get("spot_batch_size_count", 0)
    return {"runs": int(runs), "images": samples.get("spot_batch_size_sum", 0)}


def serve_and_load(model_dir: Path, bodies: Path, route: str, clients: int, seconds: float, **env) -> dict:
    server = Server(model_dir, ready="/readyz", access_log="false", **env)
    try:
        wrk(f"{server.url}{route}", bodies, clients, 2)  # warm-up, not counted
        before = batch_size_stats(server.url)
        result = wrk(f"{server.url}{route}", bodies, clients, seconds)
        after = batch_size_stats(server.url)
    finally:
        server.stop()
    runs, images = after["runs"] - before["runs"], after["images"] - before["images"]
    result["onnxruntime_runs"] = runs
    result["images_per_run"] = images / runs if runs else 0.0
    return result


def measure(
    model_dir: Path, photos: Path, clients: int, seconds: float, max_batch: int, route: str, per_request: int
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        bodies = write_bodies(jpeg_crops(photos), Path(tmp) / "bodies", per_request)
        engine = {b: engine_images_per_s(model_dir, b) for b in (1, max_batch)}
        on = serve_and_load(model_dir, bodies, route, clients, seconds, max_batch_size=str(max_batch))
        off = serve_and_load(model_dir, bodies, route, clients, seconds, max_batch_size="1")
    return {
        "model_dir": str(model_dir),
        "route": route,
        "clients": clients,
        "images_per_request": per_request,
        "seconds": seconds,
        "engine_images_per_s": {str(b): v for b, v in engine.items()},
        "engine_batching_gain": engine[max_batch] / engine[1],
        "batching_on": on,
        "batching_off": off,
        "service_images_per_s": {"on": on["req_per_s"] * per_request, "off": off["req_per_s"] * per_request},
        "service_batching_gain": on["req_per_s"] / off["req_per_s"],
    }


def markdown(report: dict) -> str:
    """The report as a table: engine and service images/s, batching on vs off, in one run."""
    hw = report["hardware"]
    lines = [
        f"Command: `{report['command']}` at commit `{report['commit']}`; {hw['cpu']}, {hw['cores']} cores,"
        f" ONNX Runtime {hw['onnxruntime']}. {report['runs'][0]['seconds']} s per row,"
        f" route `{report['runs'][0]['route']}`.",
        "",
        "| model | clients | images/request | engine img/s b=1 | engine img/s b=max | engine gain | service img/s on"
        " | service img/s off | service gain | images per run (on) | p99 ms on / off | non-2xx |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        (b1, bmax), on, off = r["engine_images_per_s"].values(), r["batching_on"], r["batching_off"]
        lines.append(
            f"| `{r['model_dir']}` | {r['clients']} | {r['images_per_request']} | {b1:.0f} | {bmax:.0f} | {r['engine_batching_gain']:.2f}"
            f" | {r['service_images_per_s']['on']:.0f} | {r['service_images_per_s']['off']:.0f}"
            f" | **{r['service_batching_gain']:.2f}** | {on['images_per_run']:.1f} | {on['p99_ms']:.0f} / {off['p99_ms']:.0f}"
            f" | {on['non2xx'] + off['non2xx']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, nargs="+", default=[REPO / "models" / "spot-tiny64"])
    p.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "photos")
    p.add_argument("--route", default="/features?layers=conv5&pool=avg")
    p.add_argument("--clients", type=int, nargs="+", default=[16])
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--images-per-request", type=int, nargs="+", default=[1])
    p.add_argument("--out", type=Path, help="write the JSON here and the markdown table beside it (.md)")
    args = p.parse_args()
    report = {
        "command": "python -m bench.batching " + " ".join(os.sys.argv[1:]),
        "commit": commit(),
        "hardware": hardware(),
        "runs": [
            measure(m, args.photos, c, args.seconds, args.max_batch_size, args.route, k)
            for m in args.model_dir
            for k in args.images_per_request
            for c in args.clients
        ],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        args.out.with_suffix(".md").write_text(markdown(report))


if __name__ == "__main__":
    main()
