"""Checks for the learner's ``Discriminator``: images in, one raw logit per image out.

Beyond the output shape, the check builds D at a second width and (where the signature has
``n_layers``) a second depth, so that channel counts or sizes typed in for one setting fail; it
rejects pooling (DCGAN down-samples with stride-2 convolutions) and a sigmoid at the end (the
BCE-with-logits loss applies it itself, more stably).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .layers import _layers, _other_n_layers, _output_with_large_weights
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
