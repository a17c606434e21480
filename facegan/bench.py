"""Benchmark: training speed of the classic pipeline against this project's, and precision probes.

`python helpers.py bench` measures, in one run, the classic pipeline (PIL
transforms through a DataLoader, feeding the textbook D-step/G-step loop) and
this project's (uint8 cache, tensor-op batches, one G forward per step,
channels_last, fused Adam), on the same models and batch size.  The project's
pipeline runs twice: in fp32, and in bf16 autocast where the hardware has it.
Each measurement runs in a fresh process, so its peak memory is its own.
"""
from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .batches import training_batches
from .checkpoint import load_checkpoint
from .config import PRESETS, Config, make_config
from .data import get_dataloader, resolve_image_dir
from .device import native_bf16, pick_device, training_precision
from .models import build_models, count_parameters, sample_latent
from .state import TrainState, make_state
from .step import train_step
from .updates import discriminator_step, generator_step, make_optimizers

BENCH_CASES = (("32px conv_dim 32", "small32"), ("32px conv_dim 64", "classic32"), ("64px conv_dim 64", "dcgan64"))


def peak_gflops(device: torch.device, dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """The practical peak GFLOP/s of this machine in ``dtype``.

    The faster of a 2048x2048 matmul and a large 3x3 convolution (256 channels,
    32x32, batch 32): on some CPUs the convolution library beats the matmul
    library.  Each is timed three times and the best time kept, so that a busy
    moment on a shared machine does not lower the peak.
    """
    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    x = torch.randn(32, 256, 32, 32, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    candidates = ((lambda: a @ a, 2 * 2048**3), (lambda: F.conv2d(x, w, padding=1), 2 * 32 * 256 * 32 * 32 * 256 * 9))
    best_rate = 0.0
    for op, flops in candidates:
        for _ in range(2):
            op()
        for _ in range(3):
            _sync(device)
            t = time.perf_counter()
            for _ in range(repeats):
                op()
            _sync(device)
            best_rate = max(best_rate, flops * repeats / (time.perf_counter() - t) / 1e9)
    return best_rate


def _sync(device: torch.device) -> None:
    """Wait for the GPU, so that timings measure work done, not work queued."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_flops(cfg: Config, batch_size: int) -> float:
    """FLOPs of one training step (forward and backward of both nets), counted by PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode

    state = make_state(cfg.replace(channels_last=False, fused_adam=False), 1, "cpu")
    real = torch.zeros(batch_size, 3, cfg.image_size, cfg.image_size)
    with FlopCounterMode(display=False) as counter:
        train_step(state, real)
    return float(counter.get_total_flops())


def _classic_pipeline(cfg: Config, dev: torch.device, subset: int):
    """(endless batches, one step): a PIL DataLoader feeding the textbook D step and G step."""
    loader = get_dataloader(cfg.batch_size, cfg.image_size, cfg.data, subset=subset)
    D, G = build_models(cfg)
    D, G = D.to(dev), G.to(dev)
    d_opt, g_opt = make_optimizers(D, G, cfg)

    def batches():
        while True:
            yield from loader

    def run(real):
        real = real.to(dev)
        z = sample_latent(real.size(0), cfg, dev)
        discriminator_step(D, G, d_opt, real, z, cfg.real_label[0])
        generator_step(D, G, g_opt, z)
    return batches(), run


def _project_pipeline(cfg: Config, dev: torch.device, compile_mode: str):
    """(endless batches, one step): the uint8 cache feeding ``train_step``, compiled if asked."""
    data = training_batches(cfg, dev)
    state = make_state(cfg, len(data), dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if compile_mode:
        state.D, state.G = (torch.compile(m, mode=compile_mode) for m in (state.D, state.G))

    def batches():
        epoch = 0
        while True:
            yield from data.epoch(epoch)
            epoch += 1
    return batches(), lambda real: train_step(state, real)


def _bench_worker(preset: str, pipeline: str, steps: int, warmup: int, subset: int, device: str, queue,
                  batch_size: int = 0, compile_mode: str = "", image_size: int = 0,
                  overrides: dict | None = None) -> None:
    """Runs in a fresh process, so that its peak memory is its own.

    ``pipeline``: "classic", "fast" (the preset's own settings), "fast-fp32" or "fast-bf16".
    ``compile_mode``: "" (eager), "default" (torch.compile) or "reduce-overhead" (compile with
    CUDA graphs); the warm-up steps, which include compiling, are timed separately.
    """
    import resource

    if pipeline == "fast+compile":  # the default pipeline under torch.compile
        pipeline, compile_mode = "fast", compile_mode or "default"
    torch.manual_seed(0)
    dev = torch.device(device)
    sizes = {**({"batch_size": batch_size} if batch_size else {}), **({"image_size": image_size} if image_size else {})}
    cfg = make_config(preset, subset=subset, device=device, **sizes, **(overrides or {}))
    if pipeline == "classic":
        cfg = cfg.replace(channels_last=False, fused_adam=False, amp=False)
        stream, run = _classic_pipeline(cfg, dev, subset)
    else:
        if pipeline != "fast":
            cfg = cfg.replace(amp=pipeline == "fast-bf16")
        stream, run = _project_pipeline(cfg, dev, compile_mode)
    t = time.perf_counter()
    for _ in range(warmup):
        run(next(stream))
    _sync(dev)
    warmup_s = time.perf_counter() - t
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        run(next(stream))
    _sync(dev)
    seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    queue.put({"img_s": steps * cfg.batch_size / seconds, "img_cpu_s": steps * cfg.batch_size / cpu_seconds,
               "peak_mb": peak_mb, "warmup_s": warmup_s,
               "precision": training_precision(cfg, dev), "batch_size": cfg.batch_size})


def sgd_update(state: TrainState, real: torch.Tensor, seed: int = 0,
               amp: bool | None = None) -> dict[str, torch.Tensor]:
    """The change one ``train_step`` under plain SGD would make to D's and G's parameters (flattened).

    With SGD the update is the learning rate times the gradient itself, so two
    updates can be compared directly.  ``seed`` fixes the step's latents; ``amp``
    overrides the configuration's.  Runs on a copy: ``state`` is left untouched.
    """
    s = copy.deepcopy(state)
    if amp is not None:
        s.config = s.config.replace(amp=amp)
    s.d_opt = torch.optim.SGD(s.D.parameters(), lr=s.config.lr_d)
    s.g_opt = torch.optim.SGD(s.G.parameters(), lr=s.config.lr_g)
    s.step, s.ema = s.config.n_critic - 1, None  # a step that updates G as well as D

    def flat() -> dict[str, torch.Tensor]:
        return {k: torch.cat([p.detach().flatten().clone() for p in net.parameters()])
                for k, net in (("D", s.D), ("G", s.G))}

    before = flat()
    torch.manual_seed(seed)
    train_step(s, real)
    return {k: v - before[k] for k, v in flat().items()}


def bf16_rounding_vs_batch_noise(state: TrainState, real: torch.Tensor, other_real: torch.Tensor) -> dict[str, float]:
    """How much bf16 changes one update, next to how much another minibatch changes it.

    From ``state``'s weights, one ``sgd_update`` runs three times: fp32 on ``real``;
    bf16 on ``real`` with the same latents; fp32 on ``other_real`` with other latents.
    Returned, per net: |bf16 - fp32| / |other batch - fp32|.  SGD already follows a
    noisy gradient, so a ratio well below 1 means bf16 adds a small fraction of the
    noise that training lives with anyway.
    """
    if training_precision(state.config.replace(amp=True), state.device) != "bf16":
        raise RuntimeError(f"bf16 is not native on this {state.device.type}, so there is nothing to compare")
    fp32 = sgd_update(state, real, 0, amp=False)
    bf16 = sgd_update(state, real, 0, amp=True)
    other = sgd_update(state, other_real, 1, amp=False)
    return {k: ((bf16[k] - fp32[k]).norm() / (other[k] - fp32[k]).norm()).item() for k in fp32}


def precision_report(checkpoint: str | Path, batches: int = 4) -> dict[str, float]:
    """Print ``bf16_rounding_vs_batch_noise`` for a trained checkpoint, averaged over a few batches."""
    state = load_checkpoint(checkpoint, device="cpu")
    cfg = state.config
    data = training_batches(cfg.replace(subset=cfg.batch_size * 2 * batches, device="cpu"), "cpu")
    it = data.epoch(0)
    ratios = [bf16_rounding_vs_batch_noise(state, next(it), next(it)) for _ in range(batches)]
    mean = {k: sum(r[k] for r in ratios) / len(ratios) for k in ratios[0]}
    print(f"{checkpoint} ({cfg.preset}, step {state.step}, batch {cfg.batch_size}): "
          "|bf16 update - fp32 update| / |update on another batch - fp32 update|: "
          + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    return mean


def _run_worker(ctx, *args, **kwargs) -> dict:
    """``_bench_worker`` in a fresh process; ``{"error": ...}`` if it dies (e.g. out of GPU memory)."""
    import queue as queues

    queue = ctx.Queue()
    proc = ctx.Process(target=_bench_worker, args=(*args, queue), kwargs=kwargs)
    proc.start()
    while True:
        try:
            result = queue.get(timeout=1.0)
            break
        except queues.Empty:
            if not proc.is_alive():
                result = {"error": f"the worker exited with code {proc.exitcode}"}
                break
    proc.join()
    return result


def preset_speeds(quick: bool = False, device: str | None = None) -> list[dict]:
    """Training img/s of every preset on the project's pipeline (batch 64), with model sizes."""
    import multiprocessing as mp

    dev = pick_device(device or "auto")
    ctx = mp.get_context("spawn")
    resolve_image_dir("celeba")
    print(f"{'preset':<12} {'D params':>10} {'G params':>10} {'img/s':>8}   ({dev}, batch 64)")
    rows = []
    for preset in PRESETS:
        cfg = make_config(preset)
        D, G = build_models(cfg)
        steps = max(cfg.n_critic, 3 if quick else 10) if cfg.image_size == 64 and dev.type == "cpu" else 30
        r = _run_worker(ctx, preset, "fast", steps, 2, 4096 if quick else 0, str(dev))
        rows.append({"preset": preset, "d_params": count_parameters(D), "g_params": count_parameters(G), **r})
        print(f"{preset:<12} {rows[-1]['d_params']:>10,} {rows[-1]['g_params']:>10,} {r['img_s']:>8.0f}", flush=True)
    rows += stabiliser_speeds(dev, quick)
    return rows


#: What each stabiliser adds to fast64's step without its R1, as (label, Config overrides).  DiffAugment
#: at p = 1 is ADA's ceiling: ADA applies the same ops to a share p of the images.
PLAIN = {"r1_gamma": 0.0}
STABILISERS = [("fast64, no R1", PLAIN), ("+ lsgan", {**PLAIN, "loss": "lsgan"}),
               ("+ R1 lazy/16", {}), ("+ R1 every step", {"r1_every": 1}),
               ("+ ADA p=0", {**PLAIN, "diffaug": "color,translation,cutout", "ada_target": 0.6}),
               ("+ diffaug p=1", {**PLAIN, "diffaug": "color,translation,cutout"})]


def stabiliser_speeds(dev: torch.device, quick: bool = False) -> list[dict]:
    """fast64's img/s with each stabiliser, against the plain step (no R1), interleaved in one process.

    A shared machine's speed drifts by more than a stabiliser costs, so the variants take turns:
    each round times 16 steps of every variant (16, so that lazy R1 is due exactly once), and each
    keeps its best round.  The ratio to the plain step is the figure to read.
    """
    rounds, subset = (3, 2048) if quick else (5, 4096)
    data = training_batches(make_config("fast64", subset=subset, device=str(dev)), dev)

    def stream():
        epoch = 0
        while True:
            yield from data.epoch(epoch)
            epoch += 1

    batches = stream()
    states = {label: make_state(make_config("fast64", subset=subset, device=str(dev), **overrides), len(data), dev)
              for label, overrides in STABILISERS}
    for state in states.values():  # warm-up: first-call allocations and kernel choices
        for _ in range(2):
            train_step(state, next(batches))
    best = dict.fromkeys(states, float("inf"))
    for _ in range(rounds):
        for label, state in states.items():
            _sync(dev)
            t = time.perf_counter()
            for _ in range(16):
                train_step(state, next(batches))
            _sync(dev)
            best[label] = min(best[label], time.perf_counter() - t)
    plain = STABILISERS[0][0]
    base, precision = best[plain], training_precision(states[plain].config, dev)
    print(f"\n{'fast64 with':<18} {'img/s':>8} {'vs fast64':>10}   ({dev}, {precision}, {torch.get_num_threads()} "
          f"threads, best of {rounds} interleaved rounds of 16 steps)")
    rows = []
    for label, seconds in best.items():
        rows.append({"preset": label, "img_s": 16 * 64 / seconds, "vs_fast64": base / seconds})
        print(f"{label:<18} {rows[-1]['img_s']:>8.0f} {rows[-1]['vs_fast64']:>9.0%}", flush=True)
    return rows


def cpu_kernels() -> str:
    """The vector instructions PyTorch's CPU kernels run on here (AMX is reported where present)."""
    import os

    capability = torch.backends.cpu.get_cpu_capability()  # e.g. "AVX2", "AVX512"; ATEN_CPU_CAPABILITY caps it
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    bf16 = native_bf16("cpu")  # False where FACEGAN_BF16=0 turns it off
    onednn_cap = os.environ.get("ONEDNN_MAX_CPU_ISA")  # how bench/cpu_profile.py --avx2 runs an AVX2-only CPU
    return (capability + (" + AVX512-BF16" if bf16 else "") + (" + AMX" if amx and bf16 else "")
            + (f", oneDNN capped at {onednn_cap}" if onednn_cap else ""))


def benchmark(quick: bool = False, device: str | None = None, repeats: int = 1,
              compile: bool = False) -> list[dict]:
    """Classic vs fast pipeline (fp32, and bf16 where native) for each case; prints a table.

    GFLOP/s count the FLOPs of the project's step (the classic step does about 18%
    more, for its second G forward and D's weight gradients in the G step) and are
    compared with the peak (``peak_gflops``) of the precision that the row used.
    With ``repeats`` > 1 the pipelines alternate, and each row shows the median and
    the range over the repeats; ratios compare medians.  ``compile`` adds the default
    pipeline under ``torch.compile`` (``fast+compile``); its compile time (the warm-up
    steps) is printed apart from its steady-state speed.
    """
    import multiprocessing as mp

    dev = pick_device(device or "auto")
    ctx = mp.get_context("spawn")
    resolve_image_dir("celeba")  # fetch the data once, before the timed workers start
    subset = 4096 if quick else 0
    peaks = {"fp32": peak_gflops(dev)}
    pipelines = ["classic", "fast-fp32"]
    if native_bf16(dev.type):
        peaks["bf16"] = peak_gflops(dev, torch.bfloat16)
        pipelines.append("fast-bf16")
    if compile:
        pipelines.append("fast+compile")
    kernels = {"cpu": cpu_kernels, "cuda": lambda: torch.cuda.get_device_name(dev)}.get(dev.type, lambda: dev.type)()
    print(f"device {dev} ({torch.get_num_threads()} threads, {kernels}), peak "
          + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()) + f" GFLOP/s{', quick mode' if quick else ''}"
          + (f", median of {repeats} alternating repeats [min-max]" if repeats > 1 else ""))
    print(f"{'case':<18} {'pipeline':<12} {'precision':<9} {'img/s':>8} {'range':>11} {'ratio':>6} "
          f"{'peak MB':>8} {'GFLOP/s':>8} {'% peak':>7}{'  compile s' if compile else ''}")
    rows = []
    for name, preset in BENCH_CASES:
        cfg = make_config(preset)
        flops_per_image = step_flops(cfg, 16) / 16
        big = cfg.image_size == 64 and dev.type == "cpu"
        steps = (4 if big else 20) if quick else (15 if big else 80)
        runs: dict[str, list[dict]] = {p: [] for p in pipelines}
        for _ in range(repeats):  # alternate the pipelines, so load changes hit them alike
            for pipeline in pipelines:
                runs[pipeline].append(_run_worker(ctx, preset, pipeline, steps, 2 if quick else 5, subset, str(dev)))
        medians = {p: statistics.median(r["img_s"] for r in rs) for p, rs in runs.items()}
        for pipeline in pipelines:
            speeds = [r["img_s"] for r in runs[pipeline]]
            r = {**runs[pipeline][0], "img_s": medians[pipeline], "img_s_min": min(speeds), "img_s_max": max(speeds),
                 "peak_mb": max(x["peak_mb"] for x in runs[pipeline])}
            gflops = r["img_s"] * flops_per_image / 1e9
            peak = peaks[r["precision"]]
            ratio = r["img_s"] / medians["classic"]
            default = pipeline.startswith("fast-") and r["precision"] == training_precision(cfg, dev)
            rows.append({"case": name, "preset": preset, "pipeline": pipeline, **r, "ratio": ratio,
                         "gflops": gflops, "peak_fraction": gflops / peak, "default": default})
            spread = f"{min(speeds):.0f}-{max(speeds):.0f}" if repeats > 1 else ""
            compiled = f"  {statistics.median(x['warmup_s'] for x in runs[pipeline]):9.0f}" \
                if pipeline == "fast+compile" else ""
            print(f"{name:<18} {pipeline:<12} {r['precision']:<9} {r['img_s']:>8.0f} {spread:>11} {ratio:>5.2f}x "
                  f"{r['peak_mb']:>8.0f} {gflops:>8.1f} {100 * gflops / peak:>6.1f}%{'  *' if default else ''}"
                  f"{compiled}", flush=True)
    print("* what `train` runs on this machine by default (bf16 where native; --amp false for exact fp32)"
          + ("; compile s: the warm-up steps, compiling included" if compile else ""))
    return rows
