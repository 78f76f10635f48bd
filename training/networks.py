"""The paper's three networks as pure modules: autoencoder (E, D1..D5), repair net (R1..R5), and the
AlexNet-style discriminator with its real/fake and drop-mask heads (PAPER.md section 2)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

BN_MOMENTUM = 0.025  # TF decay 0.975
BN_EPS = 1e-3
LEAK = 0.2
IMAGENET_MEAN_255 = (123.68, 116.78, 103.94)  # SNet.scale_imgs
ROTATIONS = 4  # the rotation pretext's classes: 0, 90, 180, 270 degrees


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def conv_bn_lrelu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2 if stride == 1 else 0, bias=False),
        nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM, eps=BN_EPS),
        nn.LeakyReLU(LEAK),
    )


class UpConv(nn.Module):
    """Decoder level: bilinear x2, then 3x3 conv, BN, leaky ReLU (`up_conv2d`)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.block = conv_bn_lrelu(c_in, c_out, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


class AutoEncoder(nn.Module):
    """E: 3x3 stem then stride-2 2x2 convs; D: one UpConv per level, then 3x3 conv + tanh.

    The decoder is exposed level by level (`decoder_levels`, `to_rgb`) because the repair network
    interleaves its blocks with them.
    """

    def __init__(self, stem: int, channels: list[int]):
        super().__init__()
        enc = [conv_bn_lrelu(3, stem, 3)]
        prev = stem
        for c in channels:
            enc.append(conv_bn_lrelu(prev, c, 2, stride=2))
            prev = c
        self.encoder = nn.Sequential(*enc)
        ups = list(reversed([stem, *channels[:-1]]))  # 512 -> 256 -> 128 -> 64 -> 32
        self.decoder_levels = nn.ModuleList(
            UpConv(c_in, c_out) for c_in, c_out in zip(reversed(channels), ups, strict=False)
        )
        self.to_rgb = nn.Conv2d(stem, 3, 3, padding=1)
        self.channels_per_level = [channels[-1], *ups]  # what each repair block sees

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        for level in self.decoder_levels:
            z = level(z)
        return torch.tanh(self.to_rgb(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class RepairBlock(nn.Module):
    """R_i: residual block fed features and mask; its output is added only at dropped locations."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels + 1, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels, momentum=BN_MOMENTUM, eps=BN_EPS)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        r = F.leaky_relu(self.bn(self.conv1(torch.cat([h, keep.to(h.dtype)], 1))), LEAK)
        return h + (1 - keep) * self.conv2(r)


class RepairNet(nn.Module):
    """R1..R5 around the frozen decoder levels; `forward` decodes damaged features into an image."""

    def __init__(self, channels_per_level: list[int]):
        super().__init__()
        self.blocks = nn.ModuleList(RepairBlock(c) for c in channels_per_level)

    def forward(self, ae: AutoEncoder, z: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h = self.blocks[0](z, keep)
        for level, block in zip(ae.decoder_levels, self.blocks[1:], strict=False):
            h = level(h)
            keep = F.interpolate(keep, size=h.shape[-2:], mode="nearest")  # U_{i-1}
            h = block(h, keep)
        return torch.tanh(ae.to_rgb(h))


class BiasOnlyBatchNorm(nn.BatchNorm2d):
    """BatchNorm with a learned shift and no scale (slim `center=True`, `scale` unset)."""

    def __init__(self, channels: int):
        super().__init__(channels, momentum=BN_MOMENTUM, eps=BN_EPS, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The shift counts twice, as it always has here (nn.BatchNorm2d.forward passed `self.bias` on to
        # F.batch_norm, then it was added again), so trained checkpoints keep their meaning. Normalising
        # without it avoids a bias-only batch norm, whose CUDA backward fails ("invalid gradient ... [0]").
        if self.training:
            self.num_batches_tracked.add_(1)
        normalised = F.batch_norm(
            x, self.running_mean, self.running_var, None, None, self.training, self.momentum, self.eps
        )
        return normalised + 2 * self.bias.view(1, -1, 1, 1)


def same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TF 'SAME' padding (the extra pixel goes right/bottom), so outputs are ceil(size / stride)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class PaddedConv(nn.Conv2d):
    def __init__(self, c_in, c_out, kernel, stride=1, groups=1, same=True):
        super().__init__(c_in, c_out, kernel, stride, padding=0 if same or stride > 1 else kernel // 2, groups=groups)
        self.same = same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(same_pad(x, self.kernel_size[0], self.stride[0]) if self.same else x)


class PoolLRN(nn.Module):
    """max-pool 3x3/2 then LRN (TF depth_radius 2, alpha 2e-5 = PyTorch size 5, alpha 1e-4)."""

    def __init__(self, same: bool):
        super().__init__()
        self.same = same
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = same_pad(x, 3, 2, value=float("-inf"))
        return self.lrn(F.max_pool2d(x, 3, 2))


@dataclass
class FeatureInfo:
    name: str
    channels: int
    reduction: int  # input pixels per feature-map pixel


class Discriminator(nn.Module):
    """AlexNet variant C (models/AlexNet.py): conv1..conv5, a drop-mask head and a real/fake head.

    Input: RGB on the 0-255 scale minus the ImageNet mean (see `to_disc_input`).
    Follows timm's feature contract: `feature_info`, `forward_features`, `forward_intermediates`,
    `forward_head`. Class 1 of the real/fake logits is "real".
    """

    def __init__(
        self,
        image_size: int,
        channels: list[int],
        fc: int,
        conv1_stride: int = 4,
        padding: str = "same",
    ):
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"disc_padding must be 'same' or 'valid', got {padding!r}")
        same = padding == "same"
        c1, c2, c3, c4, c5 = channels
        self.conv1 = PaddedConv(3, c1, 11, conv1_stride, same=same)
        self.pool1 = PoolLRN(same)
        self.conv2 = PaddedConv(c1, c2, 5, groups=2, same=same)
        self.pool2 = PoolLRN(same)
        self.conv3 = PaddedConv(c2, c3, 3, same=same)
        self.conv4 = PaddedConv(c3, c4, 3, groups=2, same=same)
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1, bias=False)
        self.bn5 = BiasOnlyBatchNorm(c5)
        self.mask_head = nn.Conv2d(c5, 1, 3, padding=1)
        s1 = conv1_stride
        self.feature_info = [
            FeatureInfo("conv1", c1, s1),
            FeatureInfo("conv2", c2, s1 * 2),
            FeatureInfo("conv3", c3, s1 * 4),
            FeatureInfo("conv4", c4, s1 * 4),
            FeatureInfo("conv5", c5, s1 * 4),
        ]
        self.grid = self._grid_size(image_size)
        self.fc1 = nn.Conv2d(c5, fc, self.grid, bias=False)  # a linear layer on the whole conv5 map
        self.bn_fc1 = BiasOnlyBatchNorm(fc)
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Conv2d(fc, 2, 1)
        self._init_weights()

    def _grid_size(self, image_size: int) -> int:
        was_training = self.training
        self.eval()  # a probe pass must not touch the BN running statistics
        with torch.no_grad():
            grid = self.forward_features(torch.zeros(1, 3, image_size, image_size)).shape[-1]
        self.train(was_training)
        return grid

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.1)  # slim bias init on layers without BN

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None) -> list[torch.Tensor]:
        """Feature maps after each conv's activation; `indices` as in timm (int = last n, list = which)."""
        n = len(self.feature_info)
        if indices is None:
            wanted = set(range(n))
        elif isinstance(indices, int):
            wanted = set(range(n - indices, n))
        else:
            wanted = {i % n for i in indices}
        out = []
        for i, stage in enumerate(self._stages()):
            x = stage(x)
            if i in wanted:
                out.append(x)
            if i >= max(wanted):
                break
        return out

    def _stages(self):
        yield lambda x: F.relu(self.conv1(x))
        yield lambda x: F.relu(self.conv2(self.pool1(x)))
        yield lambda x: F.relu(self.conv3(self.pool2(x)))
        yield lambda x: F.relu(self.conv4(x))
        yield lambda x: F.relu(self.bn5(self.conv5(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x, 1)[0]

    def forward_head(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(real/fake logits [N, 2], drop-mask logits [N, 1, grid, grid]; positive = kept)."""
        mask_logits = self.mask_head(feats)
        h = self.dropout(F.relu(self.bn_fc1(self._fc1(feats))))
        return self.fc2(h).flatten(1), mask_logits

    def _fc1(self, feats: torch.Tensor) -> torch.Tensor:
        """fc1 covers the whole conv5 map, so it is one matrix product: the same numbers as the conv, and
        about 3x faster in ONNX Runtime, whose conv kernels are slow for a 1x1 output."""
        if feats.shape[-2:] != self.fc1.weight.shape[-2:]:
            return self.fc1(feats)
        return F.linear(feats.flatten(1), self.fc1.weight.flatten(1))[..., None, None]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_head(self.forward_features(x))


class Classifier(nn.Module):
    """The "supervised" row's head on conv5: the discriminator's fc head shape with `classes` outputs."""

    def __init__(self, channels: int, grid: int, hidden: int, classes: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, grid, bias=False)
        self.bn = BiasOnlyBatchNorm(hidden)
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Conv2d(hidden, classes, 1)

    def forward(self, conv5: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.relu(self.bn(self.fc1(conv5))))).flatten(1)


def to_disc_input(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> the discriminator's 0-255 minus-mean scale (SNet.scale_imgs)."""
    mean = images.new_tensor(IMAGENET_MEAN_255).view(1, 3, 1, 1)
    return (images + 1) * 127.5 - mean


def build_autoencoder(cfg: ModelConfig) -> AutoEncoder:
    return AutoEncoder(scaled(cfg.ae_stem_channels, cfg.width), [scaled(c, cfg.width) for c in cfg.ae_channels])


def build_repair(cfg: ModelConfig, ae: AutoEncoder) -> RepairNet:
    return RepairNet(ae.channels_per_level)


def build_discriminator(cfg: ModelConfig) -> Discriminator:
    channels = [2 * scaled(c // 2, cfg.width) for c in cfg.disc_channels]  # even: grouped convs
    return Discriminator(
        cfg.image_size, channels, scaled(cfg.disc_fc, cfg.width), cfg.disc_conv1_stride, cfg.disc_padding
    )


def encoder_grid(cfg: ModelConfig) -> int:
    return (cfg.ae_size or cfg.image_size) // 2 ** len(cfg.ae_channels)


def build_networks(cfg: ModelConfig, warp: bool = False) -> dict[str, nn.Module]:
    """All three networks and the pretext heads; fails early when the mask head's grid differs from the
    encoder's. `warp`: the warped-or-not head too (stage "rotation" with `train.warp_weight`), built last so
    that the other networks start as they would without it."""
    ae = build_autoencoder(cfg)
    disc = build_discriminator(cfg)
    nets = {"ae": ae, "repair": build_repair(cfg, ae), "disc": disc}
    head = (disc.conv5.out_channels, disc.grid, disc.fc1.out_channels)
    nets["rotation"] = Classifier(*head, ROTATIONS)  # the rotation pretext's head (stage "rotation", rotation_weight)
    if cfg.num_classes:
        nets["classifier"] = Classifier(*head, cfg.num_classes)
    if warp:
        nets["warp"] = Classifier(*head, 2)
    grid = encoder_grid(cfg)
    if (cfg.ae_size or cfg.image_size) % 2 ** len(cfg.ae_channels):
        raise ValueError(f"autoencoder size must be divisible by {2 ** len(cfg.ae_channels)}")
    if nets["disc"].grid != grid:
        raise ValueError(
            f"discriminator conv5 is {nets['disc'].grid}x{nets['disc'].grid} but the encoder grid is "
            f"{grid}x{grid}: change image_size, ae_channels or disc_conv1_stride"
        )
    return nets
