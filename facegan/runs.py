"""``python helpers.py runs``: a table of the training runs under a folder, and their FID curves in one figure.

    python helpers.py runs                                   # every run under runs/
    python helpers.py runs runs/a runs/b --plot fid.png      # FID against images seen, one curve a run
    python helpers.py runs runs/a runs/b --score 256 --plot fid.png   # score kept generators now
    python helpers.py runs runs/a --score 1000 --score-every 2500 --plot fid.png   # one per 2,500 steps

A run is a folder holding ``checkpoint.pt`` (or only its fallback ``checkpoint.prev.pt``, or only
the ``diverged.json`` a run leaves when it diverges before its first checkpoint).  Each row
comes from the checkpoint alone: its configuration, step, history and process count.  A run is
*finished* when it reached its planned steps or used its time budget, *diverged* when the engine
stopped it on a NaN or Inf since its last checkpoint (``diverged.json``, facegan/runlog.py), and
*stopped* otherwise (resume it with ``train --out RUN --resume``); *unreadable* when neither
checkpoint can be read.  A run a process is training now is *running* (its ``train.lock`` is
held, facegan/runlock.py), listed even before its first checkpoint: its step, images, minutes,
training speed and when it last logged come from what that process wrote at its last logged step.
Minutes are training time and evaluation time (FID, grids) apart (facegan/clock.py).  Reading
never changes a run folder.

The FID curves are those training tracked (``--fid-every``), or with ``--score N`` FID-N measured
now for every kept generator (``--keep-generators true``) and the final checkpoint, with the same
N real faces and latents for all.  FID-N is biased upwards at small N: compare only curves of equal N.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import CHECKPOINT, PREVIOUS, CheckpointError, read_checkpoint
from .export import training_facts
from .runlock import LOCK, probe
from .runlog import DIVERGED

#: A point of a FID curve: (step, images seen, FID).
Point = tuple[int, int, float]


@dataclass
class RunSummary:
    """One row of the table, and the run's FID curve."""

    path: Path
    preset: str = "-"
    step: int | None = None
    images: int | None = None
    minutes: float | None = None  # training time
    eval_minutes: float | None = None  # evaluation time (FID, grids, kept generators, the loss plot)
    state: str = "stopped"
    fid_n: int | None = None  # the N of the FID points
    points: list[Point] = field(default_factory=list)
    problem: str = ""  # why the run diverged, or why its checkpoint is unreadable

    @property
    def last_fid(self) -> str:
        if not self.points:
            return "-"
        step, _, fid = self.points[-1]
        return f"{fid:.1f} (N={self.fid_n}, step {step:,})"


def find_runs(folders: list[str | Path]) -> list[Path]:
    """The run folders in or under ``folders`` (a folder may be a run itself), sorted, each once."""
    found: set[Path] = set()
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder {folder}: pass a run folder or a folder of runs (default runs/)")
        for name in (CHECKPOINT, PREVIOUS, DIVERGED):
            found.update(p.parent for p in folder.rglob(name) if p.is_file())
        found.update(p.parent for p in folder.rglob(LOCK) if probe(p.parent) is not None)  # live, maybe unsaved
    if not found:
        raise FileNotFoundError(f"no runs under {', '.join(map(str, folders))}: a run folder holds {CHECKPOINT}; "
                                "python helpers.py train writes runs/PRESET")
    return sorted(found)


def read_run(run: Path) -> tuple[dict | None, str]:
    """The run's newest readable checkpoint (None if none) and, if one was unreadable, why."""
    problem = ""
    for name in (CHECKPOINT, PREVIOUS):
        if (run / name).is_file():
            try:
                return read_checkpoint(run / name), problem
            except CheckpointError as e:
                problem = problem or str(e)
    return None, problem


def planned_steps(ckpt: dict) -> int | None:
    """The steps the run was set to train (as ``make_state`` counts them), or None when unknown."""
    cfg, per_epoch = ckpt["config"], ckpt.get("steps_per_epoch")
    total = per_epoch * cfg.epochs if cfg.epochs and per_epoch else None
    if cfg.max_steps:
        total = min(total or cfg.max_steps, cfg.max_steps)
    horizon = ckpt.get("horizon")  # a time-budgeted run's length in steps, once fixed
    if horizon and horizon.get("steps"):
        total = min(total or horizon["steps"], horizon["steps"])
    return total


