"""Reading a learner's model from the outside: which layers it has, and what a forward pass does.

The model checks cannot rely on attribute names or on the order layers were registered in, so they
watch a forward pass instead: ``_trace`` records each layer that runs, in the order it runs, with
its input and output.  ``_output_with_large_weights`` shows what the output layer squashes to, and
``_other_n_layers`` picks a second depth to build the model with, so that sizes typed in for one
depth show up.
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Callable

import torch
import torch.nn as nn

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
    try:
        params = inspect.signature(build).parameters
    except (TypeError, ValueError):
        return []
    if "n_layers" not in params and "n_layers" not in kwargs:
        return []
    current = kwargs.get("n_layers", params["n_layers"].default if "n_layers" in params else 3)
    other = 4 if current == 3 else 3
    return [other] if image_size % 2**other == 0 else []


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


def _activation_between(a: torch.Tensor | None, b: torch.Tensor | None) -> str | None:
    """Which element-wise function turns ``a`` (a layer's output) into ``b`` (the next layer's input), read from
    the values: 'identity', 'relu', 'leaky 0.01'-style ('leaky SLOPE'), or None when it cannot tell."""
    if a is None or b is None or a.numel() != b.numel():
        return None
    a, b = a.flatten(), b.flatten()
    if torch.allclose(b, a, atol=1e-5):
        return "identity"
    if torch.allclose(b, a.clamp_min(0), atol=1e-5):
        return "relu"
    neg, pos = a < -1e-2, a > 1e-2
    if neg.sum() < 10 or not torch.allclose(b[pos], a[pos], atol=1e-5):
        return None
    ratio = b[neg] / a[neg]
    slope = ratio.mean().item()
    return f"leaky {slope:.3g}" if 0 < slope < 1 and ratio.std().item() < 1e-3 else None
