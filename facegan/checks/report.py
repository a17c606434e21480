"""How every check reports: one pass line, or a ``CheckFailed`` that teaches.

A failure says which check failed, what it expected, what came back, a hint that names the cause and
the fix, and the rule of the notebook it enforces (``rules.py``), so that a learner is told what to
change rather than only that something is wrong.  ``_call`` runs the learner's code; when it crashes,
the message points at the learner's own line (the cell and line number, and the line itself), says the
error in one sentence and adds a hint: the known crashes (``CRASH_HINTS``) get theirs, any other one a
hint chosen by the kind of error.  No error from inside PyTorch reaches the learner unexplained.
"""
from __future__ import annotations

import linecache
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from .rules import RULES


class CheckFailed(AssertionError):
    """A check failed; the message says what was expected and how to fix it.  ``rule`` is the id of the rule
    in ``rules.RULES`` that the failure enforces ("" for a crash with no rule of its own)."""

    def __init__(self, message: str, rule: str = ""):
        super().__init__(message)
        self.rule = rule


def _rule_line(rule: str) -> str:
    return f"\nRule {rule}: \"{RULES[rule].text}\"" if rule in RULES else ""


def _fail(check: str, expected: str, got: str, hint: str, *, rule: str) -> None:
    """Fail ``check``: what it ``expected``, what it ``got``, a ``hint``, and the ``rule`` it enforces."""
    if rule not in RULES:
        raise KeyError(f"check {check!r} names rule {rule!r}, which facegan/checks/rules.py does not define")
    raise CheckFailed(f"{check}: expected {expected}, got {got}.\nHint: {hint}{_rule_line(rule)}", rule)


def _passed(what: str) -> None:
    print(f"Tests Passed: {what}")


#: Crashes a learner meets often: a fragment of the error message -> (what to do about it, the rule it breaks).
CRASH_HINTS: dict[str, tuple[str, str]] = {
    "'next'": ("iterators lost their .next() method; write next(iter(loader)) or next(dataiter) instead of "
               "dataiter.next()", "DL1"),
    "view size is not compatible": ("flatten with x.flatten(1) (or x.reshape(x.size(0), -1)): .view needs a "
                                    "contiguous tensor, and feature maps in channels_last layout are not", "D9"),
    "mat1 and mat2 shapes cannot be multiplied": ("the linear layer's in_features must equal the flattened feature "
                                                  "map, channels x side x side of the last convolution's output "
                                                  "(4*conv_dim x 4 x 4 for 32x32 images after 3 stride-2 convs), "
                                                  "computed from conv_dim rather than typed in", "D7"),
    "must be the same as input size": ("give the labels D_out's shape: torch.ones_like(D_out), or "
                                       "torch.ones(D_out.size(0)) with D_out.squeeze()", "L4"),
    "should be between 0 and 1": ("nn.BCELoss expects probabilities, but D outputs logits: use "
                                  "nn.BCEWithLogitsLoss(), which applies the sigmoid itself", "L1"),
    "has no attribute 'weight'": ("model.apply(fn) calls fn on every module, also on ReLU and Sequential, which "
                                  "have no weights: test the type first, e.g. isinstance(m, (nn.Conv2d, "
                                  "nn.ConvTranspose2d, nn.Linear))", "W4"),
    "has no attribute 'backward'": ("return the loss tensor itself, not loss.item(): the step needs it for "
                                    "backward()", "L6"),
    "channels, but got": ("a layer receives another number of channels than it was built for: each layer's "
                          "in_channels must be the previous layer's out_channels, computed from conv_dim step by "
                          "step", "D4"),
    "running_mean should contain": ("a BatchNorm2d(c) must have the channels of the layer before it: "
                                    "nn.BatchNorm2d(out_ch) right after a layer with out_ch output channels", "D5"),
    "does not require grad": ("the loss is not connected to the weights: do not detach (or .item()) it; in the "
                              "G step only the D step's fakes are detached", "SG2"),
    "img should be Tensor": ("the transforms run in the order of the Compose: the steps on PIL images (Resize, "
                             "CenterCrop, RandomHorizontalFlip) first, then ToTensor(), then Normalize, which needs "
                             "a tensor", "DL6"),
    "pic should be PIL Image": ("the transforms run in the order of the Compose: ToTensor() takes a PIL image, so it "
                                "comes after the PIL steps (Resize, CenterCrop, RandomHorizontalFlip) and before "
                                "Normalize, once", "DL6"),
    "can't be cast to the desired output type Long": ("the labels are integers (torch.tensor([1, 1, ...]) or "
                                                      "dtype=torch.long): BCEWithLogitsLoss wants float labels like "
                                                      "D_out; make them with torch.full_like(D_out, 0.9 if smooth "
                                                      "else 1.0), which copies D_out's dtype", "L4"),
    "'NoneType' object has no attribute 'zero_'": ("nn.init.zeros_(m.bias) on a layer built with bias=False: "
                                                   "its bias is None, so test it first: if m.bias is not None",
                                                   "W2"),
}

