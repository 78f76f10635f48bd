"""Command-line client: `python -m service.client spot|features IMAGE... [--url ...]`.

`spot` prints each image's artifact score and writes `<image>.overlay.png` (red = likely altered);
`features` prints each layer's shape and writes `<image>.<layer>.npy`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path

import httpx
import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.client", description=__doc__)
    parser.add_argument("command", choices=["spot", "features"])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--url", default=os.environ.get("SPOT_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("SPOT_API_KEY", ""))
    parser.add_argument("--out", type=Path, help="folder for the outputs (default: beside each image)")
    parser.add_argument(
        "--layers", help="features: comma-separated layers (default: the model's default_layer, see GET /models)"
    )
    parser.add_argument("--pool", default="avg", help="features: none | avg | max | probe")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args(argv)

    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in args.images]
    if args.command == "spot":
        params = {"heatmap": "overlay"}
    else:
        params = {"pool": args.pool, "encoding": "base64", "dtype": "float32"}
        if args.layers:
            params["layers"] = args.layers
    try:
        r = httpx.post(f"{args.url}/{args.command}", params=params, files=files, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if r.status_code != 200:
        print(
            f"error: {r.status_code} {r.json().get('detail') if r.headers.get('content-type', '').startswith('application/json') else r.text}",
            file=sys.stderr,
        )
        return 1
    summary = []
    for path, item in zip(args.images, r.json()["results"]):
        folder = args.out or path.parent
        folder.mkdir(parents=True, exist_ok=True)
        if args.command == "spot":
            out = folder / f"{path.stem}.overlay.png"
            out.write_bytes(base64.b64decode(item["heatmap"]["png_base64"]))
            summary.append(
                {
                    "image": str(path),
                    "artifact_score": round(item["artifact_score"], 4),
                    "tiles": item["tiling"]["tiles"],
                    "overlay": str(out),
                }
            )
        else:
            entry = {"image": str(path)}
            for layer, f in item["features"].items():
                values = np.frombuffer(base64.b64decode(f["values"]), "<f4").reshape(f["shape"])
                out = folder / f"{path.stem}.{layer}.npy"
                np.save(out, values)
                entry[layer] = {"shape": f["shape"], "file": str(out)}
            summary.append(entry)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
