"""The state of a run: the two networks, their optimisers, the EMA generator and where training stands.

Everything in a ``TrainState`` goes into a checkpoint, and nothing else does: results of a
call to ``train`` (speed, whether it was interrupted) live in ``facegan.train.TrainResult``,
and sample grids live as PNG files in the run folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .augment import AdaState
from .config import Config
from .device import pick_device, seed_everything
from .models import build_models, sample_latent
from .updates import make_optimizers

HISTORY_KEYS = ("step", "epoch", "seconds", "d_loss", "g_loss", "d_real", "d_fake")


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
    """The models, their optimisers and the bookkeeping of one run: what a checkpoint holds."""

    config: Config
    D: nn.Module
    G: nn.Module
    d_opt: torch.optim.Optimizer
    g_opt: torch.optim.Optimizer
    device: torch.device
    total_steps: int
    steps_per_epoch: int
    fixed_z: torch.Tensor  # the latents of every sample grid, so grids show the same faces over training
    ema: torch.optim.swa_utils.AveragedModel | None = None
    ada: AdaState | None = None  # adaptive augmentation's probability and statistics (Config.ada_target)
    horizon_fixed: bool = False  # a time-budgeted run has fixed total_steps from its speed (RunClock.horizon)
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: dict = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})
    _bn_refreshed_at: int = -1

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


def ema_decay_at(update: int, decay: float, rampup: float) -> float:
    """The EMA's decay for its ``update``-th average (1, 2, ...), with the ramp-up of Karras et al. 2020.

    An EMA with decay d averages over a horizon of about 1/(1-d) steps: 1,000 for 0.999.  Started at
    step 1 it lags: after 2,000 steps it still gives the first, noisy steps ~13% of its weight, and
    short runs draw worse faces from it than from G itself.  With a ramp-up the horizon is
    ``rampup`` x the steps so far (0.05: the last 5%) until it reaches 1/(1-d).  The decay depends
    only on the update count, which the checkpoint keeps, so a resumed run averages exactly as one
    that never stopped.
    """
    if not rampup:
        return decay
    horizon = min(1.0 / (1.0 - decay), max(1.0, rampup * update))
    return 1.0 - 1.0 / horizon


def ema_update(decay: float, rampup: float):
    """``AveragedModel``'s ``multi_avg_fn``: w_ema <- d * w_ema + (1 - d) * w, d from ``ema_decay_at``."""
    if not rampup:
        return torch.optim.swa_utils.get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        d = ema_decay_at(int(n_averaged) + 1, decay, rampup)
        for p_ema, p in zip(ema_params, params, strict=True):
            if p_ema.is_floating_point():
                p_ema.lerp_(p, 1.0 - d)
            else:  # BatchNorm's integer batch counter, averaged as torch's own EMA does
                p_ema.copy_(p_ema * d + p * (1 - d))

    return update


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
        # EMA: an exponential moving average of G's weights, w_ema <- d * w_ema + (1 - d) * w, gives
        # smoother, usually better samples than the last weights (Yazici et al. 2019).
        ema = torch.optim.swa_utils.AveragedModel(
            G, multi_avg_fn=ema_update(cfg.ema_decay, cfg.ema_rampup), use_buffers=True)
    total = steps_per_epoch * cfg.epochs if cfg.epochs else cfg.max_steps
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    fixed_z = sample_latent(cfg.n_samples, cfg, generator=g).to(device)
    ada = AdaState(cfg.ada_target, cfg.ada_kimg) if cfg.ada_target else None
    return TrainState(cfg, D, G, d_opt, g_opt, device, total, steps_per_epoch, fixed_z, ema, ada)
