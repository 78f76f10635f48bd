"""`python -m service [--host H] [--port P] [--model-dir D] [--workers N] [--grpc-port G]`: uvicorn on the
shipped model by default; the port may also come from SPOT_PORT (as docker-compose.yml publishes it)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import tempfile
from pathlib import Path

import uvicorn
from uvicorn.supervisors import multiprocess

from .app import create_app
from .config import Settings, resolve_workers
from .listener import Loads, WorkerProcess
from .logs import logging_config


class Server(uvicorn.Server):
    """uvicorn drains requests in flight on SIGTERM/SIGINT, then re-raises the signal (exit status -15);
    a service that stopped cleanly should exit 0, so orchestrators do not count it as a crash."""

    @contextlib.contextmanager
    def capture_signals(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle_exit)
        yield


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=os.environ.get("SPOT_PORT", "8000"), help="default: SPOT_PORT, else 8000"
    )
    parser.add_argument(
        "--model-dir", type=Path, help="an export folder (default: SPOT_MODEL_DIR or models/spot-tiny64)"
    )
    parser.add_argument(
        "--workers", type=int, help="server processes (default: SPOT_WORKERS, else one per core on a CPU, 1 on a GPU)"
    )
    parser.add_argument(
        "--grpc-port", type=int, help="also the Open Inference Protocol over gRPC on this port (SPOT_GRPC_PORT; off)"
    )
    args = parser.parse_args(argv)
    if why := in_use(args.host, args.port):  # one line that says what to do, not uvicorn's error and exit
        parser.exit(2, f"error: port {args.port} on {args.host}: {why}; choose another with --port or SPOT_PORT\n")
    if args.model_dir:  # through the environment, so that worker processes read the same settings
        os.environ["SPOT_MODEL_DIR"] = str(args.model_dir)
    if args.workers:
        os.environ["SPOT_WORKERS"] = str(args.workers)
    if args.grpc_port:
        os.environ["SPOT_GRPC_PORT"] = str(args.grpc_port)
    os.environ.setdefault("SPOT_GRPC_HOST", args.host)  # gRPC (SPOT_GRPC_PORT) listens where HTTP does
    settings = Settings()
    if settings.grpc_port and (why := in_use(settings.grpc_host, settings.grpc_port)):
        parser.error(f"gRPC port {settings.grpc_port} on {settings.grpc_host}: {why}")
    workers = resolve_workers(settings)
    os.environ["SPOT_WORKERS"] = str(workers)  # what each worker's app shares its cores out by
    options = dict(
        host=args.host,
        port=args.port,
        limit_concurrency=settings.max_connections,  # beyond it uvicorn's own 503 (plain text)
        timeout_keep_alive=5,
        timeout_graceful_shutdown=30,
        h11_max_incomplete_event_size=65536,
        access_log=settings.access_log,
        log_config=logging_config(settings.log_format),  # uvicorn applies it, in each worker too
    )
    if workers > 1:
        serve_workers(workers, options)
    else:
        Server(uvicorn.Config(create_app(settings), **options)).run()


def in_use(host: str, port: int) -> str | None:
    """Why the port cannot be bound, or None. Asked once before the workers start: they bind it with
    SO_REUSEPORT, which would share it unnoticed with another server that does too, and a worker that
    cannot bind it would be restarted by uvicorn's supervisor over and over."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed server's TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def serve_workers(workers: int, options: dict) -> None:
    """Processes sharing one socket, each loading the model and batching on its own (uvicorn's supervisor
    restarts one that dies); /metrics adds up all of them through Prometheus' multiprocess mode."""
    with tempfile.TemporaryDirectory(prefix="spot-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # read by prometheus_client as workers import it
        config = uvicorn.Config("service.app:create_app", factory=True, workers=workers, **options)
        multiprocess.Process = WorkerProcess  # the name the supervisor starts (and restarts) workers by
        WorkerProcess.loads = Loads(workers)
        multiprocess.Multiprocess(config, sockets=[config.bind_socket()]).run()


if __name__ == "__main__":
    main()
