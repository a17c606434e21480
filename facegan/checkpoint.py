"""Checkpoints and export: save a run atomically, load it back without running any code.

A checkpoint holds everything needed to resume exactly, and nothing more: the
configuration, both models, both optimisers, the EMA copy, the step, the history, the
fixed latents and every random generator's state.  Sample grids are PNG files in the
run folder, so a checkpoint's size does not grow with the run.  It is written to a temporary file and
renamed into place, and the checkpoint it replaces is kept as ``checkpoint.prev.pt``,
so a crash at any moment leaves at least one good checkpoint.

Loading uses ``torch.load(weights_only=True)``: only tensors and plain Python values
(dicts, lists, tuples, numbers, strings) are accepted.  A full pickle can execute
arbitrary code when loaded, so a ``.pt`` file that someone shares could otherwise run
anything on your machine; here such a file is refused with ``CheckpointError``.
"""
from __future__ import annotations

import codecs
import os
import pickle
import random
import re
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import distributed as ddp
from .config import Config
from .models import build_models
from .state import TrainState, bare, make_state, refresh_batchnorm

CHECKPOINT, PREVIOUS = "checkpoint.pt", "checkpoint.prev.pt"
_np_core = getattr(np, "_core", None) or np.core  # NumPy 2 renamed np.core to np._core
NUMPY_ARRAY_GLOBALS = [_np_core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class CheckpointError(ValueError):
    """A checkpoint or generator file is unreadable, corrupt or unsafe; the message names the file."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile`` and DDP (whose state-dict keys carry a prefix)."""
    return bare(model)


def _rng_states() -> dict:
    # NumPy's state holds an ndarray, which weights_only loading does not accept: store its
    # key vector as a tensor instead.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)),
                                                      int(pos), int(has_gauss), float(cached)],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_states(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(tuple(v) if isinstance(v, list) else v for v in rng["python"]))
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _atomic_save(obj: dict, path: Path, keep_previous: bool = False) -> Path:
    """Write ``obj`` to a temp file, flush it to disk, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    if keep_previous and path.exists():
        os.replace(path, path.with_name(PREVIOUS))  # between the two renames, the fallback exists
    os.replace(tmp, path)
    return path


def save_checkpoint(state: TrainState, path: str | Path, keep_previous: bool = True) -> Path:
    """Write everything needed to resume, atomically; the checkpoint replaced becomes the fallback.

    In a distributed run every rank must call it (it gathers each rank's random state) and
    rank 0 alone writes.
    """
    rngs = ddp.gather(_rng_states())  # one process: [its own]
    if not ddp.is_main():
        return Path(path)
    ckpt = {
        "config": state.config.to_dict(),
        "D": unwrap(state.D).state_dict(), "G": unwrap(state.G).state_dict(),
        "d_opt": state.d_opt.state_dict(), "g_opt": state.g_opt.state_dict(),
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
        "steps_per_epoch": state.steps_per_epoch,  # a resume must see the same epochs (batch size, data)
        "history": state.history, "fixed_z": state.fixed_z.cpu(),
        "rng": rngs[0], "world_size": len(rngs),  # a resume must use the same number of processes
        "ada": state.ada.state_dict() if state.ada is not None else None,
        # A time-budgeted run's length in steps, once fixed (RunClock.plan_steps), and the limits it was fixed for.
        "horizon": {"steps": state.total_steps, "for": _limits(state.config)} if state.horizon_fixed else None,
    }
    if len(rngs) > 1:
        ckpt["rng_per_rank"] = rngs  # each rank resumes its own latents and noise
    return _atomic_save(ckpt, Path(path), keep_previous)


#: What a generator path may be, for the one-line refusal of anything else.
EXPECTED = ("expected a run's checkpoint.pt, an exported generator .pt or a model folder "
            "(model.safetensors + config.json)")
#: The first bytes of files that are certainly not torch.save output, and what to call them.
OTHER_FORMATS = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
                 b"{": "a JSON file", b"\x08\x01\x12": "an ONNX model"}


def not_a_torch_file(path: Path) -> str | None:
    """What ``path`` is when its first bytes show that ``torch.save`` did not write it; None if it may have.

    torch.load reports any other file (a README, a PNG) as an unsafe pickle, in six lines that
    suggest ``weights_only=False``: the wrong advice for a wrong path.  torch.save writes a zip
    holding ``data.pkl`` (PyTorch >= 1.6) or, earlier, a pickle (first byte 0x80).  A zip too
    damaged to list is left to torch.load, whose failure reads as a truncated checkpoint.
    """
    with open(path, "rb") as f:
        head = f.read(16)
    if not head or head[:1] == b"\x80":
        return None
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        return None if any(n.rpartition("/")[2] == "data.pkl" for n in names) else "a zip archive"
    if len(head) >= 10 and head[8:10] == b'{"' and int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors file"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut at byte 16 is not an error
        text = b"\x00" not in head
    except UnicodeDecodeError:
        text = False
    return next((kind for magic, kind in OTHER_FORMATS.items() if head.startswith(magic)),
                "a text file" if text else "a binary file of another kind")


def _limits(cfg: Config) -> list:
    return [cfg.epochs, cfg.max_steps, cfg.max_minutes]


def read_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint or exported generator safely, or raise an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: train first (or check the path)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint; {_fallback(path)}")
    kind = not_a_torch_file(path)
    if kind is not None:
        in_folder = all((path.parent / name).is_file() for name in ("model.safetensors", "config.json"))
        raise CheckpointError(f"{path} is {kind}, not a checkpoint: "
                              + (f"pass its model folder, {path.parent}" if in_folder else EXPECTED))
    try:
        # Checkpoints written before safe loading kept NumPy's random state as an array: allow
        # exactly the NumPy pieces that rebuild a plain array, nothing that can run code.
        with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" in str(e).lower():
            raise CheckpointError(
                f"{path} was refused: it holds Python objects beyond tensors and plain values, and "
                "loading those could run code. Load only files you trust, re-exported by this "
                "project's train or export.") from e
        raise CheckpointError(f"{path} is corrupt ({error_gist(e)}); {_fallback(path)}") from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({error_gist(e)}); {_fallback(path)}") from e
    if not isinstance(ckpt, dict) or "config" not in ckpt or not isinstance(ckpt.get("G"), dict):
        raise CheckpointError(f"{path} is not a checkpoint or generator of this project "
                              "(it holds no configuration and generator weights)")
    try:
        ckpt["config"] = Config.from_dict(ckpt["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} holds an invalid configuration: {e}") from e
    return ckpt


def error_gist(error: BaseException, limit: int = 100) -> str:
    """The error's type and its first sentences up to ``limit`` characters: whole sentences (or, for
    one longer sentence, whole words and "..."), never a word cut in two."""
    lines = str(error).strip().splitlines()
    sentences = re.split(r"(?<=[.!?])\s+", lines[0]) if lines else []
    text = sentences[0] if sentences else "no message"
    for more in sentences[1:]:
        if len(text) + 1 + len(more) > limit:
            break
        text += " " + more
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return f"{type(error).__name__}: {text}"


def _fallback(path: Path) -> str:
    """What to do about an unreadable file: the run's previous checkpoint only where there is one."""
    previous = path.with_name(PREVIOUS)
    if path.name == CHECKPOINT and previous.is_file():
        return f"use the previous checkpoint, {previous} (--resume falls back to it by itself)"
    if path.name in (CHECKPOINT, PREVIOUS):
        return "train again"
    return "write it again (train, or export it again from its run's checkpoint)"


