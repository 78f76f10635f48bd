"""docs/results.md from the probe and spot-eval JSON files that `scripts/results` writes: one table and
one bar plot (PNG) per comparison, gap-closed fractions beside each row, every number read from a file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .probe import LAYERS, gap_closed  # noqa: E402
from .report_tables import TABLES  # noqa: E402


def pretext_curve(run_dir: Path) -> dict:
    """A run's held-out pretext accuracy at every logged step: {stage: {"chance", "points": [[step, acc]]}}."""
    from .config import Config
    from .heldout import pretext_accuracy
    from .log import read_metrics

    cfg = Config.from_dict(json.loads((Path(run_dir) / "config.json").read_text()))
    curves: dict[str, dict] = {}
    for record in read_metrics(run_dir):
        found = pretext_accuracy(record["stage"], record, cfg)
        if found is not None:
            curve = curves.setdefault(record["stage"], {"chance": found[1], "points": []})
            curve["points"].append([record["step"], round(found[0], 4)])
    return curves


def pretext_plot(curves: dict[str, dict], path: Path) -> list[str]:
    """One line per run and stage: held-out pretext accuracy against steps, chance dotted."""
    fig, ax = plt.subplots(figsize=(9, 4.2))
    lines = ["| run | stage | chance | steps logged | first | last | best |", "|---|---|---|---|---|---|---|"]
    for name, report in curves.items():
        for stage, curve in report["curves"].items():
            steps, accs = zip(*curve["points"], strict=False)
            (line,) = ax.plot(steps, accs, label=f"{name} ({stage})")
            ax.axhline(curve["chance"], color=line.get_color(), linestyle=":", linewidth=1)
            lines.append(
                f"| `{name}` | {stage} | {curve['chance']:.3f} | {len(steps)} | {accs[0]:.3f} | {accs[-1]:.3f} "
                f"| {max(accs):.3f} |"
            )
    ax.set_xlabel("step (64 images)")
    ax.set_ylabel("held-out pretext accuracy")
    ax.set_title("Pretext accuracy on held-out images (dotted: chance)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return lines


# (file, title, what the numbers are) for the runs compared by the loop's own held-out evaluation
LAST_STEP_SPOTTING = [
    (
        "ablation-spotting.json",
        "Ablations: held-out spotting at the last step",
        "The loop's own evaluation (8 batches of 64 CIFAR-10 test images, each run at its own drop rate).",
    ),
    (
        "rebalance-spotting.json",
        "Rebalancing the game: 400 more steps from the v3 run",
        "The loop's own evaluation (8 batches of 64 Tiny-ImageNet val images, drop 0.7) after 400 more steps from"
        " `runs/tiny64-raw25` (fresh Adam, lr 3e-4 decaying): stage 2 going on as it was (`control`), the repair"
        " net at a tenth of the lr (`rlr0.1`) or updated every 4th step (`every4`), mask weight 1 (`mask1`), the"
        " repair net frozen (`frozen-repair`), and the `detect` stage (the discriminator alone against the frozen"
        " repair net, mask weight 1).",
    ),
]


def last_step_table(runs: dict) -> list[str]:
    lines = [
        "| run | drop rate | ROC-AUC real vs repaired | mask AP (chance = drop rate) | raw images scored real |",
        "|---|---|---|---|---|",
    ]
    for run, last in runs.items():
        auc, ap, raw = last["val/auc"], last["val/mask_ap"], last["val/acc_raw"]
        lines.append(f"| `{run}` | {last['drop_rate']} | {auc:.3f} | {ap:.3f} | {raw:.3f} |")
    return lines


def edits_tables(reports: dict[str, dict]) -> list[str]:
    """/spot on edits of real photos (scripts/edits_via_service.py): the means over kinds against the
    issue's targets, then image ROC-AUC / pixel AP per kind. A score a file was written without is a dash."""
    targets = "| issue 21's target | >= 0.9 | | | >= 0.5 | | <= 0.10 |"
    md = [
        "| file (model, version) | image ROC-AUC | by heatmap peak | by `peak_score` | pixel AP | AP of a guess "
        "| raw photos flagged |",
        "|---|---|---|---|---|---|---|",
        targets,
    ]
    for name, r in reports.items():
        m = r["mean_over_kinds"]
        peaks = [
            f"{m[key]:.3f}" if key in m else "-"
            for key in ("image_roc_auc_by_heat_peak", "image_roc_auc_by_peak_score")
        ]
        md.append(
            f"| `{name}.json` (`{r['model']}`, {r['version']}) | {m['image_roc_auc']:.3f} | {' | '.join(peaks)} "
            f"| {m['pixel_ap']:.3f} | {m['pixel_ap_of_a_guess']:.3f} | {r['raw_false_alarm_rate']:.3f} |"
        )
    kinds = list(next(iter(reports.values()))["kinds"])
    md += ["", "Per kind, image ROC-AUC / pixel AP:", "", "| file | " + " | ".join(kinds) + " |"]
    md.append("|---|" + "---|" * len(kinds))
    for name, r in reports.items():
        cells = [f"{r['kinds'][k]['image_roc_auc']:.3f} / {r['kinds'][k]['pixel_ap']:.3f}" for k in kinds]
        md.append(f"| `{name}.json` | " + " | ".join(cells) + " |")
    return md


def leave_one_kind_out_table(reports: dict[str, dict]) -> list[str]:
    """Issue 21's protocol: each kind scored by a detector that never trained on it (the files whose
    `held_out_kinds` leave some kinds out but not all), then the mean over the kinds measured so far."""
    rows = [
        (kind, name, r["kinds"][kind])
        for name, r in reports.items()
        if 0 < len(r.get("held_out_kinds", [])) < len(r["kinds"])
        for kind in r["held_out_kinds"]
    ]
    if not rows:
        return []
    keys = ("image_roc_auc", "image_roc_auc_by_peak_score", "pixel_ap", "pixel_ap_of_a_guess")
    md = [
        "Leave one kind out (issue 21's protocol): each kind scored by a detector trained without it.",
        "",
        "| held-out kind | file | image ROC-AUC | by `peak_score` | pixel AP | AP of a guess |",
        "|---|---|---|---|---|---|",
    ]
    md += [f"| {kind} | `{name}.json` | " + " | ".join(f"{m[k]:.3f}" for k in keys) + " |" for kind, name, m in rows]
    per_kind: dict[str, list[dict]] = {}
    for kind, _, m in rows:  # a kind left out by several detectors counts once: the mean of its rows
        per_kind.setdefault(kind, []).append(m)
    kind_means = [{k: sum(m[k] for m in ms) / len(ms) for k in keys} for ms in per_kind.values()]
    means = [f"{sum(m[k] for m in kind_means) / len(kind_means):.3f}" for k in keys]
    all_kinds = len(next(iter(reports.values()))["kinds"])
    md.append(f"| **mean, {len(per_kind)} of {all_kinds} kinds** | | " + " | ".join(means) + " |")
    md.append("| issue 21's target | | >= 0.9 | | >= 0.5 | |")
    return md


BEGIN, END = "<!-- generated by python -m training report: begin -->", "<!-- generated: end -->"


def load(results: Path, name: str) -> dict | None:
    path = results / f"probe-{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def probe_table(
    results: Path, random: str, supervised: str, rows: list[tuple[str, str]], also: str | None = None
) -> tuple[list[str], dict]:
    """Markdown lines and {label: top1 per layer} for the rows whose probe files exist. `also`: a second
    supervised row, whose mean gap closed gets a column of its own (the fixed reference of issue 20)."""
    runs = {"random": load(results, random), "supervised": load(results, supervised)}
    runs.update({label: load(results, name) for label, name in rows})
    names = {"random": random, "supervised": supervised, **{label: name for label, name in rows}}
    top1 = {label: r["top1"] for label, r in runs.items() if r}
    second = load(results, also) if also else None
    if also and not second:
        runs[also] = None  # listed under "Not measured yet" with the rows
        names[also] = also
    head = "| row | " + " | ".join(LAYERS) + " | mean gap closed, conv2-conv5 |"
    head += f" against `probe-{also}.json` |" if second else ""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]  # one separator per column of the header
    ends = [label for label in top1 if label not in ("random", "supervised")]
    for label in ["random", *ends, "supervised"]:
        if label not in top1:
            continue
        cells = [f"{100 * top1[label][n]:.2f}" for n in LAYERS]
        mean = ""
        if label in ends and "random" in top1 and "supervised" in top1:
            gap = gap_closed(top1[label], top1["random"], top1["supervised"])
            cells = [
                f"{c} ({gap['per_layer'][n]:.2f})" if n in gap["per_layer"] else c
                for c, n in zip(cells, LAYERS, strict=False)
            ]
            mean = f"**{gap['mean_conv2_conv5']:.3f}**"
        if second and label in ends and "random" in top1:
            mean += f" | {gap_closed(top1[label], top1['random'], second['top1'])['mean_conv2_conv5']:.3f}"
        elif second:
            mean += " |"
        lines.append(f"| {label} (`probe-{names[label]}.json`) | " + " | ".join(cells) + f" | {mean} |")
    missing = [names[label] for label, r in runs.items() if not r]
    if missing:
        lines.append("")
        lines.append("Not measured yet: " + ", ".join(f"`probe-{m}.json`" for m in missing) + ".")
    return lines, top1


