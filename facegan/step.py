"""One training step: the optimisers, the run's state, the precision, and ``train_step``.

The textbook D and G steps (``discriminator_step``, ``generator_step``) are what the
notebook teaches; ``train_step`` computes the same updates with less work (one G
forward per step, D frozen in the G step) and covers every preset's loss.
"""
from __future__ import annotations

import functools
import math
import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .augment import diff_augment
from .config import Config
from .losses import LOSSES, fake_loss, gradient_penalty, real_loss
from .models import build_models, sample_latent


def pick_device(preference: str = "auto") -> torch.device:
    """cuda if present, else Apple's mps, else cpu (or the named device)."""
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizers(D: nn.Module, G: nn.Module, cfg: Config) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for both nets (beta1 = 0.5 as in DCGAN: less momentum keeps the game stable),
    or SGD for D when ``cfg.d_optimizer == "sgd"`` (one of the "GAN hacks")."""
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

    The fakes are detached: D's loss must only move D.
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


def bare(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile``'s and ``DistributedDataParallel``'s wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, DistributedDataParallel):  # multi-GPU runs (facegan/distributed.py)
            model = model.module
        else:
            return model


@dataclass
class TrainState:
    """The models, their optimisers and the bookkeeping of one run."""

    config: Config
    D: nn.Module
    G: nn.Module
    d_opt: torch.optim.Optimizer
    g_opt: torch.optim.Optimizer
    device: torch.device
    total_steps: int
    steps_per_epoch: int
    fixed_z: torch.Tensor
    ema: torch.optim.swa_utils.AveragedModel | None = None
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: dict = field(default_factory=lambda: {
        k: [] for k in ("step", "epoch", "seconds", "d_loss", "g_loss", "d_real", "d_fake")})
    samples: list = field(default_factory=list)  # (step, uint8 grid images) at each sample point
    images_per_second: float = 0.0  # measured by the last call to train()
    interrupted: bool = False  # train() was stopped by Ctrl-C or SIGTERM (and saved a checkpoint)

    @property
    def sampler(self) -> nn.Module:
        """The generator to show and evaluate: the EMA copy when there is one.

        The EMA copy's BatchNorm statistics are re-estimated for its own weights first
        (``refresh_batchnorm``), once per step at which it is used.
        """
        if self.ema is None:
            return bare(self.G)  # bare: sampling on rank 0 alone
        if self._bn_refreshed_at != self.step:
            refresh_batchnorm(self.ema.module, self.config)
            self._bn_refreshed_at = self.step
        return self.ema.module

    _bn_refreshed_at: int = -1


@torch.no_grad()
def refresh_batchnorm(G: nn.Module, cfg: Config, batches: int = 8, batch_size: int = 64) -> nn.Module:
    """Re-estimate a generator's BatchNorm running statistics from its own forward passes.

    An average of weights (EMA) is a network nobody trained, and averaging BatchNorm's running
    mean and variance alongside does not give the statistics of that network: early in a run its
    samples come out dark and washed out.  G's input is just noise, so the right statistics cost
    a few forward passes in train mode (as SWA's ``update_bn`` does for a classifier).  The
    latents come from a fixed private generator, so the global random stream is untouched and
    resumed runs stay exact.
    """
    norms = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return G
    was_training, momenta = G.training, [m.momentum for m in norms]
    device = next(G.parameters()).device
    g = torch.Generator().manual_seed(12345)
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches below
    G.train()
    for _ in range(batches):
        G(sample_latent(batch_size, cfg, generator=g).to(device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    G.train(was_training)
    return G


def make_state(cfg: Config, steps_per_epoch: int, device: torch.device | str | None = None,
               models: tuple[nn.Module, nn.Module] | None = None) -> TrainState:
    """Build models (unless ``models=(D, G)`` are given), optimisers, EMA and the fixed latents."""
    device = torch.device(device) if device is not None else pick_device(cfg.device)
    seed_everything(cfg.seed)
    D, G = models if models is not None else build_models(cfg)
    D, G = D.to(device), G.to(device)
    if cfg.channels_last and device.type in ("cpu", "cuda"):
        D, G = D.to(memory_format=torch.channels_last), G.to(memory_format=torch.channels_last)
    d_opt, g_opt = make_optimizers(D, G, cfg)
    ema = None
    if cfg.ema_decay:
        # A running average of G's weights gives smoother, usually better samples
        # (Yazici et al. 2019); BatchNorm statistics are averaged as well.
        ema = torch.optim.swa_utils.AveragedModel(
            G, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    total = steps_per_epoch * cfg.epochs if cfg.epochs else cfg.max_steps
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    fixed_z = sample_latent(cfg.n_samples, cfg, generator=g).to(device)
    return TrainState(cfg, D, G, d_opt, g_opt, device, total, steps_per_epoch, fixed_z, ema)


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Whether this machine runs bf16 convolutions and matmuls in hardware.

    True on CUDA GPUs with bf16 tensor cores (Ampere and later) and on CPUs with
    AVX-512 BF16 or AMX instructions, where a bf16 dot product does twice the
    work of an fp32 one per cycle.  Elsewhere bf16 is emulated and slower than
    fp32, so autocast stays off.
    """
    if os.environ.get("FACEGAN_BF16", "").lower() in ("0", "false", "no", "off"):
        return False  # run as an AVX2-only machine would: exact fp32 (how CI checks the fp32 path)
    if device_type == "cuda":  # Ampere or later; older GPUs (e.g. a T4) would only emulate bf16
        return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)
    if device_type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence the getattr
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def training_precision(cfg: Config, device: torch.device) -> str:
    """"bf16" (autocast, fp32 master weights) or "fp32": what ``train_step`` will use.

    bf16 wherever the hardware runs it natively (``native_bf16``), GPU or CPU, unless
    ``amp`` is off; ``amp=False`` gives exact fp32, the textbook step's arithmetic.
    Why bf16 trains the same GAN (update noise, drift, FID over 8 seeds): README "Speed".
    """
    return "bf16" if cfg.amp and native_bf16(device.type) else "fp32"


