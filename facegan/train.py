"""The training loop: batches in, ``train_step`` per batch; history, grids, FID and checkpoints out.

``train`` reads top to bottom: set up, then a loop of step and accumulate, and at logged
steps one maintenance block (history, NaN check, FID, grids, checkpoint).  Two small
objects keep the bookkeeping out of the way: ``RunClock`` (facegan/clock.py) owns the time
budget, the checkpoint interval and stop requests; ``Checkpointer`` (facegan/checkpoint.py)
is the one path that writes a checkpoint and knows the step on disk.

Nothing is lost when a run stops.  A checkpoint is written at every epoch end and, in
between, every ``checkpoint_minutes`` of training; Ctrl-C, the notebook's stop button and
SIGTERM save one before returning; resuming continues bit for bit where the checkpoint was
taken.  A loss or weight that turns NaN or Inf stops the run within ``log_every`` steps, and
the last good checkpoint is kept as it was.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import distributed as ddp
from .batches import CachedBatches, LoaderBatches, training_batches
from .checkpoint import CHECKPOINT, Checkpointer, export_generator, load_checkpoint, newest_checkpoint
from .clock import RunClock
from .config import Config
from .data import DataError, resolve_image_dir
from .device import pick_device
from .evaluation import PRDC_KEYS, evaluate_generator, inception_extractor
from .holdout import HeldOutView
from .plots import grid_path, plot_losses, read_grids, save_grid, save_progress_gif
from .runlock import heartbeat, one_writer
from .runlog import RunLog, grad_norms, learning_rates, mark_diverged
from .sampling import generate, to_uint8
from .state import TrainState, make_state
from .step import train_step

#: Fields that fix the models' shapes: a checkpoint resumes only under the same values.
ARCH_FIELDS = ("arch", "image_size", "z_size", "g_conv_dim", "d_conv_dim", "n_layers", "d_norm", "g_activation")


class TrainingDiverged(RuntimeError):
    """A loss or a weight became NaN or Inf; the message names the step and what went wrong."""


@dataclass
class TrainResult:
    """What one call to ``train`` did: the run's state (``state``) and this call's own figures."""

    state: TrainState
    out_dir: Path | None
    steps: int = 0  # steps trained by this call; 0 when the run was already complete
    images_per_second: float = 0.0
    interrupted: bool = False  # stopped by Ctrl-C or SIGTERM (after saving a checkpoint)
    grids: list = field(default_factory=list)  # this call's (step, images) grids, kept when there is no folder

    @property
    def samples(self) -> list[tuple[int, torch.Tensor]]:
        """The fixed-latent grids of the whole run, oldest first: the run folder's PNG files, if any."""
        if self.out_dir is not None and ddp.is_main():
            return read_grids(self.out_dir, self.state.config.image_size, self.state.config.n_samples)
        return self.grids

    step = property(lambda self: self.state.step)
    epoch = property(lambda self: self.state.epoch)
    history = property(lambda self: self.state.history)
    config = property(lambda self: self.state.config)
    G = property(lambda self: self.state.G)
    D = property(lambda self: self.state.D)
    sampler = property(lambda self: self.state.sampler)


