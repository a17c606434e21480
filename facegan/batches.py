"""Training batches: decode every image once into a uint8 cache, then batch with tensor ops.

The classic pipeline decodes and resizes each JPEG with PIL on every epoch; at 32x32
that costs more than the networks.  ``build_image_cache`` does it once into a
memory-mapped (N, H, W, 3) uint8 array, keyed by the source files and the
preprocessing, and ``CachedBatches`` shuffles, flips and scales with tensor ops,
reproducibly per ``(seed, epoch)`` so a resumed run sees the very same batches.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from tqdm.auto import tqdm

from . import distributed as ddp
from .config import Config
from .data import DataError, get_dataloader, image_transform, list_images, read_image, resolve_image_dir
from .data import cache_dir as data_cache_dir

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
    cache_dir = Path(cache_dir or data_cache_dir())
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
        except DataError as e:
            # From a worker process the message carries the worker's traceback: keep its last line.
            raise DataError(str(e).strip().splitlines()[-1].removeprefix(f"{DataError.__module__}.DataError: ")) from e
        finally:
            tmp.unlink(missing_ok=True)  # left only when decoding failed (e.g. a corrupt image)
        prune_stale_caches(cache_dir, prefix, keep=path)
    return np.load(path, mmap_mode="r")


def prune_stale_caches(cache_dir: Path, prefix: str, keep: Path) -> list[Path]:
    """Delete the caches named ``prefix*.npy`` other than ``keep`` (earlier versions of the same
    images), and caches in the older naming without a source tag, which nothing can reach any more."""
    removed = []
    legacy = re.compile(r"faces-\d+px-c\d+-[0-9a-f]{16}\.npy")  # named without the source tag: unreachable
    legacy_files = [p for p in cache_dir.glob("faces-*.npy") if legacy.fullmatch(p.name)]
    for old in [*cache_dir.glob(f"{prefix}*.npy"), *legacy_files]:
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

    Distributed (``world_size`` > 1): batch ``b`` of an epoch is the global batch of
    ``batch_size * world_size`` images that one process would read with that batch size,
    and ``rank`` gets its own ``batch_size`` slice of it; the order is still a function of
    ``(seed, epoch)`` alone.
    """

    #: Faces kept out of training for D's held-out score (``Config.holdout``; facegan/holdout.py).
    held_out: np.ndarray | None = None

    def __init__(self, images: np.ndarray, batch_size: int, device: torch.device | str = "cpu",
                 seed: int = 0, flip: bool = True, channels_last: bool = False, preload: bool | None = None,
                 rank: int = 0, world_size: int = 1):
        self.images, self.batch_size, self.device = images, batch_size, torch.device(device)
        self.seed, self.flip, self.channels_last = seed, flip, channels_last
        self.rank, self.world_size = rank, world_size  # this process's slice of each global batch
        if preload is None:
            preload = self.device.type == "cuda" and images.nbytes < 0.25 * torch.cuda.mem_get_info(self.device)[0]
        self.resident = torch.from_numpy(np.array(images)).to(self.device) if preload else None
        if len(images) < batch_size * world_size:
            per = f" ({batch_size} per process x {world_size} processes)" if world_size > 1 else ""
            raise DataError(f"{len(images)} images are fewer than one batch of {batch_size * world_size}{per}; "
                            "lower batch_size or add images")

    def __len__(self) -> int:
        return len(self.images) // (self.batch_size * self.world_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.images), generator=g)
        flips = torch.rand(len(self.images), generator=g) < 0.5
        pin = self.device.type == "cuda"
        for b in range(start, len(self)):
            first = (b * self.world_size + self.rank) * self.batch_size  # = b * batch_size in one process
            idx = order[first:first + self.batch_size]
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


def training_batches(cfg: Config, device: torch.device | str = "cpu",
                     folder: Path | None = None) -> CachedBatches | LoaderBatches:
    """The batches a run trains on, by the fast cached path or the classic loader.

    ``folder`` is the image folder when the caller has already resolved ``cfg.data``.
    """
    folder = folder or resolve_image_dir(cfg.data, cfg.recursive)
    rank, world = ddp.rank(), ddp.world_size()
    if not cfg.fast_data:
        if world > 1:
            raise ValueError("distributed training reads the uint8 cache: drop --fast-data false")
        return LoaderBatches(get_dataloader(cfg.batch_size, cfg.image_size, folder, cfg.crop, cfg.subset,
                                            cfg.recursive, seed=cfg.seed), device, cfg.seed)
    files = list_images(folder, cfg.recursive)
    if cfg.subset:
        files = files[:cfg.subset]
    images, held_out = split_held_out(build_image_cache(files, cfg.image_size, cfg.crop), cfg.holdout,
                                      cfg.batch_size * world)
    batches = CachedBatches(images, cfg.batch_size, device, cfg.seed, channels_last=cfg.channels_last,
                            rank=rank, world_size=world)  # distributed: this rank's shard
    batches.held_out = held_out
    return batches


def split_held_out(images: np.ndarray, holdout: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(training images, held-out images): the last ``holdout`` images stay out of training.

    The cache holds every image either way, so turning ``holdout`` on or off rebuilds nothing.
    """
    if holdout and len(images) - holdout < batch_size:
        raise DataError(f"holdout={holdout} leaves {len(images) - holdout} of {len(images)} images to train on, "
                        f"fewer than one batch of {batch_size}; lower --holdout (a few hundred faces is plenty)")
    return (images[:len(images) - holdout], images[len(images) - holdout:]) if holdout else (images, images[:0])
