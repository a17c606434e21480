"""The fence around a learner's code while ``python helpers.py grade`` runs it.

Two layers, both in the grading subprocess: resource limits set before it starts (``limit_resources``:
address space, file size, no core dumps) and, once its own imports are done, an audit hook
(``confine_writes``) that refuses writing, creating, deleting, renaming or changing files outside the
submission's scratch folder, and starting other programs.  The parent adds a wall-clock limit and kills the
subprocess's whole process group when it runs over.

This stops the accidents a class produces (an infinite loop, a huge tensor, a cell that cleans up with
``shutil.rmtree`` or saves into the project) but it is no security boundary: code that calls C directly
(ctypes, a compiled extension) goes around the hook, and reading files or opening sockets is not stopped.
For untrusted classes run the grader in a container (docs/teaching.md).
"""
from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

#: Audit events that change one path (the first argument) -> what the refusal calls it.
_PATH_EVENTS = {"os.remove": "deleting", "os.rmdir": "deleting", "shutil.rmtree": "deleting", "os.mkdir": "creating",
                "os.chmod": "changing", "os.chown": "changing", "os.truncate": "truncating", "os.utime": "touching",
                "os.chflags": "changing"}
#: Audit events that start another program.
_SPAWN_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "pty.spawn", "os.startfile")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Refused(PermissionError):
    """The learner's code tried something the grader does not allow."""


def limit_resources(memory_gb: float, file_mb: int = 256) -> None:
    """Cap this process (and its children): ``memory_gb`` of address space, files of ``file_mb``, no core files.

    Meant as a ``preexec_fn``: a huge allocation then fails with MemoryError (or torch's "can't allocate memory")
    inside the learner's cell instead of taking the machine down."""
    cap = int(memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb * 2**20, file_mb * 2**20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _inside(path, roots: tuple[str, ...]) -> bool:
    if isinstance(path, int):  # a file descriptor, opened before
        return True
    real = os.path.realpath(os.fsdecode(path))
    return any(real == root or real.startswith(root + os.sep) for root in roots)


def confine_writes(root: str | Path, also: tuple[str, ...] = ("/dev/null",)) -> None:
    """From now on, refuse (``Refused``) any write, creation, deletion or change of a path outside ``root`` (and
    ``also``), and any new program.  Reading stays allowed: the checks read the data set and the project."""
    roots = (os.path.realpath(root), *also)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
            if path is not None and writing and not _inside(path, roots):
                raise Refused(f"grading: writing {os.fsdecode(path)!r} is refused: outside the submission's folder")
        elif event in _PATH_EVENTS and args and args[0] is not None and not _inside(args[0], roots):
            if event == "os.mkdir" and os.path.isdir(os.fsdecode(args[0])):
                return  # mkdir(exist_ok=True) of a folder that is there changes nothing
            raise Refused(f"grading: {_PATH_EVENTS[event]} {os.fsdecode(args[0])!r} is refused: outside the "
                          "submission's folder")
        elif event in ("os.symlink", "os.link") and not _inside(args[1], roots):  # (target, new link, ...)
            raise Refused(f"grading: linking {os.fsdecode(args[1])!r} is refused: outside the submission's folder")
        elif event == "os.rename" and not (_inside(args[0], roots) and _inside(args[1], roots)):
            raise Refused(f"grading: renaming {os.fsdecode(args[0])!r} is refused: outside the submission's folder")
        elif event in _SPAWN_EVENTS:
            raise Refused(f"grading: starting another program ({event}) is refused")

    sys.addaudithook(hook)
