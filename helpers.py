"""Face generation with DCGANs: data, models, losses, training, evaluation and plots.

The notebook ``face_generation.ipynb`` walks through these pieces one by one; this
module keeps the reusable code so the notebook can stay short.  It is also a
command-line program for headless runs::

    python helpers.py train --preset small32 --epochs 5 --out runs/small32
    python helpers.py train --dry-run                  # a few steps, for CI
    python helpers.py train --out runs/small32 --resume

Sections follow the pipeline: configuration, data, models, losses, training,
visualization, command line.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import hashlib
import http.client
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from tqdm.auto import tqdm

PROJECT_ROOT = Path(__file__).resolve().parent

# ============================================================================
# Configuration
# ============================================================================


@dataclass
class Config:
    """Everything a run needs, as plain values.

    A preset (see ``PRESETS``) is a named set of values for these fields.  The
    configuration is saved in every checkpoint, and ``load_checkpoint`` rebuilds
    exactly the same models from it.
    """

    preset: str = "small32"
    # --- models
    arch: str = "fc"  # "fc": linear stem + transposed convs (32px); "dcgan": all-conv 64px DCGAN
    image_size: int = 32
    z_size: int = 100
    g_dim: int = 32  # generator width: conv_dim (fc) or ngf (dcgan)
    d_dim: int = 32  # discriminator width: conv_dim (fc) or ndf (dcgan)
    n_layers: int = 3  # stride-2 layers of the fc models (3 or 4 at 32px)
    g_activation: str = "relu"  # relu | leaky
    d_norm: str = "batch"  # batch | layer | spectral | none
    d_dropout: float = 0.0
    # --- losses and tricks
    loss: str = "bce"  # bce | hinge | wgan-gp
    real_label: tuple = (1.0, 1.0)  # D's target for real images, drawn from U(lo, hi)
    instance_noise: float = 0.0  # std of noise on D's inputs at step 0, decays linearly to 0
    gp_weight: float = 10.0  # lambda of the WGAN-GP gradient penalty
    n_critic: int = 1  # D steps per G step
    # --- optimisation
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    d_optimizer: str = "adam"  # adam | sgd
    lr_schedule: str = "constant"  # constant | linear | cosine
    ema_decay: float = 0.0  # EMA of G's weights; 0 disables, 0.999 is typical
    batch_size: int = 64
    epochs: int = 5
    max_steps: int = 0  # stop after this many steps; 0 = run all epochs
    max_minutes: float = 0.0  # stop after this much training time (checkpointed); 0 = no limit
    # --- data
    data: str = "celeba"  # "celeba" (processed set, fetched on demand), a folder, or a .zip
    crop: int = 0  # centre crop in pixels before resizing (160 for aligned CelebA); 0 = none
    subset: int = 0  # use only the first N images; 0 = all
    recursive: bool = False  # also read images in sub-folders
    fast_data: bool = True  # uint8 memory-mapped cache instead of PIL per image
    # --- run
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    log_every: int = 10  # steps between history records
    sample_every: int = 0  # steps between fixed-latent grids; 0 = once per epoch
    keep_generators: bool = False  # also save G (half precision) at every sample point, for FID curves
    fid_every: int = 0  # steps between FID measurements during training; 0 = off
    fid_samples: int = 256  # samples per FID measurement during training (small N: compare runs, not papers)
    n_samples: int = 64  # size of the fixed latent batch shown in grids
    amp: bool = True  # bf16 autocast where the hardware runs bf16 natively (native_bf16); false = exact fp32
    channels_last: bool = True  # NHWC memory layout: faster convolutions on CPU (oneDNN) and CUDA
    fused_adam: bool = True  # one fused kernel per Adam step instead of a loop over parameters
    compile: bool = False  # torch.compile the models

    def validate(self) -> "Config":
        """Raise ``ValueError`` naming the bad field and the fix; return self."""

        def bad(name: str, why: str) -> None:
            raise ValueError(f"Config.{name}={getattr(self, name)!r}: {why}")

        choices = {
            "arch": ("fc", "dcgan"),
            "g_activation": ("relu", "leaky"),
            "d_norm": ("batch", "layer", "spectral", "none"),
            "loss": ("bce", "hinge", "wgan-gp"),
            "d_optimizer": ("adam", "sgd"),
            "lr_schedule": ("constant", "linear", "cosine"),
            "device": ("auto", "cpu", "cuda", "mps"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                bad(name, f"choose one of {', '.join(allowed)}")
        if self.arch == "dcgan" and self.image_size != 64:
            bad("image_size", "the dcgan architecture makes 64x64 images; set image_size=64 or arch='fc'")
        if self.arch == "fc":
            if self.n_layers < 1 or self.image_size % (2**self.n_layers):
                bad("n_layers", f"image_size {self.image_size} must be divisible by 2**n_layers")
        for name in ("z_size", "g_dim", "d_dim", "batch_size", "n_critic", "n_samples", "log_every"):
            if getattr(self, name) < 1:
                bad(name, "must be a positive integer")
        for name in ("epochs", "max_steps", "subset", "crop", "sample_every", "max_minutes"):
            if getattr(self, name) < 0:
                bad(name, "must be 0 or positive")
        if self.epochs == 0 and self.max_steps == 0:
            bad("epochs", "set epochs or max_steps above 0")
        for name in ("lr_g", "lr_d"):
            if not getattr(self, name) > 0:
                bad(name, "learning rates must be positive")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            bad("beta1", "Adam betas must lie in [0, 1)")
        if not 0 <= self.ema_decay < 1:
            bad("ema_decay", "use 0 to disable, or a value like 0.999")
        if not 0 <= self.d_dropout < 1:
            bad("d_dropout", "dropout probability must lie in [0, 1)")
        lo, hi = self.real_label
        if not (0 < lo <= hi):
            bad("real_label", "give (low, high) with 0 < low <= high, e.g. (0.9, 0.9) or (0.7, 1.2)")
        if self.loss == "wgan-gp" and self.d_norm == "batch":
            bad("d_norm", "the gradient penalty is per sample, so a WGAN-GP critic must not use "
                "BatchNorm; use 'layer' or 'none'")
        if self.instance_noise < 0 or self.gp_weight < 0:
            bad("instance_noise", "noise and penalty weights must be >= 0")
        return self

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k != "cpu_bf16"}  # from before ``amp`` covered CPUs too
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown configuration fields {sorted(unknown)}; known fields: {sorted(known)}")
        if "real_label" in values:
            values["real_label"] = tuple(float(v) for v in values["real_label"])
        return cls(**values).validate()


#: Each preset reproduces one known recipe; the notebook's table says where each comes from.
PRESETS: dict[str, dict] = {
    # 32x32, 3 stride-2 convs, conv_dim 32, no smoothing, Adam 0.002 (0.5, 0.99).
    "small32": dict(arch="fc", image_size=32, z_size=100, g_dim=32, d_dim=32, n_layers=3,
                    lr_g=0.002, lr_d=0.002, beta1=0.5, beta2=0.99, real_label=(1.0, 1.0), batch_size=64),
    # 32x32, 4 stride-2 convs, conv_dim 64, real labels 0.9, Adam 2e-4 (0.5, 0.999).
    "classic32": dict(arch="fc", image_size=32, z_size=100, g_dim=64, d_dim=64, n_layers=4,
                      lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999, real_label=(0.9, 0.9), batch_size=64),
    # Radford et al. 2016 at 64x64 with a [B,128,1,1] latent.
    "dcgan64": dict(arch="dcgan", image_size=64, z_size=128, g_dim=64, d_dim=64,
                    lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999, real_label=(0.9, 0.9), batch_size=64),
    # The "GAN hacks" variant: dropout in D, LeakyReLU in G, noisy labels, instance noise.
    "improved64": dict(arch="dcgan", image_size=64, z_size=100, g_dim=64, d_dim=64, g_activation="leaky",
                       d_dropout=0.3, real_label=(0.7, 1.2), instance_noise=0.1,
                       lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999, batch_size=64),
    # Gulrajani et al. 2017: critic without BatchNorm (layer norm), gradient penalty 10, 5 critic steps.
    "wgangp64": dict(arch="dcgan", image_size=64, z_size=128, g_dim=64, d_dim=64, d_norm="layer",
                     loss="wgan-gp", gp_weight=10.0, n_critic=5, lr_g=1e-4, lr_d=1e-4,
                     beta1=0.0, beta2=0.9, batch_size=64),
    # Miyato et al. 2018 / SAGAN: hinge loss, spectral norm in D, TTUR learning rates.
    "hinge_sn64": dict(arch="dcgan", image_size=64, z_size=128, g_dim=64, d_dim=64, d_norm="spectral",
                       loss="hinge", lr_g=1e-4, lr_d=4e-4, beta1=0.0, beta2=0.9, batch_size=64),
}


def make_config(preset: str = "small32", **overrides) -> Config:
    """The configuration of a named preset, with any fields overridden."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown configuration fields {sorted(unknown)}; known fields: {sorted(known)}")
    values = {**PRESETS[preset], **overrides, "preset": preset}
    if "real_label" in values:
        values["real_label"] = tuple(float(v) for v in values["real_label"])
    return Config(**values).validate()


def in_ci() -> bool:
    """True when running under CI (the ``CI`` environment variable is set and not 0/false)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


# ============================================================================
# Data
# ============================================================================

CELEBA_URL = ("https://s3.amazonaws.com/video.udacity-data.com/topher/2018/November/"
              "5be7eb6f_processed-celeba-small/processed-celeba-small.zip")
CELEBA_BYTES = 247_694_507
#: Names a local copy of processed-celeba-small.zip; used instead of downloading.
DATA_ENV = "CELEBA_ZIP"
DATA_DIR = PROJECT_ROOT / "processed_celeba_small"
#: Image caches, FID statistics and extracted archives (git-ignored); $FACEGAN_CACHE moves it.
CACHE_DIR = Path(os.environ.get("FACEGAN_CACHE", PROJECT_ROOT / ".cache"))
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DataError(RuntimeError):
    """The data set is missing, incomplete or unreadable; the message says how to fix it."""


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (sorted), skipping non-images such as ``.DS_Store``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern)
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())


def download(url: str, dest: str | Path, expected_bytes: int | None = None) -> Path:
    """Download ``url`` to ``dest`` with a progress bar.

    Bytes go to ``dest.part`` first and are renamed only once complete, so an
    interrupted download never looks like a finished one.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fix = f"Run again to retry, or download the file yourself and set {DATA_ENV} to its path."
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or expected_bytes
            with open(part, "wb") as f, tqdm(total=total, unit="B", unit_scale=True,
                                             desc=f"downloading {dest.name}") as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        got = part.stat().st_size
        if total and got != total:
            raise DataError(f"download of {url} is truncated: got {got:,} of {total:,} bytes. {fix}")
        os.replace(part, dest)
        return dest
    except (http.client.IncompleteRead, ConnectionError, TimeoutError) as e:
        raise DataError(f"download of {url} is truncated ({type(e).__name__}). {fix}") from e
    finally:
        part.unlink(missing_ok=True)  # only left when something went wrong


