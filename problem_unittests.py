"""Checks for the pieces of a face GAN, written to be read by a learner.

Call them from the notebook on your own code::

    from problem_unittests import test_discriminator
    test_discriminator(Discriminator)

Each check prints one pass line, or raises ``AssertionError`` saying which
check failed, what was expected, what came back, and a hint.  The test suite
(``tests/test_problem_unittests.py``) runs the same checks on ``helpers.py``
and plants the usual mistakes to make sure each one is caught.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn as nn


class CheckFailed(AssertionError):
    """A check failed; the message says what was expected and how to fix it."""


def _fail(check: str, expected: str, got: str, hint: str) -> None:
    raise CheckFailed(f"{check}: expected {expected}, got {got}.\nHint: {hint}")


def _passed(what: str) -> None:
    print(f"Tests Passed: {what}")


def _call(what: str, fn: Callable, *args, **kwargs):
    """Call learner code, turning the usual crashes into advice."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise CheckFailed(f"{what} is not implemented yet: replace the "
                          "`raise NotImplementedError` in its TODO with your code.") from None
    except AttributeError as e:
        if "'next'" in str(e):
            raise CheckFailed(f"{what} failed: {e}.\nHint: iterators lost their .next() method; "
                              "write next(iter(loader)) or next(dataiter) instead of dataiter.next().") from None
        raise


