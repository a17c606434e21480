"""The engine's training step: one D update and one G update, for every preset's loss.

It computes the same updates as the textbook steps in ``facegan.updates`` with less work:
G runs forward once per step (its fakes are scored, detached, by D's loss, then scored
again for G's), and D's weights are frozen during the G step, so no gradients are
computed for them only to be thrown away.  Beyond the textbook: the stabilisers (R1, ADA,
instance noise), feature matching as an added G loss, and progressive growing's fade.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import distributed as ddp
from .augment import diff_augment
from .device import autocast
from .losses import DECISION_CENTRE, LOSSES, feature_matching_loss, gradient_penalty, r1_penalty
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


def growth_alpha(state: TrainState) -> float:
    """Progressive growing: the full-size path's share at this step (0 at half size, 1 at full size).

    A function of the configuration, the step and the run's planned length only, which the
    checkpoint holds, so a resumed run fades in on the same steps as one that never stopped.
    """
    fade, full = state.config.growth_steps(state.total_steps)
    if state.step >= full:
        return 1.0
    return max(0.0, (state.step - fade) / (full - fade))


def _grow(state: TrainState, real: torch.Tensor) -> torch.Tensor:
    """Set this step's alpha in G, D and the EMA copy; return the reals faded as G's images are.

    At half size G's images are its half-size images with each pixel repeated 2x2; while the
    full size fades in, they are a mix of the two.  The reals get the same mix of their own
    half- and full-size versions (as in ProGAN), so D cannot tell them apart by sharpness alone.
    """
    alpha = growth_alpha(state)
    for model in (bare(state.G), bare(state.D), state.ema.module if state.ema is not None else None):
        if model is not None and getattr(model, "grow", None) is None:
            raise ValueError(f"progressive growing needs models with a half-size stage (build_models' dcgan models "
                             f"with Config.progressive set); this {type(model).__name__} has none: drop --progressive")
        if model is not None:
            model.grow.alpha = alpha
    if alpha >= 1:
        return real
    low = F.interpolate(F.avg_pool2d(real, 2), scale_factor=2, mode="nearest")
    return torch.lerp(low, real, alpha) if alpha > 0 else low


def _steer_ada(state: TrainState, d_real: torch.Tensor, d_fake: torch.Tensor) -> None:
    """ADA: count which reals D calls real, and every few steps move the augmentation probability."""
    cfg = state.config
    centre = DECISION_CENTRE[cfg.loss]
    if cfg.loss == "lsgan":  # halfway between the fake target 0 and the real one
        centre = sum(cfg.real_label) / 4
    state.ada.observe(d_real, d_fake.detach().float().mean() if centre is None else centre)
    state.ada.adjust(lambda t: ddp.sum_over_ranks(t, state.device))


def _g_step(state: TrainState, fake: torch.Tensor, real_mean: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """G's update through D, whose weights are frozen (their gradients would be thrown away).

    ``real_mean``: the batch mean of D's last hidden features on the reals, when G also matches
    them (``Config.feature_matching``); the reported G loss then includes the weighted term.
    """
    cfg, D, g_loss_fn = state.config, state.D, LOSSES[state.config.loss][1]
    metrics = {}
    state.g_opt.zero_grad(set_to_none=True)
    D.requires_grad_(False)
    with autocast(cfg, state.device):
        if real_mean is None:
            out = D(_d_input(state, fake)).float()
        else:
            out, fake_features = D(_d_input(state, fake), with_features=True)
            out = out.float()
        # Least squares: G's target is D's target for reals (their mean, when smoothed).
        g_loss = g_loss_fn(out, sum(cfg.real_label) / 2) if cfg.loss == "lsgan" else g_loss_fn(out)
        if real_mean is not None:
            metrics["feature_matching"] = feature_matching_loss(fake_features, real_mean)
            g_loss = g_loss + cfg.feature_matching * metrics["feature_matching"]
    g_loss.backward()
    D.requires_grad_(True)
    state.g_opt.step()
    if state.ema is not None:
        state.ema.update_parameters(bare(state.G))  # the same all-reduced weights on every rank
    return {**{k: v.detach() for k, v in metrics.items()}, "g_loss": g_loss.detach()}


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
    if cfg.progressive:
        real = _grow(state, real)
    g_turn = (state.step + 1) % cfg.n_critic == 0
    d_loss_fn, real_mean = LOSSES[cfg.loss][0], None
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
        if cfg.feature_matching and g_turn:  # the reals' features for G's feature matching, from this forward
            d_real, real_features = D(real_in, with_features=True)
            real_mean = real_features.detach().float().mean(0)
        else:
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

    g_metrics = _g_step(state, fake, real_mean) if g_turn else {}  # none on critic-only steps (n_critic > 1)

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
    return {**metrics, **g_metrics}  # a critic-only step reports no G loss: a 0 would drag the logged mean down