def extract_zip(zip_path: str | Path, dest: str | Path) -> Path:
    """Extract ``zip_path`` so that its top folder becomes ``dest``, atomically.

    Members are written to a temporary folder beside ``dest`` and renamed into
    place only when all are out, so a crash never leaves a partial data set
    that looks complete.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    if not zip_path.is_file():
        raise DataError(f"archive {zip_path} does not exist")
    if not zipfile.is_zipfile(zip_path):
        raise DataError(f"{zip_path} is not a zip archive (truncated or wrong file). "
                        "Download it again, or point to a good copy.")
    if dest.exists() and any(dest.iterdir()):
        raise DataError(f"{dest} exists but holds no images; delete it and run again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        with zipfile.ZipFile(zip_path) as zf:
            broken = zf.testzip()
            if broken is not None:
                raise DataError(f"{zip_path} is corrupt (bad CRC in {broken}). Download it again.")
            zf.extractall(tmp)
        tops = [p for p in tmp.iterdir() if p.name != "__MACOSX"]
        # Archives usually hold one top folder named like dest: move that one.
        src = tops[0] if len(tops) == 1 and tops[0].is_dir() else tmp
        if dest.exists():
            dest.rmdir()
        os.replace(src, dest)
    except zipfile.BadZipFile as e:
        raise DataError(f"{zip_path} is corrupt ({e}). Download it again.") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def ensure_celeba(source: str | Path | None = None, data_dir: str | Path = DATA_DIR,
                  url: str = CELEBA_URL, expected_bytes: int | None = CELEBA_BYTES) -> Path:
    """Make sure the processed CelebA faces are present; return the image folder.

    Uses ``data_dir/celeba`` when it already holds images.  Otherwise it gets
    ``processed-celeba-small.zip`` from, in order: ``source`` (a zip path or a
    URL), the ``CELEBA_ZIP`` environment variable, or the official download,
    and extracts it atomically.
    """
    data_dir = Path(data_dir)
    image_dir = data_dir / "celeba"
    if image_dir.is_dir() and list_images(image_dir):
        return image_dir
    source = source or os.environ.get(DATA_ENV) or url
    source = str(source)
    if source.startswith(("http://", "https://")):
        archive = data_dir.parent / "processed-celeba-small.zip"
        if not archive.is_file():
            print(f"Downloading the processed CelebA faces from {source}")
            download(source, archive, expected_bytes if source == url else None)
        try:
            extract_zip(archive, data_dir)
        except DataError:
            archive.unlink(missing_ok=True)  # a bad download must not be reused next time
            raise
        archive.unlink(missing_ok=True)
    else:
        if not Path(source).is_file():
            raise DataError(f"{source} does not exist. Set {DATA_ENV} to the path of "
                            "processed-celeba-small.zip, or unset it to download the data.")
        extract_zip(source, data_dir)
    if not (image_dir.is_dir() and list_images(image_dir)):
        raise DataError(f"the archive did not contain celeba/*.jpg; {data_dir} holds "
                        f"{sorted(p.name for p in data_dir.iterdir())}")
    return image_dir


def resolve_image_dir(data: str | Path = "celeba", recursive: bool = False) -> Path:
    """Turn ``Config.data`` into a folder of images.

    ``"celeba"`` is the processed set (fetched by ``ensure_celeba``); a folder is
    used as it is (its ``celeba/`` child if it has one); a ``.zip`` is extracted
    once, into ``.cache/data/``.
    """
    if str(data) == "celeba":
        return ensure_celeba()
    path = Path(data)
    if path.suffix == ".zip":
        target = CACHE_DIR / "data" / path.stem
        if not (target.is_dir() and (list_images(target, True))):
            extract_zip(path, target)
        path = target
    if not path.is_dir():
        raise DataError(f"data {data!r} is neither 'celeba', a folder, nor a .zip archive")
    if (path / "celeba").is_dir():
        path = path / "celeba"
    if not list_images(path, recursive):
        sub = [p.name for p in path.iterdir() if p.is_dir()]
        raise DataError(f"no images in {path}" + (f"; its sub-folders {sub} may hold them: "
                                                  "pass recursive=True or point at one" if sub else ""))
    return path


def image_transform(image_size: int, crop: int = 0, flip: bool = True) -> transforms.Compose:
    """PIL image -> tensor in [-1, 1] of shape (3, image_size, image_size).

    With ``crop`` (e.g. 160 for aligned 178x218 CelebA) the face is centre-cropped
    first, then resized; otherwise the image is resized and centre-cropped.
    """
    steps = [transforms.CenterCrop(crop), transforms.Resize(image_size)] if crop else \
            [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    if flip:
        steps.append(transforms.RandomHorizontalFlip())
    # ToTensor gives [0, 1]; Normalize(0.5, 0.5) maps that to [-1, 1], the range of G's tanh.
    steps += [transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
    return transforms.Compose(steps)


def read_image(path: Path):
    """Open an image as RGB, or raise ``DataError`` naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as e:  # PIL raises several types for bad files
        raise DataError(f"cannot read image {path}: {e}. Delete or replace this file "
                        "(or re-extract the data set).") from e


class FaceImages(Dataset):
    """A folder of face images (no class sub-folders needed, unlike ImageFolder)."""

    def __init__(self, folder: str | Path, transform=None, recursive: bool = False, subset: int = 0):
        self.folder = Path(folder)
        self.files = list_images(self.folder, recursive)
        if subset:
            self.files = self.files[:subset]
        if not self.files:
            raise DataError(f"no images found in {self.folder}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        img = read_image(self.files[i])
        return self.transform(img) if self.transform else img


def get_dataloader(batch_size: int, image_size: int, data_dir: str | Path = "celeba",
                   crop: int = 0, subset: int = 0, recursive: bool = False,
                   num_workers: int = 0, shuffle: bool = True, seed: int | None = None) -> DataLoader:
    """A shuffling, batching ``DataLoader`` of face tensors in [-1, 1].

    Each image is resized and centre-cropped to ``image_size`` and flipped left-right
    with probability 0.5 (a free way to double the data).  ``data_dir`` may be
    ``"celeba"`` (the processed set, fetched on demand) or any folder of images.
    """
    folder = resolve_image_dir(data_dir, recursive)
    dataset = FaceImages(folder, image_transform(image_size, crop), recursive, subset)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=True,
                      num_workers=num_workers, generator=generator,
                      persistent_workers=num_workers > 0)


def scale(x: torch.Tensor, feature_range: tuple[float, float] = (-1, 1)) -> torch.Tensor:
    """Map a tensor from [0, 1] to ``feature_range`` (by default the tanh range [-1, 1])."""
    lo, hi = feature_range
    return x * (hi - lo) + lo


# --- The fast path: decode every JPEG once into a uint8 memory-mapped array.

CACHE_VERSION = 1


def cache_key(files: Sequence[Path], image_size: int, crop: int) -> str:
    """A hash of the file list (names, sizes, times) and the preprocessing.

    Any change to the source (an added, removed or rewritten image) changes the
    key, so a stale cache is never used.
    """
    h = hashlib.sha1(f"v{CACHE_VERSION}|{image_size}|{crop}|{len(files)}".encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.absolute()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def build_image_cache(files: Sequence[Path], image_size: int, crop: int = 0,
                      cache_dir: str | Path | None = None, num_workers: int | None = None) -> np.ndarray:
    """Return a read-only memmap of shape (N, H, W, 3), uint8, of the preprocessed images.

    The array is built once (decoding with the same PIL resize and crop as the
    classic transform, so the pixels are identical) and reused while the
    source files are unchanged.  It is memory-mapped, so even the 202,599-image
    CelebA costs no RAM beyond the pages in use.
    """
    cache_dir = Path(cache_dir or CACHE_DIR)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # The name says which images (folder and count) and preprocessing the cache is for,
    # then the key of their exact contents: a rebuilt cache replaces the stale one of the
    # same images instead of piling up beside it (400 MB each at 64px), while caches of
    # other subsets or sizes are kept.
    source = f"{Path(files[0]).parent.absolute()}|{len(files)}" if files else ""
    prefix = f"faces-{image_size}px-c{crop}-{hashlib.sha1(source.encode()).hexdigest()[:8]}-"
    path = cache_dir / f"{prefix}{cache_key(files, image_size, crop)}.npy"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        geometry = image_transform(image_size, crop, flip=False).transforms[:2]
        decode = _UInt8Images(files, transforms.Compose(geometry))
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(files), image_size, image_size, 3))
        workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        loader = DataLoader(decode, batch_size=256, num_workers=workers)
        try:
            i = 0
            for batch in tqdm(loader, desc=f"caching {len(files):,} images at {image_size}px", leave=False):
                out[i:i + len(batch)] = batch.numpy()
                i += len(batch)
            out.flush()
            del out
            os.replace(tmp, path)  # atomic: a half-written cache is never picked up
        finally:
            tmp.unlink(missing_ok=True)  # left only when decoding failed (e.g. a corrupt image)
        prune_stale_caches(cache_dir, prefix, keep=path)
    return np.load(path, mmap_mode="r")


def prune_stale_caches(cache_dir: Path, prefix: str, keep: Path) -> list[Path]:
    """Delete the caches named ``prefix*.npy`` other than ``keep`` (earlier versions of the same
    images), and caches in the older naming without a source tag, which nothing can reach any more."""
    removed = []
    legacy = re.compile(r"faces-\d+px-c\d+-[0-9a-f]{16}\.npy")  # named without the source tag: unreachable
    for old in [*cache_dir.glob(f"{prefix}*.npy"), *(p for p in cache_dir.glob("faces-*.npy") if legacy.fullmatch(p.name))]:
        if old != keep:
            try:
                old.unlink()
                removed.append(old)
            except OSError as e:  # e.g. still memory-mapped by a process on Windows: try next time
                print(f"could not remove the stale image cache {old}: {e}")
    if removed:
        print(f"removed {len(removed)} stale image cache(s): {', '.join(p.name for p in removed)}")
    return removed


class _UInt8Images(Dataset):
    def __init__(self, files: Sequence[Path], geometry):
        self.files, self.geometry = list(files), geometry

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.geometry(read_image(self.files[i])), dtype=np.uint8).copy())


def uint8_to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1], with exactly ToTensor + Normalize(0.5, 0.5)'s arithmetic."""
    return x.permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)


