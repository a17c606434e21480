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

    def log(kind: str, **detail) -> None:
        rec.events.append((kind, detail))

    outputs: list[torch.Tensor] = []

    hooks = _watch_networks(D, G, real, z, log, outputs)
    for obj, name in ((opt, "optimiser"), (D, "D"), (G, "G")):
        obj.zero_grad = _logged(obj.zero_grad, lambda name=name: log("zero_grad", on=name))
    mine = set(map(id, net.parameters()))
    others = {"D": set(map(id, D.parameters())), "G": set(map(id, G.parameters()))}
    shapes = {"D": sorted(tuple(p.shape) for p in D.parameters()), "G": sorted(tuple(p.shape) for p in G.parameters())}

    def any_step(self, *a, **k):  # every optimiser's step, the one given or another (a global d_optimizer, say)
        ids = {id(p) for g in self.param_groups for p in g["params"]}
        log("step", grads=_grad_state(list(net.parameters()), stale), given=self is opt,
            over="this network" if ids & mine else "D" if ids & others["D"] else "G" if ids & others["G"] else
            _shaped_like(self, shapes))
        original = next(saved[c] for c in type(self).__mro__ if c in saved) if any(
            c in saved for c in type(self).__mro__) else None
        return original(self, *a, **k) if original else None

    backward = torch.Tensor.backward

    def any_backward(self, *a, **k):
        graph = _graph(self)
        log("backward", grads=_grad_state(list(net.parameters()), stale),
            reached=[o.grad_fn is not None and o.grad_fn in graph for o in outputs],
            sources=[d["source"] for k_, d in rec.events if k_ == "D"])
        return backward(self, *a, **k)

    torch.Tensor.backward = any_backward
    patched = [c for c in type(opt).__mro__ if "step" in c.__dict__ and c is not object]
    saved = {c: c.__dict__["step"] for c in patched}
    for c in patched:
        c.step = any_step
    try:
        torch.manual_seed(1234)
        _call(what, step, D, G, opt, *args, **kwargs)
    finally:
        torch.Tensor.backward = backward
        for c, f in saved.items():
            c.step = f
        for h in hooks:
            h.remove()
    rec.events.append(("end", {"g_grads": any(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())
                                            and trained == 0}))
    return rec


def _watch_networks(D, G, real, z, log: Callable, outputs: list) -> list:
    """Forward hooks logging every batch that reaches D (real, fake or both, attached to G or not) and every call
    of G (on the z given or another); D's outputs are kept, to see later which of them reached the loss."""
    g_params = set(map(id, G.parameters()))

    def on_d(module, inputs, out):
        x = inputs[0]
        source = ("real" if real is not None and x.shape == real.shape and torch.equal(x.detach(), real) else
                  "both" if real is not None and len(x) == 2 * len(real) else "fake")
        outputs.append(out)
        log("D", size=len(x), source=source, to_g=_reaches(x, g_params), out_grad=bool(out.requires_grad))

    def on_g(module, inputs, out):
        log("G", given_z=bool(torch.equal(inputs[0], z)))

    return [D.register_forward_hook(on_d), G.register_forward_hook(on_g)]


def _logged(fn: Callable, note: Callable) -> Callable:
    def wrapper(*a, **k):
        note()
        return fn(*a, **k)
    return wrapper


def _shaped_like(opt, shapes: dict[str, list]) -> str:
    """Which network an optimiser from elsewhere trains, told by its parameters' shapes."""
    mine = sorted(tuple(p.shape) for g in opt.param_groups for p in g["params"])
    for name, want in shapes.items():
        if mine == want:
            return f"a {name}'s parameters, as {'d' if name == 'D' else 'g'}_optimizer is"
    return "parameters of neither network"


