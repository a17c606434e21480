"""How long `python helpers.py grade` takes per submission: checks, the learner's training and the report.

Grades N copies of the exercise filled in with a learner's correct solution (tests/test_exercise.py's), each in
its own subprocess with the given threads, and prints the seconds of each submission, of its training, and the
mean.  The target: under 2 minutes per submission on 2 cores, training included.

    python bench/grade.py            # 3 submissions, 2 threads, 100 training steps (the defaults of `grade`)
    python bench/grade.py 5 2 100
"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from test_exercise import EXERCISE, fill_scaffolds  # noqa: E402

from facegan.grade import Limits, grade_class  # noqa: E402


def main(n: int = 3, threads: int = 2, steps: int = 100) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        nb = nbformat.read(EXERCISE, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code" and "Your code goes here" in cell.source:
                cell.source = fill_scaffolds(cell.source)
        for i in range(n):
            nbformat.write(nb, Path(tmp) / f"learner{i}.ipynb")
        start = time.perf_counter()
        rows = grade_class([tmp], Path(tmp) / "grades", Limits(threads=threads, steps=steps), progress=print)
        total = time.perf_counter() - start
    per = [r["seconds"] for r in rows]
    print(f"{n} submissions, {threads} threads, {steps} training steps: {statistics.mean(per):.1f} s per submission "
          f"(min {min(per):.1f}, max {max(per):.1f}); training: {', '.join(r['training'] for r in rows[:1])}; "
          f"{total:.0f} s in all, data preparation included; points {[r['points'] for r in rows]}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
