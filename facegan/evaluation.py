"""Evaluation: FID and KID of a generator against a fixed pick of real faces.

FID (Heusel et al. 2017) compares the mean and covariance of Inception-v3
pool features of real and generated images:
    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)).
Lower is better; it is biased upwards for small sample counts, so only compare
numbers measured with the same N.  KID (Binkowski et al. 2018) is an unbiased
polynomial-kernel MMD on the same features, better suited to small N.

FID mixes fidelity and diversity into one number: a generator that draws a few hundred good
faces over and over can score as well as one that covers the data.  So beside it, from the same
features, come four k-nearest-neighbour measures.  Each real face gets a ball reaching to its
k-th nearest real neighbour (their union estimates the real manifold), each generated face one
reaching to its k-th nearest generated neighbour:
    precision  fraction of generated faces inside some real ball       (are they realistic?)
    recall     fraction of real faces inside some generated ball       (is the data covered?)
    (Kynkaanniemi et al. 2019, "improved precision and recall", k = 3 as in their paper)
    density    generated faces per real ball, over k: ~1 when the sets match (can exceed 1)
    coverage   fraction of real balls holding at least one generated face
    (Naeem et al. 2020, k = 5 as they recommend; robust to outliers, unlike precision and recall)
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


def real_sample_indices(n_files: int, n: int, seed: int = 0, pick: int = 0) -> np.ndarray:
    """The fixed random pick of n real images that FID compares against (sorted, for memmap reads).

    ``pick=1`` is the next n of the same shuffle: as many other real faces, none in the first pick
    (the real-against-real reference: what a generator drawing from the data itself would score).
    """
    order = torch.randperm(n_files, generator=torch.Generator().manual_seed(seed))
    return order[pick * n:(pick + 1) * n].sort().values.numpy()


def real_features(n: int, image_size: int, extractor: nn.Module, data: str | Path = "celeba", crop: int = 0,
                  cache_dir: str | Path | None = None, pick: int = 0) -> torch.Tensor:
    """Inception features of n real faces at ``image_size``, computed once and cached on disk.

    Real faces are resized to the model's resolution first, so a 32x32 model is
    compared with 32x32 faces.  The cache key includes the data set's file list
    (names, sizes, times), so changed data is recomputed.  ``pick`` as in ``real_sample_indices``.
    """
    folder = resolve_image_dir(data)
    files = list_images(folder)
    if (pick + 1) * n > len(files):
        raise ValueError(f"asked for {(pick + 1) * n} real images ({pick + 1} picks of {n}) but {folder} holds "
                         f"{len(files)}; lower N")
    key = cache_key(files, image_size, crop)
    name = f"real-{key}-{image_size}px-n{n}" + (f"-pick{pick}" if pick else "")
    path = Path(cache_dir or data_cache_dir()) / "fid" / f"{name}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    images = build_image_cache(files, image_size, crop)
    rows = real_sample_indices(len(files), n, pick=pick)
    batches = (torch.from_numpy(images[rows[i:i + 50]]).permute(0, 3, 1, 2) for i in range(0, n, 50))
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


#: The neighbour counts: precision and recall at Kynkaanniemi et al.'s k = 3 (also torch-fidelity's
#: default, so the figures compare with published ones), density and coverage at Naeem et al.'s k = 5.
PR_NEIGHBOURS, DC_NEIGHBOURS = 3, 5
#: The four names, in the order they are printed and logged.
PRDC_KEYS = ("precision", "recall", "density", "coverage")


def _kth_neighbour_distances(x: torch.Tensor, ks: tuple[int, ...], chunk: int) -> list[torch.Tensor]:
    """For each k: every row's distance to its k-th nearest other row (the radius of its ball)."""
    kmax = max(ks)
    if len(x) <= kmax:
        raise ValueError(f"precision/recall/density/coverage need more than {kmax} faces on each side, got "
                         f"{len(x)}; score more samples")
    # topk's smallest k+1 include the row itself at distance 0, so index k is the k-th *other* row
    near = torch.cat([torch.cdist(part, x).topk(kmax + 1, dim=1, largest=False).values for part in x.split(chunk)])
    return [near[:, k] for k in ks]


