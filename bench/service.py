"""The service under wrk load: images/s and p50/p95/p99 over a concurrency sweep, per route, batching on
and off, one or several JPEGs per request (decoding included: the server decodes every upload); the batch
sizes it formed (from its /metrics) and the CPU its threads used (from /proc), in one run."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .load import wrk
from .server import Server

ROUTES = {"features": "/features?layers=conv5&pool=avg", "spot": "/spot?heatmap=none"}
TICK = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """The server and its descendants (the worker processes when SPOT_WORKERS > 1)."""
    pids, i = [pid], 0
    while i < len(pids):
        try:
            tids = os.listdir(f"/proc/{pids[i]}/task")
            pids += [int(c) for t in tids for c in Path(f"/proc/{pids[i]}/task/{t}/children").read_text().split()]
        except FileNotFoundError:  # it just ended
            pass
        i += 1
    return pids


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds so far of the event-loop (main) threads and of all other threads (ONNX Runtime's, the
    batcher's, decode workers) of the server's processes."""
    out = {"event_loop": 0.0, "other_threads": 0.0}
    for proc in process_tree(pid):
        try:
            tids = os.listdir(f"/proc/{proc}/task")
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                stat = Path(f"/proc/{proc}/task/{tid}/stat").read_text()
            except FileNotFoundError:  # a thread that just ended
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            out["event_loop" if int(tid) == proc else "other_threads"] += (int(fields[11]) + int(fields[12])) / TICK
    return out


def batch_stats(url: str) -> tuple[float, float]:
    """(ONNX Runtime runs, images in them) so far, from the server's spot_batch_size histogram."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
    return samples.get("spot_batch_size_count", 0.0), samples.get("spot_batch_size_sum", 0.0)


def load_level(server: Server, route: str, bodies: Path, clients: int, seconds: float, per_request: int) -> dict:
    """One wrk run after a 2 s warm-up, with what the server did meanwhile."""
    url = f"{server.url}{route}"
    wrk(url, bodies, clients, 2)
    runs0, images0 = batch_stats(server.url)
    cpu0 = thread_cpu_s(server.proc.pid)
    result = wrk(url, bodies, clients, seconds)
    cpu1 = thread_cpu_s(server.proc.pid)
    runs1, images1 = batch_stats(server.url)
    requests, duration = max(1, result["requests"]), result["duration_s"]
    result["images_per_s"] = result["req_per_s"] * per_request
    result["images_per_run"] = (images1 - images0) / max(1.0, runs1 - runs0)
    result["cpu_cores"] = sum(cpu1[k] - cpu0[k] for k in cpu0) / duration
    result["event_loop_ms_per_request"] = 1000 * (cpu1["event_loop"] - cpu0["event_loop"]) / requests
    result["other_threads_ms_per_image"] = (
        1000 * (cpu1["other_threads"] - cpu0["other_threads"]) / (requests * per_request)
    )
    return result


def sweep(
    model_dir: Path,
    bodies: dict[int, Path],
    route: str,
    per_request: int,
    clients: list[int],
    seconds: float,
    batching: bool = True,
    **settings: str,
) -> dict[str, dict]:
    """One server (batching on = the service's defaults, off = SPOT_MAX_BATCH_SIZE=1) through every
    concurrency level; `bodies` maps images per request to a wrk body folder."""
    if not batching:
        settings["max_batch_size"] = "1"
    server = Server(model_dir, ready="/readyz", access_log="false", **settings)
    try:
        return {
            str(c): load_level(server, ROUTES[route], bodies[per_request], c, seconds, per_request) for c in clients
        }
    finally:
        server.stop()
