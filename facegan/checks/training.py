"""Checks for the D and G training steps, and the guard on the notebook's training loop.

A step is checked by its effect: the learner's step and a reference step run from copies of the
same models, optimiser and batch, and their updates are compared.  When they differ, the usual
mistakes (a missing ``zero_grad``, swapped labels, ``fake_loss`` in the G step...) are replayed
the same way to name the likely one.  ``require_bce_game`` stops the notebook's loop, which plays
the BCE game with the learner's steps, from training a preset that plays another game.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .report import _call, _fail, _passed
from .steps import compare_records, record_step


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


def _reference_d_step(start, real, z, variant: str, stale: list[torch.Tensor], smooth: bool = False):
    """The D update from ``start`` (copies of D, G, d_optimizer), done right or with one usual mistake; with
    ``smooth`` the real label is 0.9."""
    D, G, opt = copy.deepcopy(start)
    if variant == "no_zero_grad":
        for p, s in zip(D.parameters(), stale, strict=True):
            p.grad = s.clone()
    else:
        opt.zero_grad()
    torch.manual_seed(1234)
    fake = G(z).detach()
    real_label = 0.9 if smooth or variant == "always_smooth" else 1.0
    if variant == "concat":
        out = D(torch.cat([real, fake]))
        loss = _bce(out[:len(real)], real_label) + _bce(out[len(real):], 0.0)
    elif variant == "fake_only":
        loss = _bce(D(fake), 0.0)
    else:
        real_label, fake_label = (0.0, 1.0) if variant == "swapped" else (real_label, 0.0)
        loss = _bce(D(real), real_label) + (0 if variant == "real_only" else _bce(D(fake), fake_label))
    loss.backward()
    opt.step()
    return _params(D), loss.item()


#: The rule each planted mistake breaks (its update is matched exactly, so naming it is an observation).
MISTAKE_RULES = {"no_zero_grad": "SD4", "swapped": "SD2", "real_only": "SD2", "concat": "SD1", "fake_only": "SD2",
                 "always_smooth": "SD6"}
G_MISTAKE_RULES = {"no_zero_grad": "ST2", "fake_loss": "SG1", "saturating": "SG4", "smoothed": "SG4"}

D_STEP_MISTAKES = {
    "no_zero_grad": "d_optimizer.zero_grad() is missing: gradients left from the previous step are added to this "
                    "one's. Call d_optimizer.zero_grad() first",
    "swapped": "the labels are swapped: D is taught to call real faces fake and fakes real. Use "
               "real_loss(D(real_images)) + fake_loss(D(fake_images))",
    "real_only": "only the real images' loss is used: add fake_loss(D(fake_images)) for the fakes",
    "concat": "real and fake images go through D in one batch, so BatchNorm mixes their statistics: score them "
              "in two calls, D(real_images) and D(fake_images)",
    "fake_only": "only the fakes' loss reaches D: the real images are scored without gradients (torch.no_grad() "
                 "or .detach()). Only the fakes are detached: real_loss(D(real_images), smooth) must reach D",
    "always_smooth": "the real labels are smoothed (0.9) although smooth=False: pass the smooth argument on, "
                     "real_loss(D(real_images), smooth), instead of True",
}

#: Where a step leaves the networks: what the next step needs to find -> what to do about it.
LEFT_BEHIND = {
    "frozen": "{net}'s parameters are left frozen (requires_grad=False) after the {step}, so the next {net} step "
              "gets no gradients and {net} stops learning: no need to freeze {net} here (the step only steps "
              "its own optimiser); if you do, unfreeze it at the end with {net}.requires_grad_(True)",
    "eval": "{net} is left in eval mode after the {step}, so BatchNorm uses running statistics from then on: "
            "keep both networks in training mode (or call {net}.train() before returning)",
}


def check_left_as_found(D: nn.Module, G: nn.Module, modes: tuple[bool, bool], step: str) -> None:
    """The step leaves both networks trainable and in the mode it found them in."""
    for net, name, was_training in ((D, "D", modes[0]), (G, "G", modes[1])):
        frozen = [p for p in net.parameters() if not p.requires_grad]
        if frozen:
            _fail(f"{name} after the {step}", f"all of {name}'s parameters trainable (requires_grad=True)",
                  f"{len(frozen)} frozen", LEFT_BEHIND["frozen"].format(net=name, step=step), rule="ST1")
        if was_training and not net.training:
            _fail(f"{name} after the {step}", "training mode, as the step found it", "eval mode",
                  LEFT_BEHIND["eval"].format(net=name, step=step), rule="ST1")


def _replay(step: Callable, start, args: tuple, stale: list[torch.Tensor], seed: int, which: int, **kwargs):
    """Run the learner's ``step`` on fresh copies of ``start`` (D, G, optimiser), the stale gradients in place on
    network ``which`` (0: D, 1: G); return the trained network's parameters afterwards."""
    D, G, opt = copy.deepcopy(start)
    for p, s in zip((D, G)[which].parameters(), stale, strict=True):
        p.grad = s.clone()
    torch.manual_seed(seed)
    _call(f"the step{' with smooth=True' if kwargs else ''}", step, D, G, opt, *args, **kwargs,
          _hints={"unexpected keyword argument 'smooth'": (
              "keep the stub's smooth=False argument: the training loop passes smooth=True for the presets that "
              "smooth labels", "SD6")})
    return _params((D, G)[which])


