"""bench/RESULTS.md and its plots from the suite's JSON (`python -m bench` calls this; rerun alone with
`python -m bench.report` to re-render a suite.json without measuring again)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from . import engine, gpu, peer_report
from .server import REPO

TARGETS = {"service_vs_engine": 0.6, "ours_vs_best_peer": 1.2, "x16_vs_engine": 0.9, "ort_vs_pytorch_b1": 2.0}


def best(rows: dict) -> tuple[str, dict]:
    """(clients, row) with the most images/s."""
    return max(rows.items(), key=lambda kv: kv[1]["images_per_s"])


def verdict(value: float, goal: float) -> str:
    return "met" if value >= goal else f"missed by {goal - value:.2f} ({100 * (goal - value) / goal:.0f}% short)"


def headline(s: dict) -> tuple[list[str], dict]:
    """The issue's four targets: measured ratio, goal, met or by how much it was missed. Each service row is
    held against the engine running the same graph: /features the trunk, /spot the whole graph."""
    eng = s["engine"]["rows"]
    tb, trunk_rate = max(eng["onnxruntime_trunk_with_decode"].items(), key=lambda kv: kv[1])
    wb, whole_rate = max(eng["onnxruntime_with_decode"].items(), key=lambda kv: kv[1])
    feats = s["service"]["features"]["on"]
    c1, r1 = best(feats)
    cs, rs = best(s["service"]["spot"]["on"])
    c16, r16 = best(s["service"]["features_16_per_request"]["on"])
    ort_pt = eng["onnxruntime"]["1"] / eng["pytorch_fp32"]["1"]
    ratios = {
        "service_vs_engine": r1["images_per_s"] / trunk_rate,
        "spot_vs_engine": rs["images_per_s"] / whole_rate,
        "x16_vs_engine": r16["images_per_s"] / trunk_rate,
        "ort_vs_pytorch_b1": ort_pt,
    }
    lines = [
        "| target | measured | goal | |",
        "|---|---|---|---|",
        f"| one image per request, `/features`: service / engine limit with decode (trunk) |"
        f" **{ratios['service_vs_engine']:.2f}** ({r1['images_per_s']:.0f} img/s at {c1} clients /"
        f" {trunk_rate:.0f} img/s at batch {tb}) | >= 0.6 | {verdict(ratios['service_vs_engine'], 0.6)} |",
        f"| one image per request, `/spot`: service / engine limit with decode (whole graph) |"
        f" **{ratios['spot_vs_engine']:.2f}** ({rs['images_per_s']:.0f} img/s at {cs} clients /"
        f" {whole_rate:.0f} img/s at batch {wb}) | >= 0.6 | {verdict(ratios['spot_vs_engine'], 0.6)} |",
    ]
    peers = s.get("peers", {"skipped": "not measured"})
    if "servers" in peers:
        peer_lines, peer_ratios = peer_report.target_rows(peers)
        lines += peer_lines
        ratios.update(peer_ratios)
    else:
        lines.append(f"| ours / best peer at the same concurrency | not measured: {peers['skipped']} | >= 1.2 | |")
    lines += [
        f"| 16 images per request, `/features`: service / engine limit with decode (trunk) |"
        f" **{ratios['x16_vs_engine']:.2f}** ({r16['images_per_s']:.0f} img/s at {c16} clients) | >= 0.9 |"
        f" {verdict(ratios['x16_vs_engine'], 0.9)} |",
        f"| ONNX Runtime / PyTorch eager fp32 at batch 1, whole graph | **{ort_pt:.2f}** ({eng['onnxruntime']['1']:.0f}"
        f" vs {eng['pytorch_fp32']['1']:.0f} img/s; trunk only:"
        f" {eng['onnxruntime_trunk']['1'] / eng['pytorch_trunk_fp32']['1']:.2f}) | >= 2 | {verdict(ort_pt, 2.0)} |",
    ]
    workers = s["service"].get("features_workers_per_core")
    if workers:
        n = s["hardware"]["cores"]
        cw, rw = best(workers["on"])
        cw16, rw16 = best(s["service"]["features_16_per_request_workers_per_core"]["on"])
        ratios["workers_vs_engine"] = rw["images_per_s"] / trunk_rate
        ratios["workers_x16_vs_engine"] = rw16["images_per_s"] / trunk_rate
        lines += [
            f"| the same two engine targets with `SPOT_WORKERS={n}` (a process per core, one ONNX Runtime thread"
            f" each: what the default `SPOT_WORKERS=0` chooses on a CPU): one image per request |"
            f" **{ratios['workers_vs_engine']:.2f}** ({rw['images_per_s']:.0f} img/s"
            f" at {cw} clients) | >= 0.6 | {verdict(ratios['workers_vs_engine'], 0.6)} |",
            f"| ... and 16 images per request | **{ratios['workers_x16_vs_engine']:.2f}** ({rw16['images_per_s']:.0f}"
            f" img/s at {cw16} clients) | >= 0.9 | {verdict(ratios['workers_x16_vs_engine'], 0.9)} |",
        ]
        spot_workers = s["service"].get("spot_workers_per_core")
        if spot_workers:
            csw, rsw = best(spot_workers["on"])
            ratios["workers_spot_vs_engine"] = rsw["images_per_s"] / whole_rate
            lines.append(
                f"| ... and `/spot`, one image per request (whole graph) | **{ratios['workers_spot_vs_engine']:.2f}**"
                f" ({rsw['images_per_s']:.0f} img/s at {csw} clients) | >= 0.6 |"
                f" {verdict(ratios['workers_spot_vs_engine'], 0.6)} |"
            )
    return lines, ratios


def service_table(on: dict, off: dict | None) -> list[str]:
    lines = [
        "| clients | img/s | p50 / p95 / p99 ms | images per run | server CPU (cores) | event loop CPU ms/request"
        " | other threads CPU ms/image | non-2xx |" + (" img/s batching off | p99 ms off | on / off |" if off else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if off else ""),
    ]
    for c, r in on.items():
        row = (
            f"| {c} | {r['images_per_s']:.0f} | {r['p50_ms']:.1f} / {r['p95_ms']:.1f} / {r['p99_ms']:.1f}"
            f" | {r['images_per_run']:.1f} | {r['cpu_cores']:.2f} | {r['event_loop_ms_per_request']:.2f}"
            f" | {r['other_threads_ms_per_image']:.2f} | {r['non2xx']} |"
        )
        if off:
            o = off[c]
            row += f" {o['images_per_s']:.0f} | {o['p99_ms']:.1f} | {r['images_per_s'] / o['images_per_s']:.2f} |"
        lines.append(row)
    return lines


def markdown(s: dict, gpu_run: dict | None = None) -> str:
    """RESULTS.md; `gpu_run` is a separate `python -m bench.gpu` run, quoted where the suite ran without a GPU."""
    out = [
        *intro(s),
        "## 1. Engine limit: ONNX Runtime called directly",
        "",
        engine.table(s["engine"]),
        "![engine](results/engine.png)",
        "",
        "## 2. The service",
        "",
        *service_section(s),
        "## 3. The peers: BentoML, LitServe, MLServer, PyTriton; same model, same work, same load",
        "",
        *peers_section(s),
        "",
        "## 4. Training throughput (images/s per stage, optimised vs plain fp32 eager)",
        "",
        *training_section(s),
        "",
        "## 5. GPU variant",
        "",
        *gpu_section(s, gpu_run),
        "",
        "## Profile: where the time goes",
        "",
        *profile_section(s),
    ]
    return "\n".join(out) + "\n"


def intro(s: dict) -> list[str]:
    """The title, how the run was made, and the targets' table."""
    hw = s["hardware"]
    head, _ = headline(s)
    return [
        "# Benchmark results",
        "",
        f"Written by `{s['command']}` at commit `{s['commit']}` (started {s['started']}, {s['minutes']} min) from"
        " `bench/results/suite.json`; do not edit by hand (bench/README.md explains the method and the misses).",
        "",
        f"Machine: {hw['cpu']}, {hw['cores']} cores, no GPU unless the GPU section says otherwise; Python"
        f" {hw['python']}, ONNX Runtime {hw['onnxruntime']}. Model for every row: `{s['model_dir']}`. Load: wrk,"
        f" one prepared multipart upload per request rotating through 200 JPEGs of 64 px, 127.0.0.1 only,"
        f" {s['seconds']} s per level after a 2 s warm-up; the server decodes every upload. Servers:"
        " `python -m service`, one process (`SPOT_WORKERS=1`) unless a table says otherwise, batching on: up"
        " to 64 images per run, 2 ms adaptive delay; off: `SPOT_MAX_BATCH_SIZE=1`; access log off. Speeds"
        " measured in this one run only; compare ratios.",
        "",
        "## The targets (issue 6)",
        "",
        *head,
        "",
    ]


