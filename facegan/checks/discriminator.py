"""Checks for the learner's ``Discriminator``: images in, one raw logit per image out.

The check runs the learner's D and reads what its forward pass does (``layers.forward_ops``): each layer
with weights and the functions between them, whatever the code looks like.  It compares that,
layer by layer, with the notebook's D built with the same arguments, at two widths and (where the
signature has ``n_layers``) two depths, and names the first place they part.  Then it checks what the
notebook says D's output is: one raw score per image, anywhere on the real line, at any batch size.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .layers import _WEIGHTED, Op, _other_n_layers, _trace, compare_layers, default_n_layers, forward_ops
from .report import _call, _fail, _passed


def reference_ops(conv_dim: int, n_layers: int, image_size: int) -> list[Op]:
    """The notebook's D as operations.  32x32 (the exercise): n_layers stride-2 convolutions of conv_dim,
    2*conv_dim... channels, BatchNorm after each but the first, LeakyReLU(0.2) after each, one linear layer to
    a logit.  64x64 and up (the DCGAN presets): stride-2 convolutions down to 4x4, then a 4x4 convolution to the
    logit."""
    linear_stem = image_size == 32
    n = n_layers if linear_stem else (image_size // 4).bit_length() - 1
    ops: list[Op] = []
    in_ch = 3
    for i in range(n):
        out_ch = conv_dim * 2**i
        ops += [("conv", in_ch, out_ch, 2)] + ([("norm", "BatchNorm")] if i else []) + [("act", "LeakyReLU(0.2)")]
        in_ch = out_ch
    side = image_size // 2**n
    return ops + [("linear", in_ch * side * side, 1) if linear_stem else ("conv", in_ch, 1, 1)]


#: The notebook's reasons, added to a hint when the rule is broken.
WHY = {
    "D2": "D returns a raw logit, a score anywhere on the real line: BCEWithLogitsLoss applies the sigmoid itself, "
          "more stably",
    "D5": "BatchNorm steadies training and helps gradients through the deeper layers; DCGAN leaves it off the "
          "first convolution, because normalising the raw images made training oscillate",
    "D6": "nn.LeakyReLU(0.2) lets gradients flow for negative activations too (nn.LeakyReLU() defaults to a slope "
          "of 0.01, so write the 0.2)",
    "D7": "the linear layer's in_features is the flattened last feature map: conv_dim * 2**(n_layers - 1) channels "
          "of image_size // 2**n_layers pixels a side",
}


def _sizes(conv_dim: int, n_layers: int, image_size: int):
    """How the size of D's k-th layer with weights follows from the arguments, with this setting's numbers."""
    n = n_layers if image_size == 32 else (image_size // 4).bit_length() - 1
    last, side = conv_dim * 2**(n - 1), image_size // 2**n

    def explain(k: int) -> str:
        if k < n:
            return (f"the channels double at every convolution (conv_dim * 2**i): convolution {k + 1} makes "
                    f"conv_dim * 2**{k} = {conv_dim * 2**k} channels from {3 if k == 0 else conv_dim * 2**(k - 1)}, "
                    "with stride 2")
        return (f"the last feature map is conv_dim * 2**(n_layers - 1) = {last} channels of image_size // "
                f"2**n_layers = {side} pixels a side, so the linear layer takes {last * side * side} features")
    return explain


def _rule(k: int, n: int, what: str) -> str:
    """Which rule a difference at D's k-th of n layers with weights breaks."""
    if what == "count":
        return "D3"
    if k == n - 1:
        return "D7" if what == "width" else "D2"  # the output layer: its size, or something squashing the logit
    return {"width": "D4", "norm": "D5", "order": "D5", "act": "D6"}[what]