class CachedBatches:
    """Batches from the uint8 cache: indexing, flips and scaling are tensor ops.

    The shuffling order and the flips of an epoch come from ``(seed, epoch)``,
    so a run resumed in the middle of an epoch sees the very same batches.
    On a GPU the whole uint8 array is copied to device memory once (400 MB for
    the standard set at 64x64) when it fits, so batches never cross the bus.
    """

    def __init__(self, images: np.ndarray, batch_size: int, device: torch.device | str = "cpu",
                 seed: int = 0, flip: bool = True, channels_last: bool = False, preload: bool | None = None):
        self.images, self.batch_size, self.device = images, batch_size, torch.device(device)
        self.seed, self.flip, self.channels_last = seed, flip, channels_last
        if preload is None:
            preload = self.device.type == "cuda" and images.nbytes < 0.25 * torch.cuda.mem_get_info(self.device)[0]
        self.resident = torch.from_numpy(np.array(images)).to(self.device) if preload else None
        if len(images) < batch_size:
            raise DataError(f"{len(images)} images are fewer than one batch of {batch_size}; "
                            "lower batch_size or add images")

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def epoch(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.images), generator=g)
        flips = torch.rand(len(self.images), generator=g) < 0.5
        pin = self.device.type == "cuda"
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            if self.resident is not None:
                batch = self.resident[idx.to(self.device)]
            else:
                batch = torch.from_numpy(self.images[idx.numpy()])
                if pin:  # page-locked memory lets the copy overlap with compute
                    batch = batch.pin_memory()
            x = uint8_to_model_range(batch.to(self.device, non_blocking=True))
            if self.flip:
                mask = flips[idx].to(self.device, non_blocking=True).view(-1, 1, 1, 1)
                x = torch.where(mask, x.flip(3), x)
            yield x.contiguous(memory_format=torch.channels_last if self.channels_last
                               else torch.contiguous_format)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.epoch(0)


class LoaderBatches:
    """The classic path (PIL transforms through a DataLoader) behind the same interface."""

    def __init__(self, loader: DataLoader, device: torch.device | str = "cpu", seed: int = 0):
        self.loader, self.device, self.seed = loader, torch.device(device), seed

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        if self.loader.generator is not None:
            self.loader.generator.manual_seed(self.seed * 100_003 + epoch)
        for b, x in enumerate(self.loader):
            if b >= start:
                yield x.to(self.device, non_blocking=True)


def training_batches(cfg: Config, device: torch.device | str = "cpu") -> CachedBatches | LoaderBatches:
    """The batches a run trains on, by the fast cached path or the classic loader."""
    folder = resolve_image_dir(cfg.data, cfg.recursive)
    if not cfg.fast_data:
        return LoaderBatches(get_dataloader(cfg.batch_size, cfg.image_size, folder, cfg.crop, cfg.subset,
                                            cfg.recursive, seed=cfg.seed), device, cfg.seed)
    files = list_images(folder, cfg.recursive)
    if cfg.subset:
        files = files[:cfg.subset]
    images = build_image_cache(files, cfg.image_size, cfg.crop)
    return CachedBatches(images, cfg.batch_size, device, cfg.seed,
                         channels_last=cfg.channels_last)


