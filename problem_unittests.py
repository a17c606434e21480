"""Checks for the pieces of a face GAN, written to be read by a learner.

Call them from the notebook on your own code::

    from problem_unittests import test_discriminator
    test_discriminator(Discriminator)

Each check prints one pass line, or raises ``AssertionError`` saying which check
failed, what was expected, what came back, the likely cause and a hint.  The checks
test behaviour, not only shapes: the D and G steps are compared with a reference
update on copies of the same models and batch, and a mismatch is matched against the
usual mistakes (a missing ``zero_grad``, swapped labels, ``fake_loss`` in the G step...)
to name the likely one.  ``tests/test_problem_unittests.py`` plants those mistakes.

``require_bce_game(cfg)`` guards the notebook's training loop: it plays the BCE game with your
steps, and for a preset that plays another game it says what to run instead.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class CheckFailed(AssertionError):
    """A check failed; the message says what was expected and how to fix it."""


def _fail(check: str, expected: str, got: str, hint: str) -> None:
    raise CheckFailed(f"{check}: expected {expected}, got {got}.\nHint: {hint}")


def _passed(what: str) -> None:
    print(f"Tests Passed: {what}")


#: Crashes a learner meets often: a fragment of the error message -> what to do about it.
CRASH_HINTS = {
    "'next'": "iterators lost their .next() method; write next(iter(loader)) or next(dataiter) "
              "instead of dataiter.next()",
    "view size is not compatible": "flatten with x.flatten(1) (or x.reshape(x.size(0), -1)): .view needs a "
                                   "contiguous tensor, and feature maps in channels_last layout are not",
    "mat1 and mat2 shapes cannot be multiplied": "the linear layer's in_features must equal the flattened feature "
                                                 "map, channels x side x side of the last convolution's output "
                                                 "(4*conv_dim x 4 x 4 for 32x32 images after 3 stride-2 convs), "
                                                 "computed from conv_dim rather than typed in",
    "must be the same as input size": "give the labels D_out's shape: torch.ones_like(D_out), or "
                                      "torch.ones(D_out.size(0)) with D_out.squeeze()",
    "should be between 0 and 1": "nn.BCELoss expects probabilities, but D outputs logits: use "
                                 "nn.BCEWithLogitsLoss(), which applies the sigmoid itself",
    "has no attribute 'weight'": "model.apply(fn) calls fn on every module, also on ReLU and Sequential, which "
                                 "have no weights: test the type first, e.g. isinstance(m, (nn.Conv2d, "
                                 "nn.ConvTranspose2d, nn.Linear))",
    "has no attribute 'backward'": "return the loss tensor itself, not loss.item(): the step needs it for "
                                   "backward()",
    "channels, but got": "a layer receives another number of channels than it was built for: each layer's "
                         "in_channels must be the previous layer's out_channels, computed from conv_dim step by "
                         "step",
    "running_mean should contain": "a BatchNorm2d(c) must have the channels of the layer before it: "
                                   "nn.BatchNorm2d(out_ch) right after a layer with out_ch output channels",
    "does not require grad": "the loss is not connected to the weights: do not detach (or .item()) it; in the "
                             "G step only the D step's fakes are detached",
}


def _call(what: str, fn: Callable, *args, _hints: dict[str, str] | None = None, **kwargs):
    """Call learner code, turning the usual crashes into advice (``_hints`` first, then ``CRASH_HINTS``)."""
    try:
        return fn(*args, **kwargs)
    except CheckFailed:
        raise
    except NotImplementedError:
        raise CheckFailed(f"{what} is not implemented yet: replace the "
                          "`raise NotImplementedError` in its TODO with your code.") from None
    except Exception as e:  # noqa: BLE001 - only the known crashes are rewritten; the rest re-raised
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        for fragment, hint in [*(_hints or {}).items(), *CRASH_HINTS.items()]:
            if fragment in str(e):
                raise CheckFailed(f"{what} crashed: {type(e).__name__}: {text}\nHint: {hint}") from None
        raise


def _output_with_large_weights(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of a copy of ``model`` whose conv and linear weights are ~N(0, 1): what a
    squashing output layer (sigmoid, tanh) does then shows plainly."""
    big = copy.deepcopy(model)
    with torch.no_grad():
        for p in big.parameters():
            if p.dim() > 1:
                p.normal_(0, 1)
        return big(x)


def _layers(model: nn.Module, kind) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


# ------------------------------------------------------------------------------------------ data

