"""Ours against the peer users would pick instead: the same model and work (one JPEG per request, conv5
average-pooled features back as JSON) behind our service and behind BentoML with adaptive batching
(`bench/peer_bentoml.py`), the same wrk load over a concurrency sweep, in one run.

    python -m bench.peer --out bench/results/peer.json   # needs .venv-bentoml (bench/README.md)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np

from .context import commit, hardware
from .load import jpeg_crops, write_bodies, wrk
from .server import REPO, Server, ServerProcess, free_port

OURS_ROUTE = "/features?layers=conv5&pool=avg"
# its own environment, so that its dependencies never mix with ours; the model runtime pins are ours
BENTOML_REQUIREMENTS = ["bentoml==1.4.40", "onnxruntime==1.31.1", "onnx==1.23.2", "pillow==13.0.0", "numpy==2.4.6"]


def ensure_bentoml_venv(venv: Path) -> None:
    """Creates the BentoML environment on first use (about 30 s from PyPI)."""
    if (venv / "bin" / "bentoml").exists():
        return
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "--quiet", *BENTOML_REQUIREMENTS]
    subprocess.run(pip, check=True, timeout=900)


def bento_server(venv: Path, model_dir: Path, timeout: float = 120) -> ServerProcess:
    port = free_port()
    cmd = [str(venv / "bin" / "bentoml"), "serve", "bench.peer_bentoml:SpotFeatures", "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    env = dict(os.environ, SPOT_MODEL_DIR=str(model_dir))
    return ServerProcess(cmd, port, env, "/readyz", timeout, stop_timeout=20)


def same_answer(ours_url: str, bento_url: str, jpeg: bytes) -> float:
    """Max abs difference of the conv5 features both servers return for one image (they do the same work)."""
    a = httpx.post(f"{ours_url}{OURS_ROUTE}", files=[("files", ("a.jpg", jpeg, "image/jpeg"))], timeout=30).json()
    b = httpx.post(f"{bento_url}/features", files=[("images", ("a.jpg", jpeg, "image/jpeg"))], timeout=30).json()
    return float(np.abs(np.array(a["results"][0]["features"]["conv5"]["values"]) - np.array(b[0]["conv5"])).max())


def sweep(url: str, bodies: Path, clients: list[int], seconds: int) -> dict:
    out = {}
    for c in clients:
        wrk(url, bodies, c, 2)  # warm-up
        out[str(c)] = wrk(url, bodies, c, seconds)
    return out


def markdown(report: dict) -> str:
    hw = report["hardware"]
    lines = [
        f"Command: `{report['command']}` at commit `{report['commit']}`; {hw['cpu']}, {hw['cores']} cores. Model"
        f" `{report['model_dir']}`, one {report['image_px']} px JPEG per request, conv5 average-pooled features"
        f" as JSON; both answers agree within {report['max_abs_diff']:.1e}. {report['seconds']} s per cell after a"
        " 2 s warm-up; req/s (p99 ms).",
        "",
        "| clients | ours (batching on) | BentoML (adaptive batching) | ours / BentoML |",
        "|---|---|---|---|",
    ]
    for c, ours in report["ours"].items():
        bento = report["bentoml"][c]
        lines.append(
            f"| {c} | {ours['req_per_s']:.0f} ({ours['p99_ms']:.0f}) | {bento['req_per_s']:.0f} ({bento['p99_ms']:.0f})"
            f" | **{ours['req_per_s'] / bento['req_per_s']:.2f}** |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=REPO / "models" / "spot-tiny64")
    p.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "photos")
    p.add_argument("--bentoml-venv", type=Path, default=REPO / ".venv-bentoml")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--image-px", type=int, default=64)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    jpegs = jpeg_crops(args.photos, size=args.image_px)
    with tempfile.TemporaryDirectory() as tmp:
        ours_bodies = write_bodies(jpegs, Path(tmp) / "ours")
        bento_bodies = write_bodies(jpegs, Path(tmp) / "bento", field="images")
        ours = Server(args.model_dir, ready="/readyz", access_log="false")
        bento = bento_server(args.bentoml_venv, args.model_dir)
        try:
            diff = same_answer(ours.url, bento.url, jpegs[0])
        finally:
            bento.stop()
        try:
            ours_rows = sweep(f"{ours.url}{OURS_ROUTE}", ours_bodies, args.clients, args.seconds)
        finally:
            ours.stop()
        bento = bento_server(args.bentoml_venv, args.model_dir)
        try:
            bento_rows = sweep(f"{bento.url}/features", bento_bodies, args.clients, args.seconds)
        finally:
            bento.stop()
    report = {
        "command": "python -m bench.peer " + " ".join(sys.argv[1:]),
        "commit": commit(),
        "hardware": hardware(),
        "model_dir": str(args.model_dir),
        "image_px": args.image_px,
        "seconds": args.seconds,
        "max_abs_diff": diff,
        "ours": ours_rows,
        "bentoml": bento_rows,
    }
    print(markdown(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(report))


if __name__ == "__main__":
    main()
