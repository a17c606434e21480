"""``python helpers.py grade SUBMISSIONS...``: grade a class's notebooks without nbgrader.

Each submission is copied into its own scratch folder (``OUT/work/LEARNER/``) and graded there by
``python -m facegan.grade_worker`` in a subprocess: its own session, its own cgroups where the machine allows
(a memory cap and a process limit for the submission as a whole, facegan/jail.py), its own network namespace,
a wall-clock limit, and the fence of facegan/sandbox.py (Landlock, then an audit hook).  The worker reports
each part's outcome as data on a pipe opened before the learner's code runs; this process, the parent, checks
every record against a schema and computes the points itself, so no part can score over its maximum and
nothing the learner writes into a file counts.  When the submission ends, everything it started is killed.

Whatever happens in there (a file that is not a notebook, a syntax error, an endless loop, a huge allocation,
a missing function, a cell that deletes its folder or exits) becomes that learner's row, with one of five
statuses (gradebook.STATUSES) and the grader's reason; the batch goes on.  Rows are appended to
``OUT/gradebook.csv`` as they are graded, and ``OUT/report.html`` is rewritten at the end; rerunning the
command after an interruption grades only what has no row yet.  Logs go to ``OUT/logs/`` and faces to
``OUT/faces/``: the grader's own files are never inside a scratch folder.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import PROJECT_ROOT
from .grade_fence import Fence, run_jailed
from .grade_records import verdict
from .gradebook import LOG_CHARS, LOG_COLUMN, append_row, move_aside, read_rows, write_report


@dataclass(frozen=True)
class Limits:
    """What one submission may use: wall-clock seconds in all, seconds per part, memory, training steps."""

    timeout_s: int = 300
    part_seconds: int = 60
    memory_gb: float = 8.0
    steps: int = 100
    threads: int = 2


@dataclass(frozen=True)
class Submission:
    """One notebook to grade: where it is, and its path relative to the submissions folder (the gradebook's
    ``file``, what the instructor recognises)."""

    path: Path
    file: str


def find_submissions(paths: list[str | Path], out: str | Path | None = None,
                     say=print) -> list[Submission]:
    """The notebooks to grade: each file given, and every ``*.ipynb`` under each folder given.  Jupyter's
    ``.ipynb_checkpoints`` autosaves and anything inside the output folder ``out`` are left out, and ``say``
    is told how many, so no folder is skipped without a word."""
    out_real = Path(out).resolve() if out is not None else None
    found, checkpoints, in_out = [], 0, 0
    for path in map(Path, paths):
        prefix = f"{path.resolve().name}/" if len(paths) > 1 else ""
        if path.is_dir():
            for p in sorted(path.rglob("*.ipynb")):
                if ".ipynb_checkpoints" in p.relative_to(path).parts:
                    checkpoints += 1
                elif out_real is not None and out_real in p.resolve().parents:
                    in_out += 1
                elif p.is_file():
                    found.append(Submission(p, prefix + p.relative_to(path).as_posix()))
        elif path.exists():
            found.append(Submission(path, path.name))
        else:
            raise FileNotFoundError(f"{path} does not exist: pass notebook files or folders of them")
    if checkpoints:
        say(f"skipped {checkpoints} notebook(s) in .ipynb_checkpoints folders (Jupyter's autosaves, not submissions)")
    if in_out:
        say(f"skipped {in_out} notebook(s) inside the output folder {out} (the grader's scratch copies)")
    if not found:
        raise ValueError(f"no notebooks found in {', '.join(map(str, paths))}: pass .ipynb files or folders of them")
    return found


def learner_names(files: list[str | Path]) -> list[str]:
    """A name per submission, from its path relative to the submissions folder: the folders and stem that tell
    the submissions apart (those every path shares, like nbgrader's ``submitted/`` and ``face_generation``, are
    dropped), joined by "-"; made safe as a folder name, and unique (ignoring case) with -2, -3..."""
    split = [list(Path(f).with_suffix("").parts) for f in files]
    shared = set.intersection(*(set(s) for s in split)) if len(split) > 1 else set(split[0][:-1]) if split else set()
    names: list[str] = []
    taken: set[str] = set()
    for parts, f in zip(split, files, strict=True):
        own = [p for p in parts if p not in shared] or [Path(f).stem]
        clean = re.sub(r"[^\w.-]", "_", "-".join(own)).strip(".") or "learner"
        name, n = clean, 1
        while name.lower() in taken:  # also when a name made unique here is another learner's own
            n += 1
            name = f"{clean}-{n}"
        names.append(name)
        taken.add(name.lower())
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
    """The worker's environment: a few of the grader's variables (none that names a submission), and HOME and
    TMPDIR in its scratch folder."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "CELEBA_ZIP", "FACEGAN_CACHE",
                                                          "FACEGAN_BF16", "VIRTUAL_ENV", "PYTHONHASHSEED")}
    threads = str(limits.threads)
    env.update(HOME=str(scratch), TMPDIR=str(scratch / "tmp"), MPLCONFIGDIR=str(scratch / "tmp"), MPLBACKEND="Agg",
               CI="1", PYTHONPATH=str(PROJECT_ROOT), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads)
    return env


