"""The rule table (facegan/checks/rules.py) traced both ways: every rule the exercise states has a check, every
check failure names a rule, every rule has a planted violation its check catches, and the table, the exercise,
the nbgrader assignment and docs/teaching.md agree.  Then hypothesis searches for formulas the checks misjudge."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import problem_unittests as checks
from facegan.checks import report
from facegan.checks.rules import EXPLANATIONS, RESTATED, RULES, rules_markdown
from facegan.exercise import EXERCISE_STUBS, RULES_BEGIN, RULES_END

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ROOT / "facegan" / "checks"


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("**", "")).strip().rstrip(".").lower()


def _fail_calls() -> list[tuple[str, ast.Call]]:
    """Every _fail(...) call in facegan/checks, with its module's name."""
    calls = []
    for path in CHECKS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_fail":
                calls.append((path.stem, node))
    return calls


def test_every_check_failure_names_a_rule():
    calls = _fail_calls()
    assert len(calls) > 60
    unnamed = [f"{m}.py line {c.lineno}" for m, c in calls if not any(k.arg == "rule" for k in c.keywords)]
    assert not unnamed, f"_fail without rule=: {unnamed}"
    # literal rule ids must exist (the others come from a rule function or mapping, checked below)
    literal = [k.value.value for _, c in calls for k in c.keywords
               if k.arg == "rule" and isinstance(k.value, ast.Constant)]
    assert set(literal) <= set(RULES), sorted(set(literal) - set(RULES))
    assert all(rule in RULES for _, rule in report.CRASH_HINTS.values())


def test_every_rule_has_a_check():
    """Each rule's id is used by the checks' code (outside the table), and its named check exists."""
    import importlib

    code = "\n".join(p.read_text() for p in CHECKS.glob("*.py") if p.name != "rules.py")
    for rule in RULES.values():
        assert re.search(rf"[\"']{rule.id}[\"']", code), f"rule {rule.id} ({rule.text!r}) is enforced by no check"
        module, function = rule.check.split(".")
        assert hasattr(importlib.import_module(f"facegan.checks.{module}"), function), rule.check
        assert hasattr(checks, rule.part), rule.part


def _exercise_text() -> str:
    solution = nbformat.read(ROOT / "face_generation.ipynb", as_version=4)
    exercise = nbformat.read(ROOT / "face_generation_exercise.ipynb", as_version=4)
    return _norm("\n".join(c.source for nb in (solution, exercise) for c in nb.cells))


def test_every_rule_is_quoted_from_the_exercise():
    text = _exercise_text()
    missing = [r.id for r in RULES.values() if _norm(r.text) not in text]
    assert not missing, f"rules whose words are no longer in the exercise: {missing}"


def _sentences(text: str) -> list[str]:
    shielded = re.sub(r"`[^`]*`", lambda m: m.group(0).replace(".", "\u2024"), text)
    return [s.strip().replace("\u2024", ".") for s in re.split(r"(?<=[.;:])\s+", shielded) if s.strip()]


def test_every_sentence_of_the_stubs_and_hints_is_traced():
    """A directive added to a stub, TODO or hint without a rule (or a restated rule) fails here."""
    texts = []
    for spec in EXERCISE_STUBS.values():
        texts += [spec[k] for k in ("doc", "todo", "hint") if k in spec]
        texts += [todo for _, todo in spec.get("methods", {}).values()]
    rules = [_norm(r.text) for r in RULES.values()]
    untraced = [s for t in texts for s in _sentences(t)
                if not any(r in _norm(s) or _norm(s) in r for r in rules)
                and s not in RESTATED and not any(_norm(e) in _norm(s) for e in EXPLANATIONS)]
    assert not untraced, f"sentences of the exercise with no rule: {untraced}"
    assert set(RESTATED.values()) <= set(RULES)


