"""The updates the notebook teaches: the optimisers, the learning-rate schedule, one D step, one G step.

A GAN trains two networks against each other.  Each step, D learns to tell a real
batch from a fake one, then G learns to make D call its fakes real.  These textbook
steps are what a learner writes in section 6; ``facegan.step.train_step`` computes the
same updates with less work and covers every preset's loss.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import Config
from .losses import fake_loss, real_loss


def make_optimizers(D: nn.Module, G: nn.Module, cfg: Config) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for both nets, each with its own rate (``cfg.lr_d``, ``cfg.lr_g``) and betas
    (``cfg.beta1`` 0.5 in DCGAN: less momentum keeps the game stable), or SGD for D when
    ``cfg.d_optimizer == "sgd"`` (one of the "GAN hacks")."""
    device = next(G.parameters()).device
    fused = {"fused": True} if cfg.fused_adam and device.type in ("cpu", "cuda") else {}
    if cfg.d_optimizer == "sgd":
        d_opt = torch.optim.SGD(D.parameters(), lr=cfg.lr_d, momentum=0.9)
    else:
        d_opt = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2), **fused)
    g_opt = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2), **fused)
    return d_opt, g_opt


def lr_factor(kind: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate: constant, linear decay to 0, or cosine to 0."""
    t = min(step / max(total, 1), 1.0)
    if kind == "linear":
        return 1.0 - t
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0


def discriminator_step(D: nn.Module, G: nn.Module, d_optimizer: torch.optim.Optimizer,
                       real_images: torch.Tensor, z: torch.Tensor, smooth: bool | float = False) -> torch.Tensor:
    """The textbook D update: BCE on a real batch (target 1, or smoothed) plus a fake batch (target 0).

    The fakes are detached: D's loss must only move D.  Real and fake batches are
    scored in separate calls, so that BatchNorm normalises each with its own statistics.
    """
    d_optimizer.zero_grad()
    fake_images = G(z).detach()
    d_loss = real_loss(D(real_images), smooth) + fake_loss(D(fake_images))
    d_loss.backward()
    d_optimizer.step()
    return d_loss.detach()


def generator_step(D: nn.Module, G: nn.Module, g_optimizer: torch.optim.Optimizer,
                   z: torch.Tensor) -> torch.Tensor:
    """The textbook G update: make D call G(z) real (non-saturating BCE with target 1)."""
    g_optimizer.zero_grad()
    g_loss = real_loss(D(G(z)))
    g_loss.backward()
    g_optimizer.step()
    return g_loss.detach()