def check_repeatable(step: Callable, start, args: tuple, stale, after: torch.Tensor, before: torch.Tensor,
                      which: int, name: str) -> None:
    """The same models and inputs under another random seed give the same update: the step uses the z it is given."""
    again = _replay(step, start, args, stale, 999, which)
    if not _same_update(before, again, after):
        _fail(f"the {name} step run twice on the same models and z", "the same update", "two different updates",
              "the step draws its own random numbers (a new torch.randn for z, say): use the z you are given, so "
              "that the training loop decides what G draws", rule="SD8" if which == 0 else "SG5")


def _loss_number(loss, step: str, rule: str) -> float:
    """The returned loss as a float: a finite number, or a failure naming the step's return rule."""
    if loss is None:
        _fail(f"the {step}'s return value", f"{step[0]}'s loss", "None",
              f"end the function with return {step[0].lower()}_loss", rule=rule)
    value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
    if not math.isfinite(value):
        _fail(f"the {step}'s loss", "a finite number", str(value), "check the loss inputs for NaN", rule=rule)
    return value


def test_discriminator_step(d_step: Callable, D: nn.Module, G: nn.Module, d_optimizer: torch.optim.Optimizer,
                            real_images: torch.Tensor, z: torch.Tensor) -> None:
    """``d_step(D, G, d_optimizer, real_images, z)`` clears old gradients, scores the real batch and the detached
    fakes in two calls to D, backpropagates and steps d_optimizer, so that its update is the reference update;
    it leaves G alone and returns D's loss."""
    start = copy.deepcopy((D, G, d_optimizer))
    stale = _stale_grads(D)
    for p, s in zip(D.parameters(), stale, strict=True):
        p.grad = s.clone()
    for p in G.parameters():
        p.grad = None
    d_before, g_before, modes = _params(D), _params(G), (D.training, G.training)
    torch.manual_seed(1234)
    loss = _call("the discriminator step", d_step, D, G, d_optimizer, real_images, z)
    check_left_as_found(D, G, modes, "D step")
    value = _loss_number(loss, "D step", "SD7")
    compare_records(record_step(d_step, start, (real_images, z), stale, 0, "the discriminator step"), 0)
    if any(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters()):
        _fail("generator gradients after the D step", "none", "gradients in G",
              "use fake_images = G(z).detach() in the D step, so D's loss does not backpropagate into G", rule="SD5")
    if not torch.equal(g_before, _params(G)):
        _fail("G's parameters", "unchanged by the D step", "changed", "the D step must only step d_optimizer",
              rule="SD3")
    d_after = _params(D)
    check_repeatable(d_step, start, (real_images, z), stale, d_after, d_before, 0, "D")
    ref_after, ref_loss = _reference_d_step(start, real_images, z, "right", stale)
    check_d_update(start, real_images, z, stale, d_before, d_after, ref_after)
    check_returned_loss(value, ref_loss, "D step", "return the total loss, real_loss(...) + fake_loss(...), computed "
                        "before the update", "SD7")
    check_smooth(d_step, start, real_images, z, stale, d_before)
    _passed("the D step matches the reference update and leaves G alone")


def _update_gap(before: torch.Tensor, after: torch.Tensor, ref_after: torch.Tensor) -> str:
    """How far an update is from the reference's, for a message that names no cause."""
    ref = (ref_after - before).norm().item()
    off = (after - ref_after).norm().item()
    return f"an update {off / max(ref, 1e-12):.0%} of the reference update's size away from it"


def check_d_update(start, real_images, z, stale, d_before, d_after, ref_after) -> None:
    """D's update equals the reference's; if it equals one planted mistake's exactly, that mistake is named."""
    if _same_update(d_before, d_after, ref_after):
        return
    for variant, cause in D_STEP_MISTAKES.items():
        if _same_update(d_before, d_after, _reference_d_step(start, real_images, z, variant, stale)[0]):
            _fail("D's update", "the reference D step's update", "exactly the update of this mistake", cause,
                  rule=MISTAKE_RULES[variant])
    _fail("D's update", "the reference D step's update (on copies of the same D, G and batch)",
          _update_gap(d_before, d_after, ref_after), "the calls are in the notebook's order, so the loss differs: "
          "d_loss = real_loss(D(real_images), smooth) + fake_loss(D(G(z).detach())), the sum of the two", rule="SD2")