# ============================================================================
# Models
# ============================================================================
#
# DCGAN (Radford, Metz & Chintala, 2016) made GANs train reliably with a few
# architectural rules: strided convolutions instead of pooling (D learns its own
# down-sampling), transposed convolutions in G, BatchNorm in both nets (except
# D's input and G's output layers), LeakyReLU(0.2) in D, ReLU in G and tanh on
# G's output, so that images live in [-1, 1].


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        # Layer norm over (C, H, W) per sample: what WGAN-GP recommends instead of BatchNorm.
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def _spectral(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018): divide W by its largest singular value,
    estimated by one power iteration per step, so each layer is 1-Lipschitz."""
    return nn.utils.parametrizations.spectral_norm(module)


class Discriminator(nn.Module):
    """The classic 32x32 discriminator: stride-2 convolutions, then one linear layer.

    ``n_layers`` convolutions with 4x4 kernels and stride 2 halve the image each
    time while the channels double (conv_dim, 2*conv_dim, ...).  BatchNorm follows
    every convolution but the first; a linear layer turns the final feature map
    into one logit per image (no sigmoid: the loss applies it).
    """

    def __init__(self, conv_dim: int = 32, n_layers: int = 3, image_size: int = 32,
                 norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        self.conv_dim, self.n_layers = conv_dim, n_layers
        layers: list[nn.Module] = []
        in_ch = 3
        for i in range(n_layers):
            out_ch = conv_dim * 2**i
            use_norm = i > 0 and norm in ("batch", "layer")
            conv = nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=not use_norm)  # BN has its own bias
            layers += [_spectral(conv) if norm == "spectral" else conv]
            if use_norm:
                layers.append(_norm(norm, out_ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            if dropout:
                layers.append(nn.Dropout(dropout))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        side = image_size // 2**n_layers
        fc = nn.Linear(in_ch * side * side, 1)
        self.fc = _spectral(fc) if norm == "spectral" else fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


class Generator(nn.Module):
    """The classic 32x32 generator: a linear "project and reshape" stem, then transposed convs.

    z (N, z_size) is mapped by a linear layer to a small, deep feature map
    (e.g. 128x4x4 = 2048 values), which ``n_layers`` stride-2 transposed
    convolutions double in size and halve in depth until it is a 3-channel
    image; tanh squashes it into [-1, 1].
    """

    def __init__(self, z_size: int = 100, conv_dim: int = 32, n_layers: int = 3,
                 image_size: int = 32, activation: str = "relu"):
        super().__init__()
        self.z_size, self.conv_dim, self.n_layers = z_size, conv_dim, n_layers
        self.top = conv_dim * 2**(n_layers - 1)
        self.side = image_size // 2**n_layers
        self.fc = nn.Linear(z_size, self.top * self.side * self.side)
        act = (lambda: nn.LeakyReLU(0.2, inplace=True)) if activation == "leaky" else (lambda: nn.ReLU(True))
        layers: list[nn.Module] = [nn.BatchNorm2d(self.top), act()]
        ch = self.top
        for i in range(n_layers - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), act()]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z.flatten(1)).view(-1, self.top, self.side, self.side)
        return self.net(x)


class DCGANDiscriminator(nn.Module):
    """The five-layer 64x64 DCGAN discriminator (all convolutional).

    64 -> 32 -> 16 -> 8 -> 4 with 4x4 stride-2 convolutions (ndf, 2ndf, 4ndf,
    8ndf channels), then a 4x4 convolution without padding reduces the 4x4 map
    to one logit.  ``norm`` picks BatchNorm (DCGAN), layer norm (a WGAN-GP
    critic) or spectral norm (hinge GAN); ``dropout`` is the "improved" recipe's.
    """

    def __init__(self, ndf: int = 64, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        self.ndf = ndf
        wrap = _spectral if norm == "spectral" else (lambda m: m)
        chans = [3, ndf, ndf * 2, ndf * 4, ndf * 8]
        layers: list[nn.Module] = []
        for i in range(4):
            use_norm = i > 0 and norm in ("batch", "layer")
            layers.append(wrap(nn.Conv2d(chans[i], chans[i + 1], 4, 2, 1, bias=not use_norm)))
            if use_norm:
                layers.append(_norm(norm, chans[i + 1]))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            if dropout:
                layers.append(nn.Dropout(dropout))
        layers.append(wrap(nn.Conv2d(ndf * 8, 1, 4, 1, 0)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class DCGANGenerator(nn.Module):
    """The five-layer 64x64 DCGAN generator, from a latent of shape (N, z, 1, 1).

    A 4x4 transposed convolution without padding turns the 1x1 latent into a
    4x4 map with 8ngf channels; four stride-2 transposed convolutions take it
    to 8, 16, 32 and 64 pixels, the last one with 3 channels and tanh.
    """

    def __init__(self, z_size: int = 128, ngf: int = 64, activation: str = "relu"):
        super().__init__()
        self.z_size, self.ngf = z_size, ngf
        act = (lambda: nn.LeakyReLU(0.2, inplace=True)) if activation == "leaky" else (lambda: nn.ReLU(True))
        chans = [z_size, ngf * 8, ngf * 4, ngf * 2, ngf]
        layers: list[nn.Module] = []
        for i in range(4):
            stride, pad = (1, 0) if i == 0 else (2, 1)
            layers += [nn.ConvTranspose2d(chans[i], chans[i + 1], 4, stride, pad, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), act()]
        layers += [nn.ConvTranspose2d(ngf, 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.size(0), self.z_size, 1, 1))


def weights_init_normal(m: nn.Module) -> None:
    """DCGAN initialisation: conv and linear weights ~ N(0, 0.02), biases 0; BatchNorm scale ~ N(1, 0.02).

    Use as ``model.apply(weights_init_normal)``.  With spectral norm the raw
    weight lives in ``parametrizations.weight.original``, and that is what we set.
    """
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
        nn.init.normal_(weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def build_models(cfg: Config) -> tuple[nn.Module, nn.Module]:
    """(D, G) for a configuration, initialised with ``weights_init_normal``."""
    if cfg.arch == "fc":
        D = Discriminator(cfg.d_dim, cfg.n_layers, cfg.image_size, cfg.d_norm, cfg.d_dropout)
        G = Generator(cfg.z_size, cfg.g_dim, cfg.n_layers, cfg.image_size, cfg.g_activation)
    else:
        D = DCGANDiscriminator(cfg.d_dim, cfg.d_norm, cfg.d_dropout)
        G = DCGANGenerator(cfg.z_size, cfg.g_dim, cfg.g_activation)
    D.apply(weights_init_normal)
    G.apply(weights_init_normal)
    return D, G


def sample_latent(n: int, cfg: Config, device: torch.device | str = "cpu",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """z ~ N(0, I): shape (n, z) for the fc models, (n, z, 1, 1) for the 64x64 DCGANs."""
    shape = (n, cfg.z_size) if cfg.arch == "fc" else (n, cfg.z_size, 1, 1)
    return torch.randn(shape, device=device, generator=generator)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ============================================================================
# Losses
# ============================================================================
#
# D outputs raw logits.  BCEWithLogitsLoss fuses the sigmoid with the log, which
# is numerically stable where sigmoid-then-BCELoss underflows.


def real_loss(D_out: torch.Tensor, smooth: bool | float | tuple = False) -> torch.Tensor:
    """BCE towards "real":  -mean( y log s(D) + (1 - y) log(1 - s(D)) ).

    ``smooth`` sets the target y: ``False`` -> 1, ``True`` -> 0.9 (one-sided label
    smoothing, Salimans et al. 2016: it stops D from becoming over-confident), a
    float -> that value, a pair (lo, hi) -> y ~ U(lo, hi) per sample (noisy labels).
    """
    if isinstance(smooth, (tuple, list)):
        lo, hi = smooth
        labels = torch.rand_like(D_out) * (hi - lo) + lo
    else:
        target = 0.9 if smooth is True else 1.0 if smooth is False else float(smooth)
        labels = torch.full_like(D_out, target)
    return F.binary_cross_entropy_with_logits(D_out, labels)


def fake_loss(D_out: torch.Tensor) -> torch.Tensor:
    """BCE towards "fake":  -mean( log(1 - s(D)) )."""
    return F.binary_cross_entropy_with_logits(D_out, torch.zeros_like(D_out))


def hinge_d_loss(real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
    """Hinge loss for D:  mean(max(0, 1 - D(x))) + mean(max(0, 1 + D(G(z)))).

    D stops being pushed once real scores exceed +1 and fake ones fall below -1.
    """
    return F.relu(1 - real_out).mean() + F.relu(1 + fake_out).mean()


def hinge_g_loss(fake_out: torch.Tensor) -> torch.Tensor:
    """Hinge loss for G:  -mean(D(G(z)))."""
    return -fake_out.mean()


def wasserstein_d_loss(real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
    """Critic loss:  mean(D(G(z))) - mean(D(x)), the negated estimate of the Wasserstein-1
    distance (valid when D is 1-Lipschitz, which the gradient penalty encourages)."""
    return fake_out.mean() - real_out.mean()


def wasserstein_g_loss(fake_out: torch.Tensor) -> torch.Tensor:
    """Generator loss of WGAN:  -mean(D(G(z)))."""
    return -fake_out.mean()


def gradient_penalty(D: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP penalty (Gulrajani et al. 2017):  mean( (||grad_x D(x_hat)||_2 - 1)^2 ).

    x_hat = eps * x + (1 - eps) * G(z), eps ~ U(0, 1) per sample: points on
    straight lines between real and fake images, where the optimal critic has
    gradients of norm 1.
    """
    if eps is None:
        eps = torch.rand(real.size(0), 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    out = D(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


# ============================================================================
# Training
# ============================================================================


def pick_device(preference: str = "auto") -> torch.device:
    """cuda if present, else Apple's mps, else cpu (or the named device)."""
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizers(D: nn.Module, G: nn.Module, cfg: Config) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for both nets (beta1 = 0.5 as in DCGAN: less momentum keeps the game stable),
    or SGD for D when ``cfg.d_optimizer == "sgd"`` (one of the "GAN hacks")."""
    device = next(G.parameters()).device
    fused = {"fused": True} if cfg.fused_adam and device.type in ("cpu", "cuda") else {}
    if cfg.d_optimizer == "sgd":
        d_opt = torch.optim.SGD(D.parameters(), lr=cfg.lr_d, momentum=0.9)
    else:
        d_opt = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2), **fused)
    g_opt = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2), **fused)
    return d_opt, g_opt


def lr_factor(kind: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate: constant, linear decay to 0, or cosine to 0."""
    t = min(step / max(total, 1), 1.0)
    if kind == "linear":
        return 1.0 - t
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0


def discriminator_step(D: nn.Module, G: nn.Module, d_optimizer: torch.optim.Optimizer,
                       real_images: torch.Tensor, z: torch.Tensor, smooth: bool | float = False) -> torch.Tensor:
    """The textbook D update: BCE on a real batch (target 1, or smoothed) plus a fake batch (target 0).

    The fakes are detached: D's loss must only move D.
    """
    d_optimizer.zero_grad()
    fake_images = G(z).detach()
    d_loss = real_loss(D(real_images), smooth) + fake_loss(D(fake_images))
    d_loss.backward()
    d_optimizer.step()
    return d_loss.detach()


def generator_step(D: nn.Module, G: nn.Module, g_optimizer: torch.optim.Optimizer,
                   z: torch.Tensor) -> torch.Tensor:
    """The textbook G update: make D call G(z) real (non-saturating BCE with target 1)."""
    g_optimizer.zero_grad()
    g_loss = real_loss(D(G(z)))
    g_loss.backward()
    g_optimizer.step()
    return g_loss.detach()


@dataclass
class TrainState:
    """The models, their optimisers and the bookkeeping of one run."""

    config: Config
    D: nn.Module
    G: nn.Module
    d_opt: torch.optim.Optimizer
    g_opt: torch.optim.Optimizer
    device: torch.device
    total_steps: int
    steps_per_epoch: int
    fixed_z: torch.Tensor
    ema: torch.optim.swa_utils.AveragedModel | None = None
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: dict = field(default_factory=lambda: {k: [] for k in
                                                   ("step", "epoch", "seconds", "d_loss", "g_loss", "d_real", "d_fake")})
    samples: list = field(default_factory=list)  # (step, uint8 grid images) at each sample point
    images_per_second: float = 0.0  # measured by the last call to train()

    @property
    def sampler(self) -> nn.Module:
        """The generator to show and evaluate: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.G


def make_state(cfg: Config, steps_per_epoch: int, device: torch.device | str | None = None,
               models: tuple[nn.Module, nn.Module] | None = None) -> TrainState:
    """Build models (unless ``models=(D, G)`` are given), optimisers, EMA and the fixed latents."""
    device = torch.device(device) if device is not None else pick_device(cfg.device)
    seed_everything(cfg.seed)
    D, G = models if models is not None else build_models(cfg)
    D, G = D.to(device), G.to(device)
    if cfg.channels_last and device.type in ("cpu", "cuda"):
        D, G = D.to(memory_format=torch.channels_last), G.to(memory_format=torch.channels_last)
    d_opt, g_opt = make_optimizers(D, G, cfg)
    ema = None
    if cfg.ema_decay:
        # A running average of G's weights gives smoother, usually better samples
        # (Yazici et al. 2019); BatchNorm statistics are averaged as well.
        ema = torch.optim.swa_utils.AveragedModel(
            G, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    total = steps_per_epoch * cfg.epochs if cfg.epochs else cfg.max_steps
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    fixed_z = sample_latent(cfg.n_samples, cfg, generator=g).to(device)
    return TrainState(cfg, D, G, d_opt, g_opt, device, total, steps_per_epoch, fixed_z, ema)


@functools.lru_cache(maxsize=None)
def native_bf16(device_type: str) -> bool:
    """Whether this machine runs bf16 convolutions and matmuls in hardware.

    True on CUDA GPUs with bf16 tensor cores (Ampere and later) and on CPUs with
    AVX-512 BF16 or AMX instructions, where a bf16 dot product does twice the
    work of an fp32 one per cycle.  Elsewhere bf16 is emulated and slower than
    fp32, so autocast stays off.
    """
    if os.environ.get("FACEGAN_BF16", "").lower() in ("0", "false", "no", "off"):
        return False  # run as an AVX2-only machine would: exact fp32 (how CI checks the fp32 path)
    if device_type == "cuda":  # Ampere or later; older GPUs (e.g. a T4) would only emulate bf16
        return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)
    if device_type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence the getattr
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def training_precision(cfg: Config, device: torch.device) -> str:
    """"bf16" (autocast, fp32 master weights) or "fp32": what ``train_step`` will use.

    bf16 wherever the hardware runs it natively (``native_bf16``), GPU or CPU, unless
    ``amp`` is off.  On a CPU it is 1.3-1.6x faster than fp32, and it trains the same
    GAN within the randomness every run has (README "Speed"): its rounding changes an
    update by typically a tenth of what another minibatch changes it, a run drifts
    from its fp32 twin about as fast as from an fp32 copy nudged by one ulp, and over
    8 seeds per precision the FIDs of ``small32`` did not differ beyond seed noise.
    ``amp=False`` gives exact fp32, the textbook step's arithmetic.
    """
    return "bf16" if cfg.amp and native_bf16(device.type) else "fp32"


def _autocast(state: TrainState):
    # bf16 autocast: convolutions and matmuls run in bf16, which keeps fp32's exponent
    # range (so no loss scaling is needed); weights, optimiser state, BatchNorm statistics
    # and losses stay fp32.
    enabled = training_precision(state.config, state.device) == "bf16"
    return torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=enabled)


def train_step(state: TrainState, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """One D update (and one G update every ``n_critic`` steps); returns detached metrics.

    D step: score a real batch and a fake batch; the fakes are *detached*, so
    D's loss does not push gradients into G.  G step: score the same fakes
    again with the updated D and move G towards fooling it (the
    non-saturating loss: G maximises log D(G(z)) rather than minimising
    log(1 - D(G(z))), which has vanishing gradients early on).
    """
    cfg, D, G = state.config, state.D, state.G
    D.train()
    G.train()
    n = real.size(0)
    g_turn = (state.step + 1) % cfg.n_critic == 0
    progress = state.step / max(state.total_steps, 1)
    # Instance noise (Sonderby et al. 2017): blur the line between real and fake
    # early on, so D cannot separate them perfectly; anneal it to zero.
    sigma = cfg.instance_noise * max(0.0, 1.0 - progress)

    def noisy(x: torch.Tensor) -> torch.Tensor:
        return x + sigma * torch.randn_like(x) if sigma > 0 else x

    z = sample_latent(n, cfg, state.device)
    with torch.set_grad_enabled(g_turn), _autocast(state):
        fake = G(z)

    # ---- discriminator
    state.d_opt.zero_grad(set_to_none=True)
    with _autocast(state):
        d_real = D(noisy(real))
        d_fake = D(noisy(fake.detach()))
        if cfg.loss == "bce":
            smooth = cfg.real_label if cfg.real_label[0] != cfg.real_label[1] else cfg.real_label[0]
            d_loss = real_loss(d_real.float(), smooth) + fake_loss(d_fake.float())
        elif cfg.loss == "hinge":
            d_loss = hinge_d_loss(d_real.float(), d_fake.float())
        else:
            d_loss = wasserstein_d_loss(d_real.float(), d_fake.float())
    if cfg.loss == "wgan-gp":
        d_loss = d_loss + cfg.gp_weight * gradient_penalty(D, real, fake.detach().float())
    d_loss.backward()
    state.d_opt.step()

    # ---- generator
    g_loss = torch.zeros((), device=state.device)
    if g_turn:
        state.g_opt.zero_grad(set_to_none=True)
        # G's loss needs gradients *through* D but not *for* D's weights: freezing D skips
        # computing weight gradients that the next D step would throw away anyway.
        D.requires_grad_(False)
        with _autocast(state):
            d_out = D(noisy(fake)).float()
            g_loss = {"bce": real_loss, "hinge": hinge_g_loss, "wgan-gp": wasserstein_g_loss}[cfg.loss](d_out)
        g_loss.backward()
        D.requires_grad_(True)
        state.g_opt.step()
        if state.ema is not None:
            state.ema.update_parameters(G)

    state.step += 1
    for opt, base, total in ((state.d_opt, cfg.lr_d, state.total_steps),
                             (state.g_opt, cfg.lr_g, state.total_steps)):
        for group in opt.param_groups:
            group["lr"] = base * lr_factor(cfg.lr_schedule, state.step, total)
    # For BCE the D outputs are logits: report probabilities D(x), D(G(z)).
    to_score = torch.sigmoid if cfg.loss == "bce" else (lambda t: t)
    return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(),
            "d_real": to_score(d_real.detach().float()).mean(), "d_fake": to_score(d_fake.detach().float()).mean()}


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """G(z) in eval mode (BatchNorm uses running statistics), as float in [-1, 1]."""
    was_training = G.training
    G.eval()
    out = G(z).float()
    G.train(was_training)
    return out


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float NCHW -> uint8 NCHW on the CPU."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_checkpoint(state: TrainState, path: str | Path) -> Path:
    """Write everything needed to resume, atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "config": state.config.to_dict(),
        "D": _unwrap(state.D).state_dict(), "G": _unwrap(state.G).state_dict(),
        "d_opt": state.d_opt.state_dict(), "g_opt": state.g_opt.state_dict(),
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
        "history": state.history, "samples": state.samples, "fixed_z": state.fixed_z.cpu(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)  # the module inside torch.compile


def load_checkpoint(path: str | Path, state: TrainState | None = None,
                    device: torch.device | str | None = None) -> TrainState:
    """Restore a run.  Without ``state``, models are rebuilt from the saved configuration."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first, or drop --resume")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = Config.from_dict(ckpt["config"])
    if state is None:
        state = make_state(cfg, steps_per_epoch=1, device=device)
        state.total_steps = ckpt["step"]
    _unwrap(state.D).load_state_dict(ckpt["D"])
    _unwrap(state.G).load_state_dict(ckpt["G"])
    state.d_opt.load_state_dict(ckpt["d_opt"])
    state.g_opt.load_state_dict(ckpt["g_opt"])
    if state.ema is not None and ckpt["ema"] is not None:
        state.ema.load_state_dict(ckpt["ema"])
    state.step, state.epoch, state.batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
    state.history, state.samples = ckpt["history"], ckpt["samples"]
    state.fixed_z = ckpt["fixed_z"].to(state.device)
    rng = ckpt["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state


def train(cfg: Config, out_dir: str | Path | None = None, resume: bool = False,
          batches: CachedBatches | LoaderBatches | None = None, progress: bool = True,
          models: tuple[nn.Module, nn.Module] | None = None) -> TrainState:
    """Train a GAN; checkpoint, sample grids and loss plot go to ``out_dir`` after every epoch.

    ``models=(D, G)`` trains your own networks (e.g. the notebook's) instead of
    building them from the configuration.

    With ``resume=True`` and a checkpoint in ``out_dir``, training continues
    exactly where it stopped (same step, history, optimiser moments, data order).
    """
    cfg.validate()
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # pick the fastest conv algorithms for our fixed shapes
    batches = batches or training_batches(cfg, device)
    if len(batches) == 0:
        raise DataError(f"not one batch of {cfg.batch_size} images; lower batch_size or add images")
    state = make_state(cfg, len(batches), device, models)
    out = Path(out_dir) if out_dir else None
    ckpt_path = out / "checkpoint.pt" if out else None
    if resume:
        if ckpt_path is None or not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume given but there is no checkpoint at {ckpt_path}")
        saved = Config.from_dict(torch.load(ckpt_path, map_location="cpu", weights_only=False)["config"])
        arch_fields = ("arch", "image_size", "z_size", "g_dim", "d_dim", "n_layers", "d_norm", "g_activation")
        clash = [f for f in arch_fields if getattr(saved, f) != getattr(cfg, f)]
        if clash:
            raise ValueError(f"cannot resume: the checkpoint's {clash} differ from this configuration; "
                             f"use the same preset or another --out folder")
        load_checkpoint(ckpt_path, state)
        print(f"resumed from {ckpt_path} at step {state.step} (epoch {state.epoch})")
    if cfg.compile:
        state.D, state.G = torch.compile(state.D), torch.compile(state.G)

    seconds_before = state.history["seconds"][-1] if state.history["seconds"] else 0.0
    extractor = None  # the Inception network, loaded on the first FID measurement
    sums: dict[str, torch.Tensor] = {}
    count = 0
    t0, seen = time.perf_counter(), 0
    bar = tqdm(total=state.total_steps, initial=state.step, desc=cfg.preset, unit="step", disable=not progress)
    deadline = t0 + 60 * cfg.max_minutes if cfg.max_minutes else math.inf
    while state.step < state.total_steps and time.perf_counter() < deadline:
        for real in batches.epoch(state.epoch, start=state.batch_in_epoch):
            metrics = train_step(state, real)
            state.batch_in_epoch += 1
            seen += real.size(0)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0) + v
            count += 1
            if state.step % cfg.log_every == 0 or state.step == state.total_steps:
                # .item() waits for the device, so history is gathered every log_every steps only.
                record = {k: (v / count).item() for k, v in sums.items()}
                for k, v in record.items():
                    state.history[k].append(v)
                state.history["step"].append(state.step)
                state.history["epoch"].append(state.epoch)
                state.history["seconds"].append(seconds_before + time.perf_counter() - t0)  # training time
                sums, count = {}, 0
                bar.set_postfix(d=f"{record['d_loss']:.3f}", g=f"{record['g_loss']:.3f}",
                                Dx=f"{record['d_real']:.2f}", DGz=f"{record['d_fake']:.2f}",
                                ips=f"{seen / (time.perf_counter() - t0):.0f}")
            bar.update(1)
            if cfg.fid_every and state.step % cfg.fid_every == 0:
                extractor = extractor or inception_extractor(device=device)
                score = evaluate_generator(state.sampler, cfg, cfg.fid_samples, extractor=extractor)
                state.history.setdefault("fid_step", []).append(state.step)
                state.history.setdefault("fid", []).append(score["fid"])
            if cfg.sample_every and state.step % cfg.sample_every == 0:
                state.samples.append((state.step, to_uint8(generate(state.sampler, state.fixed_z))))
            if state.batch_in_epoch == len(batches):  # the end of an epoch
                state.epoch += 1
                state.batch_in_epoch = 0
                if not cfg.sample_every:
                    state.samples.append((state.step, to_uint8(generate(state.sampler, state.fixed_z))))
                if out:
                    save_run(state, out)
            if state.step >= state.total_steps or time.perf_counter() >= deadline:
                break
    bar.close()
    if not state.samples or state.samples[-1][0] != state.step:  # always end with a grid of the final G
        state.samples.append((state.step, to_uint8(generate(state.sampler, state.fixed_z))))
    if out:
        save_run(state, out)
    state.images_per_second = seen / max(time.perf_counter() - t0, 1e-9)
    return state


def save_run(state: TrainState, out: Path) -> None:
    """Checkpoint plus the pictures a human wants to look at."""
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, out / "checkpoint.pt")
    if state.config.keep_generators:
        export_generator(state, out / "generators" / f"step_{state.step:07d}.pt")
    if state.samples:
        save_grid(state.samples[-1][1], out / "samples" / f"step_{state.samples[-1][0]:07d}.png")
    if state.history["step"]:
        fig = plot_losses(state.history)
        fig.savefig(out / "losses.png", dpi=100, bbox_inches="tight")
        import matplotlib.pyplot as plt
        plt.close(fig)


def export_generator(state: TrainState, path: str | Path) -> Path:
    """Save just the generator to show or evaluate (the EMA copy when there is one), in half
    precision: a quarter of a full checkpoint's size, and the images are the same to the eye."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: (v.half() if v.is_floating_point() else v) for k, v in _unwrap(state.sampler).state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"config": state.config.to_dict(), "G": weights, "step": state.step,
                "history": state.history}, tmp)
    os.replace(tmp, path)
    return path


def load_generator(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Config]:
    """The generator of a checkpoint or an exported generator (the EMA copy if any), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no generator at {path}: train one, or use a file from assets/")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = Config.from_dict(ckpt["config"])
    _, G = build_models(cfg)
    if ckpt.get("ema") is not None:
        state = {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    else:
        state = ckpt["G"]
    G.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return G.to(device).eval(), cfg


# ============================================================================
# Evaluation
# ============================================================================
#
# FID (Heusel et al. 2017) compares the mean and covariance of Inception-v3
# pool features of real and generated images:
#     FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)).
# Lower is better; it is biased upwards for small sample counts, so only compare
# numbers measured with the same N.  KID (Binkowski et al. 2018) is an unbiased
# polynomial-kernel MMD on the same features, better suited to small N.

#: Names a local copy of the FID Inception weights (pt_inception-2015-12-05); unset = download.
FID_WEIGHTS_ENV = "FID_WEIGHTS"


class _Precomputed(nn.Module):
    """Hands features we already extracted (and cached) to torchmetrics' FID and KID."""

    def __init__(self, num_features: int = 2048):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def inception_extractor(weights_path: str | Path | None = None, device: torch.device | str = "cpu") -> nn.Module:
    """The standard FID Inception-v3 (TF 2015-12-05 weights) from torchmetrics/torch-fidelity.

    ``weights_path`` (or $FID_WEIGHTS) points at a local copy; otherwise the
    library downloads the weights on first use.
    """
    from torchmetrics.image.fid import NoTrainInceptionV3

    path = weights_path or os.environ.get(FID_WEIGHTS_ENV) or None
    if path and not Path(path).is_file():
        raise FileNotFoundError(f"FID weights {path} do not exist; fix the path or unset {FID_WEIGHTS_ENV} "
                                "to download them")
    model = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                               feature_extractor_weights_path=str(path) if path else None)
    return model.to(device).eval()


