"""Who is winning the game? A run's logged scores, averaged over windows of steps.

A GAN's collapse shows in D's scores long before it shows in the faces: D(G(z)) sinks toward 0 as
D wins, and with ``--holdout`` the gap between D's score on fixed training faces and on held-out
ones opens when D memorises its training set.  One log is noisy (BatchNorm scores a batch, not a
face), so this prints the means over each window, with the learning-rate factor at its end.

    python bench/game_balance.py runs/long64/cosine/checkpoint.pt --every 1000
    python bench/game_balance.py runs/long64/cosine/checkpoint.pt --at 7575,13130   # the 1,000 steps up to each
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from facegan.checkpoint import read_checkpoint  # noqa: E402
from facegan.runs import planned_steps  # noqa: E402
from facegan.updates import lr_factor  # noqa: E402

COLUMNS = {"d_loss": "D loss", "g_loss": "G loss", "d_real": "D(x)", "d_fake": "D(G(z))",
           "d_real_fixed": "D(x) fixed training", "d_holdout": "D(x) held out"}


def window_means(history: dict, every: int, ends: list[int] | None = None) -> list[tuple[int, int, dict[str, float]]]:
    """(first step, last step, {column: mean}) for each window of ``every`` steps with records.

    The windows tile the run, or, with ``ends``, are the ``every`` steps up to each of those steps.
    """
    steps = np.asarray(history["step"])
    logged = [k for k in COLUMNS if len(history.get(k) or []) == len(steps)]
    starts = [end - every for end in ends] if ends else range(0, int(steps.max()) if len(steps) else 0, every)
    rows = []
    for lo in starts:
        inside = (steps > lo) & (steps <= lo + every)
        if inside.any():
            rows.append((lo + 1, lo + every, {k: float(np.nanmean(np.asarray(history[k], float)[inside]))
                                              for k in logged}))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a run's checkpoint.pt")
    parser.add_argument("--every", type=int, default=1000, help="steps per window")
    parser.add_argument("--at", type=lambda v: [int(x) for x in v.split(",")], default=None, metavar="S1,S2,...",
                        help="only the windows that end at these steps (e.g. the kept generators' steps)")
    args = parser.parse_args()
    if args.every < 1:
        parser.error("--every must be a positive number of steps")
    try:
        ckpt = read_checkpoint(args.checkpoint)
    except (OSError, ValueError) as err:  # missing, unreadable or not a checkpoint: say so in one line
        raise SystemExit(f"error: {err}") from None
    cfg, total = ckpt["config"], planned_steps(ckpt) or ckpt["step"]
    rows = window_means(ckpt["history"], args.every, args.at)
    if not rows:
        raise SystemExit(f"{args.checkpoint}: no logged steps in those windows (step {ckpt['step']:,} so far)")
    names = [COLUMNS[k] for k in rows[0][2]]
    gap = "d_holdout" in rows[0][2]
    print("| steps | LR factor | " + " | ".join(names) + (" | gap |" if gap else " |"))
    print("|---" * (len(names) + 2 + gap) + "|")
    for lo, hi, means in rows:
        cells = [f"{lo:,}-{hi:,}", f"{lr_factor(cfg.lr_schedule, hi, total):.2f}"]
        cells += [f"{v:.3f}" for v in means.values()]
        if gap:
            cells.append(f"{means['d_real_fixed'] - means['d_holdout']:+.3f}")
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
