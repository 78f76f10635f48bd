"""The export contract (DESIGN.md): names, dynamic batch, one self-contained file, model.json, and
ONNX Runtime equal to PyTorch within 1e-4 on random and real images."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from contract.spec import file_sha256
from training import checkpoint
from training.export import LAYERS, OUTPUTS, SpotExport, best_probe_layer, load_discriminator, real_batch
from training.probe import gap_summary, probe_summary, probe_tables

from ..conftest import REPO, perturbed_copy, run_cli


@pytest.fixture(scope="module")
def exported(tmp_path_factory, cache_dir, data_root):
    root = tmp_path_factory.mktemp("export")
    cmd = [sys.executable, "-m", "training", "train", "--preset", "tiny", "--run-dir", str(root / "run"),
           "--no-progress", "--ae_steps=10", "--spot_steps=10", "--log_every=5"]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("export", "--checkpoint", str(root / "run" / "checkpoint.pt"), "--out", str(root / "spot-tiny"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["sha256"]
    return root


def test_the_export_folder_holds_one_self_contained_model(exported):
    folder = exported / "spot-tiny"
    assert sorted(p.name for p in folder.iterdir()) == ["MODEL_CARD.md", "model.json", "model.onnx"]
    model = onnx.load(str(folder / "model.onnx"))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == OUTPUTS
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def test_model_json_describes_the_model(exported):
    folder = exported / "spot-tiny"
    meta = json.loads((folder / "model.json").read_text())
    assert meta["sha256"] == file_sha256(folder / "model.onnx")
    assert meta["input"]["shape"] == [None, 3, 32, 32]
    assert meta["preprocessing"]["mean"] == [123.68, 116.78, 103.94]
    outputs = {o["name"]: o["shape"] for o in meta["outputs"]}
    assert outputs["real_logit"] == [None] and outputs["mask_logits"] == [None, 1, 4, 4]
    assert outputs["conv5"] == [None, 32, 4, 4]
    assert meta["training"]["preset"] == "tiny" and meta["training"]["steps"]["completed"] == ["ae", "spot"]
    assert meta["training"]["git_commit"] and meta["training"]["hardware"]
    for layer, pool in meta["probe_pooling"].items():
        assert pool["dims"] == outputs[layer][1] * pool["grid"] ** 2 <= 9600
    checks = [v for k, v in meta["export_check"].items() if k != "tolerance_scaled"]
    assert len(checks) == 3 and all(c["max_scaled_diff"] <= 1e-4 for c in checks)
    card = (folder / "MODEL_CARD.md").read_text()
    assert meta["sha256"] in card and "real_logit" in card


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_runtime_matches_pytorch(exported, batch, data_root):
    disc, cfg, _ = load_discriminator(exported / "run" / "checkpoint.pt")
    session = ort.InferenceSession(str(exported / "spot-tiny" / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {
        "random": torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch + 10)) * 60,
        "real": real_batch(cfg, batch),
    }
    for x in inputs.values():
        with torch.no_grad():
            expected = [t.numpy() for t in SpotExport(disc)(x)]
        got = session.run(OUTPUTS, {"images": x.numpy()})
        for name, g, e in zip(OUTPUTS, got, expected, strict=False):
            assert g.shape == e.shape and g.shape[0] == batch
            assert np.abs(g - e).max() <= 1e-4 * max(1.0, np.abs(e).max()), name  # relative for big features
            if name in ("real_logit", "mask_logits"):
                assert np.abs(g - e).max() <= 1e-4, name  # the heads: absolute


def test_export_of_a_missing_checkpoint_is_a_clear_error(tmp_path):
    result = run_cli("export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_evaluation_metrics_reach_model_json_and_the_card(exported, tmp_path):
    report = tmp_path / "spot.json"
    report.write_text(json.dumps({"summary": {"spot/roc_auc@drop0.7": 0.5123, "spot/false_alarm_raw_photos": 0.25}}))
    probe_report = tmp_path / "probe.json"
    probe_report.write_text(json.dumps({"test": "tiny-imagenet:val", "top1": {"conv5": 0.12345}, "classes": 200}))
    ckpt = exported / "run" / "checkpoint.pt"
    result = run_cli("export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m"), "--metrics", str(report),
                     str(probe_report))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["metrics"] == {
        "spot/roc_auc@drop0.7": 0.5123,
        "spot/false_alarm_raw_photos": 0.25,
        "probe_top1/tiny-imagenet:val/conv5": 0.1235,
    }
    card = (tmp_path / "m" / "MODEL_CARD.md").read_text()
    for name, value in meta["metrics"].items():
        assert f"| {name} | {value} |" in card
    assert meta["default_layer"] == "conv5" and "`/features` returns `conv5`" in card


def test_gap_summary_names_each_further_reference_and_refuses_a_shared_key():
    def probe(model, top1):
        return {"model": model, "test": "t", "top1": dict(zip(LAYERS, top1, strict=True))}

    ours, random = probe("x", [0.2] * 5), probe("random:tiny", [0.1] * 5)
    first, fixed = probe("runs/long/checkpoint.pt", [0.3] * 5), probe("runs/fixed/checkpoint.pt", [0.5] * 5)
    assert gap_summary([ours], [random, first, fixed]) == {"probe_gap_closed/t": 0.5, "probe_gap_closed/t/fixed": 0.25}
    assert gap_summary([ours], [fixed, random, first]) == {"probe_gap_closed/t": 0.25, "probe_gap_closed/t/long": 0.5}
    with pytest.raises(ValueError, match="twice or empty"):
        gap_summary([ours], [random, first, fixed, probe("runs/fixed/checkpoint.pt", [0.4] * 5)])


def test_reference_probes_add_the_gap_closed_per_test_set(exported, tmp_path):
    def probe_file(name, model, test, top1):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"model": model, "test": test, "top1": dict(zip(LAYERS, top1, strict=True))}))
        return str(path)

    ours = probe_file("ours", "checkpoint:x", "tiny-imagenet:val", [0.10, 0.20, 0.20, 0.20, 0.20])
    random = probe_file("random", "random:tiny", "tiny-imagenet:val", [0.10, 0.10, 0.10, 0.10, 0.10])
    supervised = probe_file("sup", "checkpoint:s", "tiny-imagenet:val", [0.10, 0.30, 0.20, 0.50, 0.30])
    fixed = probe_file("fixed", "runs/sup-fixed/checkpoint.pt", "tiny-imagenet:val", [0.1, 0.3, 0.3, 0.3, 0.3])
    other = probe_file("c10", "checkpoint:x", "cifar10:test", [0.5] * 5)  # no references for it: no gap
    ckpt = exported / "run" / "checkpoint.pt"
    result = run_cli("export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m"), "--metrics", ours, other,
                     "--reference-probes", random, supervised, fixed)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    # conv2..conv5: (0.2-0.1)/(0.3-0.1) = 0.5, 1.0, 0.25, 0.5 -> 0.5625
    assert meta["metrics"]["probe_gap_closed/tiny-imagenet:val"] == 0.5625
    assert meta["metrics"]["probe_gap_closed/tiny-imagenet:val/sup-fixed"] == 0.5  # a second reference, named
    assert not any(k.startswith("probe_gap_closed/cifar10") for k in meta["metrics"])
    assert "| probe_gap_closed/tiny-imagenet:val | 0.5625 |" in (tmp_path / "m" / "MODEL_CARD.md").read_text()


def test_the_default_layer_is_the_best_probe_layer_on_the_models_own_data():
    top1 = {"tiny-imagenet:val": [0.10, 0.12, 0.15, 0.14, 0.11], "cifar10:test": [0.57, 0.59, 0.58, 0.61, 0.55]}
    metrics = {f"probe_top1/{t}/conv{i + 1}": v for t, row in top1.items() for i, v in enumerate(row)}
    assert best_probe_layer(metrics, "tiny-imagenet:train")[0] == "conv3"
    assert best_probe_layer(metrics, "cifar10:train")[0] == "conv4"
    only_c10 = {k: v for k, v in metrics.items() if "cifar10" in k}
    assert best_probe_layer(only_c10, "tiny-imagenet:train") == (
        "conv4",
        "the best top-1 of the cifar10:test linear probe",
    )
    assert best_probe_layer({"spot/roc_auc@drop0.7": 0.9}, "tiny-imagenet:train")[0] == "conv5"


def test_probe_of_the_onnx_export_equals_the_probe_of_its_checkpoint(exported):
    """`probe --model` measures the served model itself, and agrees with the checkpoint's probe."""
    common = ["--train-data", "cifar10-sample", "--test-data", "cifar10:test", "--limit", "1000", "--epochs", "2",
              "--layers", "conv2,conv5"]  # fmt: skip
    runs = {}
    for who in (["--checkpoint", str(exported / "run" / "checkpoint.pt")], ["--model", str(exported / "spot-tiny")]):
        result = run_cli("probe", *who, *common)
        assert result.returncode == 0, result.stderr[-2000:]
        runs[who[0]] = json.loads(result.stdout)
    torch_run, onnx_run = runs["--checkpoint"], runs["--model"]
    assert onnx_run["model"].startswith("onnx:") and set(onnx_run["top1"]) == {"conv2", "conv5"}
    for layer, acc in torch_run["top1"].items():
        assert abs(onnx_run["top1"][layer] - acc) <= 0.002  # features equal within 1e-4: at most 2 of 1,000 flip
    assert probe_summary(onnx_run) == {f"probe_top1/cifar10:test/{k}": round(v, 4) for k, v in onnx_run["top1"].items()}
    assert probe_tables(probe_summary(onnx_run)) == {
        "cifar10:test": {k: round(v, 4) for k, v in onnx_run["top1"].items()}
    }


