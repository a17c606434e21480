"""Checks for ``real_loss`` and ``fake_loss``: BCE-with-logits towards label 1 (0.9 smoothed) and 0.

Each loss is compared with the formula, value and gradient, on fresh logits: random values of either
sign (a constant logit cannot tell a label from a scaled loss), large ones (where a sigmoid rounds to
0 or 1, so BCELoss after a sigmoid parts from BCE-with-logits) and batches of 2 to 64, in D's (N, 1)
shape.  The first case that differs is shown with both values, and the message says what the learner's
loss is where its values show it exactly (BCE towards another label, a sum, a sigmoid applied twice).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .report import _call, _fail, _passed


def loss_value(what: str, fn: Callable, logits: torch.Tensor, **kwargs) -> torch.Tensor:
    """Call a loss on logits that require grad; check it is a differentiable scalar and return it."""
    out = _call(what, fn, logits, **kwargs)
    if not torch.is_tensor(out):
        _fail(what, "a tensor (the loss)", repr(type(out)),
              "return the loss tensor itself, not loss.item(): the step calls backward() on it", rule="L6")
    if out.numel() != 1:
        _fail(what, "one number", f"a tensor of shape {tuple(out.shape)}",
              "average over the batch: BCEWithLogitsLoss does so by default (reduction='mean')", rule="L6")
    if not out.requires_grad:
        _fail(what, "a loss connected to D_out (requires_grad)", "a detached tensor",
              "compute it from D_out with torch operations, without .detach(), .item() or torch.no_grad()", rule="L6")
    return out


def _bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def _logit_cases(seed: int = 0) -> list[torch.Tensor]:
    """Fresh logits, smallest first: a batch of two (a batch of one would fail the correct D_out.squeeze()
    styles, which the training loop, whose batches are 64, never meets), D_out's shape (N, 1), random values
    of either sign, and large ones (|logit| up to 150, where a sigmoid rounds to exactly 0 or 1 and BCELoss
    clips its logarithm)."""
    g = torch.Generator().manual_seed(seed)
    cases = [torch.randn(2, 1, generator=g) * 3, torch.randn(7, 1, generator=g) * 3, torch.randn(16, 1, generator=g),
             (torch.rand(64, 1, generator=g) * 300 - 150)]
    return [c.requires_grad_() for c in cases]


#: Other losses a learner's code can compute, by what they are: name -> (what it is, its rule, f(logits)).
def _alternatives(label: float) -> dict[str, tuple[str, str, Callable]]:
    return {
        "sigmoid twice": ("BCE-with-logits of sigmoid(D_out): the sigmoid applied before a loss that applies it "
                          "again; pass the raw logits", "L1", lambda x: _bce(torch.sigmoid(x), label)),
        "BCELoss": ("BCELoss(sigmoid(D_out)), which rounds and clips for large logits; use nn.BCEWithLogitsLoss(), "
                    "which applies the sigmoid itself, stably", "L1",
                    lambda x: F.binary_cross_entropy(torch.sigmoid(x), torch.full_like(x, label))),
        "sum": ("the sum over the batch instead of its mean: keep BCEWithLogitsLoss's default reduction='mean'", "L6",
                lambda x: _bce(x, label) * x.numel()),
        "scaled": ("the loss times 0.9 instead of a label of 0.9: smooth=True changes the labels, not the loss",
                   "L2", lambda x: 0.9 * _bce(x, 1.0)),
        "mean logit": ("the loss of the batch's mean logit, D_out.mean(), instead of the mean of each image's loss: "
                       "pass D_out itself, and let the loss average over the images", "L4",
                       lambda x: _bce(x.mean(), label)),
        "least squares": ("least squares, the mean of (D_out - label)**2 (MSE), not BCE-with-logits: use "
                          "nn.BCEWithLogitsLoss()", "L1", lambda x: ((x - label) ** 2).mean()),
        "least squares on sigmoid": ("least squares on sigmoid(D_out) (MSE), not BCE-with-logits: use "
                                     "nn.BCEWithLogitsLoss()", "L1",
                                     lambda x: ((torch.sigmoid(x) - label) ** 2).mean()),
    }


def check_loss(what: str, fn: Callable, label: float, rule: str, **kwargs) -> None:
    """The loss equals BCE-with-logits towards ``label`` (a batch mean) on every fresh case, with the same
    gradient; the first case that differs is shown, with the label the learner's loss implies if it is BCE."""
    for logits in _logit_cases():
        out = loss_value(what, fn, logits, **kwargs)
        again = loss_value(what, fn, logits, **kwargs)
        if not torch.equal(out.detach(), again.detach()) and not (out.isnan() and again.isnan()):
            _fail(f"{what} twice on the same logits {_short(logits.detach())}", "the same value twice",
                  f"{out.item():.5g}, then {again.item():.5g}: random", f"the labels must be exactly {label:g}, the "
                  "same on every call: torch.full_like(D_out, 0.9 if smooth else 1.0), with no random numbers",
                  rule="L2" if label else "L3")
        if not torch.isfinite(out):
            _fail(f"{what} on logits {_short(logits.detach())}", "a finite loss", f"{out.item()} on large logits "
                  "(|logit| up to 150)", "log(sigmoid(x)) by hand rounds to log(0) = -inf for large logits: use "
                  "nn.BCEWithLogitsLoss() (or F.logsigmoid), which applies the sigmoid inside the loss, stably",
                  rule="L1")
        want = _bce(logits, label)
        grad, = torch.autograd.grad(out, logits, allow_unused=True)
        want_grad, = torch.autograd.grad(want, logits)
        if torch.isclose(out.float(), want, rtol=1e-4, atol=1e-5) and grad is not None and \
                torch.allclose(grad, want_grad, rtol=1e-3, atol=1e-6):
            continue
        case = f"{what} on logits {_short(logits.detach())}"
        got = f"{out.item():.5g}"
        if torch.isclose(out.float(), want, rtol=1e-4, atol=1e-5):
            off = "none" if grad is None else f"{(grad - want_grad).abs().max().item():.3g}"
            got += f" (the right value, but its gradient differs by up to {off} per logit)"
        for _name, (cause, cause_rule, f) in _alternatives(label).items():
            if torch.isclose(out.float(), f(logits.detach()), rtol=1e-4, atol=1e-5):
                _fail(case, f"{want.item():.5g} (BCE-with-logits towards {label:g}, the batch mean)", got,
                      f"your loss is {cause}", rule=cause_rule)
        implied = _implied_label(logits.detach(), out.item())
        for _other, cause_rule, cause in _label_causes(label, implied, rule):
            _fail(case, f"{want.item():.5g} (BCE-with-logits towards the label {label:g})",
                  f"{got}, BCE-with-logits towards the label {implied:.3g}", cause, rule=cause_rule)
        _fail(case, f"{want.item():.5g} (BCE-with-logits towards {label:g}, the batch mean)", got,
              f"your loss differs from BCE-with-logits by {abs(out.item() - want.item()):.3g} here and is not BCE "
              f"towards any one label: compare D_out with torch.full_like(D_out, {label:g}) in "
              "nn.BCEWithLogitsLoss()", rule=rule)


