"""Bent pictures for the rotation pretext's second question, was this picture warped? (the warping class of
the authors' follow-up, Jenni, Jin & Favaro, CVPR 2020). Every picture is resampled the same way (a random
global scale and shift), the warped ones with a smooth random displacement on top: resampling blur is in
both classes, so only the bent shapes tell them apart."""

from __future__ import annotations

import torch
import torch.nn.functional as F

CONTROL_POINTS = 3  # per side of the displacement field, which bicubic upsampling smooths to every pixel
BEND = 0.12  # the displacement's standard deviation at a control point, in half image sides (~4 px at 64 px)
SCALE = 0.1  # global zoom in [1 - SCALE, 1 + SCALE], both classes
SHIFT = 0.05  # global shift up to this many half image sides, both classes


def warp_flags(n: int, device=None) -> torch.Tensor:
    """Which of a batch's pictures are warped: pictures 4-7, 12-15, ... Blocks of four, so that with the
    rotation pretext's i mod 4 turns every turn is warped as often as not (the two answers are independent)."""
    return (torch.arange(n, device=device) // 4) % 2 == 1


def warped(images: torch.Tensor, bent: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """[n, c, h, w] images in [-1, 1] -> the same, each zoomed and shifted a little, and bent where `bent`."""
    n, device = len(images), images.device
    rand = lambda *shape: torch.rand(*shape, generator=generator, device=device)  # noqa: E731
    zoom = 1 + SCALE * (2 * rand(n) - 1)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
    theta[:, :, 2] = SHIFT * (2 * rand(n, 2) - 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    field = torch.randn(n, 2, CONTROL_POINTS, CONTROL_POINTS, generator=generator, device=device) * BEND
    field = F.interpolate(field, size=images.shape[-2:], mode="bicubic", align_corners=True)
    grid = grid + field.permute(0, 2, 3, 1) * bent.view(n, 1, 1, 1).to(grid.dtype)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.to(images.dtype).clamp(-1, 1)