@torch.no_grad()
def inception_features(images: Iterator[torch.Tensor] | torch.Tensor, extractor: nn.Module,
                       batch_size: int = 50) -> torch.Tensor:
    """(N, 2048) float64 pool features of uint8 NCHW images (any size: Inception resizes to 299)."""
    device = next(extractor.parameters()).device
    batches = images.split(batch_size) if torch.is_tensor(images) else images
    feats = [extractor(b.to(device)).double().cpu() for b in batches]
    return torch.cat(feats)


def real_sample_indices(n_files: int, n: int, seed: int = 0) -> np.ndarray:
    """The fixed random pick of n real images that FID compares against (sorted, for memmap reads)."""
    return torch.randperm(n_files, generator=torch.Generator().manual_seed(seed))[:n].sort().values.numpy()


def real_features(n: int, image_size: int, extractor: nn.Module, data: str = "celeba", crop: int = 0,
                  cache_dir: str | Path | None = None) -> torch.Tensor:
    """Inception features of n real faces at ``image_size``, computed once and cached on disk.

    Real faces are resized to the model's resolution first, so a 32x32 model is
    compared with 32x32 faces.  The cache key includes the data set's file list
    (names, sizes, times), so changed data is recomputed.
    """
    folder = resolve_image_dir(data)
    files = list_images(folder)
    if n > len(files):
        raise ValueError(f"asked for {n} real images but {folder} holds {len(files)}")
    key = cache_key(files, image_size, crop)
    path = Path(cache_dir or CACHE_DIR) / "fid" / f"real-{key}-{image_size}px-n{n}.pt"
    if path.is_file():
        return torch.load(path)
    images = build_image_cache(files, image_size, crop)
    pick = real_sample_indices(len(files), n)
    batches = (torch.from_numpy(images[pick[i:i + 50]]).permute(0, 3, 1, 2) for i in range(0, n, 50))
    feats = inception_features(tqdm(batches, total=math.ceil(n / 50), desc=f"real features ({n})", leave=False),
                               extractor)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(feats, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    return feats


def fid_kid(real: torch.Tensor, fake: torch.Tensor, kid_subset: int = 1000) -> dict[str, float]:
    """FID and KID (mean, std over subsets) between two sets of Inception features."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    fid = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    subset = min(kid_subset, len(real), len(fake))
    with warnings.catch_warnings():  # KID keeps all features in memory: intended, they are ours already
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subset_size=subset, subsets=50)
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}


def truncated_latent(n: int, cfg: Config, truncation: float = 0.0, seed: int | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """z ~ N(0, I), or with ``truncation`` > 0 resampled to lie within [-t, t] (the truncation
    trick: smaller t gives more typical, less varied faces)."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    z = sample_latent(n, cfg, generator=g)
    if truncation:
        nn.init.trunc_normal_(z, 0.0, 1.0, -truncation, truncation, generator=g)
    return z.to(device)


def generated_batches(G: nn.Module, cfg: Config, n: int, batch_size: int = 100, seed: int = 0,
                      truncation: float = 0.0) -> Iterator[torch.Tensor]:
    """n samples of G as uint8 NCHW batches, from a seeded latent stream."""
    device = next(G.parameters()).device
    for i in range(0, n, batch_size):
        z = truncated_latent(min(batch_size, n - i), cfg, truncation, seed + i, device)
        yield to_uint8(generate(G, z))


def evaluate_generator(G: nn.Module, cfg: Config, n: int = 1000, weights_path: str | Path | None = None,
                       extractor: nn.Module | None = None, seed: int = 0) -> dict[str, float]:
    """FID-n and KID of G against n real faces at G's resolution (same protocol for every model)."""
    extractor = extractor or inception_extractor(weights_path)
    real = real_features(n, cfg.image_size, extractor, cfg.data, cfg.crop)
    fake = inception_features(generated_batches(G, cfg, n, seed=seed), extractor)
    return {**fid_kid(real, fake), "n": n}


def write_samples(G: nn.Module, cfg: Config, n: int, out_dir: str | Path, seed: int = 0,
                  truncation: float = 0.0) -> list[Path]:
    """Write n generated images as PNG files, for any external FID tool to score."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for batch in generated_batches(G, cfg, n, seed=seed, truncation=truncation):
        for img in batch:
            paths.append(out_dir / f"{len(paths):06d}.png")
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths


def write_real_samples(cfg: Config, n: int, out_dir: str | Path, seed: int = 0) -> list[Path]:
    """Write the n real faces that FID uses (``seed=0``), at the model's resolution, as PNG files."""
    from PIL import Image

    files = list_images(resolve_image_dir(cfg.data))
    images = build_image_cache(files, cfg.image_size, cfg.crop)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for j in real_sample_indices(len(files), n, seed):
        paths.append(out_dir / f"{len(paths):06d}.png")
        Image.fromarray(np.asarray(images[j])).save(paths[-1])
    return paths


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation: Gaussian latents live near a sphere, and slerp stays on it
    (a straight line would cut through the low-density middle and give washed-out faces)."""
    a, b = z0.flatten(), z1.flatten()
    omega = torch.arccos(torch.clamp(torch.dot(a / a.norm(), b / b.norm()), -1.0, 1.0))
    if omega.abs() < 1e-6:
        return (1 - t) * z0 + t * z1
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


def face_for_seed(G: nn.Module, cfg: Config, seed: int, truncation: float = 0.0) -> np.ndarray:
    """The face G draws for one seed, as an HxWx3 uint8 array (the latent explorer's callback)."""
    z = truncated_latent(1, cfg, truncation, seed, next(G.parameters()).device)
    return to_uint8(generate(G, z))[0].permute(1, 2, 0).numpy()


def interpolate_faces(G: nn.Module, cfg: Config, seed_a: int, seed_b: int, t: float,
                      truncation: float = 0.0) -> np.ndarray:
    """The face at fraction t of the slerp path between two seeds' latents, as HxWx3 uint8."""
    device = next(G.parameters()).device
    za = truncated_latent(1, cfg, truncation, seed_a, device)
    zb = truncated_latent(1, cfg, truncation, seed_b, device)
    return to_uint8(generate(G, slerp(za, zb, t)))[0].permute(1, 2, 0).numpy()


# ============================================================================
# Visualization
# ============================================================================


def image_grid(images: torch.Tensor, nrow: int = 8) -> np.ndarray:
    """A batch (float in [-1, 1] or uint8) as one HxWx3 uint8 picture, via torchvision's make_grid."""
    from torchvision.utils import make_grid

    if images.dtype != torch.uint8:
        images = to_uint8(images)
    grid = make_grid(images.cpu(), nrow=nrow, padding=2, pad_value=255)
    return grid.permute(1, 2, 0).numpy()


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, nrow)).save(path)
    return path