def test_probe_rejects_unknown_layers(exported):
    result = run_cli("probe", "--model", str(exported / "spot-tiny"), "--train-data", "cifar10-sample",
                     "--test-data", "cifar10:test", "--layers", "conv9")  # fmt: skip
    assert result.returncode == 2 and "conv9" in result.stderr and "conv1" in result.stderr


def test_a_run_started_from_another_runs_autoencoder_counts_its_stage_1_time(exported, tmp_path):
    first = exported / "run"
    cmd = [sys.executable, "-m", "training", "train", "--run-dir", str(tmp_path / "run"), "--preset", "tiny",
           "--no-progress", "--stages=spot", "--spot_steps=3", f"--init_from={first / 'checkpoint.pt'}"]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("export", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--out", str(tmp_path / "m"),
                     "--threshold", "0.7")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    stage1 = next(json.loads(line) for line in (first / "summary.jsonl").read_text().splitlines())
    init = meta["training"]["initialised_from"]
    assert init["stages"] == {"ae": stage1["steps"]} and stage1["steps"] == 10
    assert init["wall_time_s"] == stage1["wall_time_s"]
    card = (tmp_path / "m" / "MODEL_CARD.md").read_text()
    total = meta["training"]["wall_time_s"] + stage1["wall_time_s"]
    assert f"{total:.0f} s in all: {stage1['wall_time_s']:.0f} s in the run of" in card and "(ae 10 steps)" in card
    assert meta["spot_threshold"] == 0.7 and "exceeds 0.7" in card