def test_the_exercise_the_assignment_and_the_docs_read_the_table():
    exercise = (ROOT / "face_generation_exercise.ipynb").read_text()
    assignment = (ROOT / "classroom" / "source" / "face_generation" / "face_generation.ipynb").read_text()
    teaching = (ROOT / "docs" / "teaching.md").read_text()
    for rule in RULES.values():
        assert f"**{rule.id}**" in exercise, rule.id
        assert re.search(rf"\b{rule.id}\b", assignment), rule.id
    table = teaching.split(RULES_BEGIN)[1].split(RULES_END)[0]
    assert table.strip() == rules_markdown().strip(), "the rule table is stale: python helpers.py exercise"


def _reported(run) -> str:
    try:
        run()
    except checks.CheckFailed as e:
        return e.rule
    return ""


def _step_rule(which: str, fn) -> str:
    import test_problem_unittests as first

    D, G, d_opt, g_opt = first._fresh()
    if which == "d":
        return _reported(lambda: checks.test_discriminator_step(fn, D, G, d_opt, torch.rand(16, 3, 32, 32) * 2 - 1,
                                                                torch.randn(16, 100)))
    return _reported(lambda: checks.test_generator_step(fn, D, G, g_opt, torch.randn(16, 100)))


def _loader(transform_list, size=None):
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from facegan.data import FaceImages, resolve_image_dir

    def get_dataloader(batch_size, image_size, data_dir="celeba"):
        steps = transform_list(size or image_size)
        return DataLoader(FaceImages(resolve_image_dir(data_dir), transforms.Compose(steps)), batch_size=batch_size,
                          shuffle=True)
    return get_dataloader


def _planted() -> dict:
    """Violations of the rules the other corpora reach only through another rule's check first."""
    from torchvision import transforms as T

    from facegan import config, losses, models
    from facegan.updates import make_optimizers

    def d_concat(D, G, d_optimizer, real_images, z, smooth=False):  # one call to D on both batches (SD1)
        d_optimizer.zero_grad()
        out = D(torch.cat([real_images, G(z).detach()]))
        d_loss = losses.real_loss(out[:len(real_images)], smooth) + losses.fake_loss(out[len(real_images):])
        d_loss.backward()
        d_optimizer.step()
        return d_loss

    def d_step_first(D, G, d_optimizer, real_images, z, smooth=False):  # step() before backward() (SD9)
        d_optimizer.zero_grad()
        d_loss = losses.real_loss(D(real_images), smooth) + losses.fake_loss(D(G(z).detach()))
        d_optimizer.step()
        d_loss.backward()
        return d_loss

    def g_no_return(D, G, g_optimizer, z):  # returns nothing (SG3)
        g_optimizer.zero_grad()
        losses.real_loss(D(G(z))).backward()
        g_optimizer.step()

    class LastTakesDouble(torch.nn.Module):  # the channels stop halving at 2 * conv_dim (G5)
        def __init__(self, z_size=100, conv_dim=32, n_layers=3):
            super().__init__()
            c = conv_dim
            self.fc = torch.nn.Linear(z_size, 4 * c * 16)
            nn = torch.nn
            self.net = nn.Sequential(nn.BatchNorm2d(4 * c), nn.ReLU(), nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1),
                                     nn.BatchNorm2d(2 * c), nn.ReLU(), nn.ConvTranspose2d(2 * c, 2 * c, 4, 2, 1),
                                     nn.BatchNorm2d(2 * c), nn.ReLU(), nn.ConvTranspose2d(2 * c, 3, 4, 2, 1), nn.Tanh())
            self.c = c

        def forward(self, z):
            return self.net(self.fc(z).view(-1, 4 * self.c, 4, 4))

    normalise = T.Normalize([0.5] * 3, [0.5] * 3)
    cfg = config.make_config("hinge_sn64")
    D, G = models.build_models(config.make_config("small32"))

    def ttur_optimizers():  # g_optimizer with D's rate under TTUR (O2)
        d_opt, _ = make_optimizers(D, G, cfg)
        g_opt = torch.optim.Adam(G.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
        checks.test_optimizers(d_opt, g_opt, D, G, cfg=cfg)

    return {
        "SD1": lambda: _raise_step("d", d_concat), "SD9": lambda: _raise_step("d", d_step_first),
        "SG3": lambda: _raise_step("g", g_no_return), "G5": lambda: checks.test_generator(LastTakesDouble),
        "O2": ttur_optimizers,
        "DL5": lambda: checks.test_dataloader(_loader(lambda s: [T.Resize(32), T.CenterCrop(32), T.ToTensor(),
                                                                 T.RandomHorizontalFlip(), normalise])),
        "DL6": lambda: checks.test_dataloader(_loader(lambda s: [T.Resize(s), T.CenterCrop(s), normalise,
                                                                 T.ToTensor()])),
    }


def _raise_step(which: str, fn) -> None:
    import test_problem_unittests as first

    D, G, d_opt, g_opt = first._fresh()
    if which == "d":
        checks.test_discriminator_step(fn, D, G, d_opt, torch.rand(16, 3, 32, 32) * 2 - 1, torch.randn(16, 100))
    else:
        checks.test_generator_step(fn, D, G, g_opt, torch.randn(16, 100))


def planted_rules() -> set[str]:
    """The rules that the planted mistakes of every corpus get reported under, by the check of that rule."""
    import learner_cases as cases
    import test_learner_mistakes as second
    import test_problem_unittests as first
    from test_learner_rules import outcome

    found = {c.rule for c in cases.MISTAKES if outcome(c.name).rule == c.rule}
    found |= {_reported(lambda m=m: m[1](*m[2])) for m in first.MISTAKES}
    found |= {_reported(m[1]) for m in second.NEW_MISTAKES}
    found |= {_step_rule(which, fn) for _, which, fn, _ in first.STEP_MISTAKES}
    planted = _planted()
    for rule, run in planted.items():
        assert _reported(run) == rule, f"the planted violation of {rule} was reported as {_reported(run)!r}"
    found |= set(planted)
    return found - {""}


@pytest.mark.slow
def test_every_rule_has_a_planted_violation_its_check_catches(celeba_dir):
    """Each rule has a planted mistake in the tests that its own check reports under that rule."""
    missing = sorted(set(RULES) - planted_rules())
    assert not missing, f"rules with no planted violation caught by their check: {missing}"


# --- hypothesis: the checks' verdicts against the formulas they guard

QUIET = settings(max_examples=25, deadline=None, database=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow])


