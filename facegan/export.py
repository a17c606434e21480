"""The model folder: share a generator the way the field does, and load it back without running code.

    python helpers.py export runs/fast32/checkpoint.pt --out models/fast32 [--dtype fp32] [--onnx]

A model folder holds ``model.safetensors`` (G's weights: the EMA copy with re-estimated BatchNorm
statistics where the run has one; fp16 by default), ``config.json`` (the fields that rebuild G, the
full training configuration, training facts and measured metrics), ``README.md`` (a model card with
Hugging Face front matter), ``samples.png`` (64 faces from seed 0) and, with ``--onnx``,
``generator.onnx``.  Loading one (``load_generator(DIR)``, ``FaceGenerator.from_pretrained(DIR)``)
reads only safetensors and JSON, and refuses a folder that does not fit with a one-line
``CheckpointError``.  The folders shipped in ``assets/models/`` are listed best first by
``shipped_models``.  docs/sharing.md is the guide.
"""
from __future__ import annotations

import argparse
import bisect
import contextlib
import functools
import io
import json
import math
import os
import platform
from pathlib import Path

import torch
import torch.nn as nn

from .card import render_card
from .checkpoint import CheckpointError, error_gist, read_checkpoint, unwrap
from .checkpoint import load_generator as load_checkpoint_generator
from .config import PROJECT_ROOT, Config
from .evaluation import PRDC_KEYS
from .models import build_models, count_parameters

FORMAT, FORMAT_VERSION = "facegan-generator", 1
WEIGHTS, CONFIG_JSON, CARD, SAMPLES, ONNX_FILE = "model.safetensors", "config.json", "README.md", "samples.png", \
    "generator.onnx"
MODELS_DIR = PROJECT_ROOT / "assets" / "models"
#: The Config fields that fix G's architecture: config.json holds them at the top level.
GENERATOR_FIELDS = ("arch", "image_size", "z_size", "g_conv_dim", "n_layers", "g_activation")
RECORD_KEYS = {"format", "format_version", *GENERATOR_FIELDS, "dtype", "parameters", "input", "output",
               "training_config", "training", "metrics"}
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
ONNX_OPSET = 18


# --- writing a folder

def training_facts(ckpt: dict) -> dict:
    """step, images seen by D (step x batch x processes: one real batch per D step) and training seconds
    (of the last history record at or before the step: a kept snapshot's own time, not the run's end)."""
    step = ckpt.get("step")
    if step is None:
        return {}
    world = int(ckpt.get("world_size") or 1)
    facts = {"step": int(step), "images_seen": int(step) * ckpt["config"].batch_size * world, "world_size": world}
    history = ckpt.get("history") or {}
    steps, seconds = history.get("step") or [], history.get("seconds") or []
    i = min(bisect.bisect_right(steps, step), len(seconds)) - 1
    if i >= 0:
        facts["seconds"] = round(float(seconds[i]), 1)
    return facts


def platform_summary() -> str:
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs{gpu}"


def export_model(source: str | Path, out: str | Path, dtype: str = "fp16", onnx: bool = False,
                 metrics: dict | None = None, hardware: str | None = None) -> Path:
    """Write the model folder ``out`` from a checkpoint, an exported ``.pt`` or another model folder.

    ``metrics`` (fid_1k, fid_10k, kid, note; None values ignored) and ``hardware`` add to what the
    source records; the EMA generator and its refreshed BatchNorm statistics come from ``load_generator``.
    """
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    source = Path(source)
    G, cfg = load_generator(source)
    if source.is_dir():
        old = read_model_config(source)
        training, known = dict(old.get("training") or {}), dict(old.get("metrics") or {})
    else:
        training, known = training_facts(read_checkpoint(source)), {}
    training["hardware"] = hardware or training.get("hardware") or f"not recorded (exported on {platform_summary()})"
    known.update({k: v for k, v in (metrics or {}).items() if v is not None})
    return write_folder(G, cfg, out, dtype, training, known, onnx)