def test_provenance_follows_a_chain_of_runs_and_the_card_adds_them_up(tmp_path):
    """A run from a run from a run (v6's features: quirk-more <- quirk <- raw25's autoencoder): every run's
    time counts, each named with the stages taken from it."""
    from training.card import wall_time
    from training.config import dump, load_config
    from training.export import init_provenance

    def run(name: str, summary: list[dict], **overrides) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(dump(load_config("tiny", overrides)))
        (folder / "summary.jsonl").write_text("".join(json.dumps(s) + "\n" for s in summary))
        return folder / "checkpoint.pt"

    a = run(
        "a", [{"stage": "ae", "steps": 10, "wall_time_s": 7.0}, {"stage": "spot", "steps": 20, "wall_time_s": 19.0}]
    )
    b = run("b", [{"stage": "spot", "steps": 50, "wall_time_s": 30.0}], **{"train.init_from": str(a)})
    cfg = load_config("tiny", {"train.init_from": str(b), "train.init_networks": "ae,disc,repair"})
    init = init_provenance(cfg)
    assert init["stages"] == {"spot": 50} and init["wall_time_s"] == 30.0
    assert init["initialised_from"] == {
        "checkpoint": str(a),
        "networks": "ae",
        "stages": {"ae": 10},
        "wall_time_s": 7.0,
    }
    card = wall_time({"wall_time_s": 100.0, "initialised_from": init})
    assert card == (f"137 s in all: 7 s in the run of `{a}` (ae 10 steps), 30 s in the run of `{b}` (spot 50 steps),"
                    " then 100 s here")  # fmt: skip
    # a discriminator trained on by another pretext (version 9's features: rotation steps on rotation steps)
    c = run(
        "c",
        [{"stage": "rotation", "steps": 40, "wall_time_s": 12.0}],
        **{"train.init_from": str(b), "train.init_networks": "disc"},
    )
    init = init_provenance(load_config("tiny", {"train.init_from": str(c), "train.init_networks": "disc"}))
    assert init["stages"] == {"rotation": 40} and init["wall_time_s"] == 12.0
    assert wall_time({"wall_time_s": 1.0, "initialised_from": init}).startswith("50 s in all: 7 s in the run of")