def run_worker(notebook: Path, scratch: Path, log: Path, limits: Limits, fence: Fence,
               hidden: list[str]) -> dict:
    """Grade one notebook in ``scratch`` in a jailed subprocess; return its records and how it ended."""
    if scratch.is_symlink() or scratch.exists():
        shutil.rmtree(scratch) if not scratch.is_symlink() else scratch.unlink()
    (scratch / "tmp").mkdir(parents=True)
    shutil.copyfile(notebook, scratch / "submission.ipynb")
    settings = {"steps": limits.steps, "part_seconds": limits.part_seconds, "hidden": hidden}
    log.parent.mkdir(parents=True, exist_ok=True)
    return run_jailed([sys.executable, "-m", "facegan.grade_worker"], settings, scratch, log,
                      _environment(scratch, limits), limits.memory_gb, limits.timeout_s, fence)


def _faces(scratch: Path, target: Path) -> str:
    """Copy the worker's faces.png to the grader's faces folder when it is a plain PNG file of sane size (not a
    link to somewhere else); return its path for the row, or ''."""
    try:
        fd = os.open(scratch / "faces.png", os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > 8 * 2**20:
            return ""
        data = f.read()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return str(target)


def _log_tail(log: Path) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4 * LOG_CHARS))
            text = f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return ("..." + text[-LOG_CHARS:]) if len(text) > LOG_CHARS else text


def grade_one(sub: Submission, learner: str, out: Path, limits: Limits, fence: Fence, hidden: list[str],
              parts) -> dict:
    """Grade one submission; return its gradebook row (the parent's verdict on the worker's records)."""
    digest = hashlib.sha256(sub.path.read_bytes()).hexdigest()
    log = out / "logs" / f"{learner}.log"
    ran = run_worker(sub.path, out / "work" / learner, log, limits, fence, hidden)
    row = {"learner": learner, "file": sub.file, "sha256": digest, **verdict(ran, parts, limits)}
    faces = _faces(out / "work" / learner, out / "faces" / f"{learner}.png") if row.pop("trained") else ""
    row["faces"] = str(Path(faces).relative_to(out)) if faces else ""
    row[LOG_COLUMN] = _log_tail(log)
    return row


def grade_class(paths: list[str | Path], out: str | Path, limits: Limits = Limits(), progress=print) -> list[dict]:
    """Grade every submission in ``paths``; append each row to ``out``/gradebook.csv as it is graded, write
    ``out``/report.html at the end; return the rows.  Rows already in the gradebook (same file, same contents)
    are kept, not graded again."""
    from .classroom import exercise_parts

    out = Path(out).resolve()
    subs = find_submissions(paths, out, say=progress)
    parts = exercise_parts()
    out.mkdir(parents=True, exist_ok=True)
    book = out / "gradebook.csv"
    done, note = read_rows(book, parts)
    if note:
        progress(note)
        move_aside(book)
    fence = Fence.probe(say=progress)
    hidden = sorted({str(Path(p).resolve()) for p in paths} | {str(out)})
    prepared, rows = False, []
    for sub, learner in zip(subs, learner_names([s.file for s in subs]), strict=True):
        digest = hashlib.sha256(sub.path.read_bytes()).hexdigest()
        if (sub.file, digest) in done:
            rows.append(done[(sub.file, digest)])
            progress(f"{rows[-1]['learner']}: already graded ({rows[-1]['points']}/{rows[-1]['max_points']}), kept")
            continue
        if not prepared:
            prepare_data(limits.steps)
            prepared = True
        rows.append(grade_one(sub, learner, out, limits, fence, hidden, parts))
        append_row(book, rows[-1], parts)
        progress(f"{learner}: {rows[-1]['points']}/{rows[-1]['max_points']} points, {rows[-1]['status']} "
                 f"({rows[-1]['seconds']:.0f} s)")
    write_report(rows, parts, out / "report.html")
    return rows