#: Any other crash: (exception type name, a fragment of its message or "") -> a hint by the kind of error.
GENERAL_HINTS: list[tuple[str, str, str]] = [
    ("RuntimeError", "shape", "a tensor reaches this line with another shape than the operation needs: print "
                              "x.shape before it, and compute every size from the arguments (conv_dim, n_layers, "
                              "z_size, image_size)"),
    ("RuntimeError", "size", "a tensor reaches this line with another size than the operation needs: print "
                             "x.shape before it, and compute every size from the arguments"),
    ("RuntimeError", "dtype", "two tensors of different types meet here (float and long, say): make labels with "
                              "torch.ones_like(D_out) / torch.full_like(...), which copy D_out's type"),
    ("RuntimeError", "type", "two tensors of different types meet here: create new tensors with *_like(x) so "
                             "that they copy x's dtype and device"),
    ("RuntimeError", "", "PyTorch stopped at this line of yours: print the shapes and types of the tensors it uses"),
    ("TypeError", "positional argument", "a call on this line passes another number of arguments than the "
                                         "function takes: compare it with the function's signature"),
    ("TypeError", "not callable", "something called on this line is not a function: a layer is used before it "
                                  "is built, or a name is reused for a tensor"),
    ("TypeError", "NoneType", "a value on this line is None: a function that ends without `return` gives None"),
    ("TypeError", "", "a value on this line has another type than the operation expects: print type(x) before it"),
    ("AttributeError", "NoneType", "a value on this line is None: a function that ends without `return` gives "
                                   "None, and a layer built with bias=False has bias None"),
    ("AttributeError", "", "the object on this line has no such attribute: check the name, and that the layer "
                           "was created in __init__ (self.name = ...)"),
    ("NameError", "", "a name used on this line is not defined in this cell or an earlier one: define it, or run "
                      "the cell that does"),
    ("IndexError", "", "an index on this line is out of range: print the length or shape it indexes"),
    ("ValueError", "", "a value on this line is out of what the function accepts: print it before the call"),
    ("FileNotFoundError", "", "a path on this line does not exist: data_dir=\"celeba\" names the processed set; "
                              "helpers.resolve_image_dir(data_dir) turns it into its folder"),
]

#: Code under these folders is not the learner's: PyTorch, the standard library, installed packages, this project.
_NOT_LEARNER = tuple(str(Path(p).resolve()) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
_PROJECT = Path(__file__).resolve().parents[2]
_PROJECT_CODE = tuple(str(_PROJECT / name) for name in ("facegan", "helpers.py", "problem_unittests.py"))


def _is_learner_file(filename: str) -> bool:
    """Learner code: a notebook cell (``<ipython-input...>``, ``/tmp/ipykernel_.../N.py``, ``<your ... cell>``)
    or any file outside Python's own folders and this project's engine and checks."""
    if filename.startswith("<"):
        return not filename.startswith(("<frozen", "<string>", "<checks of"))
    path = str(Path(filename).resolve())
    return not path.startswith(_NOT_LEARNER) and not path.startswith(_PROJECT_CODE) and "site-packages" not in path


def _cell_name(filename: str) -> str:
    """How the learner knows this file: IPython's "Cell In[5]", the grader's "your data cell", or the file."""
    try:
        ip = get_ipython()  # type: ignore[name-defined]  # noqa: F821 - defined inside IPython only
        name = ip.compile.format_code_name(filename)
        if name:
            return " ".join(name)
    except Exception:  # noqa: BLE001 - outside IPython, or an IPython without format_code_name
        pass
    return filename.strip("<>") if filename.startswith("<") else Path(filename).name


def learner_frame(e: BaseException) -> tuple[str, int, str] | None:
    """(where, line number, the line's text) of the deepest frame of ``e``'s traceback in learner code."""
    found = None
    for frame in traceback.extract_tb(e.__traceback__):
        if _is_learner_file(frame.filename):
            found = frame
    if found is None:
        return None
    text = (found.line or linecache.getline(found.filename, found.lineno)).strip()
    return _cell_name(found.filename), found.lineno, text


def one_sentence(e: BaseException, limit: int = 240) -> str:
    """The error's first line, cut at a word boundary (never mid-word) when it is long."""
    text = str(e).strip().splitlines()[0].strip() if str(e).strip() else ""
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _hint_for(e: BaseException, hints: list[tuple[str, str | tuple[str, str]]]) -> tuple[str, str]:
    """The hint (and the rule it belongs to) for a crash: a known one first, else one by the kind of error."""
    message = str(e)
    for fragment, hint in hints:
        if fragment in message:
            return (hint, "") if isinstance(hint, str) else hint
    kinds = [c.__name__ for c in type(e).__mro__]
    for kind, fragment, hint in GENERAL_HINTS:
        if kind in kinds and fragment.lower() in message.lower():
            return hint, ""
    return "the line above is where your code stopped: print the values it uses to see which one is not what " \
           "you expect", ""


def crash_message(what: str, e: BaseException, hints: dict | None = None) -> CheckFailed:
    """A ``CheckFailed`` for a crash while running ``what``: the learner's line, the error, a hint."""
    hint, rule = _hint_for(e, [*(hints or {}).items(), *CRASH_HINTS.items()])
    frame = learner_frame(e)
    frames = traceback.extract_tb(e.__traceback__)
    at_call = bool(frames) and Path(frames[-1].filename).resolve() == Path(__file__).resolve()
    where = (f" in your code, {frame[0]}, line {frame[1]}:\n    {frame[2]}" if frame else
             " as the check called it: your function's signature does not take these arguments" if at_call else
             " inside PyTorch, called with no line of yours in between: the layers or arguments your code set up "
             "ran as they are")
    return CheckFailed(f"{what} crashed{where}\n{one_sentence(e)}\nHint: {hint}{_rule_line(rule)}", rule)


def _call(what: str, fn: Callable, *args, _hints: dict | None = None, **kwargs):
    """Call learner code; a crash becomes a ``CheckFailed`` that points at the learner's line (``_hints`` first,
    then ``CRASH_HINTS``, then a hint by the kind of error)."""
    try:
        return fn(*args, **kwargs)
    except CheckFailed:
        raise
    except NotImplementedError:
        raise CheckFailed(f"{what} is not implemented yet: replace the "
                          "`raise NotImplementedError` in its TODO with your code.") from None
    except Exception as e:  # noqa: BLE001 - every crash of learner code is explained, none passes raw
        raise crash_message(what, e, _hints) from None
