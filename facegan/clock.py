"""The run's clock: the time budget, the checkpoint interval and stop requests, agreed by every rank.

Two clocks run apart.  *Training time* is the steps and the bookkeeping they need (logging,
checkpoints); *evaluation time* is what only looks at the models: FID measurements, sample grids,
kept generators and the loss plot (``with clock.evaluating():``).  ``--max-minutes`` budgets
training time alone, resumes included, and images/s count training time alone, so a run with
``--fid-every`` trains as long and reports the same speed as one without; its evaluation minutes
come on top of the budget in wall-clock time.  Both are logged (``time/train_minutes``,
``time/eval_minutes``) and kept in the history (``seconds``, ``eval_seconds``).

SIGTERM and Ctrl-C (the notebook's stop button) only set a flag, and the loop stops at the end
of the step it is in, saving a checkpoint of whole steps on its way out.  Several processes
(torchrun): at each logged step the ranks agree, in one all-reduce, on the averaged losses and
on three verdicts (a checkpoint is due, the budget is spent, a stop was requested), so they all
checkpoint and stop at the same step.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator

import torch

from . import distributed as ddp
from .config import Config

#: Steps of a call after which its speed is measured (the first ones warm up), and at which a
#: time-budgeted run fixes its length in steps (``RunClock.plan_steps``).
HORIZON_WARMUP, HORIZON_STEPS = 20, 200


class RunClock:
    """Training time (resumes included, evaluation left out) against ``max_minutes``, and when to
    checkpoint next.

    Use it as a context manager around the loop: it installs the stop handlers and restores
    the previous ones on exit.
    """

    def __init__(self, cfg: Config, trained_seconds: float, device: torch.device, evaluated_seconds: float = 0.0):
        self.budget = 60 * cfg.max_minutes if cfg.max_minutes else math.inf
        self.interval = 60 * cfg.checkpoint_minutes if cfg.checkpoint_minutes else math.inf
        self.trained_before, self.device = trained_seconds, device
        self.evaluated_before, self.evaluating_now = evaluated_seconds, 0.0  # evaluation: earlier calls, this one
        self.start = time.perf_counter()
        self.next_checkpoint = self.start + self.interval
        self.distributed = ddp.active()
        # The verdicts agreed at the last logged step (distributed runs).  A budget already spent is
        # spent on every rank alike: trained_seconds comes from the same checkpoint.
        self._time_up, self._due, self.stop_agreed = trained_seconds >= self.budget, False, False
        self._stop: ddp.StopRequest | None = None
        self._warm: tuple[int, float] | None = None  # (step, time) where the speed measurement began

    def __enter__(self) -> RunClock:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._stop = ddp.StopRequest().__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._stop is not None:
            self._stop.__exit__()

    def seconds(self) -> float:
        """Training time of the whole run so far, earlier calls (resumes) included."""
        return self.trained_before + self.elapsed()

    def elapsed(self) -> float:
        """Training seconds of this call: its time since it started, less its evaluation."""
        return time.perf_counter() - self.start - self.evaluating_now

    def eval_seconds(self) -> float:
        """Evaluation time of the whole run so far (FID, grids, kept generators, the loss plot)."""
        return self.evaluated_before + self.evaluating_now

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Count the body's time as evaluation, not training."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.evaluating_now += time.perf_counter() - began

    def evaluate(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` on the evaluation clock; its result."""
        with self.evaluating():
            return fn(*args, **kwargs)

    def should_stop(self) -> bool:
        """A stop was requested: at once in one process; in several, once every rank agreed on it."""
        return self.stop_agreed if self.distributed else bool(self._stop and self._stop.requested)

    def out_of_time(self) -> bool:
        return self._time_up if self.distributed else self.seconds() >= self.budget

    def checkpoint_due(self) -> bool:
        return self._due if self.distributed else time.perf_counter() >= self.next_checkpoint

    def checkpointed(self) -> None:
        """A checkpoint was just written: the next one is due an interval from now."""
        self.next_checkpoint = time.perf_counter() + self.interval
        self._due = False

    def plan_steps(self, step: int, steps_this_call: int, total_steps: int) -> int | None:
        """The step at which a time-budgeted run will end, from its measured speed; None until known.

        A schedule (learning rate, instance noise) must end where the run ends.  Under
        ``max_minutes`` that is where the clock runs out, which a step count cannot know in
        advance, and a schedule read off the clock would differ on every resume.  So the run
        measures its speed over steps ``HORIZON_WARMUP``..``HORIZON_STEPS`` of this call, fixes
        its length in steps once, and keeps it in the checkpoint: from then on the schedule is a
        function of the step alone, and a resumed run continues it bit for bit.  Under torchrun
        rank 0's estimate is every rank's.
        """
        if steps_this_call == HORIZON_WARMUP:
            self._warm = (step, self.seconds())
        if steps_this_call != HORIZON_STEPS or self._warm is None or self.budget == math.inf:
            return None
        rate = (step - self._warm[0]) / max(self.seconds() - self._warm[1], 1e-9)
        planned = min(total_steps, step + int(max(self.budget - self.seconds(), 0.0) * rate))
        return ddp.gather(planned)[0]

    def agree(self, record: dict[str, float]) -> dict[str, float]:
        """At a logged step: the losses averaged over ranks, and the verdicts every rank will act on."""
        if not self.distributed:
            return record
        now = time.perf_counter()
        # Rank 0 alone evaluates; the others wait for it in the next collective, which their own clocks
        # would count as training: rank 0's clock, the one the checkpoint keeps, is the run's.
        record, flags = ddp.agree(record, {"due": now >= self.next_checkpoint,
                                           "late": ddp.is_main() and self.seconds() >= self.budget,
                                           "stop": bool(self._stop and self._stop.requested)}, self.device)
        self._due, self._time_up, self.stop_agreed = flags["due"], flags["late"], flags["stop"]
        return record
