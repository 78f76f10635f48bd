"""Command-line client: `python -m service.client spot|features PATH... [--url ...]`.

PATHs are image files or folders (searched recursively for image files). Images go to the server in
requests of at most `--per-request` (the server's SPOT_MAX_FILES, 16 by default), several requests at a
time so that the server batches them. `spot` prints each image's artifact score and writes
`<image>.overlay.png` (red = likely altered); `features` prints each layer's shape and writes
`<image>.<layer>.npy`, or with `--stack FILE.npz` one array per layer for all images plus their `names`.
An image the server cannot read is reported with its error and the others go on (exit status 1).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

PER_IMAGE_ERRORS = (400, 413)  # what one image can cause; anything else stops the run
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


class ServerError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status} {message}")
        self.status = status


def expand(paths: list[Path]) -> list[tuple[Path, Path]]:
    """(image, where its outputs go relative to --out): a file as its name, a folder's images under the
    folder's name, as they lie in it, so that two folders' x.jpg do not overwrite each other's outputs."""
    found = []
    for path in paths:
        if path.is_dir():
            top = Path(path.resolve().name)
            found += [
                (p, top / p.relative_to(path))
                for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            ]
        else:
            found.append((path, Path(path.name)))
    return found


def post(client: httpx.Client, command: str, params: dict, images: list[Path]) -> list[dict]:
    files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in images]
    r = client.post(f"/{command}", params=params, files=files)
    if r.status_code != 200:
        json_body = r.headers.get("content-type", "").startswith("application/json")
        raise ServerError(r.status_code, str(r.json().get("detail")) if json_body else r.text)
    return r.json()["results"]


def results_or_errors(client: httpx.Client, command: str, params: dict, images: list[Path]) -> list[dict]:
    """One request for the chunk. When the server refuses it for one of its images (400 unreadable, 413 too
    large) or for their number (413), each image alone: a bad file costs only itself."""
    try:
        return post(client, command, params, images)
    except ServerError as exc:
        if exc.status not in PER_IMAGE_ERRORS:
            raise
        if len(images) == 1:
            return [{"error": str(exc)}]
    return [item for image in images for item in results_or_errors(client, command, params, [image])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["spot", "features"])
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    parser.add_argument("--url", default=os.environ.get("SPOT_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("SPOT_API_KEY", ""))
    parser.add_argument("--out", type=Path, help="folder for the outputs (default: beside each image)")
    parser.add_argument(
        "--layers", help="features: comma-separated layers (default: the model's default_layer, see GET /models)"
    )
    parser.add_argument("--pool", default="avg", help="features: none | avg | max | probe")
    parser.add_argument("--stack", type=Path, help="features: one .npz for all images instead of .npy files")
    parser.add_argument("--per-request", type=int, default=16, help="images per request (the server's SPOT_MAX_FILES)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args(argv)

    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    images = expand(args.paths)
    if not images:
        print("error: no image files found", file=sys.stderr)
        return 2
    if args.command == "spot":
        params = {"heatmap": "overlay"}
    else:
        params = {"pool": args.pool, "encoding": "base64", "dtype": "float32"}
        if args.layers:
            params["layers"] = args.layers
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    size = max(1, args.per_request)
    chunks = [[p for p, _ in images[i : i + size]] for i in range(0, len(images), size)]
    try:
        with (
            httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout) as client,
            ThreadPoolExecutor(max(1, args.concurrency)) as pool,
        ):
            answers = [
                r for rs in pool.map(lambda c: results_or_errors(client, args.command, params, c), chunks) for r in rs
            ]
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    summary, stacked = [], {}
    for (path, relative), item in zip(images, answers):
        target = (args.out / relative) if args.out else path
        if "error" in item:
            summary.append({"image": str(path), "error": item["error"]})
        elif args.command == "spot":
            out = target.with_name(f"{target.stem}.overlay.png")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(base64.b64decode(item["heatmap"]["png_base64"]))
            score = round(item["artifact_score"], 4)
            summary.append(
                {"image": str(path), "artifact_score": score, "tiles": item["tiling"]["tiles"], "overlay": str(out)}
            )
        else:
            entry = {"image": str(path)}
            for layer, f in item["features"].items():
                values = np.frombuffer(base64.b64decode(f["values"]), "<f4").reshape(f["shape"])
                entry[layer] = {"shape": f["shape"]}
                if args.stack:
                    stacked.setdefault(layer, []).append(values)
                else:
                    out = target.with_name(f"{target.stem}.{layer}.npy")
                    out.parent.mkdir(parents=True, exist_ok=True)
                    np.save(out, values)
                    entry[layer]["file"] = str(out)
            summary.append(entry)
    if args.stack:
        names = [str(p) for (p, _), item in zip(images, answers) if "error" not in item]
        args.stack.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.stack, names=np.asarray(names), **{layer: np.stack(v) for layer, v in stacked.items()})
    print(json.dumps(summary, indent=2))
    failed = sum("error" in s for s in summary)
    if failed:
        print(f"error: {failed} of {len(summary)} images failed (see their 'error')", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