def show_images(images: torch.Tensor, nrow: int = 8, title: str | None = None, size: float = 6.0):
    """Show a batch of images as a grid; returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(image_grid(images, nrow))
    ax.axis("off")
    if title:
        ax.set_title(title)
    return fig


def plot_losses(history: dict):
    """Loss curves of D and G, and the mean scores D gives to real and fake images."""
    import matplotlib.pyplot as plt

    with_fid = bool(history.get("fid"))
    fig, axes = plt.subplots(1, 3 if with_fid else 2, figsize=(18 if with_fid else 12, 4))
    ax1, ax2 = axes[:2]
    steps = history["step"]
    if with_fid:
        axes[2].plot(history["fid_step"], history["fid"], "o-", color="C2")
        axes[2].set(xlabel="step", ylabel="FID (lower is better)", title="Sample quality", yscale="log")
    ax1.plot(steps, history["d_loss"], label="discriminator", alpha=0.8)
    ax1.plot(steps, history["g_loss"], label="generator", alpha=0.8)
    ax1.set(xlabel="step", ylabel="loss", title="Training losses")
    ax1.legend()
    ax2.plot(steps, history["d_real"], label="D(x), real")
    ax2.plot(steps, history["d_fake"], label="D(G(z)), fake")
    ax2.set(xlabel="step", ylabel="mean D output", title="What D thinks")
    ax2.legend()
    fig.tight_layout()
    return fig


def show_samples_over_training(samples: list, n_images: int = 8, max_rows: int = 8):
    """One row of fixed-latent samples per sample point: the same faces, emerging over training."""
    import matplotlib.pyplot as plt

    if not samples:
        raise ValueError("no samples recorded yet: train for at least one epoch (or set sample_every)")
    picks = samples if len(samples) <= max_rows else \
        [samples[round(i)] for i in np.linspace(0, len(samples) - 1, max_rows)]
    rows = torch.cat([imgs[:n_images] for _, imgs in picks])
    fig, ax = plt.subplots(figsize=(n_images * 1.1, len(picks) * 1.2))
    ax.imshow(image_grid(rows, nrow=n_images))
    side = picks[0][1].shape[-1] + 2
    ax.set_yticks([side * (i + 0.5) for i in range(len(picks))], [f"step {s}" for s, _ in picks])
    ax.set_xticks([])
    ax.set_title("Fixed latent vectors over training")
    return fig


def save_progress_gif(samples: list, path: str | Path, n_images: int = 16, nrow: int = 4,
                      duration_ms: int = 150) -> Path:
    """An animated GIF of the fixed-latent grids over training (the last frame held longer)."""
    from PIL import Image

    if not samples:
        raise ValueError("no samples recorded: train for at least one epoch (or set sample_every)")
    frames = [Image.fromarray(image_grid(images[:n_images], nrow)) for _, images in samples]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:] + [frames[-1]] * 10,
                   duration=duration_ms, loop=0)
    return path


# ============================================================================
# Benchmark
# ============================================================================
#
# `python helpers.py bench` measures, in one run, the classic pipeline (PIL
# transforms through a DataLoader, feeding the textbook D-step/G-step loop) and
# this project's (uint8 cache, tensor-op batches, one G forward per step,
# channels_last, fused Adam), on the same models and batch size.  The project's
# pipeline runs twice: in fp32, and in bf16 autocast where the hardware has it.

BENCH_CASES = (("32px conv_dim 32", "small32"), ("32px conv_dim 64", "classic32"), ("64px ngf=ndf=64", "dcgan64"))


def peak_gflops(device: torch.device, dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """The practical peak GFLOP/s of this machine in ``dtype``.

    The faster of a 2048x2048 matmul and a large 3x3 convolution (256 channels,
    32x32, batch 32): on some CPUs the convolution library beats the matmul
    library.  Each is timed three times and the best time kept, so that a busy
    moment on a shared machine does not lower the peak.
    """
    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    x = torch.randn(32, 256, 32, 32, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    candidates = ((lambda: a @ a, 2 * 2048**3), (lambda: F.conv2d(x, w, padding=1), 2 * 32 * 256 * 32 * 32 * 256 * 9))
    best_rate = 0.0
    for op, flops in candidates:
        for _ in range(2):
            op()
        for _ in range(3):
            _sync(device)
            t = time.perf_counter()
            for _ in range(repeats):
                op()
            _sync(device)
            best_rate = max(best_rate, flops * repeats / (time.perf_counter() - t) / 1e9)
    return best_rate


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_flops(cfg: Config, batch_size: int) -> float:
    """FLOPs of one training step (forward and backward of both nets), counted by PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode

    state = make_state(cfg.replace(channels_last=False, fused_adam=False), 1, "cpu")
    real = torch.zeros(batch_size, 3, cfg.image_size, cfg.image_size)
    with FlopCounterMode(display=False) as counter:
        train_step(state, real)
    return float(counter.get_total_flops())