@one_writer  # one process trains a run folder at a time: a second one is refused (facegan/runlock.py)
def train(cfg: Config, out_dir: str | Path | None = None, resume: bool | dict = False,
          batches: CachedBatches | LoaderBatches | None = None, progress: bool = True,
          models: tuple[nn.Module, nn.Module] | None = None) -> TrainResult:
    """Train a GAN; checkpoints, sample grids (``samples/``), the loss plot and TensorBoard events go to ``out_dir``.

    cfg       every setting of the run (``make_config(preset, **overrides)``).
    out_dir   the run folder; None keeps everything in memory (grids in ``result.grids``).
    resume    continue the run in ``out_dir`` exactly where it stopped (same step, history,
              optimiser moments, data order, random streams); a checkpoint already read by
              ``newest_checkpoint`` may be passed instead of True.
    batches   the training batches (default: built from ``cfg`` by ``training_batches``).
    progress  show a progress bar (of the time budget when ``cfg.max_minutes`` is set).
    models    ``(D, G)`` to train your own networks instead of building them from ``cfg``.

    Stopped by Ctrl-C or SIGTERM, it saves a checkpoint and returns with ``interrupted`` set.
    """
    # Set up: the process group, the device, the data, the state, and where to resume from.
    out = Path(out_dir) if out_dir else None
    state, batches, folder = _set_up(cfg, out, resume, batches, models)
    device = state.device
    saver, result = Checkpointer(out, state.step), TrainResult(state, out)
    meter, extractor = _Meter(), None  # the Inception network loads at the first FID measurement
    last_grid = -1  # the step of this call's latest grid
    log = RunLog(out, cfg, state.step, device=device)  # TensorBoard events and run.json (facegan/runlog.py)
    held_out = _held_out_view(state, batches)  # D's scores on faces it never trains on (Config.holdout)
    plan = cfg.max_minutes > 0 and (cfg.lr_schedule != "constant" or cfg.instance_noise > 0)

    evaluated = _trained_seconds(state, "eval_seconds")  # apart from training time: facegan/clock.py
    with RunClock(cfg, _trained_seconds(state), device, evaluated) as clock, _Progress(state, clock, progress) as bar:
        try:
            while state.step < state.total_steps and not clock.out_of_time():
                for real in batches.epoch(state.epoch, start=state.batch_in_epoch):
                    # Execute one training step and accumulate its metrics.
                    meter.add(train_step(state, real), real.size(0) * ddp.world_size())
                    if plan and not state.horizon_fixed:  # a schedule over the time budget: fix its end in steps
                        _plan_horizon(state, clock, meter.steps)
                    state.batch_in_epoch += 1
                    epoch_end = state.batch_in_epoch == len(batches)
                    if epoch_end:
                        state.epoch, state.batch_in_epoch = state.epoch + 1, 0

                    # Perform maintenance tasks at logged steps, sample points and epoch ends.
                    logged = (state.step % cfg.log_every == 0 or state.step == state.total_steps
                              or not clock.distributed and clock.out_of_time())  # the budget's last step
                    if logged:  # history, NaN stop, progress bar, TensorBoard
                        _log_step(state, meter, held_out, clock, saver, bar, log, real)
                    if ddp.is_main() and cfg.fid_every and state.step % cfg.fid_every == 0:  # evaluation time:
                        extractor = extractor or clock.evaluate(inception_extractor, device=device)  # clock.py
                        clock.evaluate(_record_fid, state, extractor, folder, log)
                    grid_due = state.step % cfg.sample_every == 0 if cfg.sample_every else epoch_end
                    if grid_due:
                        last_grid = clock.evaluate(_save_grid, state, result, log)
                    if epoch_end or logged and clock.checkpoint_due():
                        _save(state, saver, clock, full=epoch_end)
                    if clock.should_stop():  # SIGTERM or Ctrl-C, at a step boundary (distributed: agreed)
                        raise KeyboardInterrupt("stop requested")
                    if state.step >= state.total_steps or clock.out_of_time():
                        if not logged:  # the budget ran out during maintenance (a save, a grid): log its last step
                            _log_step(state, meter, held_out, clock, saver, bar, log, real)
                        break
        except KeyboardInterrupt:
            saver.save(state)
            result.interrupted = True
        result.steps, result.images_per_second = meter.steps, meter.images / max(clock.elapsed(), 1e-9)

    # Finish: a grid of the final G, the last checkpoint, the progress GIF (or how to resume).
    if result.interrupted:
        _say_how_to_resume(state, out, saver)
    elif meter.steps:
        if last_grid != state.step:
            _save_grid(state, result, log)
        if saver.step != state.step:  # stopped mid-epoch (max_steps, max_minutes)
            _save(state, saver, clock, full=True)
        if out and ddp.is_main():
            make_progress_gif(out, cfg.image_size)
    log.close()
    return result


