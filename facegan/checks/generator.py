"""Checks for the learner's ``Generator``: latents z in, images in [-1, 1] out.

The check runs the learner's G and reads what its forward pass does (``layers.forward_ops``), whatever
the code looks like, then compares it layer by layer with the notebook's G built with the same
arguments: a projection of z followed by BatchNorm and ReLU; transposed convolutions that double the
size and halve the channels, each but the last followed by BatchNorm and ReLU; the last one from
conv_dim to 3 channels with tanh alone after it.  It does so at a second z_size and width and (where
the signature has ``n_layers``) a second depth, so that numbers typed in for one setting fail, and
checks what the notebook says G's output is: images spanning [-1, 1] through tanh, a function of z.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn

from .layers import (
    Op,
    _other_n_layers,
    _output_with_large_weights,
    _trace,
    compare_layers,
    default_n_layers,
    forward_ops,
)
from .report import _call, _fail, _passed

#: Crashes of a generator's forward pass -> what to do about them (before the general CRASH_HINTS).
G_CRASH_HINTS = {
    "mat1 and mat2 shapes cannot be multiplied": ("G's first layer must take z_size inputs: nn.Linear(z_size, "
                                                  "channels * side * side), built from the z_size argument rather "
                                                  "than a fixed 100", "G7"),
    "is invalid for input of size": ("the linear layer's out_features must equal channels x side x side of the "
                                     "reshape that follows it (conv_dim * 2**(n_layers - 1) channels, "
                                     "image_size // 2**n_layers pixels a side), both computed from the arguments",
                                     "G7"),
}


#: What G's output layer does instead of tanh -> how the failure message says it.
_NOT_TANH = {"sigmoid": "sigmoid, whose images live in [0, 1]",
             "clamp": "a clamp to [-1, 1], which passes no gradient wherever it clips",
             "none": "nothing: the last layer's output is returned as it is"}
_TANH_HINT = ("end G with torch.tanh(x) (or nn.Tanh()): smooth, with gradients everywhere, and with the same "
              "[-1, 1] range as the scaled real images")




def reference_ops(z_size: int, conv_dim: int, n_layers: int, image_size: int) -> list[Op]:
    """The notebook's G as operations.  32x32 (the exercise): a linear projection of z to conv_dim * 2**(n_layers
    - 1) channels of image_size // 2**n_layers pixels, BatchNorm and ReLU, then n_layers transposed convolutions
    halving the channels, each but the last followed by BatchNorm and ReLU, the last to 3 channels and tanh.
    64x64 and up (the DCGAN presets): a stride-1 transposed convolution of the (z_size, 1, 1) latent to 4x4."""
    linear_stem = image_size == 32
    n = n_layers if linear_stem else (image_size // 4).bit_length() - 1
    top, side = conv_dim * 2**(n - 1), image_size // 2**n
    ops: list[Op] = [("linear", z_size, top * side * side) if linear_stem else ("convT", z_size, top, 1),
                     ("norm", "BatchNorm"), ("act", "ReLU")]
    ch = top
    for _ in range(n - 1):
        ops += [("convT", ch, ch // 2, 2), ("norm", "BatchNorm"), ("act", "ReLU")]
        ch //= 2
    return ops + [("convT", ch, 3, 2), ("act", "tanh")]


#: The notebook's reasons, added to a hint when the rule is broken.
WHY = {
    "G2": "DCGAN normalises and activates every hidden layer of G, the projection of z included: without the ReLU "
          "two layers are one linear map",
    "G4": "every transposed convolution but the last is followed by BatchNorm, then ReLU: BatchNorm keeps G's "
          "activations well scaled, and ReLU goes after it",
    "G5": "the channels halve layer by layer down to conv_dim, computed from the arguments: the last transposed "
          "convolution takes exactly conv_dim channels and outputs the 3 colour channels",
    "G6": "the output layer is followed by tanh alone: smooth, with gradients everywhere, and with the same [-1, 1] "
          "range as the scaled real images; no BatchNorm there (it made the samples oscillate) and no ReLU",
}


def equivalent_ops(ops: list[Op], image_size: int, n_layers: int) -> list[Op]:
    """The learner's operations with two equivalent choices written the notebook's way: a LeakyReLU for a ReLU in
    G (the improved64 recipe's choice), and the DCGAN paper's projection of z as a 1x1 image by a stride-1
    transposed convolution for the linear projection (both are the same linear map of z)."""
    side = image_size // 2**n_layers if image_size == 32 else 4
    ops = [("act", "ReLU") if o[0] == "act" and o[1].startswith("LeakyReLU") else o for o in ops]
    if image_size == 32 and ops and ops[0][0] == "convT" and ops[0][3] == 1:
        ops = [("linear", ops[0][1], ops[0][2] * side * side), *ops[1:]]
    return ops


def _sizes(z_size: int, conv_dim: int, n_layers: int, image_size: int) -> Callable[[int], str]:
    """How the size of G's k-th layer with weights follows from the arguments, with this setting's numbers."""
    n = n_layers if image_size == 32 else (image_size // 4).bit_length() - 1
    top, side = conv_dim * 2**(n - 1), image_size // 2**n

    def explain(k: int) -> str:
        if k == 0:
            return (f"the projection takes z_size = {z_size} inputs and makes conv_dim * 2**(n_layers - 1) = {top} "
                    f"channels of image_size // 2**n_layers = {side} pixels a side, {top * side * side} features")
        if k == n:
            return f"the last transposed convolution takes conv_dim = {conv_dim} channels and outputs 3"
        return (f"transposed convolution {k} halves the channels, {top // 2**(k - 1)} -> {top // 2**k} "
                f"(conv_dim * 2**(n_layers - 1 - {k}))")
    return explain


def _rule(k: int, n: int, what: str) -> str:
    """Which rule a difference at G's k-th of n layers with weights breaks."""
    if what == "count":
        return "G3"
    if k == 0:
        return "G2"  # the projection of z: its size, or the BatchNorm and ReLU after it
    if k == n - 1:
        return "G5" if what == "width" else "G6"
    return "G3" if what == "width" else "G4"


def test_generator(Generator: type, z_size: int = 100, conv_dim: int = 32, image_size: int = 32,
                   latent_shape: tuple | None = None, **kwargs) -> None:
    """G maps (N, z_size) latents to (N, 3, H, W) images through tanh, spanning [-1, 1], and runs the notebook's
    layers in the notebook's order, at two sizes of z, two widths and (where the signature has ``n_layers``)
    two depths; different z give different images."""
    G = _call("Generator(z_size, conv_dim)", Generator, z_size, conv_dim, **kwargs)
    z = torch.randn(50, *(latent_shape or (z_size,)))
    out = _call("Generator.forward", G, z, _hints=G_CRASH_HINTS)
    expected = (50, 3, image_size, image_size)
    check_output_shape(out, expected)
    check_function_of_z(G, z)
    n_layers = kwargs.get("n_layers", default_n_layers(Generator))
    ops = equivalent_ops(forward_ops(G, z[:16]), image_size, n_layers)
    if any(o[0] == "act" and o[1].startswith("tanh x") for o in ops):
        check_tanh_range(G, z)  # a scaled or shifted tanh: the images' range says it best
    check_last_layer(ops, conv_dim, f"Generator({z_size}, {conv_dim})")
    compare_layers(ops,
                   reference_ops(z_size, conv_dim, n_layers, image_size), f"Generator({z_size}, {conv_dim})", _rule,
                   WHY, _sizes(z_size, conv_dim, n_layers, image_size))
    check_tanh_range(G, z)
    check_other_sizes(Generator, z_size, conv_dim, n_layers, image_size, latent_shape, kwargs)
    _passed(f"Generator maps {tuple(z.shape)} to {expected} in [-1, 1], layer by layer as the notebook's")


def check_last_layer(ops: list[Op], conv_dim: int, who: str) -> None:
    """The last layer with weights is a transposed convolution from exactly conv_dim channels to 3."""
    last = next((o for o in reversed(ops) if o[0] in ("conv", "convT", "linear")), None)
    if last is not None and last[0] == "convT" and (last[1] != conv_dim or last[2] != 3):
        _fail(f"{who}: your last transposed convolution", f"ConvTranspose2d({conv_dim}, 3, ...): conv_dim in, the 3 "
              f"colour channels out", f"ConvTranspose2d({last[1]}, {last[2]}, ...)", WHY["G5"], rule="G5")


def check_output_shape(out, expected: tuple) -> None:
    if not torch.is_tensor(out) or tuple(out.shape) != expected:
        batch_changed = torch.is_tensor(out) and out.dim() == 4 and out.shape[0] != expected[0]
        _fail("Generator output shape", str(expected), str(tuple(out.shape)) if torch.is_tensor(out) else repr(out),
              "the batch dimension changed, so the reshape after the linear layer does not match its size: "
              "out_features must equal channels x side x side, both computed from conv_dim and n_layers"
              if batch_changed else
              "each stride-2 transposed conv (kernel 4, padding 1) doubles height and width: start from "
              "image_size // 2**n_layers, and let the last one output 3 channels", rule="G1")


def check_other_sizes(Generator: type, z_size: int, conv_dim: int, n_layers: int, image_size: int,
                      latent_shape: tuple | None, kwargs: dict) -> None:
    """A second z_size and width, and a second depth: numbers typed in for one setting show up here."""
    z2, cd2 = (64 if z_size != 64 else 100), max(conv_dim // 2, 4)
    settings = [(z2, cd2, n_layers)] + [(z_size, conv_dim, m) for m in _other_n_layers(Generator, kwargs, image_size)]
    for zs, cd, n in settings:
        args = {**kwargs, "n_layers": n} if n != n_layers or "n_layers" in kwargs else kwargs
        who = f"Generator({zs}, {cd}" + (f", n_layers={n})" if n != n_layers else ")")
        Gn = _call(who, Generator, zs, cd, **args)
        zn = torch.randn(8, *((zs, *latent_shape[1:]) if latent_shape else (zs,)))
        outn = _call(f"{who}.forward", Gn, zn, _hints=G_CRASH_HINTS)
        if not torch.is_tensor(outn) or tuple(outn.shape) != (8, 3, image_size, image_size):
            _fail(f"{who} output shape", str((8, 3, image_size, image_size)), str(tuple(getattr(outn, "shape", ()))),
                  "compute every size from the arguments z_size, conv_dim and n_layers (start from "
                  "conv_dim * 2**(n_layers - 1) channels of image_size // 2**n_layers pixels), not from the "
                  "values they had once", rule="G7")
        compare_layers(equivalent_ops(forward_ops(Gn, zn), image_size, n), reference_ops(zs, cd, n, image_size),
                       who, _rule, WHY, _sizes(zs, cd, n, image_size))


def check_function_of_z(G: nn.Module, z: torch.Tensor) -> None:
    """The images are a function of z: the same z gives the same image, different z different images."""
    with torch.no_grad():
        frozen = copy.deepcopy(G).eval()
        a, b = frozen(z), frozen(z)
    if not torch.allclose(a, b, atol=1e-6):
        _fail("Generator(z) twice (in eval mode)", "the same images for the same z", "different images",
              "G must be a function of z alone: pass the z that forward receives to the first layer, and draw no "
              "new noise inside G (z is the noise)", rule="G8")
    if (a - a[:1]).abs().max().item() < 1e-6:
        _fail("Generator outputs", "a different image for each z", f"the same image for all {len(z)} latent vectors",
              "feed the z that forward receives to the first layer (x = self.fc(z)): a G that ignores z cannot "
              "draw more than one face", rule="G8")


def check_tanh_range(G: nn.Module, z: torch.Tensor) -> None:
    """tanh after the last layer, its output returned as it is: with large weights it reaches both -1 and 1."""
    act = _output_activation(G, z)
    if act in _NOT_TANH:
        _fail("Generator output layer", "tanh after the last transposed convolution", _NOT_TANH[act], _TANH_HINT,
              rule="G6")
    # Large weights make the pre-activation output huge: tanh then reaches both ends of [-1, 1].
    big = _output_with_large_weights(G, z)
    lo, hi = big.min().item(), big.max().item()
    if lo < -1 - 1e-5 or hi > 1 + 1e-5 or lo > -0.99 or hi < 0.99:
        if lo >= -1e-3 and hi <= 1 + 1e-5:
            hint = ("these images live in [0, 1], but the real ones are scaled to [-1, 1]: return tanh's output as "
                    "it is, without shifting or rescaling it")
        elif lo >= -1 - 1e-5 and hi <= 1 + 1e-5:
            hint = ("the images are squashed into a narrow band: return tanh's output as it is, not scaled down "
                    "(and do not divide its input by a constant)")
        else:
            hint = "end G with tanh, so its images live in the same [-1, 1] range as the scaled real images"
        _fail("Generator output range", "values reaching both -1 and 1 (tanh's range)", f"[{lo:.3g}, {hi:.3g}]",
              hint, rule="G9")


def _output_activation(G: nn.Module, z: torch.Tensor) -> str | None:
    """Which function G applies after its last convolution: 'tanh', 'sigmoid', 'clamp', 'none', or None (unknown)."""
    G = copy.deepcopy(G)
    weighted = [m for m, _, _ in _trace(G, z) if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    if not weighted:
        return None
    last = weighted[-1]  # the last one to run, whatever order the layers were registered in
    pre = {}
    handle = last.register_forward_hook(lambda m, i, o: pre.__setitem__("x", o))
    try:
        with torch.no_grad():
            G(z)
            std = pre["x"].std().clamp_min(1e-12)
            last.weight.div_(std)  # pre-activations of std ~1: there tanh, clamp and the identity differ
            if last.bias is not None:
                last.bias.div_(std)
            out = G(z)
    finally:
        handle.remove()
    p = pre["x"]
    if out.shape != p.shape:
        return None
    mask = (p.abs() > 0.2) & (p.abs() < 3)
    if mask.sum() < 100:
        return None
    candidates = {"tanh": torch.tanh(p), "sigmoid": torch.sigmoid(p), "clamp": p.clamp(-1, 1), "none": p}
    errors = {k: (v - out)[mask].abs().max().item() for k, v in candidates.items()}
    best = min(errors, key=errors.get)
    return best if errors[best] < 1e-3 else None
