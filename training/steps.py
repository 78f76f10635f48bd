"""One training step of each stage, as functions of (networks, batch, config): the method itself.

Each returns (losses to back-propagate, each into its own networks; scalars to report). The loop in
`loop.py` only schedules them. Stages:
- `ae`: the autoencoder (stage 1 of the paper);
- `spot`: the repair net against the discriminator (stage 2); `detect`: the discriminator alone;
- `supervised`: the comparison row, the discriminator trunk trained on the labels;
- `rotation`: the trunk classifies which quarter-turn an image was given (Gidaris et al., ICLR 2018),
  the pretext the authors' follow-up adds to spotting (Jenni, Jin & Favaro, CVPR 2020).
`spot` with `train.rotation_weight > 0` is the combined variant: the game plus rotations of the real images;
`rotation` with `train.warp_weight > 0` also asks whether each picture was warped (training/warps.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .artifacts import damage, sample_keep_mask
from .config import Config
from .losses import autoencoder_loss, discriminator_loss, real_fake_labels, repair_loss
from .networks import ROTATIONS, to_disc_input
from .warps import warp_flags, warped


def ae_step(nets: dict, images: torch.Tensor, labels: torch.Tensor, cfg: Config):
    reconstruction = nets["ae"](images)
    loss = autoencoder_loss(images, reconstruction, cfg.train.ae_weight)
    psnr = psnr_db(images, reconstruction)
    return {"ae": loss}, {"loss/ae": loss.detach(), "psnr": psnr}


def make_pair(nets: dict, images: torch.Tensor, cfg: Config, generator=None):
    """Real = AE reconstruction of clean features; fake = repaired reconstruction of damaged ones."""
    ae = nets["ae"]
    with torch.no_grad():
        z = ae.encode(images)
        real = ae.decode(z)
    keep = sample_keep_mask(len(images), z.shape[-2:], cfg.train.drop_rate, images.device, generator)
    damaged = damage(z, keep)
    if cfg.model.repair:
        fake = nets["repair"](ae, damaged, keep)
    else:
        with torch.no_grad():
            fake = ae.decode(damaged)
    return real, fake, keep


def real_half(images: torch.Tensor, reconstructions: torch.Tensor, raw_fraction: float) -> torch.Tensor:
    """The discriminator's "real" half: reconstructions (the paper), the first `raw_fraction` of them
    swapped for the raw images, so that unaltered photographs are learnt as real too."""
    raw = round(raw_fraction * len(images))
    if raw == 0:
        return reconstructions
    return torch.cat([images[:raw].to(reconstructions.dtype), reconstructions[raw:]])


def disc_size(images: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Resize to the discriminator's input when the autoencoder runs at another size (imagenet preset)."""
    if images.shape[-1] == cfg.model.image_size:
        return images
    return F.interpolate(images, size=cfg.model.image_size, mode="bilinear", align_corners=False)


