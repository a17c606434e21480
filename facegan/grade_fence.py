"""Run one submission's worker jailed, read its records off a pipe, and leave nothing of it running.

``Fence.probe`` finds, once per batch, which of the kernel's mechanisms this machine lets the grader use
(Landlock, cgroups, a subreaper, a network namespace) and says which are missing, once, with where to find
the container command for such machines (docs/teaching.md).  ``run_jailed`` starts the worker in its own
session and cgroups, sends its settings on stdin, and reads its JSON records from a pipe whose write end only
the worker holds: no file the learner could write or predict is read back.  It returns when the worker says
``done``, ends, or runs out of time, and then kills the worker's session, its cgroups and every orphan it left.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import jail, landlock
from .sandbox import limit_resources

MAX_RECORD_BYTES = 1 << 20  # what the grader reads from one worker; the rest is dropped
DONE_GRACE_S = 5.0  # how long a worker that said "done" may take to exit before it is killed


@dataclass
class Fence:
    """What this machine lets the grader use around each submission."""

    landlock: int = 0
    cgroups: tuple[str, ...] = ()
    subreaper: bool = False
    netns: bool = False

    @classmethod
    def probe(cls, say=print) -> Fence:
        """Try each mechanism; tell ``say`` what is used and, once, what is missing."""
        stale = jail.sweep_stale()
        if stale:
            say(f"grading fence: killed what was left of an interrupted batch ({len(stale)} cgroup(s))")
        probe = jail.Jail(f"{jail.PREFIX}{os.getpid()}-probe", 2**30)
        fence = cls(landlock.abi(), tuple(probe.limits()), jail.become_subreaper(), _netns_works())
        probe.kill_all()
        used = [landlock.describe(fence.landlock)] if fence.landlock else []
        used += [f"cgroups ({', '.join(fence.cgroups)})"] if fence.cgroups else []
        used += ["subreaper"] * fence.subreaper + ["network namespace"] * fence.netns + ["audit hook"]
        say("grading fence: " + "; ".join(used))
        missing = [m for m, ok in (("Landlock (the kernel's write/read fence)", fence.landlock),
                                   ("writable cgroups (whole-submission memory cap and fork limit)", fence.cgroups),
                                   ("a subreaper", fence.subreaper),
                                   ("a network namespace (no network)", fence.netns)) if not ok]
        if missing:
            say(f"grading fence: unavailable on this machine: {'; '.join(missing)}. For a class you do not trust, "
                "grade in the container of docs/teaching.md ('Grading untrusted classes').")
        return fence

    def memory_in_cgroup(self) -> bool:
        return any(c.endswith(("memory.max", "memory.limit_in_bytes")) for c in self.cgroups)

    def tasks_in_cgroup(self) -> bool:
        return any(c.endswith("pids.max") for c in self.cgroups)


def _netns_works() -> bool:
    try:
        return subprocess.run(["true"], preexec_fn=jail.enter_network_namespace, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _user_tasks() -> int:
    """Processes and threads this user runs now (RLIMIT_NPROC counts them all, not just one submission's)."""
    uid, count = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                continue
    return count


def _preexec(cage: jail.Jail, fence: Fence, memory_gb: float, processes: int | None):
    def setup() -> None:  # in the forked child, before exec: what it sets, every descendant inherits
        cage.join()
        jail.die_with_parent()
        if fence.netns:
            jail.enter_network_namespace()
        limit_resources(memory_gb, processes=processes)
    return setup


def _read_records(read_fd: int, proc: subprocess.Popen, deadline: float) -> tuple[list, str]:
    """Records from the pipe until ``done``, the end of the pipe and of the worker, or the deadline; and which
    of "done", "ended", "timeout" it was."""
    buf, records, total = b"", [], 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return records, "timeout"
        ready, _, _ = select.select([read_fd], [], [], min(left, 0.5))
        if not ready:
            if proc.poll() is not None and not select.select([read_fd], [], [], 0.5)[0]:
                return records, "ended"  # the worker is gone, a process it left holds the pipe open
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                return records, "timeout"
            return records, "ended"
        total += len(chunk)
        buf += chunk if total <= MAX_RECORD_BYTES else b""
        *lines, buf = buf.split(b"\n")
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                records.append(None)  # counted as a record off the schema
            if records[-1] == {"kind": "done"}:
                return records, "done"


def run_jailed(cmd: list[str], settings: dict, cwd: Path, log: Path, env: dict, memory_gb: float,
               timeout_s: float, fence: Fence) -> dict:
    """Run ``cmd`` in ``cwd`` jailed; return {records, ending, returncode, oom, seconds, timeout_s}."""
    start = time.perf_counter()
    cage = jail.Jail(f"{jail.PREFIX}{os.getpid()}-{cwd.name}", int(memory_gb * 2**30))
    processes = None if fence.tasks_in_cgroup() or os.getuid() == 0 else _user_tasks() + jail.MAX_TASKS
    keep = jail.descendants(os.getpid())
    read_fd, write_fd = os.pipe()
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=out, stderr=out,
                                    start_new_session=True, pass_fds=(write_fd,),
                                    preexec_fn=_preexec(cage, fence, memory_gb, processes))
        child_fd, write_fd = write_fd, os.close(write_fd) or -1  # pass_fds keeps the number in the child
        try:
            proc.stdin.write((json.dumps({**settings, "result_fd": child_fd}) + "\n").encode())
            proc.stdin.close()
        except OSError:
            pass  # the worker is already gone: its ending says why
        records, ending = _read_records(read_fd, proc, time.monotonic() + timeout_s)
        if ending == "done":
            try:
                proc.wait(DONE_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        oom = _end(proc, cage, keep)
        return {"records": records, "ending": ending, "returncode": proc.returncode, "oom": oom,
                "seconds": round(time.perf_counter() - start, 1), "timeout_s": timeout_s}
    finally:
        cage.kill_all()
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def _end(proc: subprocess.Popen, cage: jail.Jail, keep: set[int]) -> bool:
    """Kill everything the submission started, all at once where a cgroup holds it, then every process below
    the grader but those it had before (the worker's tree, and the orphans handed to the subreaper), then the
    worker's session; reap the worker.  Return whether the kernel had killed one of them for going over the
    submission's memory cap."""
    oom = cage.oom_killed()
    cage.kill_all()
    jail.kill_adopted(keep)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    jail.kill_adopted(keep)
    return oom