def _graph(t: torch.Tensor) -> set:
    """Every autograd node a backward() from ``t`` visits."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        todo.extend(f for f, _ in fn.next_functions)
    return seen


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
    """Fail at the first place where the learner's step parts from the notebook's: old gradients cleared (by
    zero_grad() or by setting them to None) before backward(), backward() before step(), step() on the optimiser
    the step is given, and the batches that reached D."""
    net, opt = ("D", "d_optimizer") if trained == 0 else ("G", "g_optimizer")
    rule_clear, step = ("SD4", "D step") if trained == 0 else ("ST2", "G step")
    rule_order, rule_update = ("SD9", "SD3") if trained == 0 else ("ST2", "SG1")
    events = rec.events
    backwards = [d for k, d in events if k == "backward"]
    steps = [(i, d) for i, (k, d) in enumerate(events) if k == "step"]
    given = [(i, d) for i, d in steps if d["given"]]
    others = [d for _, d in steps if not d["given"]]
    if others:
        _fail(f"the {step}'s calls", f"{opt}.step(), the optimiser the step is given",
              f"step() of another optimiser, over {others[0]['over']}" + ("" if given else f", and no {opt}.step()"),
              f"the {step} updates {net} only, with the optimiser it receives as an argument ({opt}): do not reach "
              "for an optimiser defined elsewhere in the notebook", rule=rule_update)
    if not given:
        _fail(f"the {step}'s calls", f"{opt}.step() after backward()", f"no {opt}.step()",
              f"update {net} with {opt}.step(), the optimiser you are given, after the loss's backward()",
              rule=rule_update)
    if not backwards:
        _fail(f"the {step}'s calls", "backward() on the loss, then step()", "no backward()",
              f"call backward() on {net}'s loss before {opt}.step(): without it step() has no new gradients",
              rule=rule_order)
    first_step = given[0][0]
    first_back = next(i for i, (k, _) in enumerate(events) if k == "backward")
    if first_step < first_back:
        _fail(f"the {step}'s calls", "backward(), then step()", "step() before backward()",
              f"{opt}.step() ran before backward(), so it moved {net} with the gradients left from before (or none) "
              "and this step's gradients were never used: call the loss's backward() first, then step()",
              rule=rule_order)
    at_back, at_step = backwards[0]["grads"], given[0][1]["grads"]
    later = [i for i, (k, d) in enumerate(events) if k == "zero_grad" and d["on"] in ("optimiser", net)
             and i > first_back]
    cleared_between = any(k == "zero_grad" and d["on"] in ("optimiser", net) and first_back < i < first_step
                          for i, (k, d) in enumerate(events))
    if at_step in ("none", "zero") and cleared_between:
        _fail(f"the {step}'s calls", f"{net}'s new gradients when {opt}.step() ran", "no gradients: they were "
              "cleared after backward()", f"zero_grad() ran after backward(), so step() saw no gradients and {net} "
              "did not learn from this batch: clear the old gradients first, before backward()", rule=rule_clear)
    if at_back == "stale":
        _fail(f"the {step}'s calls", f"{net}'s old gradients cleared before backward()",
              f"the previous step's gradients still in {net} when backward() ran" +
              ((": zero_grad() ran only after step()" if later[0] > first_step else
                ": zero_grad() ran only after backward()") if later else ""),
              f"backward() adds to what is in .grad, so step() used the old gradients plus this step's: call "
              f"{opt}.zero_grad() first (zero_grad() on the other network does not clear {net}'s)", rule=rule_clear)
    _compare_batches(rec, trained, step)
    _compare_scores(rec, trained, step)


def _compare_scores(rec: StepRecord, trained: int, step: str) -> None:
    """Each score D gave (of the real batch, of the fakes) must reach the loss that backward() ran on."""
    backs = [d for k, d in rec.events if k == "backward"]  # a step may call backward() once per loss term
    last = backs[-1]
    reached_any = [any(b["reached"][i] for b in backs if i < len(b["reached"])) for i in range(len(last["reached"]))]
    for source, reached in zip(last["sources"], reached_any, strict=False):
        if reached:
            continue
        what = "the real images" if source == "real" else "the fakes"
        if trained == 0 and source in ("real", "fake"):
            _fail(f"the {step}'s loss", f"D's scores of {what} in the loss that backward() runs on",
                  f"D's score of {what} detached (or computed under torch.no_grad()), so that term trains nothing",
                  ("score the real images with gradients: real_loss(D(real_images), smooth) must reach D; only the "
                   "fakes are detached, and as images, G(z).detach()" if source == "real" else
                   "detach the fake IMAGES, G(z).detach(), before D scores them; D's score of them must stay "
                   "attached: fake_loss(D(fake_images))"), rule="SD5")
        if trained == 1:
            _fail(f"the {step}'s loss", "D's score of G(z) in the loss that backward() runs on",
                  "D's score detached (or computed under torch.no_grad()): no gradient reaches G",
                  "no detach in the G step: g_loss = real_loss(D(G(z)))", rule="SG2")


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

