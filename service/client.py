"""Command-line client: `python -m service.client spot|features PATH... [--url ...]`.

PATHs are image files or folders (searched recursively for image files). Images go to the server in
requests of at most `--per-request` (the server's SPOT_MAX_FILES, 16 by default), several requests at a
time so that the server batches them. `spot` prints each image's artifact score and writes
`<image file name>.overlay.png` (red = likely altered); `features` prints each layer's shape and writes
`<image file name>.<layer>.npy`, or with `--stack FILE.npz` one array per layer for all images plus their
`names`. Outputs go beside each image, or under --out (a folder's images under the folder's name). An image
the server cannot take is reported with its error and the others go on (exit status 1).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
OWN_OUTPUTS = ".overlay.png"  # what `spot` writes: never read back as an input
PER_IMAGE_ERRORS = (400, 413)  # what one image can cause: that image fails, the others go on
BUSY_RETRIES = 5  # 503 (the server's queue or its connections are full): wait, then again


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
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.endswith(OWN_OUTPUTS)
            ]
        else:
            found.append((path, Path(path.name)))
    return found


def retry_after(r: httpx.Response) -> float:
    """Seconds the server asks to wait (its queue is full); 1 without a number (uvicorn's own 503 when all its
    connections are taken says nothing)."""
    try:
        return min(30.0, max(0.0, float(r.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


def post(client: httpx.Client, command: str, params: dict, images: list[Path]) -> list[dict]:
    files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in images]
    for attempt in range(BUSY_RETRIES + 1):
        r = client.post(f"/{command}", params=params, files=files)
        # busy: the queue is full (Retry-After) or uvicorn's own plain-text 503; a JSON 503 without it (no model
        # loaded) does not pass by waiting
        busy = "retry-after" in r.headers or not r.headers.get("content-type", "").startswith("application/json")
        if r.status_code != 503 or not busy or attempt == BUSY_RETRIES:
            break
        time.sleep(retry_after(r))
    if r.status_code != 200:
        json_body = r.headers.get("content-type", "").startswith("application/json")
        detail = str(r.json().get("detail")) if json_body else r.text
        # the ID the server's log names this request by: what to quote when reporting the failure
        raise ServerError(r.status_code, f"{detail} (request {r.headers.get('x-request-id', '-')})")
    return r.json()["results"]


def results_or_errors(client: httpx.Client, command: str, params: dict, images: list[Path]) -> list[dict]:
    """One request for the chunk. When the server refuses it for one of its images (400 unreadable, 413 too
    large) or for their number (413), each image alone: a bad file costs only itself. A chunk the server
    could not answer (busy after retries, 504, a timeout) fails its images; the others go on."""
    try:
        return post(client, command, params, images)
    except ServerError as exc:
        if exc.status in PER_IMAGE_ERRORS and len(images) > 1:
            return [item for image in images for item in results_or_errors(client, command, params, [image])]
        if exc.status in (*PER_IMAGE_ERRORS, 503, 504):
            return [{"error": str(exc)}] * len(images)
        raise  # 401, 415, 422...: every request would fail the same way
    except httpx.TimeoutException as exc:
        return [{"error": f"no answer within the timeout: {exc!r}"}] * len(images)


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
    targets = [(args.out / relative) if args.out else path for path, relative in images]
    if len(set(targets)) < len(targets):
        twice = sorted({str(t) for t in targets if targets.count(t) > 1})
        print(f"error: several inputs would write the same outputs ({', '.join(twice)}); pass folders", file=sys.stderr)
        return 2
    if args.command == "spot":
        params = {"heatmap": "overlay"}
    else:
        params = {"pool": args.pool, "encoding": "base64", "dtype": "float32"}
        if args.layers:
            params["layers"] = args.layers
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    size = max(1, args.per_request)
    chunks = [list(range(i, min(i + size, len(images)))) for i in range(0, len(images), size)]
    summary, stacked, names = [], {}, []

    def ask(chunk: list[int]) -> list[dict]:
        return results_or_errors(client, args.command, params, [images[i][0] for i in chunk])

    try:
        with (
            httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout) as client,
            ThreadPoolExecutor(max(1, args.concurrency)) as pool,
        ):
            for chunk, answers in zip(chunks, pool.map(ask, chunks)):  # in order, each written as it comes
                for i, item in zip(chunk, answers):
                    summary.append(write(args, images[i][0], targets[i], item, stacked, names))
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.stack:
        args.stack.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.stack, names=np.asarray(names), **{layer: np.stack(v) for layer, v in stacked.items()})
    print(json.dumps(summary, indent=2))
    failed = sum("error" in s for s in summary)
    if failed:
        print(f"error: {failed} of {len(summary)} images failed (see their 'error')", file=sys.stderr)
    return 1 if failed else 0


def write(args, path: Path, target: Path, item: dict, stacked: dict, names: list) -> dict:
    """One image's outputs to disk (or to the stack), and its line of the summary."""
    if "error" in item:
        return {"image": str(path), "error": item["error"]}
    if args.command == "spot":
        out = target.with_name(f"{target.name}{OWN_OUTPUTS}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(item["heatmap"]["png_base64"]))
        return {"image": str(path), "artifact_score": round(item["artifact_score"], 4), "altered": item["altered"],
                "tiles": item["tiling"]["tiles"], "scale": item["tiling"].get("scale", 1.0), "overlay": str(out)}  # fmt: skip
    entry = {"image": str(path)}
    for layer, f in item["features"].items():
        values = np.frombuffer(base64.b64decode(f["values"]), "<f4").reshape(f["shape"])
        entry[layer] = {"shape": f["shape"]}
        if args.stack:
            stacked.setdefault(layer, []).append(values)
        else:
            out = target.with_name(f"{target.name}.{layer}.npy")
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, values)
            entry[layer]["file"] = str(out)
    if args.stack:
        names.append(str(path))
    return entry


if __name__ == "__main__":
    sys.exit(main())
