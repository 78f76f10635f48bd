"""Resident memory of one service worker's model: ONNX Runtime sessions loaded, warmed up and run once at
the largest batch on each graph (/features', /spot's, all outputs), for sizing SPOT_WORKERS.

    python scripts/model_memory.py --model models/spot-tiny64 [--batch 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.model import HEAD_OUTPUTS, ExportedModel  # noqa: E402


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("models/spot-tiny64"))
    p.add_argument("--batch", type=int, default=64, help="SPOT_MAX_BATCH_SIZE")
    args = p.parse_args()
    before = rss_mib()
    model = ExportedModel(args.model, "cpu", threads=1)
    model.warm_up()
    x = np.zeros((args.batch, 3, model.size, model.size), np.float32)
    for names in (model.layers, HEAD_OUTPUTS, None):
        model.run(x, names)
    print(
        f"{args.model}: {rss_mib():.0f} MiB resident ({rss_mib() - before:.0f} MiB for the model), batch {args.batch}"
    )


if __name__ == "__main__":
    main()
