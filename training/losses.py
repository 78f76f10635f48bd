"""The objectives as small pure functions (PAPER.md section 3). Labels: class 1 = real, 0 = fake."""

import torch
import torch.nn.functional as F


def autoencoder_loss(images: torch.Tensor, reconstruction: torch.Tensor, weight: float = 30.0) -> torch.Tensor:
    """Stage 1: weight * MSE over all elements."""
    return weight * F.mse_loss(reconstruction.float(), images.float())


def masked_mse(target: torch.Tensor, output: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w * err^2) / #elements with nonzero weight, w broadcast over channels (TF weighted MSE)."""
    w = weights.float().expand_as(target)
    return (w * (output.float() - target.float()) ** 2).sum() / w.count_nonzero().clamp(min=1)


def real_fake_labels(n_real: int, n_fake: int, device) -> torch.Tensor:
    return torch.cat(
        [torch.ones(n_real, dtype=torch.long, device=device), torch.zeros(n_fake, dtype=torch.long, device=device)]
    )


def discriminator_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask_logits: torch.Tensor,
    keep_targets: torch.Tensor,
    mask_weight: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CE(real/fake) + mask_weight * BCE(drop-mask); reals' mask target is all kept (ones)."""
    ce = F.cross_entropy(logits.float(), labels)
    bce = F.binary_cross_entropy_with_logits(mask_logits.float(), keep_targets.float())
    return ce + mask_weight * bce, {"loss/disc/ce": ce.detach(), "loss/disc/mask": bce.detach()}


def repair_loss(
    fake_logits: torch.Tensor,
    images: torch.Tensor,
    repaired: torch.Tensor,
    kept_pixels: torch.Tensor,
    adv_weight: float = 1.0,
    rec_weight: float = 30.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Non-saturating adversarial CE with flipped labels + rec_weight * MSE at kept locations."""
    adv = F.cross_entropy(
        fake_logits.float(), torch.ones(len(fake_logits), dtype=torch.long, device=fake_logits.device)
    )
    rec = masked_mse(images, repaired, kept_pixels)
    return adv_weight * adv + rec_weight * rec, {"loss/repair/adv": adv.detach(), "loss/repair/rec": rec.detach()}
