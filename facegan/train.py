"""The training loop: batches in, ``train_step`` per batch, history, grids, FID and checkpoints out.

Nothing is lost when a run stops.  A checkpoint is written at every epoch end and,
in between, every ``checkpoint_minutes`` of training; Ctrl-C, the notebook's stop
button and SIGTERM save one before returning; resuming continues bit for bit where
the checkpoint was taken.  A loss or weight that turns NaN or Inf stops the run
within ``log_every`` steps, and the last good checkpoint is kept as it was.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import distributed as ddp
from .batches import CachedBatches, LoaderBatches, training_batches
from .checkpoint import CHECKPOINT, export_generator, load_checkpoint, read_resume_checkpoint, save_checkpoint
from .config import Config
from .data import DataError, resolve_image_dir
from .evaluation import evaluate_generator, inception_extractor
from .plots import plot_losses, save_grid, save_progress_gif
from .sampling import generate, to_uint8
from .step import TrainState, make_state, pick_device, train_step

#: Fields that fix the models' shapes: a checkpoint resumes only under the same values.
ARCH_FIELDS = ("arch", "image_size", "z_size", "g_conv_dim", "d_conv_dim", "n_layers", "d_norm", "g_activation")


class TrainingDiverged(RuntimeError):
    """A loss or a weight became NaN or Inf; the message names the step and what went wrong."""


def _non_finite(state: TrainState, record: dict[str, float]) -> str | None:
    """What is NaN or Inf, if anything: a logged loss first, else a weight of D or G."""
    for k, v in record.items():
        if not math.isfinite(v):
            return f"{k} is {v}"
    for name, net in (("D", state.D), ("G", state.G)):
        for key, p in net.named_parameters():
            if not torch.isfinite(p).all():
                return f"{name} weight {key} is not finite"
    return None


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def train(cfg: Config, out_dir: str | Path | None = None, resume: bool = False,
          batches: CachedBatches | LoaderBatches | None = None, progress: bool = True,
          models: tuple[nn.Module, nn.Module] | None = None) -> TrainState:
    """Train a GAN; checkpoints, sample grids and the loss plot go to ``out_dir``.

    ``models=(D, G)`` trains your own networks (e.g. the notebook's) instead of
    building them from the configuration.  With ``resume=True`` and a checkpoint in
    ``out_dir``, training continues exactly where it stopped (same step, history,
    optimiser moments, data order).  Stopped by Ctrl-C or SIGTERM, it saves a
    checkpoint and returns the state so far, with ``state.interrupted`` set.
    """
    cfg.validate()
    ddp.setup(cfg.device)  # under torchrun: join the process group (facegan/distributed.py); else nothing
    distributed, main, world = ddp.active(), ddp.is_main(), ddp.world_size()
    device = ddp.local_device(pick_device(cfg.device))  # distributed: cuda -> cuda:LOCAL_RANK
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # pick the fastest conv algorithms for our fixed shapes
    with ddp.local_main_first():  # distributed: one process per machine extracts the data and builds the cache
        folder = resolve_image_dir(cfg.data, cfg.recursive) if batches is None or cfg.fid_every else None
        batches = batches or training_batches(cfg, device, folder)
    if len(batches) == 0:
        raise DataError(f"not one batch of {cfg.batch_size} images; lower batch_size or add images")
    state = make_state(cfg, len(batches), device, models)
    ddp.seed_ranks(cfg.seed)  # distributed: each rank draws its own latents and noise
    out = Path(out_dir) if out_dir else None
    if resume:
        if out is None or not ((out / CHECKPOINT).is_file() or (out / "checkpoint.prev.pt").is_file()):
            raise FileNotFoundError(f"--resume given but there is no checkpoint in {out}; drop --resume to start")
        ckpt, path = read_resume_checkpoint(out)  # read once: config check and restore use the same copy
        clash = [f for f in ARCH_FIELDS if getattr(ckpt["config"], f) != getattr(cfg, f)]
        if clash:
            raise ValueError(f"cannot resume: the checkpoint's {clash} differ from this configuration; "
                             f"use the same preset or another --out folder")
        if ckpt.get("world_size", 1) != world:  # the data order and random streams depend on it
            raise ValueError(f"cannot resume: the checkpoint was written by {ckpt.get('world_size', 1)} "
                             f"process(es) and this run has {world}; resume with the same number of "
                             f"processes (torchrun --nnodes/--nproc_per_node), or start another --out folder")
        load_checkpoint(ckpt, state)
        if main:
            print(f"resumed from {path} at step {state.step} (epoch {state.epoch})")
    state.D, state.G = ddp.wrap_models(state.D, state.G, device, cfg.sync_batchnorm)  # distributed: DDP
    if cfg.compile:
        state.D, state.G = torch.compile(state.D), torch.compile(state.G)

    seconds_before = state.history["seconds"][-1] if state.history["seconds"] else 0.0
    extractor = None  # the Inception network, loaded on the first FID measurement
    sums: dict[str, torch.Tensor] = {}
    count = 0
    t0, seen = time.perf_counter(), 0
    # max_minutes counts training time over the whole run, resumes included.
    deadline = t0 + 60 * cfg.max_minutes - seconds_before if cfg.max_minutes else math.inf

    def checkpoint_due_from(now: float) -> float:
        return now + 60 * cfg.checkpoint_minutes if cfg.checkpoint_minutes else math.inf

    next_checkpoint = checkpoint_due_from(t0)
    saved_step = state.step  # the step of the checkpoint on disk
    in_main = threading.current_thread() is threading.main_thread()
    # Distributed: SIGTERM/Ctrl-C set a flag that the ranks agree on at a logged step, and
    # the time limit is agreed there too, so every rank stops at the same step.
    stop = ddp.StopRequest().__enter__() if distributed and in_main else None
    # Distributed: the verdicts agreed at the last logged step.  A budget already spent is
    # spent on every rank alike (seconds_before comes from the same checkpoint).
    time_up = bool(cfg.max_minutes) and seconds_before >= 60 * cfg.max_minutes
    checkpoint_due = stop_now = False

    def out_of_time() -> bool:
        return time_up if distributed else time.perf_counter() >= deadline

    old_handler = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt) if in_main and not stop else None
    bar = tqdm(total=state.total_steps, initial=state.step, desc=cfg.preset, unit="step",
               disable=not progress or not main)
    try:
        while state.step < state.total_steps and not out_of_time():
            for real in batches.epoch(state.epoch, start=state.batch_in_epoch):
                metrics = train_step(state, real)
                state.batch_in_epoch += 1
                seen += real.size(0) * world  # images of the global batch
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0) + v
                count += 1
                logged = state.step % cfg.log_every == 0 or state.step == state.total_steps
                if logged:
                    # .item() waits for the device, so history is gathered every log_every steps only.
                    record = {k: (v / count).item() for k, v in sums.items()}
                    if distributed:  # one all-reduce: losses averaged over ranks, flags true if any rank's is
                        now = time.perf_counter()
                        record, flags = ddp.agree(record, {"due": now >= next_checkpoint, "late": now >= deadline,
                                                           "stop": bool(stop and stop.requested)}, device)
                        checkpoint_due, time_up, stop_now = flags["due"], flags["late"], flags["stop"]
                    problem = _non_finite(state, record)
                    if problem:
                        kept = f"; the last good checkpoint (step {saved_step}) is kept" if out else ""
                        raise TrainingDiverged(f"training diverged at step {state.step}: {problem}{kept}. "
                                               "Lower the learning rates, or try --amp false")
                    for k, v in record.items():
                        state.history[k].append(v)
                    state.history["step"].append(state.step)
                    state.history["epoch"].append(state.epoch)
                    state.history["seconds"].append(seconds_before + time.perf_counter() - t0)  # training time
                    sums, count = {}, 0
                    bar.set_postfix(d=f"{record['d_loss']:.3f}", g=f"{record['g_loss']:.3f}",
                                    Dx=f"{record['d_real']:.2f}", DGz=f"{record['d_fake']:.2f}",
                                    ips=f"{seen / (time.perf_counter() - t0):.0f}")
                bar.update(1)
                if main and cfg.fid_every and state.step % cfg.fid_every == 0:
                    extractor = extractor or inception_extractor(device=device)
                    score = evaluate_generator(state.sampler, cfg, cfg.fid_samples, extractor=extractor,
                                               folder=folder)
                    state.history.setdefault("fid_step", []).append(state.step)
                    state.history.setdefault("fid", []).append(score["fid"])
                if main and cfg.sample_every and state.step % cfg.sample_every == 0:
                    state.samples.append((state.step, to_uint8(generate(state.sampler, state.fixed_z))))
                if state.batch_in_epoch == len(batches):  # the end of an epoch
                    state.epoch += 1
                    state.batch_in_epoch = 0
                    if main and not cfg.sample_every:
                        state.samples.append((state.step, to_uint8(generate(state.sampler, state.fixed_z))))
                    if out and _non_finite(state, {}) is None:  # never save weights that are not finite
                        save_run(state, out)
                        saved_step = state.step
                        next_checkpoint = checkpoint_due_from(time.perf_counter())
                elif out and logged and (checkpoint_due if distributed else time.perf_counter() >= next_checkpoint):
                    save_checkpoint(state, out / CHECKPOINT)  # mid-epoch: resumes at this very batch
                    saved_step = state.step
                    next_checkpoint = checkpoint_due_from(time.perf_counter())
                if stop_now:  # distributed: a stop every rank agreed on, at this same step
                    raise KeyboardInterrupt("stop requested")
                if state.step >= state.total_steps or out_of_time():
                    break
    except KeyboardInterrupt:
        state.interrupted = True
        bar.close()
        if out and state.step > saved_step and _non_finite(state, {}) is None:  # never save NaN weights
            save_checkpoint(state, out / CHECKPOINT)
            saved_step = state.step
        if out and main:
            launcher = f"torchrun (the same {world} processes)" if distributed else "python"
            print(f"\nstopped at step {state.step}; checkpoint at step {saved_step} in {out / CHECKPOINT}. "
                  f"Resume with: {launcher} helpers.py train --out {out} --resume")
        return state
    finally:
        bar.close()
        if stop:
            stop.__exit__()
        elif in_main:
            signal.signal(signal.SIGTERM, old_handler)
    if main and (not state.samples or state.samples[-1][0] != state.step):  # always end with a grid of the final G
        state.samples.append((state.step, to_uint8(generate(state.sampler, state.fixed_z))))
    if out and seen and saved_step != state.step:  # stopped mid-epoch (max_steps, max_minutes)
        save_run(state, out)
    state.images_per_second = seen / max(time.perf_counter() - t0, 1e-9)
    return state


def save_run(state: TrainState, out: Path) -> None:
    """Checkpoint plus the pictures a human wants to look at: the latest grid, the curves, a GIF."""
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, out / CHECKPOINT)  # distributed: every rank takes part, rank 0 writes
    if not ddp.is_main():
        return
    if state.config.keep_generators:
        export_generator(state, out / "generators" / f"step_{state.step:07d}.pt")
    if state.samples:
        save_grid(state.samples[-1][1], out / "samples" / f"step_{state.samples[-1][0]:07d}.png")
    if len(state.samples) > 1:
        save_progress_gif(state.samples, out / "progress.gif")
    if state.history["step"]:
        import matplotlib.pyplot as plt

        fig = plot_losses(state.history)
        fig.savefig(out / "losses.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
