"""The fence around a learner's code while ``python helpers.py grade`` runs it, inside the grading subprocess.

Three layers, from the strongest:

- **Landlock** (facegan/landlock.py), where the kernel has it: once the worker's own imports are done, the
  process may read only the Python install, the project's package and the data, write only in its scratch
  folder (by any route: ``dir_fd``, ``mkfifo``, sqlite, torch's C++ writers, ctypes), execute nothing, open
  no TCP connection and signal no process outside itself.
- **Resource limits** set before it starts (``limit_resources``): address space, file size, no core dumps,
  and a process count where the cgroups of facegan/jail.py are not available.
- An **audit hook** (``confine``), the second line where Landlock is missing: it refuses writing, creating,
  deleting, renaming or linking a path outside the scratch folder (``dir_fd`` resolved), reading the
  submissions and the grader's own folder, sqlite outside, ctypes, and starting programs.  It sees only what
  Python reports: C code (a compiled extension, torch's writers) goes around it.

What each layer stops, and what stays trusted, is the table in docs/teaching.md.
"""
from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

#: Audit events that change one path (args: path, ..., dir_fd last) -> what the refusal calls it.
_PATH_EVENTS = {"os.remove": "deleting", "os.rmdir": "deleting", "shutil.rmtree": "deleting", "os.mkdir": "creating",
                "os.chmod": "changing", "os.chown": "changing", "os.truncate": "truncating", "os.utime": "touching",
                "os.chflags": "changing", "sqlite3.connect": "opening a database at"}
#: Audit events that start another program, or call C directly.  (Forks are left to the cgroup's pids.max:
#: a forked process stays in the same fence.)
_REFUSED_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "pty.spawn",
                   "os.startfile", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Refused(PermissionError):
    """The learner's code tried something the grader does not allow."""


def limit_resources(memory_gb: float, file_mb: int = 256, processes: int | None = None) -> None:
    """Cap this process (and its children): ``memory_gb`` of address space each, files of ``file_mb``, no core
    files and, when given, ``processes`` processes and threads for this user (where no cgroup counts them).

    Meant as a ``preexec_fn``: a huge allocation then fails with MemoryError (or torch's "can't allocate memory")
    inside the learner's cell instead of taking the machine down."""
    cap = int(memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb * 2**20, file_mb * 2**20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if processes is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))


def _real(path, dir_fd: int | None = None) -> str:
    path = os.fsdecode(path)
    if dir_fd is not None and dir_fd >= 0 and not os.path.isabs(path):
        path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
    return os.path.realpath(path)


def _under(real: str, roots: tuple[str, ...]) -> bool:
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def confine(root: str | Path, hidden: tuple[str, ...] = (), also: tuple[str, ...] = ("/dev/null",)) -> None:
    """From now on refuse (``Refused``): any write, creation, deletion or change of a path outside ``root`` (and
    ``also``); reading under ``hidden`` (other submissions, the grader's folder) except inside ``root``; sqlite
    outside ``root``; ctypes; and any new program.  Reading the rest stays allowed."""
    roots = (os.path.realpath(root), *also)
    hidden = tuple(os.path.realpath(h) for h in hidden)

    def outside(path, dir_fd=None) -> bool:
        return not isinstance(path, int) and not _under(_real(path, dir_fd), roots)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if path is None or isinstance(path, int):
                return
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
            real = _real(path)
            if writing and not _under(real, roots):
                raise Refused(f"grading: writing {os.fsdecode(path)!r} is refused: outside the submission's folder")
            if _under(real, hidden) and not _under(real, roots):
                raise Refused(f"grading: reading {os.fsdecode(path)!r} is refused: another submission or the "
                              "grader's files")
        elif event in _PATH_EVENTS and args and args[0] is not None:
            dir_fd = args[-1] if len(args) > 1 and isinstance(args[-1], int) else None
            if outside(args[0], dir_fd):
                if event == "os.mkdir" and os.path.isdir(_real(args[0], dir_fd)):
                    return  # mkdir(exist_ok=True) of a folder that is there changes nothing
                raise Refused(f"grading: {_PATH_EVENTS[event]} {os.fsdecode(args[0])!r} is refused: outside the "
                              "submission's folder")
        elif event in ("os.symlink", "os.link") and outside(args[1], args[-1] if event == "os.symlink" else args[3]):
            raise Refused(f"grading: linking {os.fsdecode(args[1])!r} is refused: outside the submission's folder")
        elif event == "os.rename" and (outside(args[0], args[2]) or outside(args[1], args[3])):
            raise Refused(f"grading: renaming {os.fsdecode(args[0])!r} is refused: outside the submission's folder")
        elif event.startswith(_REFUSED_EVENTS):
            raise Refused(f"grading: {event} is refused (no other programs or C calls while grading)")

    sys.addaudithook(hook)
