"""Checks for the learner's ``Generator``: latents z in, images in [-1, 1] out.

The check traces a forward pass to see the DCGAN shape whatever the code looks like: a projection
of z, then BatchNorm and ReLU; transposed convolutions down to conv_dim channels; an output layer
to 3 channels with tanh alone after it.  It then builds G with a second z_size and width and (where
the signature has ``n_layers``) a second depth, so that numbers typed in for one setting fail, and
checks that the images are a function of z: the same z the same image, different z different ones.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .layers import (
    _BATCHNORM,
    _NORMS,
    _WEIGHTED,
    _in_width,
    _is_activation,
    _layers,
    _other_n_layers,
    _out_width,
    _output_with_large_weights,
    _trace,
)
from .report import _call, _fail, _passed

#: Crashes of a generator's forward pass -> what to do about them (before the general CRASH_HINTS).
G_CRASH_HINTS = {
    "mat1 and mat2 shapes cannot be multiplied": "G's first layer must take z_size inputs: nn.Linear(z_size, "
                                                 "channels * side * side), built from the z_size argument rather "
                                                 "than a fixed 100",
    "is invalid for input of size": "the linear layer's out_features must equal channels x side x side of the "
                                    "reshape that follows it (conv_dim * 2**(n_layers - 1) channels, "
                                    "image_size // 2**n_layers pixels a side), both computed from the arguments",
}


#: What G's output layer does instead of tanh -> how the failure message says it.
_NOT_TANH = {"sigmoid": "sigmoid, whose images live in [0, 1]",
             "clamp": "a clamp to [-1, 1], which passes no gradient wherever it clips",
             "none": "nothing: the last layer's output is returned as it is"}
_TANH_HINT = ("end G with torch.tanh(x) (or nn.Tanh()): smooth, with gradients everywhere, and with the same "
              "[-1, 1] range as the scaled real images")


def test_generator(Generator: type, z_size: int = 100, conv_dim: int = 32, image_size: int = 32,
                   latent_shape: tuple | None = None, **kwargs) -> None:
    """G maps (N, z_size) latents to (N, 3, H, W) images through tanh, spanning [-1, 1]: a projection of z
    followed by BatchNorm and ReLU, transposed convolutions down to conv_dim channels, and an output layer that is
    a transposed convolution to 3 channels with tanh alone after it.  z_size, conv_dim and (where the signature
    has it) n_layers are honoured at more than one value, and different z give different images."""
    G = _call("Generator(z_size, conv_dim)", Generator, z_size, conv_dim, **kwargs)
    z = torch.randn(50, *(latent_shape or (z_size,)))
    out = _call("Generator.forward", G, z, _hints=G_CRASH_HINTS)
    expected = (50, 3, image_size, image_size)
    _check_output_shape(out, expected)
    calls, weighted = _weighted_trace(G, z)
    _check_architecture(G, calls, weighted, z_size, conv_dim)
    _check_function_of_z(G, z)
    _check_tanh_range(G, z)
    _check_second_size(Generator, z_size, conv_dim, image_size, latent_shape, kwargs, [calls[i][0] for i in weighted])
    _check_second_depth(Generator, z_size, conv_dim, image_size, z, kwargs)
    _passed(f"Generator maps {tuple(z.shape)} to {expected} in [-1, 1]")


def _check_output_shape(out, expected: tuple) -> None:
    if not torch.is_tensor(out) or tuple(out.shape) != expected:
        batch_changed = torch.is_tensor(out) and out.dim() == 4 and out.shape[0] != 50
        _fail("Generator output shape", str(expected), str(tuple(out.shape)) if torch.is_tensor(out) else repr(out),
              "the batch dimension changed, so the reshape after the linear layer does not match its size: "
              "out_features must equal channels x side x side, both computed from conv_dim and n_layers"
              if batch_changed else
              "each stride-2 transposed conv (kernel 4, padding 1) doubles height and width: start from "
              "image_size // 2**n_layers, and let the last one output 3 channels")


def _weighted_trace(G: nn.Module, z: torch.Tensor) -> tuple[list, list[int]]:
    """The trace of one forward pass of (a copy of) G, and the positions in it of the layers with weights."""
    calls = _trace(copy.deepcopy(G), z)
    return calls, [i for i, (m, _, _) in enumerate(calls) if isinstance(m, _WEIGHTED)]


def _check_architecture(G: nn.Module, calls: list, weighted: list[int], z_size: int, conv_dim: int) -> None:
    """DCGAN's shape: a projection of z_size inputs, then BatchNorm and ReLU; the output layer; BatchNorm."""
    if len(weighted) < 2:
        _fail("Generator layers", "a projection of z (nn.Linear) and transposed convolutions (nn.ConvTranspose2d)",
              f"{len(weighted)} layer(s) with weights", "make each layer an attribute of the module (self.fc = "
              "nn.Linear(...), or a list of them in nn.Sequential), so that PyTorch trains them")
    _check_output_layer(calls, weighted, conv_dim, f"Generator({z_size}, {conv_dim})")
    if not _layers(G, (nn.BatchNorm2d, nn.BatchNorm1d)):
        _fail("Generator layers", "BatchNorm after each hidden layer", "no BatchNorm",
              "add nn.BatchNorm2d(channels) before each ReLU (not after the output layer): it keeps G's "
              "activations well scaled and training stable")
    first = calls[weighted[0]][0]
    if _in_width(first) != z_size:
        _fail(f"Generator({z_size}, {conv_dim})'s first layer", f"{z_size} inputs (z_size)",
              str(_in_width(first)), "build the first layer from the z_size argument: nn.Linear(z_size, ...)")
    for k in range(len(weighted) - 2):  # every hidden layer: the projection, then all but the output layer
        _check_projection(calls, weighted, k)


