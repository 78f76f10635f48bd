"""Loss formulas, gradient routing of each phase, and that a few steps lower the losses on real images."""

import pytest
import torch

from training.config import load_config
from training.losses import autoencoder_loss, discriminator_loss, masked_mse, repair_loss
from training.networks import build_networks
from training.optim import backward_each, make_optimizer
from training.stages import set_phase, trainable
from training.steps import STEPS, spot_step


def test_masked_mse_averages_over_weighted_entries_only():
    target = torch.zeros(1, 3, 2, 2)
    output = torch.ones(1, 3, 2, 2)
    output[..., 0, 0] = 3.0  # error 9 at one location, 1 elsewhere
    w = torch.ones(1, 1, 2, 2)
    assert masked_mse(target, output, w).item() == pytest.approx((9 * 3 + 1 * 9) / 12)
    w[..., 0, 0] = 0  # ignore the bad location: the mean is over the 9 weighted entries
    assert masked_mse(target, output, w).item() == pytest.approx(1.0)


def test_loss_weights_are_the_papers():
    x, y = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    assert autoencoder_loss(x, y).item() == pytest.approx(30 * 0.25)
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([1, 0])
    mask_logits = torch.zeros(2, 1, 2, 2)
    total, parts = discriminator_loss(logits, labels, mask_logits, torch.ones(2, 1, 2, 2))
    assert total.item() == pytest.approx(parts["loss/disc/ce"].item() + 0.1 * parts["loss/disc/mask"].item())
    r_total, r_parts = repair_loss(logits[1:], x[:1], y[:1], torch.ones(1, 1, 4, 4))
    assert r_total.item() == pytest.approx(r_parts["loss/repair/adv"].item() + 30 * 0.25)


@pytest.mark.parametrize(
    "stage, extra",
    [
        ("ae", []),
        ("spot", []),
        ("supervised", []),
        ("rotation", []),
        ("spot", ["--rotation_weight=0.5"]),
        ("rotation", ["--warp_weight=1"]),
    ],
)
def test_each_phase_updates_only_its_own_networks(stage, extra, real_batch):
    cfg = load_config("tiny", ["--num_classes=10", *extra])
    nets = build_networks(cfg.model, warp=cfg.train.warp_weight > 0)
    trained = set_phase(nets, stage, cfg)
    losses, _ = STEPS[stage](nets, *real_batch, cfg)
    backward_each(losses, trained)
    for name, m in nets.items():
        active = {id(p) for p in trainable(m, stage, cfg)} if name in trained else set()
        for pname, p in m.named_parameters():
            if id(p) in active:
                assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}.{pname} got no gradient"
                assert p.grad.abs().sum() > 0, f"{name}.{pname} has an all-zero gradient"
            else:
                assert p.grad is None, f"frozen {name}.{pname} got a gradient"


def test_supervised_training_lowers_its_loss(real_batch):
    torch.manual_seed(0)
    cfg = load_config("tiny", ["--num_classes=10", "--lr=1e-3"])
    nets = build_networks(cfg.model)
    hist = _train_steps(cfg, "supervised", nets, real_batch, 30)
    assert sum(h["supervised"] for h in hist[-5:]) < 0.7 * sum(h["supervised"] for h in hist[:5])


def test_discriminator_loss_does_not_reach_the_repair_net(real_batch):
    """The repair net learns from its own loss only (unless the paper's code quirk is on)."""
    cfg = load_config("tiny")
    nets = build_networks(cfg.model)
    for name, m in nets.items():
        m.requires_grad_(name != "ae")
    losses, _ = spot_step(nets, *real_batch, cfg)
    grads = torch.autograd.grad(losses["repair"], list(nets["repair"].parameters()), retain_graph=True)
    plain = torch.cat([g.flatten() for g in grads])
    cfg_quirk = load_config("tiny", ["--paper_loss_quirk=true"])
    torch.manual_seed(0)
    losses_q, _ = spot_step(nets, *real_batch, cfg_quirk)
    torch.manual_seed(0)
    losses_p, _ = spot_step(nets, *real_batch, cfg)
    assert losses_q["repair"].item() == pytest.approx(losses_p["repair"].item() + losses_p["disc"].item(), rel=1e-5)
    assert torch.isfinite(plain).all()


def _train_steps(cfg, stage, nets, batch, steps):
    trained = set_phase(nets, stage, cfg)
    opt = make_optimizer(trained, cfg)
    history = []
    for _ in range(steps):
        losses, scalars = STEPS[stage](nets, *batch, cfg)
        opt.zero_grad()
        backward_each(losses, trained)
        opt.step()
        history.append({k: v.item() for k, v in losses.items()} | {k: float(v) for k, v in scalars.items()})
    return history


def test_a_few_steps_lower_the_losses_on_real_images(real_batch):
    torch.manual_seed(0)
    cfg = load_config("tiny", ["--lr=1e-3"])
    nets = build_networks(cfg.model)
    ae_hist = _train_steps(cfg, "ae", nets, real_batch, 40)
    assert sum(h["ae"] for h in ae_hist[-5:]) < 0.7 * sum(h["ae"] for h in ae_hist[:5])
    spot_hist = _train_steps(cfg, "spot", nets, real_batch, 30)
    assert sum(h["disc"] for h in spot_hist[-5:]) < 0.7 * sum(h["disc"] for h in spot_hist[:5])
    assert sum(h["loss/disc/mask"] for h in spot_hist[-5:]) < sum(h["loss/disc/mask"] for h in spot_hist[:5])


def test_the_repair_net_lowers_its_loss_against_a_fixed_discriminator(real_batch):
    torch.manual_seed(0)
    cfg = load_config("tiny", ["--lr=1e-3"])
    nets = build_networks(cfg.model)
    _train_steps(cfg, "ae", nets, real_batch, 20)
    nets["disc"].eval()
    opt = torch.optim.Adam(nets["repair"].parameters(), lr=1e-3)
    nets["ae"].requires_grad_(False).eval()
    nets["disc"].requires_grad_(False)
    nets["repair"].requires_grad_(True).train()
    history = []
    for _ in range(30):
        losses, _ = spot_step(nets, *real_batch, cfg)
        opt.zero_grad()
        losses["repair"].backward()
        opt.step()
        history.append(losses["repair"].item())
    assert sum(history[-5:]) < sum(history[:5])


def test_raw_real_fraction_swaps_reconstructions_for_raw_images():
    from training.steps import real_half

    images, recs = torch.zeros(8, 3, 4, 4), torch.ones(8, 3, 4, 4)
    assert torch.equal(real_half(images, recs, 0.0), recs)  # the paper: reconstructions only
    mixed = real_half(images, recs, 0.25)
    assert mixed.shape == recs.shape
    assert torch.equal(mixed[:2], images[:2]) and torch.equal(mixed[2:], recs[2:])