def _autocast(state: TrainState):
    # bf16 autocast: convolutions and matmuls run in bf16, which keeps fp32's exponent
    # range (so no loss scaling is needed); weights, optimiser state, BatchNorm statistics
    # and losses stay fp32.
    enabled = training_precision(state.config, state.device) == "bf16"
    return torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=enabled)


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
    n = real.size(0)
    g_turn = (state.step + 1) % cfg.n_critic == 0
    progress = state.step / max(state.total_steps, 1)
    # Instance noise (Sonderby et al. 2017): blur the line between real and fake
    # early on, so D cannot separate them perfectly; anneal it to zero.
    sigma = cfg.instance_noise * max(0.0, 1.0 - progress)

    def noisy(x: torch.Tensor) -> torch.Tensor:
        # DiffAugment (facegan/augment.py) on everything D sees, reals and fakes alike.
        x = diff_augment(x, cfg.diffaug) if cfg.diffaug else x
        return x + sigma * torch.randn_like(x) if sigma > 0 else x

    z = sample_latent(n, cfg, state.device)
    with torch.set_grad_enabled(g_turn), _autocast(state):
        fake = G(z)

    d_loss_fn, g_loss_fn = LOSSES[cfg.loss]

    # ---- discriminator
    state.d_opt.zero_grad(set_to_none=True)
    with _autocast(state):
        d_real = D(noisy(real))
        d_fake = D(noisy(fake.detach()))
        d_loss = d_loss_fn(d_real.float(), d_fake.float(), cfg.real_label)
    if cfg.loss == "wgan-gp":
        d_loss = d_loss + cfg.gp_weight * gradient_penalty(D, real, fake.detach().float())
    d_loss.backward()
    state.d_opt.step()

    # ---- generator
    g_loss = torch.zeros((), device=state.device)
    if g_turn:
        state.g_opt.zero_grad(set_to_none=True)
        # G's loss needs gradients *through* D but not *for* D's weights: freezing D skips
        # computing weight gradients that the next D step would throw away anyway.
        D.requires_grad_(False)
        with _autocast(state):
            d_out = D(noisy(fake)).float()
            g_loss = g_loss_fn(d_out)
        g_loss.backward()
        D.requires_grad_(True)
        state.g_opt.step()
        if state.ema is not None:
            state.ema.update_parameters(bare(G))  # the same all-reduced weights on every rank

    state.step += 1
    for opt, base, total in ((state.d_opt, cfg.lr_d, state.total_steps),
                             (state.g_opt, cfg.lr_g, state.total_steps)):
        for group in opt.param_groups:
            group["lr"] = base * lr_factor(cfg.lr_schedule, state.step, total)
    # For BCE the D outputs are logits: report probabilities D(x), D(G(z)).
    to_score = torch.sigmoid if cfg.loss == "bce" else (lambda t: t)
    return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(),
            "d_real": to_score(d_real.detach().float()).mean(), "d_fake": to_score(d_fake.detach().float()).mean()}
