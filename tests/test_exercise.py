"""Instructor checks: the exercise notebook is generated from the solution, its checks fail helpfully
on the untouched scaffolds, and the same checks pass on the solution."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import nbformat
import pytest
import torch

import helpers
import problem_unittests
from facegan import config, exercise, models, step

ROOT = Path(config.PROJECT_ROOT)
SOLUTION, EXERCISE = ROOT / "face_generation.ipynb", ROOT / "face_generation_exercise.ipynb"


def test_committed_exercise_is_up_to_date(tmp_path):
    fresh = exercise.make_exercise_notebook(SOLUTION, tmp_path / "exercise.ipynb")
    assert fresh.read_text() == EXERCISE.read_text(), \
        "face_generation_exercise.ipynb is stale: run `python helpers.py exercise` and commit it"


def test_exercise_has_no_solutions_and_no_outputs():
    nb = nbformat.read(EXERCISE, as_version=4)
    sources = "\n".join(c.source for c in nb.cells)
    assert exercise.BEGIN_SOLUTION not in sources and "from helpers import" not in sources
    assert sources.count("raise NotImplementedError") >= 10
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def _exercise_cells(path: Path) -> list[str]:
    """The code cells that hold a solution region (or its scaffold) and its checks."""
    nb = nbformat.read(path, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code" and "tests.test_" in c.source
            and (exercise.BEGIN_SOLUTION in c.source or "Your code goes here" in c.source)]


def _namespace(celeba_batch) -> dict:
    """What the notebook has defined by the time it reaches the exercise cells."""
    cfg = config.make_config("small32")
    D, G = models.build_models(cfg)
    images = torch.nn.functional.interpolate(celeba_batch, size=32, mode="area")
    return {"torch": torch, "helpers": helpers, "tests": problem_unittests, "cfg": cfg, "D": D, "G": G,
            "images": images}


def test_scaffolds_fail_with_helpful_messages(celeba_batch):
    cells = _exercise_cells(EXERCISE)
    assert len(cells) == 7
    ns = _namespace(celeba_batch)
    ns["d_optimizer"], ns["g_optimizer"] = step.make_optimizers(ns["D"], ns["G"], ns["cfg"])
    for source in cells:
        with pytest.raises(problem_unittests.CheckFailed, match="not implemented yet") as info:
            exec(compile(source, "<exercise cell>", "exec"), dict(ns))
        assert "raise NotImplementedError" in str(info.value) or "torch.optim.Adam" in str(info.value)


def test_the_same_checks_pass_on_the_solution(celeba_batch):
    cells = _exercise_cells(SOLUTION)
    assert len(cells) == 7
    ns = _namespace(celeba_batch)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for source in cells:
            exec(compile(source, "<solution cell>", "exec"), ns)
    assert out.getvalue().count("Tests Passed") == 9


def test_filling_in_one_scaffold_makes_its_check_pass(celeba_batch, capsys):
    cell = next(c for c in _exercise_cells(EXERCISE) if "def weights_init_normal" in c)
    filled = cell.replace(
        "    raise NotImplementedError",
        "    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):\n"
        "        nn.init.normal_(m.weight, 0.0, 0.02)\n"
        "        if m.bias is not None:\n"
        "            nn.init.zeros_(m.bias)")
    exec(compile(filled, "<filled cell>", "exec"), _namespace(celeba_batch))
    assert "Tests Passed: weights" in capsys.readouterr().out