def _bench_worker(preset: str, pipeline: str, steps: int, warmup: int, subset: int, device: str, queue) -> None:
    """Runs in a fresh process, so that its peak memory is its own.

    ``pipeline``: "classic", "fast" (the preset's own settings), "fast-fp32" or "fast-bf16".
    """
    import resource

    torch.manual_seed(0)
    dev = torch.device(device)
    cfg = make_config(preset, subset=subset, device=device)
    if pipeline == "classic":
        cfg = cfg.replace(channels_last=False, fused_adam=False, amp=False)
        loader = get_dataloader(cfg.batch_size, cfg.image_size, cfg.data, subset=subset)
        D, G = build_models(cfg)
        D, G = D.to(dev), G.to(dev)
        d_opt, g_opt = make_optimizers(D, G, cfg)
        smooth = cfg.real_label[0]

        def batches():
            while True:
                yield from loader

        def run(real):
            real = real.to(dev)
            z = sample_latent(real.size(0), cfg, dev)
            discriminator_step(D, G, d_opt, real, z, smooth)
            generator_step(D, G, g_opt, z)
    else:
        if pipeline != "fast":
            cfg = cfg.replace(amp=pipeline == "fast-bf16")
        data = training_batches(cfg, dev)
        state = make_state(cfg, len(data), dev)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True

        def batches():
            epoch = 0
            while True:
                yield from data.epoch(epoch)
                epoch += 1

        def run(real):
            train_step(state, real)
    stream = batches()
    for _ in range(warmup):
        run(next(stream))
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        run(next(stream))
    _sync(dev)
    seconds = time.perf_counter() - t
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    queue.put({"img_s": steps * cfg.batch_size / seconds, "peak_mb": peak_mb,
               "precision": training_precision(cfg, dev)})


def sgd_update(state: TrainState, real: torch.Tensor, seed: int = 0, amp: bool | None = None) -> dict[str, torch.Tensor]:
    """The change one ``train_step`` under plain SGD would make to D's and G's parameters (flattened).

    With SGD the update is the learning rate times the gradient itself, so two
    updates can be compared directly.  ``seed`` fixes the step's latents; ``amp``
    overrides the configuration's.  Runs on a copy: ``state`` is left untouched.
    """
    s = copy.deepcopy(state)
    if amp is not None:
        s.config = s.config.replace(amp=amp)
    s.d_opt = torch.optim.SGD(s.D.parameters(), lr=s.config.lr_d)
    s.g_opt = torch.optim.SGD(s.G.parameters(), lr=s.config.lr_g)
    s.step, s.ema = s.config.n_critic - 1, None  # a step that updates G as well as D

    def flat() -> dict[str, torch.Tensor]:
        return {k: torch.cat([p.detach().flatten().clone() for p in net.parameters()]) for k, net in (("D", s.D), ("G", s.G))}

    before = flat()
    torch.manual_seed(seed)
    train_step(s, real)
    return {k: v - before[k] for k, v in flat().items()}


def bf16_rounding_vs_batch_noise(state: TrainState, real: torch.Tensor, other_real: torch.Tensor) -> dict[str, float]:
    """How much bf16 changes one update, next to how much another minibatch changes it.

    From ``state``'s weights, one ``sgd_update`` runs three times: fp32 on ``real``;
    bf16 on ``real`` with the same latents; fp32 on ``other_real`` with other latents.
    Returned, per net: |bf16 - fp32| / |other batch - fp32|.  SGD already follows a
    noisy gradient, so a ratio well below 1 means bf16 adds a small fraction of the
    noise that training lives with anyway.
    """
    if training_precision(state.config.replace(amp=True), state.device) != "bf16":
        raise RuntimeError(f"bf16 is not native on this {state.device.type}, so there is nothing to compare")
    fp32 = sgd_update(state, real, 0, amp=False)
    bf16 = sgd_update(state, real, 0, amp=True)
    other = sgd_update(state, other_real, 1, amp=False)
    return {k: ((bf16[k] - fp32[k]).norm() / (other[k] - fp32[k]).norm()).item() for k in fp32}


def precision_report(checkpoint: str | Path, batches: int = 4) -> dict[str, float]:
    """Print ``bf16_rounding_vs_batch_noise`` for a trained checkpoint, averaged over a few batches."""
    state = load_checkpoint(checkpoint, device="cpu")
    cfg = state.config
    data = training_batches(cfg.replace(subset=cfg.batch_size * 2 * batches, device="cpu"), "cpu")
    it = data.epoch(0)
    ratios = [bf16_rounding_vs_batch_noise(state, next(it), next(it)) for _ in range(batches)]
    mean = {k: sum(r[k] for r in ratios) / len(ratios) for k in ratios[0]}
    print(f"{checkpoint} ({cfg.preset}, step {state.step}, batch {cfg.batch_size}): "
          "|bf16 update - fp32 update| / |update on another batch - fp32 update|: "
          + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    return mean


def _run_worker(ctx, *args) -> dict:
    queue = ctx.Queue()
    proc = ctx.Process(target=_bench_worker, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def preset_speeds(quick: bool = False, device: str | None = None) -> list[dict]:
    """Training img/s of every preset on the project's pipeline (batch 64), with model sizes."""
    import multiprocessing as mp

    dev = pick_device(device or "auto")
    ctx = mp.get_context("spawn")
    resolve_image_dir("celeba")
    print(f"{'preset':<12} {'D params':>10} {'G params':>10} {'img/s':>8}   ({dev}, batch 64)")
    rows = []
    for preset in PRESETS:
        cfg = make_config(preset)
        D, G = build_models(cfg)
        steps = max(cfg.n_critic, 3 if quick else 10) if cfg.image_size == 64 and dev.type == "cpu" else 30
        r = _run_worker(ctx, preset, "fast", steps, 2, 4096 if quick else 0, str(dev))
        rows.append({"preset": preset, "d_params": count_parameters(D), "g_params": count_parameters(G), **r})
        print(f"{preset:<12} {rows[-1]['d_params']:>10,} {rows[-1]['g_params']:>10,} {r['img_s']:>8.0f}", flush=True)
    return rows


def benchmark(quick: bool = False, device: str | None = None, repeats: int = 1) -> list[dict]:
    """Classic vs fast pipeline (fp32, and bf16 where native) for each case; prints a table.

    GFLOP/s count the FLOPs of the project's step (the classic step does about 18%
    more, for its second G forward and D's weight gradients in the G step) and are
    compared with the peak (``peak_gflops``) of the precision that the row used.
    """
    import multiprocessing as mp

    dev = pick_device(device or "auto")
    ctx = mp.get_context("spawn")
    resolve_image_dir("celeba")  # fetch the data once, before the timed workers start
    subset = 4096 if quick else 0
    peaks = {"fp32": peak_gflops(dev)}
    pipelines = ["classic", "fast-fp32"]
    if native_bf16(dev.type):
        peaks["bf16"] = peak_gflops(dev, torch.bfloat16)
        pipelines.append("fast-bf16")
    print(f"device {dev} ({torch.get_num_threads()} threads), peak "
          + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()) + f" GFLOP/s{', quick mode' if quick else ''}")
    print(f"{'case':<18} {'pipeline':<10} {'img/s':>8} {'ratio':>6} {'peak MB':>8} {'GFLOP/s':>8} {'% peak':>7}")
    rows = []
    for name, preset in BENCH_CASES:
        cfg = make_config(preset)
        flops_per_image = step_flops(cfg, 16) / 16
        big = cfg.image_size == 64 and dev.type == "cpu"
        steps = (4 if big else 20) if quick else (15 if big else 80)
        results = {}
        for _ in range(repeats):  # alternate the pipelines, so load changes hit them alike
            for pipeline in pipelines:
                result = _run_worker(ctx, preset, pipeline, steps, 2 if quick else 5, subset, str(dev))
                best = results.get(pipeline)
                if best is None or result["img_s"] > best["img_s"]:
                    results[pipeline] = result
        for pipeline in pipelines:
            r = results[pipeline]
            gflops = r["img_s"] * flops_per_image / 1e9
            peak = peaks[r["precision"]]
            ratio = r["img_s"] / results["classic"]["img_s"]
            rows.append({"case": name, "preset": preset, "pipeline": pipeline, **r, "ratio": ratio,
                         "gflops": gflops, "peak_fraction": gflops / peak})
            default = pipeline != "classic" and r["precision"] == training_precision(cfg, dev)
            rows[-1]["default"] = default
            print(f"{name:<18} {pipeline:<10} {r['img_s']:>8.0f} {ratio:>5.2f}x {r['peak_mb']:>8.0f} "
                  f"{gflops:>8.1f} {100 * gflops / peak:>6.1f}%{'  *' if default else ''}", flush=True)
    print("* what `train` runs on this machine by default (bf16 where native; --amp false for exact fp32)")
    return rows


# ============================================================================
# Classroom exercise
# ============================================================================
#
# The solution notebook marks what learners write with nbgrader's markers,
# ``### BEGIN SOLUTION`` and ``### END SOLUTION``.  `make_exercise_notebook`
# replaces each region with a scaffold: for names imported from this module, a
# stub with the same signature and docstring that raises NotImplementedError;
# for assignments, ``name = None`` with a TODO.  So the exercise never imports
# the answers, and it cannot drift from the solution.

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
EXERCISE_TODOS = {
    "get_dataloader": "Build the transform (Resize, CenterCrop, RandomHorizontalFlip, ToTensor, then Normalize "
                      "with mean and std 0.5 to reach [-1, 1]), a dataset of the images in "
                      "helpers.resolve_image_dir(data_dir) (helpers.FaceImages takes a folder and a transform), "
                      "and return a DataLoader with batch_size, shuffle=True and drop_last=True.",
    "scale": "Map x from [0, 1] to feature_range: x * (max - min) + min.",
    "Discriminator.__init__": "n_layers Conv2d layers, kernel 4, stride 2, padding 1; channels conv_dim, "
                              "2*conv_dim, 4*conv_dim...; BatchNorm2d after all but the first; LeakyReLU(0.2). "
                              "Then one nn.Linear from the flattened feature map to 1 output.",
    "Discriminator.forward": "Apply the convolutions, flatten with x.flatten(1) (keep the batch dimension), "
                             "apply the linear layer. Return the logits: no sigmoid.",
    "Generator.__init__": "nn.Linear(z_size, top * side * side) with top = conv_dim * 2**(n_layers - 1) and "
                          "side = image_size // 2**n_layers; then BatchNorm2d + ReLU, and n_layers "
                          "ConvTranspose2d layers (kernel 4, stride 2, padding 1) halving the channels, "
                          "the last one to 3 channels followed by tanh.",
    "Generator.forward": "Apply the linear layer to z.flatten(1), reshape to (N, top, side, side), then apply "
                         "the transposed convolutions.",
    "weights_init_normal": "For Conv2d, ConvTranspose2d and Linear modules: nn.init.normal_(m.weight, 0.0, 0.02) "
                           "and nn.init.zeros_(m.bias) when there is a bias.",
    "real_loss": "labels = 1 (0.9 when smooth is True, the value itself when smooth is a number), then "
                 "nn.BCEWithLogitsLoss() on the raw D_out and the labels.",
    "fake_loss": "labels = 0, then nn.BCEWithLogitsLoss() on the raw D_out and the labels.",
    "discriminator_step": "zero_grad; fake = G(z).detach(); loss = real_loss(D(real_images), smooth) + "
                          "fake_loss(D(fake)); backward; step; return the loss.",
    "generator_step": "zero_grad; loss = real_loss(D(G(z))) (G wants its fakes called real); backward; step; "
                      "return the loss.",
    "d_optimizer": "torch.optim.Adam over D.parameters(), lr 2e-4, betas (0.5, 0.999)",
    "g_optimizer": "torch.optim.Adam over G.parameters(), lr 2e-4, betas (0.5, 0.999)",
}


def _signature_text(fn) -> str:
    import inspect

    sig = inspect.signature(fn)
    params = []
    for p in sig.parameters.values():
        text = p.name + (f": {p.annotation}" if p.annotation is not inspect.Parameter.empty else "")
        if p.default is not inspect.Parameter.empty:
            text += f" = {p.default!r}"
        params.append(text)
    ret = f" -> {sig.return_annotation}" if sig.return_annotation is not inspect.Signature.empty else ""
    return f"({', '.join(params)}){ret}"


def _docstring(obj, indent: str) -> list[str]:
    import inspect

    doc = inspect.cleandoc(obj.__doc__) if obj.__doc__ else None  # its own docstring, not an inherited one
    if not doc:
        return []
    lines = [f'{indent}"""{doc.splitlines()[0]}'] + [f"{indent}{l}" if l else "" for l in doc.splitlines()[1:]]
    return lines + [f'{indent}"""'] if len(lines) > 1 else [lines[0] + '"""']


def _todo(key: str, indent: str) -> list[str]:
    import textwrap

    text = textwrap.wrap(f"TODO: {EXERCISE_TODOS.get(key, 'implement this.')}", 96 - len(indent))
    return [f"{indent}# {line}" for line in text] + [f"{indent}raise NotImplementedError"]


def exercise_stub(name: str) -> str:
    """Scaffold for one name of this module: same signature and docstring, a TODO, NotImplementedError."""
    obj = globals()[name]
    if isinstance(obj, type):
        base = "nn.Module" if issubclass(obj, nn.Module) else obj.__bases__[0].__name__
        lines = [f"class {name}({base}):"] + _docstring(obj, "    ")
        for method in ("__init__", "forward"):
            fn = getattr(obj, method)
            lines += ["", f"    def {method}{_signature_text(fn)}:"] + _docstring(fn, "        ")
            if method == "__init__":
                lines.append("        super().__init__()")
            lines += _todo(f"{name}.{method}", "        ")
        return "\n".join(lines)
    return "\n".join([f"def {name}{_signature_text(obj)}:"] + _docstring(obj, "    ") + _todo(name, "    "))


def exercise_region(solution: str) -> str:
    """The scaffold that replaces one solution region."""
    import ast

    out = []
    for node in ast.parse(solution).body:
        if isinstance(node, ast.ImportFrom) and node.module == "helpers":
            out += [exercise_stub(alias.name) for alias in node.names]
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                out.append(f"{target.id} = None  # TODO: {EXERCISE_TODOS.get(target.id, 'fill this in')}")
        else:
            raise ValueError(f"cannot scaffold this solution line: {ast.unparse(node)!r}; use "
                             "'from helpers import ...' or simple assignments inside solution regions")
    body = "\n\n\n".join(out) if any(o.startswith(("def ", "class ")) for o in out) else "\n".join(out)
    header = ["# Your code goes here: replace each `raise NotImplementedError` (or None) with an implementation."]
    needs = [("torch.", "import torch"), ("nn.", "import torch.nn as nn"), ("Path", "from pathlib import Path"),
             ("DataLoader", "from torch.utils.data import DataLoader")]
    header += [imp for key, imp in needs if key in body]
    return "\n".join(header) + "\n\n" + body


def make_exercise_notebook(solution_path: str | Path = PROJECT_ROOT / "face_generation.ipynb",
                           exercise_path: str | Path = PROJECT_ROOT / "face_generation_exercise.ipynb") -> Path:
    """Write the exercise notebook: the solution with every solution region scaffolded and no outputs."""
    import nbformat

    nb = nbformat.read(solution_path, as_version=4)
    # Keep the kernel, drop what execution wrote (widget state, versions): the exercise must not
    # change when the solution notebook is re-run.
    nb.metadata = nbformat.from_dict({"kernelspec": nb.metadata.get("kernelspec", {}),
                                      "language_info": {"name": "python"}})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
        src = cell.source
        while BEGIN_SOLUTION in src:
            start = src.index(BEGIN_SOLUTION)
            end = src.index(END_SOLUTION, start)
            region = src[start + len(BEGIN_SOLUTION):end].strip("\n")
            src = src[:start] + exercise_region(region) + "\n\n" + src[end + len(END_SOLUTION):].lstrip("\n")
        cell.source = src
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(
        "**Exercise version.** Cells marked *Your code goes here* are yours to write: each is checked by the "
        "test call below it, which explains what is wrong until it passes. Generated from "
        "`face_generation.ipynb` by `python helpers.py exercise`; edit the solution notebook, not this one."))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"  # stable ids, so regenerating gives the same file
    exercise_path = Path(exercise_path)
    nbformat.write(nb, exercise_path)
    return exercise_path