def bar_plot(top1: dict, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.8 / max(1, len(top1))
    for i, (label, accs) in enumerate(top1.items()):
        xs = [j + (i - (len(top1) - 1) / 2) * width for j in range(len(LAYERS))]
        ax.bar(xs, [100 * accs[n] for n in LAYERS], width, label=label)
    ax.set_xticks(range(len(LAYERS)), LAYERS)
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)  # below: never over a bar
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the figure grows to hold every row's label
    plt.close(fig)


def spot_tables(reports: dict[str, dict], plot: Path) -> list[str]:
    """Per model: CNNDetection-style metrics per drop rate; then false alarms on raw photographs."""
    md = []
    for name, r in reports.items():
        generator = r.get("generator", r["checkpoint"])
        made_by = "" if generator == r["checkpoint"] else f"; pairs made by `{generator}`'s autoencoder + repair net"
        md += [
            f"### `{name}.json`: `{r['checkpoint']}` on {r['images']} `{r['data']}` images "
            f"(trained at drop rate {r['trained_drop_rate']}, threshold {r['threshold']}{made_by})",
            "",
            "| drop rate | ROC-AUC | AP | acc | real acc | fake acc | mask AP |",
            "|---|---|---|---|---|---|---|",
        ]
        md += [
            f"| {p['drop_rate']} | {p['roc_auc']:.3f} | {p['ap']:.3f} | {p['acc']:.3f} | {p['real_acc']:.3f} "
            f"| {p['fake_acc']:.3f} | {p['mask_ap']:.3f} |"
            for p in r["pairs"]
        ]
        md.append("")
    md += [
        "False alarms (share scored above the threshold) on raw, unaltered images:",
        "",
        "| model | raw Tiny-ImageNet val (64 px, as stored) | full-size photos (tiled as `/spot` does) |",
        "|---|---|---|",
    ]
    md += [
        f"| `{name}.json` | {r['raw_heldout_false_alarm_rate']:.3f} | {r['raw_photos']['false_alarm_rate']:.3f}"
        f" ({r['raw_photos']['photos']} photos) |"
        for name, r in reports.items()
        if "raw_photos" in r
    ]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, r in reports.items():
        rates = [p["drop_rate"] for p in r["pairs"]]
        axes[0].plot(rates, [p["roc_auc"] for p in r["pairs"]], "o-", label=name)
        axes[1].plot(rates, [p["mask_ap"] for p in r["pairs"]], "o-", label=name)
    for ax, title in zip(axes, ("real vs repaired ROC-AUC", "mask AP (dropped cells)"), strict=False):
        ax.set_xlabel("drop rate")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plot, dpi=110)
    plt.close(fig)
    return md


