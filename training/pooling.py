"""The linear-probe pooling of each feature map to about 9k dimensions (Zhang et al.; PAPER.md s. 6),
scaled to our input sizes: adaptive average pooling to the largest square grid that stays within
the budget. Shared by the probes, the export's model.json and (re-implemented in numpy) the service."""

import torch
import torch.nn.functional as F

PROBE_DIMS = 9600  # Zhang et al.'s largest pooled size (conv1: 10x10x96)


def probe_grid(channels: int, size: int, budget: int = PROBE_DIMS) -> int:
    """Largest g <= size with channels * g * g <= budget (at least 1)."""
    g = size
    while g > 1 and channels * g * g > budget:
        g -= 1
    return g


def probe_pool(features: torch.Tensor, budget: int = PROBE_DIMS) -> torch.Tensor:
    """[N, C, H, W] -> [N, C * g * g] by adaptive average pooling."""
    g = probe_grid(features.shape[1], features.shape[-1], budget)
    return F.adaptive_avg_pool2d(features, g).flatten(1)
