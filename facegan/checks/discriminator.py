"""Checks for the learner's ``Discriminator``: images in, one raw logit per image out.

Beyond the output shape, the check builds D at a second width and (where the signature has
``n_layers``) a second depth, so that channel counts or sizes typed in for one setting fail; it
rejects pooling (DCGAN down-samples with stride-2 convolutions) and a sigmoid at the end (the
BCE-with-logits loss applies it itself, more stably).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .layers import (
    _NORMS,
    _WEIGHTED,
    _activation_between,
    _is_activation,
    _layers,
    _other_n_layers,
    _output_with_large_weights,
    _trace,
)
from .report import _call, _fail, _passed


def test_discriminator(Discriminator: type, conv_dim: int = 32, image_size: int = 32, batch_norm: bool = True,
                       **kwargs) -> None:
    """D maps (N, 3, H, W) images to (N, 1) raw logits, with stride-2 convs of conv_dim, 2*conv_dim... channels;
    conv_dim and, where the signature has it, n_layers are honoured at more than one value."""
    D = _call("Discriminator(conv_dim)", Discriminator, conv_dim, **kwargs)
    _check_no_pooling(D)
    x = torch.rand(50, 3, image_size, image_size) * 2 - 1
    _check_one_logit_per_image(D, x)
    _check_channels_and_batchnorm(D, conv_dim, batch_norm)
    _check_layer_pattern(D, x, conv_dim, batch_norm)
    _check_second_width(Discriminator, conv_dim, x, kwargs)
    _check_second_depth(Discriminator, conv_dim, image_size, x, kwargs)
    _check_raw_logits(D, x)
    _note_view_on_channels_last(D, x)
    _passed(f"Discriminator maps (50, 3, {image_size}, {image_size}) to (50, 1) logits")


def _check_no_pooling(D: nn.Module) -> None:
    pools = sorted({type(m).__name__ for m in D.modules()
                    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d))})
    if pools:
        _fail("Discriminator layers", "convolutions only", f"pooling layers {pools}",
              "DCGAN's D down-samples with stride-2 convolutions (stride=2, padding=1), not pooling")


def _check_one_logit_per_image(D: nn.Module, x: torch.Tensor) -> None:
    out = _call("Discriminator.forward", D, x)
    if not torch.is_tensor(out) or tuple(out.shape) != (50, 1):
        got = str(tuple(out.shape)) if torch.is_tensor(out) else repr(type(out))
        hint = ("keep one column per image: do not squeeze D's output" if torch.is_tensor(out) and out.shape == (50,)
                else "flatten the feature map before the linear layer with x.flatten(1), which keeps the batch "
                     "dimension, and give the linear layer 1 output")
        _fail("Discriminator output shape", "(50, 1)", got, hint)


def _check_channels_and_batchnorm(D: nn.Module, conv_dim: int, batch_norm: bool) -> None:
    """The first convolution has conv_dim channels; BatchNorm follows the later ones (where ``batch_norm``)."""
    convs = _layers(D, nn.Conv2d)
    if not convs or convs[0].out_channels != conv_dim:
        _fail(f"Discriminator({conv_dim}) first convolution", f"{conv_dim} output channels (conv_dim)",
              f"{convs[0].out_channels}" if convs else "no nn.Conv2d at all",
              "build the channels from the conv_dim argument (conv_dim, 2*conv_dim, 4*conv_dim...) instead of "
              "fixed numbers")
    if batch_norm and not _layers(D, nn.BatchNorm2d):
        _fail("Discriminator layers", "BatchNorm2d after every convolution but the first", "no BatchNorm2d",
              "add nn.BatchNorm2d(channels) after each conv except the first: BatchNorm steadies training and "
              "helps gradients through the deeper layers, and DCGAN leaves it off D's input layer because "
              "normalising every layer made training oscillate")


def _check_layer_pattern(D: nn.Module, x: torch.Tensor, conv_dim: int, batch_norm: bool) -> None:
    """Read from one forward pass: the k-th stride-2 convolution has conv_dim * 2**k channels, BatchNorm follows
    every one but the first (where ``batch_norm``), and LeakyReLU(0.2) feeds the next layer."""
    if any(isinstance(m, nn.Dropout) for m in D.modules()):
        return  # dropout makes the values random: the pattern cannot be read from them
    calls = _trace(copy.deepcopy(D), x[:16])
    weighted = [i for i, (m, _, _) in enumerate(calls) if isinstance(m, _WEIGHTED)]
    convs = [i for i in weighted if isinstance(calls[i][0], nn.Conv2d) and tuple(calls[i][0].stride) == (2, 2)]
    for k, i in enumerate(convs):
        conv, nxt = calls[i][0], next((j for j in weighted if j > i), None)
        what = f"Discriminator({conv_dim}) convolution {k + 1}"
        if conv.out_channels != conv_dim * 2**k:
            _fail(what, f"{conv_dim * 2**k} output channels (conv_dim * {2**k})", str(conv.out_channels),
                  "double the channels at every convolution: conv_dim, 2*conv_dim, 4*conv_dim... "
                  "(out_ch = conv_dim * 2**i in a loop over range(n_layers))")
        if nxt is None:
            continue
        between = calls[i + 1:nxt]
        norms = [m for m, _, _ in between if isinstance(m, _NORMS)]
        if batch_norm and k == 0 and norms:
            _fail(f"{what} (D's input layer)", "no BatchNorm after it", f"{type(norms[0]).__name__}",
                  "leave BatchNorm off the first convolution: DCGAN normalises every layer of D but the input "
                  "layer, because normalising the raw images made training oscillate")
        if batch_norm and k > 0 and not norms:
            _fail(what, "BatchNorm2d after it (every convolution but the first has one)", "no BatchNorm",
                  f"add nn.BatchNorm2d({conv.out_channels}) after this convolution, before its LeakyReLU")
        last = next((c for c in reversed(between) if not _is_activation(c[0])), None) or calls[i]
        act = _activation_between(last[2], calls[nxt][1])
        if act is not None and act != "leaky 0.2":
            got = {"identity": "nothing: the values pass on unchanged", "relu": "ReLU"}.get(act, act.replace(
                "leaky", "LeakyReLU with slope"))
            hint = ("nn.LeakyReLU() defaults to a slope of 0.01: write nn.LeakyReLU(0.2)" if act == "leaky 0.01" else
                    "use nn.LeakyReLU(0.2) (or F.leaky_relu(x, 0.2)) after every convolution of D: it lets "
                    "gradients flow for negative activations too, which G's learning signal depends on")
            _fail(f"{what}: the activation after it", "LeakyReLU(0.2)", got, hint)


def _check_second_width(Discriminator: type, conv_dim: int, x: torch.Tensor, kwargs: dict) -> None:
    """A D that types numbers instead of using conv_dim shows up at another conv_dim."""
    small = max(conv_dim // 2, 4)
    D2 = _call(f"Discriminator({small})", Discriminator, small, **kwargs)
    _call(f"Discriminator({small}).forward", D2, x[:2])
    if _layers(D2, nn.Conv2d)[0].out_channels != small:
        _fail(f"Discriminator({small}) first convolution", f"{small} output channels",
              f"{_layers(D2, nn.Conv2d)[0].out_channels}", "use the conv_dim argument, not a fixed number")


def _check_second_depth(Discriminator: type, conv_dim: int, image_size: int, x: torch.Tensor, kwargs: dict) -> None:
    """A D with a fixed number of convolutions, or a linear layer sized for one depth only, shows up at another
    n_layers (where the signature has it)."""
    for n in _other_n_layers(Discriminator, kwargs, image_size):
        what = f"Discriminator({conv_dim}, n_layers={n})"
        side, depth = image_size // 2**n, conv_dim * 2**(n - 1)
        Dn = _call(what, Discriminator, conv_dim, **{**kwargs, "n_layers": n})
        sizing = (f"with n_layers={n} the last feature map is {depth} channels (conv_dim * 2**(n_layers - 1)) of "
                  f"{side}x{side} pixels (image_size // 2**n_layers): compute the linear layer's in_features from "
                  f"conv_dim and n_layers, not for one depth only")
        out = _call(f"{what}.forward", Dn, x[:8], _hints={"mat1 and mat2 shapes cannot be multiplied": sizing})
        if not torch.is_tensor(out) or tuple(out.shape) != (8, 1):
            _fail(f"{what} output shape", "(8, 1)", str(tuple(getattr(out, "shape", ()))), sizing)
        strided = [m for m in _layers(Dn, nn.Conv2d) if tuple(m.stride) == (2, 2)]
        if len(strided) != n:
            _fail(f"{what} layers", f"{n} stride-2 convolutions (n_layers)", f"{len(strided)}",
                  "build the convolutions in a loop over the n_layers argument (for i in range(n_layers): "
                  "out_ch = conv_dim * 2**i ...) instead of writing a fixed number of them")


def _check_raw_logits(D: nn.Module, x: torch.Tensor) -> None:
    """With large weights, logits spread far beyond [-1, 1]; only a squashing last layer keeps them inside."""
    big = _output_with_large_weights(D, x)
    lo, hi = big.min().item(), big.max().item()
    if lo >= -1 and hi <= 1:
        squash = "a sigmoid" if lo >= 0 else "a tanh"
        _fail("Discriminator outputs", "raw logits (any real number)",
              f"values in [{lo:.3g}, {hi:.3g}] even with large weights, as after {squash}",
              f"remove {squash} at D's end: return the linear layer's output, and let BCEWithLogitsLoss apply the "
              "sigmoid itself, more stably")


def _note_view_on_channels_last(D: nn.Module, x: torch.Tensor) -> None:
    """Not a failure: helpers.train runs models in channels_last layout, where .view fails."""
    try:
        D(x[:2].contiguous(memory_format=torch.channels_last))
    except RuntimeError as e:
        if "view size" in str(e):
            print("Note: your D flattens with .view, which fails on channels_last tensors (helpers.train uses "
                  "them); x.flatten(1) works everywhere.")
