"""Plots: image grids, loss and FID curves, fixed latents over training, a progress GIF.

matplotlib and PIL are imported inside the functions that draw, so that training
and serving never pay for them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .sampling import to_uint8


def image_grid(images: torch.Tensor, nrow: int = 8) -> np.ndarray:
    """A batch (float in [-1, 1] or uint8) as one HxWx3 uint8 picture, via torchvision's make_grid."""
    from torchvision.utils import make_grid

    if images.dtype != torch.uint8:
        images = to_uint8(images)
    grid = make_grid(images.cpu(), nrow=nrow, padding=2, pad_value=255)
    return grid.permute(1, 2, 0).numpy()


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """``image_grid`` written as a PNG file."""
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
    """Loss curves of D and G, and the mean scores D gives to real and fake images.

    With ``Config.holdout`` the second panel also shows D's score on held-out real faces beside
    its score on fixed training faces; with ADA, the augmentation probability p.
    """
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
    if history.get("d_holdout"):  # Config.holdout: when these two part, D is memorising its training faces
        ax2.plot(steps, history["d_real_fixed"], ":", color="C0", label="D(x), fixed training faces")
        ax2.plot(steps, history["d_holdout"], "--", color="C3", label="D(x), held-out faces")
    ax2.set(xlabel="step", ylabel="mean D output", title="What D thinks")
    ax2.legend(fontsize=8)
    if history.get("ada_p"):  # adaptive augmentation's probability, on its own scale
        twin = ax2.twinx()
        twin.plot(steps, history["ada_p"], color="C4", alpha=0.6)
        twin.set_ylabel("ADA p", color="C4")
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


def grid_path(folder: str | Path, step: int) -> Path:
    """Where a run keeps the fixed-latent grid of a step: ``RUN/samples/step_0001234.png``."""
    return Path(folder) / "samples" / f"step_{step:07d}.png"


def read_grids(folder: str | Path, image_size: int, n_images: int = 64,
               max_grids: int | None = None) -> list[tuple[int, torch.Tensor]]:
    """The fixed-latent grids a run saved (``grid_path``), oldest first, as (step, uint8 N x 3 x S x S).

    Each PNG is cut back into its first ``n_images`` images (``image_grid``'s layout: 2-pixel
    padding; the run's ``Config.n_samples``).  ``max_grids`` reads only that many, evenly spread
    over the run, so a long run's thousand grids are never all in memory.
    """
    from PIL import Image

    paths = sorted((Path(folder) / "samples").glob("step_*.png"))
    if max_grids and len(paths) > max_grids:
        paths = [paths[round(i)] for i in np.linspace(0, len(paths) - 1, max_grids)]
    grids = []
    for path in paths:
        picture = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        pitch = image_size + 2
        rows, cols = (picture.shape[1] - 2) // pitch, (picture.shape[2] - 2) // pitch
        tiles = [picture[:, 2 + r * pitch:2 + r * pitch + image_size, 2 + c * pitch:2 + c * pitch + image_size]
                 for r in range(rows) for c in range(cols)]
        grids.append((int(path.stem.removeprefix("step_")), torch.stack(tiles[:n_images])))
    return grids


def save_progress_gif(samples: list, path: str | Path, n_images: int = 16, nrow: int = 4,
                      duration_ms: int = 150, max_frames: int = 60) -> Path:
    """An animated GIF of the fixed-latent grids over training (the last frame held longer).

    At most ``max_frames`` frames, evenly spread over the run, so a long run's GIF stays small.
    """
    from PIL import Image

    if not samples:
        raise ValueError("no samples recorded: train for at least one epoch (or set sample_every)")
    if len(samples) > max_frames:
        samples = [samples[round(i)] for i in np.linspace(0, len(samples) - 1, max_frames)]
    frames = [Image.fromarray(image_grid(images[:n_images], nrow)) for _, images in samples]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:] + [frames[-1]] * 10,
                   duration=duration_ms, loop=0)
    return path


def plot_diversity(report, path: str | Path | None = None, n_faces: int = 8):
    """The copying and collapse view of a ``facegan.diversity.DiversityReport``; returns the figure.

    Top: each generated face's distance to its nearest training face against real faces' (copying
    shows as generated faces piled up left of the real curve, near 0).  Bottom: the generated faces
    with the most near-duplicates among the others, with their count (collapse shows as large
    counts; a healthy generator's are all 0).  ``path`` also writes it as a PNG.
    """
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(12, 6.5))
    grid = fig.add_gridspec(2, n_faces, height_ratios=[2.2, 1], hspace=0.45)
    ax = fig.add_subplot(grid[0, :])
    top = max(report.fake_distances.max().item(), report.real_distances.max().item())
    bins = np.linspace(0, top * 1.02, 50)
    real = (f"{len(report.real_distances)} held-out real faces (never trained on)" if report.reference == "held-out"
            else f"{len(report.real_distances)} real faces, each against all the others (leave-one-out)")
    ax.hist(report.real_distances.numpy(), bins, density=True, alpha=0.55, color="tab:blue", label=real)
    ax.hist(report.fake_distances.numpy(), bins, density=True, alpha=0.55, color="tab:orange",
            label=f"{len(report.fake_distances)} generated faces")
    ax.axvline(report.threshold, color="k", ls="--", lw=1, label="near-duplicate distance (1% of real faces)")
    ax.set_xlabel("RMS pixel distance to the nearest training face ([-1, 1] scale)")
    ax.set_ylabel("density")
    real_repeated = 100 * (report.real_repeats > 0).double().mean().item()
    ax.set_title(f"closer than the dashed line: {100 * report.copied:.1f}% of generated faces (1% of real ones); "
                 f"with a near-duplicate: {100 * report.repeated:.1f}% (real: {real_repeated:.1f}%)", fontsize=10)
    ax.legend(fontsize=8)
    picks = report.most_repeated(n_faces)
    faces = report.fakes[picks] if report.fakes.dtype == torch.uint8 else to_uint8(report.fakes[picks])
    for i, (face, j) in enumerate(zip(faces, picks.tolist(), strict=True)):
        sub = fig.add_subplot(grid[1, i])
        sub.imshow(face.permute(1, 2, 0).cpu().numpy())
        sub.set_title(f"{int(report.repeats[j])} near-dup.", fontsize=8)
        sub.set_xlabel(f"next {report.closest_other[j]:.2f}", fontsize=7)
        sub.set_xticks([])
        sub.set_yticks([])
    fig.text(0.5, 0.36, "the most-repeated generated faces (count of near-duplicates; distance to the closest other "
             "generated face)", ha="center", fontsize=9)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches="tight")
    return fig
