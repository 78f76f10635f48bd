"""`python -m service [--host H] [--port P] [--model-dir D]`: uvicorn on the shipped model by default."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
from pathlib import Path

import uvicorn

from .app import create_app
from .config import Settings


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
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--model-dir", type=Path, help="an export folder (default: SPOT_MODEL_DIR or models/spot-tiny64)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(**({"model_dir": args.model_dir} if args.model_dir else {}))
    config = uvicorn.Config(
        create_app(settings),
        host=args.host,
        port=args.port,
        limit_concurrency=512,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=30,
        h11_max_incomplete_event_size=65536,
        access_log=settings.access_log,
    )
    Server(config).run()


if __name__ == "__main__":
    main()
