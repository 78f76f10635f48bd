import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import load_config
from training.data import ImageArrayDataset, ResumableSampler, eval_transform, load_images, to_rgb, train_transform


def test_lossless_cifar_sample_loads_with_labels(data_root, cache_dir):
    data = load_images("cifar10-sample", data_root, cache_dir)
    assert data.images.shape == (4000, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.labels.shape == (4000,) and set(np.unique(data.labels)) == set(range(10))
    again = load_images("cifar10-sample", data_root, cache_dir)  # from the cache, memory-mapped
    assert isinstance(again.images, np.memmap) and np.array_equal(again.images[:10], data.images[:10])


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_an_image_folder_with_odd_modes_and_a_broken_file(tmp_path, cache_dir, caplog):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("L", (40, 30), 128).save(tmp_path / "a" / "grey.png")
    Image.new("P", (30, 40)).save(tmp_path / "a" / "palette.gif")
    Image.new("RGBA", (50, 50), (255, 0, 0, 0)).save(tmp_path / "a" / "alpha.png")
    Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(tmp_path / "b" / "sixteen.png")
    Image.new("CMYK", (33, 33), (0, 255, 0, 0)).save(tmp_path / "b" / "cmyk.jpg")
    (tmp_path / "b" / "truncated.jpg").write_bytes(_png(Image.new("RGB", (64, 64)))[:40])
    with caplog.at_level(logging.WARNING):
        data = load_images(f"folder:{tmp_path}", cache_dir=cache_dir, size=24)
    assert data.images.shape == (5, 24, 24, 3)
    assert data.classes == ["a", "b"] and sorted(data.labels.tolist()) == [0, 0, 0, 1, 1]
    assert "truncated.jpg" in caplog.text
    alpha = data.images[0]  # files sorted: a/alpha.png first; transparent red on white -> white
    assert alpha.min() == 255
    sixteen = data.images[4]  # b/sixteen.png: full-scale 16-bit -> 255
    assert sixteen.min() == 255


def test_a_folder_with_nothing_readable_is_a_clear_error(tmp_path, cache_dir):
    (tmp_path / "x.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="none of the 1 files"):
        load_images(f"folder:{tmp_path}", cache_dir=cache_dir, size=16)
    with pytest.raises(ValueError, match="unknown data source"):
        load_images("imagenet:train", cache_dir=cache_dir)


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert to_rgb(Image.open(io.BytesIO(buf.getvalue()))).size == (20, 40)


def test_transforms_give_the_model_size_in_minus_one_to_one(data_root, cache_dir):
    cfg = load_config("tiny64")
    data = load_images("cifar10-sample", data_root, cache_dir)
    for transform in (train_transform(cfg.data, 64), eval_transform(cfg.data, 64)):
        x, label = ImageArrayDataset(data, transform)[3]
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32
        assert x.min() >= -1.0 and x.max() <= 1.0 and x.std() > 0.05
    a, _ = ImageArrayDataset(data, eval_transform(cfg.data, 64))[3]
    b, _ = ImageArrayDataset(data, eval_transform(cfg.data, 64))[3]
    assert torch.equal(a, b)  # the test transform is deterministic


def test_resumable_sampler_continues_the_same_epoch_order():
    data = list(range(100))
    full = ResumableSampler(data, 2, 0, seed=3)
    full.set_position(epoch=1, start=0)
    resumed = ResumableSampler(data, 2, 0, seed=3)
    resumed.set_position(epoch=1, start=20)
    assert list(resumed) == list(full)[20:]
    other_rank = ResumableSampler(data, 2, 1, seed=3)
    other_rank.set_position(epoch=1, start=0)
    assert not set(other_rank) & set(full)  # ranks see disjoint shards


def test_tiny_imagenet_val_has_200_classes_of_50(data_root, cache_dir):
    data = load_images("tiny-imagenet:val", data_root, cache_dir)
    assert data.images.shape == (10000, 64, 64, 3) and len(data.classes) == 200
    assert np.bincount(data.labels, minlength=200).tolist() == [50] * 200
    assert data.classes == sorted(data.classes) and data.classes[0].startswith("n0")


def test_another_data_root_gets_its_own_cache_and_a_missing_one_a_clear_error(data_root, cache_dir, tmp_path):
    """The cache of the shared data must not answer for data.root pointing elsewhere (another copy, or
    nothing at all), and a root that is not there is named in the error."""
    load_images("cifar10-sample", data_root, cache_dir)  # cached
    with pytest.raises(ValueError, match="the data root .*nowhere is not a folder"):
        load_images("cifar10-sample", tmp_path / "nowhere", cache_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no cifar10_batch"):
        load_images("cifar10-sample", tmp_path / "empty", cache_dir)