def newest_checkpoint(out: str | Path) -> tuple[dict, Path]:
    """The newest readable checkpoint of a run folder: ``checkpoint.pt``, else the previous one.

    The one place that decides what a resume starts from (the command line and ``train`` both
    call it); it says so when it falls back.  Neither file readable: ``CheckpointError``, or
    ``FileNotFoundError`` when the folder holds no checkpoint at all.
    """
    out = Path(out)
    primary, previous = out / CHECKPOINT, out / PREVIOUS
    if not primary.is_file() and not previous.is_file():
        raise FileNotFoundError(f"--resume given but there is no checkpoint in {out}; drop --resume to start")
    try:
        return read_checkpoint(primary), primary
    except (CheckpointError, FileNotFoundError) as e:
        if not previous.is_file():
            raise
        try:
            ckpt = read_checkpoint(previous)
        except CheckpointError as e_prev:
            raise CheckpointError(f"no readable checkpoint in {out}: {CHECKPOINT} and {PREVIOUS} are both "
                                  "unreadable or not checkpoints. Start again in another --out folder "
                                  "(or without --resume)") from e_prev
        if ddp.is_main() and primary.is_file():  # kept for a look, and out of the way of the next save's rename
            os.replace(primary, out / "checkpoint.corrupt.pt")
        print(f"{e}\nresuming from the previous checkpoint {previous} (step {ckpt['step']}) instead; the "
              f"unreadable file is now {out / 'checkpoint.corrupt.pt'}")
        return ckpt, previous


