"""`python -m service [--host H] [--port P] [--model-dir D]`: uvicorn on the shipped model by default."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn

from .app import create_app
from .config import Settings


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
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        limit_concurrency=512,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=65536,
        access_log=settings.access_log,
    )


if __name__ == "__main__":
    main()
