"""Training img/s of one preset in bf16 autocast and exact fp32, at two batch sizes, side by side.

    python bench/precision_batch.py --preset fast64              # both threads, 2 repeats of 8 s each
    python bench/precision_batch.py --preset fast32 --batches 64,256

How ``fast64``'s precision and batch size were chosen (docs/results.md): at equal quality per
update, time-to-FID follows the images (and updates) per second.  Only ``train_step`` is timed, on
one fixed random batch, so the data path and logging do not enter; run it on a quiet machine, and
read the repeats' spread before the digits.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from facegan.config import PRESETS, make_config  # noqa: E402
from facegan.device import native_bf16, training_precision  # noqa: E402
from facegan.state import make_state  # noqa: E402
from facegan.step import train_step  # noqa: E402


def images_per_second(preset: str, amp: bool, batch: int, seconds: float) -> tuple[float, str]:
    """(img/s, the precision it ran in): amp asks for bf16, which runs only where it is native."""
    cfg = make_config(preset, batch_size=batch, amp=amp, device="cpu")
    state = make_state(cfg, 100, "cpu")
    real = torch.rand(batch, 3, cfg.image_size, cfg.image_size).mul(2).sub(1)
    real = real.contiguous(memory_format=torch.channels_last)
    for _ in range(3):  # warm-up: oneDNN picks its kernels
        train_step(state, real)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        train_step(state, real)
        n += batch
    return n / (time.perf_counter() - start), training_precision(cfg, torch.device("cpu"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="fast64", choices=list(PRESETS), help="the preset to time")
    parser.add_argument("--batches", default="64,128", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=2, help="passes over all cases (read the spread)")
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per case")
    args = parser.parse_args()
    print(f"{args.preset} on {torch.get_num_threads()} CPU threads; native bf16: {native_bf16('cpu')}")
    for rep in range(args.repeats):
        for amp in (True, False):
            for batch in map(int, args.batches.split(",")):
                ips, precision = images_per_second(args.preset, amp, batch, args.seconds)
                print(f"repeat {rep}  {precision}  batch {batch:>4}: {ips:6.0f} img/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
