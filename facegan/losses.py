"""Losses: what D and G minimise, for the three games the presets play.

D outputs raw scores.  For the original GAN game (``bce``) they are logits, and
``binary_cross_entropy_with_logits`` fuses the sigmoid with the log, which is
numerically stable where sigmoid-then-BCELoss underflows.  The hinge, least-squares and
Wasserstein games use the raw scores directly.  ``LOSSES`` maps each ``Config.loss`` to
its pair of D and G losses; ``train_step`` looks them up there.  Two penalties on D's
gradients keep it smooth: WGAN-GP's on interpolates, and R1's on real images.
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


def _real_targets(D_out: torch.Tensor, real_label: tuple[float, float]) -> torch.Tensor | float:
    lo, hi = real_label
    return torch.rand_like(D_out) * (hi - lo) + lo if lo != hi else lo


def lsgan_d_loss(real_out: torch.Tensor, fake_out: torch.Tensor,
                 real_label: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """Least-squares D loss (LSGAN, Mao et al. 2017):  1/2 mean((D(x) - b)^2) + 1/2 mean(D(G(z))^2).

    D regresses its raw score to b = 1 (or ``real_label``) on reals and to 0 on fakes.
    Unlike the sigmoid's log loss, a squared error keeps pulling on fakes that D already
    scores on the right side but far from the reals, so G's gradient does not vanish
    when D wins, the failure that ends long BCE runs.
    """
    return 0.5 * (real_out - _real_targets(real_out, real_label)).square().mean() + 0.5 * fake_out.square().mean()


def lsgan_g_loss(fake_out: torch.Tensor, target: float = 1.0) -> torch.Tensor:
    """Least-squares G loss:  1/2 mean((D(G(z)) - c)^2): G pulls its fakes' scores to the real target c.

    Mao et al.'s 0-1-1 coding sets c to D's target for reals; with smoothed real labels
    (``real_label`` 0.9) the engine passes their mean, so G aims where D's reals are.
    """
    return 0.5 * (fake_out - target).square().mean()


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


def r1_penalty(real_out: torch.Tensor, real_in: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018):  mean over reals of ||grad_x D(x)||^2; D's loss adds gamma/2 of it.

    It penalises D's slope on the real images only, so D cannot carve a steep cliff around
    the training faces: near the data its scores stay flat and G's gradients stay useful.
    ``real_in`` is the batch D scored (``real_out``), made a leaf that requires grad; the
    gradient is taken with ``create_graph`` so that D's backward pass also minimises it.
    Lazy regularisation (Karras et al. 2020) adds it only every k-th D step, times k: the
    same expected penalty for about 1/k of its cost.
    """
    (grad,) = torch.autograd.grad(real_out.float().sum(), real_in, create_graph=True)
    return grad.float().square().flatten(1).sum(1).mean()


def feature_matching_loss(fake_features: torch.Tensor, real_mean: torch.Tensor) -> torch.Tensor:
    """Feature matching (Salimans et al. 2016):  mean over features of (E f(x) - E f(G(z)))^2.

    f is D's last hidden layer.  Instead of only fooling D's final verdict, G also matches the
    average of what D looks at on real faces; a G drawing the same few faces over and over
    cannot match the batch mean of varied ones, so it counters collapse.  ``real_mean`` is the
    batch mean of f on real images (a constant here: no gradient goes to the reals' side); the
    squares are averaged over features, as the paper's code does, so the weight does not grow
    with D's width.
    """
    return (fake_features.float().mean(0) - real_mean.float()).square().mean()


#: Config.loss -> (D's loss(real_out, fake_out, real_label), G's loss(fake_out)).  ``real_label``
#: only matters for BCE and least squares; the hinge and Wasserstein losses take it and ignore it.
LOSSES: dict[str, tuple[Callable[..., torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
    "bce": (bce_d_loss, bce_g_loss),
    "hinge": (hinge_d_loss, hinge_g_loss),
    "wgan-gp": (wasserstein_d_loss, wasserstein_g_loss),
    "lsgan": (lsgan_d_loss, lsgan_g_loss),
}

#: Config.loss -> the raw score that splits "real" from "fake", for ADA's r_t = E[sign(D(x) - centre)]:
#: a logit of 0 (BCE), the hinge's 0, and halfway between least squares' targets 0 and 1 (``train_step``
#: moves it to half the real target when the real labels are smoothed).  The
#: Wasserstein critic has no fixed centre: ADA uses the mean score of the batch's fakes there.
DECISION_CENTRE: dict[str, float | None] = {"bce": 0.0, "hinge": 0.0, "lsgan": 0.5, "wgan-gp": None}
