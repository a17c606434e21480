"""The learner checks, measured on a fresh corpus (tests/learner_cases.py): every realistic mistake is caught
by a ``CheckFailed`` (never a raw error from inside torch) whose message names the real cause, and every
correct solution in another style passes.  ``test_score`` prints the whole table:

    python -m pytest tests/test_learner_rules.py -q -rA
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import learner_cases as cases
import pytest
import torch

import problem_unittests as checks
from facegan import config, models
from facegan.updates import make_optimizers

ROOT = Path(__file__).resolve().parents[1]
BY_NAME = {c.name: c for c in [*cases.MISTAKES, *cases.CORRECT]}


def _fresh(preset: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = config.make_config(preset, fused_adam=False)
    D, G = models.build_models(cfg)
    return (cfg, D, G, *make_optimizers(D, G, cfg))


def _run(part: str, code, preset: str) -> None:
    """Run ``code`` through the check ``part`` as the exercise's cell does."""
    check = getattr(checks, part)
    if part == "test_dataloader":
        check(code, image_size=32)
    elif part == "test_losses":
        check(*code)
    elif part == "test_optimizers":
        cfg, D, G, _, _ = _fresh(preset)
        check(*code(D, G, cfg), D, G, cfg=cfg)
    elif part in ("test_discriminator_step", "test_generator_step"):
        cfg, D, G, d_opt, g_opt = _fresh(preset)
        cases.d_optimizer, cases.g_optimizer = d_opt, g_opt  # the notebook's globals
        torch.manual_seed(1)
        real, z = torch.rand(16, 3, cfg.image_size, cfg.image_size) * 2 - 1, torch.randn(16, cfg.z_size)
        if part == "test_discriminator_step":
            check(code, D, G, d_opt, real, z)
        else:
            check(code, D, G, g_opt, z)
    else:  # test_scale, test_discriminator, test_generator, test_weights_init
        check(code)


@dataclass(frozen=True)
class Outcome:
    verdict: str  # named | wrong cause | not caught | raw crash | passed | failed
    message: str
    rule: str = ""  # the rule the failure named (CheckFailed.rule)


@functools.cache
def outcome(name: str) -> Outcome:
    """Run one case once (the per-case tests and the score share the result)."""
    case = BY_NAME[name]
    try:
        _run(case.part, case.code, case.preset)
    except checks.CheckFailed as e:
        if isinstance(case, cases.Correct):
            return Outcome("failed", str(e))
        text = str(e).lower()
        return Outcome("named" if any(w in text for w in case.cause_words) else "wrong cause", str(e), e.rule)
    except Exception as e:  # noqa: BLE001 - a raw crash is the outcome being measured
        return Outcome("raw crash", f"{type(e).__name__}: {e}")
    return Outcome("passed" if isinstance(case, cases.Correct) else "not caught", "")


def _needs_data(request, part: str) -> None:
    if part == "test_dataloader":
        request.getfixturevalue("celeba_dir")


@pytest.mark.parametrize("name", [m.name for m in cases.MISTAKES])
def test_mistake_is_caught_and_named(name, request):
    case = BY_NAME[name]
    _needs_data(request, case.part)
    got = outcome(name)
    assert got.verdict != "raw crash", f"{case.part} let a raw error through: {got.message}"
    assert got.verdict != "not caught", f"{case.part} passed code that breaks {case.rule}: {case.breaks!r}"
    assert got.verdict == "named", f"the message names none of {case.cause_words}:\n{got.message}"


@pytest.mark.parametrize("name", [c.name for c in cases.CORRECT])
def test_correct_style_passes(name, request):
    case = BY_NAME[name]
    _needs_data(request, case.part)
    got = outcome(name)
    assert got.verdict == "passed", f"{case.part} rejected correct code: {got.message}"


def _exercise_text() -> str:
    """The exercise's markdown and code, comment marks and emphasis dropped, whitespace collapsed."""
    nb = json.loads((ROOT / "face_generation_exercise.ipynb").read_text())
    text = "\n".join("".join(cell["source"]) for cell in nb["cells"])
    return _normal(re.sub(r"(?m)^\s*# ?", "", text))


def _normal(s: str) -> str:
    return " ".join(s.replace("**", "").split())


def test_corpus_is_complete_and_quotes_the_exercise():
    """At least 30 mistakes and 10 correct styles, over every part; each quote is the exercise's or a rule's."""
    assert len(cases.MISTAKES) >= 30 and len(cases.CORRECT) >= 10
    assert len(BY_NAME) == len(cases.MISTAKES) + len(cases.CORRECT), "case names must be unique"
    parts = {"test_scale", "test_dataloader", "test_discriminator", "test_generator", "test_weights_init",
             "test_losses", "test_optimizers", "test_discriminator_step", "test_generator_step"}
    assert {m.part for m in cases.MISTAKES} == parts and {c.part for c in cases.CORRECT} == parts
    try:
        from facegan.checks.rules import RULES
    except ImportError:
        RULES = {}
    exercise = _exercise_text()
    rule_texts = [_normal(r.text) for r in RULES.values()]
    for m in cases.MISTAKES:
        quote = _normal(m.breaks)
        assert quote in exercise or quote in rule_texts, f"{m.name}: {m.breaks!r} is not in the exercise"
        assert m.cause_words and all(w == w.lower() for w in m.cause_words), m.name
        if RULES:
            assert m.rule in RULES, f"{m.name}: rule {m.rule!r} is not in facegan/checks/rules.py"
            assert RULES[m.rule].part == m.part or m.rule == "ST1", f"{m.name}: {m.rule} belongs to another check"


def test_score(request, capsys):
    """The corpus's score against the issue's goals: 95% caught, 90% named, every correct style passing."""
    request.getfixturevalue("celeba_dir")
    rows = [(c, outcome(c.name)) for c in [*cases.MISTAKES, *cases.CORRECT]]
    verdicts = [o.verdict for c, o in rows if isinstance(c, cases.Mistake)]
    caught = sum(v in ("named", "wrong cause") for v in verdicts)
    named = verdicts.count("named")
    passed = sum(o.verdict == "passed" for c, o in rows if isinstance(c, cases.Correct))
    with capsys.disabled():
        print(f"\n{'case':<58} {'check':<24} {'rule':<5} verdict")
        for c, o in rows:
            print(f"{c.name[:58]:<58} {c.part[5:]:<24} {getattr(c, 'rule', ''):<5} {o.verdict}")
        print(f"mistakes: {len(verdicts)}, caught {caught}, named the cause {named} "
              f"(raw crash {verdicts.count('raw crash')}, not caught {verdicts.count('not caught')}); "
              f"correct styles passing: {passed}/{len(cases.CORRECT)}")
    assert caught >= 0.95 * len(verdicts) and named >= 0.9 * len(verdicts) and passed == len(cases.CORRECT)