def test_a_run_from_a_recovered_checkpoint_counts_the_runs_its_model_json_named(tmp_path):
    """Version 8's features: version 7's feature network recovered from its export (no run folder left), then
    trained on. The recovered checkpoint carries its runs' provenance, and the card adds their time up."""
    from training.card import wall_time
    from training.config import load_config
    from training.export import init_provenance

    earlier = {"checkpoint": "runs/a/checkpoint.pt", "networks": "ae", "stages": {"ae": 10}, "wall_time_s": 7.0}
    recovered = tmp_path / "v7-features" / "checkpoint.pt"
    state = {"config": {}, "stage": "spot", "step": 50, "completed": ["spot"], "networks": {}, "wall_time": 30.0}
    provenance = {"initialised_from": earlier, "recovered_from": {"model": "m", "network": "features"}}
    recovered.parent.mkdir()
    checkpoint.save(recovered, {**state, **provenance})
    init = init_provenance(load_config("tiny", {"train.init_from": str(recovered), "train.init_networks": "disc"}))
    assert init["stages"] == {"spot": 50} and init["wall_time_s"] == 30.0 and init["initialised_from"] == earlier
    assert init["recovered_from"]["network"] == "features"
    card = wall_time({"wall_time_s": 100.0, "initialised_from": init})
    assert card == (f"137 s in all: 7 s in the run of `runs/a/checkpoint.pt` (ae 10 steps), 30 s in the run of"
                    f" `{recovered}` (spot 50 steps), then 100 s here")  # fmt: skip


def test_features_from_another_checkpoint_beside_the_heads(exported, tmp_path):
    """--features-from: conv1..conv5 are the other checkpoint's, the heads --checkpoint's, in one graph;
    the service's feature-only and heads-only sessions give the same numbers as the whole graph."""
    from service.model import HEAD_OUTPUTS, ExportedModel

    perturbed_copy(exported / "run" / "checkpoint.pt", "disc", 0.05, tmp_path / "other")
    out = tmp_path / "combined"
    result = run_cli("export", "--checkpoint", str(exported / "run" / "checkpoint.pt"), "--out", str(out),
                     "--features-from", str(tmp_path / "other" / "checkpoint.pt"),
                     "--features-train-command", "the features' command")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    heads_disc, cfg, _ = load_discriminator(exported / "run" / "checkpoint.pt")
    features_disc, _, _ = load_discriminator(tmp_path / "other" / "checkpoint.pt")
    x = real_batch(cfg, 8)
    with torch.no_grad():
        heads = dict(zip(OUTPUTS, [t.numpy() for t in SpotExport(heads_disc)(x)], strict=False))
        features = dict(zip(OUTPUTS, [t.numpy() for t in SpotExport(features_disc)(x)], strict=False))
    got = dict(
        zip(OUTPUTS, ort.InferenceSession(str(out / "model.onnx")).run(OUTPUTS, {"images": x.numpy()}), strict=False)
    )
    for name in OUTPUTS:
        expected = heads[name] if name in HEAD_OUTPUTS else features[name]
        other = features[name] if name in HEAD_OUTPUTS else heads[name]
        assert np.abs(got[name] - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max()), name
        assert np.abs(got[name] - other).max() > 1e-3 * max(1.0, np.abs(expected).max()), name

    model = ExportedModel(out, "cpu")
    assert np.allclose(model.run(x.numpy(), HEAD_OUTPUTS)["real_logit"], got["real_logit"], atol=1e-5)
    assert np.allclose(model.run(x.numpy(), model.layers)["conv5"], got["conv5"], atol=1e-4)
    meta = json.loads((out / "model.json").read_text())
    assert meta["features_from"]["checkpoint"] == str(tmp_path / "other" / "checkpoint.pt")
    # a perturbed copy of the heads' run: the same lineage (a run it started from counts in its wall time)
    assert meta["features_from"]["initialised_from"] == meta["training"]["initialised_from"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "Features from: `" in card and "`the features' command`" in card


def test_recover_rebuilds_the_exported_discriminator(exported, tmp_path):
    """A model whose run folder is gone: `recover` gives back a checkpoint whose own export answers as the
    original does, and whose model.json still says where the weights came from."""
    original = exported / "spot-tiny"
    result = run_cli("recover", "--model", str(original), "--out", str(tmp_path / "recovered.pt"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert max(json.loads(result.stdout)["max_scaled_diff"].values()) <= 1e-4
    result = run_cli("export", "--checkpoint", str(tmp_path / "recovered.pt"), "--out", str(tmp_path / "again"))
    assert result.returncode == 0, result.stderr[-3000:]
    images = np.random.default_rng(0).normal(0, 60, (5, 3, 32, 32)).astype(np.float32)
    before, after = (
        ort.InferenceSession(str(f / "model.onnx")).run(None, {"images": images})
        for f in (original, tmp_path / "again")
    )
    for a, b in zip(before, after, strict=False):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(a).max())))
    meta = json.loads((tmp_path / "again" / "model.json").read_text())
    old = json.loads((original / "model.json").read_text())
    assert meta["training"]["recovered_from"]["sha256"] == old["sha256"]
    assert meta["training"]["steps"] == old["training"]["steps"]


