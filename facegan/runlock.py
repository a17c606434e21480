"""One writer per run folder: training holds an OS lock on ``RUN/train.lock`` for as long as it runs.

Two processes writing one run folder lose data silently: each renames its checkpoint over the
other's, and a resume's TensorBoard purge hides the other's curves.  So ``train`` (and the
``train`` command, before it reads anything) takes an exclusive ``fcntl.flock`` on
``RUN/train.lock``.  The operating system drops the lock when the process ends, however it
ends: a ``kill -9`` or a crash leaves no stale lock, and the next ``--resume`` simply takes it.

A second writer does not wait: it raises ``RunInUse``, one line naming the process that holds
the folder and what to do (the command line prints it and exits with status 2).

The lock file also says who holds it and how far they are: the holder's PID, host, command and
start, and, rewritten at every logged step, the step, the training speed, the training and
evaluation minutes and when it last logged.  ``python helpers.py runs`` reads that (``probe``)
to list a live run as *running*.  The probe takes and drops a shared lock on a read-only handle,
so it changes nothing in the folder; a writer starting at that very moment retries for a second.

Under torchrun the ranks of one run share one lock: global rank 0, the rank that writes every
file of the run, takes it and holds it; the other ranks take none (were each to take it, they
would refuse one another).  A second run refused on rank 0 fails there, and torchrun stops its
other ranks.

Within one process the lock is re-entrant (the command takes it, then ``train`` takes it again).
Where ``fcntl`` is missing (Windows) nothing is locked.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from . import distributed as ddp
from .state import TrainState

try:
    import fcntl
except ImportError:  # Windows: no flock; training goes on unlocked
    fcntl = None

LOCK = "train.lock"
#: How long a writer retries a lock that a ``runs`` probe holds for an instant.
RETRY_SECONDS = 1.0

_held: dict[Path, list] = {}  # this process's locks: resolved folder -> [file descriptor, depth]


class RunInUse(RuntimeError):
    """Another process is training this run folder; the message is one line saying who and what to do."""


def global_rank() -> int:
    """The process's rank in its run, known from torchrun's variables before the process group forms."""
    return ddp.rank() if ddp.active() else int(os.environ.get("RANK", "0"))


def _facts(fd: int) -> dict:
    """What the lock file says about its holder ({} while it is being written or if unreadable)."""
    for _ in range(3):  # a heartbeat being rewritten can be read half-written: read again
        try:
            text = os.pread(fd, 1 << 16, 0).decode("utf-8").strip()
            return json.loads(text) if text else {}
        except (ValueError, OSError):
            time.sleep(0.01)
    return {}


def _write(fd: int, facts: dict) -> None:
    data = (json.dumps(facts) + "\n").encode("utf-8")
    os.pwrite(fd, data.ljust(4096), 0)  # padded with spaces: the file's length rarely changes under a reader
    if len(data) > 4096:
        os.ftruncate(fd, len(data))


def in_use_message(out: Path, facts: dict) -> str:
    """The one line a second writer gets: the holder, and what to do."""
    pid = facts.get("pid", "unknown")
    since = time.strftime("%H:%M %Z", time.localtime(facts["started"])) if "started" in facts else "?"
    at = f", at step {facts['step']:,}" if "step" in facts else ""
    return (f"{out} is in use: process {pid} on {facts.get('host', 'this machine')} has trained it since {since}"
            f"{at}; wait for it to finish, or stop it (kill -TERM {pid} saves a checkpoint) and then resume "
            f"with --resume, or train into another --out folder")


def _acquire(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    end = time.monotonic() + RETRY_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= end:
                facts = _facts(fd)
                os.close(fd)
                raise RunInUse(in_use_message(out, facts)) from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    _write(fd, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": shlex.join(sys.argv)})
    return fd


@contextlib.contextmanager
def hold(out: str | Path | None) -> Iterator[None]:
    """Hold ``out``'s lock for the body: global rank 0 only, nothing without a folder, re-entrant."""
    if out is None or fcntl is None or global_rank() != 0:
        yield
        return
    key = Path(out).resolve()
    if key in _held:
        _held[key][1] += 1
    else:
        _held[key] = [_acquire(Path(out)), 1]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            os.close(_held.pop(key)[0])  # closing the last handle releases the flock


def one_writer(train_fn):
    """Decorate ``train``: its body runs holding the lock of its ``out_dir`` (see the module docstring)."""
    signature = inspect.signature(train_fn)

    @functools.wraps(train_fn)
    def locked(*args, **kwargs):
        with hold(signature.bind(*args, **kwargs).arguments.get("out_dir")):
            return train_fn(*args, **kwargs)

    return locked


def heartbeat(out: Path | None, state: TrainState, images_per_second: float, minutes: dict[str, float]) -> None:
    """At a logged step: rewrite the lock file with the run's step, images, training speed and
    minutes (``{"train_minutes": ..., "eval_minutes": ...}``), and the time."""
    held = _held.get(Path(out).resolve()) if out is not None else None
    if held is None:
        return
    facts = _facts(held[0])
    facts.update(preset=state.config.preset, step=state.step, images_per_second=round(images_per_second, 1),
                 images_seen=state.step * state.config.batch_size * ddp.world_size(),
                 **{k: round(v, 2) for k, v in minutes.items()}, logged=time.time())
    _write(held[0], facts)


def probe(out: str | Path) -> dict | None:
    """The holder's facts if a process is training ``out`` now (``{}`` if it has not said yet), else None.

    Reads only: no lock file, no run in progress.
    """
    path = Path(out) / LOCK
    if fcntl is None or not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _facts(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