def _verdict(check, *args) -> bool:
    try:
        check(*args)
    except checks.CheckFailed:
        return False
    return True


@QUIET
@given(a=st.one_of(st.just(1.0), st.floats(-2, 2)), b=st.one_of(st.just(0.0), st.floats(-1, 1)))
def test_scale_passes_exactly_the_formula(a, b):
    """Any line lo + (hi - lo) * (a x + b) passes only where it is the formula, a = 1 and b = 0."""
    right = a == 1.0 and b == 0.0
    assume(right or abs(a - 1) > 1e-3 or abs(b) > 1e-3)  # not so close that float rounding decides

    def scale(x, feature_range=(-1, 1)):
        lo, hi = feature_range
        return lo + (hi - lo) * (a * x + b)

    assert _verdict(checks.test_scale, scale) == right


@QUIET
@given(label=st.one_of(st.just(1.0), st.floats(0, 1)))
def test_losses_pass_exactly_the_right_label(label):
    """BCE-with-logits towards any label passes as real_loss only at 1 (and 0.9 smoothed)."""
    assume(label == 1.0 or abs(label - 1) > 1e-3)

    def real_loss(D_out, smooth=False):
        return F.binary_cross_entropy_with_logits(D_out, torch.full_like(D_out, 0.9 if smooth else label))

    def fake_loss(D_out):
        return F.binary_cross_entropy_with_logits(D_out, torch.zeros_like(D_out))

    assert _verdict(checks.test_losses, real_loss, fake_loss) == (label == 1.0)


@QUIET
@given(std=st.one_of(st.just(0.02), st.floats(0.001, 0.1)))
def test_init_passes_exactly_std_002(std):
    assume(std == 0.02 or abs(std - 0.02) > 1e-3)

    def init(m):
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
            torch.nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)

    assert _verdict(checks.test_weights_init, init) == (std == 0.02)