def write_folder(G: nn.Module, cfg: Config, out: str | Path, dtype: str, training: dict, metrics: dict,
                 onnx: bool = False) -> Path:
    """Weights, config.json, then (from the folder as written, so they show exactly what loads) the
    sample grid, the ONNX file and the card."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_weights(G, out / WEIGHTS, DTYPES[dtype])
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, **{f: getattr(cfg, f) for f in GENERATOR_FIELDS},
              "dtype": str(DTYPES[dtype]).removeprefix("torch."), "parameters": count_parameters(G),
              "input": {"name": "z", "shape": ["batch", cfg.z_size], "distribution": "standard normal"},
              "output": {"name": "images", "shape": ["batch", 3, cfg.image_size, cfg.image_size], "range": [-1, 1]},
              "training_config": cfg.to_dict(), "training": training, "metrics": metrics}
    _write_json(record, out / CONFIG_JSON)
    stored, _ = load_model_folder(out)
    save_samples(stored, cfg, out / SAMPLES)
    if onnx:
        export_onnx(stored, cfg, out / ONNX_FILE)
    elif (out / ONNX_FILE).exists():
        (out / ONNX_FILE).unlink()  # it showed other weights
    write_card(out)
    return out


def write_weights(G: nn.Module, path: Path, dtype: torch.dtype) -> Path:
    from safetensors.torch import save_file

    G = unwrap(G)
    params = {name for name, _ in G.named_parameters()}  # BatchNorm statistics stay fp32: a few KB, exact
    tensors = {k: (v.to(dtype) if k in params else v).detach().cpu().contiguous() for k, v in G.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", "producer": FORMAT})
    os.chmod(tmp, 0o644)  # safetensors creates it readable by its owner only
    os.replace(tmp, path)
    return path


def _write_json(record: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_samples(G: nn.Module, cfg: Config, path: Path) -> Path:
    """64 faces from seed 0, 8 to a row: the card's picture."""
    from .plots import save_grid
    from .sampling import generate, truncated_latent

    return save_grid(generate(G, truncated_latent(64, cfg, seed=0)), path)


def export_onnx(G: nn.Module, cfg: Config, path: Path, opset: int = ONNX_OPSET) -> Path:
    """generator.onnx: input "z" (batch, z_size), output "images" (batch, 3, S, S) in [-1, 1], any batch.

    The dynamo exporter first (it needs onnxscript), the TorchScript one if that fails; then onnx.checker."""
    import onnx

    G = G.eval()
    z = torch.randn(2, cfg.z_size)  # batch 2: torch.export would specialise a batch of 1
    names = {"input_names": ["z"], "output_names": ["images"], "opset_version": opset}
    try:
        with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            torch.onnx.export(G, (z,), str(path), dynamo=True, external_data=False,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), **names)
    except Exception as e:  # noqa: BLE001 -- any exporter failure: the older exporter may still work
        print(f"note: the dynamo ONNX exporter failed ({type(e).__name__}: {str(e)[:100]}); using dynamo=False")
        with torch.no_grad():
            torch.onnx.export(G, (z,), str(path), dynamo=False,
                              dynamic_axes={"z": {0: "batch"}, "images": {0: "batch"}}, **names)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


# --- reading a folder

def read_model_config(folder: str | Path) -> dict:
    """config.json of a model folder, its keys checked; raises CheckpointError (one line) otherwise."""
    folder = Path(folder)
    missing = [name for name in (WEIGHTS, CONFIG_JSON) if not (folder / name).is_file()]
    if missing:
        hint = f"; it holds a checkpoint: pass {folder / 'checkpoint.pt'}" if (folder / "checkpoint.pt").is_file() \
            else "; write one with: python helpers.py export CHECKPOINT --out DIR"
        raise CheckpointError(f"{folder} is not a model folder: {' and '.join(missing)} missing{hint}")
    path = folder / CONFIG_JSON
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(record, dict):
        raise CheckpointError(f"{path} holds no JSON object")
    unknown = sorted(set(record) - RECORD_KEYS)
    if unknown:
        raise CheckpointError(f"{path}: unknown fields {unknown}; a model folder's config.json holds "
                              f"{sorted(RECORD_KEYS)}")
    if record.get("format", FORMAT) != FORMAT or not isinstance(record.get("format_version", 1), int) \
            or record.get("format_version", 1) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format {record.get('format')!r} version {record.get('format_version')!r} "
                              f"is not {FORMAT!r} <= {FORMAT_VERSION}; update this project")
    return record


def record_config(record: dict, where: str | Path) -> Config:
    """The Config a record describes: the training configuration with the top-level generator fields
    (which rebuild G) taking precedence; validated by ``Config.from_dict``."""
    values = dict(record.get("training_config") or {})
    missing = [f for f in GENERATOR_FIELDS if f not in record and f not in values]
    if missing:
        raise CheckpointError(f"{where}: the generator fields {missing} are missing")
    values.update({f: record[f] for f in GENERATOR_FIELDS if f in record})
    try:
        return Config.from_dict(values)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where} holds an invalid configuration: {' '.join(str(e).split())}") from e


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({error_gist(e)}); export the generator again") from e


