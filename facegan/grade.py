"""``python helpers.py grade SUBMISSIONS...``: grade a class's notebooks without nbgrader.

Each submission is copied into its own scratch folder (``OUT/work/LEARNER/``) and graded there by
``python -m facegan.grade_worker`` in a subprocess: its own process group, a wall-clock limit, a memory cap and
the write fence of facegan/sandbox.py.  The worker runs each part's cell and then its checks, and trains the
learner's D and G with the learner's steps for a fixed number of steps, saving their faces.  Whatever happens
in there (a file that is not a notebook, a syntax error, an endless loop, a huge allocation, a missing function,
a cell that deletes files) becomes that learner's row, with the reason; the batch goes on.

It writes ``OUT/gradebook.csv`` (one row per learner: points, then each part's points and message) and
``OUT/report.html`` (the same, with each learner's grid of faces).
"""
from __future__ import annotations

import csv
import html
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import PROJECT_ROOT


@dataclass(frozen=True)
class Limits:
    """What one submission may use: wall-clock seconds in all, seconds per part, memory, training steps."""

    timeout_s: int = 300
    part_seconds: int = 60
    memory_gb: float = 8.0
    steps: int = 100
    threads: int = 2


def find_submissions(paths: list[str | Path]) -> list[Path]:
    """The notebooks to grade: each file given, and every ``*.ipynb`` under each folder given (checkpoints aside)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
                            and "work" not in p.relative_to(path).parts[:-2])  # an earlier batch's scratch copies
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist: pass notebook files or folders of them")
    if not found:
        raise ValueError(f"no notebooks found in {', '.join(map(str, paths))}: pass .ipynb files or folders of them")
    return found


def learner_names(paths: list[Path]) -> list[str]:
    """A name per submission: the file's stem, or its folder's name when every file has the same stem (as in
    nbgrader's submitted/STUDENT/ASSIGNMENT/NOTEBOOK.ipynb); made unique with -2, -3..."""
    stems = [p.stem for p in paths]
    if len(set(stems)) < len(stems):
        stems = [next((q.name for q in p.parents if q.name and q.name not in ("face_generation", "submitted")),
                      p.stem) for p in paths]
    names: list[str] = []
    for stem in stems:
        # No "." or ".." (a scratch folder must stay inside OUT/work), and no name used twice.
        clean = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip(".") or "learner"
        name, n = clean, 1
        while name in names:
            n += 1
            name = f"{clean}-{n}"
        names.append(name)
    return names


def prepare_data(steps: int) -> None:
    """Fetch the data and build the image cache the workers train from, before any of them starts: they may only
    read outside their scratch folders."""
    from .batches import training_batches
    from .config import make_config
    from .data import ensure_celeba

    ensure_celeba()
    training_batches(make_config("small32", subset=steps * 64 + 64), "cpu")


def _environment(scratch: Path, limits: Limits) -> dict:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "CELEBA_ZIP", "FACEGAN_CACHE",
                                                          "FACEGAN_BF16", "VIRTUAL_ENV", "PYTHONHASHSEED")}
    tmp = scratch / "tmp"
    tmp.mkdir(exist_ok=True)
    threads = str(limits.threads)
    env.update(HOME=str(scratch), TMPDIR=str(tmp), MPLCONFIGDIR=str(tmp), MPLBACKEND="Agg", CI="1",
               PYTHONPATH=str(PROJECT_ROOT), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads)
    return env