class _Meter:
    """Means of the step metrics since the last logged step, and what this call has trained.

    Each metric is averaged over the steps that reported it: with ``n_critic > 1`` only one
    step in ``n_critic`` has a G loss.  A metric no step of the window reported keeps its
    last logged value.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.last: dict[str, float] = {}
        self.steps = self.images = 0

    def add(self, metrics: dict[str, torch.Tensor], images: int) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0) + v
            self.counts[k] = self.counts.get(k, 0) + 1
        self.steps, self.images = self.steps + 1, self.images + images

    def mean(self) -> dict[str, float]:
        """The means since the last call (``.item()`` waits for the device, so only at logged steps)."""
        self.last.update({k: (v / self.counts[k]).item() for k, v in self.sums.items()})
        self.sums, self.counts = {}, {}
        return dict(self.last)


#: The budget bar counts training seconds: "fast32 (25-min budget):  40%|####  | 600/1500 s [...]".
BUDGET_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s [{elapsed}<{remaining}{postfix}]"


class _Progress:
    """A tqdm bar of steps, or of the time budget when the run has one (``max_minutes``)."""

    def __init__(self, state: TrainState, clock: RunClock, enabled: bool):
        cfg, self.state, self.clock = state.config, state, clock
        self.budget = cfg.max_minutes > 0
        disable = not enabled or not ddp.is_main()
        if self.budget:
            total = round(clock.budget)
            self.bar = tqdm(total=total, initial=min(round(clock.trained_before), total), unit="s", disable=disable,
                            desc=f"{cfg.preset} ({cfg.max_minutes:g}-min budget)", bar_format=BUDGET_BAR, smoothing=0)
        else:
            self.bar = tqdm(total=state.total_steps, initial=state.step, desc=cfg.preset, unit="step",
                            disable=disable, smoothing=0)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def show(self, record: dict[str, float], images_per_second: float) -> None:
        done = min(round(self.clock.seconds()), self.bar.total) if self.budget else self.state.step
        if not self.bar.disable:  # tqdm's rate and ETA are (n - initial) / (now - start_t): training time only
            self.bar.start_t = time.time() - self.clock.elapsed()
        self.bar.update(done - self.bar.n)
        g_loss = record.get("g_loss", math.nan)  # NaN until G's first step (n_critic > 1)
        self.bar.set_postfix(step=self.state.step, d=f"{record['d_loss']:.3f}", g=f"{g_loss:.3f}",
                             Dx=f"{record['d_real']:.2f}", DGz=f"{record['d_fake']:.2f}",
                             ips=f"{images_per_second:.0f}")


def _set_up(cfg: Config, out: Path | None, resume: bool | dict, batches, models) -> tuple:
    """(state, batches, real-image folder): the process group, device, data and models, resumed if asked."""
    cfg.validate()
    ddp.setup(cfg.device)  # under torchrun: join the process group (facegan/distributed.py); else nothing
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
    if resume:
        _restore(state, out, resume)
    elif out is not None and ddp.is_main():  # a fresh run: no grids of an earlier run in its GIF
        for old in (out / "samples").glob("step_*.png"):
            old.unlink()
    state.D, state.G = ddp.wrap_models(state.D, state.G, device, cfg.sync_batchnorm)  # distributed: DDP
    if cfg.compile:
        state.D, state.G = torch.compile(state.D), torch.compile(state.G)
    return state, batches, folder


def _restore(state: TrainState, out: Path | None, resume: bool | dict) -> None:
    """Load the run's newest readable checkpoint into ``state``, after checking that it fits."""
    if out is None:
        raise ValueError("resume needs the run folder (out_dir) that holds the checkpoint")
    ckpt, path = (resume, out) if isinstance(resume, dict) else newest_checkpoint(out)
    clash = [f for f in ARCH_FIELDS if getattr(ckpt["config"], f) != getattr(state.config, f)]
    if bool(ckpt["config"].progressive) != bool(state.config.progressive):  # growing adds the half-size layers
        clash.append("progressive")
    if clash:
        raise ValueError(f"cannot resume: the checkpoint's {', '.join(clash)} differ from this configuration "
                         f"(the models' shapes); use the same values or another --out folder")
    if ckpt.get("world_size", 1) != ddp.world_size():  # the data order and random streams depend on it
        raise ValueError(f"cannot resume: the checkpoint was written by {ckpt.get('world_size', 1)} "
                         f"process(es) and this run has {ddp.world_size()}; resume with the same number of "
                         f"processes (torchrun --nnodes/--nproc_per_node), or start another --out folder")
    saved_epoch = ckpt.get("steps_per_epoch")
    if saved_epoch not in (None, state.steps_per_epoch) or ckpt["batch_in_epoch"] >= state.steps_per_epoch:
        raise ValueError(f"cannot resume: the checkpoint's epochs have {saved_epoch or 'more'} batches and this "
                         f"run's have {state.steps_per_epoch}; resume with the same --batch-size, --subset and "
                         "data, or start another --out folder")
    load_checkpoint(ckpt, state)
    if ddp.is_main():
        for step, images in ckpt.get("samples") or ():  # checkpoints from before grids were PNG files
            if not grid_path(out, step).is_file():
                save_grid(images, grid_path(out, step))
        print(f"resumed from {path} at step {state.step} (epoch {state.epoch})")


