"""What a learner's training step did, recorded call by call, and compared with what the notebook's step does.

``record_step`` runs the learner's step on copies of the models and optimiser, watching:

* every ``zero_grad()``, ``backward()`` and ``step()``, in order, and on which optimiser or network;
* every batch that reached D: its size, whether it was the real batch or G's fakes, and whether it still
  carried a gradient path back to G (not detached);
* the gradients present when ``step()`` ran: none, stale ones left from "the previous step", or new ones.

``compare_records`` walks that record against the notebook's order (clear the old gradients, score the
batches, ``backward()``, ``step()``) and fails at the first difference, naming it as it happened:
"``zero_grad()`` ran after ``backward()``, so ``step()`` saw no gradients".  It names only what the record
shows; a step whose calls are all in order but whose update still differs is left to the update checks in
``training.py``, which say what differs and by how much.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .report import _call, _fail


@dataclass
class StepRecord:
    """The events of one step, in order: (kind, detail) with kind one of zero_grad, backward, step, D, G."""
    events: list[tuple[str, dict]] = field(default_factory=list)

    def kinds(self, kind: str) -> list[int]:
        return [i for i, (k, _) in enumerate(self.events) if k == kind]


def _grad_state(params: list[torch.Tensor], stale: list[torch.Tensor]) -> str:
    """'none' (no gradients), 'stale' (exactly the planted old ones), 'zero', or 'new'."""
    grads = [p.grad for p in params]
    if all(g is None for g in grads):
        return "none"
    if all(g is not None and torch.equal(g, s) for g, s in zip(grads, stale, strict=True)):
        return "stale"
    if all(g is None or not g.abs().sum() for g in grads):
        return "zero"
    return "new"


def record_step(step: Callable, start: tuple, args: tuple, stale: list[torch.Tensor], trained: int,
                what: str, **kwargs) -> StepRecord:
    """Run ``step(D, G, optimiser, *args)`` on copies of ``start`` with ``stale`` gradients planted on network
    ``trained`` (0: D, 1: G), recording what it does."""
    D, G, opt = copy.deepcopy(start)
    net = (D, G)[trained]
    for p, s in zip(net.parameters(), stale, strict=True):
        p.grad = s.clone()
    rec = StepRecord()
    real = args[0] if trained == 0 else None
    z = args[-1]
    g_params = set(map(id, G.parameters()))

    def log(kind: str, **detail) -> None:
        rec.events.append((kind, detail))

    def on_d(module, inputs, out):
        x = inputs[0]
        source = ("real" if real is not None and x.shape == real.shape and torch.equal(x.detach(), real) else
                  "both" if real is not None and len(x) == 2 * len(real) else "fake")
        log("D", size=len(x), source=source, to_g=_reaches(x, g_params), out_grad=bool(out.requires_grad))

    def on_g(module, inputs, out):
        log("G", given_z=bool(torch.equal(inputs[0], z)))

    originals = {}
    for obj, name in ((opt, "optimiser"), (D, "D"), (G, "G")):
        originals[name] = obj.zero_grad
        obj.zero_grad = _logged(obj.zero_grad, lambda name=name: log("zero_grad", on=name))
    step_fn = opt.step
    opt.step = lambda *a, **k: (log("step", grads=_grad_state(list(net.parameters()), stale)), step_fn(*a, **k))[1]
    backward = torch.Tensor.backward
    torch.Tensor.backward = lambda self, *a, **k: (log("backward"), backward(self, *a, **k))[1]
    hooks = [D.register_forward_hook(on_d), G.register_forward_hook(on_g)]
    try:
        torch.manual_seed(1234)
        _call(what, step, D, G, opt, *args, **kwargs)
    finally:
        torch.Tensor.backward = backward
        for h in hooks:
            h.remove()
    rec.events.append(("end", {"g_grads": any(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())
                                            and trained == 0}))
    return rec


def _logged(fn: Callable, note: Callable) -> Callable:
    def wrapper(*a, **k):
        note()
        return fn(*a, **k)
    return wrapper


def _reaches(x: torch.Tensor, params: set[int]) -> bool:
    """Whether a gradient from ``x`` would reach any of ``params`` (walks x's autograd graph)."""
    if not x.requires_grad or x.grad_fn is None:
        return False
    seen, todo = set(), [x.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)
        if var is not None and id(var) in params:
            return True
        todo.extend(f for f, _ in fn.next_functions)
    return False


def compare_records(rec: StepRecord, trained: int) -> None:
    """Fail at the first place where the learner's step parts from the notebook's order of calls."""
    net, opt = ("D", "d_optimizer") if trained == 0 else ("G", "g_optimizer")
    rule_clear, step = ("SD4", "D step") if trained == 0 else ("ST2", "G step")
    rule_order = "SD9" if trained == 0 else "ST2"
    backwards, steps = rec.kinds("backward"), rec.kinds("step")
    clears = [i for i in rec.kinds("zero_grad") if rec.events[i][1]["on"] in ("optimiser", net)]
    if not steps:
        _fail(f"the {step}'s calls", f"{opt}.step() after backward()", f"no {opt}.step()",
              f"update {net} with {opt}.step(), the optimiser you are given, after the loss's backward()",
              rule="SD3" if trained == 0 else "SG1")
    if not backwards:
        _fail(f"the {step}'s calls", "backward() on the loss, then step()", "no backward()",
              f"call backward() on {net}'s loss before {opt}.step(): without it step() has no new gradients",
              rule=rule_order)
    first_back, first_step = backwards[0], steps[0]
    if first_step < first_back:
        _fail(f"the {step}'s calls", "backward(), then step()", "step() before backward()",
              f"{opt}.step() ran before backward(), so it moved {net} with the gradients left from before (or none) "
              "and this step's gradients were never used: call the loss's backward() first, then step()",
              rule=rule_order)
    state = rec.events[first_step][1]["grads"]
    before_back = [i for i in clears if i < first_back]
    if not clears:
        _fail(f"the {step}'s calls", f"{opt}.zero_grad() before backward()", "no zero_grad()",
              f"{opt}.zero_grad() is missing: the gradients left from the previous step were added to this one's "
              f"when step() ran. Clear them first", rule=rule_clear)
    if not before_back:
        when = "after step()" if clears[0] > first_step else "after backward() and before step()"
        _fail(f"the {step}'s calls", f"{opt}.zero_grad() before backward()", f"zero_grad() {when}",
              f"zero_grad() ran after backward(), so step() saw no gradients: {net} did not learn from this batch; "
              f"call zero_grad() first" if state in ("none", "zero") else
              f"zero_grad() ran {when}, so step() used the gradients left from the previous step added to this "
              f"one's: call zero_grad() first", rule=rule_clear)
    _compare_batches(rec, trained, step)


def _compare_batches(rec: StepRecord, trained: int, step: str) -> None:
    """The batches that reached D: real and fakes apart, fakes detached in the D step and attached in the G step."""
    d_calls = [d for k, d in rec.events if k == "D"]
    if trained == 0:
        if any(d["source"] == "both" for d in d_calls):
            _fail(f"the {step}'s calls to D", "two calls, D(real_images) and D(fake_images)",
                  "one call on real and fake images together",
                  "in one batch BatchNorm normalises real and fake images with their mixed statistics: score them "
                  "in two separate calls to D", rule="SD1")
        fakes = [d for d in d_calls if d["source"] == "fake"]
        if fakes and any(d["to_g"] for d in fakes) and rec.events[-1][1]["g_grads"]:
            _fail(f"the {step}'s fakes", "detached from G (G(z).detach())", "attached: backward() put gradients "
                  "into G's parameters", "make the fakes with G(z).detach(), so D's loss stays out of G", rule="SD5")
    else:
        if d_calls and not any(d["to_g"] for d in d_calls):
            _fail(f"the {step}'s fakes", "attached to G, so the gradient flows through D into G",
                  "detached (or made under torch.no_grad()): no gradient reaches G",
                  "detach only in the D step; here score D(G(z)) directly, so that backward() reaches G", rule="SG2")