@torch.no_grad()
def prdc(real: torch.Tensor, fake: torch.Tensor, k_pr: int = PR_NEIGHBOURS, k_dc: int = DC_NEIGHBOURS,
         chunk: int = 1024) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` against ``real`` features (closed balls, <=).

    Distances are computed in blocks of ``chunk`` rows (float64, like the features), so 10,000 faces
    a side never hold a 10,000 x 10,000 matrix; all four come from one pass over the real-fake
    distances.  On two shared CPU cores: 2 seconds for 1,000 faces a side, 90 for 10,000, against
    3-30 minutes of Inception features for 1,000.
    """
    real, fake = real.double(), fake.double()
    real_pr, real_dc = _kth_neighbour_distances(real, (k_pr, k_dc), chunk)
    (fake_pr,) = _kth_neighbour_distances(fake, (k_pr,), chunk)
    in_real_ball, in_real_balls = [], []
    real_in_fake_ball = torch.zeros(len(real), dtype=torch.bool)
    nearest_fake = torch.full((len(real),), math.inf, dtype=torch.float64)
    for start in range(0, len(fake), chunk):
        d = torch.cdist(fake[start:start + chunk], real)  # (fakes in this block, reals)
        in_real_ball.append((d <= real_pr).any(1))
        in_real_balls.append((d <= real_dc).sum(1))
        real_in_fake_ball |= (d <= fake_pr[start:start + chunk, None]).any(0)
        nearest_fake = torch.minimum(nearest_fake, d.min(0).values)
    return {"precision": torch.cat(in_real_ball).double().mean().item(),
            "recall": real_in_fake_ball.double().mean().item(),
            "density": torch.cat(in_real_balls).double().mean().item() / k_dc,
            "coverage": (nearest_fake <= real_dc).double().mean().item()}


def _prdc_if_enough(real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    """``prdc`` when each side has more faces than the largest k; none of it for a tiny smoke-test N."""
    return prdc(real, fake) if min(len(real), len(fake)) > max(PR_NEIGHBOURS, DC_NEIGHBOURS) else {}


def evaluate_generator(G: nn.Module, cfg: Config, n: int = 1000, weights_path: str | Path | None = None,
                       extractor: nn.Module | None = None, seed: int = 0,
                       folder: Path | None = None, progress: bool = False) -> dict[str, float]:
    """FID-n, KID, precision, recall, density and coverage of G against n real faces at G's resolution.

    The same protocol for every model; all six come from one pass of Inception features.

    ``folder`` is the real images' folder when the caller has already resolved ``cfg.data``.
    """
    extractor = extractor or inception_extractor(weights_path)
    real = real_features(n, cfg.image_size, extractor, folder or cfg.data, cfg.crop)
    fake = inception_features(generated_batches(G, cfg, n, batch_size=50, seed=seed), extractor, n=n,
                              desc=f"Inception features of {n} generated faces" if progress else None)
    return {**fid_kid(real, fake), **_prdc_if_enough(real, fake), "n": n}


def evaluate_real_pick(cfg: Config, n: int = 1000, extractor: nn.Module | None = None,
                       folder: Path | None = None) -> dict[str, float]:
    """``evaluate_generator``'s figures for n other real faces (``pick=1``) in place of generated ones.

    The reference every generator is read against: FID and KID near 0, and precision and recall
    below 1 (about 0.7-0.8 at 1,000 faces: a finite sample's k-NN balls leave gaps), density near
    1 and coverage near Naeem et al.'s 1 - 2**-k (0.97 at k = 5).
    """
    extractor = extractor or inception_extractor()
    real = real_features(n, cfg.image_size, extractor, folder or cfg.data, cfg.crop)
    other = real_features(n, cfg.image_size, extractor, folder or cfg.data, cfg.crop, pick=1)
    return {**fid_kid(real, other), **_prdc_if_enough(real, other), "n": n}


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
def nearest_rows(query: torch.Tensor, images: np.ndarray, skip: torch.Tensor | None = None,
                 chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2 distance, row) of each query's nearest image of ``images`` (uint8 NHWC), in pixels in [-1, 1].

    ``query`` is (N, C*H*W) in [-1, 1].  ``skip[i]`` names a row that query i may not match (its own
    copy, for a leave-one-out search; -1 = none).  The images are read and converted in chunks, so
    32,600 faces are never all in memory as floats.
    """
    query = query.float().cpu()
    best = torch.full((len(query),), math.inf)
    index = torch.zeros(len(query), dtype=torch.long)
    for start in range(0, len(images), chunk):
        block = torch.from_numpy(np.array(images[start:start + chunk])).permute(0, 3, 1, 2).float() / 127.5 - 1
        dist = torch.cdist(query, block.flatten(1))
        if skip is not None:
            mine = (skip >= start) & (skip < start + len(block))
            dist[mine.nonzero()[:, 0], skip[mine] - start] = math.inf
        dist, idx = dist.min(1)
        closer = dist < best
        best[closer], index[closer] = dist[closer], idx[closer] + start
    return best, index


def nearest_real_faces(fakes: torch.Tensor, cfg: Config, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """For each generated face, the nearest face of the whole training set (pixel distance), and the distance.

    A generator that copies its training faces would have near-zero distances.  The search
    runs over every image of ``cfg.data`` at the generator's resolution (the uint8 cache),
    in chunks, so the 32,600 faces are never all in memory as floats.  Returns (faces in
    [-1, 1], distances), one of each per fake.
    """
    files = list_images(resolve_image_dir(cfg.data, cfg.recursive))
    images = build_image_cache(files, cfg.image_size, cfg.crop)
    best, index = nearest_rows(fakes.flatten(1), images, chunk=chunk)
    faces = torch.from_numpy(np.asarray(images[np.sort(index.numpy())]))  # memmaps read in order
    order = torch.from_numpy(np.argsort(np.argsort(index.numpy())))
    return faces[order].permute(0, 3, 1, 2).float() / 127.5 - 1, best
