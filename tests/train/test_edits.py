"""The edits /spot must learn to find (training/edits.py), on a real photo: each kind alters its region and
nothing else, masks cover what they say, and the whole-image augmentation keeps image and mask aligned."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from training.edit_tiles import EditedTiles, load_photos
from training.edits import KINDS, augment, edit, held_out_kinds, parse_kinds, random_mask

from ..conftest import DATA, run_cli


@pytest.fixture(scope="module")
def photos() -> tuple[np.ndarray, np.ndarray]:
    china, flower = (
        np.asarray(Image.open(DATA / "photos" / "sklearn" / n).convert("RGB")) for n in ("china.jpg", "flower.jpg")
    )
    return china[:300, :400].copy(), flower[:300, :400].copy()


@pytest.mark.parametrize("seed", range(12))
def test_masks_cover_a_bounded_share_of_the_image(seed):
    mask = random_mask(300, 400, np.random.default_rng(seed))
    assert mask.shape == (300, 400) and mask.dtype == bool
    assert 0.005 < mask.mean() < 0.4


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_alters_its_region_and_nothing_else(photos, kind):
    photo, donor = photos
    rng = np.random.default_rng(7)
    mask = random_mask(*photo.shape[:2], rng)
    edited = edit(kind, photo, mask, rng, donor=donor)
    assert edited.shape == photo.shape and edited.dtype == np.uint8
    changed = (edited != photo).any(axis=-1)
    assert not changed[~mask].any(), "pixels outside the region changed"
    assert changed[mask].mean() > 0.3, f"{kind} left most of its region as it was"


def test_inpainting_fills_the_region_from_its_surroundings_not_from_what_was_there(photos):
    photo, _ = photos
    mask = np.zeros(photo.shape[:2], bool)
    mask[100:140, 150:200] = True
    hidden = photo.copy()
    hidden[mask] = 255  # what was under the region cannot matter to inpainting
    rng = np.random.default_rng(0)
    a, b = edit("inpaint_telea", photo, mask, rng), edit("inpaint_telea", hidden, mask, np.random.default_rng(0))
    assert np.array_equal(a, b)
    ring = np.zeros_like(mask)
    ring[95:145, 145:205] = True
    ring &= ~mask
    assert abs(a[mask].mean() - photo[ring].mean()) < 25  # close to the colours around it


def test_splice_needs_a_donor_and_unknown_kinds_are_named(photos):
    photo, _ = photos
    mask = random_mask(*photo.shape[:2], np.random.default_rng(0))
    with pytest.raises(ValueError, match="donor"):
        edit("splice", photo, mask, np.random.default_rng(0))
    with pytest.raises(ValueError, match="inpaint_telea"):
        edit("smudge", photo, mask, np.random.default_rng(0))


@pytest.mark.parametrize("seed", range(8))
def test_augmentation_keeps_image_and_mask_the_same_size(photos, seed):
    photo, _ = photos
    rng = np.random.default_rng(seed)
    mask = random_mask(*photo.shape[:2], rng)
    image, moved = augment(photo, mask, rng)
    assert image.shape[:2] == moved.shape and moved.dtype == bool and image.dtype == np.uint8
    assert moved.mean() > 0 and abs(moved.mean() - mask.mean()) < 0.05  # a resize keeps the region's share


def test_edited_tiles_pair_a_photo_tile_with_its_edited_copy_and_the_mask_target(data_root):
    photos = load_photos("photos/sklearn", data_root)
    tiles = EditedTiles(photos, 64, 4, parse_kinds("all,-splice"), 10, fixed=True)
    pair, keep = tiles[3]
    assert pair.shape == (6, 64, 64) and keep.shape == (1, 4, 4) and pair.min() >= -1 and pair.max() <= 1
    again, keep_again = tiles[3]
    assert torch.equal(pair, again) and torch.equal(keep, keep_again)  # fixed: item i is drawn from seed i
    raw, edited = pair[:3], pair[3:]
    assert (keep == 0).any() and not torch.equal(raw, edited)
    cells = (raw - edited).abs().mean(0).reshape(4, 16, 4, 16).mean(dim=(1, 3))
    assert cells[keep[0] == 0].mean() > cells[keep[0] == 1].mean()  # the copy differs most where it was edited


def test_zoomed_tiles_are_smaller_crops_of_the_photo_scaled_up_and_the_target_follows(data_root):
    """zoom 2 (what /spot then scales photos by): a tile is 32-64 pixels of the photo, edited and processed
    there, then scaled up to the model's 64; zoom 1 takes 64-128 pixels and scales them down."""
    photos = load_photos("photos/sklearn", data_root)
    plain = EditedTiles(photos, 64, 4, KINDS, 10, fixed=True)
    zoomed = EditedTiles(photos, 64, 4, ("noise",), 10, fixed=True, zoom=2)  # a plain edit: the test is where
    rng = np.random.default_rng(0)
    assert {len(zoomed.crop(rng)) for _ in range(200)} <= set(range(32, 65))
    assert {len(plain.crop(rng)) for _ in range(200)} <= set(range(64, 129))
    checked = 0
    for i in range(4):
        pair, keep = zoomed[i]
        assert pair.shape == (6, 64, 64) and keep.shape == (1, 4, 4)
        raw, edited = pair[:3], pair[3:]
        cells = (raw - edited).abs().mean(0).reshape(4, 16, 4, 16).mean(dim=(1, 3))
        if (keep == 0).any() and (keep == 1).any():
            assert cells[keep[0] == 0].mean() > cells[keep[0] == 1].mean()  # the target is where the edit is
            checked += 1
    assert checked >= 2


