"""Command line: `python -m training train|export|speed ...` (thin: parse, resolve config, call)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import checkpoint
from .config import Config, apply_overrides, dump, list_presets, load_config, parse_override, valid_keys


def resolve_config(preset: str | None, run_dir: Path | None, overrides: list[str]) -> tuple[Config, dict | None]:
    """A run folder with a checkpoint resumes with its own stored config (overrides on top). Returns the
    config and the checkpoint (None for a new run), loaded once for both."""
    ckpt = run_dir / "checkpoint.pt" if run_dir else None
    if ckpt and ckpt.exists():
        state = checkpoint.load(ckpt)
        cfg = Config.from_dict(state["config"])
        if preset and preset != cfg.preset:
            raise SystemExit(
                f"{run_dir} holds a {cfg.preset} run: resume it without --preset (or with --preset {cfg.preset}), "
                f"or start the {preset} run in a new --run-dir"
            )
        apply_overrides(cfg, overrides)
        return cfg, state
    if not preset:
        raise SystemExit(f"--preset is required for a new run; presets: {', '.join(list_presets())}")
    return load_config(preset, overrides), None


def run_probe(args, overrides: list[str]) -> dict:
    import torch

    from .data import ImageArrayDataset, eval_transform, load_images
    from .networks import build_networks
    from .probe import LAYERS, ProbeSchedule, onnx_features, probe, reestimate_batchnorm, torch_features

    disc = None
    if args.checkpoint:
        nets, cfg, _ = checkpoint.load_networks(args.checkpoint)
        disc, source = nets["disc"], str(args.checkpoint)
    elif args.model:
        if args.batchnorm != "game":
            raise ValueError(
                "--batchnorm probe-data needs --checkpoint or --random: an exported model has its statistics folded in"
            )
        meta = json.loads((args.model / "model.json").read_text())
        cfg = load_config(meta["training"]["preset"])
        features, source = onnx_features(args.model), f"onnx:{args.model}"
    else:
        cfg = load_config(args.random, overrides)  # e.g. --model.width=1.0 for a full-width run's row
        torch.manual_seed(cfg.train.seed)
        disc, source = build_networks(cfg.model)["disc"], f"random:{args.random}"
    if disc is not None:
        if args.batchnorm == "probe-data":
            size = cfg.model.image_size
            images = load_images(args.train_data, cfg.data.root or None, cfg.data.cache_dir or None, size)
            reestimate_batchnorm(disc, ImageArrayDataset(images, eval_transform(cfg.data, size)))
        features = torch_features(disc)
    layers = args.layers.split(",")
    if unknown := set(layers) - set(LAYERS):
        raise ValueError(f"unknown layers {sorted(unknown)}; valid: {', '.join(LAYERS)}")
    schedule = ProbeSchedule(epochs=args.epochs)
    results = probe(features, cfg, args.train_data, args.test_data, schedule, args.limit, layers)
    return {"model": source, "preset": cfg.preset, "batchnorm": args.batchnorm, **results}


def add_export_command(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint's discriminator to ONNX + model.json + MODEL_CARD.md")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name")
    p.add_argument("--version", default="1")
    p.add_argument("--metrics", type=Path, nargs="*", default=[], help="evaluation JSON files (their 'summary')")
    p.add_argument(
        "--train-command", help="the training command(s) to record (default: the one the checkpoint recorded)"
    )
    p.add_argument("--threshold", type=float, default=0.5, help="/spot's decision threshold on artifact_score")
    p.add_argument(
        "--features-from", type=Path, help="take conv1..conv5 from this checkpoint (the heads stay --checkpoint's)"
    )
    p.add_argument("--features-train-command", help="the training command(s) of --features-from, to record")
    p.add_argument(
        "--reference-probes",
        type=Path,
        nargs="*",
        default=[],
        help="probe files of a random init and supervised trunks: probe_gap_closed/<test> per --metrics probe "
        "against the first supervised one, probe_gap_closed/<test>/<run folder> against each further one",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train (or resume) a run; extra --key=value override the preset")
    p.add_argument("--preset", choices=list_presets())
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true")
    add_export_command(sub)
    p = sub.add_parser("speed", help="training throughput (img/s) per stage: optimised vs plain fp32 eager")
    p.add_argument("--preset", choices=list_presets(), required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    p = sub.add_parser("evaluate", help="held-out PSNR, real/fake accuracy, ROC-AUC and mask AP of a checkpoint")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", help="source spec (default: the run's data.val)")
    p.add_argument("--crop", type=float, default=1.0, help="central crop fraction (1.0 = images as stored)")
    p.add_argument("--limit", type=int, default=0, help="score only the first N images")
    p = sub.add_parser("probe", help="linear probes on frozen conv1..conv5: top-1 per layer")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--checkpoint", type=Path, help="a trained run's checkpoint.pt")
    who.add_argument("--model", type=Path, help="an exported model folder, run by ONNX Runtime")
    who.add_argument(
        "--random", metavar="PRESET", help="a randomly initialised discriminator of this preset (--key=value overrides)"
    )
    p.add_argument("--layers", default="conv1,conv2,conv3,conv4,conv5", help="comma-separated")
    p.add_argument("--train-data", required=True, help="labelled source spec the probes train on")
    p.add_argument("--test-data", required=True, help="labelled source spec they are tested on")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument(
        "--batchnorm",
        choices=("game", "probe-data"),
        default="game",
        help="BatchNorm statistics: as the pretext left them, or re-estimated on the probe's training images",
    )
    p.add_argument("--limit", type=int, default=0, help="use a seeded random N images of each set (smoke runs)")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    p = sub.add_parser(
        "spot-eval", help="artifact spotting: ROC-AUC/AP/accuracies per drop rate, mask AP, false alarms"
    )
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--drop-rates", default="0.7,0.5,0.3,0.1", help="comma-separated")
    p.add_argument("--photos", type=Path, help="a folder of raw photographs scored per tile at full size")
    p.add_argument("--limit", type=int, default=0, help="score only the first N held-out images")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    p.add_argument("--generator", type=Path, help="make the pairs with another run's autoencoder + repair net")
    p = sub.add_parser(
        "report", help="docs/results.md (tables + PNG plots) from the probe and spot-eval JSON files in --results"
    )
    p.add_argument("--results", type=Path, default=Path("docs/results"))
    p.add_argument("--out", type=Path, default=Path("docs/results.md"))
    p = sub.add_parser("curve", help="a run's held-out pretext accuracy at every logged step, as JSON")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, help="also write it here (docs/results/pretext-NAME.json for the report)")
    p = sub.add_parser(
        "recover", help="a checkpoint of an exported model's discriminator (its run folder gone), checked against it"
    )
    p.add_argument("--model", type=Path, required=True, help="an exported model folder (model.onnx + model.json)")
    p.add_argument("--out", type=Path, required=True, help="the checkpoint to write")
    p.add_argument(
        "--network",
        choices=("disc", "features"),
        default="disc",
        help="the discriminator (the heads' network, default) or the feature network of a --features-from export",
    )
    sub.add_parser("keys", help="list every config key")
    return parser


def write_json(results: dict, out: Path | None) -> None:
    """Print the results; with --out, also write them there."""
    print(json.dumps(results, indent=2))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")


def cmd_train(args, rest: list[str]) -> None:
    cfg, state = resolve_config(args.preset, args.run_dir, rest)
    if args.dry_run:
        print(dump(cfg))
        return
    from .loop import train

    train(cfg, args.run_dir, progress=not args.no_progress, state=state)


def cmd_export(args, rest: list[str]) -> None:
    if not 0 <= args.threshold <= 1:  # an artifact score is in [0, 1]
        raise SystemExit(f"--threshold must be in [0, 1], got {args.threshold}")
    from .export import export
    from .probe import gap_summary, probe_summary

    metrics, probes = {}, []
    for path in args.metrics:  # spot-eval and evaluate files carry a summary; probe files their top-1
        report = json.loads(path.read_text())
        if "top1" in report:
            metrics.update(probe_summary(report))
            probes.append(report)
        else:
            metrics.update(report.get("summary", {k: v for k, v in report.items() if isinstance(v, (int, float))}))
    metrics.update(gap_summary(probes, [json.loads(p.read_text()) for p in args.reference_probes]))
    meta = export(
        args.checkpoint,
        args.out,
        args.name,
        args.version,
        metrics,
        args.train_command,
        args.threshold,
        args.features_from,
        args.features_train_command,
    )
    print(json.dumps({"out": str(args.out), "sha256": meta["sha256"], "export_check": meta["export_check"]}))


def cmd_speed(args, rest: list[str]) -> None:
    from .speed import measure

    cfg = load_config(args.preset, rest)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)  # before a minute of measuring, not after
    write_json(measure(cfg, args.steps), args.out)


def cmd_evaluate(args, rest: list[str]) -> None:
    from .evaluate import evaluate_checkpoint

    print(json.dumps(evaluate_checkpoint(args.checkpoint, args.data, args.crop, args.limit), indent=2))


def cmd_spot_eval(args, rest: list[str]) -> None:
    from .spot_eval import spot_eval

    rates = [float(r) for r in args.drop_rates.split(",")]
    write_json(spot_eval(args.checkpoint, rates, args.photos, args.limit, generator=args.generator), args.out)


def cmd_report(args, rest: list[str]) -> None:
    from .report import write_report

    write_report(args.results, args.out)
    print(args.out)


def cmd_curve(args, rest: list[str]) -> None:
    from .report import pretext_curve

    summary = args.run_dir / "summary.jsonl"  # each finished stage's last metrics and wall time
    stages = [json.loads(line) for line in summary.read_text().splitlines()] if summary.exists() else []
    write_json({"run": str(args.run_dir), "stages": stages, "curves": pretext_curve(args.run_dir)}, args.out)


def cmd_recover(args, rest: list[str]) -> None:
    from .recover import recover

    print(json.dumps(recover(args.model, args.out, network=args.network), indent=2))


COMMANDS = {
    "train": cmd_train,
    "export": cmd_export,
    "speed": cmd_speed,
    "evaluate": cmd_evaluate,
    "probe": lambda args, rest: write_json(run_probe(args, rest), args.out),
    "spot-eval": cmd_spot_eval,
    "report": cmd_report,
    "curve": cmd_curve,
    "recover": cmd_recover,
    "keys": lambda args, rest: print("\n".join(valid_keys())),
}


def main(argv: list[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = [parse_override(a) for a in rest]  # checked here, whatever the command
        if overrides and args.command not in ("train", "speed") and not (args.command == "probe" and args.random):
            raise ValueError(f"{args.command} takes no --key=value overrides: {rest}")
        COMMANDS[args.command](args, rest)
    except (KeyError, TypeError, ValueError, FileNotFoundError, checkpoint.CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