def service_section(s: dict) -> list[str]:
    """Our server's tables: each route, batching on and off, 16 images per request, one ONNX Runtime thread,
    a process per core."""
    service, cores = s["service"], s["hardware"]["cores"]
    out = []
    names = {"features": "`/features?layers=conv5&pool=avg`", "spot": "`/spot?heatmap=none`"}
    for route, title in names.items():
        rows = service[route]
        out += [f"{title}, one image per request, batching on (and off):", ""]
        out += [*service_table(rows["on"], rows["off"]), ""]
    out += [
        "`/features`, 16 images per request, batching on:",
        "",
        *service_table(service["features_16_per_request"]["on"], None),
        "",
        "`/features`, one image per request, batching on, `SPOT_INTRA_OP_THREADS=1` (ONNX Runtime on one core,"
        " the event loop on the other; the default is one thread per core):",
        "",
        *service_table(service["features_1_onnxruntime_thread"]["on"], None),
        "",
    ]
    if "features_workers_per_core" in service:
        out += [
            f"`/features`, batching on, `SPOT_WORKERS={cores}`: {cores} server processes on one port, each with its"
            " own session (one ONNX Runtime thread) and batcher; one image per request, then 16:",
            "",
            *service_table(service["features_workers_per_core"]["on"], None),
            "",
            *service_table(service["features_16_per_request_workers_per_core"]["on"], None),
            "",
        ]
    if "spot_workers_per_core" in service:
        out += [
            f"`/spot?heatmap=none`, batching on, `SPOT_WORKERS={cores}`, one image per request:",
            "",
            *service_table(service["spot_workers_per_core"]["on"], None),
            "",
        ]
    return [*out, "![throughput](results/service.png) ![latency](results/latency.png)", ""]


