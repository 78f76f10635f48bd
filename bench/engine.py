"""The engine limit: the exported model in ONNX Runtime called directly over a batch-size sweep (decoded
input, and with the service's own JPEG decode + crop + resize + normalise in the loop), beside the same
architecture in PyTorch eager (fp32 and bf16 autocast), FLOPs per image from the ONNX graph, and the
fraction of this CPU's measured matmul peak that each reaches.

    python -m bench.engine --model-dir models/spot-tiny64 --out bench/results/engine.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx

from contract.views import centre_view
from service.images import decode
from service.model import HEAD_OUTPUTS, ExportedModel, cut_graph

from .context import commit, hardware, timed
from .load import jpeg_crops
from .server import REPO

BATCHES = (1, 4, 16, 64, 256)


def macs_per_image(model: Path | onnx.ModelProto) -> int:
    """Multiply-accumulates of the Conv and Gemm/MatMul nodes for one image (shape inference at batch 1)."""
    model = onnx.load(str(model)) if isinstance(model, Path) else model
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    model = onnx.shape_inference.infer_shapes(model)
    values = [*model.graph.input, *model.graph.value_info, *model.graph.output]
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    macs = 0
    for node in model.graph.node:
        out = shapes[node.output[0]]
        if node.op_type == "Conv":  # weight [Cout, Cin / groups, kh, kw]: each output element costs Cin/g*kh*kw
            macs += int(np.prod(out[1:])) * int(np.prod(shapes[node.input[1]][1:]))
        elif node.op_type in ("Gemm", "MatMul"):  # each output element is a dot product over A's last axis
            transposed = any(a.name == "transA" and a.i for a in node.attribute)
            a = shapes[node.input[0]]
            macs += int(np.prod(out)) * (a[-2] if transposed else a[-1])
    return macs


def matmul_peak_gflops(seconds: float = 2.0, n: int = 2048) -> float:
    """fp32 GFLOP/s of an n x n matrix product in ONNX Runtime on all cores: the practical peak of this CPU
    (MLAS's GEMM reaches about twice PyTorch's matmul here, so it is the honest reference)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(rng.random((n, n), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = rng.random((n, n), np.float32)
    return timed(lambda: session.run(None, {"a": a}), 2 * n**3, seconds) / 1e9


def onnxruntime_rows(model: ExportedModel, jpegs: list[bytes], seconds: float) -> dict:
    """The heads' graph (what /spot runs: the whole graph when one network gives every output) and the
    trunk alone (what /features runs: `ExportedModel` cuts the graph down to what is asked for), on
    decoded input and with the service's decode."""
    rows = {
        k: {} for k in ("onnxruntime", "onnxruntime_with_decode", "onnxruntime_trunk", "onnxruntime_trunk_with_decode")
    }
    rng = np.random.default_rng(0)
    for b in BATCHES:
        x = rng.uniform(-120, 130, (b, 3, model.size, model.size)).astype(np.float32)
        chunk = [jpegs[i % len(jpegs)] for i in range(b)]

        def decode_and_run(names, chunk=chunk):
            rgbs = [decode(data, "x.jpg", 50_000_000, {"JPEG"}) for data in chunk]
            model.run(model.normalize_batch([centre_view(rgb, model.size, model.crop_fraction) for rgb in rgbs]), names)

        for suffix, names in (("", HEAD_OUTPUTS), ("_trunk", model.layers)):
            rows[f"onnxruntime{suffix}"][b] = timed(lambda x=x, names=names: model.run(x, names), b, seconds)
            rows[f"onnxruntime{suffix}_with_decode"][b] = timed(lambda names=names: decode_and_run(names), b, seconds)
    return rows


def pytorch_rows(meta: dict, seconds: float) -> dict:
    """The same computations in PyTorch eager (random weights: speed does not depend on them): the whole
    exported graph (feature maps and both heads) in fp32 and bf16 autocast, and the trunk alone in fp32."""
    import torch

    from training.config import Config
    from training.export import SpotExport
    from training.networks import build_networks

    disc = build_networks(Config.from_dict(meta["training"]["config"]).model)["disc"].eval()
    whole = SpotExport(disc).eval()
    size = meta["preprocessing"]["input_size"]
    rows = {"pytorch_fp32": {}, "pytorch_bf16": {}, "pytorch_trunk_fp32": {}}
    for b in BATCHES:
        x = torch.randn(b, 3, size, size) * 60
        with torch.inference_mode():
            rows["pytorch_fp32"][b] = timed(lambda x=x: whole(x), b, seconds)
            rows["pytorch_trunk_fp32"][b] = timed(lambda x=x: disc.forward_intermediates(x), b, seconds)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                rows["pytorch_bf16"][b] = timed(lambda x=x: whole(x), b, seconds)
    return rows


def markdown(report: dict) -> str:
    hw = report["hardware"]
    return (
        f"Command: `{report['command']}` at commit `{report['commit']}`; {hw['cpu']}, {hw['cores']} cores,"
        f" ONNX Runtime {hw['onnxruntime']}. " + table(report)
    )


def table(report: dict) -> str:
    """Model, FLOPs and peak in a sentence, then images/s per batch size for every row."""
    flop = 2 * report["macs_per_image"]
    lines = [
        f"Model `{report['model_dir']}`: {flop / 1e6:.1f} MFLOP per image,"
        f" {2 * report['trunk_macs_per_image'] / 1e6:.1f} in the trunk (Conv + Gemm multiply-adds x 2, from the ONNX"
        f" graph). Peak: {report['peak_gflops']:.0f} GFLOP/s, an"
        " fp32 2048x2048 matrix product in ONNX Runtime on all cores (the practical peak, not the data-sheet one).",
        "",
        "| batch | " + " | ".join(report["rows"]) + " | ONNX Runtime / PyTorch fp32, whole graph | same, trunk"
        " | ONNX Runtime % of peak, whole graph | same, trunk |",
        "|---|" + "---|" * (len(report["rows"]) + 4),
    ]
    rows = report["rows"]
    for b in map(str, BATCHES):
        cells = [f"{rows[k][b]:.0f}" for k in rows]
        whole = rows["onnxruntime"][b] / rows["pytorch_fp32"][b]
        trunk = rows["onnxruntime_trunk"][b] / rows["pytorch_trunk_fp32"][b]
        peak_whole = 100 * rows["onnxruntime"][b] * flop / 1e9 / report["peak_gflops"]
        peak_trunk = (
            100 * rows["onnxruntime_trunk"][b] * 2 * report["trunk_macs_per_image"] / 1e9 / report["peak_gflops"]
        )
        lines.append(
            f"| {b} | " + " | ".join(cells) + f" | {whole:.2f} | {trunk:.2f} | {peak_whole:.0f}% | {peak_trunk:.0f}% |"
        )
    return "\n".join(lines) + '\n\nImages per second; "trunk" = conv1..conv5 only, the graph /features runs.\n'


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in report["rows"].items():
        ax.plot([int(b) for b in row], list(row.values()), "o-", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_title(f"engine limit: {report['model_dir']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def measure(model_dir: Path, photos: Path, seconds: float) -> dict:
    """Everything above for one model, as the report's JSON (rows: images/s per batch size)."""
    model = ExportedModel(model_dir, "cpu")
    graph = onnx.load(str(model_dir / "model.onnx"))
    rows = onnxruntime_rows(model, jpeg_crops(photos, count=256, size=96), seconds)
    rows.update(pytorch_rows(model.meta, seconds))
    return {
        "commit": commit(),
        "hardware": hardware(),
        "model_dir": str(model_dir.relative_to(REPO) if model_dir.is_relative_to(REPO) else model_dir),
        "macs_per_image": macs_per_image(cut_graph(graph, HEAD_OUTPUTS)),
        "trunk_macs_per_image": macs_per_image(cut_graph(graph, model.layers)),
        "peak_gflops": matmul_peak_gflops(),
        "rows": {k: {str(b): v for b, v in row.items()} for k, row in rows.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=REPO / "models" / "spot-tiny64")
    p.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "photos")
    p.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    p.add_argument("--out", type=Path, help="JSON here; the markdown table (.md) and plot (.png) beside it")
    args = p.parse_args()
    report = {"command": "python -m bench.engine " + " ".join(__import__("sys").argv[1:])}
    report.update(measure(args.model_dir.resolve(), args.photos, args.seconds))
    print(markdown(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(report))
        plot(report, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
