"""Ours against every serving stack a user would pick instead (bench/peers: BentoML, LitServe, MLServer,
PyTriton), the same shipped model and work behind each, the same load, in one run:

1. one upload of JPEGs per request, the server decodes (wrk; each peer in its own way of taking an upload:
   multipart for ours, BentoML and LitServe, a BYTES tensor of the Open Inference Protocol for MLServer and
   PyTriton), conv5 average-pooled back as JSON;
2. the Open Inference Protocol with a preprocessed tensor, conv5 back: ours' /v2 against MLServer and
   PyTriton, over HTTP (wrk; binary tensor data where the server has the extension) and gRPC (perf_analyzer).

Each at 1, 4, 16, 64 clients with 1 and 16 images per request.

    python -m bench.peer --out bench/results/peers.json   # about 20 minutes; the suite runs it too
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from pathlib import Path

import httpx
import numpy as np

from . import perf_analyzer
from .context import commit, hardware
from .load import jpeg_crops, write_bodies, write_oip_bodies, wrk
from .peers.registry import PEERS, Peer, PeerServer, answer_features, ensure_venv, jpeg_request, tensor_request
from .peers.work import pooled_features
from .server import REPO, Server, free_port

OURS_ROUTE = "/features?layers=conv5&pool=avg"
PER_REQUEST = (1, 16)
TENSOR_BODIES = 8  # distinct preprocessed requests per size (MLServer's JSON tensors are large)
OIP_BINARY = "application/octet-stream"


def upload_bodies(jpeg: str, jpegs: list[bytes], folder: Path, per: int) -> tuple[Path, str]:
    """(wrk bodies, their Content-Type) for an upload of `per` JPEGs in a server's own protocol."""
    if jpeg in ("files", "multipart"):
        return write_bodies(jpegs, folder, per_request=per, field="files" if jpeg == "files" else "images"), ""
    groups = [[jpegs[(k + j) % len(jpegs)] for j in range(per)] for k in range(len(jpegs))]
    kind = OIP_BINARY if jpeg == "oip-binary" else "application/json"
    return write_oip_bodies([jpeg_request(jpeg, g) for g in groups], folder), kind


def tensor_bodies(images: np.ndarray, folder: Path, per: int, binary: bool) -> tuple[Path, str]:
    requests = [tensor_request(np.take(images, range(k * per, (k + 1) * per), axis=0, mode="wrap"), binary)
                for k in range(TENSOR_BODIES)]  # fmt: skip
    return write_oip_bodies(requests, folder), OIP_BINARY if binary else "application/json"


def post(url: str, body: Path, content_type: str) -> bytes:
    """The first prepared body, sent once: the answer to check (and the header line's length where binary)."""
    name, _, header = (body / "list.txt").read_text().splitlines()[0].partition("\t")
    headers = {"Content-Type": content_type} if content_type else {}
    if header:
        headers["Inference-Header-Content-Length"] = header
    data = Path(name).read_bytes()
    if not content_type:
        headers["Content-Type"] = "multipart/form-data; boundary=spotbenchboundary"
    r = httpx.post(url, content=data, headers=headers, timeout=60)
    r.raise_for_status()
    return r.content


def wrk_sweep(url: str, bodies: Path, content_type: str, per: int, clients: list[int], seconds: float) -> dict:
    out = {}
    for c in clients:
        wrk(url, bodies, c, 2, content_type=content_type)  # warm-up
        row = wrk(url, bodies, c, seconds, content_type=content_type)
        out[str(c)] = {**row, "images_per_s": row["req_per_s"] * per}
    return out


def perf_sweep(url: str, model: str, inputs: Path, per: int, clients: list[int], seconds: float) -> dict:
    return {str(c): perf_analyzer.run(url, "grpc", model, inputs, per, c, int(1000 * seconds / 2)) for c in clients}


