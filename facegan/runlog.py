"""TensorBoard event files for a run: its curves, its grids and its hyperparameters, in the run folder.

    tensorboard --logdir runs        # every run folder under runs/ is one run, side by side

``train`` writes through one ``RunLog``, with ``torch.utils.tensorboard``'s ``SummaryWriter``:

    train/<key>        every finite number of a logged record: d_loss, g_loss, d_real (D(x)),
                       d_fake (D(G(z))) and, where the run has them, d_holdout, ada_p, ...
    train/grad_norm_d, train/grad_norm_g   the L2 norm of D's and G's gradients in the logged step
    train/lr_d, train/lr_g, train/images_per_second (training steps only: facegan/clock.py)
    time/train_minutes, time/eval_minutes   the run's training time, and its evaluation and grid time
    eval/fid, eval/kid at each FID measurement (``--fid-every``)
    samples/fixed_latents   the fixed-latent grid at every sample point
    samples/real       real training faces, once (step 0), to judge the fakes beside
    hparams            the Config training now, so that the HParams tab lists runs with their last
                       value of every curve (eval/fid: the FID the run ended on)
    config/changes     text, at the step a resume changed fields of the configuration (also in run.json)

Given the training device, a ``RunLog`` also adds the session to the run folder's ``run.json``
(facegan/record.py): command line, commit, versions, machine, and the fields a resume changed.

TensorBoard keeps the first hyperparameters it reads for a run, so they are not in the
training event files: each call rewrites one small event file of their own,
``events.out.tfevents.0000000000.hparams``, whose name sorts before every other, so the HParams
tab shows the configuration of the latest session, not of the first.

A resumed run continues the same curves.  Its writer starts with a purge at the step after the
checkpoint (``SummaryWriter(purge_step=...)``): whatever a killed process logged after its last
checkpoint is hidden, and the resumed process logs those steps again, so each step appears once.
Each write is flushed, so everything logged up to a checkpoint is on disk before the checkpoint
is.  A fresh run deletes the event files of an earlier run in its folder (as it deletes the
earlier grids).  Under torchrun only rank 0 writes; with no run folder nothing is written.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from . import distributed as ddp
from .config import Config
from .record import write_record
from .state import TrainState

#: The prefix of the event files SummaryWriter names (``events.out.tfevents.TIME.HOST.PID.N``).
EVENT_FILES = "events.out.tfevents.*"
#: The event file holding only the hyperparameters, named to be read first (see the module docstring).
HPARAMS_FILE = "events.out.tfevents.0000000000.hparams"
#: The file a run that diverged leaves beside its last good checkpoint (``python helpers.py runs`` reads it).
DIVERGED = "diverged.json"


def mark_diverged(out_dir: str | Path | None, step: int, problem: str) -> None:
    """Record in the run folder that the run diverged at ``step`` and why (rank 0; no folder: nothing).

    The engine stops a diverged run without a checkpoint of the bad weights, so the checkpoint
    alone reads as a run that merely stopped; this file tells them apart.  A later resume that
    saves a checkpoint makes it stale (``runs`` compares the two files' times).
    """
    if out_dir is None or not ddp.is_main():
        return
    path = Path(out_dir) / DIVERGED
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"step": step, "problem": problem}) + "\n", encoding="utf-8")


class RunLog:
    """The TensorBoard writer of one ``train`` call; every method is a no-op when it is disabled.

    ``start_step`` is the step the call starts from: 0 for a fresh run, the checkpoint's step
    for a resume.  The writer (and its event file) is created at the first write, so a call
    that trains nothing leaves no file behind.
    """

    def __init__(self, out_dir: str | Path | None, cfg: Config, start_step: int = 0, enabled: bool = True,
                 device: torch.device | None = None):
        self.out = Path(out_dir) if out_dir is not None else None
        self.cfg, self.start_step = cfg, start_step
        self.enabled = enabled and self.out is not None and ddp.is_main()
        self._writer, self._real_logged = None, start_step > 0  # a resume's real faces are logged already
        # With the training device: this session in run.json, and the fields it changed (text at start_step).
        self.changes = write_record(self.out, cfg, device, start_step) if device is not None and self.enabled else []
        if self.enabled and start_step == 0:  # a fresh run: no curves of an earlier run in its folder
            for old in self.out.glob(EVENT_FILES):
                old.unlink()

    def _open(self):
        """The SummaryWriter, created at the first write with the purge that makes a resume seamless;
        None when disabled."""
        if self.enabled and self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # requirements.txt has it; an older environment trains on without the curves
                print("note: no TensorBoard event files for this run (pip install tensorboard to have them)")
                self.enabled = False
                return None
            # Every writer starts with a session start at the first step this call trains: a resume's purges
            # whatever a killed process logged from there on.  TensorBoard's server takes a run's first start
            # for its beginning and purges at the later ones only, so a fresh run writes one too (at step 1).
            first = self.start_step + 1
            self._writer = SummaryWriter(str(self.out), purge_step=first)
            self._write_hparams()
            if self.changes:
                text = "\n".join(f"- step {c['step']:,}: `{c['field']}` {c['old']!r} -> {c['new']!r}"
                                  for c in self.changes)
                self._writer.add_text("config/changes", text, self.start_step)
        return self._writer

    def scalars(self, step: int, record: dict, lrs: dict[str, float] | None = None,
                images_per_second: float | None = None, minutes: dict[str, float] | None = None) -> None:
        """A logged step: every finite number of ``record``, the learning rates, the throughput and
        the run's minutes (``{"train_minutes": ..., "eval_minutes": ...}`` -> ``time/...``)."""
        writer = self._open()
        if writer is None:
            return
        values = {f"train/{k}": v for k, v in record.items()}
        values.update({f"train/{k}": v for k, v in (lrs or {}).items()})
        values["train/images_per_second"] = images_per_second
        values.update({f"time/{k}": v for k, v in (minutes or {}).items()})
        for tag, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                writer.add_scalar(tag, value, step)
        writer.flush()

    def grid(self, step: int, images: torch.Tensor) -> None:
        """The fixed-latent grid (uint8 or [-1, 1] images, N x 3 x S x S), 8 to a row like the PNG files."""
        writer = self._open()
        if writer is None:
            return
        from .plots import image_grid

        writer.add_image("samples/fixed_latents", image_grid(images), step, dataformats="HWC")
        writer.flush()

    def real_faces(self, images: torch.Tensor) -> None:
        """Real training faces ([-1, 1] or uint8), at step 0, once per run (later calls do nothing): what
        the fixed-latent grids are aiming at."""
        writer = None if self._real_logged else self._open()
        if writer is None:
            return
        self._real_logged = True
        from .plots import image_grid

        writer.add_image("samples/real", image_grid(images.detach().float().cpu()), 0, dataformats="HWC")
        writer.flush()

    def fid(self, step: int, fid: float, kid: float | None = None, more: dict[str, float] | None = None) -> None:
        """One FID measurement (and its KID, and ``more`` figures such as precision and recall, when measured)."""
        writer = self._open()
        if writer is None:
            return
        writer.add_scalar("eval/fid", fid, step)
        for name, value in {"kid": kid, **(more or {})}.items():
            if value is not None and math.isfinite(value):
                writer.add_scalar(f"eval/{name}", value, step)
        writer.flush()

    def close(self) -> None:
        """Close the event file; later writes are ignored (a new writer would purge this call's steps)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.enabled = False

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write_hparams(self) -> None:
        """The configuration training now as the HParams tab's session: one row per run folder.

        Only the session's start is written, not an experiment summary: TensorBoard reads the
        experiment from one run alone, so runs with different fields would hide each other's.
        The metrics are then every scalar tag of the run, each at its last value.  It goes into
        ``HPARAMS_FILE``, replaced whole (renamed into place), at step 0, which no purge reaches.
        """
        import time

        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.record_writer import RecordWriter
        from torch.utils.tensorboard.summary import hparams

        _, start, _ = hparams(hparam_values(self.cfg), {})
        tmp = self.out / ".hparams.tmp"  # no "tfevents" in the name: TensorBoard never reads it half-written
        with open(tmp, "wb") as f:
            writer = RecordWriter(f)
            writer.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
            writer.write(Event(wall_time=time.time(), step=0, summary=start).SerializeToString())
        tmp.replace(self.out / HPARAMS_FILE)


def learning_rates(state: TrainState) -> dict[str, float]:
    """The rates D and G step with now (after any schedule), read from their optimisers."""
    return {"lr_d": state.d_opt.param_groups[0]["lr"], "lr_g": state.g_opt.param_groups[0]["lr"]}


def hparam_values(cfg: Config) -> dict[str, float | str]:
    """The Config as the values the HParams tab takes: numbers and strings (bools and tuples as text)."""
    values = {}
    for key, value in cfg.to_dict().items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif not isinstance(value, (int, float, str)):
            value = str(value)  # real_label (0.9, 0.9), ...
        values[key] = value
    values["world_size"] = ddp.world_size()
    return values


def grad_norms(state: TrainState) -> dict[str, float]:
    """The L2 norm of D's and G's gradients as the last step left them in ``.grad`` (each network's
    step zeroes its gradients at its start, so they are that step's own; D's include R1 on its lazy steps).
    Cheap: one reduction per network, at logged steps only.  A network with no gradient yet is left out."""
    norms = {}
    for name, net in (("d", state.D), ("g", state.G)):
        grads = [p.grad.detach() for p in net.parameters() if p.grad is not None]
        if grads:
            norms[f"grad_norm_{name}"] = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])).item()
    return norms
