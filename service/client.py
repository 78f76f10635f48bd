"""Client for a running service, from Python or the command line.

From Python, `SpotClient` takes images as files, bytes, PIL images or HxW(x3) uint8 arrays and gives numpy
back, as tritonclient or timm would:

    from service.client import SpotClient
    with SpotClient("http://127.0.0.1:8000") as client:
        feats = client.features(["a.jpg", "b.png"], layers=["conv3"])   # {"conv3": array (2, C)}
        [result] = client.spot(["photo.jpg"], heatmap="values")          # score, mask and heatmap arrays

From the command line: `python -m service.client spot|features|evaluate PATH... [--url ...]`.
PATHs are image files or folders (searched recursively for image files). Images go to the server in
requests of at most `--per-request` (the server's SPOT_MAX_FILES, 16 by default), several requests at a
time so that the server batches them. `spot` prints each image's artifact score and `features` each layer's
shape. Files are written only when asked: under `--out FOLDER` (a folder's images under the folder's name)
or, with `--beside`, next to each image: `spot` writes `<image file name>.overlay.png` (red = likely
altered; `--heatmap png` a greyscale `.heatmap.png`, `none` nothing), `features` `<image file name>.<layer>.npy`;
`features --stack FILE.npz` writes one array per layer for all images plus their `names`. An image
the server cannot take is reported with its error and the others go on (exit status 1). `evaluate` takes
dataset folders in CNNDetection's layout (0_real/, 1_fake/) and prints AP, ROC-AUC and the accuracies
(service/evaluate.py).
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
OWN_OUTPUTS = {"overlay": ".overlay.png", "png": ".heatmap.png"}  # what `spot` writes: never read back as input
PER_IMAGE_ERRORS = (400, 413, 500)  # what one image can cause (a server bug too): that image fails, the others go on
PASSING_ERRORS = (502, 503, 504)  # what a chunk meets by bad luck (busy after retries, a proxy, a timeout)
PNG_MODES = {"1", "L", "LA", "I;16", "P", "RGB", "RGBA"}  # the PIL modes PNG holds as they are
BUSY_RETRIES = 5  # 503 (the server's queue or its connections are full): wait, then again
DEFAULT_URL = "http://127.0.0.1:8000"


class ServerError(RuntimeError):
    def __init__(self, status: int, message: str, busy: bool = False):
        super().__init__(f"{status} {message}")
        self.status, self.busy = status, busy


def upload(image, index: int) -> tuple[str, bytes]:
    """(file name, encoded bytes) of one image: a path is read, bytes go as they are, a PIL image or an
    HxW / HxWx3 / HxWx4 uint8 array is sent as PNG (lossless: the server sees exactly these pixels). An
    unreadable file raises OSError, an array or object of another kind ValueError or TypeError."""
    if isinstance(image, (str, os.PathLike)):
        return upload_name(image, index), Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray, memoryview)):
        return upload_name(image, index), bytes(image)
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ValueError(
                f"image {index}: an array must be HxW, HxWx3 or HxWx4 uint8, not {image.dtype} {image.shape}"
            )
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        if image.mode in ("I", "F"):  # 32-bit: TIFF holds it, and the server scales it as it would a file's
            image.save(buffer, format="TIFF")
            return f"image{index}.tiff", buffer.getvalue()
        if image.mode not in PNG_MODES:  # CMYK, YCbCr...: converted as the server converts them
            image = image.convert("RGBA" if "A" in image.mode.upper() else "RGB")
        image.save(buffer, format="PNG")
        return f"image{index}.png", buffer.getvalue()
    raise TypeError(f"image {index}: a path, bytes, a PIL image or a uint8 array, not {type(image).__name__}")


def retry_after(r: httpx.Response) -> float:
    """Seconds the server asks to wait (its queue is full); 1 without a number (uvicorn's own 503 when all its
    connections are taken says nothing)."""
    try:
        return min(30.0, max(0.0, float(r.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


def failure(r: httpx.Response, busy: bool = False) -> ServerError:
    json_body = r.headers.get("content-type", "").startswith("application/json")
    detail = str(r.json().get("detail")) if json_body else r.text
    # the ID the server's log names this request by: what to quote when reporting the failure
    return ServerError(r.status_code, f"{detail} (request {r.headers.get('x-request-id', '-')})", busy)


class SpotClient:
    """A running service's /features and /spot from Python. Images go in requests of at most `per_request`
    (the server's SPOT_MAX_FILES), `concurrency` requests at a time so that the server batches them; a busy
    server's 503 is waited out (its Retry-After). Thread-safe: one client may serve several threads."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str = "",
        timeout: float = 120.0,
        per_request: int = 16,
        concurrency: int = 4,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        self.per_request, self.concurrency = max(1, per_request), max(1, concurrency)

    def __enter__(self) -> SpotClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def model(self) -> dict:
        """The served model's model.json (name, version, layers, preprocessing, metrics)."""
        r = self.http.get("/models")
        if r.status_code != 200:
            raise failure(r)
        return r.json()

    def features(
        self, images: Iterable, layers: Iterable[str] | None = None, pool: str = "avg", normalize: str = "none"
    ) -> dict[str, np.ndarray]:
        """{layer: float32 array (images, *shape)}, in the order of `images`; `layers` default to the model's
        default_layer. Raises ServerError when any image fails (every failure named)."""
        params = {"pool": pool, "normalize": normalize, "encoding": "base64", "dtype": "float32"}
        if layers is not None:
            params["layers"] = ",".join(layers)
        stacked: dict[str, list[np.ndarray]] = {}
        for item in self._all("features", params, images, lambda item: item):
            for layer, f in item["features"].items():
                stacked.setdefault(layer, []).append(feature_values(f))
        return {layer: np.stack(values) for layer, values in stacked.items()}

    def spot(self, images: Iterable, heatmap: str = "none") -> list[dict]:
        """Per image, the server's /spot answer (docs/service.md), its `values` as float32 arrays: `mask.values`
        (rows, cols) of drop probabilities, `heatmap.values` at the image's size (heatmap="values"); a
        heatmap asked as "png" or "overlay" comes as PNG bytes in `heatmap.png`. Raises ServerError when any
        image fails (every failure named)."""

        def with_arrays(item: dict) -> dict:  # as each answer comes: JSON lists take ~14x the array's memory
            item["mask"]["values"] = np.asarray(item["mask"]["values"], np.float32)
            if "values" in item.get("heatmap", {}):
                item["heatmap"]["values"] = np.asarray(item["heatmap"]["values"], np.float32)
            elif "png_base64" in item.get("heatmap", {}):
                item["heatmap"]["png"] = base64.b64decode(item["heatmap"].pop("png_base64"))
            return item

        return self._all("spot", {"heatmap": heatmap}, images, with_arrays)

    def results(self, command: str, params: dict, images: list) -> Iterator[tuple[int, dict]]:
        """(index, answer or {"error": ..., "status": ...}) per image, in order, as the requests come back.
        An image is read or encoded only when its request goes, and at most 2 x `concurrency` requests are
        sent ahead of the caller, so a folder of any size takes bounded memory; a caller that stops early
        leaves no request behind that had not been sent."""
        size = self.per_request
        chunks = [list(range(i, min(i + size, len(images)))) for i in range(0, len(images), size)]

        def ask(chunk: list[int]) -> list[dict]:
            return self.results_or_errors(command, params, [(i, images[i]) for i in chunk])

        pool, ahead = ThreadPoolExecutor(self.concurrency), collections.deque()
        try:
            for chunk in chunks:
                ahead.append((chunk, pool.submit(ask, chunk)))
                if len(ahead) >= 2 * self.concurrency:
                    chunk, answers = ahead.popleft()
                    yield from zip(chunk, answers.result(), strict=True)
            while ahead:
                chunk, answers = ahead.popleft()
                yield from zip(chunk, answers.result(), strict=True)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def results_or_errors(self, command: str, params: dict, images: list[tuple[int, object]]) -> list[dict]:
        """The chunk's answers, a file that cannot be read failing alone (OSError); the others in one request."""
        uploads, unread = [], {}
        for i, image in images:
            try:
                uploads.append(upload(image, i))
            except OSError as exc:
                unread[i] = {"error": f"cannot read it: {exc}", "status": 400}
        answers = iter(self.answers_or_errors(command, params, uploads) if uploads else [])
        return [unread[i] if i in unread else next(answers) for i, _ in images]

    def answers_or_errors(self, command: str, params: dict, uploads: list[tuple[str, bytes]]) -> list[dict]:
        """One request. When the server refuses it for one of its images (400 unreadable, 413 too large, 500
        a server bug) or for their number (413), each half again: a bad file costs only itself, and a chunk
        too big for the server's SPOT_MAX_FILES keeps batching. A chunk the server could not answer (busy
        after retries, 502, 504, a timeout, a dropped connection) fails its images; the others go on."""
        try:
            return self.post(command, params, uploads)
        except ServerError as exc:
            if exc.status in PER_IMAGE_ERRORS and len(uploads) > 1:
                half = len(uploads) // 2
                return [
                    *self.answers_or_errors(command, params, uploads[:half]),
                    *self.answers_or_errors(command, params, uploads[half:]),
                ]
            if exc.status in PER_IMAGE_ERRORS or (exc.status in PASSING_ERRORS and (exc.busy or exc.status != 503)):
                return [{"error": str(exc), "status": exc.status} for _ in uploads]
            raise  # 401, 415, 422, a model not loaded...: every request would fail the same way
        except httpx.ConnectError:
            raise  # nothing listens there
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            return [{"error": f"no answer: {exc!r}", "status": 504} for _ in uploads]

    def post(self, command: str, params: dict, uploads: list[tuple[str, bytes]]) -> list[dict]:
        files = [("files", (name, data, "application/octet-stream")) for name, data in uploads]
        for attempt in range(BUSY_RETRIES + 1):
            r = self.http.post(f"/{command}", params=params, files=files)
            # busy: the queue is full (Retry-After) or uvicorn's own plain-text 503; a JSON 503 without it (no
            # model loaded) does not pass by waiting
            busy = "retry-after" in r.headers or not r.headers.get("content-type", "").startswith("application/json")
            if r.status_code != 503 or not busy or attempt == BUSY_RETRIES:
                break
            time.sleep(retry_after(r))
        if r.status_code != 200:
            raise failure(r, busy=r.status_code == 503 and busy)
        body = r.json()
        if "threshold" in body:  # /spot's: what each image's `altered` was decided by
            for item in body["results"]:
                item["threshold"] = body["threshold"]
        return body["results"]

    def _all(self, command: str, params: dict, images: Iterable, convert) -> list[dict]:
        images = list(images)
        answers: list = [None] * len(images)
        for i, answer in self.results(command, params, images):
            answers[i] = answer if "error" in answer else convert(answer)
        failed = [(i, a) for i, a in enumerate(answers) if "error" in a]
        if failed:
            named = "; ".join(f"image {i} ({upload_name(images[i], i)}): {a['error']}" for i, a in failed)
            raise ServerError(failed[0][1]["status"], f"{len(failed)} of {len(images)} images failed: {named}")
        return answers


def upload_name(image, index: int) -> str:
    """How an image is named in requests and errors: a file by its name, anything else by its place."""
    return Path(image).name if isinstance(image, (str, os.PathLike)) else f"image{index}"


def feature_values(f: dict) -> np.ndarray:
    """One layer of a /features answer asked with encoding=base64, dtype=float32."""
    return np.frombuffer(base64.b64decode(f["values"]), "<f4").reshape(f["shape"])


def image_files(folder: Path) -> list[Path]:
    """A folder's image files at any depth, sorted; symlinked folders are followed (datasets are often farms
    of links), each real folder once, so a link back up does not loop."""
    found, seen = [], set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        if os.path.realpath(top) in seen:
            dirs.clear()
            continue
        seen.add(os.path.realpath(top))
        found += [
            Path(top) / name
            for name in files
            if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.endswith(tuple(OWN_OUTPUTS.values()))
        ]
    return sorted(found)


def expand(paths: list[Path]) -> list[tuple[Path, Path]]:
    """(image, where its outputs go relative to --out): a file as its name, a folder's images under the
    folder's name, as they lie in it, so that two folders' x.jpg do not overwrite each other's outputs."""
    found = []
    for path in paths:
        if path.is_dir():
            top = Path(path.resolve().name)
            found += [(p, top / p.relative_to(path)) for p in image_files(path)]
        else:
            found.append((path, Path(path.name)))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["spot", "features", "evaluate"])
    parser.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="image files or folders; evaluate: dataset folders"
    )
    parser.add_argument("--url", default=os.environ.get("SPOT_URL", DEFAULT_URL))
    parser.add_argument("--api-key", default=os.environ.get("SPOT_API_KEY", ""))
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="write the outputs under this folder (default: none written)")
    where.add_argument("--beside", action="store_true", help="write the outputs beside each image")
    parser.add_argument(
        "--layers", help="features: comma-separated layers (default: the model's default_layer, see GET /models)"
    )
    parser.add_argument("--pool", default="avg", help="features: none | avg | max | probe")
    parser.add_argument(
        "--heatmap",
        choices=["overlay", "png", "none"],
        default="overlay",
        help="spot: write <image>.overlay.png (red over the image), <image>.heatmap.png (greyscale), or only "
        "the scores",
    )
    parser.add_argument("--stack", type=Path, help="features: one .npz for all images instead of .npy files")
    parser.add_argument("--per-request", type=int, default=16, help="images per request (the server's SPOT_MAX_FILES)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args(argv)

    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.command == "evaluate":
        from .evaluate import run

        return run(args)
    images = expand(args.paths)
    if not images:
        print("error: no image files found", file=sys.stderr)
        return 2
    targets = output_targets(args, images)
    written = [t for t in targets if t]
    if len(set(written)) < len(written):
        twice = sorted({str(t) for t in written if written.count(t) > 1})
        print(f"error: several inputs would write the same outputs ({', '.join(twice)}); pass folders", file=sys.stderr)
        return 2
    if args.command == "spot":  # a heatmap only to write it
        params = {"heatmap": args.heatmap if args.out or args.beside else "none"}
    else:
        params = {"pool": args.pool, "encoding": "base64", "dtype": "float32"}
        if args.layers:
            params["layers"] = args.layers
    summary, stacked, names = [], {}, []
    try:
        with SpotClient(args.url, args.api_key, args.timeout, args.per_request, args.concurrency) as client:
            paths = [path for path, _ in images]
            for i, item in client.results(args.command, params, paths):  # in order, each written as it comes
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


def output_targets(args, images: list[tuple[Path, Path]]) -> list[Path | None]:
    """Where each image's outputs go: under --out, beside the image with --beside, else nowhere (None)."""
    if args.out:
        return [args.out / relative for _, relative in images]
    return [path if args.beside else None for path, _ in images]


def write(args, path: Path, target: Path | None, item: dict, stacked: dict, names: list) -> dict:
    """One image's line of the summary, and its outputs to `target` (None: not written) or to the stack."""
    if "error" in item:
        return {"image": str(path), "error": item["error"]}
    if args.command == "spot":
        entry = {"image": str(path), "artifact_score": round(item["artifact_score"], 4), "altered": item["altered"],
                 "tiles": item["tiling"]["tiles"], "scale": item["tiling"].get("scale", 1.0)}  # fmt: skip
        if "peak_score" in item:  # a server before 2026-12-07 has none: leave it out rather than print NaN
            entry["peak_score"] = round(item["peak_score"], 4)
        if target and args.heatmap != "none":
            out = target.with_name(f"{target.name}{OWN_OUTPUTS[args.heatmap]}")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(base64.b64decode(item["heatmap"]["png_base64"]))
            entry["overlay" if args.heatmap == "overlay" else "heatmap"] = str(out)
        return entry
    entry = {"image": str(path)}
    for layer, f in item["features"].items():
        values = feature_values(f)
        entry[layer] = {"shape": f["shape"]}
        if args.stack:
            stacked.setdefault(layer, []).append(values)
        elif target:
            out = target.with_name(f"{target.name}.{layer}.npy")
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, values)
            entry[layer]["file"] = str(out)
    if args.stack:
        names.append(str(path))
    return entry


if __name__ == "__main__":
    sys.exit(main())
