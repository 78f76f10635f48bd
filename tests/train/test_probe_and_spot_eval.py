"""Linear probes and the spotting evaluation, on the tiny preset and real images."""

import numpy as np
import pytest
import torch

from contract.views import tiles
from training.config import load_config
from training.networks import build_networks
from training.probe import ProbeSchedule, gap_closed, lr_at, probe, torch_features
from training.spot_eval import detection_metrics


def test_probe_on_real_labels_beats_chance(data_root, cache_dir):
    torch.manual_seed(0)
    cfg = load_config("tiny")
    disc = build_networks(cfg.model)["disc"]
    result = probe(torch_features(disc), cfg, "cifar10-sample", "cifar10:test", ProbeSchedule(epochs=4), limit=2000)
    assert result["classes"] == 10 and result["train_images"] == result["test_images"] == 2000
    assert set(result["top1"]) == {"conv1", "conv2", "conv3", "conv4", "conv5"}
    assert all(0.0 <= v <= 1.0 for v in result["top1"].values())
    # even random conv features carry colour and layout: well above the 10% of chance if labels line up
    assert max(result["top1"].values()) > 0.2
    assert result["dims"]["conv1"] <= 9600


def _colour_folder(root, classes):
    """A folder dataset in the test: a class per colour, 12 noisy images each."""
    from PIL import Image

    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(np.array(colours[name]) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return f"folder:{root}"


def test_probe_matches_test_classes_to_train_classes_by_name(tmp_path, cache_dir):
    """Each folder numbers its own sorted class subfolders: tested on green and blue only (0 and 1 there, 1
    and 2 in training), the labels are matched by name; classes the probe never learnt are refused."""
    torch.manual_seed(0)
    cfg = load_config("tiny")
    features = torch_features(build_networks(cfg.model)["disc"])
    train = _colour_folder(tmp_path / "train", ["red", "green", "blue"])
    test = _colour_folder(tmp_path / "test", ["green", "blue"])
    result = probe(features, cfg, train, test, ProbeSchedule(epochs=30), layers=["conv1"])
    assert result["classes"] == 3 and result["top1"]["conv1"] == 1.0
    with pytest.raises(ValueError, match="classes it learnt"):
        probe(features, cfg, test, train, ProbeSchedule(epochs=1), layers=["conv1"])


def test_gap_closed_is_the_papers_fraction():
    random = dict(conv1=0.1, conv2=0.1, conv3=0.1, conv4=0.1, conv5=0.1)
    supervised = dict(conv1=0.3, conv2=0.5, conv3=0.5, conv4=0.5, conv5=0.5)
    ours = dict(conv1=0.3, conv2=0.3, conv3=0.4, conv4=0.5, conv5=0.1)
    g = gap_closed(ours, random, supervised)
    assert g["per_layer"] == pytest.approx(dict(conv1=1.0, conv2=0.5, conv3=0.75, conv4=1.0, conv5=0.0))
    assert g["mean_conv2_conv5"] == pytest.approx((0.5 + 0.75 + 1.0 + 0.0) / 4)


def test_probe_lr_schedule_is_piecewise():
    assert [lr_at(p, 0.1) for p in (0.0, 0.1, 0.5, 0.8, 0.95)] == pytest.approx([0.1, 0.01, 0.002, 0.0004, 0.00008])


def test_detection_metrics_follow_cnndetection():
    m = detection_metrics(np.array([0.1, 0.2, 0.6]), np.array([0.9, 0.4]))
    assert m["real_acc"] == pytest.approx(2 / 3) and m["fake_acc"] == pytest.approx(0.5)
    assert m["acc"] == pytest.approx(3 / 5)
    assert m["roc_auc"] == pytest.approx(5 / 6)


@pytest.mark.parametrize("shape", [(64, 64), (100, 130), (20, 300)])
def test_tiles_cover_the_whole_image(shape):
    image = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    t, _, _ = tiles(image, 32)
    assert t.shape[1:] == (32, 32, 3)
    if min(shape) >= 32:
        assert np.array_equal(t[0], image[:32, :32]) and np.array_equal(t[-1], image[-32:, -32:])


def test_summaries_keep_six_significant_digits_so_nothing_rounds_up_to_perfect():
    from training.spot_eval import summarize

    results = {"pairs": [{"drop_rate": 0.7, "roc_auc": 0.99997912, "mask_ap": 0.0123456789}],
               "raw_heldout_false_alarm_rate": 0.0004}  # fmt: skip
    summary = summarize(results)
    assert summary["spot/roc_auc@drop0.7"] == 0.999979 < 1.0
    assert summary["spot/mask_ap@drop0.7"] == 0.0123457 and summary["spot/false_alarm_raw_heldout"] == 0.0004