def check_weights(G: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Every tensor G needs, at G's shape, finite; the first misfit named."""
    expected = G.state_dict()
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path} does not fit {CONFIG_JSON}: missing tensors {missing[:4]}, "
                              f"unexpected tensors {extra[:4]}")
    for name, tensor in expected.items():
        found = weights[name]
        if found.shape != tensor.shape:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {list(found.shape)} but {CONFIG_JSON} "
                                  f"needs {list(tensor.shape)}; the weights and the configuration do not match")
        if found.is_floating_point() and not torch.isfinite(found).all():
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or Inf")


def load_generator(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Config]:
    """Any generator, in eval mode: a model folder, a training checkpoint or an exported ``.pt`` file.

    A folder is read by ``load_model_folder`` (safetensors and JSON only); a file by
    ``facegan.checkpoint.load_generator`` (the EMA copy if any, loading no code).
    """
    if Path(path).is_dir():
        return load_model_folder(path, device)
    return load_checkpoint_generator(path, device)


def load_model_folder(folder: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Config]:
    """G and its Config from a model folder, in eval mode, in fp32: reads only safetensors and JSON."""
    folder = Path(folder)
    cfg = record_config(read_model_config(folder), folder / CONFIG_JSON)
    weights = read_weights(folder / WEIGHTS)
    _, G = build_models(cfg)
    check_weights(G, weights, folder / WEIGHTS)
    G.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
    return G.to(device).eval(), cfg


def record_metrics(folder: str | Path, metrics: dict) -> dict:
    """Add measured figures to a model folder's config.json and rewrite its card; returns the metrics."""
    folder = Path(folder)
    record = read_model_config(folder)
    record_config(record, folder / CONFIG_JSON)
    record["metrics"] = {**(record.get("metrics") or {}), **metrics}
    _write_json(record, folder / CONFIG_JSON)
    write_card(folder)
    return record["metrics"]


def metric_keys(n: int) -> tuple[str, str]:
    """config.json's names for FID and KID at N samples: fid_1k and kid at 1,000, fid_10k and kid_10k..."""
    short = {1000: "1k", 10000: "10k"}.get(n, str(n))
    return f"fid_{short}", "kid" if n == 1000 else f"kid_{short}"


def scored_metrics(result: dict, n: int) -> dict:
    """An ``evaluate_generator`` result at N samples as config.json's metrics (precision, recall_10k...)."""
    fid_key, kid_key = metric_keys(n)
    suffix = "" if n == 1000 else "_" + fid_key[4:]
    return {fid_key: round(result["fid"], 2), kid_key: round(result["kid"], 4),
            **{key + suffix: round(result[key], 3) for key in PRDC_KEYS if key in result}}


# --- the shipped folders

def shipped_models(root: str | Path | None = None) -> list[Path]:
    """The model folders under ``root`` (default ``MODELS_DIR``), best first: largest resolution, then
    lowest recorded FID-1k, then name."""
    ranked = []
    for folder in sorted(p for p in Path(root or MODELS_DIR).glob("*") if (p / CONFIG_JSON).is_file()):
        record = read_model_config(folder)
        fid = (record.get("metrics") or {}).get("fid_1k")
        ranked.append((-int(record.get("image_size", 0)), fid if isinstance(fid, (int, float)) else math.inf,
                       folder.name, folder))
    return [folder for *_, folder in sorted(ranked)]


def best_shipped() -> Path:
    models = shipped_models()
    if not models:
        raise FileNotFoundError(f"no model folders in {MODELS_DIR}: pass --generator (a model folder or a .pt)")
    return models[0]


def describe(path: str | Path) -> str:
    """One line: a model folder's resolution, preset and FID-1k (a file: its name)."""
    path = Path(path)
    if not path.is_dir():
        return path.name
    record = read_model_config(path)
    preset = (record.get("training_config") or {}).get("preset", record.get("arch"))
    fid = (record.get("metrics") or {}).get("fid_1k")
    size = record.get("image_size")
    return f"{path.name}: {size}px {preset}" + (f", FID-1000@{size} {fid:g}" if fid is not None else "")