def test_scale(scale: Callable) -> None:
    """scale(x) maps [0, 1] to [-1, 1], and to any feature_range given."""
    x = torch.linspace(0, 1, 11)
    y = _call("scale", scale, x)
    if not torch.is_tensor(y) or y.shape != x.shape:
        _fail("scale", f"a tensor of shape {tuple(x.shape)}", repr(type(y)) if not torch.is_tensor(y)
              else f"shape {tuple(y.shape)}", "work element-wise on the tensor you are given, and return it")
    lo, hi = y.min().item(), y.max().item()
    if not (math.isclose(lo, -1, abs_tol=1e-5) and math.isclose(hi, 1, abs_tol=1e-5)):
        _fail("scale", "[0, 1] mapped to [-1, 1]", f"[{lo:.3g}, {hi:.3g}]",
              "multiply by (max - min), then add min: x * (max - min) + min")
    if not math.isclose(y[5].item(), 0, abs_tol=1e-5):
        _fail("scale", "0.5 mapped to 0", f"{y[5].item():.3g}", "the mapping must be linear: x * (max - min) + min")
    y2 = _call("scale", scale, x, feature_range=(0.5, 2.0))
    if not (math.isclose(y2.min().item(), 0.5, abs_tol=1e-5) and math.isclose(y2.max().item(), 2.0, abs_tol=1e-5)):
        _fail("scale(x, feature_range=(0.5, 2))", "[0.5, 2]", f"[{y2.min().item():.3g}, {y2.max().item():.3g}]",
              "read min and max from the feature_range argument (lo, hi = feature_range) instead of using -1 and 1")
    _passed("scale maps [0, 1] to feature_range")


def _first_batch(loader) -> torch.Tensor:
    images = _call("getting a batch", lambda: next(iter(loader)))
    return images[0] if isinstance(images, (list, tuple)) else images  # ImageFolder yields (images, labels)


def test_dataloader(get_dataloader: Callable, image_size: int = 32, batch_size: int = 16, **kwargs) -> None:
    """Batches are (batch, 3, image_size, image_size), span [-1, 1], and come in a new order each epoch."""
    loader = _call("get_dataloader", get_dataloader, batch_size, image_size, **kwargs)
    images = _first_batch(loader)
    expected = (batch_size, 3, image_size, image_size)
    if not torch.is_tensor(images) or tuple(images.shape) != expected:
        _fail("data batch shape", str(expected), str(tuple(getattr(images, "shape", ()))) or repr(type(images)),
              "Resize(image_size) AND CenterCrop(image_size), ToTensor(), and batch_size passed to the DataLoader")
    lo, hi = images.min().item(), images.max().item()
    if lo >= 0:
        _fail("data value range", "values in [-1, 1]", f"[{lo:.3g}, {hi:.3g}], as straight from ToTensor",
              "ToTensor gives [0, 1]; add transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) to reach tanh's "
              "[-1, 1]")
    if lo < -1 - 1e-5 or hi > 1 + 1e-5 or lo > -0.9 or hi < 0.9:
        _fail("data value range", "values spanning [-1, 1] (dark pixels near -1, bright ones near 1)",
              f"[{lo:.3g}, {hi:.3g}]", "normalise with mean 0.5 and std 0.5 per channel, not ImageNet's "
              "statistics: Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) maps [0, 1] exactly to [-1, 1]")
    again = _first_batch(loader)
    same = all(torch.equal(a, b) or torch.equal(a, b.flip(-1)) for a, b in zip(images, again, strict=False))
    if same:
        _fail("data order", "a new order each pass over the data", "the same first batch twice",
              "pass shuffle=True to the DataLoader: without it, every epoch shows D the faces in the same order")
    _passed(f"batches of shape {expected}, spanning [-1, 1], shuffled")


# ------------------------------------------------------------------------------------------ models

#: Layers with weights; the normalisations; layers that change no values (skipped when reading a trace).
_WEIGHTED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
_BATCHNORM = nn.modules.batchnorm._BatchNorm
_NORMS = (_BATCHNORM, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
_PASSIVE = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.Unflatten)


def _is_activation(m: nn.Module) -> bool:
    return type(m).__module__ == "torch.nn.modules.activation"