def write_report(results: Path, out: Path) -> str:
    """Writes the tables into `out` between the BEGIN/END markers (the rest of the file is hand-written;
    a new file is all tables) and the PNG plots beside the JSON files; returns the generated part."""
    md = [
        "Generated by `python -m training report` from the JSON files in `docs/results/`, which",
        "`scripts/results` writes (each step names its command there; the probe protocol is in",
        "`training/probe.py`: frozen conv1..conv5, each adaptive-average-pooled to about 9k dims, standardised,",
        "one linear classifier per layer, SGD + Nesterov, 10 epochs, piecewise lr). Top-1 in %; in brackets the",
        "fraction of the supervised gap that the row closes, (row - random) / (supervised - random). The paper's",
        "ImageNet table closes 0.84 / 0.77 / 0.71 / 0.57 at conv2..conv5: 0.72 on average (PAPER.md 4.2).",
        "The 64 px tables' last column measures the same mean against the supervised trunk trained by the fixed",
        "code (15,000 steps, the equal-compute row; the random end is the table's own random row): their",
        "reference row trained with its classifier's fc1/fc2 frozen, a bug fixed since, so the bold fractions",
        "flatter the rows on CIFAR-10.",
        "",
    ]
    for title, plot, random, supervised, rows, *also in TABLES:
        lines, top1 = probe_table(results, random, supervised, rows, *also)
        md += [f"## {title}", "", *lines, ""]
        if top1:
            bar_plot(top1, title, results / plot)
            md += [f"![{title}]({os.path.relpath(results / plot, out.parent)})", ""]
    curves = {
        p.stem.removeprefix("pretext-"): json.loads(p.read_text()) for p in sorted(results.glob("pretext-*.json"))
    }
    if curves:
        plot = results / "pretext-accuracy.png"
        md += [
            "## Held-out pretext accuracy against steps (`python -m training curve`)",
            "",
            "Rotation: the share of held-out images (8 batches of 64, image i turned by i mod 4 quarter-turns)"
            " whose rotation is named; spotting: the mean of real and fake accuracy; supervised: top-1.",
            "",
            *pretext_plot(curves, plot),
            "",
            f"![pretext accuracy]({os.path.relpath(plot, out.parent)})",
            "",
        ]
    for name, title, note in LAST_STEP_SPOTTING:
        path = results / name
        if path.exists():
            md += [f"## {title} (`{name}`)", "", note, "", *last_step_table(json.loads(path.read_text())), ""]
    reports = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("spot-eval-*.json"))}
    if reports:
        plot = results / "spot-eval.png"
        md += ["## Spotting artifacts (`python -m training spot-eval`)", "", *spot_tables(reports, plot), ""]
        md += [f"![spotting per drop rate]({os.path.relpath(plot, out.parent)})", ""]
    edits = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("edits-via-service-*.json"))}
    if edits:
        first = next(iter(edits.values()))
        md += [
            "## /spot on edits of real photos (`scripts/edits_via_service.py`)",
            "",
            f"{len(first['photos'])} held-out photos (skimage, sklearn, matplotlib, MATE's nature photos; "
            f"at most {first['max_side']} px), raw and with one",
            "random region edited by each kind, through a real `/spot`; "
            f"means over the {len(first['kinds'])} kinds. Image ROC-AUC by the",
            "artifact score (the mean over tiles), by the heatmap's 99th percentile and by `peak_score` (the",
            "drop-mask's, as /spot answers it since 2026-12-07); pixel AP of the heatmap.",
            "",
            *edits_tables(edits),
            "",
        ]
        if table := leave_one_kind_out_table(edits):
            md += [*table, ""]
    text = f"{BEGIN}\n" + "\n".join(md) + f"\n{END}"
    if out.exists() and BEGIN in (old := out.read_text()) and END in old:  # keep the hand-written parts
        text = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END) :]
    out.write_text(text if text.endswith("\n") else text + "\n")
    return text
