"""The rotation pretext (its own row, beside the game, and with warped pictures), stopping a run whose
pretext stays at chance, and BatchNorm statistics re-estimated on a probe's training images."""

import json

import pytest
import torch

from training.config import load_config
from training.data import ImageArrayDataset, eval_transform, load_images
from training.networks import build_networks, to_disc_input
from training.optim import backward_each, make_optimizer
from training.probe import reestimate_batchnorm
from training.stages import set_phase, trainable
from training.steps import STEPS, rotated
from training.warps import sampling_grid, warp_flags, warped

from ..conftest import run_cli


def test_image_i_is_turned_by_i_mod_4_quarter_turns(real_batch):
    images = real_batch[0][:8]
    turned, labels = rotated(images)
    assert labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    for i in range(8):
        assert torch.equal(torch.rot90(turned[i], -int(labels[i]), dims=(-2, -1)), images[i])
    assert not torch.equal(turned[1], images[1])  # a real photo is not rotation-symmetric


def test_all_four_turns_show_every_image_at_each_turn(real_batch):
    images = real_batch[0][:3]
    turned, labels = rotated(images, all_four=True)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for i in range(12):
        assert torch.equal(torch.rot90(turned[i], -int(labels[i]), dims=(-2, -1)), images[i % 3])


def test_warped_or_not_is_independent_of_the_turn():
    bent = warp_flags(16)
    pairs = [(i % 4, bool(bent[i])) for i in range(16)]
    assert bent.sum() == 8 and all(pairs.count(p) == 2 for p in set(pairs)) and len(set(pairs)) == 8


def test_only_warped_pictures_are_bent():
    """A ramp stays a ramp under the zoom and shift every picture gets; a bent one curves. Both are resampled."""
    ramp = torch.linspace(-1, 1, 64).expand(8, 3, 64, 64).clone()  # brightness grows left to right
    bent = torch.tensor([False, True] * 4)
    out = warped(ramp, bent, torch.Generator().manual_seed(0))
    assert out.shape == ramp.shape and out.min() >= -1 and out.max() <= 1
    curvature = (out[..., 2:] - 2 * out[..., 1:-1] + out[..., :-2]).abs().amax((1, 2, 3))
    assert (curvature[~bent] < 1e-5).all() and (curvature[bent] > 1e-4).all()
    assert not torch.allclose(out[~bent], ramp[~bent], atol=1e-3)  # zoomed or shifted: resampled too


def test_no_sample_leaves_the_picture_and_the_edges_are_not_bent():
    """Nothing mirrored or smeared in from outside, and a straight edge in both classes: no border shortcut."""
    g = torch.Generator().manual_seed(0)
    bent = warp_flags(64)
    grid = sampling_grid(64, 64, 64, bent, g)
    assert grid.abs().max() <= 1
    plain = sampling_grid(64, 64, 64, torch.zeros(64, dtype=torch.bool), torch.Generator().manual_seed(0))
    shift = (grid - plain).abs()  # the bend alone: the same zoom and shift were drawn
    assert shift[~bent].max() == 0
    edge = torch.cat([shift[bent, 0], shift[bent, -1], shift[bent, :, 0], shift[bent, :, -1]], 1)
    assert edge.max() < 0.01 and shift[bent, 24:40, 24:40].mean() > 0.05  # ~1/3 px at the edges; pixels inside


