"""``RUN/run.json``: how each training session of a run was started, on what, and what it changed.

What a PyTorch user looks for when a run's numbers surprise them, written by rank 0 when a
``train`` call starts (a fresh run or a resume), one entry per session, oldest first:

    command     the command line (``python -m ipykernel_launcher ...`` when called from a notebook)
    git         the commit of this checkout (``+ changes`` when files differ from it), or "not a git checkout"
    python, torch        their versions
    cpu         the CPU's model and kind: "AVX-512 BF16" (bf16 units: bf16 autocast by default),
                "AVX-512", "AVX2" or "other" (from /proc/cpuinfo's flags; "unknown" elsewhere)
    threads     torch's intra-op threads; ``device`` and ``precision`` what the session trained on
    step        the step the session started at; ``world_size`` its processes

``config`` is the configuration training now, and ``changes`` every field a resume changed, at
the step where it changed: ``{"step": 160, "field": "epochs", "old": 2, "new": 4}``.  TensorBoard
shows the same: the HParams tab the configuration now, and a ``config/changes`` text at that step
(facegan/runlog.py).  The file is replaced atomically; an unreadable one is started afresh.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import distributed as ddp
from .config import PROJECT_ROOT, Config
from .device import training_precision

RECORD = "run.json"


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """This checkout's commit, with ``+ changes`` when tracked files differ from it; or "not a git checkout"."""
    try:
        run = dict(cwd=root, capture_output=True, text=True, timeout=10)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run)
        if commit.returncode != 0:
            return "not a git checkout"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
        return commit.stdout.strip() + (" + changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):  # no git installed, or it hung
        return "not a git checkout"


def cpu_kind(cpuinfo: str | None = None) -> str:
    """The CPU's model and the widest vector units training can use, from /proc/cpuinfo."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return f"{platform.processor() or platform.machine()} (unknown)"
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    kind = ("AVX-512 BF16" if "avx512_bf16" in flags or "amx_bf16" in flags else "AVX-512" if "avx512f" in flags
            else "AVX2" if "avx2" in flags else "other")
    return f"{fields.get('model name', platform.machine())} ({kind})"


def session(cfg: Config, device: torch.device, step: int) -> dict:
    """This process: command, code, versions, machine, and where the session starts."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step,
            "command": shlex.join([Path(sys.executable).name, *sys.argv]), "git": git_commit(),
            "python": platform.python_version(), "torch": torch.__version__, "cpu": cpu_kind(),
            "threads": torch.get_num_threads(), "device": str(device) + (f" ({gpu})" if gpu else ""),
            "precision": training_precision(cfg, device), "world_size": ddp.world_size()}


def config_changes(old: dict, new: dict, step: int) -> list[dict]:
    """The fields whose values differ between two configurations (as ``Config.to_dict`` gives them)."""
    return [{"step": step, "field": k, "old": old.get(k), "new": v}
            for k, v in new.items() if _plain(old.get(k)) != _plain(v)]


def _plain(value):
    return list(value) if isinstance(value, tuple) else value  # JSON has no tuples: (0.9, 0.9) reads back a list


def write_record(out: Path | None, cfg: Config, device: torch.device, step: int) -> list[dict]:
    """Add this session to ``out/run.json`` (rank 0; nothing without a folder); return the fields it changed.

    A fresh run (step 0) starts the file afresh; a resume compares its configuration with the
    one the run trained with so far.
    """
    if out is None or not ddp.is_main():
        return []
    path = Path(out) / RECORD
    record = {}
    if step > 0 and path.is_file():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
    new = json.loads(json.dumps(cfg.to_dict()))  # as JSON stores it
    changes = config_changes(record["config"], new, step) if "config" in record else []
    record = {"sessions": [*record.get("sessions", []), session(cfg, device, step)],
              "changes": [*record.get("changes", []), *changes], "config": new}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return changes