def test_a_data_source_adds_each_of_its_images_as_a_photo(data_root, cache_dir):
    photos = load_photos("photos/sklearn,cifar10-sample", data_root, cache_dir)
    large = load_photos("photos/sklearn", data_root)
    small = photos[len(large) :]
    assert len(small) > 100 and all(p.shape == (32, 32, 3) and p.dtype == np.uint8 for p in small)
    tiles = EditedTiles(photos, 32, 4, KINDS, 64, fixed=True)
    assert tiles.weights[len(large) :].sum() > 0  # the small ones are drawn too, by their area
    pair, keep = tiles[0]
    assert pair.shape == (6, 32, 32) and keep.shape == (1, 4, 4)
    with pytest.raises(FileNotFoundError, match="not a data source"):
        load_photos("photos/no-such-folder", data_root, cache_dir)


def test_kinds_parse_with_one_left_out():
    assert parse_kinds("all") == KINDS
    assert "splice" not in parse_kinds("all,-splice") and len(parse_kinds("all,-splice")) == len(KINDS) - 1
    assert parse_kinds("blur,noise") == ("blur", "noise")
    with pytest.raises(ValueError, match="smudge"):
        parse_kinds("all,-smudge")


def test_held_out_kinds_are_what_a_detectors_training_never_saw():
    def training(stages, kinds=None):
        train = {"stages": stages} | ({"edit_kinds": kinds} if kinds else {})
        return {"config": {"train": train}}

    assert held_out_kinds(training("edits", "all,-noise")) == ("noise",)
    assert held_out_kinds(training("rotation,edits", "all,-noise,-blur")) == ("blur", "noise")
    assert held_out_kinds(training("edits")) == ()  # the default is every kind
    assert held_out_kinds(training("detect")) == KINDS  # the paper's heads never saw an edit
    assert held_out_kinds({}) == KINDS
    # started from a detector that trained on edits (kinds unrecorded): it may have seen them all
    start = {"stages": {"edits": 6000}, "initialised_from": {"stages": {"detect": 12000}}}
    assert held_out_kinds({**training("edits", "all,-noise"), "initialised_from": start}) == ()
    assert held_out_kinds({**training("detect"), "initialised_from": {"initialised_from": start}}) == ()