def generator_facts(path: str | Path) -> dict:
    """What is recorded about a generator: its training step and, for a model folder, its metrics."""
    path = Path(path)
    if path.is_dir():
        record = read_model_config(path)
        return {"step": (record.get("training") or {}).get("step"), "metrics": record.get("metrics") or {}}
    return {"step": read_checkpoint(path).get("step"), "metrics": {}}


def write_card(folder: str | Path) -> Path:
    """README.md of a model folder, from its config.json (and whether it holds an ONNX file)."""
    folder = Path(folder)
    record = read_model_config(folder)
    text = render_card(record, record_config(record, folder / CONFIG_JSON), folder,
                       onnx=(folder / ONNX_FILE).is_file(), weights_bytes=(folder / WEIGHTS).stat().st_size)
    (folder / CARD).write_text(text, encoding="utf-8")
    return folder / CARD


# --- the Hugging Face mixin (optional: huggingface_hub is imported only when FaceGenerator is used)

@functools.cache
def _face_generator_class() -> type:
    try:
        from huggingface_hub import PyTorchModelHubMixin
    except ImportError as e:
        raise ImportError("FaceGenerator needs huggingface_hub (pip install huggingface_hub); "
                          "load_generator(DIR) loads the same folder without it") from e

    class FaceGenerator(nn.Module, PyTorchModelHubMixin, library_name="pytorch", license="other",
                        tags=["gan", "dcgan", "face-generation", "celeba"]):
        """A model folder's generator with ``from_pretrained``, ``save_pretrained`` and ``push_to_hub``.

        ``generator`` is the built G; the state dict is G's own (the folder's tensor names)."""

        def __init__(self, config: dict | None = None, **fields):
            super().__init__()
            self.record = {**(config or {}), **{k: v for k, v in fields.items() if k in RECORD_KEYS}}
            self.config = record_config(self.record, "config")
            self.generator = build_models(self.config)[1].eval()

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.generator(z)

        def state_dict(self, *args, **kwargs):
            return self.generator.state_dict(*args, **kwargs)

        def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
            return self.generator.load_state_dict(state_dict, strict, assign)

        @classmethod
        def _from_pretrained(cls, *, model_id: str, revision=None, cache_dir=None, force_download=False,
                             local_files_only=False, token=None, map_location="cpu", **_ignored):
            folder = Path(model_id)
            if not folder.is_dir():  # a Hub repository: fetch the two files the loader reads
                from huggingface_hub import snapshot_download

                folder = Path(snapshot_download(model_id, revision=revision, cache_dir=cache_dir, token=token,
                                                force_download=force_download, local_files_only=local_files_only,
                                                allow_patterns=[CONFIG_JSON, WEIGHTS]))
            model = cls(config=read_model_config(folder))
            model.generator = load_model_folder(folder, map_location)[0]
            return model.eval()

        def _save_pretrained(self, save_directory: Path) -> None:
            dtype = "fp32" if self.record.get("dtype") == "float32" else "fp16"
            write_folder(self.generator, self.config, save_directory, dtype, dict(self.record.get("training") or {}),
                         dict(self.record.get("metrics") or {}))

    FaceGenerator.__module__, FaceGenerator.__qualname__ = __name__, "FaceGenerator"
    return FaceGenerator


def __getattr__(name: str):
    if name == "FaceGenerator":  # built on first use, so that huggingface_hub stays optional
        return _face_generator_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- the command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``export`` subcommand's options."""
    parser.add_argument("source", metavar="CHECKPOINT_OR_GENERATOR",
                        help="a run's checkpoint.pt, an exported generator .pt, or a model folder")
    parser.add_argument("--out", required=True, help="the model folder to write (created; its files are replaced)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp16",
                        help="weight precision: fp16 halves the size (images differ by fp16 rounding only); "
                             "fp32 keeps them bit for bit")
    parser.add_argument("--onnx", action="store_true",
                        help=f"also write {ONNX_FILE}: input z (batch, z_size), output images in [-1, 1], any batch, "
                             f"opset {ONNX_OPSET}")
    parser.add_argument("--fid-1k", type=float, default=None, help="FID-1000 measured for this generator (the card)")
    parser.add_argument("--fid-10k", type=float, default=None, help="FID-10000 measured for this generator")
    parser.add_argument("--kid", type=float, default=None, help="KID measured with 1,000 samples")
    parser.add_argument("--note", default=None, help="one sentence under the card's results (how they were measured)")
    parser.add_argument("--hardware", default=None,
                        help='what it trained on, e.g. "1x A100" or "2-core CPU, 1 thread" (default: the recorded '
                             "value, else a note naming this machine)")
