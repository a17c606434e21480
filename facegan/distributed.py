"""Several GPUs, or several machines: torchrun starts one process per GPU, DDP keeps them in step.

    torchrun --nproc_per_node 8 helpers.py train --preset dcgan64
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        helpers.py train --preset dcgan64 --out /shared/runs/dcgan64

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; ``setup`` joins the process
group (NCCL on CUDA, gloo on CPU) and picks the GPU ``LOCAL_RANK``.  Without those
variables nothing here does anything: one process trains exactly as before.

What each process does (``train`` calls the hooks below):

* D and G are each wrapped in ``DistributedDataParallel``: every backward all-reduces
  (averages) the gradients, so all ranks take the same optimiser step and their weights
  stay identical.  The EMA generator follows those identical weights, so it is identical too.
* Each rank reads its own slice of every global batch of the uint8 cache
  (``CachedBatches(rank=, world_size=)``); ``--batch-size`` is the per-GPU batch and the
  global batch is ``batch_size * world_size``.
* Each rank draws its own latents and noise (``seed_ranks``); rank 0 alone writes
  checkpoints, samples, plots and logs, with every rank's random state, so a resume with
  the same world size continues exactly.
* The ranks agree, once per logged step, on the averaged losses, on whether to checkpoint
  and on whether to stop (time limit, SIGTERM/Ctrl-C), so they always stop together.

GAN-specific points, each tested in ``tests/test_distributed.py``:

* D's BatchNorm: ``broadcast_buffers=False``.  D always runs in training mode, so its
  running statistics are never used; broadcasting them would cost a collective per D
  forward and re-write buffers between the forwards and the backward.  Batch statistics
  come from each rank's own batch (as in one process with that batch) unless
  ``Config.sync_batchnorm`` swaps in ``SyncBatchNorm`` (CUDA only).  Spectral norm's
  power-iteration vector is a function of the all-reduced weights, so it stays in step.
* The G step runs through D with D's weights frozen (``requires_grad_(False)``): DDP's
  reducer hooks only parameters that receive a gradient, so D reduces nothing in the G
  step and ``find_unused_parameters`` stays off.
* WGAN-GP: the penalty's ``autograd.grad`` is taken with respect to the *images*, which
  fires no reducer hook; the one ``backward`` of D's loss then reduces each gradient once.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import random
import signal
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher that sets the same variables) started this process."""
    return all(k in os.environ for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))


def active() -> bool:
    """Whether this process is one of several training together."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the process that writes files, prints and shows progress bars."""
    return rank() == 0


def setup(device: str = "auto") -> bool:
    """Join torchrun's process group if this process was started by torchrun; idempotent.

    NCCL when training on CUDA, gloo otherwise; the GPU is ``LOCAL_RANK``.  Returns whether
    a process group is up.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    if not dist.is_available():
        raise RuntimeError("started by torchrun, but this PyTorch build has no torch.distributed")
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[bool]:
    """``setup`` on entry, ``teardown`` on exit when this call made the group."""
    made = not (dist.is_available() and dist.is_initialized()) and setup(device)
    try:
        yield made
    finally:
        if made:
            teardown()


def local_device(device: torch.device) -> torch.device:
    """``cuda`` -> ``cuda:LOCAL_RANK`` in a distributed run; any other device unchanged."""
    if active() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


@contextlib.contextmanager
def local_main_first() -> Iterator[None]:
    """Local rank 0 runs the body first (extract the data, build the image cache), then the
    other ranks of the machine run it and find the files ready."""
    first = int(os.environ.get("LOCAL_RANK", 0)) == 0
    if active() and not first:
        dist.barrier()
    yield
    if active() and first:
        dist.barrier()


def seed_ranks(seed: int) -> None:
    """Give each rank its own random stream (latents, noise, dropout): after ``make_state``
    every rank would otherwise draw the very same latents, and the global batch would hold
    ``world_size`` copies of each fake."""
    if active():
        rank_seed = (seed * 100_003 + 1_000_003 * (rank() + 1)) % 2**32
        random.seed(rank_seed)
        np.random.seed(rank_seed)
        torch.manual_seed(rank_seed)  # and every GPU's generator


def wrap_models(D: nn.Module, G: nn.Module, device: torch.device,
                sync_batchnorm: bool = False) -> tuple[nn.Module, nn.Module]:
    """D and G in DDP (unchanged in a single process); rank 0's weights are broadcast to all."""
    if not active():
        return D, G
    if sync_batchnorm:
        if device.type != "cuda":
            raise ValueError("sync_batchnorm needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); "
                             "use --sync-batchnorm false on CPU")
        # Same parameter objects (the optimisers keep working) and the same state-dict keys.
        D, G = nn.SyncBatchNorm.convert_sync_batchnorm(D), nn.SyncBatchNorm.convert_sync_batchnorm(G)
    ids = [device.index] if device.type == "cuda" else None
    # No buffer broadcast before each forward: see the module docstring (BatchNorm running
    # statistics are each rank's own; rank 0's are the ones saved and used for samples).
    # Buffers are still synced once, from rank 0, when DDP wraps the model.
    no_sync = {_FORWARD_SYNC: False}
    return DDP(D, device_ids=ids, **no_sync), DDP(G, device_ids=ids, **no_sync)


#: PyTorch 2.14 renamed ``broadcast_buffers`` (now deprecated) to ``forward_sync_buffers``.
_FORWARD_SYNC = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters
                 else "broadcast_buffers")


def gather(obj) -> list:
    """Every rank's ``obj`` (a collective: all ranks must call it); ``[obj]`` in one process."""
    if not active():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_over_ranks(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``values`` summed over every rank (a collective); unchanged in one process."""
    if not active():
        return values
    values = values.to(device)
    dist.all_reduce(values)
    return values.cpu()


def agree(record: dict[str, float], flags: dict[str, bool], device: torch.device
          ) -> tuple[dict[str, float], dict[str, bool]]:
    """One all-reduce per logged step: the losses averaged over ranks, and each flag true
    if it is true on any rank (so every rank checkpoints, stops or raises at the same step)."""
    if not active():
        return record, flags
    values = torch.tensor([*record.values(), *map(float, flags.values())], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    n = len(record)
    mean = {k: v / world_size() for k, v in zip(record, values[:n].tolist(), strict=True)}
    return mean, {k: v > 0 for k, v in zip(flags, values[n:].tolist(), strict=True)}


class StopRequest:
    """SIGTERM and Ctrl-C only set ``requested``; training stops at a step boundary, so the
    checkpoint it saves holds whole steps.  In a distributed run the ranks agree on it at the
    next logged step and stop there together.  (Raising at once would stop each rank at a
    different point, some inside a collective.)  torchrun forwards SIGTERM to every worker and
    kills them 30 s later: keep ``log_every`` steps shorter.  A second signal raises
    ``KeyboardInterrupt`` at once, for a step that never ends."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt(f"signal {signum}, a second time")
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
