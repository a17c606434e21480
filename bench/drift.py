"""How fast do two runs from the same seed drift apart?

Trains a preset three times from seed 0 on the same batches and latents: in fp32, in fp32 with every
weight nudged by about one unit in the last place (x 1 + 2^-23 N(0, 1)), and in bf16 autocast. At each
checkpoint step it prints the mean absolute difference between the fixed-latent samples of each run
and those of the fp32 run, beside the difference between two unrelated faces of the fp32 run.
If bf16 drifts no faster than a 1-ulp nudge, the same seed in two precisions is not a matched pair.

    python bench/drift.py small32 1500 10,50,100,200,500,1000,1500
"""
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from facegan import batches, config, step  # noqa: E402


def fixed_latent_samples(preset: str, steps: int, at: list[int], variant: str) -> dict[int, torch.Tensor]:
    cfg = config.make_config(preset, seed=0, amp=variant == "bf16", max_steps=steps)
    if variant == "bf16" and step.training_precision(cfg, torch.device("cpu")) != "bf16":
        raise SystemExit("this CPU has no native bf16, so there is no bf16 run to compare")
    data = batches.training_batches(cfg, "cpu")
    state = step.make_state(cfg, len(data), "cpu")
    state.total_steps = steps
    if variant == "nudged":
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            for p in [*state.G.parameters(), *state.D.parameters()]:
                p.mul_(1 + 2**-23 * torch.randn(p.shape, generator=g))
    stream = itertools.chain.from_iterable(data.epoch(e) for e in itertools.count())
    torch.manual_seed(cfg.seed)  # the same latents in every run
    out = {}
    for i in range(1, steps + 1):
        step.train_step(state, next(stream))
        if i in at:
            state.G.eval()
            with torch.no_grad():
                out[i] = state.G(state.fixed_z).float()
            state.G.train()
    return out


def main() -> None:
    preset, steps, at = sys.argv[1], int(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")]
    base = fixed_latent_samples(preset, steps, at, "fp32")
    rows = {v: fixed_latent_samples(preset, steps, at, v) for v in ("nudged", "bf16")}
    print(f"{preset}: mean |sample - fp32 sample| at step")
    print(f"{'run':<18}" + "".join(f"{s:>8}" for s in at))
    for name, run in rows.items():
        print(f"{name:<18}" + "".join(f"{(run[s] - base[s]).abs().mean().item():8.3f}" for s in at))
    unrelated = "".join(f"{(base[s] - base[s].roll(1, 0)).abs().mean().item():8.3f}" for s in at)
    print(f"{'unrelated faces':<18}" + unrelated)


if __name__ == "__main__":
    main()
