"""/spot on edits of real photos (issue 21), end to end: every photo of the held-out folders, raw and edited
by each kind of training/edits.py (one random region each, seeded), sent as a lossless PNG to a real service
on 127.0.0.1. Per kind: image ROC-AUC and AP (edited against raw, by artifact_score; ROC-AUC also by the
heatmap's 99th percentile and by /spot's peak_score, the mask's: scores a small edit cannot dilute), pixel
AP of the heatmap against the edited region (and the region's share of pixels: the AP of a guess), and the
raw photos' false alarms at the model's threshold.

    python scripts/edits_via_service.py --model models/spot-tiny64 --out docs/results/edits-via-service.json

Photos are scaled to at most --max-side pixels first (the work per photo stays bounded); the held-out
folders are ../shared/data/photos' skimage, sklearn, matplotlib and debian_mate_nature (opencv-doc and
plasma-workspace-wallpapers are kept for an independent check and never used here).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.server import Server  # noqa: E402
from contract.images import to_rgb  # noqa: E402
from service.client import SpotClient, image_files  # noqa: E402
from service.spot import peak  # noqa: E402  (the 99th percentile /spot's peak_score takes of the mask)
from training.edits import KINDS, edit, held_out_kinds, random_mask  # noqa: E402

FOLDERS = ("skimage", "sklearn", "matplotlib", "debian_mate_nature")
PIXEL_STRIDE = 4  # pixel AP on every 4th pixel of every 4th row: a million pixels, not sixteen


def load(path: Path, max_side: int) -> np.ndarray:
    with Image.open(path) as im:
        img = to_rgb(im)
    img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return np.asarray(img)


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def scored(client: SpotClient, images: list[np.ndarray]) -> list[dict]:
    """/spot's answer per image, with the heatmap as a float array in [0, 1] at the image's size and its peak."""
    answers = []
    for i, rgb in enumerate(images):
        (answer,) = client.results_or_errors("spot", {"heatmap": "png"}, [(i, png(rgb))])
        if "error" in answer:
            raise SystemExit(f"the service did not score image {i}: {answer}")
        heat = Image.open(io.BytesIO(base64.b64decode(answer["heatmap"]["png_base64"])))
        heat = np.asarray(heat, np.float32) / 255
        answers.append(
            {
                "score": answer["artifact_score"],
                "heat": heat,
                "peak": peak(heat),  # the same percentile of the heatmap
                "peak_score": answer["peak_score"],
            }
        )
    return answers


def kind_metrics(raw: list[dict], edited: list[dict], masks: list[np.ndarray], threshold: float) -> dict:
    def raw_then_edited(key: str) -> np.ndarray:
        return np.array([a[key] for a in raw + edited])

    y = np.r_[np.zeros(len(raw)), np.ones(len(edited))]
    s, peaks, peak_scores = raw_then_edited("score"), raw_then_edited("peak"), raw_then_edited("peak_score")
    truth = np.concatenate([m[::PIXEL_STRIDE, ::PIXEL_STRIDE].ravel() for m in masks])
    heat = np.concatenate([a["heat"][::PIXEL_STRIDE, ::PIXEL_STRIDE].ravel() for a in edited])
    return {
        "images": len(edited),
        "image_roc_auc": round(float(roc_auc_score(y, s)), 4),
        "image_roc_auc_by_heat_peak": round(float(roc_auc_score(y, peaks)), 4),
        "image_roc_auc_by_peak_score": round(float(roc_auc_score(y, peak_scores)), 4),
        "image_ap": round(float(average_precision_score(y, s)), 4),
        "flagged": round(float(np.mean([a["score"] > threshold for a in edited])), 4),
        "pixel_ap": round(float(average_precision_score(truth, heat)), 4),
        "pixel_ap_of_a_guess": round(float(truth.mean()), 4),
    }


def main() -> None:
    for name in [k for k in os.environ if k.startswith("SPOT_")]:  # the server runs on its defaults
        del os.environ[name]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/spot-tiny64"))
    ap.add_argument("--photos", type=Path, default=Path("../shared/data/photos"))
    ap.add_argument("--max-side", type=int, default=768)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    paths = [p for folder in FOLDERS for p in image_files(args.photos / folder)]
    photos = [load(p, args.max_side) for p in paths]
    meta = json.loads((args.model / "model.json").read_text())
    threshold = meta.get("spot_threshold", 0.5)
    started = time.perf_counter()
    server = Server(args.model.resolve(), ready="/readyz", timeout=120, access_log="false")
    try:
        with SpotClient(server.url, timeout=600) as client:
            raw = scored(client, photos)
            kinds = {}
            for k, kind in enumerate(KINDS):
                masks, edited = [], []
                for i, rgb in enumerate(photos):
                    rng = np.random.default_rng([args.seed, k, i])
                    mask = random_mask(*rgb.shape[:2], rng)
                    edited.append(edit(kind, rgb, mask, rng, donor=photos[(i + 1) % len(photos)]))
                    masks.append(mask)
                kinds[kind] = kind_metrics(raw, scored(client, edited), masks, threshold)
                print(kind, kinds[kind], flush=True)
    finally:
        server.stop()
    means = {key: round(float(np.mean([m[key] for m in kinds.values()])), 4) for key in next(iter(kinds.values()))}
    report = {
        "command": "python scripts/edits_via_service.py " + " ".join(sys.argv[1:]),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "model": str(args.model),
        "version": meta["version"],
        "held_out_kinds": list(held_out_kinds(meta.get("training", {}))),  # kinds its training never saw
        "photos": [str(p.relative_to(args.photos)) for p in paths],
        "max_side": args.max_side,
        "threshold": threshold,
        "raw_false_alarm_rate": round(float(np.mean([a["score"] > threshold for a in raw])), 4),
        "kinds": kinds,
        "mean_over_kinds": means,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps({k: report[k] for k in ("raw_false_alarm_rate", "mean_over_kinds", "seconds")}))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
