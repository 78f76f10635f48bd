"""The damage: drop encoder locations (one Bernoulli per location, shared across channels) and
replace them by the 3x3 local average of the undamaged features (layers.pixel_dropout_avg)."""

import torch
import torch.nn.functional as F


def sample_keep_mask(n: int, grid: tuple[int, int], drop_rate: float, device=None, generator=None) -> torch.Tensor:
    """[N, 1, h, w] float mask, 1 = kept, 0 = dropped; each location dropped with `drop_rate`."""
    u = torch.rand((n, 1, *grid), device=device, generator=generator)
    return (u >= drop_rate).float()


def damage(features: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """phi_hat = keep * phi + (1 - keep) * avgpool3x3(phi); the average excludes padding."""
    local_avg = F.avg_pool2d(features, 3, stride=1, padding=1, count_include_pad=False)
    keep = keep.to(features.dtype)
    return keep * features + (1 - keep) * local_avg