def peers_section(s: dict) -> list[str]:
    peers = s.get("peers", {"skipped": "not measured"})
    if "servers" not in peers:
        return [f"Not measured: {peers['skipped']}."]
    return [
        f"`{peers['model_dir']}` behind every server, each doing the work through the service's own"
        " `ExportedModel` (bench/peers/work.py: the same ONNX Runtime sessions and trunk-only graph), so only"
        f" the serving layer differs; each answer is checked against the model first. Load: {peers['load']['http']}"
        f" for HTTP, {peers['load']['grpc']} for gRPC (wrk cannot speak it), {peers['seconds']} s per level;"
        " the load generator shares the 2 cores with the server, as for every row. Uploads go in each"
        " server's own way: multipart for ours, BentoML and LitServe; a BYTES tensor of the Open Inference"
        " Protocol for MLServer (base64 in JSON, its REST codec) and PyTriton (binary).",
        "",
        *peer_report.tables(peers),
        "",
        "![peers](results/peers.png)",
    ]


def training_section(s: dict) -> list[str]:
    if not s["training"]:
        return ["Not measured in this run."]
    variants = next(iter(s["training"].values()))["stages"]["ae"]
    out = ["| preset | stage | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
    for preset, t in s["training"].items():
        for stage, rows in t["stages"].items():
            cells = [f"{v['img_per_s']:.0f} ({v['vs_fp32_eager']:.2f}x)" for v in rows.values()]
            out.append(f"| {preset} (batch {t['batch_size']}) | {stage} | " + " | ".join(cells) + " |")
    return [*out, "", "Random tensors in, one optimiser step per batch (`python -m training speed`)."]


def gpu_section(s: dict, gpu_run: dict | None) -> list[str]:
    g = s.get("gpu", {"skipped": s.get("gpu_service", {}).get("skipped", "not measured")})
    if "skipped" not in g:
        return [gpu.body(g, level="###")]
    out = [f"Not run in this suite run: {g['skipped']} (it runs wherever ONNX Runtime has CUDA)."]
    if gpu_run:
        out += [
            "",
            f"The GPU variant on its own, `{gpu_run['command']}` at commit `{gpu_run['commit']}` on"
            f" {gpu_run['hardware']['gpu']} ({gpu_run['hardware']['cores']} CPU cores), model"
            f" `{gpu_run['model_dir']}`: [results/gpu.md](results/gpu.md).",
            "",
            *gpu.summary(gpu_run),
        ]
    return out


def profile_section(s: dict) -> list[str]:
    prof = s["profile"]
    if "skipped" in prof:
        return [f"Not profiled: {prof['skipped']}."]
    load = prof["load"]
    total = sum(prof["gil_ms_per_request"].values())
    out = [
        f"`{prof['route']}` at {prof['clients']} clients ({load['req_per_s']:.0f} req/s,"
        f" {load['images_per_run']:.1f} images per run), sampled by py-spy at 250 Hz while the event-loop thread"
        f" held the GIL. That thread"
        f" held it {100 * prof['gil_share_of_wall_time']:.0f}% of the time, {total:.2f} ms per request: on its own"
        f" that caps one process at {1000 / total:.0f} requests/s. Meanwhile the other threads (ONNX Runtime)"
        f" used {load['other_threads_ms_per_image']:.2f} ms of CPU per image and the whole server"
        f" {load['cpu_cores']:.2f} of {s['hardware']['cores']} cores.",
        "",
        "| stage (Python, event-loop thread) | ms per request | share |",
        "|---|---|---|",
    ]
    for stage, ms in prof["gil_ms_per_request"].items():
        out.append(f"| {stage} | {ms:.3f} | {100 * ms / total:.0f}% |")
    return out


def plots(s: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engine.plot(s["engine"], folder / "engine.png")
    series = {
        "/features, batching on": s["service"]["features"]["on"],
        "/features, batching off": s["service"]["features"]["off"],
        "/spot, batching on": s["service"]["spot"]["on"],
        "/spot, batching off": s["service"]["spot"]["off"],
        "/features, 16 images/request": s["service"]["features_16_per_request"]["on"],
    }
    if "features_workers_per_core" in s["service"]:
        series[f"/features, SPOT_WORKERS={s['hardware']['cores']}"] = s["service"]["features_workers_per_core"]["on"]
    if "servers" in s.get("peers", {}):
        peer_report.plot(s["peers"], folder / "peers.png")
    for metric, ylabel, name in (
        ("images_per_s", "images / s", "service.png"),
        ("p99_ms", "p99 latency (ms)", "latency.png"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label, rows in series.items():
            ax.plot([int(c) for c in rows], [r[metric] for r in rows.values()], "o-", label=label)
        if metric == "images_per_s":
            for row, style, graph in (
                ("onnxruntime_trunk_with_decode", "--", "trunk: /features"),
                ("onnxruntime_with_decode", ":", "whole graph: /spot"),
            ):
                limit = max(s["engine"]["rows"][row].values())
                ax.axhline(limit, color="grey", ls=style, label=f"engine limit with decode ({graph})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{s['model_dir']}, {s['hardware']['cores']} cores", fontsize=9)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)


def write(s: dict, folder: Path, results_md: Path) -> None:
    plots(s, folder)
    gpu_json = folder / "gpu.json"
    text = markdown(s, json.loads(gpu_json.read_text()) if gpu_json.exists() else None)
    relative = os.path.relpath(folder, results_md.parent)
    results_md.write_text(text.replace("](results/", f"]({relative}/"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--suite", type=Path, default=REPO / "bench" / "results" / "suite.json")
    p.add_argument("--results-md", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = p.parse_args()
    write(json.loads(args.suite.read_text()), args.suite.parent, args.results_md)


if __name__ == "__main__":
    main()
