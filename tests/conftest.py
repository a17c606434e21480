"""Shared fixtures: the real CelebA faces, and small synthetic image folders and archives."""
from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facegan import data  # noqa: E402


@pytest.fixture(scope="session")
def celeba_dir() -> Path:
    """The real processed CelebA folder (extracted from $CELEBA_ZIP or downloaded once)."""
    return data.ensure_celeba()


@pytest.fixture(scope="session")
def celeba_batch(celeba_dir) -> torch.Tensor:
    """16 real faces at 64x64, the same every time (no flips)."""
    files = data.list_images(celeba_dir)[:16]
    tf = data.image_transform(64, flip=False)
    return torch.stack([tf(data.read_image(f)) for f in files])


def jpeg_bytes(seed: int, size: tuple[int, int] = (40, 48)) -> bytes:
    """A random RGB JPEG (synthetic: tests never copy data set images)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A folder with 12 synthetic JPEGs, a .DS_Store and a sub-folder with 3 more."""
    folder = tmp_path / "faces"
    (folder / "more").mkdir(parents=True)
    for i in range(12):
        (folder / f"{i:03d}.jpg").write_bytes(jpeg_bytes(i))
    for i in range(3):
        (folder / "more" / f"m{i}.jpg").write_bytes(jpeg_bytes(100 + i))
    (folder / ".DS_Store").write_bytes(b"\x00\x01junk")
    return folder


def make_celeba_zip(path: Path, n: int = 10) -> Path:
    """A zip laid out like processed-celeba-small.zip, with n synthetic images."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("processed_celeba_small/.DS_Store", b"junk")
        for i in range(n):
            zf.writestr(f"processed_celeba_small/celeba/{i:06d}.jpg", jpeg_bytes(i))
    return path


def pytest_collection_modifyitems(config, items):
    """Executing a notebook (nbval) is slow: mark its cells so ``pytest -m "not slow"`` skips them."""
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def nan_from_step_7(monkeypatch):
    """Training whose D gets a NaN weight from step 7 on (the divergence tests' poisoned step); call the
    returned function to train normally again."""
    from facegan import train

    real_step = train.train_step

    def poisoned_step(state, real):
        metrics = real_step(state, real)
        if state.step >= 7:
            with torch.no_grad():
                weight = next(state.D.parameters())
                weight[(0,) * weight.dim()] = float("nan")
        return metrics

    monkeypatch.setattr(train, "train_step", poisoned_step)
    return lambda: monkeypatch.setattr(train, "train_step", real_step)