def measure_server(name: str, url: str, grpc: str | None, jpeg: str, route: str, oip_binary: bool,
                   oip_model: str | None, data: dict, clients: list[int], seconds: float,
                   tmp: Path) -> dict:  # fmt: skip
    """Every row one server takes part in; its answer to the first upload checked against the reference."""
    out: dict = {"jpeg": {}, "oip_http": {}, "oip_grpc": {}}
    for per in PER_REQUEST:
        bodies, kind = upload_bodies(jpeg, data["jpegs"], tmp / f"{name}-jpeg-{per}", per)
        got = answer_features(post(f"{url}{route}", bodies, kind))
        diff = float(np.abs(got - data["reference"][:per]).max())
        out.setdefault("max_abs_diff", 0.0)
        out["max_abs_diff"] = max(out["max_abs_diff"], diff)
        if diff > 1e-3:
            raise RuntimeError(f"{name} answers differently from the model: max abs difference {diff}")
        out["jpeg"][str(per)] = wrk_sweep(f"{url}{route}", bodies, kind, per, clients, seconds)
        if oip_model:
            bodies, kind = tensor_bodies(data["images"], tmp / f"{name}-tensor-{per}", per, oip_binary)
            post(f"{url}/v2/models/{oip_model}/infer", bodies, kind)
            out["oip_http"][str(per)] = wrk_sweep(
                f"{url}/v2/models/{oip_model}/infer", bodies, kind, per, clients, seconds
            )
            if grpc:
                try:
                    out["oip_grpc"][str(per)] = perf_sweep(grpc, oip_model, data["perf_input"], per, clients, seconds)
                except RuntimeError as e:  # the load generator cannot drive it: the exact error is the result
                    out["oip_grpc_error"], grpc = str(e), None
    return out


def measure_ours(model_dir: Path, data: dict, clients: list[int], seconds: float, tmp: Path) -> dict:
    """Ours as shipped: `python -m service` with its defaults (a process per core on a CPU), gRPC on."""
    grpc_port = free_port()
    server = Server(model_dir, ready="/readyz", access_log="false", workers="0", grpc_port=str(grpc_port))
    try:
        rows = measure_server("ours", server.url, f"127.0.0.1:{grpc_port}", "files", OURS_ROUTE, True,
                              data["model_name"], data, clients, seconds, tmp)  # fmt: skip
    finally:
        server.stop()
    return {"settings": "python -m service defaults: SPOT_WORKERS=0 (a process per core), batching max 64, 2 ms"
            " adaptive delay", **rows}  # fmt: skip


def measure_peer(peer: Peer, model_dir: Path, data: dict, clients: list[int], seconds: float, tmp: Path) -> dict:
    """A peer's rows, or the exact error that stopped it (recorded, never dropped)."""
    info = {
        "version": peer.version,
        "requirements": peer.requirements,
        "settings": peer.settings,
        "python": peer.python,
    }
    try:
        ensure_venv(peer)
        server = PeerServer(peer, model_dir)
    except Exception as e:  # noqa: BLE001 (a peer that cannot run here is a result)
        return {**info, "error": f"{type(e).__name__}: {e}"[-3000:]}
    try:
        grpc = f"127.0.0.1:{server.grpc_port}" if peer.oip else None
        rows = measure_server(peer.name, server.url, grpc, peer.jpeg, peer.route, peer.oip_binary,
                              data["model_name"] if peer.oip else None, data, clients, seconds, tmp)  # fmt: skip
        return {**info, **rows}
    except Exception as e:  # noqa: BLE001
        return {**info, "error": f"{type(e).__name__}: {e}"[-3000:], "trace": traceback.format_exc()[-3000:],
                "log": server.output()[-3000:]}  # fmt: skip
    finally:
        server.stop()


def prepare(model_dir: Path, photos: Path, tmp: Path) -> dict:
    from service.model import ExportedModel

    model = ExportedModel(model_dir, "cpu")
    jpegs = jpeg_crops(photos, size=64)
    from .peers.work import view

    images = model.normalize_batch([view(model, j) for j in jpegs[:32]])
    return {
        "jpegs": jpegs,
        "reference": pooled_features(model, jpegs[:16]),
        "images": images,
        "perf_input": perf_analyzer.input_file(images, model.meta["input"]["name"], tmp),
        "model_name": model.name,
    }


def measure(model_dir: Path, photos: Path, clients: list[int], seconds: float, peers: list[Peer] = PEERS) -> dict:
    perf_analyzer.ensure()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        data = prepare(model_dir, photos, tmp)
        servers = {"ours": measure_ours(model_dir, data, clients, seconds, tmp)}
        for peer in peers:
            servers[peer.name] = measure_peer(peer, model_dir, data, clients, seconds, tmp)
    return {"model_dir": str(model_dir), "clients": clients, "seconds": seconds, "per_request": list(PER_REQUEST),
            "load": {"http": "wrk 4.2 (Debian), one thread",
                     "grpc": f"perf_analyzer ({perf_analyzer.REQUIREMENTS[0]})"},
            "servers": servers}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=REPO / "models" / "spot-tiny64")
    p.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "photos")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--peers", nargs="*", default=[p.name for p in PEERS])
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result = measure(args.model_dir.resolve(), args.photos, args.clients, args.seconds,
                     [p for p in PEERS if p.name in args.peers])  # fmt: skip
    result |= {"command": "python -m bench.peer " + " ".join(sys.argv[1:]), "commit": commit(), "hardware": hardware()}
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
