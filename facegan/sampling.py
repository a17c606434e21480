"""Sampling: faces from a generator, from seeds, along latent paths; PNG files for any FID tool.

A seed fixes the latent vector, so the same seed draws the same face here, in the
notebook's explorer and over HTTP (``facegan.serve``).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .config import Config
from .models import sample_latent


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """G(z) in eval mode (BatchNorm uses running statistics), as float in [-1, 1]."""
    was_training = G.training
    G.eval()
    out = G(z).float()
    G.train(was_training)
    return out


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float NCHW -> uint8 NCHW on the CPU."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def truncated_latent(n: int, cfg: Config, truncation: float = 0.0, seed: int | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """z ~ N(0, I), or with ``truncation`` > 0 resampled to lie within [-t, t] (the truncation
    trick: smaller t gives more typical, less varied faces)."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    z = sample_latent(n, cfg, generator=g)
    if truncation:
        nn.init.trunc_normal_(z, 0.0, 1.0, -truncation, truncation, generator=g)
    return z.to(device)


def generated_batches(G: nn.Module, cfg: Config, n: int, batch_size: int = 100, seed: int = 0,
                      truncation: float = 0.0) -> Iterator[torch.Tensor]:
    """n samples of G as uint8 NCHW batches, from a seeded latent stream."""
    device = next(G.parameters()).device
    for i in range(0, n, batch_size):
        z = truncated_latent(min(batch_size, n - i), cfg, truncation, seed + i, device)
        yield to_uint8(generate(G, z))


def write_samples(G: nn.Module, cfg: Config, n: int, out_dir: str | Path, seed: int = 0,
                  truncation: float = 0.0) -> list[Path]:
    """Write n generated images as PNG files, for any external FID tool to score."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for batch in generated_batches(G, cfg, n, seed=seed, truncation=truncation):
        for img in batch:
            paths.append(out_dir / f"{len(paths):06d}.png")
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation: Gaussian latents live near a sphere, and slerp stays on it
    (a straight line would cut through the low-density middle and give washed-out faces)."""
    a, b = z0.flatten(), z1.flatten()
    omega = torch.arccos(torch.clamp(torch.dot(a / a.norm(), b / b.norm()), -1.0, 1.0))
    if omega.abs() < 1e-6:
        return (1 - t) * z0 + t * z1
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


def face_for_seed(G: nn.Module, cfg: Config, seed: int, truncation: float = 0.0) -> np.ndarray:
    """The face G draws for one seed, as an HxWx3 uint8 array (the latent explorer's callback)."""
    z = truncated_latent(1, cfg, truncation, seed, next(G.parameters()).device)
    return to_uint8(generate(G, z))[0].permute(1, 2, 0).numpy()


def interpolate_faces(G: nn.Module, cfg: Config, seed_a: int, seed_b: int, t: float,
                      truncation: float = 0.0) -> np.ndarray:
    """The face at fraction t of the slerp path between two seeds' latents, as HxWx3 uint8."""
    device = next(G.parameters()).device
    za = truncated_latent(1, cfg, truncation, seed_a, device)
    zb = truncated_latent(1, cfg, truncation, seed_b, device)
    return to_uint8(generate(G, slerp(za, zb, t)))[0].permute(1, 2, 0).numpy()
