"""Losses: what D and G minimise, for the three games the presets play.

D outputs raw scores.  For the original GAN game (``bce``) they are logits, and
``binary_cross_entropy_with_logits`` fuses the sigmoid with the log, which is
numerically stable where sigmoid-then-BCELoss underflows.  The hinge and
Wasserstein games use the raw scores directly.  ``LOSSES`` maps each
``Config.loss`` to its pair of D and G losses; ``train_step`` looks them up there.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def real_loss(D_out: torch.Tensor, smooth: bool | float | tuple = False) -> torch.Tensor:
    """BCE towards "real":  -mean( y log s(D) + (1 - y) log(1 - s(D)) ).

    ``smooth`` sets the target y: ``False`` -> 1, ``True`` -> 0.9 (one-sided label
    smoothing, Salimans et al. 2016: it stops D from becoming over-confident), a
    float -> that value, a pair (lo, hi) -> y ~ U(lo, hi) per sample (noisy labels).
    """
    if isinstance(smooth, (tuple, list)):
        lo, hi = smooth
        labels = torch.rand_like(D_out) * (hi - lo) + lo
    else:
        target = 0.9 if smooth is True else 1.0 if smooth is False else float(smooth)
        labels = torch.full_like(D_out, target)
    return F.binary_cross_entropy_with_logits(D_out, labels)


def fake_loss(D_out: torch.Tensor) -> torch.Tensor:
    """BCE towards "fake":  -mean( log(1 - s(D)) )."""
    return F.binary_cross_entropy_with_logits(D_out, torch.zeros_like(D_out))


def bce_d_loss(real_out: torch.Tensor, fake_out: torch.Tensor,
               real_label: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """D's loss in the original game: BCE towards 1 (or ``real_label``) on reals, towards 0 on fakes.

    ``real_label`` (lo, hi) draws the real target from U(lo, hi); lo == hi is a fixed target.
    """
    lo, hi = real_label
    return real_loss(real_out, (lo, hi) if lo != hi else lo) + fake_loss(fake_out)


def bce_g_loss(fake_out: torch.Tensor) -> torch.Tensor:
    """G's non-saturating loss:  -mean(log s(D(G(z)))), BCE towards "real".

    G maximises log D(G(z)) instead of minimising log(1 - D(G(z))): the same fixed
    point, but strong gradients early on, when D rejects every fake.
    """
    return real_loss(fake_out)


def hinge_d_loss(real_out: torch.Tensor, fake_out: torch.Tensor, real_label=None) -> torch.Tensor:
    """Hinge loss for D:  mean(max(0, 1 - D(x))) + mean(max(0, 1 + D(G(z)))).

    D stops being pushed once real scores exceed +1 and fake ones fall below -1.
    """
    return F.relu(1 - real_out).mean() + F.relu(1 + fake_out).mean()


def hinge_g_loss(fake_out: torch.Tensor) -> torch.Tensor:
    """Hinge loss for G:  -mean(D(G(z)))."""
    return -fake_out.mean()


def wasserstein_d_loss(real_out: torch.Tensor, fake_out: torch.Tensor, real_label=None) -> torch.Tensor:
    """Critic loss:  mean(D(G(z))) - mean(D(x)), the negated estimate of the Wasserstein-1
    distance (valid when D is 1-Lipschitz, which the gradient penalty encourages)."""
    return fake_out.mean() - real_out.mean()


def wasserstein_g_loss(fake_out: torch.Tensor) -> torch.Tensor:
    """Generator loss of WGAN:  -mean(D(G(z)))."""
    return -fake_out.mean()


def gradient_penalty(D: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP penalty (Gulrajani et al. 2017):  mean( (||grad_x D(x_hat)||_2 - 1)^2 ).

    x_hat = eps * x + (1 - eps) * G(z), eps ~ U(0, 1) per sample: points on
    straight lines between real and fake images, where the optimal critic has
    gradients of norm 1.
    """
    if eps is None:
        eps = torch.rand(real.size(0), 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    out = D(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


#: Config.loss -> (D's loss(real_out, fake_out, real_label), G's loss(fake_out)).  ``real_label``
#: only matters for BCE; the hinge and Wasserstein losses take it and ignore it.
LOSSES: dict[str, tuple[Callable[..., torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
    "bce": (bce_d_loss, bce_g_loss),
    "hinge": (hinge_d_loss, hinge_g_loss),
    "wgan-gp": (wasserstein_d_loss, wasserstein_g_loss),
}
