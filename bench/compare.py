"""Two versions of the service in one run: an earlier commit (checked out into a temporary git worktree,
its model exported from the same checkpoint by that commit's own exporter) against the working tree,
under the same wrk load, alternating level by level so that machine noise hits both alike.

    python -m bench.compare --before 2cc52f9 --out bench/results/compare.json

The route is /features?layers=conv5&pool=avg, one 64 px JPEG per request, each server with its defaults.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .context import commit, hardware
from .load import jpeg_crops, write_bodies
from .server import REPO, Server
from .service import load_level
from .suite import full_width_model

ROUTE = "/features?layers=conv5&pool=avg"


def export_with(worktree: Path, checkpoint: Path, out: Path) -> Path:
    cmd = [sys.executable, "-m", "training", "export", "--checkpoint", str(checkpoint), "--out", str(out)]
    subprocess.run(cmd, cwd=worktree, check=True, capture_output=True, timeout=600)
    return out


def markdown(report: dict) -> str:
    hw = report["hardware"]
    lines = [
        f"Command: `{report['command']}`; before = commit `{report['before']}`, after = commit `{report['after']}`;"
        f" {hw['cpu']}, {hw['cores']} cores. Model: `{report['checkpoint']}` exported by each commit's own"
        f" exporter; `{ROUTE}`, one 64 px JPEG per request, {report['seconds']} s per level after a 2 s warm-up,"
        f" SPOT_WORKERS={report.get('workers', '1')},"
        " levels alternating between the two servers.",
        "",
        "| clients | before img/s (p99 ms, images per run) | after img/s (p99 ms, images per run) | after / before |",
        "|---|---|---|---|",
    ]
    for c, b in report["before_rows"].items():
        a = report["after_rows"][c]
        lines.append(
            f"| {c} | {b['images_per_s']:.0f} ({b['p99_ms']:.0f}, {b['images_per_run']:.1f})"
            f" | {a['images_per_s']:.0f} ({a['p99_ms']:.0f}, {a['images_per_run']:.1f})"
            f" | **{a['images_per_s'] / b['images_per_s']:.2f}** |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="a commit of this repository")
    p.add_argument("--checkpoint", type=Path, help="default: the full-width model's (built on first use)")
    p.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "photos")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--workers", default="1", help="server processes for both (0: the service's default, one per core)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    checkpoint = (args.checkpoint or full_width_model().parent / "checkpoint.pt").resolve()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        worktree = tmp / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.before], cwd=REPO, check=True,
                       capture_output=True)  # fmt: skip
        try:
            (tmp / "shared").symlink_to(REPO.parent / "shared")  # the data, where the worktree expects it
            models = {
                "before": (export_with(worktree, checkpoint, tmp / "model-before"), worktree),
                "after": (export_with(REPO, checkpoint, tmp / "model-after"), REPO),
            }
            bodies = write_bodies(jpeg_crops(args.photos), tmp / "bodies")
            rows = {"before": {}, "after": {}}
            for c in args.clients:
                for name, (model_dir, cwd) in models.items():
                    server = Server(model_dir, ready="/readyz", cwd=cwd, access_log="false", workers=args.workers)
                    try:
                        rows[name][str(c)] = load_level(server, ROUTE, bodies, c, args.seconds, per_request=1)
                    finally:
                        server.stop()
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, capture_output=True)
    report = {
        "command": "python -m bench.compare " + " ".join(sys.argv[1:]),
        "before": args.before,
        "after": commit(),
        "hardware": hardware(),
        "checkpoint": str(checkpoint.relative_to(REPO) if checkpoint.is_relative_to(REPO) else checkpoint),
        "seconds": args.seconds,
        "workers": args.workers,
        "before_rows": rows["before"],
        "after_rows": rows["after"],
    }
    print(markdown(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(report))


if __name__ == "__main__":
    main()