class Checkpointer:
    """The one path that writes a run's checkpoint; ``step`` is the step of the checkpoint on disk.

    It never writes weights that are not finite, so after a NaN the last good checkpoint stays.
    Without a run folder (``out=None``) it saves nothing.
    """

    def __init__(self, out: Path | None, step_on_disk: int):
        self.out, self.step = out, step_on_disk

    def save(self, state: TrainState) -> bool:
        """Write ``state`` unless there is no folder, nothing new, or a weight is NaN/Inf."""
        if self.out is None or state.step == self.step or not weights_finite(state):
            return False
        save_checkpoint(state, self.out / CHECKPOINT)  # distributed: every rank takes part, rank 0 writes
        self.step = state.step
        return True


def weights_finite(state: TrainState) -> bool:
    return all(torch.isfinite(p).all() for net in (state.D, state.G) for p in net.parameters())


def load_checkpoint(checkpoint: str | Path | dict, state: TrainState | None = None,
                    device: torch.device | str | None = None) -> TrainState:
    """Restore a run from a path or an already-read checkpoint (``read_checkpoint``).

    Without ``state``, models are rebuilt from the saved configuration.
    """
    ckpt = checkpoint if isinstance(checkpoint, dict) else read_checkpoint(checkpoint)
    if "d_opt" not in ckpt:
        raise CheckpointError("this is an exported generator, not a training checkpoint: "
                              "load it with load_generator, or resume from the run's checkpoint.pt")
    cfg = ckpt["config"]
    if state is None:
        state = make_state(cfg, steps_per_epoch=1, device=device)
        state.total_steps = ckpt["step"]
    unwrap(state.D).load_state_dict(ckpt["D"])
    unwrap(state.G).load_state_dict(ckpt["G"])
    state.d_opt.load_state_dict(ckpt["d_opt"])
    state.g_opt.load_state_dict(ckpt["g_opt"])
    if state.ema is not None and ckpt["ema"] is not None:
        state.ema.load_state_dict(ckpt["ema"])
    state.step, state.epoch, state.batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
    state.history = ckpt["history"]  # (checkpoints before sample grids became PNG files also hold "samples")
    state.fixed_z = ckpt["fixed_z"].to(state.device)
    if state.ada is not None and ckpt.get("ada") is not None:
        state.ada.load_state_dict(ckpt["ada"])
    horizon = ckpt.get("horizon")
    if horizon and horizon["for"] == _limits(state.config):  # new limits (training longer): plan again
        state.total_steps, state.horizon_fixed = horizon["steps"], True
    per_rank = ckpt.get("rng_per_rank")  # distributed runs: each rank takes back its own stream
    _set_rng_states(per_rank[ddp.rank()] if per_rank and ddp.active() else ckpt["rng"])
    return state


def export_generator(state: TrainState, path: str | Path) -> Path:
    """Save just the generator to show or evaluate (the EMA copy when there is one), in half
    precision: a quarter of a full checkpoint's size, and the images are the same to the eye."""
    weights = {k: (v.half() if v.is_floating_point() else v) for k, v in unwrap(state.sampler).state_dict().items()}
    return _atomic_save({"config": state.config.to_dict(), "G": weights, "step": state.step,
                         "history": state.history}, Path(path))


def load_generator(path: str | Path, device: torch.device | str = "cpu",
                   ema: bool = True) -> tuple[nn.Module, Config]:
    """The generator of a checkpoint or an exported ``.pt`` file (the EMA copy if any, unless ``ema=False``:
    G's own weights, to measure what the EMA adds), in eval mode.

    ``facegan.export.load_generator`` takes a model folder as well (what the front ends use)."""
    ckpt = read_checkpoint(path)
    cfg = ckpt["config"]
    _, G = build_models(cfg)
    own_weights = not ema and ckpt.get("ema") is not None  # a run's checkpoint, G's own weights asked for
    if ckpt.get("ema") is not None and not own_weights:
        weights = {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    else:
        weights = ckpt["G"]
    try:
        G.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the generator weights do not fit its configuration "
                              f"({str(e).splitlines()[0]})") from e
    if cfg.ema_decay and not own_weights:
        # An EMA generator's BatchNorm statistics, averaged with its weights, are not its own:
        # re-estimate them (files exported since this fix already hold the re-estimated ones).
        refresh_batchnorm(G, cfg)
    return G.to(device).eval(), cfg
