"""`python helpers.py grade`: a class of planted submissions, broken in every way a class breaks them, each gets a
row with its reason while the batch goes on, and nothing outside the scratch folders changes."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nbformat
import pytest
from test_exercise import EXERCISE, LEARNER_SOLUTION, fill_scaffolds

from facegan import cli, config, grade

ROOT = Path(config.PROJECT_ROOT)


def _submission(path: Path, replace: dict[str, str] | None = None, extra: dict[str, str] | None = None) -> Path:
    """The exercise filled with a learner's solution; ``replace`` swaps a part's code, ``extra`` adds lines to the
    cell that defines a name."""
    nb = nbformat.read(EXERCISE, as_version=4)
    code = {**LEARNER_SOLUTION, **(replace or {})}
    for cell in nb.cells:
        if cell.cell_type == "code" and "Your code goes here" in cell.source:
            cell.source = fill_scaffolds(cell.source, code)
            for name, lines in (extra or {}).items():
                if f"def {name}(" in cell.source or f"class {name}(" in cell.source or f"{name} =" in cell.source:
                    cell.source = lines + "\n" + cell.source
    nbformat.write(nb, path)
    return path


def test_learner_names_are_unique_and_follow_nbgrader_folders(tmp_path):
    paths = [tmp_path / "submitted" / s / "face_generation" / "face_generation.ipynb" for s in ("ada", "bob")]
    assert grade.learner_names(paths) == ["ada", "bob"]
    assert grade.learner_names([Path("a/x y.ipynb"), Path("b/x y.ipynb"), Path("c/z.ipynb")]) == ["a", "b", "c"]
    assert grade.learner_names([Path("x.ipynb"), Path("x.ipynb")]) == ["x", "x-2"]
    # a scratch folder must stay inside OUT/work, and two learners never share one
    assert grade.learner_names([Path("s/..ipynb"), Path("t/...ipynb")]) == ["learner", "learner-2"]
    assert grade.learner_names([Path("p/a.ipynb"), Path("q/a-2.ipynb"), Path("r/a.ipynb")]) == ["p", "q", "r"]
    assert grade.learner_names([Path("a.ipynb"), Path("a.ipynb"), Path("a-2.ipynb")]) == ["a", "a-2", "a-2-2"]


def test_bad_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist: pass notebook files"):
        grade.find_submissions([tmp_path / "nope.ipynb"])
    with pytest.raises(ValueError, match="no notebooks found"):
        grade.find_submissions([tmp_path])
    assert cli.main(["grade", str(tmp_path / "nope.ipynb"), "--out", str(tmp_path / "g")]) == 2


@pytest.mark.slow
def test_a_class_with_broken_submissions_is_graded_to_the_end(tmp_path, celeba_dir):
    subs, outside = tmp_path / "class", tmp_path / "outside"
    subs.mkdir()
    outside.mkdir()
    (outside / "canary.txt").write_text("still here")
    _submission(subs / "good.ipynb")
    (subs / "not_json.ipynb").write_text("this is not a notebook {")
    _submission(subs / "syntax.ipynb", replace={"Discriminator": "class Discriminator(nn.Module)\n    pass"})
    _submission(subs / "loop.ipynb", extra={"scale": "while True:\n    pass"})
    _submission(subs / "stubborn.ipynb", extra={"real_loss": "import time\nwhile True:\n    try:\n"
                                                             "        time.sleep(1)\n    except BaseException:\n"
                                                             "        pass"})
    _submission(subs / "huge.ipynb", extra={"Generator": "big = torch.ones(3 * 2**30)  # 12 GiB"})
    _submission(subs / "missing.ipynb", replace={"weights_init_normal": LEARNER_SOLUTION["weights_init_normal"]
                                                 .replace("def weights_init_normal", "def weight_init_normal")})
    vandal = (f"import shutil, subprocess\nfrom pathlib import Path\n"
              f"shutil.rmtree({str(outside)!r}, ignore_errors=True)\n"
              f"Path({str(outside / 'written.txt')!r}).write_text('x')\n")
    _submission(subs / "vandal.ipynb", extra={"d_optimizer": vandal,
                                              "discriminator_step": f"subprocess.run(['rm', '-rf', {str(outside)!r}])"})
    # Writes on their own, each attempt caught, so each one is tried (not stopped by an earlier refusal).
    attempts = (f"lambda: Path({str(outside / 'w.txt')!r}).write_text('x')",
                f"lambda: torch.save({{}}, {str(outside / 'w.pt')!r})",
                f"lambda: os.symlink('/etc/hostname', {str(outside / 'w.lnk')!r})")
    writer = ("import os\nfrom pathlib import Path\nrefused = 0\n"
              f"for attempt in ({', '.join(attempts)}):\n"
              "    try:\n        attempt()\n    except PermissionError:\n        refused += 1\n"
              "assert refused == 3, refused\n")
    _submission(subs / "writer.ipynb", extra={"scale": writer})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    limits = grade.Limits(timeout_s=120, part_seconds=30, memory_gb=6, steps=5)
    rows = {r["learner"]: r for r in grade.grade_class([subs], tmp_path / "grades", limits, progress=lambda _: None)}

    full = sum(p.points for p in grade_parts())
    assert set(rows) == {"good", "not_json", "syntax", "loop", "stubborn", "huge", "missing", "vandal", "writer"}
    assert rows["writer"]["points"] == full  # every write refused (the cell asserts it), nothing else lost
    assert not [p.name for p in outside.iterdir() if p.name.startswith("w.")]
    assert rows["good"]["points"] == full and rows["good"]["faces"]
    assert (tmp_path / "grades" / rows["good"]["faces"]).stat().st_size > 1000
    assert rows["not_json"]["points"] == 0 and "not a readable notebook" in rows["not_json"]["status"]
    assert re.search(r"syntax error in your cell, line \d+: expected ':'", rows["syntax"]["discriminator message"])
    assert rows["syntax"]["points"] == full - 2
    assert "ran for over 30 s" in rows["loop"]["data message"] and rows["loop"]["points"] == full - 1
    assert "timed out" in rows["stubborn"]["status"] and "timed out" in rows["stubborn"]["losses message"]
    assert rows["stubborn"]["generator"] == 2  # the parts before the loop kept their points
    assert "ran out of memory" in rows["huge"]["generator message"]
    assert "no code cell defines weights_init_normal" in rows["missing"]["weights_init message"]
    assert "refused" in rows["vandal"]["optimizers message"] and "refused" in rows["vandal"]["training_steps message"]
    # nothing outside the scratch folders changed: only the gradebook, the report and the work folders are new
    assert (outside / "canary.txt").read_text() == "still here" and not (outside / "written.txt").exists()
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    new = {p for p in set(after) - set(before) if p.parts[:2] != ("grades", "work")}
    assert new == {Path("grades"), Path("grades/gradebook.csv"), Path("grades/report.html")}
    with open(tmp_path / "grades" / "gradebook.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["learner"] for r in table] == [r for r in sorted(rows)]
    html = (tmp_path / "grades" / "report.html").read_text()
    assert html.count("<tr>") == len(rows) + 1 and "work/good/faces.png" in html
    result = json.loads((tmp_path / "grades" / "work" / "good" / "result.json").read_text())
    assert result["training"]["steps"] == 5


def grade_parts():
    from facegan.classroom import exercise_parts

    return exercise_parts()