def test_recover_refuses_a_graph_of_another_architecture(exported, tmp_path):
    model = onnx.load(str(exported / "spot-tiny" / "model.onnx"))
    kept = [i for i in model.graph.initializer if not i.name.startswith("disc.conv3")]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    folder = tmp_path / "broken"
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "model.json").write_text((exported / "spot-tiny" / "model.json").read_text())
    result = run_cli("recover", "--model", str(folder), "--out", str(tmp_path / "x.pt"))
    assert result.returncode != 0 and "conv3" in result.stderr
    assert not (tmp_path / "x.pt").exists()


def test_recover_rebuilds_each_network_of_a_combined_export(exported, tmp_path):
    """An export with --features-from holds two networks: `recover --network features` gives back the
    feature network's conv1..conv5 (the start of a run that trains those features on), `--network disc`
    the heads' network, each equal to the checkpoint it came from; an export of one network has no
    feature network to recover."""
    perturbed_copy(exported / "run" / "checkpoint.pt", "disc", 0.05, tmp_path / "other")
    out = tmp_path / "combined"
    result = run_cli("export", "--checkpoint", str(exported / "run" / "checkpoint.pt"), "--out", str(out),
                     "--features-from", str(tmp_path / "other" / "checkpoint.pt"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    _, cfg, _ = load_discriminator(exported / "run" / "checkpoint.pt")
    x = real_batch(cfg, 8)
    for network, source in (("features", tmp_path / "other"), ("disc", exported / "run")):
        result = run_cli("recover", "--model", str(out), "--out", str(tmp_path / f"{network}.pt"), "--network", network)
        assert result.returncode == 0, result.stderr[-3000:]
        recovered, _, _ = load_discriminator(tmp_path / f"{network}.pt")
        original, _, _ = load_discriminator(source / "checkpoint.pt")
        with torch.no_grad():
            for a, b in zip(recovered.forward_intermediates(x), original.forward_intermediates(x), strict=True):
                assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(b.abs().max()))), network
    features_meta = json.loads((out / "model.json").read_text())["features_from"]
    assert checkpoint.load(tmp_path / "features.pt")["command"] == features_meta["command"]

    result = run_cli("recover", "--model", str(exported / "spot-tiny"), "--out", str(tmp_path / "x.pt"),
                     "--network", "features")  # fmt: skip
    assert result.returncode != 0 and "no separate features network" in result.stderr
    assert not (tmp_path / "x.pt").exists()
