"""Checks for the data pipeline: ``scale`` and ``get_dataloader``.

The generator ends with tanh, so the real images D sees must live in the same [-1, 1] range as
G's; these checks look at real batches: their shape, that they span [-1, 1] (not [0, 1] straight
from ``ToTensor``, not ImageNet's normalisation) and that they come in a new order each epoch.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .report import _call, _fail, _passed


def test_scale(scale: Callable) -> None:
    """scale(x) maps [0, 1] to [-1, 1], and to any feature_range given."""
    x = torch.linspace(0, 1, 11)
    y = _call("scale", scale, x)
    if not torch.is_tensor(y) or y.shape != x.shape:
        _fail("scale", f"a tensor of shape {tuple(x.shape)}", repr(type(y)) if not torch.is_tensor(y)
              else f"shape {tuple(y.shape)}", "work element-wise on the tensor you are given, and return it")
    lo, hi = y.min().item(), y.max().item()
    if not (math.isclose(lo, -1, abs_tol=1e-5) and math.isclose(hi, 1, abs_tol=1e-5)):
        _fail("scale", "[0, 1] mapped to [-1, 1]", f"[{lo:.3g}, {hi:.3g}]",
              "multiply by (max - min), then add min: x * (max - min) + min")
    if not math.isclose(y[5].item(), 0, abs_tol=1e-5):
        _fail("scale", "0.5 mapped to 0", f"{y[5].item():.3g}", "the mapping must be linear: x * (max - min) + min")
    y2 = _call("scale", scale, x, feature_range=(0.5, 2.0))
    if not (math.isclose(y2.min().item(), 0.5, abs_tol=1e-5) and math.isclose(y2.max().item(), 2.0, abs_tol=1e-5)):
        _fail("scale(x, feature_range=(0.5, 2))", "[0.5, 2]", f"[{y2.min().item():.3g}, {y2.max().item():.3g}]",
              "read min and max from the feature_range argument (lo, hi = feature_range) instead of using -1 and 1")
    _passed("scale maps [0, 1] to feature_range")


def _first_batch(loader) -> torch.Tensor:
    images = _call("getting a batch", lambda: next(iter(loader)))
    return images[0] if isinstance(images, (list, tuple)) else images  # ImageFolder yields (images, labels)


def test_dataloader(get_dataloader: Callable, image_size: int = 32, batch_size: int = 16, **kwargs) -> None:
    """Batches are (batch, 3, image_size, image_size), span [-1, 1], and come in a new order each epoch."""
    loader = _call("get_dataloader", get_dataloader, batch_size, image_size, **kwargs)
    images = _first_batch(loader)
    expected = (batch_size, 3, image_size, image_size)
    if not torch.is_tensor(images) or tuple(images.shape) != expected:
        _fail("data batch shape", str(expected), str(tuple(getattr(images, "shape", ()))) or repr(type(images)),
              "Resize(image_size) AND CenterCrop(image_size), ToTensor(), and batch_size passed to the DataLoader")
    lo, hi = images.min().item(), images.max().item()
    if lo >= 0:
        _fail("data value range", "values in [-1, 1]", f"[{lo:.3g}, {hi:.3g}], as straight from ToTensor",
              "ToTensor gives [0, 1]; add transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) to reach tanh's "
              "[-1, 1]")
    if lo < -1 - 1e-5 or hi > 1 + 1e-5 or lo > -0.9 or hi < 0.9:
        _fail("data value range", "values spanning [-1, 1] (dark pixels near -1, bright ones near 1)",
              f"[{lo:.3g}, {hi:.3g}]", "normalise with mean 0.5 and std 0.5 per channel, not ImageNet's "
              "statistics: Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) maps [0, 1] exactly to [-1, 1]")
    again = _first_batch(loader)
    same = all(torch.equal(a, b) or torch.equal(a, b.flip(-1)) for a, b in zip(images, again, strict=False))
    if same:
        _fail("data order", "a new order each pass over the data", "the same first batch twice",
              "pass shuffle=True to the DataLoader: without it, every epoch shows D the faces in the same order")
    _check_flips(loader)
    _passed(f"batches of shape {expected}, spanning [-1, 1], shuffled")


def _check_flips(loader) -> None:
    """The same image, read 16 times through the loader's dataset, comes out mirrored some of the times."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None or not hasattr(dataset, "__getitem__"):
        return  # not a DataLoader: its images cannot be read one by one
    views = []
    for _ in range(16):
        item = _call("reading one image from loader.dataset", dataset.__getitem__, 0)
        views.append(item[0] if isinstance(item, (list, tuple)) else item)
    if not all(torch.is_tensor(v) and v.shape == views[0].shape for v in views):
        return
    first = views[0]
    if torch.equal(first, first.flip(-1)):
        return  # a symmetric image shows nothing
    if all(torch.equal(v, first) for v in views):
        _fail("data augmentation", "each face mirrored left-right half of the time", "the same image 16 times",
              "add transforms.RandomHorizontalFlip() to the transforms (after the crop): a mirrored face is still a "
              "face, so the flips double the data for free")
