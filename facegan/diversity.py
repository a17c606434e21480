"""Copying and collapse: does a generator draw new faces, and how many different ones?

FID, precision and recall summarise a sample; this view shows the two failures one by one.

- **Copying.**  Each generated face's distance to its nearest training face, beside the same
  distance for real faces the generator never trained on.  A generator that reproduces its
  training faces puts a pile of faces at distance ~0, far left of the real faces' curve; one
  that draws new faces sits where the real faces sit (a little left is normal: generated faces
  are smoother than photographs, and smooth images are closer to everything in pixels).
- **Collapse.**  For each generated face, how many other generated faces are near-duplicates of
  it: closer than all but 1% of the real faces are to *their* nearest training face (out of
  32,600).  Two different real faces almost never come that close (the same count among the real
  faces is the reference, about 0), so a face with a count of 10 is one the generator draws again
  and again.

Distances are in pixels, the root-mean-square difference in [-1, 1] units (0.1 = 5% of the range
per value).  Pixels, not Inception features, because the search runs over every training face:
the uint8 cache makes that seconds, where Inception features of 32,600 faces take half an hour
on two CPU cores; and a copy of an aligned face is a copy in pixels too.  When the generator was
trained with ``Config.holdout``, its held-out faces are the real reference; otherwise (it saw
every face) a pick of real faces is searched leave-one-out, each against every face but itself,
which is exactly a held-out face against a training set one face smaller.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .batches import build_image_cache
from .config import Config
from .data import list_images, resolve_image_dir
from .evaluation import nearest_rows, real_sample_indices
from .sampling import generated_batches

#: A near-duplicate is closer than this quantile of the real faces' distances to their nearest training face.
DUPLICATE_QUANTILE = 0.01


@dataclass
class DiversityReport:
    """What ``plot_diversity`` draws: distances to the training set, and near-duplicate counts."""

    fakes: torch.Tensor           # (n, C, H, W) uint8: the generated faces (latents from ``seed``, as FID's)
    fake_distances: torch.Tensor  # (n,) RMS pixel distance of each to its nearest training face
    nearest: torch.Tensor         # (n,) that training face's row in the image cache
    real_distances: torch.Tensor  # (m,) the same for real faces the generator did not train on
    threshold: float              # near-duplicate distance: DUPLICATE_QUANTILE of real_distances
    repeats: torch.Tensor         # (n,) other generated faces within threshold of each
    closest_other: torch.Tensor   # (n,) distance to the nearest other generated face
    real_repeats: torch.Tensor    # (m,) the same among the real faces: the reference
    reference: str                # which real faces: "held-out" or "leave-one-out"

    @property
    def copied(self) -> float:
        """Fraction of generated faces closer to a training face than 99% of real faces are."""
        return (self.fake_distances < self.threshold).double().mean().item()

    @property
    def repeated(self) -> float:
        """Fraction of generated faces with at least one near-duplicate among the others."""
        return (self.repeats > 0).double().mean().item()

    def summary(self) -> str:
        """One line: the two fractions beside what real faces show."""
        return (f"{100 * self.copied:.1f}% of {len(self.fakes)} generated faces lie closer to a training face than "
                f"99% of real faces ({self.reference}) do; {100 * self.repeated:.1f}% have a near-duplicate among "
                f"them (real faces: {100 * (self.real_repeats > 0).double().mean().item():.1f}%); "
                f"median distance to the nearest training face {self.fake_distances.median():.3f} "
                f"(real faces {self.real_distances.median():.3f})")

    def most_repeated(self, k: int = 8) -> torch.Tensor:
        """Indices of the k generated faces with the most near-duplicates (ties: the closest other face first)."""
        order = np.lexsort((self.closest_other.numpy(), -self.repeats.numpy()))
        return torch.from_numpy(order[:k].copy())


def near_duplicate_counts(faces: torch.Tensor, threshold: float,
                          chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """For each face (uint8 NCHW): how many *other* faces lie within ``threshold``, and the nearest one's
    distance (RMS pixels)."""
    x = faces.flatten(1).float() / 127.5 - 1
    counts, closest = [], []
    for start in range(0, len(x), chunk):
        d = torch.cdist(x[start:start + chunk], x) / math.sqrt(x.shape[1])  # L2 -> RMS
        d[torch.arange(len(d)), torch.arange(start, start + len(d))] = math.inf  # not itself
        counts.append((d < threshold).sum(1))
        closest.append(d.min(1).values)
    return torch.cat(counts), torch.cat(closest)


def distances_to_training(faces: torch.Tensor, training: np.ndarray,
                          skip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMS pixel distance, row) of each face's (uint8 NCHW) nearest face of ``training`` (uint8 NHWC)."""
    x = faces.flatten(1).float() / 127.5 - 1
    dist, rows = nearest_rows(x, training, skip)
    return dist / math.sqrt(x.shape[1]), rows


def real_reference(images: np.ndarray, cfg: Config,
                   n: int) -> tuple[torch.Tensor, np.ndarray, torch.Tensor | None, str]:
    """(real faces, the training faces to search, rows to skip, what they are) for the real side of the view."""
    if cfg.holdout:  # the generator never saw the last cfg.holdout faces (facegan/batches.py: split_held_out)
        held = torch.from_numpy(np.array(images[len(images) - cfg.holdout:][:n]))
        return held.permute(0, 3, 1, 2), images[:len(images) - cfg.holdout], None, "held-out"
    rows = real_sample_indices(len(images), n, pick=1)  # not the FID pick; any pick would do
    faces = torch.from_numpy(np.asarray(images[rows])).permute(0, 3, 1, 2)
    return faces, images, torch.from_numpy(rows).long(), "leave-one-out"


def diversity_report(G: nn.Module | None, cfg: Config, n: int = 1000, seed: int = 0, n_real: int | None = None,
                     fakes: torch.Tensor | None = None) -> DiversityReport:
    """The copying and collapse view of n faces of G (or of given uint8 ``fakes``) against cfg's data.

    ``n_real`` real faces (default n) give the reference.  About half a minute for 1,000 and
    1,000 faces at 64x64 on two CPU cores: one pass over the 32,600 training faces.
    """
    images = build_image_cache(list_images(resolve_image_dir(cfg.data, cfg.recursive)), cfg.image_size, cfg.crop)
    if fakes is None:
        fakes = torch.cat(list(generated_batches(G, cfg, n, batch_size=50, seed=seed))).cpu()
    real, training, skip, reference = real_reference(images, cfg, n_real or len(fakes))
    if len(real) < 2 or len(fakes) < 2:
        raise ValueError(f"the diversity view needs at least 2 generated and 2 real faces, got {len(fakes)} and "
                         f"{len(real)}; raise n (or --holdout)")
    # one pass over the training faces for both sides; the generated faces skip nothing (-1)
    skip = torch.cat([torch.full((len(fakes),), -1), skip if skip is not None else torch.full((len(real),), -1)])
    distances, rows = distances_to_training(torch.cat([fakes, real]), training, skip)
    (fake_distances, real_distances), nearest = distances.split([len(fakes), len(real)]), rows[:len(fakes)]
    threshold = torch.quantile(real_distances, DUPLICATE_QUANTILE).item()
    repeats, closest_other = near_duplicate_counts(fakes, threshold)
    return DiversityReport(fakes, fake_distances, nearest, real_distances, threshold, repeats, closest_other,
                           near_duplicate_counts(real, threshold)[0], reference)
