"""A held-out view of D: its scores on real faces it never trains on, beside faces it trains on.

A discriminator that starts to memorise its training set scores *those* faces as real with
growing confidence while its scores on unseen faces of the same kind stay put or fall.  So
``Config.holdout`` keeps the last N faces of the data out of training, and at every logged
step D scores them (``d_holdout``) and a fixed set of N training faces (``d_real_fixed``), in
the same way: no augmentation, BatchNorm on batch statistics as in training.  While the
two lines run together D is judging faces; when they part it is recognising its training
set, and the G updates it drives stop improving the faces (Karras et al. 2020, fig. 1).

Scoring must not change the run: D's buffers (BatchNorm's running statistics, spectral
norm's power-iteration vectors) are put back afterwards and the random streams are forked,
so a run logs the same losses with and without it.
"""
from __future__ import annotations

import numpy as np
import torch

from .batches import uint8_to_model_range
from .device import autocast
from .state import TrainState, bare


class HeldOutView:
    """D's mean score on the held-out faces and on as many fixed training faces."""

    def __init__(self, held_out: np.ndarray, training: np.ndarray, device: torch.device, channels_last: bool):
        n = len(held_out)
        fmt = torch.channels_last if channels_last else torch.contiguous_format

        def prepare(images: np.ndarray) -> torch.Tensor:
            x = uint8_to_model_range(torch.from_numpy(np.array(images)))
            return x.to(device).contiguous(memory_format=fmt)

        self.held_out, self.training = prepare(held_out), prepare(training[:n])

    @torch.no_grad()
    def scores(self, state: TrainState) -> dict[str, float]:
        """{"d_holdout", "d_real_fixed"}: D(x) on the held-out and on the fixed training faces."""
        D, cfg = bare(state.D), state.config
        saved = [b.clone() for b in D.buffers()]
        devices = [state.device.index or 0] if state.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), autocast(cfg, state.device):
            out = {name: _mean_score(D, images, cfg.batch_size, cfg.loss)
                   for name, images in (("d_holdout", self.held_out), ("d_real_fixed", self.training))}
        for buffer, value in zip(D.buffers(), saved, strict=True):
            buffer.copy_(value)
        return out


def _mean_score(D: torch.nn.Module, images: torch.Tensor, batch_size: int, loss: str) -> float:
    """D's score averaged over ``images`` in training-sized batches: a probability for BCE, else raw."""
    total = torch.zeros((), dtype=torch.float64, device=images.device)
    for i in range(0, len(images), batch_size):
        out = D(images[i:i + batch_size]).float()
        total += (torch.sigmoid(out) if loss == "bce" else out).sum()
    return (total / len(images)).item()

