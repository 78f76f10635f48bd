import pytest
import torch
import torch.nn.functional as F

from training.artifacts import damage, sample_keep_mask


@pytest.mark.parametrize("drop_rate", [0.3, 0.5, 0.7])
def test_mask_statistics_match_the_drop_rate(drop_rate):
    gen = torch.Generator().manual_seed(0)
    keep = sample_keep_mask(4000, (4, 4), drop_rate, generator=gen)
    assert keep.shape == (4000, 1, 4, 4)
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    n = keep.numel()
    dropped = 1 - keep.mean().item()
    assert abs(dropped - drop_rate) < 4 * (drop_rate * (1 - drop_rate) / n) ** 0.5
    # i.i.d. per location: every location is dropped at the same rate
    per_location = 1 - keep.mean(dim=(0, 1))
    assert (per_location - drop_rate).abs().max() < 0.05


def test_damage_keeps_kept_entries_and_averages_dropped_ones_across_all_channels():
    torch.manual_seed(0)
    z = torch.randn(2, 8, 4, 4)
    keep = torch.ones(2, 1, 4, 4)
    keep[0, 0, 0, 0] = 0  # a corner: the average covers 4 real entries, no padding
    keep[1, 0, 2, 1] = 0  # an inner location: 9 entries
    out = damage(z, keep)
    kept = keep.bool().expand_as(z)
    assert torch.equal(out[kept], z[kept])
    assert torch.allclose(out[0, :, 0, 0], z[0, :, :2, :2].mean(dim=(1, 2)))
    assert torch.allclose(out[1, :, 2, 1], z[1, :, 1:4, 0:3].mean(dim=(1, 2)))
    assert torch.allclose(out, keep * z + (1 - keep) * F.avg_pool2d(z, 3, 1, 1, count_include_pad=False))


def test_no_drop_is_the_identity_and_full_drop_is_the_local_average():
    z = torch.randn(1, 3, 4, 4)
    assert torch.equal(damage(z, torch.ones(1, 1, 4, 4)), z)
    assert torch.allclose(damage(z, torch.zeros(1, 1, 4, 4)), F.avg_pool2d(z, 3, 1, 1, count_include_pad=False))
