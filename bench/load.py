"""Load from `wrk` (Debian's package: it uses a few % of a core, so it barely competes with the server on
a 2-core box, unlike a Python client) with one JPEG per request; only 127.0.0.1, bounded in time."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
BOUNDARY = "spotbenchboundary"


def jpeg_crops(photos: Path, count: int = 200, size: int = 64, seed: int = 0) -> list[bytes]:
    """`count` JPEGs (quality 90) of random square crops of the photos, resized to size x size."""
    files = sorted(p for p in photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        with Image.open(files[k % len(files)]) as im:
            im = im.convert("RGB")
            side = int(rng.integers(size, max(size + 1, min(im.size) // 2)))
            x, y = (int(rng.integers(0, d - side + 1)) for d in im.size)
            crop = im.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def write_bodies(images: list[bytes], folder: Path, per_request: int = 1, field: str = "files") -> Path:
    """Multipart bodies (field `files`) for wrk, and the list.txt multipart.lua reads. An entry may be
    anything, an invalid image included."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(len(images)):
        parts = [images[(k + j) % len(images)] for j in range(per_request)]
        body = b"".join(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{k}-{j}.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n".encode()
            + data
            + b"\r\n"
            for j, data in enumerate(parts)
        )
        path = folder / f"{k}.bin"
        path.write_bytes(body + f"--{BOUNDARY}--\r\n".encode())
        names.append(str(path))
    (folder / "list.txt").write_text("\n".join(names) + "\n")
    return folder


def write_oip_bodies(requests: list[tuple[dict, bytes]], folder: Path) -> Path:
    """Open Inference Protocol bodies for wrk: each a JSON header and, when `binary` is not empty, the binary
    tensor data after it (Triton's extension; list.txt carries the header's length for its header line)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, (header, binary) in enumerate(requests):
        head = json.dumps(header).encode()
        path = folder / f"{k}.bin"
        path.write_bytes(head + binary)
        lines.append(f"{path}\t{len(head)}" if binary else str(path))
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder


def wrk(url: str, bodies: Path, clients: int, seconds: float, paths: list[str] = (), content_type: str = "") -> dict:
    """One bounded wrk run (rotating through `paths` on `url`'s host when given); requests/s and latency
    percentiles. `content_type`: of every body (default: multipart, as write_bodies makes them)."""
    exe = shutil.which("wrk")
    if not exe:
        raise RuntimeError("wrk is missing: apt-get install wrk")
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("benchmarks only talk to 127.0.0.1")
    cmd = [exe, "-t1", f"-c{clients}", f"-d{int(seconds)}s", "--timeout", "10s", "-s", str(HERE / "multipart.lua"), url]
    env = {"BODIES": str(bodies), "BOUNDARY": BOUNDARY, "PATH": "/usr/bin:/bin", "PATHS": ";".join(paths)}
    if content_type:
        env["CONTENT_TYPE"] = content_type
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRK_JSON "))
    result = json.loads(line.removeprefix("WRK_JSON "))
    result["req_per_s"] = result["requests"] / result["duration_s"]
    result["clients"] = clients
    return result
