"""One submission, graded inside its own subprocess: ``python -m facegan.grade_worker`` in its scratch folder.

``python helpers.py grade`` (facegan/grade.py) starts this in the submission's scratch folder, in the jail of
facegan/jail.py, and sends its settings as one JSON line on stdin (so no other submission's path is ever on its
command line or in its environment).  Before any learner code runs, the worker reads its own copy of the
notebook, fences itself in (facegan/sandbox.py: Landlock, then the audit hook), and from then on it finds the
learner's cell for each part (by nbgrader's grade id, else by the names the cell defines), runs it, then runs
that part's checks; then it trains the learner's own D and G with the learner's own steps for a fixed number of
steps and saves their faces.

It reports as it goes, one JSON record a line, on a pipe the grader opened before this process started
(``result_fd``): ``start`` and ``part`` (passed or not, and why) for each part, ``training``, ``done``.  It never
writes points, a gradebook or a report: the grader (the parent) checks every record against a schema, computes
the points from the part's maximum, and writes the gradebook itself.  A record the learner's code forges on the
same pipe can at most claim that a part passed (see the table in docs/teaching.md).
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import io
import json
import os
import re
import signal
import sys
import time
import traceback
from pathlib import Path

FACES = "faces.png"


class PartTimeout(Exception):
    """A part's cell or checks ran past their time."""


def _code(source: str) -> str:
    """A cell's Python: IPython's ``%magic`` and ``!shell`` lines dropped (the grader runs no shell)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n"))


def _defined(source: str) -> set[str]:
    """Top-level names a cell defines; read line by line when the cell does not parse."""
    try:
        tree = ast.parse(_code(source))
    except SyntaxError:
        return {a or b for a, b in re.findall(r"^(?:def|class)\s+(\w+)|^(\w+)\s*=", source, re.M)}
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def learner_cells(nb, parts) -> dict[str, str]:
    """Each part's cell in the learner's notebook: the one nbgrader's grade id names, else the last that defines
    the most of the part's names."""
    code = [c for c in nb.cells if c.get("cell_type") == "code"]
    found = {}
    for part in parts:
        tagged = [c for c in code if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == part.id]
        scored = [(len(_defined(c.source) & set(part.names)), i) for i, c in enumerate(code)]
        best = max(scored, default=(0, -1))
        if tagged:
            found[part.id] = tagged[0].source
        elif best[0]:
            found[part.id] = code[max(i for n, i in scored if n == best[0])].source
    return found


def _without_own_checks(source: str) -> ast.Module:
    """The cell's code without its top-level ``tests.*(...)`` calls: the grader runs the checks itself."""
    tree = ast.parse(_code(source))
    tree.body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)
                                              and "tests." in ast.unparse(n.value.func) + ".")]
    return tree


