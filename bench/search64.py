"""The 64x64 stabiliser search: runs side by side, one thread each, then FID-1000@64.

    python bench/search64.py train --steps 2000 --parallel 2      # every run, two at a time
    python bench/search64.py train --only lsgan r1_1               # some of them
    python bench/search64.py score --n 1000                        # FID/KID of each finished run, a table
    python bench/search64.py score --n 1000 --raw --only fast64    # G's own weights instead of the EMA
    python bench/search64.py train --study improve --steps 4000    # the improvements tried on fast64's recipe
    python bench/search64.py score --study improve --n 1000        # their FID, KID, precision and recall
    OMP_NUM_THREADS=1 python bench/search64.py speed --study improve   # each run's img/s against the first's

Each run is ``python helpers.py train`` with the flags below, in ``runs/search64/NAME``, with
``OMP_NUM_THREADS=1``.  The budget is a number of steps, not of minutes: on a shared 2-core
machine a run's speed depends on what else runs, and a budget of steps keeps the comparison
fair whatever the load.  2,000 steps (128k images) is what ``fast64`` trains in 25 minutes of
one uncontended AVX2 thread in fp32.  A run whose step costs more (``COST``, measured with
``python helpers.py bench --presets``) gets proportionally fewer steps, so every run has the
same compute; the cost of R1 and ADA (a few per cent) is reported apart.  Every run keeps 256
faces out of training and logs D's score on them beside its score on 256 training faces
(``--holdout``), so the table also shows whether D had started to memorise the training set.
A stopped search continues where it stopped: rerun the same command.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Step cost against fast64's, for runs that get fewer steps in the same compute (full width: ~4x the FLOPs).
COST = {"hinge_fast": 4.0}

#: The search ran before fast64's EMA ramped up and before it took lazy R1 (gamma 0.1); first on the line,
#: so the ``ema_ramp`` and ``r1_*`` runs' own values win.
AS_SEARCHED = ["--ema-rampup", "0", "--r1-gamma", "0"]
HOLDOUT = 256
COMMON = ["--holdout", str(HOLDOUT), "--log-every", "50", "--keep-generators", "true", "--checkpoint-minutes", "5"]

#: name -> (what it tries, the flags on top of COMMON)
RUNS: dict[str, tuple[str, list[str]]] = {
    "fast64": ("the preset as it shipped then (BCE, labels 0.9, EMA without the ramp, no R1)", ["--preset", "fast64"]),
    "lsgan": ("least squares at fast64's settings, targets 0/1 (MMGeneration's LSGAN)",
              ["--preset", "fast64", "--loss", "lsgan", "--real-label", "1,1"]),
    "r1_1": ("fast64 + lazy R1, gamma 1", ["--preset", "fast64", "--r1-gamma", "1"]),
    "ada": ("fast64 + ADA (color, translation, cutout; target 0.6)",
            ["--preset", "fast64", "--diffaug", "color,translation,cutout", "--ada-target", "0.6"]),
    "linear": ("fast64 with the rate decaying linearly to 0 at the end of the budget",
               ["--preset", "fast64", "--lr-schedule", "linear"]),
    "r1_10": ("fast64 + lazy R1, gamma 10", ["--preset", "fast64", "--r1-gamma", "10"]),
    "r1_0.1": ("fast64 + lazy R1, gamma 0.1, every 16 D steps", ["--preset", "fast64", "--r1-gamma", "0.1"]),
    "ema_ramp": ("fast64 with the EMA's horizon ramped up over the run (5% of the steps so far, up to 1,000)",
                 ["--preset", "fast64", "--ema-rampup", "0.05"]),
    "hinge_fast": ("hinge_sn64 at full width with fast64's Adam 1e-3 (0.5, 0.99) and EMA",
                   ["--preset", "hinge_sn64", "--lr-g", "1e-3", "--lr-d", "1e-3", "--beta1", "0.5",
                    "--beta2", "0.99", "--ema-decay", "0.999"]),
}


#: The improvements tried on today's fast64 (lazy R1, EMA ramp): the preset's own values, then each run's flags.
IMPROVE: dict[str, tuple[str, list[str]]] = {
    "fast64": ("the preset as it ships (BCE, labels 0.9, EMA ramp, lazy R1 0.1)", ["--preset", "fast64"]),
    "hinge_sn": ("hinge loss and spectral norm in D at fast64's width and rates (no R1: SN bounds D)",
                 ["--preset", "fast64", "--loss", "hinge", "--d-norm", "spectral", "--r1-gamma", "0"]),
    "rot_light": ("fast64 + rotation and lighting (brightness, contrast, saturation) DiffAugment on D's inputs",
                  ["--preset", "fast64", "--diffaug", "rotation,lighting"]),
    "feat_match": ("fast64 + feature matching on D's last hidden features as an added G loss (weight 1)",
                   ["--preset", "fast64", "--feature-matching", "1"]),
    "progressive": ("fast64 grown progressively: 32x32 first, then a faded-in 64x64 stage",
                    ["--preset", "fast64", "--progressive", "0.25,0.25"]),
    "wide_g": ("fast64 with G 1.5x as wide (48): more capacity where the faces are drawn",
               ["--preset", "fast64", "--g-conv-dim", "48"]),
}
#: study -> (flags first on every line, the runs, their default folder)
STUDIES = {"stabilisers": (AS_SEARCHED, RUNS, "search64"), "improve": ([], IMPROVE, "improve64")}


def train_runs(names: list[str], steps: int, parallel: int, out: Path, subset: int = 0,
               study: str = "stabilisers") -> None:
    """Launch the runs, ``parallel`` at a time, each on one thread; wait for all.

    ``subset``: train on only this many faces (plus the 256 held out), so that a D which memorises
    its training set does so many times sooner (the limited-data view of Karras et al. 2020).
    """
    # A small set's epochs are a few dozen steps: the step budget, not the epoch count, ends those runs.
    epochs = ["--epochs", "100000" if subset else "100"]
    limited = ["--subset", str(subset + HOLDOUT), "--sample-every", "250"] if subset else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending, running = list(names), []
    while pending or running:
        running = [(n, p) for n, p in running if p.poll() is None]
        while pending and len(running) < parallel:
            name = pending.pop(0)
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            resume = ["--resume"] if (folder / "checkpoint.pt").is_file() else []
            budget = round(steps / COST.get(name, 1.0))
            first, runs, _ = STUDIES[study]
            cmd = [sys.executable, str(ROOT / "helpers.py"), "train", *first, *runs[name][1], *COMMON, *limited,
                   *epochs, "--max-minutes", "0", "--max-steps", str(budget), "--out", str(folder), *resume]
            log = open(folder / "train.log", "a")
            print(f"{time.strftime('%H:%M:%S')} start {name}: {' '.join(cmd[1:])}", flush=True)
            running.append((name, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(5)
    print(f"{time.strftime('%H:%M:%S')} all runs done", flush=True)


def score_runs(names: list[str], n: int, out: Path, raw: bool = False, study: str = "stabilisers",
               step: int = 0) -> None:
    """FID-n, KID, precision, recall, density and coverage of each finished run's (EMA) generator, and its
    held-out D scores: a table.  ``step``: score the generator the run kept at that step (--keep-generators)
    instead of its last checkpoint, so that runs stopped at different steps compare at equal ones."""
    from facegan.checkpoint import load_generator, read_checkpoint
    from facegan.evaluation import evaluate_generator, inception_extractor

    extractor = inception_extractor()
    print(f"| run | steps | images | FID-{n}@64 | KID | precision | recall | density | coverage | "
          "D(x) train / held-out (last) | what it tries |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        path = out / name / "checkpoint.pt"
        if not path.is_file():
            continue
        ckpt = read_checkpoint(path)
        cfg, h = ckpt["config"], ckpt["history"]
        kept = out / name / "generators" / f"step_{step:07d}.pt"
        if step and not kept.is_file():
            print(f"| `{name}` | no generator kept at step {step:,} |", flush=True)
            continue
        G, _ = load_generator(kept if step else path, ema=not raw)
        ckpt["step"] = step or ckpt["step"]
        result = evaluate_generator(G, cfg, n, extractor=extractor)
        held = (f"{h['d_real_fixed'][-1]:.2f} / {h['d_holdout'][-1]:.2f}" if h.get("d_holdout") else "")
        print(f"| `{name}` | {ckpt['step']:,} | {ckpt['step'] * cfg.batch_size / 1e6:.2f} M | {result['fid']:.1f} | "
              f"{result['kid']:.4f} | "
              + " | ".join(f"{result[k]:.3f}" if k in result else "" for k in ("precision", "recall", "density",
                                                                              "coverage"))
              + f" | {held} | {STUDIES[study][1][name][0]} |", flush=True)


def _speed_states(names: list[str], study: str, subset: int) -> tuple[dict, object]:
    """(label -> a fresh TrainState of that run's configuration, the batches); a grown run twice: half size, fade."""
    from facegan import cli
    from facegan.batches import training_batches
    from facegan.state import make_state

    first, runs, _ = STUDIES[study]
    parser, states, data = cli.build_parser(), {}, None
    for name in names:
        args = parser.parse_args(["train", *first, *runs[name][1], "--subset", str(subset), "--max-minutes", "0"])
        cfg = cli.config_from_args(args)
        data = data or training_batches(cfg, "cpu")
        state = make_state(cfg, len(data), "cpu")
        if not cfg.progressive:
            states[name] = state
            continue
        fade, full = cfg.growth_steps(state.total_steps)
        states[f"{name} (half size)"] = state
        states[f"{name} (fade)"] = make_state(cfg, len(data), "cpu")
        states[f"{name} (fade)"].step = (fade + full) // 2
    return states, data


def speed_runs(names: list[str], study: str, rounds: int = 3, subset: int = 2048) -> None:
    """Each run's training step in img/s against the first run's, interleaved in one process on the CPU.

    A shared machine's speed drifts by more than an option costs, so the runs take turns: each
    round times 16 steps of every run, and each keeps its best round (as ``helpers.py bench
    --stabilisers`` does).  The ratio to the first run is the figure to read.
    """
    import torch

    from facegan.step import train_step

    states, data = _speed_states(names, study, subset)

    def stream():
        epoch = 0
        while True:
            yield from data.epoch(epoch)
            epoch += 1

    batches = stream()
    for state in states.values():  # warm-up: first-call allocations and kernel choices
        for _ in range(2):
            train_step(state, next(batches))
    best = dict.fromkeys(states, float("inf"))
    for _ in range(rounds):
        for label, state in states.items():
            t = time.perf_counter()
            for _ in range(16):
                train_step(state, next(batches))
            best[label] = min(best[label], time.perf_counter() - t)
    base = next(iter(best.values()))
    print(f"| run ({torch.get_num_threads()} thread(s), best of {rounds} interleaved rounds of 16 steps) | img/s | "
          f"against `{names[0]}` |\n|---|---|---|")
    for label, seconds in best.items():
        batch = states[label].config.batch_size
        print(f"| `{label}` | {16 * batch / seconds:.0f} | {base / seconds:.0%} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["train", "score", "speed"],
                        help="train the runs, score the finished ones, or time each run's step")
    parser.add_argument("--study", choices=list(STUDIES), default="stabilisers",
                        help="stabilisers: the 2,000-step search; improve: the improvements tried on today's fast64")
    parser.add_argument("--only", nargs="+", help="which runs (default: all of the study's)")
    parser.add_argument("--steps", type=int, default=2000, help="training steps per run (fewer for costlier steps)")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--n", type=int, default=1000, help="FID sample count (and real faces)")
    parser.add_argument("--subset", type=int, default=0,
                        help="train on only this many faces (limited data: D memorises sooner); 0 = all")
    parser.add_argument("--raw", action="store_true", help="score G's own weights instead of its EMA")
    parser.add_argument("--step", type=int, default=0,
                        help="score the generator each run kept at this step (generators/step_NNNNNNN.pt) instead of "
                             "its last checkpoint; 0 = the checkpoint")
    parser.add_argument("--out", type=Path, help="folder of the runs (default: runs/search64 or runs/improve64)")
    args = parser.parse_args()
    _, runs, folder = STUDIES[args.study]
    names = args.only or list(runs)
    unknown = sorted(set(names) - set(runs))
    if unknown:
        parser.error(f"--only: no run {unknown} in the {args.study} study; choose from {', '.join(runs)}")
    out = args.out or ROOT / "runs" / folder
    if args.action == "train":
        train_runs(names, args.steps, args.parallel, out, args.subset, args.study)
    elif args.action == "speed":
        speed_runs(names, args.study)
    else:
        score_runs(names, args.n, out, args.raw, args.study, args.step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
