"""Every process a submission starts lives and dies with it: cgroups, a subreaper and a network namespace.

The grader (facegan/grade.py) starts each submission's worker in its own session and, where it may:

- a **cgroup** per submission (v2 where its controllers are delegated, else v1's ``memory`` and ``pids``
  hierarchies): the memory cap is for the submission as a whole (``memory.max`` / ``memory.limit_in_bytes``),
  forks are limited (``pids.max``), and at the end every process in it is killed (``cgroup.kill``, or SIGKILL
  to each member until none is left), ``fork()`` + ``setsid()`` children included;
- a **subreaper** (``prctl(PR_SET_CHILD_SUBREAPER)``) in the grader itself: a process whose parent died is
  handed to the grader rather than to init, so it can still be found and killed when no cgroup is writable;
- a **network namespace** of its own (``unshare(CLONE_NEWNET)``, inside a user namespace when not root):
  no interface but a loopback that is down, so no connection leaves.

``Jail.probe()`` says which of these this machine allows; the grader prints it once at the start.
"""
from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path

_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER, _CLONE_NEWNET, _CLONE_NEWUSER = 1, 36, 0x40000000, 0x10000000
PREFIX = "facegan-grade-"  # cgroup names: PREFIX + the grader's pid + "-" + the learner
MAX_TASKS = 512  # processes and threads of one submission: torch's threads fit, a fork bomb does not


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (Linux 3.4+); False where it cannot."""
    try:
        return _libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent() -> None:
    """In a freshly forked child: be killed when the grader dies (a grader killed mid-batch leaves no worker)."""
    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def enter_network_namespace() -> None:
    """In a freshly forked child: a network namespace of its own (a user namespace first when not root)."""
    libc, uid, gid = _libc(), os.getuid(), os.getgid()
    if uid == 0 and libc.unshare(_CLONE_NEWNET) == 0:
        return
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) is not permitted here")
    # Map our own ids, so files keep their owner and the process keeps its rights on them.
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


def _mounts() -> dict[str, str]:
    """Mount points of cgroup hierarchies: 'unified' for v2, else the v1 controller name."""
    found = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        fstype, options = fields[sep + 1], fields[sep + 3].split(",") if len(fields) > sep + 3 else []
        if fstype == "cgroup2":
            found.setdefault("unified", fields[4])
        elif fstype == "cgroup":
            for controller in ("memory", "pids"):
                if controller in options:
                    found.setdefault(controller, fields[4])
    return found


def _own_paths() -> dict[str, str]:
    """This process's cgroup in each hierarchy (from /proc/self/cgroup)."""
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else ["unified"]:
            own[name] = path
    return own


class Jail:
    """The cgroups of one submission (none where the machine does not let us make them)."""

    def __init__(self, name: str, memory_bytes: int):
        self.dirs: dict[str, Path] = {}
        try:
            mounts, own = _mounts(), _own_paths()
        except (OSError, ValueError):
            return
        for kind, mount in mounts.items():
            parent = Path(mount) / own.get(kind, "/").lstrip("/")
            try:
                path = parent / name
                path.mkdir(exist_ok=True)
                self.dirs[kind] = path
            except OSError:
                continue
        unified = self.dirs.get("unified")
        if unified is not None:
            enabled = set((unified / "cgroup.controllers").read_text().split())
            if "memory" in enabled:
                self._set("unified", "memory.max", memory_bytes)
                self._set("unified", "memory.swap.max", 0)
            if "pids" in enabled:
                self._set("unified", "pids.max", MAX_TASKS)
        self._set("memory", "memory.limit_in_bytes", memory_bytes)
        self._set("pids", "pids.max", MAX_TASKS)

    def _set(self, kind: str, key: str, value: int) -> bool:
        path = self.dirs.get(kind)
        try:
            if path is not None and (path / key).exists():
                (path / key).write_text(str(value))
                return True
        except OSError:
            pass
        return False

    def limits(self) -> list[str]:
        """What this jail enforces, in words."""
        return [f"{kind} {key}" for kind, path in self.dirs.items()
                for key in ("memory.max", "memory.limit_in_bytes", "pids.max", "cgroup.kill") if (path / key).exists()]

    def join(self) -> None:
        """Move the calling process into every cgroup of the jail (run in the child, before exec)."""
        for path in self.dirs.values():
            (path / "cgroup.procs").write_text(str(os.getpid()))

    def members(self) -> set[int]:
        pids = set()
        for path in self.dirs.values():
            try:
                pids |= {int(p) for p in (path / "cgroup.procs").read_text().split()}
            except OSError:
                continue
        return pids

    def oom_killed(self) -> bool:
        """Whether the kernel killed a member for going over the submission's memory cap."""
        for kind, key in (("unified", "memory.events"), ("memory", "memory.oom_control")):
            path = self.dirs.get(kind)
            try:
                lines = (path / key).read_text().splitlines() if path is not None else []
            except OSError:
                continue
            if any(line.startswith("oom_kill ") and int(line.split()[1]) > 0 for line in lines):
                return True
        return False

    def kill_all(self, wait_s: float = 60.0) -> None:
        """SIGKILL every member until none is left (or ``wait_s`` passed), then remove the cgroups."""
        unified = self.dirs.get("unified")
        if unified is not None and (unified / "cgroup.kill").exists():
            (unified / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            members = self.members()
            if not members:
                break
            for pid in members:
                _kill(pid)
            time.sleep(0.05)
        for path in self.dirs.values():
            try:
                path.rmdir()
            except OSError:
                pass  # a zombie not yet reaped keeps it: harmless, and named after the grader's pid


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid``."""
    tree, found, todo = _children_map(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def kill_adopted(keep: set[int], wait_s: float = 60.0) -> set[int]:
    """Kill the descendants of this process (a subreaper) that are not in ``keep``, reap them, and wait until
    they are gone (a process with a large address space takes a while to die): the orphans a submission left
    behind.  Returns the pids killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        left = descendants(os.getpid()) - keep
        if not left:
            break
        for pid in left - killed:
            _kill(pid)
        killed |= left
        time.sleep(0.05)
        for pid in list(killed):
            try:
                os.waitpid(pid, os.WNOHANG)  # only our own children can be reaped; the rest init or we get later
            except ChildProcessError:
                pass
    return killed


def sweep_stale() -> list[str]:
    """Kill and remove the cgroups of graders that are no longer running (one killed mid-batch leaves its
    submission's processes in them); return their names."""
    swept = []
    try:
        mounts, own = _mounts(), _own_paths()
    except (OSError, ValueError):
        return swept
    for kind, mount in mounts.items():
        parent = Path(mount) / own.get(kind, "/").lstrip("/")
        for path in parent.glob(PREFIX + "*") if parent.is_dir() else []:
            pid = path.name[len(PREFIX):].split("-", 1)[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                stale = Jail.__new__(Jail)
                stale.dirs = {kind: path}
                stale.kill_all()
                swept.append(path.name)
    return swept
