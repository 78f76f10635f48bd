"""/spot end to end: held-out reconstructions and repaired images of a run's generator, sent as 64 px PNGs
to a real service on 127.0.0.1, scored by the exported model as a user's upload would be.

    python scripts/spot_via_service.py --checkpoint runs/tiny64-detect/checkpoint.pt \
        --model models/spot-tiny64 --count 512 --out docs/results/spot-via-service.json
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.server import Server  # noqa: E402
from training import checkpoint  # noqa: E402
from training.spot_eval import heldout_as_stored  # noqa: E402
from training.steps import make_pair  # noqa: E402


def png(image: torch.Tensor) -> bytes:
    """[-1, 1] CHW -> PNG bytes (lossless, so the service sees exactly these pixels)."""
    pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--checkpoint", type=Path, required=True, help="the run whose autoencoder + repair net make the pairs"
    )
    ap.add_argument("--model", type=Path, default=Path("models/spot-tiny64"))
    ap.add_argument("--count", type=int, default=512, help="held-out images (each sent twice: real and repaired)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    nets, cfg, _ = checkpoint.load_networks(args.checkpoint)
    for m in nets.values():
        m.eval()
    dataset = heldout_as_stored(cfg)
    pick = np.random.default_rng(0).choice(len(dataset), args.count, replace=False)
    images = torch.stack([dataset[int(i)][0] for i in pick])
    with torch.no_grad():
        real, fake, _ = make_pair(nets, images, cfg, torch.Generator().manual_seed(0))

    server = Server(model_dir=args.model)
    scores = {}
    try:
        for label, batch in (("real", real), ("repaired", fake)):
            got = []
            for i in range(0, len(batch), 16):
                files = [("files", (f"{i + j}.png", png(t), "image/png")) for j, t in enumerate(batch[i : i + 16])]
                reply = httpx.post(f"{server.url}/spot", files=files, params={"heatmap": "none"}, timeout=120)
                reply.raise_for_status()
                got += [item["artifact_score"] for item in reply.json()["results"]]
            scores[label] = np.array(got)
        threshold = reply.json()["threshold"]
    finally:
        server.stop()
    y = np.r_[np.zeros(args.count), np.ones(args.count)]
    s = np.r_[scores["real"], scores["repaired"]]
    report = {
        "checkpoint": str(args.checkpoint),
        "model": str(args.model),
        "images": args.count,
        "drop_rate": cfg.train.drop_rate,
        "threshold": threshold,
        "roc_auc": float(roc_auc_score(y, s)),
        "ap": float(average_precision_score(y, s)),
        "real_acc": float((scores["real"] <= threshold).mean()),
        "fake_acc": float((scores["repaired"] > threshold).mean()),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
