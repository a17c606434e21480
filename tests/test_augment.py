"""DiffAugment, the time budget across resumes, and the 1x1 latent projection."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from facegan import augment, config, models, step, train
from facegan.state import make_state


def _image(n: int = 8, side: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, side, side) + 0.5  # strictly positive, so a zero can only be fill


def test_translation_shifts_each_image_by_whole_pixels_with_zero_fill():
    torch.manual_seed(0)
    x = _image()
    y = augment.translation(x)
    padded = nn.functional.pad(x, (4, 4, 4, 4))
    shifts = set()
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(y[i], padded[i, :, 4 + dy:20 + dy, 4 + dx:20 + dx])]
        assert len(found) == 1, f"image {i} is not a shift of at most 1/8 of the side"
        shifts.add(found[0])
    assert len(shifts) > 1  # drawn per image


def test_cutout_zeroes_one_square_of_half_the_side_and_nothing_else():
    torch.manual_seed(0)
    x = _image(64)
    y = augment.cutout(x)
    for i in range(len(x)):
        hole = (y[i] == 0).all(0)
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 8 and 1 <= len(cols) <= 8
        assert hole[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a solid rectangle
        assert hole.sum() == len(rows) * len(cols)
        assert torch.equal(y[i][:, ~hole], x[i][:, ~hole])
    assert (y == 0).all(1).sum((1, 2)).float().mean() > 40  # most squares are whole: 8x8 = 64


def test_color_changes_brightness_saturation_and_contrast_per_image():
    torch.manual_seed(0)
    x = _image()
    y = augment.color(x)
    assert y.shape == x.shape and not torch.allclose(y, x)
    assert y.mean((1, 2, 3)).std() > x.mean((1, 2, 3)).std()  # per-image brightness spreads the means


def test_rotate_by_90_degrees_is_a_quarter_turn_and_0_degrees_is_identity():
    """At 90 degrees every pixel centre lands on a pixel centre, so bilinear sampling is exact."""
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(augment.rotate(x, torch.tensor([90.0, 90.0])), torch.rot90(x, -1, (2, 3)), atol=1e-5)
    assert torch.allclose(augment.rotate(x, torch.zeros(2)), x, atol=1e-5)


def _bar_angles(images: torch.Tensor) -> torch.Tensor:
    """The orientation (degrees) of the bright bar in each image, from the second moments of its pixels."""
    w = images[:, 0].clamp(min=0)
    side = images.size(-1)
    ys, xs = torch.meshgrid(torch.arange(float(side)), torch.arange(float(side)), indexing="ij")
    mass = w.sum((1, 2))
    my, mx = (w * ys).sum((1, 2)) / mass, (w * xs).sum((1, 2)) / mass
    dy, dx = ys - my.view(-1, 1, 1), xs - mx.view(-1, 1, 1)
    cyy, cxx, cxy = ((w * dy * dy).sum((1, 2)), (w * dx * dx).sum((1, 2)), (w * dx * dy).sum((1, 2)))
    return torch.rad2deg(0.5 * torch.atan2(2 * cxy, cxx - cyy))


def test_rotation_turns_each_image_by_at_most_15_degrees_drawn_per_image():
    torch.manual_seed(0)
    bar = -torch.ones(400, 3, 32, 32)
    bar[:, :, 15:17, 4:28] = 1.0  # a horizontal bar through the centre: its orientation is the angle turned
    angles = _bar_angles(augment.rotation(bar))
    assert angles.abs().max() <= 15.5  # within the range (half a degree for the pixel grid)
    assert angles.abs().max() > 13 and angles.min() < -13 < 13 < angles.max()  # both ways, to the ends
    assert 6 < angles.abs().mean() < 9  # spread over the range, not bunched: U(-15, 15) has mean |a| 7.5
    out = augment.rotation(_image())
    assert out.min() >= 0.5 - 1e-5  # reflection fills the corners with image content, never with zeros


def test_lighting_scales_light_contrast_and_saturation_within_their_ranges():
    torch.manual_seed(0)
    x = torch.rand(500, 3, 8, 8) * 1.6 - 0.8
    only_light = augment.lighting(x, brightness=0.2, contrast=0, saturation=0)
    gain = (only_light + 1) / (x + 1)  # brightness multiplies the intensities in [0, 1]: one gain per image
    assert torch.allclose(gain, gain[:, :1, :1, :1].expand_as(gain), atol=1e-4)
    assert 0.8 - 1e-4 <= gain.min() and gain.max() <= 1.2 + 1e-4 and gain.min() < 0.82 and gain.max() > 1.18
    only_contrast = augment.lighting(x, brightness=0, contrast=0.2, saturation=0)
    assert torch.allclose(only_contrast.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-5)  # the mean stays
    ratio = only_contrast.std((1, 2, 3)) / x.std((1, 2, 3))
    assert 0.8 - 1e-4 <= ratio.min() and ratio.max() <= 1.2 + 1e-4 and ratio.std() > 0.05
    grey = x.mean(1, keepdim=True).expand_as(x)
    assert torch.allclose(augment.lighting(grey, brightness=0, contrast=0, saturation=0.2), grey, atol=1e-6)
    only_sat = augment.lighting(x, brightness=0, contrast=0, saturation=0.2)
    assert torch.allclose(only_sat.mean(1), x.mean(1), atol=1e-5)  # each pixel's grey value stays
    chroma = (only_sat - only_sat.mean(1, keepdim=True)).flatten(1).norm(dim=1) / (x - grey).flatten(1).norm(dim=1)
    assert 0.8 - 1e-4 <= chroma.min() and chroma.max() <= 1.2 + 1e-4 and chroma.std() > 0.05


@pytest.mark.parametrize("policy", ["rotation", "lighting", "rotation,lighting"])
def test_rotation_and_lighting_are_differentiable_ops_that_change_images(policy):
    torch.manual_seed(0)
    x = _image().requires_grad_(True)
    y = augment.diff_augment(x, policy)
    assert y.shape == x.shape and not torch.allclose(y, x, atol=1e-3)  # applied, it changes every image
    assert all(not torch.allclose(y[i], x[i], atol=1e-3) for i in range(len(x)))
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # G's gradient flows back through them
    assert torch.equal(augment.diff_augment(x, policy, p=0.0), x)  # ADA at p = 0: untouched
    many = _image(64)
    half = augment.diff_augment(many, policy, p=0.5)
    changed = [not torch.equal(half[i], many[i]) for i in range(len(many))]
    assert 0 < sum(changed) < len(many)  # with p = 0.5, some images pass untouched and some do not
    assert torch.isfinite(augment.diff_augment(x.detach().bfloat16(), policy)).all()  # bf16 fakes too


def test_diff_augment_is_differentiable_and_empty_policy_is_identity():
    x = _image().requires_grad_(True)
    assert augment.diff_augment(x, "") is x
    augment.diff_augment(x, "color,translation,cutout").square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # G's gradient flows back through the augmentations


def test_config_accepts_exactly_the_implemented_augmentations():
    assert set(config.AUGMENTATIONS) == set(augment.TRANSFORMS)


def test_config_rejects_an_unknown_augmentation():
    with pytest.raises(ValueError, match="diffaug.*translation"):
        config.make_config("small32", diffaug="translation,rotate")


def test_train_step_augments_what_d_sees(celeba_batch):
    real = nn.functional.interpolate(celeba_batch, size=32, mode="area")
    scores = {}
    for policy in ("", "translation,cutout"):
        torch.manual_seed(0)
        state = make_state(config.make_config("small32", batch_size=16, diffaug=policy), 100, "cpu")
        torch.manual_seed(1)
        scores[policy] = step.train_step(state, real)["d_real"]
        assert torch.isfinite(scores[policy])
    assert scores[""] != scores["translation,cutout"]


@pytest.mark.slow
def test_max_minutes_counts_training_time_across_resumes(celeba_dir, tmp_path):
    cfg = config.make_config("small32", batch_size=16, subset=128, max_steps=3, log_every=1)
    first = train.train(cfg, tmp_path, progress=False)
    used = first.history["seconds"][-1]
    assert used > 0
    # A budget smaller than the time already trained: resuming trains no further step.
    again = train.train(cfg.replace(max_steps=100, max_minutes=used / 60 / 2), tmp_path, resume=True,
                        progress=False)
    assert again.step == 3 and again.images_per_second == 0


def test_latent_projection_is_the_transposed_convolution_it_replaces():
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(16, 32, 4, 1, 0, bias=True)
    proj = models.LatentProjection(16, 32, 4, 1, 0, bias=True)
    proj.load_state_dict(conv.state_dict())  # the same parameters, so checkpoints load either way
    z = torch.randn(5, 16, 1, 1, requires_grad=True)
    out_conv, out_proj = conv(z), proj(z)
    assert torch.allclose(out_proj, out_conv, atol=1e-6)
    g = torch.randn_like(out_conv)
    for a, b in zip(torch.autograd.grad(out_conv, (z, conv.weight, conv.bias), g),
                    torch.autograd.grad(out_proj, (z, proj.weight, proj.bias), g), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    wide = torch.randn(2, 16, 3, 3)  # any other input size is an ordinary transposed convolution
    assert torch.allclose(proj(wide), conv(wide), atol=1e-6)
    padded = models.LatentProjection(16, 32, 4, 1, 1)  # and so is any other padding
    assert padded(z).shape == nn.ConvTranspose2d(16, 32, 4, 1, 1)(z).shape == (5, 32, 2, 2)
