import pytest
import torch

from training.config import load_config
from training.networks import build_networks, encoder_grid

PRESETS = ["tiny", "cifar32", "tiny64", "stl96", "imagenet"]


@pytest.mark.parametrize("preset", PRESETS)
def test_shapes_of_every_network(preset):
    cfg = load_config(preset).model
    nets = build_networks(cfg)
    size, grid = cfg.ae_size or cfg.image_size, encoder_grid(cfg)
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        z = nets["ae"].encode(x)
        rec = nets["ae"].decode(z)
        keep = (torch.rand(2, 1, grid, grid) > 0.7).float()
        fake = nets["repair"](nets["ae"], z, keep)
        logits, mask_logits = nets["disc"](torch.randn(2, 3, cfg.image_size, cfg.image_size) * 50)
    assert z.shape[-2:] == (grid, grid)
    assert rec.shape == fake.shape == x.shape
    assert rec.abs().max() <= 1 and fake.abs().max() <= 1  # tanh output
    assert logits.shape == (2, 2) and mask_logits.shape == (2, 1, grid, grid)
    for t in (z, rec, fake, logits, mask_logits):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("preset", ["tiny", "tiny64", "stl96"])
def test_feature_info_matches_intermediates(preset):
    cfg = load_config(preset).model
    disc = build_networks(cfg)["disc"].eval()
    x = torch.randn(1, 3, cfg.image_size, cfg.image_size)
    feats = disc.forward_intermediates(x)
    assert len(feats) == len(disc.feature_info) == 5
    for f, info in zip(feats, disc.feature_info, strict=False):
        assert f.shape[1] == info.channels
        assert f.shape[-1] == -(-cfg.image_size // info.reduction)  # SAME padding: ceil(size / reduction)
        assert (f >= 0).all()  # after ReLU
    assert torch.equal(disc.forward_features(x), feats[-1])
    last_two = disc.forward_intermediates(x, indices=2)
    assert [t.shape for t in last_two] == [feats[3].shape, feats[4].shape]
    assert torch.equal(disc.forward_intermediates(x, indices=[0])[0], feats[0])


def test_the_papers_stl10_shapes():
    """PAPER.md 2.1-2.5: 96 px -> 6x6x512 code, conv1 24x24x96 ... conv5 6x6x256, 4096-d fc."""
    cfg = load_config("stl96").model
    nets = build_networks(cfg)
    assert nets["ae"].encode(torch.zeros(1, 3, 96, 96)).shape == (1, 512, 6, 6)
    feats = nets["disc"].eval().forward_intermediates(torch.zeros(1, 3, 96, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(96, 24, 24), (256, 12, 12), (384, 6, 6), (384, 6, 6), (256, 6, 6)]
    assert nets["disc"].fc1.out_channels == 4096 and nets["disc"].conv2.groups == 2
    assert len(nets["repair"].blocks) == 5  # R1..R5


def test_a_mismatched_grid_fails_early():
    cfg = load_config("cifar32", ["--disc_conv1_stride=4"]).model  # conv5 would be 2x2, the code 4x4
    with pytest.raises(ValueError, match="encoder grid"):
        build_networks(cfg)


def test_discriminator_bn_has_no_scale_only_a_shift():
    disc = build_networks(load_config("tiny").model)["disc"]
    assert disc.bn5.weight is None and disc.bn5.bias.requires_grad
