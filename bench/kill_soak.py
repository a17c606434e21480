"""Soak test of checkpoints by the clock: kill a training run with SIGKILL at random moments, resume each time.

    python bench/kill_soak.py [--kills 20] [--checkpoint-minutes 0.05] [--out runs/soak]

Each round starts (or resumes) ``small32`` on a 2,048-image subset, waits a random time,
reads the last step the progress bar showed, and kills the process without warning.  It
then reads the checkpoint back and prints how many steps the kill lost.  A kill must never
lose more than one checkpoint interval (``--checkpoint-minutes`` at the measured speed, plus
the log interval, since checkpoints are taken at logged steps), and no checkpoint may ever
be unreadable.  This is a script that prints figures, not a timed test.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from facegan.checkpoint import CheckpointError, newest_checkpoint  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="how many SIGKILLs")
    parser.add_argument("--checkpoint-minutes", type=float, default=0.05, help="the interval under test")
    parser.add_argument("--log-every", type=int, default=10, help="steps between logged (checkable) steps")
    parser.add_argument("--out", default=str(ROOT / "runs" / "soak"), help="run folder (deleted first)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill times")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "facegan", "train", "--out", str(out), "--subset", "2048", "--epochs", "1000",
           "--checkpoint-minutes", str(args.checkpoint_minutes), "--log-every", str(args.log_every)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    lost, unreadable, rates = [], 0, []
    print(f"{'kill':>4} {'after s':>8} {'step at kill':>12} {'checkpoint':>10} {'lost':>5}")
    for k in range(args.kills):
        resume = ["--resume"] if (out / "checkpoint.pt").exists() or (out / "checkpoint.prev.pt").exists() else []
        proc = subprocess.Popen(cmd + resume, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                text=True, bufsize=1)
        shown = {"step": 0, "rate": 0.0}

        def read_progress(stream=proc.stderr, shown=shown):
            # tqdm redraws "N/TOTAL [..., R step/s" on one line with carriage returns
            buf = ""
            while chunk := stream.read(256):
                buf = (buf + chunk)[-4096:]
                found = re.findall(r"(\d+)/\d+ \[[^\]]*?([\d.]+)step/s", buf)
                if found:
                    shown["step"], shown["rate"] = int(found[-1][0]), float(found[-1][1])

        reader = threading.Thread(target=read_progress, daemon=True)
        reader.start()
        wait = rng.uniform(8, 20)  # start-up takes a few seconds; kill somewhere in the training
        time.sleep(wait)
        proc.kill()
        proc.wait()
        reader.join(timeout=2)
        try:
            ckpt, _ = newest_checkpoint(out)
        except (CheckpointError, FileNotFoundError) as e:
            unreadable += 1
            print(f"kill {k}: no readable checkpoint: {e}")
            continue
        lost.append(max(0, shown["step"] - ckpt["step"]))
        if shown["rate"]:
            rates.append(shown["rate"])
        print(f"{k:>4} {wait:>8.1f} {shown['step']:>12} {ckpt['step']:>10} {lost[-1]:>5}", flush=True)
    rate = sorted(rates)[len(rates) // 2] if rates else 0.0
    bound = rate * 60 * args.checkpoint_minutes + args.log_every
    print(f"\n{len(lost)} kills resumed, {unreadable} unreadable checkpoints; steps lost per kill: "
          f"max {max(lost, default=0)}, mean {sum(lost) / max(len(lost), 1):.1f}; one interval = "
          f"{args.checkpoint_minutes} min x {rate:.1f} steps/s + {args.log_every} = {bound:.0f} steps")
    ok = unreadable == 0 and max(lost, default=0) <= bound
    print("OK: no kill lost more than one checkpoint interval" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