def test_warps_ignore_autocast():
    images = torch.rand(8, 3, 32, 32) * 2 - 1
    bent = warp_flags(8)
    plain = warped(images, bent, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_amp = warped(images, bent, torch.Generator().manual_seed(0))
    assert torch.equal(plain, under_amp)


@pytest.mark.parametrize("stage, head", [("supervised", "classifier"), ("rotation", "rotation")])
def test_a_comparison_row_trains_its_whole_head_and_not_the_discriminators(stage, head):
    """Its classifier learns in full (fc1 and fc2 were frozen at their random start before 2026-12-05,
    as if they were the discriminator's heads); the real/fake and mask heads stay untouched."""
    cfg = load_config("tiny", ["--num_classes=10"])
    nets = build_networks(cfg.model)
    set_phase(nets, stage, cfg)
    assert all(p.requires_grad for p in trainable(nets[head], stage, cfg))
    assert {n for n, p in nets[head].named_parameters() if p.requires_grad} >= {"fc1.weight", "fc2.weight"}
    frozen = {n.split(".")[0] for n, p in nets["disc"].named_parameters() if not p.requires_grad}
    assert frozen == {"mask_head", "fc1", "bn_fc1", "fc2"}


def test_rotation_training_lowers_its_loss(real_batch):
    torch.manual_seed(0)
    cfg = load_config("tiny", ["--lr=1e-3"])
    nets = build_networks(cfg.model)
    trained = set_phase(nets, "rotation", cfg)
    opt = make_optimizer(trained, cfg)
    history = []
    for _ in range(40):
        losses, _ = STEPS["rotation"](nets, *real_batch, cfg)
        opt.zero_grad()
        backward_each(losses, trained)
        opt.step()
        history.append(losses["rotation"].item())
    assert sum(history[-5:]) < 0.7 * sum(history[:5])


def _train(run_dir, *extra):
    args = ["train", "--preset", "tiny", "--run-dir", str(run_dir), "--no-progress", "--log_every=5", *extra]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = [json.loads(line) for line in (run_dir / "summary.jsonl").read_text().splitlines()]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, metrics, result.stderr


@pytest.mark.parametrize("turns", [[], ["--rotation_all_four=true"], ["--rotation_all_four=true", "--warp_weight=1"]])
def test_a_rotation_run_logs_its_held_out_pretext_accuracy(tmp_path, cache_dir, turns):
    summary, metrics, _ = _train(tmp_path, "--stages=rotation", "--rotation_steps=20", *turns)
    assert [m["step"] for m in metrics] == [5, 10, 15, 20]
    assert all(0 <= m["val/rotation_acc"] <= 1 for m in metrics)
    warp = "--warp_weight=1" in turns
    assert all(("val/warp_acc" in m and 0 <= m["val/warp_acc"] <= 1 and "acc/warp" in m) == warp for m in metrics)
    assert summary[-1]["stage"] == "rotation" and summary[-1]["steps"] == 20


def test_a_combined_run_logs_rotation_beside_spotting(tmp_path, cache_dir):
    _, metrics, _ = _train(tmp_path, "--stages=ae,spot", "--ae_steps=5", "--spot_steps=10", "--rotation_weight=0.5")
    spot = [m for m in metrics if m["stage"] == "spot"]
    assert spot and all({"val/rotation_acc", "val/auc", "acc/rotation"} <= set(m) for m in spot)


def test_a_run_at_chance_stops_at_the_check_and_says_so(tmp_path, cache_dir):
    # A margin of 1 counts any accuracy as chance: the run must stop at the first log past step 7.
    summary, metrics, stderr = _train(
        tmp_path, "--stages=rotation", "--rotation_steps=40", "--stop_at_chance_step=7", "--chance_margin=1"
    )
    assert summary[-1]["stopped_at_chance"] is True and summary[-1]["steps"] == 10
    assert metrics[-1]["step"] == 10 and "held-out pretext accuracy at chance" in stderr
    # The same run above chance (any accuracy beats a margin of -1) goes to the end.
    summary, _, _ = _train(
        tmp_path / "b", "--stages=rotation", "--rotation_steps=15", "--stop_at_chance_step=7", "--chance_margin=-1"
    )
    assert summary[-1]["steps"] == 15 and "stopped_at_chance" not in summary[-1]


def test_reestimated_batchnorm_holds_the_probe_images_statistics(data_root, cache_dir):
    cfg = load_config("tiny")
    disc = build_networks(cfg.model)["disc"]
    data = ImageArrayDataset(load_images("cifar10-sample", data_root, cache_dir), eval_transform(cfg.data, 32))
    images = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():
        pre_bn = disc.conv5(disc.forward_intermediates(to_disc_input(images), [3])[0])
    assert reestimate_batchnorm(disc, data, images=len(data), batch_size=7) == 2  # bn5 and the head's bn_fc1
    assert not disc.training and disc.bn5.momentum == pytest.approx(0.025)  # left as it was found
    # batches weigh equally (the last one is smaller), so the mean of the means is close, not exact
    assert torch.allclose(disc.bn5.running_mean, pre_bn.mean((0, 2, 3)), rtol=1e-3, atol=1e-3)
    assert torch.allclose(disc.bn5.running_var, pre_bn.var((0, 2, 3)), rtol=0.05)


def test_an_exported_model_cannot_have_its_batchnorm_reestimated(cache_dir):
    result = run_cli(
        "probe",
        "--model",
        "models/spot-tiny64",
        "--batchnorm",
        "probe-data",
        "--train-data",
        "cifar10-sample",
        "--test-data",
        "cifar10-sample",
    )
    assert result.returncode == 2 and "folded" in result.stderr