def _trace(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor | None, torch.Tensor | None]]:
    """The layers one forward pass of ``model`` runs, in the order it runs them, each with a copy of its input and
    output (copies: an in-place ReLU overwrites its input).  Pass a copy of the learner's model: in training mode
    the pass updates BatchNorm's running statistics."""
    calls, handles = [], []

    def record(m, inputs, out):
        x_in = inputs[0] if inputs and torch.is_tensor(inputs[0]) else None
        calls.append((m, None if x_in is None else x_in.detach().clone(),
                      out.detach().clone() if torch.is_tensor(out) else None))

    for name, m in model.named_modules():
        if m is model or "parametrizations" in name:  # spectral norm's helpers are not layers
            continue
        if isinstance(m, _WEIGHTED + _NORMS) or next(m.children(), None) is None:
            handles.append(m.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [c for c in calls if not isinstance(c[0], _PASSIVE)]


def _in_width(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels


def _out_width(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _other_n_layers(build: Callable, kwargs: dict, image_size: int) -> list[int]:
    """A second value of n_layers to build the model with, where its signature has that argument."""
    import inspect

    try:
        params = inspect.signature(build).parameters
    except (TypeError, ValueError):
        return []
    if "n_layers" not in params and "n_layers" not in kwargs:
        return []
    current = kwargs.get("n_layers", params["n_layers"].default if "n_layers" in params else 3)
    other = 4 if current == 3 else 3
    return [other] if image_size % 2**other == 0 else []


#: Crashes of a generator's forward pass -> what to do about them (before the general CRASH_HINTS).
G_CRASH_HINTS = {
    "mat1 and mat2 shapes cannot be multiplied": "G's first layer must take z_size inputs: nn.Linear(z_size, "
                                                 "channels * side * side), built from the z_size argument rather "
                                                 "than a fixed 100",
    "is invalid for input of size": "the linear layer's out_features must equal channels x side x side of the "
                                    "reshape that follows it (conv_dim * 2**(n_layers - 1) channels, "
                                    "image_size // 2**n_layers pixels a side), both computed from the arguments",
}


def test_discriminator(Discriminator: type, conv_dim: int = 32, image_size: int = 32, batch_norm: bool = True,
                       **kwargs) -> None:
    """D maps (N, 3, H, W) images to (N, 1) raw logits, with stride-2 convs of conv_dim, 2*conv_dim... channels;
    conv_dim and, where the signature has it, n_layers are honoured at more than one value."""
    D = _call("Discriminator(conv_dim)", Discriminator, conv_dim, **kwargs)
    pools = sorted({type(m).__name__ for m in D.modules()
                    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d))})
    if pools:
        _fail("Discriminator layers", "convolutions only", f"pooling layers {pools}",
              "DCGAN's D down-samples with stride-2 convolutions (stride=2, padding=1), not pooling")
    x = torch.rand(50, 3, image_size, image_size) * 2 - 1
    out = _call("Discriminator.forward", D, x)
    if not torch.is_tensor(out) or tuple(out.shape) != (50, 1):
        got = str(tuple(out.shape)) if torch.is_tensor(out) else repr(type(out))
        hint = ("keep one column per image: do not squeeze D's output" if torch.is_tensor(out) and out.shape == (50,)
                else "flatten the feature map before the linear layer with x.flatten(1), which keeps the batch "
                     "dimension, and give the linear layer 1 output")
        _fail("Discriminator output shape", "(50, 1)", got, hint)
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
    # A second width: a D that types numbers instead of using conv_dim shows up here.
    small = max(conv_dim // 2, 4)
    D2 = _call(f"Discriminator({small})", Discriminator, small, **kwargs)
    _call(f"Discriminator({small}).forward", D2, x[:2])
    if _layers(D2, nn.Conv2d)[0].out_channels != small:
        _fail(f"Discriminator({small}) first convolution", f"{small} output channels",
              f"{_layers(D2, nn.Conv2d)[0].out_channels}", "use the conv_dim argument, not a fixed number")
    # A second depth: a D with a fixed number of convolutions, or a linear layer sized for one depth only.
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
    # With large weights, logits spread far beyond [-1, 1]; only a squashing last layer keeps them inside.
    big = _output_with_large_weights(D, x)
    lo, hi = big.min().item(), big.max().item()
    if lo >= -1 and hi <= 1:
        squash = "a sigmoid" if lo >= 0 else "a tanh"
        _fail("Discriminator outputs", "raw logits (any real number)",
              f"values in [{lo:.3g}, {hi:.3g}] even with large weights, as after {squash}",
              f"remove {squash} at D's end: return the linear layer's output, and let BCEWithLogitsLoss apply the "
              "sigmoid itself, more stably")
    try:  # helpers.train runs models in channels_last layout, where .view fails
        D(x[:2].contiguous(memory_format=torch.channels_last))
    except RuntimeError as e:
        if "view size" in str(e):
            print("Note: your D flattens with .view, which fails on channels_last tensors (helpers.train uses "
                  "them); x.flatten(1) works everywhere.")
    _passed(f"Discriminator maps (50, 3, {image_size}, {image_size}) to (50, 1) logits")


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


#: What G's output layer does instead of tanh -> how the failure message says it.
_NOT_TANH = {"sigmoid": "sigmoid, whose images live in [0, 1]",
             "clamp": "a clamp to [-1, 1], which passes no gradient wherever it clips",
             "none": "nothing: the last layer's output is returned as it is"}
_TANH_HINT = ("end G with torch.tanh(x) (or nn.Tanh()): smooth, with gradients everywhere, and with the same "
              "[-1, 1] range as the scaled real images")


def _is_leaky(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether b = LeakyReLU(a) for some slope in (0, 1)."""
    neg, pos = a < -1e-2, a > 1e-2
    if neg.sum() < 10 or not torch.allclose(b[pos], a[pos], atol=1e-5):
        return False
    ratio = b[neg] / a[neg]
    return 0 < ratio.mean().item() < 1 and ratio.std().item() < 1e-3


def _check_projection(calls: list, weighted: list[int]) -> None:
    """BatchNorm, then ReLU, between G's first layer (the projection of z) and the next one."""
    first, nxt = weighted[0], weighted[1]
    between = calls[first + 1:nxt]
    names = ", ".join(type(m).__name__ for m, _, _ in between) or "nothing"
    projection = type(calls[first][0]).__name__
    bn = next((k for k, (m, _, _) in enumerate(between) if isinstance(m, _BATCHNORM)), None)
    if bn is None:
        _fail(f"Generator after its first layer (the {projection} that projects z)", "BatchNorm, then ReLU",
              f"{names} before the next layer",
              "add nn.BatchNorm2d(channels) and nn.ReLU() after reshaping the projection's output (or "
              "nn.BatchNorm1d before the reshape): DCGAN normalises and activates every hidden layer of G, "
              "the projection included; only the output layer goes without")
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
    _fail(f"Generator after its first layer (the {projection} that projects z)", "BatchNorm, then ReLU", got,
          ("ReLU goes after BatchNorm, not before it: " if before else "") +
          "apply ReLU to the BatchNorm's output (nn.ReLU() in the Sequential, or F.relu(self.bn(x)) in forward) "
          "before the first transposed convolution: without it the projection and that convolution are one "
          "linear map")


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
    if not torch.is_tensor(out) or tuple(out.shape) != expected:
        batch_changed = torch.is_tensor(out) and out.dim() == 4 and out.shape[0] != 50
        _fail("Generator output shape", str(expected), str(tuple(out.shape)) if torch.is_tensor(out) else repr(out),
              "the batch dimension changed, so the reshape after the linear layer does not match its size: "
              "out_features must equal channels x side x side, both computed from conv_dim and n_layers"
              if batch_changed else
              "each stride-2 transposed conv (kernel 4, padding 1) doubles height and width: start from "
              "image_size // 2**n_layers, and let the last one output 3 channels")
    calls = _trace(copy.deepcopy(G), z)
    weighted = [i for i, (m, _, _) in enumerate(calls) if isinstance(m, _WEIGHTED)]
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
    _check_projection(calls, weighted)
    # The images are a function of z: the same z gives the same image, different z different images.
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
    # A second z_size and width: numbers typed in instead of z_size and conv_dim show up here.
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
    calls2 = _trace(copy.deepcopy(G2), z_2)
    weighted2 = [i for i, (m, _, _) in enumerate(calls2) if isinstance(m, _WEIGHTED)]
    _check_output_layer(calls2, weighted2, cd2, what2)
    layers1, layers2 = [calls[i][0] for i in weighted], [calls2[i][0] for i in weighted2]
    if len(layers1) == len(layers2):
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
    # A second depth: a fixed number of transposed convolutions shows up here.
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
        callsn = _trace(copy.deepcopy(Gn), z[:8])
        strided = [m for m, _, _ in callsn if isinstance(m, nn.ConvTranspose2d) and tuple(m.stride) == (2, 2)]
        if len(strided) != n:
            _fail(f"{what} layers", f"{n} stride-2 transposed convolutions (n_layers)", f"{len(strided)}",
                  "the n_layers argument is ignored: " + depth)
        _check_output_layer(callsn, [i for i, (m, _, _) in enumerate(callsn) if isinstance(m, _WEIGHTED)],
                            conv_dim, what)
    _passed(f"Generator maps {tuple(z.shape)} to {expected} in [-1, 1]")


def test_weights_init(weights_init_normal: Callable) -> None:
    """Conv, transposed conv and linear weights ~ N(0, 0.02), biases 0; BatchNorm scales ~ N(1, 0.02) or 1."""
    torch.manual_seed(0)
    # fan-in 256 everywhere: PyTorch's default init then has std 0.036, far from 0.02
    net = nn.Sequential(nn.Conv2d(16, 128, 4), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
                        nn.ConvTranspose2d(128, 16, 4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 512))
    _call("net.apply(weights_init_normal)", net.apply, weights_init_normal)
    for m in (net[0], net[3], net[6]):
        name = type(m).__name__
        mean, std = m.weight.mean().item(), m.weight.std().item()
        if abs(mean) > 0.001 or abs(std - 0.02) > 0.0005:  # >32k weights pin the std down tightly
            untouched = abs(std - 0.036) < 0.002
            _fail(f"{name} weights", "mean 0 and std 0.02", f"mean {mean:.4f}, std {std:.4f}" +
                  (" (PyTorch's default init: your function left this layer alone)" if untouched else ""),
                  "for every nn.Conv2d, nn.ConvTranspose2d and nn.Linear: nn.init.normal_(m.weight, 0.0, 0.02); "
                  "isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) selects all three")
        if m.bias is not None and m.bias.abs().max().item() > 0:
            _fail(f"{name} bias", "zeros", f"max |bias| {m.bias.abs().max().item():.3g}",
                  "after the weight, also set the bias: if m.bias is not None: nn.init.zeros_(m.bias)")
    bn = net[1]
    mean, std = bn.weight.mean().item(), bn.weight.std().item()
    if not (torch.all(bn.weight == 1) or (abs(mean - 1) < 0.01 and 0.005 < std < 0.04)):
        _fail("BatchNorm2d weights", "ones, or ~N(1, 0.02)", f"mean {mean:.3f}, std {std:.3f}",
              "BatchNorm's weight is a per-channel scale: N(0, 0.02) shrinks every channel to ~2% of its size, "
              "some with flipped sign. Leave BatchNorm alone (it starts at 1), or use "
              "nn.init.normal_(m.weight, 1.0, 0.02) and nn.init.zeros_(m.bias)")
    if bn.bias.abs().max().item() > 0:
        _fail("BatchNorm2d bias", "zeros", f"max |bias| {bn.bias.abs().max().item():.3g}",
              "leave BatchNorm's bias at 0 (nn.init.zeros_(m.bias))")
    _passed("weights ~ N(0, 0.02), biases 0, BatchNorm scales near 1")


# ------------------------------------------------------------------------------------------ losses

def _loss_value(what: str, fn: Callable, *args, **kwargs) -> float:
    """Call a loss on logits that require grad; check it is a differentiable scalar and return its value."""
    out = _call(what, fn, *args, **kwargs)
    if not torch.is_tensor(out):
        _fail(what, "a tensor (the loss)", repr(type(out)),
              "return the loss tensor itself, not loss.item(): the step calls backward() on it")
    if out.numel() != 1:
        _fail(what, "one number", f"a tensor of shape {tuple(out.shape)}",
              "average over the batch: BCEWithLogitsLoss does so by default (reduction='mean')")
    if not out.requires_grad:
        _fail(what, "a loss connected to D_out (requires_grad)", "a detached tensor",
              "compute it from D_out with torch operations, without .detach(), .item() or torch.no_grad()")
    return out.item()


def _implied_label(loss: float, logit: float) -> float:
    """The label y for which BCE-with-logits(logit, y) equals ``loss``: loss = softplus(l) - y * l."""
    return (F.softplus(torch.tensor(logit)).item() - loss) / logit


def test_losses(real_loss: Callable, fake_loss: Callable) -> None:
    """real_loss / fake_loss are BCE-with-logits towards 1 (0.9 with smooth=True) and towards 0."""
    logits = torch.full((8, 1), 5.0, requires_grad=True)
    got = _loss_value("real_loss(D_out)", real_loss, logits)
    want = F.softplus(torch.tensor(-5.0)).item()  # -log(sigmoid(5)) = 0.00672
    sigmoid_first = F.softplus(-torch.sigmoid(torch.tensor(5.0))).item()  # 0.3156
    if math.isclose(got, sigmoid_first, rel_tol=1e-3):
        _fail("real_loss(logits=5)", f"{want:.4f}", f"{got:.4f}",
              "sigmoid is applied before BCEWithLogitsLoss, which applies it again: pass the raw logits")
    few = _loss_value("real_loss(D_out)", real_loss, torch.full((2, 1), 5.0, requires_grad=True))
    if math.isclose(got, 4 * few, rel_tol=1e-3) and not math.isclose(got, few, rel_tol=1e-3):
        _fail("real_loss on 8 vs 2 images", "the same value (a mean)", f"{got:.4f} vs {few:.4f} (a sum)",
              "average over the batch: nn.BCEWithLogitsLoss() with its default reduction='mean'")
    label = _implied_label(got, 5.0)
    if not math.isclose(label, 1, abs_tol=1e-3):
        _fail("real_loss(logits=5)", f"{want:.4f} (BCE with label 1)", f"{got:.4f} (BCE with label {label:.3g})",
              "real images are labelled 1 (fake_loss uses 0)" if abs(label) < 1e-3 else
              "use nn.BCEWithLogitsLoss()(D_out, labels) with labels = torch.ones_like(D_out)")
    smoothed = _implied_label(_loss_value("real_loss(D_out, smooth=True)", real_loss, logits, smooth=True), 5.0)
    # The same label at another logit: a loss scaled by 0.9 looks like label 1 at logit 5, but not at -2.
    other = torch.full((8, 1), -2.0, requires_grad=True)
    smoothed_neg = _implied_label(_loss_value("real_loss(D_out, smooth=True)", real_loss, other, smooth=True), -2.0)
    if not math.isclose(smoothed_neg, smoothed, abs_tol=1e-3):
        _fail("real_loss(logits=-2, smooth=True)", f"BCE with the label it has at logit 5 ({smoothed:.3g})",
              f"BCE with label {smoothed_neg:.3g}, so not BCE towards any one label",
              "smooth=True changes the labels, not the loss: labels = torch.full_like(D_out, 0.9), then "
              "nn.BCEWithLogitsLoss()(D_out, labels); do not multiply the loss by 0.9")
    if not math.isclose(smoothed, 0.9, abs_tol=1e-3):
        cause = ("the smooth argument is ignored: with smooth=True the real labels must be 0.9, not 1"
                 if math.isclose(smoothed, 1, abs_tol=1e-3) else
                 "with smooth=True the labels became 0.1: one-sided label smoothing lowers the REAL label from 1 "
                 "to 0.9 (1 - 0.1), it does not move it to 0.1" if math.isclose(smoothed, 0.1, abs_tol=1e-3) else
                 "with smooth=True the real labels must be 0.9: labels = torch.full_like(D_out, 0.9)")
        _fail("real_loss(logits=5, smooth=True)", "BCE with label 0.9", f"BCE with label {smoothed:.3g}", cause)
    got = _loss_value("fake_loss(D_out)", fake_loss, -logits)
    label = _implied_label(got, -5.0)
    if not math.isclose(label, 0, abs_tol=1e-3):
        _fail("fake_loss(logits=-5)", f"{want:.4f} (BCE with label 0)", f"{got:.4f} (BCE with label {label:.3g})",
              "label smoothing is one-sided: only the real labels move (to 0.9), fakes keep the label 0. A fake "
              "label above 0 would reward D for calling fakes a little real exactly where there is no data, so G "
              "would have no reason to move those samples towards real faces (Salimans et al. 2016): use "
              "torch.zeros_like(D_out)" if 0 < label < 0.5 else
              "fake images are labelled 0: labels = torch.zeros_like(D_out)")
    _passed("real_loss and fake_loss are BCE-with-logits, with label smoothing")


# ------------------------------------------------------------------------------------------ optimisers

def test_optimizers(d_optimizer, g_optimizer, D: nn.Module, G: nn.Module, lr: float | None = None,
                    betas: tuple | None = None, *, lr_d: float | None = None, lr_g: float | None = None,
                    cfg=None) -> None:
    """One Adam per network, over exactly that network's parameters, each with its own learning rate.

    ``cfg`` (a Config) gives the values to expect: d_optimizer with ``cfg.lr_d``, g_optimizer with ``cfg.lr_g``,
    both with betas ``(cfg.beta1, cfg.beta2)``; ``lr_d``, ``lr_g`` and ``betas`` give them one by one, and
    ``lr`` gives both networks the same rate.  With none given, DCGAN's lr 2e-4 and betas (0.5, 0.999)
    are suggested and any rate between 1e-5 and 1e-2 passes.
    """
    if cfg is not None:
        lr_d, lr_g, betas = cfg.lr_d, cfg.lr_g, (cfg.beta1, cfg.beta2)
    lr_d, lr_g = (lr if lr_d is None else lr_d), (lr if lr_g is None else lr_g)
    # how the hints name the values: the config's fields, or the numbers themselves
    source = ({"lr_d": "cfg.lr_d", "lr_g": "cfg.lr_g", "betas": "(cfg.beta1, cfg.beta2)"} if cfg is not None else
              {"lr_d": str(lr_d), "lr_g": str(lr_g), "betas": str(tuple(betas)) if betas else "(0.5, 0.999)"})
    for name, opt, net, var, other, other_name, want_lr, key in (
            ("d_optimizer", d_optimizer, D, "D", G, "G", lr_d, "lr_d"),
            ("g_optimizer", g_optimizer, G, "G", D, "D", lr_g, "lr_g")):
        told = want_lr is not None and betas is not None
        want = f"lr={want_lr}, betas={tuple(betas)}" if told else "lr=2e-4, betas=(0.5, 0.999)"
        recipe = f"lr={source[key]}, betas={source['betas']}" if cfg is not None else want
        if not isinstance(opt, torch.optim.Optimizer):
            raise CheckFailed(f"{name} is not implemented yet (it is {opt!r}).\nHint: create it with "
                              f"torch.optim.Adam({var}.parameters(), {recipe}).")
        params = [p for group in opt.param_groups for p in group["params"]]
        ids, mine, theirs = {id(p) for p in params}, {id(p) for p in net.parameters()}, \
            {id(p) for p in other.parameters()}
        if ids == theirs:
            _fail(name, f"{var}'s parameters", f"{other_name}'s parameters",
                  f"the two optimisers are swapped: {name} must be built from {var}.parameters()")
        if ids & theirs:
            _fail(name, f"only {var}'s parameters", f"also {len(ids & theirs)} of {other_name}'s",
                  "give each network its own optimiser: one over D.parameters(), one over G.parameters()")
        if ids != mine:
            shapes = sorted(tuple(p.shape) for p in params) == sorted(tuple(p.shape) for p in net.parameters())
            if shapes and not ids & mine:
                _fail(name, f"the parameters of the current {var}",
                      f"the parameters of an older {var} (same shapes, other tensors)",
                      f"{var} was re-created after {name} was made, so {name} updates the old copy: run the "
                      f"optimiser cell again after building {var}")
            _fail(name, f"all {sum(1 for _ in net.parameters())} parameter tensors of {var}",
                  f"{len(ids)} tensors, {len(ids & mine)} of them {var}'s",
                  f"pass every parameter of the network: torch.optim.Adam({var}.parameters(), ...)")
        if not isinstance(opt, torch.optim.Adam):
            _fail(name, "torch.optim.Adam", type(opt).__name__,
                  f"DCGAN trains both networks with Adam: torch.optim.Adam({var}.parameters(), {recipe})")
        group = opt.param_groups[0]
        got_betas = tuple(group["betas"])
        if got_betas == (0.9, 0.999) and (betas is None or tuple(betas) != got_betas):
            _fail(f"{name} betas", f"betas={tuple(betas) if betas else (0.5, 0.999)}"
                  + (f", i.e. {source['betas']}" if cfg is not None else ""), f"{got_betas}, Adam's defaults",
                  f"pass betas={source['betas']} explicitly: cfg.beta1 (0.5 for the "
                  "DCGAN presets, 0.0 for the WGAN-GP and hinge ones) is lower than Adam's 0.9, since less "
                  "momentum keeps the two-player game from oscillating")
        if want_lr is not None and not math.isclose(group["lr"], want_lr):
            theirs_lr = lr_g if var == "D" else lr_d
            mixed = theirs_lr is not None and not math.isclose(want_lr, theirs_lr) and \
                math.isclose(group["lr"], theirs_lr)
            _fail(f"{name} settings", f"lr={want_lr}" + (f" ({source[key]})" if cfg is not None else "")
                  + (f", betas={tuple(betas)}" if betas is not None else ""),
                  f"lr={group['lr']}, betas={got_betas}",
                  f"{name} has {other_name}'s learning rate: this recipe gives each network its own "
                  f"({source['lr_d']} for D, {source['lr_g']} for G; e.g. hinge_sn64 trains D 4x faster than G), "
                  f"so use torch.optim.Adam({var}.parameters(), {recipe})" if mixed else
                  f"use {recipe}: the values the training below uses")
        if betas is not None and not all(math.isclose(a, b) for a, b in zip(got_betas, betas, strict=True)):
            _fail(f"{name} settings", want, f"lr={group['lr']}, betas={got_betas}",
                  f"use {recipe}: the values the training below uses")
        if not 1e-5 <= group["lr"] <= 1e-2:
            _fail(f"{name} learning rate", "between 1e-5 and 1e-2 (DCGAN uses 2e-4)", str(group["lr"]),
                  "GANs are unstable with large learning rates")
    _passed("one Adam optimiser for each network")


# ------------------------------------------------------------------------------------------ steps

def _bce(out: torch.Tensor, label: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out, torch.full_like(out, label))


def _params(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def _same_update(before: torch.Tensor, after: torch.Tensor, ref_after: torch.Tensor) -> bool:
    """Whether two updates from the same start agree (to 1% of the reference update's size)."""
    ref = ref_after - before
    return (after - ref_after).norm().item() <= 0.01 * ref.norm().item() + 1e-12


def _stale_grads(net: nn.Module) -> list[torch.Tensor]:
    """Large leftover gradients, as a previous step would leave them: only zero_grad() clears them."""
    g = torch.Generator().manual_seed(7)
    return [torch.randn(p.shape, generator=g).mul_(10).to(p.device) for p in net.parameters()]


def _reference_d_step(start, real, z, variant: str, stale: list[torch.Tensor]):
    """The D update from ``start`` (copies of D, G, d_optimizer), done right or with one usual mistake."""
    D, G, opt = copy.deepcopy(start)
    if variant == "no_zero_grad":
        for p, s in zip(D.parameters(), stale, strict=True):
            p.grad = s.clone()
    else:
        opt.zero_grad()
    torch.manual_seed(1234)
    fake = G(z).detach()
    if variant == "concat":
        out = D(torch.cat([real, fake]))
        loss = _bce(out[:len(real)], 1.0) + _bce(out[len(real):], 0.0)
    else:
        real_label, fake_label = (0.0, 1.0) if variant == "swapped" else (1.0, 0.0)
        loss = _bce(D(real), real_label) + (0 if variant == "real_only" else _bce(D(fake), fake_label))
    loss.backward()
    opt.step()
    return _params(D), loss.item()


D_STEP_MISTAKES = {
    "no_zero_grad": "d_optimizer.zero_grad() is missing: gradients left from the previous step are added to this "
                    "one's. Call d_optimizer.zero_grad() first",
    "swapped": "the labels are swapped: D is taught to call real faces fake and fakes real. Use "
               "real_loss(D(real_images)) + fake_loss(D(fake_images))",
    "real_only": "only the real images' loss is used: add fake_loss(D(fake_images)) for the fakes",
    "concat": "real and fake images go through D in one batch, so BatchNorm mixes their statistics: score them "
              "in two calls, D(real_images) and D(fake_images)",
}


def test_discriminator_step(d_step: Callable, D: nn.Module, G: nn.Module, d_optimizer: torch.optim.Optimizer,
                            real_images: torch.Tensor, z: torch.Tensor) -> None:
    """``d_step(D, G, d_optimizer, real_images, z)`` makes the reference D update, leaves G alone, returns D's loss."""
    start = copy.deepcopy((D, G, d_optimizer))
    stale = _stale_grads(D)
    for p, s in zip(D.parameters(), stale, strict=True):
        p.grad = s.clone()
    for p in G.parameters():
        p.grad = None
    d_before, g_before = _params(D), _params(G)
    torch.manual_seed(1234)
    loss = _call("the discriminator step", d_step, D, G, d_optimizer, real_images, z)
    if loss is None:
        _fail("the D step's return value", "D's loss", "None", "end the function with return d_loss")
    value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
    if not math.isfinite(value):
        _fail("discriminator loss", "a finite number", str(value), "check the loss inputs for NaN")
    if any(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters()):
        _fail("generator gradients after the D step", "none", "gradients in G",
              "use fake_images = G(z).detach() in the D step, so D's loss does not backpropagate into G")
    if not torch.equal(g_before, _params(G)):
        _fail("G's parameters", "unchanged by the D step", "changed", "the D step must only step d_optimizer")
    d_after = _params(D)
    if torch.equal(d_before, d_after):
        grads = [p.grad for p in D.parameters()]
        if all(g is None or torch.equal(g, s) for g, s in zip(grads, stale, strict=True)):
            cause = "D got no new gradients: call d_loss.backward() on the loss, then d_optimizer.step()"
        else:
            cause = ("D got gradients but did not move: call d_optimizer.step() after d_loss.backward(), and build "
                     "d_optimizer from this D's parameters")
        _fail("D's parameters", "changed by the step", "unchanged", cause)
    ref_after, ref_loss = _reference_d_step(start, real_images, z, "right", stale)
    if not _same_update(d_before, d_after, ref_after):
        for variant, cause in D_STEP_MISTAKES.items():
            if _same_update(d_before, d_after, _reference_d_step(start, real_images, z, variant, stale)[0]):
                _fail("D's update", "the reference D step's update", "a different update", cause)
        _fail("D's update", "the reference D step's update (on copies of the same D, G and batch)",
              "a different update", "zero_grad, then d_loss = real_loss(D(real_images)) + fake_loss(D(G(z).detach()))"
              " with the z you are given, then backward() and step()")
    if not math.isclose(value, ref_loss, rel_tol=1e-3, abs_tol=1e-4):
        _fail("the D step's return value", f"D's loss, {ref_loss:.4f}", f"{value:.4f}",
              "return the total loss, real_loss(...) + fake_loss(...), computed before the update")
    _passed("the D step matches the reference update and leaves G alone")


def _reference_g_step(start, z, variant: str, stale: list[torch.Tensor]):
    D, G, opt = copy.deepcopy(start)
    if variant == "no_zero_grad":
        for p, s in zip(G.parameters(), stale, strict=True):
            p.grad = s.clone()
    else:
        opt.zero_grad()
    torch.manual_seed(1234)
    out = D(G(z))
    loss = {"right": lambda: _bce(out, 1.0), "no_zero_grad": lambda: _bce(out, 1.0),
            "fake_loss": lambda: _bce(out, 0.0), "saturating": lambda: -_bce(out, 0.0)}[variant]()
    loss.backward()
    opt.step()
    return _params(G), loss.item()


G_STEP_MISTAKES = {
    "no_zero_grad": "g_optimizer.zero_grad() is missing: gradients left from the previous step are added to this "
                    "one's. Call g_optimizer.zero_grad() first",
    "fake_loss": "G's loss is fake_loss(D(G(z))), which rewards D for spotting the fakes: G wants them called real, "
                 "so use real_loss(D(G(z)))",
    "saturating": "G minimises -fake_loss(D(G(z))), the saturating form, whose gradient vanishes while D wins: use "
                  "the non-saturating real_loss(D(G(z)))",
}


def test_generator_step(g_step: Callable, D: nn.Module, G: nn.Module, g_optimizer: torch.optim.Optimizer,
                        z: torch.Tensor) -> None:
    """``g_step(D, G, g_optimizer, z)`` makes the reference G update (D calling G(z) real), leaving D alone."""
    start = copy.deepcopy((D, G, g_optimizer))
    stale = _stale_grads(G)
    for p, s in zip(G.parameters(), stale, strict=True):
        p.grad = s.clone()
    for p in D.parameters():
        p.grad = None
    d_before, g_before = _params(D), _params(G)
    torch.manual_seed(1234)
    loss = _call("the generator step", g_step, D, G, g_optimizer, z)
    if loss is None:
        _fail("the G step's return value", "G's loss", "None", "end the function with return g_loss")
    value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
    if not math.isfinite(value):
        _fail("generator loss", "a finite number", str(value), "check the loss inputs for NaN")
    if not torch.equal(d_before, _params(D)):
        _fail("D's parameters", "unchanged by the G step", "changed",
              "step only g_optimizer in the G step; D is updated in its own step")
    g_after = _params(G)
    d_grads = any(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters())
    g_new = [p.grad for p in G.parameters()]
    no_new_g = all(g is None or torch.equal(g, s) or not g.abs().sum() for g, s in zip(g_new, stale, strict=True))
    if no_new_g and d_grads:
        _fail("G's gradients", "gradients from G's loss", "none, although D got some",
              "the fakes are detached (or made under torch.no_grad()) in the G step, so no gradient reaches G: "
              "detach only in the D step; here use g_loss = real_loss(D(G(z)))")
    if torch.equal(g_before, g_after):
        cause = ("G got no gradients: call g_loss.backward(), then g_optimizer.step()" if no_new_g else
                 "G got gradients but did not move: call g_optimizer.step() after backward(), and build g_optimizer "
                 "from this G's parameters")
        _fail("G's parameters", "changed by the step", "unchanged", cause)
    ref_after, ref_loss = _reference_g_step(start, z, "right", stale)
    if not _same_update(g_before, g_after, ref_after):
        for variant, cause in G_STEP_MISTAKES.items():
            if _same_update(g_before, g_after, _reference_g_step(start, z, variant, stale)[0]):
                _fail("G's update", "the reference G step's update", "a different update", cause)
        _fail("G's update", "the reference G step's update (on copies of the same D, G and z)", "a different update",
              "zero_grad, then g_loss = real_loss(D(G(z))) with the z you are given, then backward() and step()")
    if not math.isclose(value, ref_loss, rel_tol=1e-3, abs_tol=1e-4):
        _fail("the G step's return value", f"G's loss, {ref_loss:.4f}", f"{value:.4f}",
              "return g_loss, computed before the update")
    _passed("the G step matches the reference update and leaves D alone")


# ------------------------------------------------------------------------------------------ the training loop

class NotTheBCEGame(RuntimeError):
    """The notebook's training loop was asked to train a preset that plays another game than BCE."""


def require_bce_game(cfg) -> None:
    """The notebook's loop trains with your BCE steps; stop, saying what to run instead, for another game."""
    if cfg.loss != "bce":
        raise NotTheBCEGame(
            f"Your training loop plays the BCE game (your discriminator_step and generator_step), but preset "
            f"{cfg.preset!r} plays the {cfg.loss!r} game, so its recipe runs with helpers.train(cfg), or "
            f"`python helpers.py train --preset {cfg.preset}` in a terminal.")
