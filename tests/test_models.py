"""Models, presets, initialisation and losses."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import problem_unittests as checks
from facegan import config, losses, models


def conv(i, o, bias=False):  # 4x4 kernels everywhere
    return i * o * 16 + (o if bias else 0)


def norm(c):
    return 2 * c


def linear(i, o):
    return i * o + o


# Parameter counts written out layer by layer from the recipes' layouts.
EXPECTED_PARAMS = {
    "small32": (
        conv(3, 32, True) + conv(32, 64) + norm(64) + conv(64, 128) + norm(128) + linear(2048, 1),
        linear(100, 2048) + norm(128) + conv(128, 64) + norm(64) + conv(64, 32) + norm(32) + conv(32, 3, True)),
    "fast32": (
        conv(3, 64, True) + conv(64, 128) + norm(128) + conv(128, 256) + norm(256) + linear(4096, 1),
        linear(100, 4096) + norm(256) + conv(256, 128) + norm(128) + conv(128, 64) + norm(64) + conv(64, 3, True)),
    "classic32": (
        conv(3, 64, True) + conv(64, 128) + norm(128) + conv(128, 256) + norm(256) + conv(256, 512)
        + norm(512) + linear(2048, 1),
        linear(100, 2048) + norm(512) + conv(512, 256) + norm(256) + conv(256, 128) + norm(128)
        + conv(128, 64) + norm(64) + conv(64, 3, True)),
    "dcgan64": (
        conv(3, 64, True) + conv(64, 128) + norm(128) + conv(128, 256) + norm(256) + conv(256, 512)
        + norm(512) + conv(512, 1, True),
        conv(128, 512) + norm(512) + conv(512, 256) + norm(256) + conv(256, 128) + norm(128)
        + conv(128, 64) + norm(64) + conv(64, 3, True)),
    "fast64": (  # dcgan64 at half the width
        conv(3, 32, True) + conv(32, 64) + norm(64) + conv(64, 128) + norm(128) + conv(128, 256)
        + norm(256) + conv(256, 1, True),
        conv(128, 256) + norm(256) + conv(256, 128) + norm(128) + conv(128, 64) + norm(64)
        + conv(64, 32) + norm(32) + conv(32, 3, True)),
}
EXPECTED_PARAMS["improved64"] = (EXPECTED_PARAMS["dcgan64"][0], EXPECTED_PARAMS["dcgan64"][1] - conv(28, 512))
EXPECTED_PARAMS["wgangp64"] = EXPECTED_PARAMS["dcgan64"]  # layer norm has BatchNorm's 2C parameters
EXPECTED_PARAMS["hinge_sn64"] = (
    conv(3, 64, True) + conv(64, 128, True) + conv(128, 256, True) + conv(256, 512, True) + conv(512, 1, True),
    EXPECTED_PARAMS["dcgan64"][1])


def test_every_preset_has_expected_counts():
    assert set(EXPECTED_PARAMS) == set(config.PRESETS)


@pytest.mark.parametrize("preset", list(config.PRESETS))
def test_preset_shapes_and_parameter_counts(preset):
    cfg = config.make_config(preset)
    D, G = models.build_models(cfg)
    assert (models.count_parameters(D), models.count_parameters(G)) == EXPECTED_PARAMS[preset]
    z = models.sample_latent(5, cfg)
    assert z.shape == ((5, cfg.z_size) if cfg.arch == "linear-stem" else (5, cfg.z_size, 1, 1))
    images = G(z)
    assert images.shape == (5, 3, cfg.image_size, cfg.image_size)
    assert images.abs().max() <= 1
    assert D(images).shape == (5, 1)


def test_classic_call_signatures():
    assert models.Discriminator(32)(torch.randn(4, 3, 32, 32)).shape == (4, 1)
    assert models.Generator(100, 32)(torch.randn(4, 100)).shape == (4, 3, 32, 32)
    assert models.DCGANGenerator(128, 64)(torch.randn(4, 128, 1, 1)).shape == (4, 3, 64, 64)
    assert models.DCGANDiscriminator(64)(torch.randn(4, 3, 64, 64)).shape == (4, 1)


@pytest.mark.parametrize("size, stride2_layers", [(64, 4), (128, 5), (256, 6)])
def test_dcgan_models_take_64_128_and_256_pixels_with_one_stride2_layer_per_doubling(size, stride2_layers):
    cfg = config.make_config("dcgan64", image_size=size, g_conv_dim=8, d_conv_dim=8)
    D, G = models.build_models(cfg)
    z = models.sample_latent(2, cfg)
    images = G(z)
    assert images.shape == (2, 3, size, size) and D(images).shape == (2, 1)
    down = [m for m in D.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    up = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d) and m.stride == (2, 2)]
    assert len(down) == len(up) == stride2_layers
    assert max(m.out_channels for m in down) == 8 * 8  # widths stop at 8 x conv_dim
    if size == 64:  # the 64x64 layout (and so every shipped checkpoint) is unchanged
        ref_D, ref_G = models.build_models(config.make_config("dcgan64", g_conv_dim=8, d_conv_dim=8))
        assert [p.shape for p in D.state_dict().values()] == [p.shape for p in ref_D.state_dict().values()]
        assert [p.shape for p in G.state_dict().values()] == [p.shape for p in ref_G.state_dict().values()]
    with pytest.raises(ValueError, match="64, 128 or 256"):
        config.make_config("dcgan64", image_size=96)


def test_dcgan_rules_hold():
    D, G = models.build_models(config.make_config("dcgan64"))
    kinds = {type(m) for m in D.modules()}
    assert nn.MaxPool2d not in kinds and nn.Sigmoid not in kinds and nn.BatchNorm2d in kinds
    assert all(m.negative_slope == 0.2 for m in D.modules() if isinstance(m, nn.LeakyReLU))
    assert isinstance(list(G.modules())[-1], nn.Tanh)
    assert any(isinstance(m, nn.ReLU) for m in G.modules())


def test_improved_and_stabilised_variants_differ_where_they_should():
    imp_D, imp_G = models.build_models(config.make_config("improved64"))
    assert any(isinstance(m, nn.Dropout) for m in imp_D.modules())
    assert any(isinstance(m, nn.LeakyReLU) for m in imp_G.modules())
    wgan_D, _ = models.build_models(config.make_config("wgangp64"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in wgan_D.modules())
    sn_D, _ = models.build_models(config.make_config("hinge_sn64"))
    convs = [m for m in sn_D.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 and all(hasattr(m, "parametrizations") for m in convs)


def test_init_statistics():
    torch.manual_seed(0)
    D, G = models.build_models(config.make_config("dcgan64"))
    for m in list(D.modules()) + list(G.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.weight.numel() > 10_000:
            assert abs(m.weight.mean().item()) < 1e-3 and abs(m.weight.std().item() - 0.02) < 1e-3
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
            assert torch.all(m.bias == 0)
        if isinstance(m, nn.BatchNorm2d) and m.num_features >= 256:
            assert abs(m.weight.mean().item() - 1) < 5e-3 and torch.all(m.bias == 0)
    checks.test_weights_init(models.weights_init_normal)


def test_spectral_norm_init_sets_the_raw_weight():
    D, _ = models.build_models(config.make_config("hinge_sn64"))
    raw = D.net[2].parametrizations.weight.original
    assert abs(raw.std().item() - 0.02) < 2e-3


# --- losses on known inputs

def test_bce_losses_known_values():
    zero = torch.zeros(4, 1)
    assert losses.real_loss(zero).item() == pytest.approx(math.log(2))
    assert losses.fake_loss(zero).item() == pytest.approx(math.log(2))
    five = torch.full((4, 1), 5.0)
    sp = math.log1p(math.exp(-5))  # softplus(-5) = -log sigmoid(5)
    assert losses.real_loss(five).item() == pytest.approx(sp, rel=1e-5)
    assert losses.real_loss(five, smooth=True).item() == pytest.approx(0.9 * sp + 0.1 * (5 + sp), rel=1e-5)
    assert losses.real_loss(five, smooth=0.8).item() == pytest.approx(0.8 * sp + 0.2 * (5 + sp), rel=1e-5)
    assert losses.fake_loss(-five).item() == pytest.approx(sp, rel=1e-5)
    checks.test_losses(losses.real_loss, losses.fake_loss)


def test_random_real_labels_stay_in_range():
    torch.manual_seed(0)
    # At logit 0, BCE = log 2 whatever the label; at a large logit L, BCE ~ (1 - y) * L, so it reveals mean(y).
    big = torch.full((20_000, 1), 20.0)
    mean_label = 1 - losses.real_loss(big, smooth=(0.7, 1.2)).item() / 20
    assert mean_label == pytest.approx(0.95, abs=0.01)


def test_hinge_and_wasserstein_known_values():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # D: mean(relu(1 - [2, .5, -1])) = (0 + .5 + 2) / 3; mean(relu(1 + [-2, 0, 1])) = (0 + 1 + 2) / 3
    assert losses.hinge_d_loss(real, fake).item() == pytest.approx(2.5 / 3 + 1.0)
    assert losses.hinge_g_loss(fake).item() == pytest.approx(1 / 3)
    assert losses.wasserstein_d_loss(real, fake).item() == pytest.approx(-1 / 3 - 0.5)
    assert losses.wasserstein_g_loss(fake).item() == pytest.approx(1 / 3)


def test_gradient_penalty_against_hand_computation():
    # A linear critic D(x) = sum(w * x) has gradient w everywhere, so the penalty is (||w|| - 1)^2.
    w = torch.arange(12, dtype=torch.float32).view(1, 3, 2, 2) / 10

    def critic(x):
        return (x * w).flatten(1).sum(1, keepdim=True)

    real, fake = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    gp = losses.gradient_penalty(critic, real, fake)
    assert gp.item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)

    # A quadratic critic D(x) = 0.5 ||x||^2 has gradient x_hat: check the interpolation too.
    eps = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(4, 1, 1, 1)
    x_hat = eps * real + (1 - eps) * fake
    expected = ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean()
    got = losses.gradient_penalty(lambda x: 0.5 * (x**2).flatten(1).sum(1), real, fake, eps=eps)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


# --- configuration

def test_bad_configuration_values_name_the_field():
    with pytest.raises(ValueError, match="unknown preset"):
        config.make_config("dcgan128")
    with pytest.raises(ValueError, match="loss"):
        config.make_config("dcgan64", loss="mse")
    with pytest.raises(ValueError, match="unknown configuration fields"):
        config.make_config("dcgan64", learning_rate=1)
    with pytest.raises(ValueError, match="image_size"):
        config.make_config("dcgan64", image_size=32)
    with pytest.raises(ValueError, match="BatchNorm"):
        config.make_config("wgangp64", d_norm="batch")


def test_config_round_trips_through_a_dict():
    cfg = config.make_config("improved64", lr_schedule="cosine", ema_decay=0.999)
    assert config.Config.from_dict(cfg.to_dict()) == cfg


# --- D's features and progressive growing

@pytest.mark.parametrize("preset", ["small32", "fast64", "hinge_sn64"])
def test_d_returns_the_features_its_logit_is_read_from_without_changing_the_logit(preset):
    torch.manual_seed(0)
    cfg = config.make_config(preset)
    D, _ = models.build_models(cfg)
    D.eval()  # in training mode spectral norm's power iteration moves at every call
    x = torch.randn(4, 3, cfg.image_size, cfg.image_size)
    plain = D(x)
    out, h = D(x, with_features=True)
    assert torch.equal(out, plain)  # the same computation, split: the logit is bit for bit the same
    assert h.shape[0] == 4 and h.dim() == 2 and h.shape[1] > 1
    last = D.fc if preset == "small32" else D.net[-1]  # the features are exactly what the last layer reads
    reread = last(h) if preset == "small32" else last(h.view(4, -1, 4, 4)).flatten(1)
    assert torch.allclose(reread, out, atol=1e-6)


def _growing(alpha: float, **overrides):
    torch.manual_seed(0)
    D, G = models.build_models(config.make_config("fast64", progressive="0.25,0.25", **overrides))
    for m in (D, G):
        m.grow.alpha = alpha
    return D.eval(), G.eval()


def test_grown_models_at_alpha_1_are_the_plain_models_bit_for_bit():
    D, G = _growing(1.0)
    plain_D, plain_G = models.build_models(config.make_config("fast64"))
    for grown, plain in ((D, plain_D), (G, plain_G)):
        weights = {k: v for k, v in grown.state_dict().items() if not k.startswith("grow.")}
        plain.load_state_dict(weights)  # the layout is fast64's, plus the half-size layers
        plain.eval()
    z, x = torch.randn(3, 128, 1, 1), torch.rand(3, 3, 64, 64) * 2 - 1
    assert torch.equal(G(z), plain_G(z)) and torch.equal(D(x), plain_D(x))


def test_at_alpha_0_the_models_work_at_half_size_and_skip_the_full_size_layers():
    D, G = _growing(0.0)
    z = torch.randn(3, 128, 1, 1)
    img = G(z)
    assert img.shape == (3, 3, 64, 64) and img.abs().max() <= 1
    assert torch.equal(img, img[:, :, ::2, ::2].repeat_interleave(2, 2).repeat_interleave(2, 3))  # 2x2 blocks
    half = nn.functional.avg_pool2d(img, 2)
    with torch.no_grad():
        G.net[-2].weight.add_(1.0)  # the full-size output layer: unused at alpha 0
        D.net[0].weight.add_(1.0)  # D's full-size input layer: unused too
    assert torch.equal(G(z), img)
    sharp = half.repeat_interleave(2, 2).repeat_interleave(2, 3) + 0.3 * torch.randn(3, 3, 64, 64)
    sharp = sharp - nn.functional.avg_pool2d(sharp, 2).repeat_interleave(2, 2).repeat_interleave(2, 3) + \
        half.repeat_interleave(2, 2).repeat_interleave(2, 3)  # other full-size detail, the same 2x2 means
    assert torch.allclose(D(sharp), D(img), atol=1e-5)  # D reads only the half-size image
    G.grow.alpha = D.grow.alpha = 1.0
    assert not torch.equal(G(z), img)


def test_fading_mixes_the_half_and_full_size_paths_by_alpha():
    D, G = _growing(1.0)
    z, x = torch.randn(3, 128, 1, 1), torch.rand(3, 3, 64, 64) * 2 - 1
    full_G, full_D = G(z), D(x, with_features=True)[1]
    G.grow.alpha = D.grow.alpha = 0.0
    low_G = G(z)
    G.grow.alpha = D.grow.alpha = 0.25
    assert torch.allclose(G(z), 0.75 * low_G + 0.25 * full_G, atol=1e-6)
    assert not torch.allclose(D(x, with_features=True)[1], full_D, atol=1e-3)
    (G(z).square().sum() + D(x).sum()).backward()
    for m in (G, D):  # both paths learn during the fade
        assert m.grow.conv.weight.grad.abs().sum() > 0
    assert G.net[-2].weight.grad.abs().sum() > 0 and D.net[0].weight.grad.abs().sum() > 0


def test_alpha_travels_with_the_weights_and_a_model_without_growing_has_no_extra_tensors():
    D, G = _growing(0.4)
    _, again = _growing(1.0)
    again.load_state_dict(G.state_dict())
    assert again.grow.alpha == pytest.approx(0.4)
    _, plain = models.build_models(config.make_config("fast64"))
    assert not any("grow" in k for k in plain.state_dict())  # shipped models load as before