def check_returned_loss(value: float, ref_loss: float, step: str, hint: str, rule: str) -> None:
    if not math.isclose(value, ref_loss, rel_tol=1e-3, abs_tol=1e-4):
        _fail(f"the {step}'s return value", f"{step[0]}'s loss, {ref_loss:.4f}", f"{value:.4f}", hint, rule=rule)


def check_smooth(d_step: Callable, start, real_images: torch.Tensor, z: torch.Tensor, stale, before) -> None:
    """With smooth=True the step makes the reference update towards real labels of 0.9."""
    after = _replay(d_step, start, (real_images, z), stale, 1234, 0, smooth=True)
    if _same_update(before, after, _reference_d_step(start, real_images, z, "right", stale, smooth=True)[0]):
        return
    ignored = _same_update(before, after, _reference_d_step(start, real_images, z, "right", stale)[0])
    _fail("D's update with smooth=True", "the reference update with real labels 0.9",
          "the update without smoothing" if ignored else "a different update",
          "the smooth argument is ignored: pass it on, real_loss(D(real_images), smooth), so that the presets that "
          "smooth (classic32, fast32, dcgan64) train with real labels 0.9" if ignored else
          "smooth=True lowers only the real images' label to 0.9: real_loss(D(real_images), smooth) + "
          "fake_loss(D(fake_images))", rule="SD6")


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
            "fake_loss": lambda: _bce(out, 0.0), "saturating": lambda: -_bce(out, 0.0),
            "smoothed": lambda: _bce(out, 0.9)}[variant]()
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
    "smoothed": "G's loss uses smoothed labels (0.9): label smoothing softens D's targets on real images only. G "
                "wants its fakes called fully real: real_loss(D(G(z))), without smooth",
}


def test_generator_step(g_step: Callable, D: nn.Module, G: nn.Module, g_optimizer: torch.optim.Optimizer,
                        z: torch.Tensor) -> None:
    """``g_step(D, G, g_optimizer, z)`` clears G's old gradients, scores G(z) with D without detaching, and steps
    g_optimizer towards D calling the fakes real, so that its update is the reference update; it leaves D alone."""
    start = copy.deepcopy((D, G, g_optimizer))
    stale = _stale_grads(G)
    for p, s in zip(G.parameters(), stale, strict=True):
        p.grad = s.clone()
    for p in D.parameters():
        p.grad = None
    d_before, g_before, modes = _params(D), _params(G), (D.training, G.training)
    torch.manual_seed(1234)
    loss = _call("the generator step", g_step, D, G, g_optimizer, z)
    check_left_as_found(D, G, modes, "G step")
    value = _loss_number(loss, "G step", "SG3")
    compare_records(record_step(g_step, start, (z,), stale, 1, "the generator step"), 1)
    if not torch.equal(d_before, _params(D)):
        _fail("D's parameters", "unchanged by the G step", "changed",
              "step only g_optimizer in the G step; D is updated in its own step", rule="SG1")
    g_after = _params(G)
    if torch.equal(g_before, g_after):
        _fail("G's parameters", "changed by the step", "unchanged", "G got gradients but did not move: call "
              "g_optimizer.step() after backward()", rule="SG1")
    check_repeatable(g_step, start, (z,), stale, g_after, g_before, 1, "G")
    ref_after, ref_loss = _reference_g_step(start, z, "right", stale)
    check_g_update(start, z, stale, g_before, g_after, ref_after)
    check_returned_loss(value, ref_loss, "G step", "return g_loss, computed before the update", "SG3")
    _passed("the G step matches the reference update and leaves D alone")


def check_g_update(start, z, stale, g_before, g_after, ref_after) -> None:
    """G's update equals the reference's; if it equals one planted mistake's exactly, that mistake is named."""
    if _same_update(g_before, g_after, ref_after):
        return
    for variant, cause in G_STEP_MISTAKES.items():
        if _same_update(g_before, g_after, _reference_g_step(start, z, variant, stale)[0]):
            _fail("G's update", "the reference G step's update", "exactly the update of this mistake", cause,
                  rule=G_MISTAKE_RULES[variant])
    _fail("G's update", "the reference G step's update (on copies of the same D, G and z)",
          _update_gap(g_before, g_after, ref_after), "the calls are in the notebook's order, so the loss differs: "
          "g_loss = real_loss(D(G(z))), G wanting its fakes called real", rule="SG1")


# The notebook's training loop

class NotTheBCEGame(RuntimeError):
    """The notebook's training loop was asked to train a preset that plays another game than BCE."""


def require_bce_game(cfg) -> None:
    """The notebook's loop trains with your BCE steps; stop, saying what to run instead, for another game."""
    if cfg.loss != "bce":
        raise NotTheBCEGame(
            f"Your training loop plays the BCE game (your discriminator_step and generator_step), but preset "
            f"{cfg.preset!r} plays the {cfg.loss!r} game, so its recipe runs with helpers.train(cfg), or "
            f"`python helpers.py train --preset {cfg.preset}` in a terminal.")
