"""The engine's training step: one D update and one G update, for every preset's loss.

It computes the same updates as the textbook steps in ``facegan.updates`` with less work:
G runs forward once per step (its fakes are scored, detached, by D's loss, then scored
again for G's), and D's weights are frozen during the G step, so no gradients are
computed for them only to be thrown away.
"""
from __future__ import annotations

import torch

from . import distributed as ddp
from .augment import diff_augment
from .device import autocast
from .losses import DECISION_CENTRE, LOSSES, gradient_penalty, r1_penalty
from .models import sample_latent
from .state import TrainState, bare
from .updates import lr_factor


def _d_input(state: TrainState, x: torch.Tensor) -> torch.Tensor:
    """What D sees of an image batch, real or fake: DiffAugment, then instance noise, when enabled.

    Instance noise (Sonderby et al. 2017) blurs the line between real and fake early on,
    so D cannot separate them perfectly; its std anneals linearly to zero.
    """
    cfg = state.config
    if cfg.diffaug:  # facegan/augment.py; with ADA each op applies with the adapted probability p
        x = diff_augment(x, cfg.diffaug, state.ada.p if state.ada is not None else 1.0)
    sigma = cfg.instance_noise * max(0.0, 1.0 - state.step / max(state.total_steps, 1))
    return x + sigma * torch.randn_like(x) if sigma > 0 else x


def _steer_ada(state: TrainState, d_real: torch.Tensor, d_fake: torch.Tensor) -> None:
    """ADA: count which reals D calls real, and every few steps move the augmentation probability."""
    cfg = state.config
    centre = DECISION_CENTRE[cfg.loss]
    if cfg.loss == "lsgan":  # halfway between the fake target 0 and the real one
        centre = sum(cfg.real_label) / 4
    state.ada.observe(d_real, d_fake.detach().float().mean() if centre is None else centre)
    state.ada.adjust(lambda t: ddp.sum_over_ranks(t, state.device))


def train_step(state: TrainState, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """One D update (and one G update every ``n_critic`` steps); returns detached metrics.

    D step: score a real batch and a fake batch; the fakes are *detached*, so
    D's loss does not push gradients into G.  G step: score the same fakes
    again with the updated D and move G towards fooling it (the
    non-saturating loss: G maximises log D(G(z)) rather than minimising
    log(1 - D(G(z))), which has vanishing gradients early on).
    """
    cfg, D, G = state.config, state.D, state.G
    D.train()
    G.train()
    g_turn = (state.step + 1) % cfg.n_critic == 0
    d_loss_fn, g_loss_fn = LOSSES[cfg.loss]
    z = sample_latent(real.size(0), cfg, state.device)
    with torch.set_grad_enabled(g_turn), autocast(cfg, state.device):
        fake = G(z)

    # Discriminator: real and fake scored in separate calls (BatchNorm statistics of each alone).
    state.d_opt.zero_grad(set_to_none=True)
    r1_due = cfg.r1_gamma > 0 and state.step % cfg.r1_every == 0  # lazy R1: every r1_every-th D step
    with autocast(cfg, state.device):
        real_in = _d_input(state, real)
        if r1_due:  # the penalty needs D's gradient with respect to the very images it scored
            real_in = real_in.detach().requires_grad_(True)
        d_real = D(real_in)
        d_fake = D(_d_input(state, fake.detach()))
        d_loss = d_loss_fn(d_real.float(), d_fake.float(), cfg.real_label)
    if cfg.loss == "wgan-gp":
        d_loss = d_loss + cfg.gp_weight * gradient_penalty(D, real, fake.detach().float())
    penalty = r1_penalty(d_real, real_in) if r1_due else None
    (d_loss if penalty is None else d_loss + (cfg.r1_gamma / 2 * cfg.r1_every) * penalty).backward()
    state.d_opt.step()
    if state.ada is not None:
        _steer_ada(state, d_real, d_fake)

    # Generator: through D, whose weights are frozen (their gradients would be thrown away).
    if g_turn:
        state.g_opt.zero_grad(set_to_none=True)
        D.requires_grad_(False)
        with autocast(cfg, state.device):
            out = D(_d_input(state, fake)).float()
            # Least squares: G's target is D's target for reals (their mean, when smoothed).
            g_loss = g_loss_fn(out, sum(cfg.real_label) / 2) if cfg.loss == "lsgan" else g_loss_fn(out)
        g_loss.backward()
        D.requires_grad_(True)
        state.g_opt.step()
        if state.ema is not None:
            state.ema.update_parameters(bare(G))  # the same all-reduced weights on every rank

    state.step += 1
    factor = lr_factor(cfg.lr_schedule, state.step, state.total_steps)
    for opt, base in ((state.d_opt, cfg.lr_d), (state.g_opt, cfg.lr_g)):
        for group in opt.param_groups:
            group["lr"] = base * factor
    # For BCE the D outputs are logits (scores before the sigmoid): report probabilities D(x), D(G(z)).
    to_score = torch.sigmoid if cfg.loss == "bce" else (lambda t: t)
    metrics = {"d_loss": d_loss.detach(), "d_real": to_score(d_real.detach().float()).mean(),
               "d_fake": to_score(d_fake.detach().float()).mean()}
    if penalty is not None:  # logged apart from d_loss, which would otherwise spike every r1_every steps
        metrics["r1"] = penalty.detach()
    if state.ada is not None:
        metrics["ada_p"] = torch.tensor(state.ada.p)
    if g_turn:  # a critic-only step (n_critic > 1) has no G loss: a 0 here would drag the logged mean down
        metrics["g_loss"] = g_loss.detach()
    return metrics