@contextlib.contextmanager
def _time_limit(seconds: int):
    def expire(signum, frame):
        raise PartTimeout(f"ran for over {seconds} s (an endless loop?)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _reason(e: BaseException, where: str) -> str:
    from facegan.checks.report import CheckFailed

    if isinstance(e, CheckFailed):
        return str(e)
    if isinstance(e, SystemExit):
        return f"{where} called sys.exit({e.code!r}): a graded cell must not end the program"
    if isinstance(e, NotImplementedError):
        return f"{where}: not written yet (raise NotImplementedError)"
    if isinstance(e, MemoryError) or "can't allocate memory" in str(e) or "not enough memory" in str(e):
        return f"{where}: ran out of memory (the grader caps it): {type(e).__name__}"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{where} raised {type(e).__name__}: {text}"[:600]


def _reset_models(ns: dict, cfg, steps_part: bool) -> None:
    """Fresh reference D and G (and, for the steps, reference optimisers) for the part's checks: each part is
    graded on its own, so that a wrong G does not cost the optimiser or the steps their points."""
    import torch

    from facegan.models import build_models
    from facegan.updates import make_optimizers

    torch.manual_seed(0)
    ns["D"], ns["G"] = build_models(cfg)
    if steps_part:
        ns["d_optimizer"], ns["g_optimizer"] = make_optimizers(ns["D"], ns["G"], cfg)


def grade_part(ns: dict, part, source: str | None, cfg, seconds: int) -> dict:
    """Run the learner's cell for ``part``, then the part's checks; return {passed, points, message}."""
    out = {"passed": False, "points": 0, "max_points": part.points, "message": ""}
    if source is None:
        out["message"] = f"missing: no code cell defines {', '.join(part.names)}"
        return out
    steps_part = "discriminator_step" in part.names
    _reset_models(ns, cfg, steps_part)
    try:
        tree = _without_own_checks(source)
    except SyntaxError as e:
        out["message"] = f"syntax error in your cell, line {e.lineno}: {e.msg}"
        return out
    try:
        with _time_limit(seconds), contextlib.redirect_stdout(io.StringIO()):
            exec(compile(tree, f"<your {part.id} cell>", "exec"), ns)
        missing = [n for n in part.names if n not in ns]
        if missing:
            out["message"] = f"missing: your cell does not define {', '.join(missing)}"
            return out
        if steps_part:
            _reset_models(ns, cfg, steps_part)
        with _time_limit(seconds), contextlib.redirect_stdout(io.StringIO()):
            exec(compile(part.checks, f"<checks of {part.id}>", "exec"), ns)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a failure of learner code is a grade, not the batch's end
        out["message"] = _reason(e, f"your {part.id} cell")
        return out
    out.update(passed=True, points=part.points, message="passed")
    return out


def train_learner(ns: dict, cfg, steps: int, seconds: int) -> dict:
    """Train the learner's own D and G with the learner's own steps for ``steps`` steps; save 64 faces."""
    import torch
    from torchvision.utils import save_image

    from facegan.batches import training_batches
    from facegan.sampling import generate
    from facegan.updates import make_optimizers

    needed = ("Discriminator", "Generator", "discriminator_step", "generator_step")
    if any(n not in ns for n in needed):
        return {"status": "skipped", "message": "needs " + ", ".join(n for n in needed if n not in ns)}
    start, step, d_loss, g_loss = time.perf_counter(), 0, float("nan"), float("nan")
    try:
        with _time_limit(seconds), contextlib.redirect_stdout(io.StringIO()):
            torch.manual_seed(0)
            D = ns["Discriminator"](cfg.d_conv_dim, n_layers=cfg.n_layers)
            G = ns["Generator"](cfg.z_size, cfg.g_conv_dim, n_layers=cfg.n_layers)
            if "weights_init_normal" in ns:
                D.apply(ns["weights_init_normal"])
                G.apply(ns["weights_init_normal"])
            d_opt, g_opt = make_optimizers(D, G, cfg)
            batches = training_batches(cfg, "cpu")
            fixed_z = torch.randn(64, cfg.z_size)
            for epoch in range(10**6):
                for real in batches.epoch(epoch):
                    z = torch.randn(real.size(0), cfg.z_size)
                    d_loss = ns["discriminator_step"](D, G, d_opt, real.contiguous(), z, smooth=cfg.real_label[0] < 1)
                    g_loss = ns["generator_step"](D, G, g_opt, torch.randn_like(z))
                    step += 1
                    if step >= steps:
                        break
                if step >= steps:
                    break
            save_image(generate(G, fixed_z).float(), FACES, nrow=8, normalize=True, value_range=(-1, 1))
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a grade, not the end of the batch
        return {"status": "failed", "steps": step, "message": _reason(e, "training your D and G")}
    try:
        losses = {"d_loss": round(float(d_loss), 4), "g_loss": round(float(g_loss), 4)}
    except (TypeError, ValueError, RuntimeError):
        return {"status": "failed", "steps": step, "message": "your discriminator_step and generator_step must "
                f"return the loss as a number (a 0-d tensor); they returned {type(d_loss).__name__} and "
                f"{type(g_loss).__name__}"}
    return {"status": "trained", "steps": step, "seconds": round(time.perf_counter() - start, 1), **losses,
            "faces": FACES}


def _save_through_open(torch) -> None:
    """torch.save writes a path from C++, past the audit hook: open it in Python first, where the hook sees it."""
    save = torch.save

    def save_through_open(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as handle:
                return save(obj, handle, *args, **kwargs)
        return save(obj, f, *args, **kwargs)

    torch.save = save_through_open


def readable_paths() -> list[str]:
    """What the learner's process may read under Landlock: the Python install, the project's package (not its
    notebooks, runs or anything else in the project folder), the data, and the few system files Python and torch
    read.  Its own /proc entry, not its parent's (whose command line and environment are the instructor's)."""
    from facegan.config import PROJECT_ROOT
    from facegan.data import DATA_DIR, cache_dir

    root = os.path.realpath(PROJECT_ROOT)
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    for entry in sys.path:  # site-packages and the like; never the project folder itself, which holds more
        real = os.path.realpath(entry) if entry else root
        if real != root and not root.startswith(real + os.sep) and os.path.isdir(real):
            paths.add(real)
    paths |= {"/usr", "/lib", "/lib64", "/lib32", "/bin", "/etc/ld.so.cache", "/etc/localtime", "/etc/fonts",
              "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", f"/proc/{os.getpid()}", "/proc/cpuinfo",
              "/proc/meminfo", "/proc/stat", "/proc/sys", "/sys/devices/system/cpu", "/sys/fs/cgroup",
              "/dev/urandom", "/dev/random", "/dev/zero"}
    paths |= {os.path.join(root, "facegan"), os.path.join(root, "helpers.py"),
              os.path.join(root, "problem_unittests.py"), str(DATA_DIR), str(cache_dir())}
    if os.environ.get("CELEBA_ZIP"):  # the loader checks the folder was extracted from this archive
        paths.add(os.environ["CELEBA_ZIP"])
    return sorted(paths)


def fence(hidden: list[str]) -> int:
    """Fence this process in before any learner code runs; return the Landlock ABI enforced (0: none)."""
    from facegan import landlock
    from facegan.sandbox import confine

    try:
        version = landlock.restrict(readable_paths(), [os.getcwd(), "/dev/null"])
    except OSError as e:
        print(f"grading: Landlock could not be applied ({e}); the audit hook alone fences this submission",
              file=sys.stderr)
        version = 0
    confine(Path.cwd(), hidden=tuple(hidden))
    return version


class Reporter:
    """Sends one JSON record a line to the grader on the pipe it opened (``fd``)."""

    def __init__(self, fd: int):
        self.fd = fd

    def send(self, kind: str, **record) -> None:
        try:
            os.write(self.fd, (json.dumps({"kind": kind, **record}) + "\n").encode())
        except OSError:
            pass  # the learner closed the pipe: the grader reads that as a crash


def _namespace(cfg, images) -> dict:
    """What the notebook's locked import cell gives every learner cell, so a cell that works in Jupyter works here.
    The learner's cells use the notebook's two front doors by name, as the notebook imports them."""
    import math

    import matplotlib
    import numpy as np
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return {"__name__": "__main__", "torch": torch, "nn": torch.nn, "F": torch.nn.functional, "np": np,
            "math": math, "time": time, "plt": plt, "helpers": importlib.import_module("helpers"),
            "tests": importlib.import_module("problem_unittests"),
            "cfg": cfg, "images": images, "device": torch.device("cpu")}


def _read_notebook(path: str):
    """The learner's notebook, or the reason it cannot be read."""
    import nbformat

    try:
        return nbformat.read(path, as_version=4), ""
    except Exception as e:  # noqa: BLE001 - not JSON, not a notebook: the reason is the grade
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return None, f"not a readable notebook: {type(e).__name__}: {first}"[:300]


def grade(settings: dict, report: Reporter) -> None:
    """Grade ``submission.ipynb`` in the current folder, sending every result to ``report``."""
    import torch

    from facegan.batches import training_batches
    from facegan.classroom import exercise_parts
    from facegan.config import make_config

    nb, why = _read_notebook("submission.ipynb")
    if nb is None:
        report.send("unreadable", message=why)
        return
    steps, seconds = int(settings["steps"]), int(settings["part_seconds"])
    parts, cfg = exercise_parts(), make_config("small32", subset=steps * 64 + 64)
    cells = learner_cells(nb, parts)
    images = next(iter(training_batches(cfg, "cpu").epoch(0)))[:16].contiguous()
    ns = _namespace(cfg, images)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file over the size cap: an OSError in the cell, not a kill
    _save_through_open(torch)
    report.send("fence", landlock=fence(settings.get("hidden", [])))
    for part in parts:
        report.send("start", part=part.id)
        got = grade_part(ns, part, cells.get(part.id), cfg, seconds)
        report.send("part", part=part.id, passed=got["passed"], message=got["message"])
    report.send("training", **train_learner(ns, cfg, steps, seconds * 2))


def main() -> None:
    """Read the settings line, grade, report ``done`` and leave at once: threads the learner left running do not
    keep the process (or the grader) waiting."""
    settings = json.loads(sys.stdin.readline())
    sys.stdin = open(os.devnull)  # noqa: SIM115 - nothing more comes on stdin
    report = Reporter(int(settings["result_fd"]))
    try:
        grade(settings, report)
        report.send("done")
    except BaseException:  # a fault of the grader itself: its traceback goes to the log, the row says "crashed"
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