# ============================================================================
# Command line
# ============================================================================


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One --flag per Config field; unset flags keep the preset's value."""
    for f in dataclasses.fields(Config):
        if f.name == "preset":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes", "on"),
                                default=None, metavar="BOOL")
        elif f.type == "tuple":
            parser.add_argument(flag, type=lambda s: tuple(float(v) for v in s.split(",")),
                                default=None, metavar="LO,HI")
        else:
            parser.add_argument(flag, type={"int": int, "float": float}.get(f.type, str), default=None)


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    """The preset (or ``base``, a resumed run's saved configuration) with the flags given applied."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                 if f.name != "preset" and getattr(args, f.name, None) is not None}
    if args.dry_run:
        # A smoke test: a few steps on a small subset, so CI finishes in seconds.
        overrides = {"max_steps": 5, "subset": 512, "batch_size": 16, "log_every": 1, **overrides}
    if base is not None and args.preset in (None, base.preset):
        return base.replace(**overrides)
    return make_config(args.preset or "small32", **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a GAN on faces")
    p.add_argument("--preset", default=None, choices=list(PRESETS), help="recipe to train (default small32)")
    p.add_argument("--out", default=None, help="run folder (default runs/PRESET)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--dry-run", action="store_true", help="a few steps on a small subset (smoke test)")
    _add_config_arguments(p)

    p = sub.add_parser("sample", help="write N generated faces as PNG files (for any FID tool)")
    p.add_argument("--generator", required=True, help="a checkpoint.pt or an exported generator (assets/*.pt)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truncation", type=float, default=0.0, help="resample |z| > t (0 = off)")
    p.add_argument("--real", action="store_true",
                   help="write N real faces at the generator's resolution instead (the FID reference set)")

    p = sub.add_parser("fid", help="FID and KID of a generator against real faces at its resolution")
    p.add_argument("--generator", required=True)
    p.add_argument("--n", type=int, default=1000, help="samples (and real images); FID falls as N grows")
    p.add_argument("--weights", default=None, help=f"local FID Inception weights (default ${FID_WEIGHTS_ENV}, "
                   "else download)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("exercise", help="regenerate face_generation_exercise.ipynb from the solution notebook")
    p.add_argument("--solution", default=str(PROJECT_ROOT / "face_generation.ipynb"))
    p.add_argument("--out", default=str(PROJECT_ROOT / "face_generation_exercise.ipynb"))

    p = sub.add_parser("bench", help="training speed: the classic pipeline against this project's")
    p.add_argument("--quick", action="store_true", help="fewer steps on a 4,096-image subset (under 2 minutes)")
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    p.add_argument("--repeats", type=int, default=1, help="alternate the pipelines this many times, keep the best")
    p.add_argument("--presets", action="store_true", help="instead: img/s and size of every preset")
    p.add_argument("--precision", metavar="CHECKPOINT", default=None,
                   help="instead: how much bf16 changes this checkpoint's updates, next to minibatch noise")

    args = parser.parse_args(argv)
    if args.command == "bench":
        if args.precision:
            precision_report(args.precision)
        elif args.presets:
            preset_speeds(args.quick, args.device)
        else:
            benchmark(args.quick, args.device, args.repeats)
    elif args.command == "exercise":
        print(f"wrote {make_exercise_notebook(args.solution, args.out)}")
    elif args.command == "sample":
        G, cfg = load_generator(args.generator, pick_device())
        if args.real:
            paths = write_real_samples(cfg, args.n, args.out, args.seed)
            print(f"wrote {len(paths)} real {cfg.image_size}px faces to {args.out}")
        else:
            paths = write_samples(G, cfg, args.n, args.out, args.seed, args.truncation)
            print(f"wrote {len(paths)} generated {cfg.image_size}px faces to {args.out}")
    elif args.command == "fid":
        G, cfg = load_generator(args.generator, pick_device())
        extractor = inception_extractor(args.weights, pick_device())
        result = evaluate_generator(G, cfg, args.n, extractor=extractor, seed=args.seed)
        print(f"{args.generator}: FID-{args.n} {result['fid']:.2f}, KID {result['kid']:.4f} "
              f"+- {result['kid_std']:.4f} ({cfg.image_size}px, against {args.n} real faces at {cfg.image_size}px)")
    elif args.command == "train":
        out = Path(args.out or f"runs/{args.preset or 'small32'}{'-dry-run' if args.dry_run else ''}")
        base = None
        if args.resume and (out / "checkpoint.pt").is_file():
            base = Config.from_dict(torch.load(out / "checkpoint.pt", map_location="cpu",
                                               weights_only=False)["config"])
        cfg = config_from_args(args, base)
        device = pick_device(cfg.device)
        print(f"training {cfg.preset} on {device} ({training_precision(cfg, device)}) -> {out}")
        state = train(cfg, out, resume=args.resume)
        h = state.history
        print(f"done: step {state.step}, epoch {state.epoch}, {state.images_per_second:.0f} img/s, "
              f"d_loss {h['d_loss'][-1]:.3f}, g_loss {h['g_loss'][-1]:.3f}, "
              f"D(x) {h['d_real'][-1]:.2f}, D(G(z)) {h['d_fake'][-1]:.2f}; checkpoint {out / 'checkpoint.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
