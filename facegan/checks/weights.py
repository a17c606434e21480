"""Checks for ``weights_init_normal``, the DCGAN initialisation applied with ``model.apply``.

Conv, transposed conv and linear weights are drawn from N(0, 0.02) with zero biases; BatchNorm's
scales stay near 1, since N(0, 0.02) there would shrink every channel to ~2% of its size.  The two test
networks hold each layer type with and without a bias, each layer with 32k+ weights, so the measured
std pins the initialisation down, and PyTorch's default (std 0.036 at this fan-in) is told apart from
a layer the function left alone.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from .report import _call, _fail, _passed


def _test_nets() -> list[nn.Sequential]:
    """Two networks with every layer type the rule names, each with and without a bias, and a BatchNorm.
    Fan-in 256 everywhere: PyTorch's default init then has std 0.036, far from 0.02."""
    def net(bias: bool) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(16, 128, 4, bias=bias), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
                             nn.ConvTranspose2d(128, 16, 4, bias=bias), nn.ReLU(), nn.Flatten(),
                             nn.Linear(256, 512, bias=bias))
    return [net(True), net(False)]


def test_weights_init(weights_init_normal: Callable) -> None:
    """Conv, transposed conv and linear weights ~ N(0, 0.02), biases (where a layer has one) 0; BatchNorm scales
    1 or ~ N(1, 0.02); on networks with and without biases, applied with model.apply."""
    torch.manual_seed(0)
    for net in _test_nets():
        b = net[0].bias is not None
        _call(f"net.apply(weights_init_normal) on a test network whose layers have bias={b}", net.apply,
              weights_init_normal, _hints={"'NoneType' object has no attribute": (
                  "a layer built with bias=False has m.bias = None: set the bias only if m.bias is not None",
                  "W2")})
        for m in (net[0], net[3], net[6]):
            check_layer(m)
        check_batchnorm(net[1])
    _passed("weights ~ N(0, 0.02), biases 0, BatchNorm scales near 1, with and without biases")


def check_layer(m: nn.Module) -> None:
    """One conv, transposed conv or linear layer: weights ~ N(0, 0.02), its bias (if any) zero."""
    name = f"{type(m).__name__}" + ("" if m.bias is not None else " (bias=False)")
    mean, std = m.weight.mean().item(), m.weight.std().item()
    if abs(mean) > 0.001 or abs(std - 0.02) > 0.0005:  # >32k weights pin the std down tightly
        untouched = abs(std - 0.036) < 0.002
        mean_set = abs(std - 1) < 0.05  # normal_(w, 0.02): 0.02 is the mean, the std stays 1
        _fail(f"{name} weights", "mean 0 and std 0.02", f"mean {mean:.4f}, std {std:.4f}" +
              (" (PyTorch's default init: your function left this layer alone)" if untouched else ""),
              "nn.init.normal_'s arguments are (tensor, mean, std), so normal_(m.weight, 0.02) sets the MEAN to "
              "0.02 and keeps std 1: write nn.init.normal_(m.weight, 0.0, 0.02)" if mean_set else
              f"this {type(m).__name__} was not initialised: for every nn.Conv2d, nn.ConvTranspose2d and nn.Linear, "
              "nn.init.normal_(m.weight, 0.0, 0.02); isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) "
              "selects all three" if untouched else
              "draw the weights from N(0, 0.02): nn.init.normal_(m.weight, 0.0, 0.02)", rule="W1")
    if m.bias is not None and m.bias.abs().max().item() > 0:
        _fail(f"{name} bias", "zeros", f"max |bias| {m.bias.abs().max().item():.3g}",
              "after the weight, also set the bias: if m.bias is not None: nn.init.zeros_(m.bias)", rule="W2")


def check_batchnorm(bn: nn.Module) -> None:
    mean, std = bn.weight.mean().item(), bn.weight.std().item()
    if not (torch.all(bn.weight == 1) or (abs(mean - 1) < 0.01 and 0.005 < std < 0.04)):
        _fail("BatchNorm2d weights", "ones, or ~N(1, 0.02)", f"mean {mean:.3f}, std {std:.3f}",
              "BatchNorm's weight is a per-channel scale: N(0, 0.02) shrinks every channel to ~2% of its size, "
              "some with flipped sign. Leave BatchNorm alone (it starts at 1), or use "
              "nn.init.normal_(m.weight, 1.0, 0.02) and nn.init.zeros_(m.bias)", rule="W3")
    if bn.bias.abs().max().item() > 0:
        _fail("BatchNorm2d bias", "zeros", f"max |bias| {bn.bias.abs().max().item():.3g}",
              "leave BatchNorm's bias at 0 (nn.init.zeros_(m.bias))", rule="W3")