def test_the_edits_stage_trains_the_detector_and_logs_its_held_out_accuracy(tmp_path, cache_dir):
    run = tmp_path / "run"
    result = run_cli("train", "--preset", "tiny", "--run-dir", str(run), "--no-progress", "--stages=edits",
                     "--edits_steps=6", "--log_every=3", "--batch_size=8", "--eval_batches=1",
                     "--data.num_workers=0", "--data.edit_photos=photos/skimage",
                     "--data.edit_val_photos=photos/sklearn")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    assert all(0 <= r["val/edit_acc"] <= 1 and 0 <= r["val/auc"] <= 1 and "val/mask_ap" in r for r in records)
    assert "loss/disc/mask" in records[-1]


def test_a_share_of_the_pairs_can_be_the_papers_made_by_the_frozen_generator():
    from training.config import load_config
    from training.networks import build_networks
    from training.steps import with_paper_pairs

    cfg = load_config("tiny", {"train.edit_paper_share": 0.25})
    torch.manual_seed(0)
    nets = {name: m.eval() for name, m in build_networks(cfg.model).items()}
    size, grid = cfg.model.image_size, nets["disc"].grid
    images, labels = torch.rand(8, 6, size, size) * 2 - 1, torch.ones(8, 1, grid, grid)
    mixed, targets = with_paper_pairs(nets, images, labels, cfg)
    assert mixed.shape == images.shape and targets.shape == labels.shape
    with torch.no_grad():
        reconstruction = nets["ae"].decode(nets["ae"].encode(images[:2, :3]))
    torch.testing.assert_close(mixed[:2, :3], reconstruction)  # real: the raw tile as the generator rebuilds it
    assert not torch.equal(mixed[:2, 3:], mixed[:2, :3]) and (targets[:2] == 0).any()  # fake: repaired where dropped
    assert torch.equal(mixed[2:], images[2:]) and torch.equal(targets[2:], labels[2:])  # the rest: the edits
    cfg.train.edit_paper_share = 0.0
    assert with_paper_pairs(nets, images, labels, cfg)[0] is images


def test_the_edits_stage_with_the_papers_pairs_keeps_the_generator_frozen(tmp_path):
    base = ["--preset", "tiny", "--no-progress", "--batch_size=8", "--eval_batches=1", "--data.num_workers=0"]
    edits = [*base, "--stages=edits", "--edits_steps=4", "--log_every=2", "--data.edit_photos=photos/skimage",
             "--data.edit_val_photos=photos/sklearn", "--edit_paper_share=0.5"]  # fmt: skip
    refused = run_cli("train", "--run-dir", str(tmp_path / "none"), *edits)
    assert refused.returncode != 0 and "needs train.edit_generator" in refused.stderr
    refused = run_cli("train", "--run-dir", str(tmp_path / "none"), *edits, "--data.edit_zoom=0.5")
    assert refused.returncode != 0 and "edit_zoom must be in [1, 4.0]" in refused.stderr
    gen = tmp_path / "gen"
    made = run_cli("train", "--run-dir", str(gen), *base, "--ae_steps=2", "--spot_steps=2", "--log_every=2")
    assert made.returncode == 0, made.stderr[-2000:]
    run = tmp_path / "run"
    result = run_cli("train", "--run-dir", str(run), *edits, f"--edit_generator={gen / 'checkpoint.pt'}")
    assert result.returncode == 0, result.stderr[-2000:]
    from training import checkpoint

    before, after = (checkpoint.load(p / "checkpoint.pt")["networks"] for p in (gen, run))
    for name in ("ae", "repair"):
        assert all(torch.equal(v, after[name][k]) for k, v in before[name].items()), f"{name} changed"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4] and "loss/disc/mask" in records[-1]
    other = run_cli("train", "--run-dir", str(run), *edits, f"--edit_generator={run / 'checkpoint.pt'}")
    assert other.returncode != 0 and "trained with other train.edit_generator" in other.stderr  # resumed as it was
    both = run_cli("train", "--run-dir", str(tmp_path / "both"), *edits, f"--edit_generator={gen / 'checkpoint.pt'}",
                   "--stages=ae,edits", "--ae_steps=2")  # fmt: skip
    assert both.returncode != 0 and "would train the generator's networks" in both.stderr
