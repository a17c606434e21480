"""Landlock (Linux 5.13+): the kernel's own fence around a learner's grading process, reached with ctypes.

A process that calls ``restrict`` can from then on only read the paths it lists as readable and only write,
create, delete, rename or link inside the paths it lists as writable, by any route the kernel sees: ``open``
with or without ``dir_fd``, ``mkfifo``/``mknod``, sqlite, torch's C++ writers, ctypes ``fopen``.  With ABI 4+
it can neither connect nor bind TCP sockets, and with ABI 6+ it can neither signal processes outside its own
domain (``os.kill(os.getppid(), SIGKILL)`` fails) nor reach abstract unix sockets.  The restriction is
inherited by every child and cannot be lifted.  Where the kernel has no Landlock, ``abi()`` says 0 and the
grader says so once at the start (facegan/grade.py).  Reference: https://docs.kernel.org/userspace-api/landlock.html
"""
from __future__ import annotations

import ctypes
import os
import struct

# Syscall numbers: the same on every architecture (they were added after the tables were unified).
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION, _RULE_PATH_BENEATH, _PR_SET_NO_NEW_PRIVS = 1, 1, 38

# Filesystem rights (include/uapi/linux/landlock.h) and the ABI that introduced each.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR, MAKE_REG = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
#: Rights that may be granted on a file (the rest only make sense on a folder).
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
READ = READ_FILE | READ_DIR


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def abi() -> int:
    """The kernel's Landlock ABI version: 0 when it has none (or it is disabled)."""
    try:
        version = _libc().syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(int(version), 0)


def _check(value: int, what: str) -> int:
    if value < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock {what}: {os.strerror(err)}")
    return value


def restrict(readable: list[str], writable: list[str], version: int | None = None) -> int:
    """Confine this process (and its future children) for good: read only under ``readable`` and ``writable``,
    change files only under ``writable``, execute nothing, no TCP (ABI 4+), no signals or abstract sockets out
    of the domain (ABI 6+).  Paths that do not exist are skipped.  Returns the ABI used (0: nothing done)."""
    version = abi() if version is None else version
    if version < 1:
        return 0
    libc = _libc()
    fs = _FS_BY_ABI.get(version, _FS_BY_ABI[5])
    net = NET_BIND_TCP | NET_CONNECT_TCP if version >= 4 else 0
    scope = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if version >= 6 else 0
    attr = struct.pack("QQQ", fs, net, scope)[:8 if version < 4 else 16 if version < 6 else 24]
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _check(libc.syscall(_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)),
                     "create_ruleset")
    try:
        grants = [(p, READ) for p in readable] + [(p, fs & ~EXECUTE) for p in writable]
        for path, rights in grants:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a path this machine does not have
            try:
                if not os.path.isdir(path):
                    rights &= _FILE_RIGHTS
                rule = ctypes.create_string_buffer(struct.pack("=Qi", rights & fs, fd), 12)
                _check(libc.syscall(_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH), rule,
                                    ctypes.c_uint32(0)), f"add_rule {path}")
            finally:
                os.close(fd)
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        _check(libc.syscall(_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)), "restrict_self")
    finally:
        os.close(ruleset)
    return version


def describe(version: int) -> str:
    """What Landlock version ``version`` enforces, in a phrase for the grader's start-up line."""
    if version < 1:
        return "Landlock: unavailable (this kernel has none)"
    extra = (", no TCP" if version >= 4 else "") + (", no signals to the grader" if version >= 6 else "")
    return f"Landlock ABI {version} (writes only in the scratch folder, reads only the Python install{extra})"
