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

from .report import _fail

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
    calls, handles, inputs = [], [], {}

    def remember(m, args):  # before the layer runs: an in-place layer overwrites its input
        x_in = args[0] if args and torch.is_tensor(args[0]) else None
        inputs[id(m)] = None if x_in is None else x_in.detach().clone()

    def record(m, args, out):
        calls.append((m, inputs.pop(id(m), None), out.detach().clone() if torch.is_tensor(out) else None))

    for name, m in model.named_modules():
        if m is model or "parametrizations" in name:  # spectral norm's helpers are not layers
            continue
        if isinstance(m, _WEIGHTED + _NORMS) or next(m.children(), None) is None:
            handles.append(m.register_forward_pre_hook(remember))
            handles.append(m.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [c for c in calls if not isinstance(c[0], _PASSIVE)]


def default_n_layers(build) -> int:
    """The n_layers a model class builds when none is given: its signature's default, else the notebook's 3."""
    try:
        p = inspect.signature(build).parameters.get("n_layers")
    except (TypeError, ValueError):
        return 3
    return p.default if p is not None and isinstance(p.default, int) else 3


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


# --- The layer-by-layer comparison with the notebook's networks

#: An operation of a forward pass: ("conv", in, out, stride), ("convT", in, out, stride), ("linear", in, out),
#: ("norm", name), ("act", name) with names such as "LeakyReLU(0.2)", "ReLU", "tanh", "sigmoid".
Op = tuple

_ORDINAL = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")


def _module_op(m: nn.Module) -> Op | None:
    if isinstance(m, nn.ConvTranspose2d):
        return ("convT", m.in_channels, m.out_channels, tuple(m.stride)[0])
    if isinstance(m, nn.Conv2d):
        return ("conv", m.in_channels, m.out_channels, tuple(m.stride)[0])
    if isinstance(m, nn.Linear):
        return ("linear", m.in_features, m.out_features)
    if isinstance(m, _NORMS):
        return ("norm", "BatchNorm" if isinstance(m, _BATCHNORM) else type(m).__name__)
    if isinstance(m, nn.LeakyReLU):
        return ("act", f"LeakyReLU({m.negative_slope:g})")
    if isinstance(m, nn.Tanh):
        return ("act", "tanh")
    if isinstance(m, nn.Sigmoid):
        return ("act", "sigmoid")
    if _is_activation(m):
        return ("act", type(m).__name__)
    return None


def _function_between(a: torch.Tensor, b: torch.Tensor) -> Op | None:
    """The element-wise function that turned ``a`` into ``b`` (a functional call such as F.relu in forward), read
    from the values: a known function, or one scaled and shifted (``0.5 * torch.tanh(x) + 0.5``); None when b is
    a (reshaped) copy of a."""
    if a.numel() != b.numel():
        return ("act", "an operation that changes the size")
    a, b = a.flatten().float(), b.flatten().float()
    if torch.allclose(b, a, atol=1e-5):
        return None
    known = {"ReLU": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "a clamp to [-1, 1]":
             lambda t: t.clamp(-1, 1), "identity": lambda t: t}
    for name, f in known.items():
        if name != "identity" and torch.allclose(b, f(a), atol=1e-4):
            return ("act", name)
    leaky = _activation_between(a, b)
    if leaky and leaky.startswith("leaky"):
        return ("act", f"LeakyReLU({float(leaky.split()[1]):.2g})")
    for name, f in known.items():  # b = s * f(a) + t: a known function, scaled and shifted
        fa = f(a)
        design = torch.stack([fa, torch.ones_like(fa)], 1)
        coef = torch.linalg.lstsq(design, b.unsqueeze(1)).solution.flatten()
        if torch.allclose(design @ coef, b, atol=1e-4) and coef[0].abs() > 1e-6:
            shift = f" + {coef[1].item():.3g}" if abs(coef[1].item()) > 1e-5 else ""
            return ("act", f"{name} x {coef[0].item():.3g}{shift}")
    return ("act", "another operation")


def forward_ops(model: nn.Module, x: torch.Tensor) -> list[Op]:
    """The operations one forward pass of (a copy of) ``model`` runs, in order: its layers, and the functions
    applied between them in ``forward`` (F.relu, torch.tanh...), read from the values that pass between layers
    (and from the last layer's output to the model's output, in the same pass)."""
    model = copy.deepcopy(model)
    final = {}
    handle = model.register_forward_hook(lambda m, i, out: final.__setitem__("out", out))
    try:
        calls = _trace(model, x)
    finally:
        handle.remove()
    ops: list[Op] = []
    previous: torch.Tensor | None = None
    for m, x_in, x_out in calls:
        if previous is not None and x_in is not None:
            between = _function_between(previous, x_in)
            if between:
                ops.append(between)
        op = _module_op(m)
        if op:
            ops.append(op)
        if x_out is not None:
            previous = x_out
    out = final.get("out")
    if previous is not None and torch.is_tensor(out):
        between = _function_between(previous, out.detach())
        if between:
            ops.append(between)
    return ops


def describe(op: Op) -> str:
    if op[0] == "conv":
        return f"Conv2d({op[1]}, {op[2]}, stride {op[3]})"
    if op[0] == "convT":
        return f"ConvTranspose2d({op[1]}, {op[2]}, stride {op[3]})"
    if op[0] == "linear":
        return f"Linear({op[1]}, {op[2]})"
    return op[1]


def _blocks(ops: list[Op]) -> list[tuple[Op, list[Op]]]:
    """Each layer with weights, and the operations after it up to the next one (those before the first dropped)."""
    blocks: list[tuple[Op, list[Op]]] = []
    for op in ops:
        if op[0] in ("conv", "convT", "linear"):
            blocks.append((op, []))
        elif blocks:
            blocks[-1][1].append(op)
    return blocks


def _kind_name(op: Op) -> str:
    return {"conv": "convolution", "convT": "transposed convolution", "linear": "linear layer"}[op[0]]


def _seq(ops: list[Op]) -> str:
    return " and then ".join(describe(o) for o in ops) if ops else "nothing"


def compare_layers(theirs: list[Op], reference: list[Op], who: str, rule_for: Callable[[int, int, str], str],
                   why: dict[str, str] | None = None, sizes: Callable[[int], str] | None = None) -> None:
    """Fail at the first place where the learner's operations (``theirs``) part from the notebook's
    (``reference``), in the learner's terms ("after your second convolution the notebook applies BatchNorm and then
    LeakyReLU(0.2); yours applies LeakyReLU(0.2) and then BatchNorm").  ``rule_for(k, n, what)`` names the rule
    broken at the k-th of n layers with weights, where ``what`` is "count", "width", "norm", "act" or "order";
    ``why`` adds the notebook's reason for a rule to the hint, ``sizes(k)`` how the k-th layer's size follows from
    the arguments."""
    why = why or {}
    mine, ref = _blocks(theirs), _blocks(reference)
    if [b[0][0] for b in mine] != [b[0][0] for b in ref]:
        _fail(f"{who}: the layers with weights, in the order they run", ", ".join(describe(b[0]) for b in ref),
              ", ".join(describe(b[0]) for b in mine) or "none",
              "build the layers in a loop over n_layers, each from the arguments, and register each as an "
              "attribute (or in nn.Sequential / nn.ModuleList) so that it runs", rule=rule_for(0, len(ref), "count"))
    because = lambda rule: f". {why[rule]}" if rule in why else ""  # noqa: E731
    counts: dict[str, int] = {}
    for k, ((op, after), (ref_op, ref_after)) in enumerate(zip(mine, ref, strict=True)):
        counts[op[0]] = counts.get(op[0], 0) + 1
        alone = sum(b[0][0] == op[0] for b in ref) == 1
        last = k == len(ref) - 1 and not alone
        name = f"your {'' if alone else 'last ' if last else _ORDINAL[min(counts[op[0]], 8) - 1] + ' '}{_kind_name(op)}"
        if op[1:] != ref_op[1:]:
            how = sizes(k) if sizes else ("widths double (D) or halve (G) from one layer to the next, starting from "
                                          "conv_dim")
            _fail(f"{who}: {name}", describe(ref_op), describe(op),
                  f"compute its sizes from the arguments: {how}" + because(rule_for(k, len(ref), "width")),
                  rule=rule_for(k, len(ref), "width"))
        if after != ref_after:
            norms = [o for o in after if o[0] == "norm"] != [o for o in ref_after if o[0] == "norm"]
            acts = [o for o in after if o[0] == "act"] != [o for o in ref_after if o[0] == "act"]
            what = "norm" if norms else "act" if acts else "order"
            misplaced = _misplaced(after, ref_after, ref, k)
            if misplaced:
                op_name, j = misplaced
                where = "the last layer" if j == len(ref) - 1 else f"layer {j + 1} with weights"
                when = "before" if j > k else "after"
                _fail(f"{who}: after {name}", f"{_seq(ref_after)}, as in the notebook's network", _seq(after),
                      f"your {op_name} comes here, {when} {where}: the notebook applies it only after {where}, so "
                      "move it there" + because(rule_for(j, len(ref), "act")), rule=rule_for(j, len(ref), "act"))
            _fail(f"{who}: after {name}", f"{_seq(ref_after)}, as in the notebook's network", _seq(after),
                  _order_hint(after, ref_after) + because(rule_for(k, len(ref), what)),
                  rule=rule_for(k, len(ref), what))


def _misplaced(after: list[Op], ref_after: list[Op], ref: list, k: int) -> tuple[str, int] | None:
    """An operation here that the notebook's network applies only after another layer: (its name, that layer)."""
    for op in after:
        if op in ref_after:
            continue
        homes = [j for j, (_, ops) in enumerate(ref) if op in ops]
        if len(homes) == 1 and homes[0] != k:  # an operation the notebook applies after one layer only (tanh)
            return describe(op), homes[0]
    return None


def _order_hint(after: list[Op], ref_after: list[Op]) -> str:
    scaled = [o[1] for o in after if o[0] == "act" and " x " in o[1]]
    if scaled:
        return (f"your code applies {scaled[0]}, a function scaled and shifted: return {_seq(ref_after)} as it is, "
                "without multiplying, dividing or adding anything after it")
    if sorted(after) == sorted(ref_after):
        return f"the same operations in another order: apply {_seq(ref_after)}, in that order"
    missing = [describe(o) for o in ref_after if o not in after]
    extra = [describe(o) for o in after if o not in ref_after]
    parts = []
    if missing:
        parts.append(f"add {', '.join(missing)}")
    if extra:
        parts.append(f"remove {', '.join(extra)}")
    return " and ".join(parts) + f" here, so that this layer is followed by {_seq(ref_after)}"
