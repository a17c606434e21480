"""Checks for ``real_loss`` and ``fake_loss``: BCE-with-logits towards label 1 (0.9 smoothed) and 0.

Each loss is evaluated on known logits and the label it implies is read back from its value, so
the message says which label the code used: swapped, smoothed the wrong way, or a loss scaled by
0.9 instead of a smoothed label.  The losses must also be batch means and stay connected to D's
output, since the steps call ``backward()`` on them.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .report import _call, _fail, _passed


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
