"""Fixtures the training tests share."""

import pytest
import torch

from training.config import load_config
from training.data import ImageArrayDataset, load_images, train_transform


@pytest.fixture(scope="module")
def real_batch(data_root, cache_dir):
    """32 CIFAR-10 sample images as training sees them, with their labels."""
    cfg = load_config("tiny")
    data = load_images("cifar10-sample", data_root, cache_dir)
    ds = ImageArrayDataset(data, train_transform(cfg.data, 32))
    torch.manual_seed(0)
    images = torch.stack([ds[i][0] for i in range(32)])
    return images, torch.from_numpy(data.labels[:32])
