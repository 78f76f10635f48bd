"""False alarms on raw photographs through the service: every photo of a folder sent as it is stored to /spot
of a real server on 127.0.0.1, as a user's upload would be, once with the service's default SPOT_MAX_TILES
(photos over it analysed downscaled) and once with a limit high enough that every photo is tiled at its own
size (what `python -m training spot-eval` scores in-process). A false alarm is `altered` at the service's
threshold.

    python scripts/photos_via_service.py --model models/spot-tiny64 --photos ../shared/data/photos \
        --out docs/results/photos-via-service.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.server import Server  # noqa: E402
from service.client import SpotClient, expand  # noqa: E402
from service.config import Settings  # noqa: E402

SETTINGS = {
    "default": {},  # SPOT_MAX_TILES as shipped: large photos downscaled
    "own size": {"max_tiles": "100000", "max_queue_images": "100000"},  # every photo at its own size
}


def score(model: Path, root: Path, photos: list[Path], env: dict) -> dict:
    server = Server(model, ready="/readyz", timeout=120, access_log="false", **env)
    try:
        with SpotClient(server.url, timeout=600) as client, ThreadPoolExecutor(2) as pool:
            started = time.perf_counter()
            ask = lambda p: client.results_or_errors("spot", {"heatmap": "none"}, [(0, p)])[0]  # noqa: E731
            answers = list(pool.map(ask, photos))
            seconds = time.perf_counter() - started
    finally:
        server.stop()
    failed = [str(p) for p, a in zip(photos, answers, strict=False) if "error" in a]
    if failed:
        raise SystemExit(f"the service did not score {failed}: {[a for a in answers if 'error' in a][:3]}")
    per_photo = {
        str(p.relative_to(root)): {
            "score": a["artifact_score"],
            "altered": a["altered"],
            "scale": a["tiling"]["scale"],
            "tiles": a["tiling"]["tiles"],
            "size": [a["width"], a["height"]],
        }  # fmt: skip
        for p, a in zip(photos, answers, strict=False)
    }
    downscaled = [v for v in per_photo.values() if v["scale"] < 1]
    return {
        "env": {f"SPOT_{k.upper()}": v for k, v in env.items()},
        "threshold": json.loads((model / "model.json").read_text()).get("spot_threshold", 0.5),  # no SPOT_THRESHOLD
        "photos": len(per_photo),
        "false_alarms": sum(v["altered"] for v in per_photo.values()),
        "false_alarm_rate": sum(v["altered"] for v in per_photo.values()) / max(1, len(per_photo)),
        "downscaled": len(downscaled),
        "false_alarms_downscaled": sum(v["altered"] for v in downscaled),
        "tiles": sum(v["tiles"] for v in per_photo.values()),
        "seconds": round(seconds, 1),
        "per_photo": per_photo,
    }


def main() -> None:
    for name in [k for k in os.environ if k.startswith("SPOT_")]:  # the servers run on their defaults
        del os.environ[name]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/spot-tiny64"))
    ap.add_argument("--photos", type=Path, default=Path("../shared/data/photos"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    photos = [path for path, _ in expand([args.photos])]
    results = {name: score(args.model.resolve(), args.photos, photos, env) for name, env in SETTINGS.items()}
    report = {
        "command": "python scripts/photos_via_service.py " + " ".join(sys.argv[1:]),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "model": str(args.model),
        "default_max_tiles": Settings().max_tiles,
        "results": results,
    }
    for name, r in results.items():
        print(f"{name}: {r['false_alarms']} of {r['photos']} photos flagged ({r['false_alarm_rate']:.3f}); "
              f"{r['downscaled']} downscaled, {r['false_alarms_downscaled']} of them flagged; {r['tiles']} tiles, "
              f"{r['seconds']} s")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
