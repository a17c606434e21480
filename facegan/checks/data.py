"""Checks for the data pipeline: ``scale`` and ``get_dataloader``.

The generator ends with tanh, so the real images D sees must live in the same [-1, 1] range as
G's; these checks look at real batches: their shape, that they span [-1, 1] (not [0, 1] straight
from ``ToTensor``, not ImageNet's normalisation) and that they come in a new order each epoch.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .report import _call, _fail, _passed


#: Fresh inputs for scale, smallest first: values that do not span [0, 1] (where stretching the input's own min
#: and max to the range differs from the formula), a single value, batches of images, and several ranges.
def _scale_cases(seed: int = 0) -> list[tuple[torch.Tensor, tuple[float, float] | None]]:
    g = torch.Generator().manual_seed(seed)
    ranges = [(-1.0, 1.0), (0.5, 2.0), (-3.0, -1.0), (0.0, 255.0)]
    shapes = [(5,), (2, 3, 4, 4), (1,), (1, 3, 32, 32)]
    cases = []
    for shape in shapes:
        for lo, hi in ranges:
            a = float(torch.rand((), generator=g)) * 0.4
            x = a + torch.rand(shape, generator=g) * (0.5 - a / 2)  # inside (0, 1), never spanning it
            cases.append((x, (lo, hi)))
    return cases


def _scale_formula(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return x * (hi - lo) + lo


def test_scale(scale: Callable) -> None:
    """scale(x, feature_range) maps [0, 1] linearly onto feature_range: x * (max - min) + min, on fresh inputs
    that do not span [0, 1] and on several ranges (and with the default (-1, 1))."""
    x = torch.rand(6)
    y = _call("scale(x)", scale, x.clone())
    if not torch.is_tensor(y) or y.shape != x.shape:
        _fail("scale", f"a tensor of shape {tuple(x.shape)}", repr(type(y)) if not torch.is_tensor(y)
              else f"shape {tuple(y.shape)}", "work element-wise on the tensor you are given, and return it",
              rule="SC1")
    check_scale_formula(scale)
    _passed("scale maps [0, 1] to feature_range, on fresh inputs and ranges")


def check_scale_formula(scale: Callable) -> None:
    """The first (smallest) fresh case where scale differs from the formula, with what it gave and what was due."""
    cases = _scale_cases()
    for x, given in [(cases[0][0], None)] + cases:  # first the default range, as scale(x)
        default = given is None
        lo, hi = (-1.0, 1.0) if default else given
        y = _call("scale", scale, x.clone()) if default else _call("scale", scale, x.clone(), feature_range=(lo, hi))
        want = _scale_formula(x, lo, hi)
        if torch.is_tensor(y) and y.shape == want.shape and torch.allclose(y.float(), want, atol=1e-5):
            continue
        call = "scale(x)" if default else f"scale(x, feature_range=({lo:g}, {hi:g}))"
        show = f"x = {_short(x)}"
        got = _short(y) if torch.is_tensor(y) else repr(y)
        if torch.is_tensor(y) and y.shape == want.shape:
            span = x.amin(), x.amax()
            minmax = (x - span[0]) / (span[1] - span[0]) * (hi - lo) + lo
            if torch.allclose(y.float(), minmax, atol=1e-5):
                _fail(f"{call} with {show}", _short(want), f"{got}: your scale stretches x's own min and max to the "
                      "range", "scale maps the fixed interval [0, 1], not the input's own span: x * (max - min) + "
                      "min, with no x.min() or x.max() (it agreed only where x spans exactly [0, 1])", rule="SC1")
            if torch.allclose(y.float(), _scale_formula(x, -1.0, 1.0), atol=1e-5):
                _fail(f"{call} with {show}", _short(want), f"{got}, which is x mapped to [-1, 1]",
                      "read min and max from the feature_range argument (lo, hi = feature_range) instead of using "
                      "-1 and 1", rule="SC1")
        _fail(f"{call} with {show}", _short(want), got + _where_0_and_1_land(x, y, lo, hi),
              "stretch first, then shift: x * (max - min) + min, so that 0 lands on min and 1 on max", rule="SC2")


def _where_0_and_1_land(x: torch.Tensor, y, lo: float, hi: float) -> str:
    """For a scale that is a straight line y = a x + b: where it sends 0 and 1, read from the values."""
    if not torch.is_tensor(y) or y.shape != x.shape or x.numel() < 2:
        return ""
    design = torch.stack([x.flatten().double(), torch.ones(x.numel(), dtype=torch.double)], 1)
    a, b = torch.linalg.lstsq(design, y.flatten().double().unsqueeze(1)).solution.flatten().tolist()
    if not torch.allclose(design @ torch.tensor([a, b], dtype=torch.double), y.flatten().double(), atol=1e-4):
        return ""
    flipped = abs(b - hi) < 1e-4 and abs(a + b - lo) < 1e-4
    return (f"; your scale sends 0 to {b:.4g} and 1 to {a + b:.4g}, where 0 must land on min ({lo:g}) and 1 on max "
            f"({hi:g})" + (": the range upside down (flipped)" if flipped else ""))


def _short(t: torch.Tensor, k: int = 4) -> str:
    """The first k values of a tensor, rounded, for a message."""
    values = ", ".join(f"{v:.4g}" for v in t.flatten()[:k].tolist())
    return f"[{values}{', ...' if t.numel() > k else ''}] (shape {tuple(t.shape)})"


def _first_batch(loader) -> torch.Tensor:
    images = _call("getting a batch", lambda: next(iter(loader)))
    return images[0] if isinstance(images, (list, tuple)) else images  # ImageFolder yields (images, labels)


def test_dataloader(get_dataloader: Callable, image_size: int = 32, batch_size: int = 16, **kwargs) -> None:
    """Batches are (batch, 3, image_size, image_size), span [-1, 1], come in a new order each epoch and mirror
    faces at random; at a second image size and a batch of one too."""
    loader = _call("get_dataloader", get_dataloader, batch_size, image_size, **kwargs)
    batch = _call("getting a batch", lambda: next(iter(loader)))
    if isinstance(batch, (list, tuple)) and len(batch) == 1:  # a TensorDataset's batches: (images,)
        batch = batch[0]
    if isinstance(batch, (list, tuple)):
        _fail("a data batch", "a tensor of face images", f"a {type(batch).__name__} of {len(batch)} items (images and "
              "labels, as ImageFolder gives)", "serve the images alone: helpers.FaceImages(helpers.resolve_image_dir("
              "data_dir), transform) is a dataset of the face tensors, with no class labels", rule="DL1")
    images = batch
    expected = (batch_size, 3, image_size, image_size)
    if torch.is_tensor(images) and tuple(images.shape) == (image_size, 3, batch_size, batch_size) \
            and image_size != batch_size:
        _fail("data batch shape", str(expected), f"{tuple(images.shape)}: batch_size and image_size swapped",
              "get_dataloader(batch_size, image_size) takes the batch size first: pass each argument on where it "
              "belongs (DataLoader(..., batch_size=batch_size), Resize(image_size))", rule="DL1")
    if not torch.is_tensor(images) or tuple(images.shape) != expected:
        _fail("data batch shape", str(expected), str(tuple(getattr(images, "shape", ()))) or repr(type(images)),
              "Resize(image_size) AND CenterCrop(image_size), ToTensor(), and batch_size passed to the DataLoader",
              rule="DL1")
    check_range(images)
    check_order(loader, images)
    check_flips(loader)
    other = 64 if image_size != 64 else 32
    small = _first_batch(_call(f"get_dataloader(1, {other})", get_dataloader, 1, other, **kwargs))
    if not torch.is_tensor(small) or tuple(small.shape) != (1, 3, other, other):
        _fail(f"get_dataloader(batch_size=1, image_size={other}) batch shape", str((1, 3, other, other)),
              str(tuple(getattr(small, "shape", ()))) or repr(type(small)),
              "resize and centre-crop to the image_size argument, Resize(image_size) and CenterCrop(image_size), "
              "and pass batch_size on: no size typed in", rule="DL5")
    _passed(f"batches of shape {expected}, spanning [-1, 1], shuffled, flipped")


def check_range(images: torch.Tensor) -> None:
    """The batch spans [-1, 1] as [0, 1] mapped once by (x - 0.5) / 0.5: not [0, 1], not mapped twice, not each
    image stretched to its own darkest and brightest pixel."""
    lo, hi = images.min().item(), images.max().item()
    if abs(lo + 3) < 0.05 and hi <= 1 + 1e-5:
        _fail("data value range", "values spanning [-1, 1]", f"[{lo:.3g}, {hi:.3g}], which is [-1, 1] mapped to "
              "[-1, 1] a second time (x * 2 - 1 twice)", "the images are already in [-1, 1] after Normalize: map "
              "[0, 1] to [-1, 1] once, either Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) or scale, not both",
              rule="DL2")
    per_image = images.flatten(1)
    if len(images) > 4 and torch.allclose(per_image.amin(1), torch.full((len(images),), -1.0), atol=1e-4) and \
            torch.allclose(per_image.amax(1), torch.ones(len(images)), atol=1e-4):
        _fail("data value range", "each face's own brightness kept, [0, 1] mapped to [-1, 1] the same way for every "
              "image", f"every one of the {len(images)} images spanning exactly -1 to 1: each image stretched to its "
              "own min and max", "map [0, 1] to [-1, 1] with the same formula for every image, "
              "Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)); using each image's own x.min() and x.max() makes "
              "every face equally dark and bright", rule="DL2")
    if lo >= 0:
        _fail("data value range", "values in [-1, 1]", f"[{lo:.3g}, {hi:.3g}], as straight from ToTensor",
              "ToTensor gives [0, 1]; add transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) to reach tanh's "
              "[-1, 1]", rule="DL2")
    if lo < -1 - 1e-5 or hi > 1 + 1e-5 or lo > -0.9 or hi < 0.9:
        _fail("data value range", "values spanning [-1, 1] (dark pixels near -1, bright ones near 1)",
              f"[{lo:.3g}, {hi:.3g}]", "normalise with mean 0.5 and std 0.5 per channel, not ImageNet's "
              "statistics: Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) maps [0, 1] exactly to [-1, 1]", rule="DL2")


def check_order(loader, images: torch.Tensor) -> None:
    again = _first_batch(loader)
    same = all(torch.equal(a, b) or torch.equal(a, b.flip(-1)) for a, b in zip(images, again, strict=False))
    if same:
        _fail("data order", "a new order each pass over the data", "the same first batch twice",
              "pass shuffle=True to the DataLoader: without it, every epoch shows D the faces in the same order",
              rule="DL3")


def check_flips(loader) -> None:
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
              "face, so the flips double the data for free", rule="DL4")