def _output_with_large_weights(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of a copy of ``model`` whose conv and linear weights are ~N(0, 1): what a
    squashing output layer (sigmoid, tanh) does then shows plainly."""
    big = copy.deepcopy(model)
    with torch.no_grad():
        for p in big.parameters():
            if p.dim() > 1:
                p.normal_(0, 1)
        return big(x)


def test_scale(scale: Callable) -> None:
    """scale(x) maps [0, 1] to [-1, 1], and to any feature_range given."""
    x = torch.linspace(0, 1, 11)
    y = _call("scale", scale, x)
    if not torch.is_tensor(y) or y.shape != x.shape:
        _fail("scale", f"a tensor of shape {tuple(x.shape)}", repr(type(y)) if not torch.is_tensor(y)
              else f"shape {tuple(y.shape)}", "work element-wise on the tensor you are given")
    lo, hi = y.min().item(), y.max().item()
    if not (math.isclose(lo, -1, abs_tol=1e-5) and math.isclose(hi, 1, abs_tol=1e-5)):
        _fail("scale", "[0, 1] mapped to [-1, 1]", f"[{lo:.3g}, {hi:.3g}]",
              "multiply by (max - min), then add min: x * (max - min) + min")
    if not math.isclose(y[5].item(), 0, abs_tol=1e-5):
        _fail("scale", "0.5 mapped to 0", f"{y[5].item():.3g}", "the mapping must be linear")
    y2 = _call("scale", scale, x, feature_range=(0.5, 2.0))
    if not (math.isclose(y2.min().item(), 0.5, abs_tol=1e-5) and math.isclose(y2.max().item(), 2.0, abs_tol=1e-5)):
        _fail("scale(x, feature_range=(0.5, 2))", "[0.5, 2]", f"[{y2.min().item():.3g}, {y2.max().item():.3g}]",
              "use the feature_range argument rather than hard-coding -1 and 1")
    _passed("scale maps [0, 1] to feature_range")


def test_dataloader(get_dataloader: Callable, image_size: int = 32, batch_size: int = 16, **kwargs) -> None:
    """A batch of the loader is (batch, 3, image_size, image_size), in [-1, 1], and shuffled."""
    loader = _call("get_dataloader", get_dataloader, batch_size, image_size, **kwargs)
    images = _call("getting a batch", lambda: next(iter(loader)))
    if isinstance(images, (list, tuple)):  # ImageFolder yields (images, labels)
        images = images[0]
    expected = (batch_size, 3, image_size, image_size)
    if tuple(images.shape) != expected:
        _fail("data batch shape", str(expected), str(tuple(images.shape)),
              "resize AND centre-crop to image_size, and pass batch_size to the DataLoader")
    lo, hi = images.min().item(), images.max().item()
    if lo < -1 - 1e-5 or hi > 1 + 1e-5 or lo >= 0:
        _fail("data value range", "values in [-1, 1] with some below 0", f"[{lo:.3g}, {hi:.3g}]",
              "ToTensor gives [0, 1]; Normalize((0.5,)*3, (0.5,)*3) or scale() maps it to tanh's [-1, 1]")
    _passed(f"batches of shape {expected} in [-1, 1]")


def test_discriminator(Discriminator: type, conv_dim: int = 32, image_size: int = 32, **kwargs) -> None:
    """D maps (N, 3, H, W) images to (N, 1) raw logits, with convolutions only (no pooling)."""
    D = _call("Discriminator", Discriminator, conv_dim, **kwargs)
    pools = sorted({type(m).__name__ for m in D.modules()
                    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d))})
    if pools:
        _fail("Discriminator layers", "convolutions only", f"pooling layers {pools}",
              "DCGAN's D down-samples with stride-2 convolutions (stride=2, padding=1), not max pooling")
    x = torch.rand(50, 3, image_size, image_size) * 2 - 1
    out = _call("Discriminator.forward", D, x)
    if tuple(out.shape) != (50, 1):
        _fail("Discriminator output shape", "(50, 1)", str(tuple(out.shape)),
              "did you flatten before the final linear layer? x.view(x.size(0), -1) keeps the batch "
              "dimension; the last layer should output 1 value per image")
    # With large weights, logits spread far beyond [0, 1]; only a sigmoid keeps them inside.
    big_out = _output_with_large_weights(D, x)
    if big_out.min() >= 0 and big_out.max() <= 1:
        _fail("Discriminator outputs", "raw logits (any real number)",
              f"values in [{big_out.min().item():.3g}, {big_out.max().item():.3g}], as after a sigmoid",
              "do not apply sigmoid in D: BCEWithLogitsLoss applies it itself, more stably")
    _passed(f"Discriminator maps (50, 3, {image_size}, {image_size}) to (50, 1) logits")


def test_generator(Generator: type, z_size: int = 100, conv_dim: int = 32, image_size: int = 32,
                   latent_shape: tuple | None = None, **kwargs) -> None:
    """G maps (N, z_size) latents to (N, 3, H, W) images in [-1, 1] (tanh output)."""
    G = _call("Generator", Generator, z_size, conv_dim, **kwargs)
    z = torch.randn(50, *(latent_shape or (z_size,)))
    out = _call("Generator.forward", G, z)
    expected = (50, 3, image_size, image_size)
    if tuple(out.shape) != expected:
        _fail("Generator output shape", str(expected), str(tuple(out.shape)),
              "check the channels and sizes: each stride-2 transposed conv (kernel 4, padding 1) doubles "
              "height and width, and the last one must output 3 channels")
    # Large weights make the pre-activation output huge: only a squashing tanh keeps it in [-1, 1].
    out = _output_with_large_weights(G, z)
    lo, hi = out.min().item(), out.max().item()
    if lo < -1 - 1e-5 or hi > 1 + 1e-5:
        _fail("Generator output range", "values in [-1, 1]", f"[{lo:.3g}, {hi:.3g}]",
              "end G with tanh, so its images live in the same [-1, 1] range as the scaled real images")
    _passed(f"Generator maps {tuple(z.shape)} to {expected} in [-1, 1]")


def test_weights_init(weights_init_normal: Callable) -> None:
    """Conv, transposed conv and linear weights ~ N(0, 0.02); biases 0."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(64, 128, 4), nn.ConvTranspose2d(128, 64, 4), nn.Linear(512, 512))
    _call("weights_init_normal", net.apply, weights_init_normal)
    for m in net:
        name = type(m).__name__
        mean, std = m.weight.mean().item(), m.weight.std().item()
        if abs(mean) > 0.001 or abs(std - 0.02) > 0.0005:  # ~100k weights pin the std down tightly
            _fail(f"{name} weights", "mean 0 and std 0.02", f"mean {mean:.4f}, std {std:.4f}",
                  "use nn.init.normal_(m.weight, 0.0, 0.02) for Conv2d, ConvTranspose2d and Linear layers "
                  "(check with isinstance, or with the class name)")
        if m.bias is not None and m.bias.abs().max().item() > 0:
            _fail(f"{name} bias", "zeros", f"max |bias| {m.bias.abs().max().item():.3g}",
                  "set biases with nn.init.zeros_(m.bias)")
    _passed("weights ~ N(0, 0.02), biases 0")


def test_losses(real_loss: Callable, fake_loss: Callable) -> None:
    """real_loss / fake_loss are BCE-with-logits towards 1 (or the smoothed label) and 0."""
    logits = torch.full((8, 1), 5.0)
    got = _call("real_loss", real_loss, logits).item()
    want = math.log1p(math.exp(-5.0))  # -log(sigmoid(5)) = 0.00672
    sigmoid_first = math.log1p(math.exp(-1 / (1 + math.exp(-5.0))))  # 0.3156
    if math.isclose(got, sigmoid_first, rel_tol=1e-3):
        _fail("real_loss(logits=5)", f"{want:.4f}", f"{got:.4f}",
              "it looks like sigmoid is applied before BCEWithLogitsLoss, which applies it again; "
              "pass the raw logits")
    if not math.isclose(got, want, rel_tol=1e-3, abs_tol=1e-5):
        _fail("real_loss(logits=5)", f"{want:.4f} (BCE with target 1)", f"{got:.4f}",
              "use nn.BCEWithLogitsLoss()(D_out.squeeze(), labels) with labels = torch.ones(batch_size)")
    smoothed = _call("real_loss", real_loss, logits, smooth=True).item()
    want_smooth = 0.9 * want + 0.1 * (5.0 + want)  # BCE with target 0.9
    if not math.isclose(smoothed, want_smooth, rel_tol=1e-3):
        _fail("real_loss(logits=5, smooth=True)", f"{want_smooth:.4f} (BCE with target 0.9)", f"{smoothed:.4f}",
              "the smooth argument is ignored: with smooth=True the real labels must be 0.9, not 1")
    got = _call("fake_loss", fake_loss, -logits).item()
    if not math.isclose(got, want, rel_tol=1e-3, abs_tol=1e-5):
        _fail("fake_loss(logits=-5)", f"{want:.4f} (BCE with target 0)", f"{got:.4f}",
              "fake images have label 0: labels = torch.zeros(batch_size)")
    _passed("real_loss and fake_loss are BCE-with-logits, with label smoothing")


def test_optimizers(d_optimizer: torch.optim.Optimizer, g_optimizer: torch.optim.Optimizer,
                    D: nn.Module, G: nn.Module) -> None:
    """One optimiser per network, each holding exactly that network's parameters."""
    for name, opt, net, other in (("d_optimizer", d_optimizer, D, G), ("g_optimizer", g_optimizer, G, D)):
        if not isinstance(opt, torch.optim.Optimizer):
            raise CheckFailed(f"{name} is not implemented yet (it is {opt!r}): create it with "
                              f"torch.optim.Adam({type(net).__name__}.parameters(), lr=2e-4, betas=(0.5, 0.999)).")
        params = {id(p) for group in opt.param_groups for p in group["params"]}
        if params != {id(p) for p in net.parameters()}:
            _fail(name, f"the parameters of {type(net).__name__}", f"{len(params)} other tensors",
                  f"build it with {type(net).__name__}.parameters()")
        if params & {id(p) for p in other.parameters()}:
            _fail(name, "no parameters of the other network", "some", "keep D's and G's optimisers separate")
        lr = opt.param_groups[0]["lr"]
        if not 1e-5 <= lr <= 1e-2:
            _fail(f"{name} learning rate", "between 1e-5 and 1e-2 (DCGAN uses 2e-4)", f"{lr}",
                  "GANs are unstable with large learning rates")
    _passed("one optimiser for each network")


def test_discriminator_step(d_step: Callable, D: nn.Module, G: nn.Module, d_optimizer: torch.optim.Optimizer,
                            real_images: torch.Tensor, z: torch.Tensor) -> None:
    """``d_step(D, G, d_optimizer, real_images, z)`` updates D only and returns its loss."""
    for p in G.parameters():
        p.grad = None
    before = [p.detach().clone() for p in D.parameters()]
    loss = _call("the discriminator step", d_step, D, G, d_optimizer, real_images, z)
    value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
    if not math.isfinite(value):
        _fail("discriminator loss", "a finite number", str(value), "check the loss inputs for NaN")
    if any(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters()):
        _fail("generator gradients after the D step", "none", "gradients in G",
              "call fake_images.detach() before scoring fakes in the D step, so D's loss does not "
              "backpropagate into G")
    if all(torch.equal(a, b) for a, b in zip(before, D.parameters(), strict=True)):
        _fail("D's parameters", "changed by the step", "unchanged", "call loss.backward() and d_optimizer.step()")
    _passed("the D step updates D and leaves G alone")


def test_generator_step(g_step: Callable, D: nn.Module, G: nn.Module, g_optimizer: torch.optim.Optimizer,
                        z: torch.Tensor) -> None:
    """``g_step(D, G, g_optimizer, z)`` updates G only, towards D calling its fakes real."""
    d_before = [p.detach().clone() for p in D.parameters()]
    g_before = [p.detach().clone() for p in G.parameters()]
    loss = _call("the generator step", g_step, D, G, g_optimizer, z)
    value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
    if not math.isfinite(value) or value < 0:
        _fail("generator loss", "a finite BCE value >= 0", str(value),
              "G's loss is real_loss(D(G(z))): BCE of D's logits on the fakes against the label 1")
    if not any(not torch.equal(a, b) for a, b in zip(g_before, G.parameters(), strict=True)):
        _fail("G's parameters", "changed by the step", "unchanged", "call loss.backward() and g_optimizer.step()")
    if not all(torch.equal(a, b) for a, b in zip(d_before, D.parameters(), strict=True)):
        _fail("D's parameters", "unchanged by the G step", "changed",
              "step only g_optimizer in the G step; D is updated in its own step")
    _passed("the G step updates G and leaves D alone")
