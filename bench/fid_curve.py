"""FID against images seen, for one or more training runs, as a table and one figure.

    python bench/fid_curve.py --n 256 --out assets/presets64_fid.png runs/dcgan64 runs/hinge_sn64 ...

For a run folder with ``generators/`` (saved with ``--keep-generators true``), every saved
generator and the final checkpoint are scored now, with the same N, real faces and latents.
For a run without them, the FID that training tracked (``--fid-every``, same protocol and N) is
read from its checkpoint.  FID-N at small N is biased upwards: compare only numbers of equal N.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facegan.checkpoint import read_checkpoint  # noqa: E402
from facegan.evaluation import evaluate_generator, inception_extractor  # noqa: E402
from facegan.export import load_generator  # noqa: E402


def run_points(run: Path, n: int, extractor, max_step: int) -> tuple[str, list[tuple[int, int, float]]]:
    """(preset, [(step, images seen, FID-n)]) for one run folder."""
    final = read_checkpoint(run / "checkpoint.pt")
    cfg = final["config"]
    saved = sorted((run / "generators").glob("step_*.pt"))
    if not saved:
        h = final["history"]
        pairs = [(s, f) for s, f in zip(h.get("fid_step", []), h.get("fid", []), strict=True) if s <= max_step]
        if cfg.fid_samples != n:
            print(f"{run}: tracked FID used N={cfg.fid_samples}, not {n}; skipped")
            return cfg.preset, []
        return cfg.preset, [(s, s * cfg.batch_size, f) for s, f in pairs]
    points = []
    for path in [*saved, run / "checkpoint.pt"]:
        step = read_checkpoint(path)["step"]
        if step > max_step or any(p[0] == step for p in points):
            continue
        G, _ = load_generator(path)
        fid = evaluate_generator(G, cfg, n, extractor=extractor)["fid"]
        points.append((step, step * cfg.batch_size, fid))
        print(f"{run.name}: step {step}: FID-{n} {fid:.1f}", flush=True)
    return cfg.preset, points


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (each with checkpoint.pt)")
    parser.add_argument("--n", type=int, default=256, help="FID sample count (and real images)")
    parser.add_argument("--max-step", type=int, default=10**9, help="ignore points after this step")
    parser.add_argument("--out", default=None, help="PNG file for the figure")
    args = parser.parse_args()
    extractor = inception_extractor()
    curves = {}
    for run in map(Path, args.runs):
        preset, points = run_points(run, args.n, extractor, args.max_step)
        curves[f"{preset} ({run.name})"] = points
    print(f"\n{'run':<34} {'step':>6} {'images':>9} {'FID-' + str(args.n):>8}")
    for name, points in curves.items():
        for step, images, fid in points:
            print(f"{name:<34} {step:>6} {images:>9,} {fid:>8.1f}")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, points in curves.items():
            if points:
                ax.plot([p[1] for p in points], [p[2] for p in points], "o-", label=name)
        ax.set(xlabel="images seen", ylabel=f"FID-{args.n} at 64x64 (lower is better)",
               title="64x64 presets at equal images seen")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out, dpi=100)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