def _implied_label(logits: torch.Tensor, loss: float) -> float:
    """The label y for which the mean BCE-with-logits equals ``loss``: mean(softplus(l)) - y * mean(l)."""
    mean = logits.float().mean().item()
    return (F.softplus(logits.float()).mean().item() - loss) / mean if abs(mean) > 1e-3 else float("nan")


def _label_causes(label: float, implied: float, rule: str) -> list[tuple[float, str, str]]:
    """If the learner's loss is BCE towards another label, what that label means, as (label, rule, cause)."""
    if implied != implied or abs(implied - label) < 1e-3:
        return []
    near = lambda v: abs(implied - v) < 1e-3  # noqa: E731
    if label == 0.9 and near(1.0):
        return [(1.0, "L2", "the smooth argument is ignored: with smooth=True the real labels must be 0.9")]
    if label == 0.9 and near(0.1):
        return [(0.1, "L2", "with smooth=True the labels became 0.1: one-sided label smoothing lowers the REAL "
                            "label from 1 to 0.9 (1 - 0.1), it does not move it to 0.1")]
    if label == 1.0 and near(0.9):
        return [(0.9, "L2", "the labels are smoothed (0.9) although smooth=False: use 0.9 only when smooth is True")]
    if label == 0.0 and 0 < implied < 0.5:
        return [(implied, "L5", "label smoothing is one-sided: only the real labels move (to 0.9), fakes keep the "
                                "label 0. A fake label above 0 would reward D for calling fakes a little real "
                                "exactly where there is no data (Salimans et al. 2016): use torch.zeros_like(D_out)")]
    if label == 0.0 and near(1.0):
        return [(1.0, "L3", "fake images are labelled 0, not 1: labels = torch.zeros_like(D_out)")]
    if label > 0 and near(0.0):
        return [(0.0, "L2", "real images are labelled 1 (0.9 with smooth=True); 0 is the fakes' label")]
    return [(implied, rule, f"use the label {label:g}: labels = torch.full_like(D_out, {label:g})")]


def test_losses(real_loss: Callable, fake_loss: Callable) -> None:
    """real_loss / fake_loss are BCE-with-logits (batch means) towards 1 (0.9 with smooth=True) and towards 0,
    on fresh logits of either sign and any size, in D's (N, 1) shape."""
    check_loss("real_loss(D_out)", real_loss, 1.0, "L2")
    check_loss("real_loss(D_out, smooth=True)", real_loss, 0.9, "L2", smooth=True)
    check_loss("fake_loss(D_out)", fake_loss, 0.0, "L3")
    _passed("real_loss and fake_loss are BCE-with-logits, with one-sided label smoothing, on fresh logits")


def _short(t: torch.Tensor, k: int = 4) -> str:
    values = ", ".join(f"{v:.3g}" for v in t.flatten()[:k].tolist())
    return f"[{values}{', ...' if t.numel() > k else ''}] (shape {tuple(t.shape)})"