def run_state(run: Path, ckpt: dict | None, seconds: float | None) -> tuple[str, str]:
    """(finished, stopped, diverged or unreadable; why it diverged): see the module docstring."""
    marker = run / DIVERGED
    newest = max(((run / n).stat().st_mtime for n in (CHECKPOINT, PREVIOUS) if (run / n).is_file()), default=0.0)
    if marker.is_file() and marker.stat().st_mtime >= newest:
        try:
            return "diverged", str(json.loads(marker.read_text(encoding="utf-8")).get("problem", ""))
        except (ValueError, AttributeError):
            return "diverged", ""
    if ckpt is None:
        return "unreadable", ""
    cfg, total = ckpt["config"], planned_steps(ckpt)
    done = total is not None and ckpt["step"] >= total
    done = done or (total is None and cfg.epochs and ckpt.get("epoch", 0) >= cfg.epochs)
    budget_used = cfg.max_minutes > 0 and seconds is not None and seconds >= 60 * cfg.max_minutes
    return ("finished" if done or budget_used else "stopped"), ""


def summarize(run: Path, max_step: int | None = None) -> RunSummary:
    """A run's row and the FID its training tracked (``history["fid"]``, N = ``Config.fid_samples``)."""
    ckpt, problem = read_run(run)
    facts = training_facts(ckpt) if ckpt is not None else {}
    seconds = facts.get("seconds")
    state, why = run_state(run, ckpt, seconds)
    summary = RunSummary(run, state=state, problem=why or problem)
    if ckpt is None:
        return _live(summary)
    cfg, history = ckpt["config"], ckpt.get("history") or {}
    summary.preset, summary.step, summary.images = cfg.preset, facts["step"], facts["images_seen"]
    summary.minutes = seconds / 60 if seconds is not None else None
    summary.eval_minutes = history["eval_seconds"][-1] / 60 if history.get("eval_seconds") else None
    per_step = cfg.batch_size * facts["world_size"]
    tracked = zip(history.get("fid_step", []), history.get("fid", []), strict=True)
    summary.points = [(s, s * per_step, f) for s, f in tracked
                      if (max_step is None or s <= max_step) and math.isfinite(f)]
    summary.fid_n = cfg.fid_samples if summary.points else None
    return _live(summary)


def _live(summary: RunSummary) -> RunSummary:
    """A run a process trains now: *running*, with what it wrote at its last logged step."""
    facts = probe(summary.path)
    if facts is None:
        return summary
    summary.state, summary.problem = "running (starting)", ""
    if "step" not in facts:
        return summary
    summary.preset = facts.get("preset", summary.preset)
    summary.step, summary.images = facts["step"], facts.get("images_seen", summary.images)
    summary.minutes, summary.eval_minutes = facts.get("train_minutes"), facts.get("eval_minutes")
    ago = max(time.time() - facts.get("logged", time.time()), 0.0)
    ago = f"{ago:.0f} s" if ago < 120 else f"{ago / 60:.0f} min" if ago < 7200 else f"{ago / 3600:.0f} h"
    summary.state = f"running ({facts.get('images_per_second', 0):,.0f} img/s, logged {ago} ago)"
    return summary


def pick_every(steps: list[int], every: int | None) -> list[int]:
    """With ``every`` = K, the first of ``steps`` at or past each multiple of K (all of them when K is None).

    Runs keep a generator every few hundred steps; scoring each of 80 at 1-3 minutes a score is
    hours, so a curve over a long run scores one per K steps.
    """
    steps = sorted(steps)
    if not every or not steps:
        return steps
    picked: list[int] = []
    for multiple in range(every, steps[-1] + 1, every):
        first = next(s for s in steps if s >= multiple)  # exists: the last step is at least this multiple
        if first not in picked:
            picked.append(first)
    return picked