def run_worker(notebook: Path, scratch: Path, limits: Limits) -> dict:
    """Grade one notebook in ``scratch`` in a limited subprocess; return its result, with the reason it stopped."""
    from .sandbox import limit_resources

    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    shutil.copyfile(notebook, scratch / "submission.ipynb")
    cmd = [sys.executable, "-m", "facegan.grade_worker", "submission.ipynb", "--steps", str(limits.steps),
           "--part-seconds", str(limits.part_seconds)]
    start = time.perf_counter()
    with open(scratch / "worker.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=scratch, env=_environment(scratch, limits), stdout=log, stderr=log,
                                start_new_session=True, preexec_fn=lambda: limit_resources(limits.memory_gb))
        try:
            proc.wait(limits.timeout_s)
            stopped = None if proc.returncode == 0 else f"the grader's subprocess ended with code {proc.returncode}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            stopped = f"timed out: stopped after {limits.timeout_s} s (an endless loop?)"
    try:
        result = json.loads((scratch / "result.json").read_text())
    except (OSError, ValueError):
        result = {"status": "crashed", "parts": {}, "training": None}
    if stopped:
        tail = (scratch / "worker.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        result["message"] = stopped + (f" ({tail[0][:200]})" if tail[0] and "timed out" not in stopped else "")
        result["status"] = "stopped"
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def grade_class(paths: list[str | Path], out: str | Path, limits: Limits = Limits(), progress=print) -> list[dict]:
    """Grade every submission in ``paths``; write ``out``/gradebook.csv and ``out``/report.html; return the rows."""
    from .classroom import exercise_parts

    out, notebooks = Path(out), find_submissions(paths)
    parts = exercise_parts()
    prepare_data(limits.steps)
    rows = []
    for notebook, learner in zip(notebooks, learner_names(notebooks), strict=True):
        result = run_worker(notebook, out / "work" / learner, limits)
        rows.append(_row(learner, notebook, result, parts, out))
        progress(f"{learner}: {rows[-1]['points']}/{rows[-1]['max_points']} points, {rows[-1]['status']} "
                 f"({result['seconds']:.0f} s)")
    write_gradebook(rows, parts, out / "gradebook.csv")
    write_report(rows, parts, out / "report.html")
    return rows


def _row(learner: str, notebook: Path, result: dict, parts, out: Path) -> dict:
    """One learner's line in the gradebook: every part is there, with a message even when it never ran."""
    why = result.get("message", "")
    row = {"learner": learner, "file": str(notebook), "status": result.get("status", "crashed"),
           "max_points": sum(p.points for p in parts), "seconds": result.get("seconds")}
    for part in parts:
        got = result.get("parts", {}).get(part.id)
        if got is None or got.get("message") == "running":
            stopped = f"stopped here: {why}" if got is not None else f"not graded: {why}" if why else "not graded"
            got = {"points": 0, "passed": False, "message": stopped}
        row[part.id], row[f"{part.id} message"] = got["points"], got["message"]
    row["points"] = sum(row[p.id] for p in parts)
    training = result.get("training") or {}
    row["training"] = (f"{training['steps']} steps in {training['seconds']} s, D loss {training['d_loss']}, "
                       f"G loss {training['g_loss']}" if training.get("status") == "trained" else
                       training.get("message", f"not run: {why}" if why else "not run"))
    faces = out / "work" / learner / "faces.png"
    row["faces"] = str(faces.relative_to(out)) if training.get("status") == "trained" and faces.exists() else ""
    if result.get("status") in ("unreadable", "stopped", "crashed") and why:
        row["status"] = f"{row['status']}: {why}"
    return row


def write_gradebook(rows: list[dict], parts, path: Path) -> Path:
    fields = ["learner", "points", "max_points", "status"] + [k for p in parts for k in (p.id, f"{p.id} message")] \
        + ["training", "faces", "seconds", "file"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_report(rows: list[dict], parts, path: Path) -> Path:
    """An HTML page: a row per learner with the points, each part's result (its message on failure), the faces."""
    e = html.escape
    head = "".join(f"<th>{e(p.id)} ({p.points})</th>" for p in parts)
    body = []
    for row in rows:
        cells = "".join(f"<td class={'ok' if row[p.id] else 'no'}>{row[p.id]}"
                        + ("" if row[p.id] else f"<br><small>{e(row[p.id + ' message'])}</small>") + "</td>"
                        for p in parts)
        faces = f"<img src='{e(row['faces'])}' width=160>" if row["faces"] else ""
        body.append(f"<tr><td><b>{e(row['learner'])}</b><br><small>{e(row['status'])}</small></td>"
                    f"<td>{row['points']}/{row['max_points']}</td>{cells}<td>{faces}<br><small>"
                    f"{e(row['training'])}</small></td></tr>")
    path.write_text("<!doctype html><meta charset=utf-8><title>Gradebook</title><style>body{font-family:sans-serif}"
                    "td,th{border:1px solid #ccc;padding:4px;vertical-align:top;max-width:22em}.ok{background:#dfd}"
                    ".no{background:#fdd}small{white-space:pre-wrap}</style><h1>Face generation: gradebook</h1>"
                    f"<table><tr><th>learner</th><th>points</th>{head}<th>faces after training</th></tr>"
                    + "\n".join(body) + "</table>")
    return path