def _check_function_of_z(G: nn.Module, z: torch.Tensor) -> None:
    """The images are a function of z: the same z gives the same image, different z different images."""
    with torch.no_grad():
        frozen = copy.deepcopy(G).eval()
        a, b = frozen(z), frozen(z)
    if not torch.allclose(a, b, atol=1e-6):
        _fail("Generator(z) twice (in eval mode)", "the same images for the same z", "different images",
              "G must be a function of z alone: pass the z that forward receives to the first layer, and draw no "
              "new noise inside G (z is the noise)")
    if (a - a[:1]).abs().max().item() < 1e-6:
        _fail("Generator outputs", "a different image for each z", f"the same image for all {len(z)} latent vectors",
              "feed the z that forward receives to the first layer (x = self.fc(z)): a G that ignores z cannot "
              "draw more than one face")


def _check_tanh_range(G: nn.Module, z: torch.Tensor) -> None:
    """tanh after the last layer, its output returned as it is: with large weights it reaches both -1 and 1."""
    act = _output_activation(G, z)
    if act in _NOT_TANH:
        _fail("Generator output layer", "tanh after the last transposed convolution", _NOT_TANH[act], _TANH_HINT)
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
              hint)


def _check_second_size(Generator: type, z_size: int, conv_dim: int, image_size: int, latent_shape: tuple | None,
                       kwargs: dict, layers1: list[nn.Module]) -> None:
    """A second z_size and width: numbers typed in instead of z_size and conv_dim show up here.  ``layers1`` are
    the layers with weights of G at (z_size, conv_dim), in the order they run."""
    z2, cd2 = (64 if z_size != 64 else 100), max(conv_dim // 2, 4)
    what2 = f"Generator({z2}, {cd2})"
    G2 = _call(what2, Generator, z2, cd2, **kwargs)
    projection = (_layers(G2, nn.Linear) or _layers(G2, _WEIGHTED) or [None])[0]  # before running it
    if projection is not None and _in_width(projection) != z2:
        _fail(f"{what2}'s first layer", f"{z2} inputs (z_size)", str(_in_width(projection)),
              "build the first layer from the z_size argument, nn.Linear(z_size, ...), not a fixed number such "
              "as 100: other presets draw faces from latents of other sizes")
    z_2 = torch.randn(8, *((z2, *latent_shape[1:]) if latent_shape else (z2,)))
    out2 = _call(f"{what2}.forward", G2, z_2, _hints=G_CRASH_HINTS)
    if not torch.is_tensor(out2) or tuple(out2.shape) != (8, 3, image_size, image_size):
        _fail(f"{what2} output shape", str((8, 3, image_size, image_size)), str(tuple(getattr(out2, "shape", ()))),
              "compute every size from the arguments z_size and conv_dim, not from the values they had once")
    calls2, weighted2 = _weighted_trace(G2, z_2)
    _check_output_layer(calls2, weighted2, cd2, what2)
    _check_widths_scale(layers1, [calls2[i][0] for i in weighted2], conv_dim, cd2, what2)


def _check_widths_scale(layers1: list[nn.Module], layers2: list[nn.Module], conv_dim: int, cd2: int,
                        what2: str) -> None:
    """Every hidden width of G built with ``cd2`` (``layers2``) is the one built with ``conv_dim`` (``layers1``)
    times cd2 / conv_dim."""
    if len(layers1) != len(layers2):
        return
    for k, (m1, m2) in enumerate(zip(layers1, layers2, strict=True)):
        for side, w1, w2 in (("input", _in_width(m1), _in_width(m2)), ("output", _out_width(m1), _out_width(m2))):
            if (side == "input" and k == 0) or (side == "output" and k == len(layers1) - 1):
                continue  # z_size in, 3 colours out: not widths
            if w2 * conv_dim != w1 * cd2:
                unit = "features" if isinstance(m2, nn.Linear) else "channels"
                _fail(f"{what2}: layer {k + 1} ({type(m2).__name__}) {side}",
                      f"{w1 * cd2 / conv_dim:g} {unit} (it has {w1} with conv_dim={conv_dim}, and every "
                      f"hidden width scales with conv_dim)", f"{w2}",
                      "compute every hidden width from conv_dim (conv_dim * 4, conv_dim * 2, conv_dim...): "
                      "this layer's is a fixed number")


def _check_second_depth(Generator: type, z_size: int, conv_dim: int, image_size: int, z: torch.Tensor,
                        kwargs: dict) -> None:
    """A second depth (where the signature has n_layers): a fixed number of transposed convolutions shows up here."""
    for n in _other_n_layers(Generator, kwargs, image_size):
        what = f"Generator({z_size}, {conv_dim}, n_layers={n})"
        Gn = _call(what, Generator, z_size, conv_dim, **{**kwargs, "n_layers": n})
        outn = _call(f"{what}.forward", Gn, z[:8], _hints=G_CRASH_HINTS)
        depth = (f"with n_layers={n}, start from {image_size // 2**n}x{image_size // 2**n} pixels "
                 f"(image_size // 2**n_layers) and {conv_dim * 2**(n - 1)} channels (conv_dim * 2**(n_layers - 1)), "
                 "and build the n_layers transposed convolutions in a loop, so that the last one reaches "
                 "image_size with conv_dim channels in")
        if not torch.is_tensor(outn) or tuple(outn.shape) != (8, 3, image_size, image_size):
            _fail(f"{what} output shape", str((8, 3, image_size, image_size)),
                  str(tuple(getattr(outn, "shape", ()))), depth)
        callsn, weightedn = _weighted_trace(Gn, z[:8])
        strided = [m for m, _, _ in callsn if isinstance(m, nn.ConvTranspose2d) and tuple(m.stride) == (2, 2)]
        if len(strided) != n:
            _fail(f"{what} layers", f"{n} stride-2 transposed convolutions (n_layers)", f"{len(strided)}",
                  "the n_layers argument is ignored: " + depth)
        _check_output_layer(callsn, weightedn, conv_dim, what)


def _check_output_layer(calls: list, weighted: list[int], conv_dim: int, what: str) -> None:
    """The last layer is a transposed convolution from conv_dim to 3 channels, followed by tanh and nothing else."""
    last = calls[weighted[-1]][0]
    if not isinstance(last, nn.ConvTranspose2d) or last.out_channels != 3:
        _fail(f"{what} output layer", "a transposed convolution to 3 channels, nn.ConvTranspose2d(conv_dim, 3, 4, "
              "2, 1)", f"{type(last).__name__} with {_out_width(last)} output channels",
              "let G's last layer be the transposed convolution that doubles the image to full size and outputs "
              "the 3 colour channels; nothing but tanh comes after it")
    if last.in_channels != conv_dim:
        _fail(f"{what} last transposed convolution", f"{conv_dim} input channels (conv_dim)",
              str(last.in_channels), "halve the channels layer by layer down to conv_dim, computing them from "
              "the conv_dim argument instead of fixed numbers: conv_dim is the width of G's last hidden layer, "
              "and the output layer takes exactly conv_dim channels")
    after = [m for m, _, _ in calls[weighted[-1] + 1:]]
    norms = [type(m).__name__ for m in after if isinstance(m, _NORMS)]
    if norms:
        _fail(f"{what} output layer", "tanh right after the last transposed convolution",
              f"{norms[0]} between them",
              "remove that normalisation: DCGAN leaves G's output layer (like D's input layer) without BatchNorm, "
              "because applying it to every layer made the samples oscillate and training unstable, and it would "
              "force each colour channel of every batch to the same mean and spread")
    wrong = [m for m in after if _is_activation(m) and not isinstance(m, nn.Tanh)]
    if wrong:
        m = wrong[0]
        key = "sigmoid" if isinstance(m, nn.Sigmoid) else "clamp" if type(m) is nn.Hardtanh else None
        got = _NOT_TANH[key] if key else (
            f"{type(m).__name__} before tanh: no pixel can then be darker than tanh(0) = 0"
            if any(isinstance(t, nn.Tanh) for t in after) and isinstance(m, (nn.ReLU, nn.LeakyReLU)) else
            f"{type(m).__name__}")
        hint = (_TANH_HINT if key else f"remove the {type(m).__name__} after the last transposed convolution: "
                "ReLU belongs to the hidden layers, and the output goes through tanh alone")
        _fail(f"{what} output layer", "tanh after the last transposed convolution", got, hint)


def _check_projection(calls: list, weighted: list[int], k: int = 0) -> None:
    """BatchNorm, then ReLU, between G's k-th layer with weights (0: the projection of z) and the next one."""
    first, nxt = weighted[k], weighted[k + 1]
    between = calls[first + 1:nxt]
    names = ", ".join(type(m).__name__ for m, _, _ in between) or "nothing"
    layer = type(calls[first][0]).__name__
    what = (f"Generator after its first layer (the {layer} that projects z)" if k == 0 else
            f"Generator after its hidden layer {k + 1} (a {layer})")
    bn = next((j for j, (m, _, _) in enumerate(between) if isinstance(m, _BATCHNORM)), None)
    if bn is None:
        _fail(what, "BatchNorm, then ReLU", f"{names} before the next layer",
              "add nn.BatchNorm2d(channels) and nn.ReLU() after reshaping the projection's output (or "
              "nn.BatchNorm1d before the reshape): DCGAN normalises and activates every hidden layer of G, "
              "the projection included; only the output layer goes without" if k == 0 else
              "add nn.BatchNorm2d(out_channels) and nn.ReLU() after every transposed convolution but the last: "
              "DCGAN normalises and activates every hidden layer of G, not only the projection")
    if any(isinstance(m, (nn.ReLU, nn.LeakyReLU)) for m, _, _ in between[bn + 1:]):
        return
    bn_out, x_next = between[bn][2], calls[nxt][1]
    if bn_out is not None and x_next is not None and bn_out.numel() == x_next.numel():
        a, b = bn_out.flatten(), x_next.flatten()
        if torch.allclose(b, a.clamp_min(0), atol=1e-5) or _is_leaky(a, b):
            return  # a functional relu
    before = [type(m).__name__ for m, _, _ in between[:bn] if _is_activation(m)]
    got = (f"{before[0]} before the BatchNorm and nothing after it" if before else
           "the BatchNorm's output passed on unchanged")
    _fail(what, "BatchNorm, then ReLU", got,
          ("ReLU goes after BatchNorm, not before it: " if before else "") +
          "apply ReLU to the BatchNorm's output (nn.ReLU() in the Sequential, or F.relu(self.bn(x)) in forward) "
          "before the next transposed convolution: without it the two layers are one linear map")


def _is_leaky(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether b = LeakyReLU(a) for some slope in (0, 1)."""
    neg, pos = a < -1e-2, a > 1e-2
    if neg.sum() < 10 or not torch.allclose(b[pos], a[pos], atol=1e-5):
        return False
    ratio = b[neg] / a[neg]
    return 0 < ratio.mean().item() < 1 and ratio.std().item() < 1e-3


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