def score_run(summary: RunSummary, n: int, extractor, max_step: int | None = None, every: int | None = None) -> None:
    """Replace a run's curve by FID-N of its kept generators (one per ``every`` steps) and checkpoint, measured now."""
    from .evaluation import PRDC_KEYS, evaluate_generator
    from .export import load_generator

    ckpt, _ = read_run(summary.path)
    if ckpt is None:
        return
    cfg, per_step = ckpt["config"], ckpt["config"].batch_size * int(ckpt.get("world_size") or 1)
    # train.py names them by step (generators/step_0020200.pt), so picking needs no loading; other files are skipped
    kept = {int(p.stem[5:]): p for p in (summary.path / "generators").glob("step_*.pt") if p.stem[5:].isdigit()}
    kept = {s: p for s, p in kept.items() if s != ckpt["step"] and (max_step is None or s <= max_step)}
    final = summary.path / CHECKPOINT if (summary.path / CHECKPOINT).is_file() else summary.path / PREVIOUS
    paths = [kept[s] for s in pick_every(sorted(kept), every)]
    if max_step is None or ckpt["step"] <= max_step:
        paths.append(final)
    points: list[Point] = []
    for path in paths:
        step = read_checkpoint(path)["step"]
        G, _ = load_generator(path)
        result = evaluate_generator(G, cfg, n, extractor=extractor)
        points.append((step, step * per_step, result["fid"]))
        diversity = ", ".join(f"{k} {result[k]:.3f}" for k in PRDC_KEYS if k in result)
        print(f"{summary.path}: step {step:,}: FID-{n} {result['fid']:.2f}, KID {result['kid']:.4f}"
              + (f", {diversity}" if diversity else ""), flush=True)
    summary.points, summary.fid_n = points, n


def format_table(summaries: list[RunSummary]) -> str:
    """The runs as an aligned text table, one row each."""
    header = ("run", "preset", "steps", "images seen", "train min", "eval min", "last FID", "state")
    rows = [header] + [(str(s.path), s.preset, _int(s.step), _int(s.images), _minutes(s.minutes),
                        _minutes(s.eval_minutes), s.last_fid, s.state) for s in summaries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {2, 3, 4, 5}  # numbers align right
    return "\n".join("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in rows)


def _int(value: int | None) -> str:
    return f"{value:,}" if value is not None else "-"


def _minutes(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def plot_fid_curves(summaries: list[RunSummary], path: str | Path) -> Path:
    """FID against images seen, one curve per run with FID points, in one figure written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [s for s in summaries if s.points]
    if not curves:
        raise ValueError("no FID to plot: train with --fid-every K, or pass --score N to score the runs' "
                         "kept generators and checkpoints now")
    sizes = {s.fid_n for s in curves}
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in curves:
        label = f"{s.path.name} ({s.preset})" + (f", N={s.fid_n}" if len(sizes) > 1 else "")
        ax.plot([p[1] for p in s.points], [p[2] for p in s.points], "o-", label=label)
    n = f"FID-{sizes.pop()}" if len(sizes) == 1 else "FID (different N: compare only equal N)"
    ax.set(xlabel="images seen", ylabel=f"{n} (lower is better)", title="FID against images seen")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``runs`` subcommand's options."""
    parser.add_argument("folders", nargs="*", default=["runs"], metavar="DIR",
                        help="run folders, or folders that hold them (default: runs)")
    parser.add_argument("--plot", metavar="OUT.png", default=None,
                        help="also draw the runs' FID curves against images seen in one figure")
    parser.add_argument("--score", metavar="N", type=int, default=None,
                        help="measure FID-N now for each run's kept generators (generators/step_*.pt) and final "
                             "checkpoint, instead of the FID tracked in training")
    parser.add_argument("--score-every", metavar="K", type=int, default=None,
                        help="with --score: score one kept generator per K steps (the first at or past each "
                             "multiple of K) instead of every one, and the final checkpoint")
    parser.add_argument("--max-step", type=int, default=None, help="leave out FID points after this step")
    parser.add_argument("--weights", default=None, help="with --score: local FID Inception weights "
                        "(default $FID_WEIGHTS, else download)")


def run_from_args(args: argparse.Namespace) -> int:
    """Print the table (and the notes under it); with ``--score``, measure first; with ``--plot``, draw."""
    summaries = [summarize(run, args.max_step) for run in find_runs(args.folders)]
    if args.score is not None:
        if args.score < 2:
            raise ValueError(f"--score {args.score}: FID needs at least 2 samples (256 or 1000 are usual)")
        if args.score_every is not None and args.score_every < 1:
            raise ValueError(f"--score-every {args.score_every}: give a number of steps, at least 1 "
                             "(e.g. 2500), or leave it out to score every kept generator")
        from .device import pick_device
        from .evaluation import inception_extractor

        extractor = inception_extractor(args.weights, pick_device())
        for summary in summaries:
            score_run(summary, args.score, extractor, args.max_step, args.score_every)
    print(format_table(summaries))
    for s in summaries:
        if s.problem:
            print(f"{s.path}: {s.problem}")
    if any(s.state == "stopped" for s in summaries):
        print("a stopped run continues with: python helpers.py train --out RUN --resume")
    if args.plot:
        print(f"wrote {plot_fid_curves(summaries, args.plot)}")
    return 0
