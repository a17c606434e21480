"""The device and precision policy: where a run trains, in which precision, from which seed.

bf16 autocast is the default wherever the hardware runs bf16 natively (GPUs from Ampere
on, CPUs with AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slower than fp32, so
training stays exact fp32.  Why bf16 trains the same GAN: docs/speed.md.
"""
from __future__ import annotations

import functools
import os
import random

import numpy as np
import torch


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
    """Seed Python's, NumPy's and PyTorch's generators (the one seeding function of the project)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Whether this machine runs bf16 convolutions and matmuls in hardware.

    True on CUDA GPUs with bf16 tensor cores (Ampere and later) and on CPUs with
    AVX-512 BF16 or AMX instructions, where a bf16 dot product does twice the
    work of an fp32 one per cycle.  Elsewhere bf16 is emulated and slower than
    fp32, so autocast stays off.  ``FACEGAN_BF16=0`` answers False everywhere: the
    way CI runs a bf16 machine as an AVX2-only one would.
    """
    if os.environ.get("FACEGAN_BF16", "").lower() in ("0", "false", "no", "off"):
        return False
    if device_type == "cuda":  # Ampere or later; older GPUs (e.g. a T4) would only emulate bf16
        return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)
    if device_type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence the getattr
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def training_precision(cfg, device: torch.device) -> str:
    """"bf16" (autocast, fp32 master weights) or "fp32": what ``train_step`` will use.

    bf16 wherever the hardware runs it natively (``native_bf16``), GPU or CPU, unless
    ``cfg.amp`` is off; ``amp=False`` gives exact fp32, the textbook step's arithmetic.
    """
    return "bf16" if cfg.amp and native_bf16(device.type) else "fp32"


def autocast(cfg, device: torch.device) -> torch.autocast:
    """The autocast context of ``training_precision``.

    In bf16, convolutions and matmuls run in bf16, which keeps fp32's exponent range (so no
    loss scaling is needed); weights, optimiser state, BatchNorm statistics and losses stay fp32.
    """
    enabled = training_precision(cfg, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)
