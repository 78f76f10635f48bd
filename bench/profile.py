"""Where the service's time goes under load: py-spy samples the event-loop thread while it holds the GIL
(the Python work that serialises every request) and sorts each sample into a stage by the innermost
frame it recognises; /proc gives the CPU of the loop and of all other threads (ONNX Runtime's)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from .load import wrk
from .server import Server
from .service import ROUTES, load_level

RATE = 250  # samples per second
# stage <- the first pattern found walking a sample's stack from its innermost frame outwards
STAGES = [
    ("multipart parsing", ("python_multipart/", "service/multipart.py", "starlette/formparsers.py")),
    ("image decode + preprocess", ("service/images.py", "contract/", "PIL/", "service/model.py")),
    ("response: pooling + JSON", ("service/features.py", "service/spot.py", "orjson", "json_bytes")),
    ("metrics", ("prometheus_client/",)),
    ("batcher hand-off (queue, futures, thread)", ("service/batcher.py", "concurrent/futures/", "asyncio/queues.py")),
    ("request parameters + routing (FastAPI)", ("fastapi/", "pydantic")),
    (
        "ASGI middleware + responses (Starlette)",
        ("starlette/", "service/app.py", "service/direct.py", "service/routes/", "service/runtime.py"),
    ),
    ("HTTP protocol (uvicorn/httptools)", ("uvicorn/", "httptools")),
    ("event loop, other", ("",)),
]


def stage_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        for name, patterns in STAGES[:-1]:
            if any(p in frame for p in patterns):
                return name
    return STAGES[-1][0]


def measure(model_dir: Path, bodies: Path, clients: int, seconds: float, route: str = "features") -> dict:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {"skipped": "py-spy is not installed (it is in the dev extra)"}
    server = Server(model_dir, ready="/readyz", access_log="false")
    try:
        wrk(f"{server.url}{ROUTES[route]}", bodies, clients, 2)
        with tempfile.NamedTemporaryFile(suffix=".txt") as raw:
            cmd = [spy, "record", "--pid", str(server.proc.pid), "--duration", str(int(seconds)), "--rate", str(RATE),
                   "--format", "raw", "--gil", "--threads", "--nonblocking", "--output", raw.name]  # fmt: skip
            spying = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            level = load_level(server, ROUTES[route], bodies, clients, seconds, per_request=1)
            _, err = spying.communicate(timeout=seconds + 60)
            if spying.returncode != 0:
                return {"skipped": f"py-spy failed: {err.decode(errors='replace')[-300:]}"}
            lines = Path(raw.name).read_text(errors="replace").splitlines()  # frames may hold raw bytes
    finally:
        server.stop()
    samples: Counter[str] = Counter()
    for line in lines:
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        if re.search(r"MainThread", frames[0]):
            samples[stage_of(frames[1:])] += int(count)
    requests = level["req_per_s"] * seconds
    return {
        "route": ROUTES[route],
        "clients": clients,
        "load": level,
        "gil_ms_per_request": {k: 1000 * n / RATE / requests for k, n in samples.most_common()},
        "gil_share_of_wall_time": sum(samples.values()) / RATE / seconds,
    }
