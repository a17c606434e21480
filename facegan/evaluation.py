"""Evaluation: FID and KID of a generator against a fixed pick of real faces.

FID (Heusel et al. 2017) compares the mean and covariance of Inception-v3
pool features of real and generated images:
    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)).
Lower is better; it is biased upwards for small sample counts, so only compare
numbers measured with the same N.  KID (Binkowski et al. 2018) is an unbiased
polynomial-kernel MMD on the same features, better suited to small N.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .batches import build_image_cache, cache_key
from .config import Config
from .data import cache_dir as data_cache_dir
from .data import list_images, resolve_image_dir
from .sampling import generated_batches

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
    model = model.to(device).eval()
    if torch.device(device).type in ("cpu", "cuda"):
        # NHWC: oneDNN's convolutions run 1.45x faster on 2 CPU cores (16 against 11 img/s); the
        # features differ from NCHW's by float rounding only (5e-6 on values up to 4).
        model = model.to(memory_format=torch.channels_last)
    return model


@torch.inference_mode()
def inception_features(images: Iterator[torch.Tensor] | torch.Tensor, extractor: nn.Module,
                       batch_size: int = 50, n: int | None = None, desc: str | None = None) -> torch.Tensor:
    """(N, 2048) float64 pool features of uint8 NCHW images (any size: Inception resizes to 299).

    Batches of 50 keep both cores of a small CPU busy (one batch is one large convolution per
    layer, threaded by oneDNN).  With ``desc``, a progress bar counts the ``n`` images.
    """
    device = next(extractor.parameters()).device
    batches = images.split(batch_size) if torch.is_tensor(images) else images
    feats = []
    with tqdm(total=n, desc=desc, unit="img", disable=desc is None, leave=False) as bar:
        for b in batches:
            feats.append(extractor(b.to(device)).double().cpu())
            bar.update(len(b))
    return torch.cat(feats)


def real_sample_indices(n_files: int, n: int, seed: int = 0) -> np.ndarray:
    """The fixed random pick of n real images that FID compares against (sorted, for memmap reads)."""
    return torch.randperm(n_files, generator=torch.Generator().manual_seed(seed))[:n].sort().values.numpy()


def real_features(n: int, image_size: int, extractor: nn.Module, data: str | Path = "celeba", crop: int = 0,
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
    path = Path(cache_dir or data_cache_dir()) / "fid" / f"real-{key}-{image_size}px-n{n}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    images = build_image_cache(files, image_size, crop)
    pick = real_sample_indices(len(files), n)
    batches = (torch.from_numpy(images[pick[i:i + 50]]).permute(0, 3, 1, 2) for i in range(0, n, 50))
    feats = inception_features(batches, extractor, n=n, desc=f"Inception features of {n} real faces (cached after)")
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


def evaluate_generator(G: nn.Module, cfg: Config, n: int = 1000, weights_path: str | Path | None = None,
                       extractor: nn.Module | None = None, seed: int = 0,
                       folder: Path | None = None, progress: bool = False) -> dict[str, float]:
    """FID-n and KID of G against n real faces at G's resolution (same protocol for every model).

    ``folder`` is the real images' folder when the caller has already resolved ``cfg.data``.
    """
    extractor = extractor or inception_extractor(weights_path)
    real = real_features(n, cfg.image_size, extractor, folder or cfg.data, cfg.crop)
    fake = inception_features(generated_batches(G, cfg, n, batch_size=50, seed=seed), extractor, n=n,
                              desc=f"Inception features of {n} generated faces" if progress else None)
    return {**fid_kid(real, fake), "n": n}


def write_real_samples(cfg: Config, n: int, out_dir: str | Path, seed: int = 0,
                       folder: Path | None = None) -> list[Path]:
    """Write the n real faces that FID uses (``seed=0``), at the model's resolution, as PNG files."""
    from PIL import Image

    files = list_images(folder or resolve_image_dir(cfg.data))
    images = build_image_cache(files, cfg.image_size, cfg.crop)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for j in real_sample_indices(len(files), n, seed):
        paths.append(out_dir / f"{len(paths):06d}.png")
        Image.fromarray(np.asarray(images[j])).save(paths[-1])
    return paths


@torch.no_grad()
def nearest_real_faces(fakes: torch.Tensor, cfg: Config, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """For each generated face, the nearest face of the whole training set (pixel distance), and the distance.

    A generator that copies its training faces would have near-zero distances.  The search
    runs over every image of ``cfg.data`` at the generator's resolution (the uint8 cache),
    in chunks, so the 32,600 faces are never all in memory as floats.  Returns (faces in
    [-1, 1], distances), one of each per fake.
    """
    files = list_images(resolve_image_dir(cfg.data, cfg.recursive))
    images = build_image_cache(files, cfg.image_size, cfg.crop)
    query = fakes.float().cpu().flatten(1)
    best = torch.full((len(query),), math.inf)
    index = torch.zeros(len(query), dtype=torch.long)
    for start in range(0, len(images), chunk):
        block = torch.from_numpy(np.array(images[start:start + chunk])).permute(0, 3, 1, 2).float() / 127.5 - 1
        dist, idx = torch.cdist(query, block.flatten(1)).min(1)
        closer = dist < best
        best[closer], index[closer] = dist[closer], idx[closer] + start
    faces = torch.from_numpy(np.asarray(images[np.sort(index.numpy())]))  # memmaps read in order
    order = torch.from_numpy(np.argsort(np.argsort(index.numpy())))
    return faces[order].permute(0, 3, 1, 2).float() / 127.5 - 1, best