def test_discriminator(Discriminator: type, conv_dim: int = 32, image_size: int = 32, batch_norm: bool = True,
                       **kwargs) -> None:
    """D maps (N, 3, H, W) images to (N, 1) raw logits, and runs the notebook's layers in the notebook's order,
    at two widths and (where the signature has ``n_layers``) two depths."""
    D = _call("Discriminator(conv_dim)", Discriminator, conv_dim, **kwargs)
    check_no_pooling(D)
    x = torch.rand(50, 3, image_size, image_size) * 2 - 1
    check_one_logit_per_image(D, x, "Discriminator")
    n_layers = kwargs.get("n_layers", default_n_layers(Discriminator))
    if batch_norm:
        compare_layers(forward_ops(D, x[:16]), reference_ops(conv_dim, n_layers, image_size),
                       f"Discriminator({conv_dim})", _rule, WHY,
                       _sizes(conv_dim, n_layers, image_size))
    small = max(conv_dim // 2, 4)
    for cd, n in [(small, n_layers)] + [(conv_dim, m) for m in _other_n_layers(Discriminator, kwargs, image_size)]:
        args = {**kwargs, "n_layers": n} if n != n_layers or "n_layers" in kwargs else kwargs
        who = f"Discriminator({cd}" + (f", n_layers={n})" if n != n_layers else ")")
        Dn = _call(who, Discriminator, cd, **args)
        side, depth = image_size // 2**n, cd * 2**(n - 1)
        sizing = {"mat1 and mat2 shapes cannot be multiplied": (
            f"with conv_dim={cd} and n_layers={n} the last feature map is {depth} channels (conv_dim * 2**(n_layers - "
            f"1)) of {side}x{side} pixels (image_size // 2**n_layers): compute the linear layer's in_features, "
            f"{depth * side * side} here, from conv_dim and n_layers, not for one setting only", "D7")}
        check_one_logit_per_image(Dn, x[:8], who, sizing)
        if batch_norm:
            compare_layers(forward_ops(Dn, x[:8]), reference_ops(cd, n, image_size), who, _rule, WHY,
                           _sizes(cd, n, image_size))
    check_raw_logits(D, x)
    _note_view_on_channels_last(D, x)
    _passed(f"Discriminator maps (50, 3, {image_size}, {image_size}) to (50, 1) logits, layer by layer as the "
            "notebook's")


def check_no_pooling(D: nn.Module) -> None:
    pools = sorted({type(m).__name__ for m in D.modules()
                    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d))})
    if pools:
        _fail("Discriminator layers", "convolutions only", f"pooling layers {pools}",
              "DCGAN's D down-samples with stride-2 convolutions (stride=2, padding=1), not pooling", rule="D8")


def check_one_logit_per_image(D: nn.Module, x: torch.Tensor, who: str, hints: dict | None = None) -> None:
    """One logit per image, at the batch size given and at a batch of one (a flatten that loses the batch
    dimension shows there)."""
    for batch in (x, x[:1]):
        n = len(batch)
        out = _call(f"{who}.forward on {n} image{'s' if n > 1 else ''}", D, batch, _hints=hints)
        if not torch.is_tensor(out) or tuple(out.shape) != (n, 1):
            got = str(tuple(out.shape)) if torch.is_tensor(out) else repr(type(out))
            if torch.is_tensor(out) and out.shape == (n,):
                _fail(f"{who} output shape", f"({n}, 1)", got, "keep one column per image: do not squeeze D's output",
                      rule="D1")
            _fail(f"{who} output shape for a batch of {n}", f"({n}, 1)", got,
                  "flatten the feature map with x.flatten(1), which keeps the batch dimension whatever its size "
                  "(x.view(-1, k) with a k typed in moves images into the batch dimension), and give the linear "
                  "layer 1 output", rule="D9")


def check_raw_logits(D: nn.Module, x: torch.Tensor) -> None:
    """A raw logit is the last layer's output itself, a score anywhere on the real line: scaling that layer's
    weights and bias by 100 scales every logit by 100.  A sigmoid, tanh or clamp after it does not scale."""
    big = copy.deepcopy(D)
    weighted = [m for m, _, _ in _trace(big, x[:16]) if isinstance(m, _WEIGHTED)]
    if not weighted:
        return
    last = weighted[-1]  # the last layer with weights to run, whatever order the layers were registered in
    with torch.no_grad():
        out = big(x[:16]).float()
        last.weight.mul_(100)
        if last.bias is not None:
            last.bias.mul_(100)
        scaled = big(x[:16]).float()
    if not torch.allclose(scaled, 100 * out, rtol=1e-3, atol=1e-3 * (1 + out.abs().max().item())):
        lo, hi = scaled.min().item(), scaled.max().item()
        squash = ("a sigmoid" if lo >= 0 and hi <= 1 else "a tanh" if lo >= -1 and hi <= 1 else
                  "a clamp or another function")
        _fail("Discriminator outputs with the last layer's weights x100", "logits x100 (a raw score, anywhere on "
              "the real line)", f"values in [{lo:.3g}, {hi:.3g}], as after {squash}",
              f"remove {squash} after D's last layer: return its output as it is, and let BCEWithLogitsLoss apply "
              "the sigmoid itself, more stably", rule="D2")


def _note_view_on_channels_last(D: nn.Module, x: torch.Tensor) -> None:
    """Not a failure: helpers.train runs models in channels_last layout, where .view fails."""
    try:
        D(x[:2].contiguous(memory_format=torch.channels_last))
    except RuntimeError as e:
        if "view size" in str(e):
            print("Note: your D flattens with .view, which fails on channels_last tensors (helpers.train uses "
                  "them); x.flatten(1) works everywhere.")


