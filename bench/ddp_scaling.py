"""Training speed with 1, 2, ... torchrun processes at a fixed per-process batch.

    python bench/ddp_scaling.py                       # dcgan64, batch 16 per process, CPU (gloo)
    python bench/ddp_scaling.py --device cuda --nproc 1 2 4 8 --batch-size 64

Each setting is launched with torchrun (this file is also its worker), trains ``--warmup``
untimed steps, then ``--steps`` timed ones, and prints the global throughput (images of
the global batch per second) and the time per step.  On a CPU the processes share the
same cores, so this shows that sharding and the all-reduce work and what they cost, not
a speed-up; on GPUs each process has its own device.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from facegan import config, distributed, step
    from facegan.batches import training_batches

    cfg = config.make_config(args.preset, batch_size=args.batch_size, subset=args.subset, device=args.device,
                             epochs=0, max_steps=10**6)
    distributed.setup(cfg.device)
    device = distributed.local_device(step.pick_device(cfg.device))
    with distributed.local_main_first():
        batches = training_batches(cfg, device)
    state = step.make_state(cfg, len(batches), device)
    distributed.seed_ranks(cfg.seed)
    state.D, state.G = distributed.wrap_models(state.D, state.G, device)

    def run(n: int) -> float:
        done, t0 = 0, time.perf_counter()
        while done < n:
            for real in batches.epoch(state.epoch):
                step.train_step(state, real)
                done += 1
                if done == n:
                    break
            else:
                state.epoch += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        if distributed.active():
            dist.barrier()
        return time.perf_counter() - t0

    run(args.warmup)
    seconds = run(args.steps)
    world = distributed.world_size()
    # What the gradient all-reduces of one step cost alone: D's and G's gradients, once each.
    grads = [torch.zeros(sum(p.numel() for p in net.parameters()), device=device) for net in (state.D, state.G)]
    reduce_ms = 0.0
    if distributed.active():
        t0 = time.perf_counter()
        for _ in range(5):
            for g in grads:
                dist.all_reduce(g)
        if device.type == "cuda":
            torch.cuda.synchronize()
        reduce_ms = 1000 * (time.perf_counter() - t0) / 5
    if distributed.is_main():
        print(json.dumps({"world": world, "seconds": seconds, "ms_per_step": 1000 * seconds / args.steps,
                          "allreduce_ms": reduce_ms, "grad_mb": sum(4 * g.numel() for g in grads) / 2**20,
                          "img_per_s": args.steps * args.batch_size * world / seconds,
                          "precision": step.training_precision(cfg, device)}))
    distributed.teardown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="dcgan64")
    p.add_argument("--batch-size", type=int, default=16, help="per process")
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--subset", type=int, default=2048)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per process")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    print(f"{args.preset}, batch {args.batch_size} per process, {args.steps} timed steps, {args.device}, "
          f"{args.threads} thread(s) per process, {os.cpu_count()} CPU cores, torch {torch.__version__}")
    print(f"{'processes':>9} {'global batch':>12} {'ms/step':>8} {'img/s':>8} {'per process':>12} "
          f"{'all-reduce ms/step':>19}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    flags = ["--preset", args.preset, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--subset", str(args.subset), "--device", args.device]
    for n in args.nproc:
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                              str(n), __file__, "--worker", *flags], env=env, capture_output=True, text=True)
        lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
        if run.returncode or not lines:
            sys.exit(f"{n} process(es) failed:\n{run.stderr[-3000:]}")
        r = json.loads(lines[-1])
        print(f"{n:>9} {n * args.batch_size:>12} {r['ms_per_step']:>8.0f} {r['img_per_s']:>8.0f} "
              f"{r['img_per_s'] / n:>12.0f} {r['allreduce_ms']:>19.1f}   ({r['precision']}, "
              f"{r['grad_mb']:.1f} MB of gradients)")


if __name__ == "__main__":
    main()
