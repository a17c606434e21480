"""The nbgrader assignment: generated from the solution notebook and committed up to date, one solution cell and one
autograded test cell per part, everything else locked; and, where nbgrader is installed (CI installs it), real
nbgrader releases it without solutions, grades an untouched release 0, the solution full marks and a partly
correct submission exactly the points of its correct parts, and writes feedback."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from test_exercise import LEARNER_SOLUTION, fill_scaffolds

from facegan import classroom, config

ROOT = Path(config.PROJECT_ROOT)


def test_committed_assignment_is_up_to_date(tmp_path):
    fresh = classroom.make_classroom_notebook(out_path=tmp_path / "face_generation.ipynb")
    assert fresh.read_text() == classroom.CLASSROOM_NOTEBOOK.read_text(), \
        "classroom/source/face_generation/face_generation.ipynb is stale: run `python helpers.py exercise`"


def test_each_part_is_a_solution_cell_and_a_test_cell_with_points():
    nb = nbformat.read(classroom.CLASSROOM_NOTEBOOK, as_version=4)
    meta = [c.metadata["nbgrader"] for c in nb.cells]
    parts = classroom.exercise_parts()
    solutions = [m["grade_id"] for m in meta if m["solution"]]
    tests = {m["grade_id"]: m["points"] for m in meta if m["grade"]}
    assert solutions == [p.id for p in parts] and len(parts) == 7
    assert tests == {f"test_{p.id}": p.points for p in parts}
    assert all(m["locked"] for m in meta if not m["solution"])  # instructions and checks are locked
    assert len({m["grade_id"] for m in meta}) == len(meta)
    for cell in nb.cells:
        if cell.metadata["nbgrader"]["solution"]:
            assert cell.source.count(classroom.BEGIN_SOLUTION) >= 1 and "tests.test_" not in cell.source
        if cell.metadata["nbgrader"]["grade"]:
            assert "tests.test_" in cell.source and classroom.BEGIN_SOLUTION not in cell.source
    assert not [c for c in nb.cells if c.cell_type == "markdown" and "<details>" in c.source]  # no key lines


def test_solution_cells_reach_the_scaffold_through_its_stub():
    """What nbgrader clears is only the body: the learner keeps the signature, docstring and TODO."""
    nb = nbformat.read(classroom.CLASSROOM_NOTEBOOK, as_version=4)
    d = next(c.source for c in nb.cells if c.metadata["nbgrader"]["grade_id"] == "discriminator")
    assert "def __init__(self, conv_dim: int = 32, n_layers: int = 3):" in d and "# TODO: n_layers stride-2" in d
    assert "        ### BEGIN SOLUTION\n        self.reference = helpers.Discriminator(" in d


# --- real nbgrader, in a temporary course

def _nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True,
                         text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def _scores(course: Path) -> dict[str, float]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return {s.student.id: s.score for s in gb.find_assignment("face_generation").submissions}


@pytest.mark.slow
def test_nbgrader_releases_and_grades_a_class(tmp_path, celeba_dir):
    pytest.importorskip("nbgrader", reason="pip install nbgrader (CI does) to run the assignment through nbgrader")
    course = tmp_path / "course"
    shutil.copytree(classroom.CLASSROOM_NOTEBOOK.parent, course / "source" / "face_generation")
    shutil.copy(ROOT / "classroom" / "nbgrader_config.py", course)
    _nbgrader(course, "generate_assignment", "face_generation", "--force")
    release = course / "release" / "face_generation" / "face_generation.ipynb"
    text = release.read_text()
    for solution in (classroom.BEGIN_SOLUTION, "self.reference", "helpers.Discriminator(", "torch.optim.Adam(D."):
        assert solution not in text, solution
    source = classroom.CLASSROOM_NOTEBOOK.read_text()
    assert text.count("raise NotImplementedError()") == source.count(classroom.BEGIN_SOLUTION) == 13

    partial = nbformat.read(release, as_version=4)
    correct = {k: LEARNER_SOLUTION[k] for k in ("get_dataloader", "scale", "Discriminator", "real_loss", "fake_loss")}
    for cell in partial.cells:
        if cell.metadata["nbgrader"].get("solution"):
            cell.source = fill_scaffolds(cell.source, correct)
    submissions = {"untouched": release, "solution": course / "source" / "face_generation" / "face_generation.ipynb"}
    for student in ("untouched", "solution", "partial"):
        folder = course / "submitted" / student / "face_generation"
        folder.mkdir(parents=True)
        if student == "partial":
            nbformat.write(partial, folder / "face_generation.ipynb")
        else:
            shutil.copy(submissions[student], folder / "face_generation.ipynb")
    _nbgrader(course, "autograde", "face_generation", "--force")
    points = {p.id: p.points for p in classroom.exercise_parts()}
    assert _scores(course) == {"untouched": 0, "solution": sum(points.values()),
                               "partial": points["data"] + points["discriminator"] + points["losses"]}
    _nbgrader(course, "generate_feedback", "face_generation", "--force")
    for student in ("untouched", "solution", "partial"):
        assert (course / "feedback" / student / "face_generation" / "face_generation.html").stat().st_size > 10_000
