"""`python -m service.client evaluate DATASET...`: how well the served model tells real from altered images
in a user's labelled folders, reported as CNNDetection reports it (AP, ROC-AUC, accuracy, real accuracy,
fake accuracy at the server's threshold).

Labels come from folder names, CNNDetection's layout: an image with a `0_real` (or `real`) folder on its path
(the DATASET folder itself included; case does not matter) is real, one with `1_fake` (or `fake`) altered;
one with neither, or both, is counted as unlabelled and left out. Each DATASET gets its own row (e.g. one
per generator), and `all` pools them when there are several. With --out, the report goes to
evaluation.json there and every image's score to scores.csv."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

REAL_FOLDERS, FAKE_FOLDERS = {"0_real", "real"}, {"1_fake", "fake"}


def label(path: Path, root: Path) -> bool | None:
    """True = altered, False = real, None = neither folder (or both) on the path from the dataset's root."""
    parts = {part.lower() for part in (root.name, *path.relative_to(root).parts[:-1])}
    real, fake = bool(parts & REAL_FOLDERS), bool(parts & FAKE_FOLDERS)
    return None if real == fake else fake


def roc_auc(scores: np.ndarray, altered: np.ndarray) -> float:
    """The chance that an altered image scores above a real one, ties counting half (the Mann-Whitney
    statistic: sklearn's roc_auc_score, without sklearn on the serving side)."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based, ties at their average rank
    pos = int(altered.sum())
    neg = len(altered) - pos
    return float((ranks[altered].sum() - pos * (pos + 1) / 2) / (pos * neg))


def average_precision(scores: np.ndarray, altered: np.ndarray) -> float:
    """Precision averaged over the recall steps of a falling threshold, tied scores as one threshold
    (sklearn's average_precision_score)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], altered[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last image at each distinct score
    tp, seen = np.cumsum(y)[last], last + 1
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * tp / seen))


def row(scores: list[float], flagged: list[bool], altered: list[bool]) -> dict:
    """CNNDetection's figures for one set of scored images; AP and ROC-AUC need both kinds (else None)."""
    s, f, y = np.asarray(scores, np.float64), np.asarray(flagged, bool), np.asarray(altered, bool)
    both = 0 < y.sum() < len(y)
    return {
        "real": int((~y).sum()),
        "fake": int(y.sum()),
        "ap": average_precision(s, y) if both else None,
        "roc_auc": roc_auc(s, y) if both else None,
        "acc": float((f == y).mean()) if len(y) else None,
        "real_acc": float((~f[~y]).mean()) if (~y).any() else None,
        "fake_acc": float(f[y].mean()) if y.any() else None,
    }


def run(args) -> int:
    """The `evaluate` command: every labelled image of every DATASET through /spot, then a row per dataset."""
    from .client import SpotClient, image_files

    roots = [root.resolve() for root in args.paths]
    if len(set(roots)) < len(roots):
        print("error: a dataset folder is given twice", file=sys.stderr)
        return 2
    datasets: dict[str, list[tuple[Path, bool]]] = {}
    unlabelled = 0
    for root, resolved in zip(args.paths, roots, strict=True):
        if not root.is_dir():
            print(
                f"error: evaluate takes dataset folders (with 0_real/ and 1_fake/ below), not {root}", file=sys.stderr
            )
            return 2
        labelled = [(path, label(path, root)) for path in image_files(root)]
        unlabelled += sum(y is None for _, y in labelled)
        name = resolved.name if resolved.name not in datasets else str(resolved)
        datasets[name] = [(path, y) for path, y in labelled if y is not None]
    if not any(datasets.values()):
        print("error: no image under a 0_real/ or 1_fake/ folder (CNNDetection's layout)", file=sys.stderr)
        return 2
    failed, threshold, scored = [], None, []  # scored: (dataset, image, truth, score, flagged)
    with SpotClient(args.url, args.api_key, args.timeout, args.per_request, args.concurrency) as client:
        for name, images in datasets.items():
            for i, item in client.results("spot", {"heatmap": "none"}, [path for path, _ in images]):
                if "error" in item or not np.isfinite(item["artifact_score"] or np.nan):
                    failed.append({"image": str(images[i][0]), "error": item.get("error", "no finite score")})
                    continue
                threshold = item["threshold"]
                scored.append((name, images[i][0], images[i][1], item["artifact_score"], item["altered"]))

    def row_of(entries: list[tuple]) -> dict:
        return row([e[3] for e in entries], [e[4] for e in entries], [e[2] for e in entries])

    rows = {name: row_of([e for e in scored if e[0] == name]) for name in datasets}
    pooled = row_of(scored) if len(rows) > 1 else None
    report = {"threshold": threshold, "datasets": rows, "all": pooled, "unlabelled": unlabelled, "failed": failed}
    print(json.dumps(report, indent=2))
    if args.out:  # the report, and every image's score for choosing a threshold of one's own
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
        with open(args.out / "scores.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["dataset", "image", "altered_truth", "artifact_score", "altered_predicted"])
            writer.writerows(scored)
    if failed:
        total = sum(len(images) for images in datasets.values())
        print(f"error: {len(failed)} of {total} images failed (see 'failed'); the rows leave them out", file=sys.stderr)
    return 1 if failed else 0
