"""One GPU session, one script: speed of every preset, then a 64x64 run and its FID-10k, in one table.

    python bench/gpu.py                       # on a GPU machine: about 9 minutes on an H100
    python bench/gpu.py --device cpu --quick  # the same code, tiny sizes: checks the script on a CPU

It prints, for each preset, training img/s of this project's pipeline at batch 64 and at a large
batch, in eager mode, with ``torch.compile`` and with CUDA graphs (``mode="reduce-overhead"``), with
compile time reported apart from the steady-state speed; the percentage of the device's measured bf16
peak; the peak memory; and the ratio to the classic pipeline (ImageFolder-style PIL DataLoader and the
textbook steps) at batch 64.  Then it trains ``dcgan64`` for ``--minutes`` at the best batch and
measures FID-N of the result at 64x64 against N real faces at 64x64 (N = 10,000 on a GPU), and writes
the run's model folder (OUT/model: weights, config.json, a card with that FID and the device's name).
Each speed measurement runs in a fresh process, so its peak memory is its own.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from facegan.bench import _run_worker, cpu_kernels, peak_gflops, step_flops  # noqa: E402
from facegan.checkpoint import CHECKPOINT  # noqa: E402
from facegan.config import PRESETS, make_config  # noqa: E402
from facegan.data import ensure_celeba  # noqa: E402
from facegan.evaluation import evaluate_generator, inception_extractor  # noqa: E402
from facegan.export import export_model, metric_keys  # noqa: E402
from facegan.train import train  # noqa: E402

VARIANTS = {"eager": "", "compile": "default", "cuda-graphs": "reduce-overhead"}


def speed_rows(device: str, quick: bool, big_batch: int, presets: list[str], peak_bf16: float) -> list[dict]:
    ctx = mp.get_context("spawn")
    steps, warmup, subset = (3, 2, 512) if quick else (30, 10, 0)
    rows = []
    for name in presets:  # "dcgan64@128": a preset at another image size (the dcgan models take 64, 128, 256)
        preset, _, size = name.partition("@")
        size = {"image_size": int(size)} if size else {}
        cfg = make_config(preset, **size)
        flops = step_flops(cfg, 16) / 16
        classic = _run_worker(ctx, preset, "classic", steps, warmup, subset, device, batch_size=64, **size)
        for batch in (64, big_batch):
            for variant, mode in VARIANTS.items():
                if quick and variant != "eager" and batch != 64:
                    continue  # compiling on a CPU takes minutes: check each path once
                r = _run_worker(ctx, preset, "fast", steps, warmup, subset, device, batch_size=batch,
                                compile_mode=mode, **size)
                row = {"preset": name, "batch": batch, "variant": variant, **r}
                if "error" not in r:
                    row["peak_pct"] = 100 * r["img_s"] * flops / 1e9 / peak_bf16
                    row["vs_classic"] = r["img_s"] / classic["img_s"] if batch == 64 else None
                rows.append(row)
                print(_format(row), flush=True)
    return rows


def _format(r: dict) -> str:
    if "error" in r:
        return f"{r['preset']:<12} {r['batch']:>6} {r['variant']:<11} {r['error']}"
    ratio = f"{r['vs_classic']:.1f}x" if r.get("vs_classic") else ""
    return (f"{r['preset']:<11} {r['batch']:>6} {r['variant']:<11} {r['precision']:<5} {r['img_s']:>9.0f} "
            f"{r['peak_pct']:>6.1f}% {r['peak_mb']:>8.0f} {r['warmup_s']:>8.1f} {ratio:>8}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to check the script")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (for --device cpu)")
    parser.add_argument("--big-batch", type=int, default=512, help="the large batch measured beside 64")
    parser.add_argument("--minutes", type=float, default=3.0, help="dcgan64 training time")
    parser.add_argument("--train-batch", type=int, default=256, help="dcgan64's batch for the training run")
    parser.add_argument("--fid-n", type=int, default=10_000, help="FID sample count (and real images)")
    parser.add_argument("--presets", default=",".join([*PRESETS, "dcgan64@128"]),
                        help="comma-separated presets to time; NAME@SIZE times a dcgan preset at SIZE pixels")
    parser.add_argument("--out", default=str(ROOT / "runs" / "gpu"), help="training run folder")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; run with --device cpu --quick to check the script")
        return 2
    dev = torch.device(args.device)
    ensure_celeba()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({cpu_kernels()})"
    peak = peak_gflops(dev, torch.bfloat16)
    print(f"{name}, torch {torch.__version__}, measured bf16 peak {peak:,.0f} GFLOP/s")
    print(f"{'preset':<12} {'batch':>6} {'variant':<11} {'prec.':<5} {'img/s':>9} {'%peak':>7} "
          f"{'peak MB':>8} {'warmup s':>8} {'vs classic':>8}")
    t0 = time.perf_counter()
    rows = speed_rows(args.device, args.quick, args.big_batch, [p for p in args.presets.split(",") if p], peak)
    print(f"(speed table: {time.perf_counter() - t0:.0f} s)")

    sizes = {"subset": 1024, "batch_size": 16} if args.quick else {"batch_size": args.train_batch}
    cfg = make_config("dcgan64", epochs=1000, max_minutes=args.minutes, ema_decay=0.999, device=args.device,
                      log_every=50, checkpoint_minutes=0, **sizes)
    t = time.perf_counter()
    result = train(cfg, args.out, progress=False)
    state = result.state
    trained = time.perf_counter() - t
    extractor = inception_extractor(device=dev)
    n = min(args.fid_n, 64) if args.quick else args.fid_n
    t = time.perf_counter()
    fid = evaluate_generator(state.sampler, cfg, n, extractor=extractor)
    fid_key, kid_key = metric_keys(n)  # the run's model folder, its FID and the GPU on its card
    gen = export_model(Path(args.out) / CHECKPOINT, Path(args.out) / "model", hardware=name,
                       metrics={fid_key: round(fid["fid"], 2), kid_key: round(fid["kid"], 4)})
    print(f"\ndcgan64 (EMA 0.999) on {name}: {state.step:,} steps of {cfg.batch_size} "
          f"({state.step * cfg.batch_size:,} images) in {trained / 60:.1f} min "
          f"({result.images_per_second:,.0f} img/s with logging and sampling); "
          f"FID-{n}@64 {fid['fid']:.1f}, KID {fid['kid']:.4f} ({time.perf_counter() - t:.0f} s); generator {gen}")
    best = max((r for r in rows if r["preset"] == "dcgan64" and "error" not in r), key=lambda r: r["img_s"],
               default=None)
    if best:
        print(f"best dcgan64: {best['img_s']:,.0f} img/s at batch {best['batch']} ({best['variant']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
