"""Checks for the two optimisers: one Adam per network, over exactly that network's parameters.

Swapped or shared parameters, an optimiser built before its network was re-created, Adam's default
betas and one network given the other's learning rate are each named; the expected values come
from the config (``cfg.lr_d``, ``cfg.lr_g``, ``cfg.beta1``, ``cfg.beta2``) or are passed one by one.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .report import CheckFailed, _fail, _passed

#: Which rule an optimiser's setting follows: D's (rule O1) or G's (rule O2).
_RULE = {"d_optimizer": "O1", "g_optimizer": "O2"}


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
        check_parameters(name, opt, net, var, other, other_name, recipe)
        if type(opt) is not torch.optim.Adam or opt.param_groups[0].get("weight_decay", 0):
            decay = opt.param_groups[0].get("weight_decay", 0)
            _fail(name, "torch.optim.Adam", type(opt).__name__ + (f" with weight_decay={decay}, which Adam's recipe "
                  "does not have" if decay else ""),
                  f"DCGAN trains both networks with Adam: torch.optim.Adam({var}.parameters(), {recipe})",
                  rule=_RULE[name])
        group = opt.param_groups[0]
        got_betas = tuple(group["betas"])
        if got_betas == (0.9, 0.999) and (betas is None or tuple(betas) != got_betas):
            _fail(f"{name} betas", f"betas={tuple(betas) if betas else (0.5, 0.999)}"
                  + (f", i.e. {source['betas']}" if cfg is not None else ""), f"{got_betas}, Adam's defaults",
                  f"pass betas={source['betas']} explicitly: cfg.beta1 (0.5 for the "
                  "DCGAN presets, 0.0 for the WGAN-GP and hinge ones) is lower than Adam's 0.9, since less "
                  "momentum keeps the two-player game from oscillating", rule=_RULE[name])
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
                  f"use {recipe}: the values the training below uses", rule=_RULE[name])
        if betas is not None and tuple(betas)[::-1] == got_betas and betas[0] != betas[1]:
            _fail(f"{name} betas", f"betas={tuple(betas)}", f"{got_betas}, the two in reverse order",
                  f"betas=(beta1, beta2): beta1, the momentum of the gradient ({betas[0]}), comes first: "
                  f"betas={source['betas']}", rule=_RULE[name])
        if betas is not None and not all(math.isclose(a, b) for a, b in zip(got_betas, betas, strict=True)):
            _fail(f"{name} settings", want, f"lr={group['lr']}, betas={got_betas}",
                  f"use {recipe}: the values the training below uses", rule=_RULE[name])
        if not 1e-5 <= group["lr"] <= 1e-2:
            _fail(f"{name} learning rate", "between 1e-5 and 1e-2 (DCGAN uses 2e-4)", str(group["lr"]),
                  "GANs are unstable with large learning rates", rule=_RULE[name])
    _passed("one Adam optimiser for each network")


def check_parameters(name: str, opt, net: nn.Module, var: str, other: nn.Module, other_name: str,
                      recipe: str) -> None:
    """``opt`` (called ``name``) is an optimiser over all the parameters of ``net`` (called ``var``), none of
    ``other``'s, and of this ``net``, not of one built before it."""
    if not isinstance(opt, torch.optim.Optimizer):
        raise CheckFailed(f"{name} is not implemented yet (it is {opt!r}).\nHint: create it with "
                          f"torch.optim.Adam({var}.parameters(), {recipe}).")
    params = [p for group in opt.param_groups for p in group["params"]]
    ids, mine, theirs = {id(p) for p in params}, {id(p) for p in net.parameters()}, \
        {id(p) for p in other.parameters()}
    if ids == theirs:
        _fail(name, f"{var}'s parameters", f"{other_name}'s parameters",
              f"the two optimisers are swapped: {name} must be built from {var}.parameters()", rule="O3")
    if ids & theirs:
        _fail(name, f"only {var}'s parameters", f"also {len(ids & theirs)} of {other_name}'s",
              "give each network its own optimiser: one over D.parameters(), one over G.parameters()", rule="O3")
    if ids != mine:
        shapes = sorted(tuple(p.shape) for p in params) == sorted(tuple(p.shape) for p in net.parameters())
        if shapes and not ids & mine:
            _fail(name, f"the parameters of the current {var}",
                  f"the parameters of an older {var} (same shapes, other tensors)",
                  f"{var} was re-created after {name} was made, so {name} updates the old copy: run the "
                  f"optimiser cell again after building {var}", rule=_RULE[name])
        _fail(name, f"all {sum(1 for _ in net.parameters())} parameter tensors of {var}",
              f"{len(ids)} tensors, {len(ids & mine)} of them {var}'s",
              f"pass every parameter of the network: torch.optim.Adam({var}.parameters(), ...)", rule=_RULE[name])