def rotated(images: torch.Tensor, all_four: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i turned by (i mod 4) quarter-turns counter-clockwise, and that number as its label: every
    batch holds each rotation equally often (the loader has already shuffled the images). `all_four`:
    every image at each of the four turns (4x the batch), as RotNet trains: the same picture's turns side
    by side, so only its orientation tells them apart."""
    if all_four:
        turned = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(ROTATIONS)])
        return turned, torch.arange(ROTATIONS, device=images.device).repeat_interleave(len(images))
    labels = torch.arange(len(images), device=images.device) % ROTATIONS
    turned = images.clone()
    for k in range(1, ROTATIONS):
        turned[k::ROTATIONS] = torch.rot90(images[k::ROTATIONS], k, dims=(-2, -1))
    return turned, labels


def rotation_logits(
    nets: dict, images: torch.Tensor, cfg: Config, all_four: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits over the four rotations, true rotations) for images in [-1, 1]."""
    turned, labels = rotated(disc_size(images, cfg), all_four)
    return nets["rotation"](nets["disc"].forward_features(to_disc_input(turned))), labels


def rotation_step(nets: dict, images: torch.Tensor, labels: torch.Tensor, cfg: Config):
    t = cfg.train
    if t.warp_weight > 0:
        (logits, turns), (warp_logits, bent) = rotation_and_warp_logits(nets, images, cfg, t.rotation_all_four)
    else:
        logits, turns = rotation_logits(nets, images, cfg, t.rotation_all_four)
    loss = F.cross_entropy(logits.float(), turns)
    scalars = {"loss/rotation": loss.detach(), "acc/rotation": (logits.argmax(1) == turns).float().mean()}
    if t.warp_weight > 0:
        warp_loss = F.cross_entropy(warp_logits.float(), bent)
        scalars |= {"loss/warp": warp_loss.detach(), "acc/warp": (warp_logits.argmax(1) == bent).float().mean()}
        loss = loss + t.warp_weight * warp_loss
    return {"rotation": loss}, scalars


def rotation_and_warp_logits(nets: dict, images: torch.Tensor, cfg: Config, all_four: bool = False, generator=None):
    """((rotation logits, true turns), (warp logits, true warped-or-not)) for images in [-1, 1]: the pictures
    of `warp_flags` are bent, then all are turned; both heads read the same conv5."""
    images = disc_size(images, cfg)
    bent = warp_flags(len(images), images.device)
    turned, turns = rotated(warped(images, bent, generator), all_four)
    features = nets["disc"].forward_features(to_disc_input(turned))
    bent = bent.repeat(len(turned) // len(images)).long()  # all_four: the batch at turn 0, then at turn 1, ...
    return (nets["rotation"](features), turns), (nets["warp"](features), bent)


def spot_step(nets: dict, images: torch.Tensor, labels: torch.Tensor, cfg: Config):
    t = cfg.train
    real, fake, keep = make_pair(nets, images, cfg)
    n = len(images)
    real = real_half(images, real, t.raw_real_fraction)
    both = disc_size(torch.cat([real, fake]), cfg)
    logits, mask_logits = nets["disc"](to_disc_input(both))  # one batch: BN statistics mix both halves
    labels = real_fake_labels(n, n, images.device)
    keep_targets = torch.cat([torch.ones_like(keep), keep])
    loss_d, scalars = discriminator_loss(logits, labels, mask_logits, keep_targets, t.mask_weight)
    if t.rotation_weight > 0:  # the combined variant: the same discriminator also tells rotations of real images
        rot_logits, turns = rotation_logits(nets, images, cfg)
        rot_loss = F.cross_entropy(rot_logits.float(), turns)
        loss_d = loss_d + t.rotation_weight * rot_loss
        scalars["loss/rotation"] = rot_loss.detach()
        scalars["acc/rotation"] = (rot_logits.argmax(1) == turns).float().mean()
    losses = {"disc": loss_d}
    if cfg.model.repair:
        kept_pixels = F.interpolate(keep, size=images.shape[-2:], mode="nearest")
        loss_r, rep = repair_loss(logits[n:], images, fake, kept_pixels, t.adv_weight, t.rec_weight)
        if t.paper_loss_quirk:  # TF code: the repair net's total also held the discriminator's loss
            loss_r = loss_r + loss_d
        losses["repair"] = loss_r
        scalars.update(rep)
    with torch.no_grad():
        pred = logits.argmax(1)
        scalars["acc/real"] = (pred[:n] == 1).float().mean()
        scalars["acc/fake"] = (pred[n:] == 0).float().mean()
    return losses, scalars


def with_paper_pairs(nets: dict, images: torch.Tensor, labels: torch.Tensor, cfg: Config):
    """The first `edit_paper_share` of the edit pairs swapped for the paper's, made from their raw tiles by
    the frozen generator (`edit_generator`): its reconstruction as real, its repair after damage as fake,
    the drop mask as target. So an edits-trained detector keeps seeing the artifacts it was made for."""
    k = round(cfg.train.edit_paper_share * len(images))
    if k == 0:
        return images, labels
    with torch.no_grad():
        real, fake, keep = make_pair(nets, images[:k, :3], cfg)
    pairs = torch.cat([real, fake], 1).to(images.dtype)
    return torch.cat([pairs, images[k:]]), torch.cat([keep.to(labels.dtype), labels[k:]])


def edits_step(nets: dict, images: torch.Tensor, labels: torch.Tensor, cfg: Config):
    """The detector on edits of real photos (training/edit_tiles.py): `images` holds each raw tile and its
    edited copy stacked on channels, `labels` the drop-mask target of the copy. Raw = real, edited = fake;
    the raw tiles' mask target is all kept. A share of the pairs may be the paper's (`with_paper_pairs`)."""
    images, labels = with_paper_pairs(nets, images, labels, cfg)
    n = len(images)
    both = torch.cat([images[:, :3], images[:, 3:]])
    logits, mask_logits = nets["disc"](to_disc_input(both))
    keep_targets = torch.cat([torch.ones_like(labels), labels])
    loss, scalars = discriminator_loss(
        logits, real_fake_labels(n, n, images.device), mask_logits, keep_targets, cfg.train.mask_weight
    )
    with torch.no_grad():
        pred = logits.argmax(1)
        scalars["acc/real"] = (pred[:n] == 1).float().mean()
        scalars["acc/fake"] = (pred[n:] == 0).float().mean()
    return {"disc": loss}, scalars


def supervised_step(nets: dict, images: torch.Tensor, labels: torch.Tensor, cfg: Config):
    """The comparison row: the same discriminator trunk trained on the labels (CE), no artifacts."""
    logits = nets["classifier"](nets["disc"].forward_features(to_disc_input(images)))
    loss = F.cross_entropy(logits.float(), labels)
    return {"supervised": loss}, {
        "loss/supervised": loss.detach(),
        "acc/train": (logits.argmax(1) == labels).float().mean(),
    }


STEPS = {
    "ae": ae_step,
    "spot": spot_step,
    "supervised": supervised_step,
    "detect": spot_step,
    "rotation": rotation_step,
    "edits": edits_step,
}


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean PSNR over images in [-1, 1] (peak-to-peak 2)."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1).clamp(min=1e-10)
    return (10 * torch.log10(4.0 / mse)).mean().detach()
