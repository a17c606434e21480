"""How long `python helpers.py grade` takes per submission: checks, the learner's training and the report.

Grades N copies of the exercise filled in with a learner's correct solution (tests/test_exercise.py's), each in
its own subprocess with the given threads, and prints the seconds of each submission, of its training, and the
mean.  The target: under 2 minutes per submission on 2 cores, training included.  It also prints what the
jail alone costs (cgroups, network namespace, the pipe, killing what is left), as the median start-and-end
time of a trivial jailed worker beside a plain subprocess.

    python bench/grade.py            # 3 submissions, 2 threads, 100 training steps (the defaults of `grade`)
    python bench/grade.py 5 2 100
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from test_exercise import EXERCISE, fill_scaffolds  # noqa: E402

from facegan.grade import Limits, grade_class  # noqa: E402
from facegan.grade_fence import Fence, run_jailed  # noqa: E402

#: A worker that does nothing: reads its settings, says done.
TRIVIAL = ("import json, os, sys; s = json.loads(sys.stdin.readline()); "
           "os.write(s['result_fd'], b'{\"kind\": \"done\"}\\n')")


def jail_cost(repeats: int = 5) -> tuple[float, float]:
    """Median seconds to start and end a trivial worker jailed, and a plain subprocess doing the same."""
    fence = Fence.probe(say=lambda _: None)
    jailed, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            start = time.perf_counter()
            run_jailed([sys.executable, "-c", TRIVIAL], {}, Path(tmp), Path(tmp) / "log", dict(os.environ), 8, 60,
                       fence)
            jailed.append(time.perf_counter() - start)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import sys; sys.stdin.readline()"],
                           input=json.dumps({}).encode() + b"\n", check=True)
            plain.append(time.perf_counter() - start)
    return statistics.median(jailed), statistics.median(plain)


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
    jailed, plain = jail_cost()
    print(f"the jail alone: {jailed * 1000:.0f} ms to start and end a trivial worker, {plain * 1000:.0f} ms for a "
          "plain subprocess (median of 5)")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
