"""DiffAugment (Zhao et al. 2020): augment every image D sees, real *and* fake, with differentiable ops.

Why: after tens of epochs over 32,600 faces D starts to memorise the real set, its
scores stop carrying information about what makes a face, and G's progress stalls.
Augmenting the reals alone would teach G to draw augmented faces (shifted, cut
out); augmenting both sides, on every D call of both the D and the G step, means
D judges augmented reals against augmented fakes.  The augmentations are made of
differentiable tensor ops, so G's gradient flows back through them.

The three transforms of the paper's policy, each drawn independently per image:

- ``color``: random brightness (+U(-0.5, 0.5)), saturation (x U(0, 2)) and contrast (x U(0.5, 1.5));
- ``translation``: shift by up to 1/8 of the side, filling with zeros (mid-grey in [-1, 1]);
- ``cutout``: zero a square of half the side at a random place.

And two milder ones for faces, the rotation and lighting changes a camera brings:

- ``rotation``: turn by up to 15 degrees either way, the corners filled by reflection, so no
  black wedge tells D which images were turned;
- ``lighting``: gain on the light (x U(0.8, 1.2)), contrast and saturation (each x U(0.8, 1.2)).

Images are in [-1, 1], as G makes them.

Adaptive augmentation (ADA, Karras et al. 2020) applies each transform to an image only
with probability p, and steers p from D's own overconfidence: every few steps it measures
r_t = E[sign(D(real))] (the share of reals D calls real, mapped to [-1, 1]) and raises p
when r_t is above a target (0.6), lowers it when below.  With little overfitting p stays
near 0 and G learns undistorted faces; when D starts to memorise, p rises.  ``AdaState``
keeps p and the running sum of signs; both go into checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def color(x: torch.Tensor) -> torch.Tensor:
    """Random brightness, saturation and contrast per image."""
    n = x.size(0)
    x = x + (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its side in x and y; the uncovered border is 0."""
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sy, sy + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-sx, sx + 1, (n, 1, 1), device=x.device)
    # Read pixel (y + dy, x + dx) of the zero-padded image: one gather per image row and column.
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy).clamp(-1, h) + 1
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx).clamp(-1, w) + 1
    padded = F.pad(x, (1, 1, 1, 1))
    index = (rows * (w + 2) + cols).view(n, 1, h * w).expand(-1, x.size(1), -1)
    return padded.flatten(2).gather(2, index).view_as(x)


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero a square of ``ratio`` of the side, centred at a random point of each image."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1) - (cy - ch // 2)  # rows relative to the square's top
    xs = torch.arange(w, device=x.device).view(1, 1, w) - (cx - cw // 2)
    keep = ~((ys >= 0) & (ys < ch) & (xs >= 0) & (xs < cw))  # squares at a border are clipped by it
    return x * keep.unsqueeze(1).to(x.dtype)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Turn each image by its angle (degrees, clockwise on screen) about its centre; corners by reflection.

    ``affine_grid`` gives, for every output pixel, where to read in the input; ``grid_sample``
    reads there by bilinear interpolation, which is differentiable in the image.  Sampling runs
    in fp32 (bf16 sampling positions would be off by up to a pixel at the border).
    """
    t = degrees.float().to(x.device) * (torch.pi / 180)
    cos, sin, zero = t.cos(), t.sin(), torch.zeros_like(t)
    # Output pixel (u, v) reads the input at (cos u + sin v, -sin u + cos v), in affine_grid's [-1, 1]
    # coordinates (x right, y down): on screen, where y points down, the content turns clockwise by t.
    theta = torch.stack([torch.stack([cos, sin, zero], 1), torch.stack([-sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.to(x.dtype)


def rotation(x: torch.Tensor, max_degrees: float = 15.0) -> torch.Tensor:
    """Turn each image by an angle drawn from U(-max_degrees, max_degrees)."""
    return rotate(x, (torch.rand(x.size(0), device=x.device) * 2 - 1) * max_degrees)


def lighting(x: torch.Tensor, brightness: float = 0.2, contrast: float = 0.2,
             saturation: float = 0.2) -> torch.Tensor:
    """Per image: the light's gain x U(1 - b, 1 + b), then contrast and saturation, each x U(1 - r, 1 + r).

    Brightness scales the intensities in [0, 1] (black stays black, as under more or less
    light); contrast scales each image's distance from its mean; saturation each pixel's
    distance from its grey value.  Milder than ``color``, whose brightness shift of up to half
    the range and saturation of up to x2 draw faces no camera takes.
    """
    def factor(spread: float) -> torch.Tensor:
        return 1 + (torch.rand(x.size(0), 1, 1, 1, device=x.device) * 2 - 1) * spread

    y = (x.float() + 1) * factor(brightness) - 1  # in fp32: bf16 fakes would round at each of the six ops
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean) * factor(contrast) + mean
    grey = y.mean(dim=1, keepdim=True)
    return ((y - grey) * factor(saturation) + grey).to(x.dtype)


TRANSFORMS = {"color": color, "translation": translation, "cutout": cutout, "rotation": rotation,
              "lighting": lighting}


def diff_augment(x: torch.Tensor, policy: str, p: float = 1.0) -> torch.Tensor:
    """Apply the comma-separated ``policy`` (e.g. ``"translation,cutout"``) to a batch; '' is identity.

    ``p`` < 1: each transform touches each image with probability p (ADA); the rest pass unchanged.
    """
    for name in filter(None, policy.split(",")):
        if p >= 1:
            x = TRANSFORMS[name](x)
        elif p > 0:
            chosen = (torch.rand(x.size(0), 1, 1, 1, device=x.device) < p)
            x = torch.where(chosen, TRANSFORMS[name](x), x)
    return x


class AdaState:
    """ADA's controller: the probability ``p`` and the signs of D(real) since its last adjustment.

    Every ``interval`` D steps, p moves by sign(r_t - target) * images / (kimg * 1000): from 0
    to 1 in ``kimg`` thousand images at most.  Sums stay on the device between adjustments, so a
    GPU waits for the value once per interval, not once per step.
    """

    interval = 4

    def __init__(self, target: float, kimg: float, p: float = 0.0):
        self.target, self.kimg, self.p = target, kimg, p
        self.signs: torch.Tensor | float = 0.0
        self.images = self.steps = 0

    def observe(self, real_out: torch.Tensor, centre: torch.Tensor | float) -> None:
        """Add one D step's signs of the raw scores on the reals, relative to the decision centre."""
        self.signs = self.signs + torch.sign(real_out.detach().float() - centre).sum()
        self.images, self.steps = self.images + real_out.numel(), self.steps + 1

    def adjust(self, reduce=None) -> float | None:
        """After ``interval`` observed steps: move p towards the target and return r_t; else None.

        ``reduce`` sums a tensor over processes (distributed runs), so that every rank moves p alike.
        """
        if self.steps < self.interval:
            return None
        totals = torch.tensor([float(self.signs), float(self.images)], dtype=torch.float64)
        if reduce is not None:
            totals = reduce(totals)
        r_t = (totals[0] / totals[1]).item()
        self.p += (1.0 if r_t > self.target else -1.0) * totals[1].item() / (self.kimg * 1000)
        self.p = min(max(self.p, 0.0), 1.0)
        self.signs, self.images, self.steps = 0.0, 0, 0
        return r_t

    def state_dict(self) -> dict:
        return {"p": self.p, "signs": float(self.signs), "images": self.images, "steps": self.steps}

    def load_state_dict(self, saved: dict) -> None:
        self.p, self.signs, self.images, self.steps = saved["p"], saved["signs"], saved["images"], saved["steps"]
