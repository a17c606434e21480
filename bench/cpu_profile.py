"""Where a CPU training step's time goes: per operator, per layer, and which oneDNN kernels run.

    python bench/cpu_profile.py                      # dcgan64, fp32, this machine's kernels
    python bench/cpu_profile.py --avx2               # the same with AVX2 kernels only (an AVX2-only CPU)
    python bench/cpu_profile.py --preset small32 --threads 2

It prints three tables:

1. ``torch.profiler`` over a few ``train_step`` calls, grouped by operator;
2. every convolution of D and G, forward + backward alone, in channels_last and in
   contiguous (NCHW) layout: milliseconds, GFLOP/s and % of the measured fp32 peak;
3. the oneDNN implementation that ran each convolution (``ONEDNN_VERBOSE``): a
   ``jit:avx512``/``brg`` kernel is the fast path, ``gemm``/``ref`` the slow fallbacks.

``--avx2`` restarts the script with ATen's, oneDNN's and MKL's instruction sets capped
at AVX2 and bf16 off: the kernels an AVX2-only laptop runs, on this machine.  The
per-layer layouts alternate, three repeats each, and the median is printed.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "FACEGAN_BF16": "0", "FACEGAN_PROFILE_AVX2": "1"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="dcgan64", help="the preset whose models are profiled")
    p.add_argument("--batch-size", type=int, default=64, help="images per step")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = all cores")
    p.add_argument("--steps", type=int, default=6, help="train_step calls profiled (after 2 warm-up steps)")
    p.add_argument("--avx2", action="store_true", help="cap every kernel library at AVX2 (re-runs the script)")
    p.add_argument("--oneDNN-verbose", dest="verbose_child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def conv_layers(net):
    import torch.nn as nn

    return [(name, m) for name, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def layer_inputs(net, x):
    """The input tensor each convolution of ``net`` sees when ``net`` runs on ``x``."""
    import torch

    seen, hooks = {}, []
    for name, m in conv_layers(net):
        hooks.append(m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, inp[0].detach())))
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return seen


def time_layer(module, x, channels_last: bool, repeats: int = 5) -> float:
    """Seconds of one forward + backward (input and weight gradients) of ``module`` on ``x``."""
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    m = module.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt).requires_grad_(True)
    for _ in range(2):
        m(x).sum().backward()
    t = time.perf_counter()
    for _ in range(repeats):
        y = m(x)
        y.backward(torch.ones_like(y))
    return (time.perf_counter() - t) / repeats


def main() -> None:
    args = parse_args()
    if args.avx2 and os.environ.get("FACEGAN_PROFILE_AVX2") != "1":
        sys.exit(subprocess.call([sys.executable, __file__, *sys.argv[1:]], env={**os.environ, **AVX2_ENV}))
    import torch
    import torch.nn as nn
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from facegan.bench import cpu_kernels, peak_gflops
    from facegan.config import make_config
    from facegan.device import training_precision
    from facegan.models import LatentProjection, sample_latent
    from facegan.state import make_state
    from facegan.step import train_step

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = make_config(args.preset, batch_size=args.batch_size, device="cpu")
    state = make_state(cfg, 1000, torch.device("cpu"))
    real = torch.rand(args.batch_size, 3, cfg.image_size, cfg.image_size) * 2 - 1
    real = real.contiguous(memory_format=torch.channels_last)
    if args.verbose_child:  # one step with oneDNN's log on; the parent parses it
        train_step(state, real)
        return
    precision = training_precision(cfg, torch.device("cpu"))
    peak_fp32 = peak_gflops(torch.device("cpu"))  # the per-layer table runs in fp32
    peak = peak_gflops(torch.device("cpu"), torch.bfloat16) if precision == "bf16" else peak_fp32
    print(f"{args.preset}, batch {args.batch_size}, {precision}, "
          f"{torch.get_num_threads()} threads, kernels {cpu_kernels()}, "
          f"{precision} peak {peak:.0f} GFLOP/s" + (f", fp32 peak {peak_fp32:.0f}" if peak != peak_fp32 else ""))

    # 1. the whole step, by operator
    for _ in range(2):
        train_step(state, real)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for _ in range(args.steps):
            train_step(state, real)
        step_s = (time.perf_counter() - t) / args.steps
    with FlopCounterMode(display=False) as counter:
        train_step(state, real)
    flops = counter.get_total_flops()
    print(f"\n1. train_step: {1000 * step_s:.0f} ms/step, {args.batch_size / step_s:.0f} img/s, "
          f"{flops / step_s / 1e9:.0f} GFLOP/s = {100 * flops / step_s / 1e9 / peak:.0f}% of peak (under the profiler)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=34))

    # 2. each convolution alone, channels_last against contiguous
    print("2. each convolution in fp32, forward + backward alone (median of 3 alternating repeats)")
    print(f"{'layer':<26} {'input':>16} {'NHWC ms':>8} {'NCHW ms':>8} {'NHWC %pk':>9} {'NCHW %pk':>9}")
    z = sample_latent(args.batch_size, cfg)
    fake = state.G(z).detach()
    total = {"NHWC": 0.0, "NCHW": 0.0}
    rows = []
    for net_name, net, x in (("G", state.G, z), ("D", state.D, fake)):
        for name, m in conv_layers(net):
            inp = layer_inputs(net, x)[name]
            rows.append((f"{net_name}.{name} {type(m).__name__[:6]}", m, inp))
            if isinstance(m, LatentProjection):  # what it replaced: the same weights as a transposed conv
                plain = nn.ConvTranspose2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                           bias=m.bias is not None)
                plain.load_state_dict(m.state_dict())
                rows.append(("  (as ConvTranspose2d)", plain, inp))
    for label, m, inp in rows:
        with FlopCounterMode(display=False) as c:
            y = m(inp.clone().requires_grad_(True))
            y.backward(torch.ones_like(y))
        times = {"NHWC": [], "NCHW": []}
        for _ in range(3):
            times["NHWC"].append(time_layer(m, inp, True))
            times["NCHW"].append(time_layer(m, inp, False))
        med = {k: statistics.median(v) for k, v in times.items()}
        if not label.startswith(" "):  # the indented row is for comparison, not part of the step
            for k in total:
                total[k] += med[k]
        pk = {k: 100 * c.get_total_flops() / v / 1e9 / peak_fp32 for k, v in med.items()}
        print(f"{label:<26} {str(tuple(inp.shape)):>16} {1000 * med['NHWC']:>8.2f} {1000 * med['NCHW']:>8.2f} "
              f"{pk['NHWC']:>8.0f}% {pk['NCHW']:>8.0f}%")
        m.to(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    print(f"{'all convolutions':<43} {1000 * total['NHWC']:>8.1f} {1000 * total['NCHW']:>8.1f}")

    # 3. which oneDNN kernels ran
    out = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--batch-size", str(args.batch_size),
                          "--oneDNN-verbose", *(["--threads", str(args.threads)] if args.threads else [])],
                         env={**os.environ, "ONEDNN_VERBOSE": "1"}, capture_output=True, text=True)
    impls: dict[tuple[str, str], list[float]] = {}
    for line in out.stdout.splitlines():
        if not line.startswith("onednn_verbose") or ",exec," not in line:
            continue
        f = line.split(",")
        i = f.index("exec")
        prim, impl, kind = f[i + 2], f[i + 3], f[i + 4]
        if prim in ("convolution", "deconvolution"):
            ms = float(f[-1]) if re.match(r"^[\d.]+$", f[-1]) else 0.0
            impls.setdefault((f"{prim} {kind}", impl), []).append(ms)
    print("\n3. oneDNN convolution kernels in one step (ONEDNN_VERBOSE)")
    for (what, impl), ms in sorted(impls.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {what:<40} {impl:<26} x{len(ms):<3} {sum(ms):8.1f} ms")
    if not impls:
        print("  (no oneDNN convolutions ran: PyTorch used its own kernels for every convolution)")


if __name__ == "__main__":
    main()
