"""How every check reports: one pass line, or a ``CheckFailed`` that teaches.

A failure says which check failed, what it expected, what came back, and a hint that names the
likely cause and the fix, so that a learner is told what to change rather than only that something
is wrong.  ``_call`` runs the learner's code and turns the crashes learners meet most (an unwritten
TODO, a linear layer of the wrong size, ``BCELoss`` on logits...) into the same kind of message; any
other crash is raised as it is.
"""
from __future__ import annotations

from collections.abc import Callable


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