def _plan_horizon(state: TrainState, clock: RunClock, steps_this_call: int) -> None:
    """Fix a time-budgeted run's length in steps once its speed is known (``RunClock.plan_steps``)."""
    planned = clock.plan_steps(state.step, steps_this_call, state.total_steps)
    if planned is not None:
        state.total_steps, state.horizon_fixed = max(planned, state.step), True


def _log_step(state: TrainState, meter: _Meter, held_out: HeldOutView | None, clock: RunClock,
              saver: Checkpointer, bar: _Progress, log: RunLog, real: torch.Tensor) -> None:
    """At a logged step: the window's means (and D's held-out view), agreed by every rank, into the
    history, the NaN check, the progress bar and TensorBoard (with a fresh run's real faces, once)."""
    record = meter.mean()
    if held_out is not None:
        record.update(held_out.scores(state))
    record.update(grad_norms(state))  # this step's gradients, still in .grad: one norm each at logged steps
    record = clock.agree(record)  # distributed: averaged over ranks, verdicts agreed
    _stop_if_diverged(state, record, saver)
    seconds, evaluated = clock.seconds(), clock.eval_seconds()
    _append_history(state, record, seconds, evaluated)
    speed = meter.images / max(clock.elapsed(), 1e-9)  # training steps only (facegan/clock.py)
    bar.show(record, speed)
    minutes = {"train_minutes": seconds / 60, "eval_minutes": evaluated / 60}
    log.scalars(state.step, record, learning_rates(state), speed, minutes)
    log.real_faces(real[:state.config.n_samples])  # a fresh run's first logged batch; later calls do nothing
    heartbeat(saver.out, state, speed, minutes)  # what `python helpers.py runs` shows of a live run


def _held_out_view(state: TrainState, batches) -> HeldOutView | None:
    held = getattr(batches, "held_out", None)
    if not state.config.holdout or held is None or not len(held):
        return None
    return HeldOutView(held, batches.images, state.device, state.config.channels_last)


def _trained_seconds(state: TrainState, key: str = "seconds") -> float:
    return state.history[key][-1] if state.history.get(key) else 0.0


def _stop_if_diverged(state: TrainState, record: dict[str, float], saver: Checkpointer) -> None:
    """Raise ``TrainingDiverged`` if a logged loss or a weight is NaN or Inf."""
    problem = next((f"{k} is {v}" for k, v in record.items() if not math.isfinite(v)), None)
    for name, net in (("D", state.D), ("G", state.G)):
        for key, p in net.named_parameters():
            if problem is None and not torch.isfinite(p).all():
                problem = f"{name} weight {key} is not finite"
    if problem:
        kept = (f"; the last good checkpoint (step {saver.step}) is kept"
                if saver.out and (saver.out / CHECKPOINT).is_file() else "")
        message = (f"training diverged at step {state.step}: {problem}{kept}. "
                   "Lower the learning rates, or try --amp false")
        mark_diverged(saver.out, state.step, message)
        raise TrainingDiverged(message)


