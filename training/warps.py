"""Bent pictures for the rotation pretext's second question, was this picture warped? (the warping class of
the authors' follow-up, Jenni, Jin & Favaro, CVPR 2020). Every picture is resampled the same way (a random
zoom in and shift), the warped ones with a smooth random displacement on top that fades to nothing at the
edges. Resampling blur is in both classes and no sample leaves the picture (no mirrored or smeared border
to give the answer away), so the bent shapes are what tells them apart."""

from __future__ import annotations

import torch
import torch.nn.functional as F

CONTROL_POINTS = 3  # per side of the displacement field, which bicubic upsampling smooths to every pixel
BEND = 0.12  # the displacement's standard deviation at a control point, in half image sides (~4 px at 64 px)
ZOOM = 0.1  # zoom in by 1 to 1 + ZOOM, both classes; the shift stays inside the margin the zoom leaves


def warp_flags(n: int, device=None) -> torch.Tensor:
    """Which of a batch's pictures are warped: pictures 4-7, 12-15, ... Blocks of four, so that with the
    rotation pretext's i mod 4 turns every turn is warped as often as not (the two answers are independent)."""
    return (torch.arange(n, device=device) // 4) % 2 == 1


def sampling_grid(
    n: int, height: int, width: int, bent: torch.Tensor, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """grid_sample's [n, height, width, 2] grid: a zoom in and shift for every picture, a bend where `bent`."""
    rand = lambda *shape: torch.rand(*shape, generator=generator, device=device)  # noqa: E731
    zoom = 1 + ZOOM * rand(n)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
    theta[:, :, 2] = (1 - 1 / zoom)[:, None] * (2 * rand(n, 2) - 1)  # the sampled area stays inside
    grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
    field = torch.randn(n, 2, CONTROL_POINTS, CONTROL_POINTS, generator=generator, device=device) * BEND
    field = F.interpolate(field, size=(height, width), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    y, x = torch.meshgrid(
        torch.linspace(-1, 1, height, device=device), torch.linspace(-1, 1, width, device=device), indexing="ij"
    )
    fade = ((1 - x**2) * (1 - y**2))[None, ..., None]  # no bend at the edges
    grid = grid + field * fade * bent.view(n, 1, 1, 1).to(grid.dtype)
    return grid.clamp(-1, 1)  # the rare sample a bend pushes past an edge stays on it


def warped(images: torch.Tensor, bent: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """[n, c, h, w] images in [-1, 1] -> the same, each zoomed in and shifted a little, and bent where `bent`."""
    n, _, height, width = images.shape
    with torch.autocast(images.device.type, enabled=False):  # a bf16 grid snaps the samples to a staircase
        grid = sampling_grid(n, height, width, bent, generator, images.device)
        out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(images.dtype).clamp(-1, 1)