#: The per-step figures a history may hold: the losses and scores, and the stabilisers' own.
STEP_METRICS = ("d_loss", "g_loss", "d_real", "d_fake", "r1", "ada_p", "d_holdout", "d_real_fixed",
                "feature_matching")


def _append_history(state: TrainState, record: dict[str, float], seconds: float, eval_seconds: float = 0.0) -> None:
    history, n = state.history, len(state.history["step"])
    for k in STEP_METRICS:
        if k in record or k in history:
            column = history.setdefault(k, [math.nan] * n)
            # A figure no step of this window reported (R1 on lazy steps, G's loss on critic-only steps,
            # the first window after a resume) keeps its last logged value, as _Meter does within a call;
            # NaN until there is one.
            column.append(record.get(k, column[-1] if column else math.nan))
    history["step"].append(state.step)
    history["epoch"].append(state.epoch)
    history["seconds"].append(seconds)  # training time, resumes included
    history.setdefault("eval_seconds", [0.0] * n).append(eval_seconds)  # FID, grids...: apart (facegan/clock.py)


def _record_fid(state: TrainState, extractor: nn.Module, folder: Path | None, log: RunLog) -> None:
    score = evaluate_generator(state.sampler, state.config, state.config.fid_samples, extractor=extractor,
                               folder=folder)
    state.history.setdefault("fid_step", []).append(state.step)
    state.history.setdefault("fid", []).append(score["fid"])
    log.fid(state.step, score["fid"], score.get("kid"), {k: v for k, v in score.items() if k in PRDC_KEYS})


def _save_grid(state: TrainState, result: TrainResult, log: RunLog) -> int:
    """The fixed latents through the current generator: a PNG in the run folder, or kept in memory."""
    if not ddp.is_main():
        return state.step
    images = to_uint8(generate(state.sampler, state.fixed_z))
    log.grid(state.step, images)
    if result.out_dir is None:
        result.grids.append((state.step, images))
    else:
        save_grid(images, grid_path(result.out_dir, state.step))
        if state.config.keep_generators:  # G at every sample point, for FID curves (runs --score)
            export_generator(state, result.out_dir / "generators" / f"step_{state.step:07d}.pt")
    return state.step


def _save(state: TrainState, saver: Checkpointer, clock: RunClock, full: bool) -> None:
    """Checkpoint; at epoch ends and at the end also the loss plot (evaluation time)."""
    saved = saver.save(state)
    clock.checkpointed()
    if saved and full and ddp.is_main() and state.history["step"]:
        import matplotlib.pyplot as plt

        with clock.evaluating():
            fig = plot_losses(state.history)
            fig.savefig(saver.out / "losses.png", dpi=100, bbox_inches="tight")
            plt.close(fig)


def _say_how_to_resume(state: TrainState, out: Path | None, saver: Checkpointer) -> None:
    if out and ddp.is_main():
        launcher = f"torchrun (the same {ddp.world_size()} processes)" if ddp.active() else "python"
        print(f"\nstopped at step {state.step}; checkpoint at step {saver.step} in {saver.out}. "
              f"Resume with: {launcher} helpers.py train --out {out} --resume")


def make_progress_gif(run_dir: str | Path, image_size: int | None = None, max_frames: int = 60) -> Path | None:
    """Build ``RUN/progress.gif`` from the run's saved grids (at most ``max_frames`` of them).

    ``train`` calls it once at the end of a run; call it yourself for a run still going.
    ``image_size`` defaults to the one in the run's checkpoint.
    """
    from .checkpoint import read_checkpoint

    run_dir = Path(run_dir)
    image_size = image_size or read_checkpoint(run_dir / CHECKPOINT)["config"].image_size
    grids = read_grids(run_dir, image_size, n_images=16, max_grids=max_frames)  # the GIF shows 16 faces
    return save_progress_gif(grids, run_dir / "progress.gif", max_frames=max_frames) if len(grids) > 1 else None
