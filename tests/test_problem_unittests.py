"""The learner checks pass on correct code in several styles, and catch each usual mistake with a message
that says what was expected, what came back, and a hint that itself works."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import problem_unittests as checks
from facegan import config, data, losses, models, step


def _optimizers(D, G, preset="small32"):
    return step.make_optimizers(D, G, config.make_config(preset, fused_adam=False))


def test_checks_pass_on_the_reference_code(capsys):
    checks.test_scale(data.scale)
    checks.test_discriminator(models.Discriminator)
    checks.test_generator(models.Generator)
    checks.test_discriminator(models.Discriminator, 64, n_layers=4)
    checks.test_generator(models.Generator, 100, 64, n_layers=4)
    checks.test_discriminator(lambda d: models.DCGANDiscriminator(d), 64, image_size=64)
    checks.test_generator(lambda z, d: models.DCGANGenerator(z, d), 128, 64, image_size=64,
                          latent_shape=(128, 1, 1))
    checks.test_weights_init(models.weights_init_normal)
    checks.test_losses(losses.real_loss, losses.fake_loss)
    D, G = models.build_models(config.make_config("classic32"))
    d_opt, g_opt = _optimizers(D, G, "classic32")
    checks.test_optimizers(d_opt, g_opt, D, G)
    checks.test_optimizers(d_opt, g_opt, D, G, lr=2e-4, betas=(0.5, 0.999))
    checks.test_discriminator_step(step.discriminator_step, D, G, d_opt,
                                   torch.rand(8, 3, 32, 32) * 2 - 1, torch.randn(8, 100))
    checks.test_generator_step(step.generator_step, D, G, g_opt, torch.randn(8, 100))
    out = capsys.readouterr().out
    assert out.count("Tests Passed") == 13 and "Note" not in out


def test_dataloader_check_passes_on_real_data(celeba_dir, capsys):
    checks.test_dataloader(data.get_dataloader, image_size=32)
    assert "Tests Passed" in capsys.readouterr().out


# --- correct code in other styles: the checks test behaviour, not one way of writing it

class SequentialViewD(nn.Module):
    """nn.Sequential, .view to flatten, a functional LeakyReLU nowhere: all fine in a contiguous layout."""

    def __init__(self, conv_dim=32, n_layers=3):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, conv_dim, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(conv_dim, conv_dim * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(conv_dim * 2), nn.LeakyReLU(0.2),
            nn.Conv2d(conv_dim * 2, conv_dim * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(conv_dim * 4),
            nn.LeakyReLU(0.2))
        self.fc = nn.Linear(conv_dim * 4 * 4 * 4, 1)

    def forward(self, x):
        x = self.conv(x)
        return self.fc(x.view(x.size(0), -1))


class ExplicitReshapeD(nn.Module):
    """Explicit layers, functional activations, reshape."""

    def __init__(self, conv_dim=32):
        super().__init__()
        self.conv_dim = conv_dim
        self.conv1 = nn.Conv2d(3, conv_dim, 4, 2, 1)
        self.conv2 = nn.Conv2d(conv_dim, conv_dim * 2, 4, 2, 1)
        self.bn2 = nn.BatchNorm2d(conv_dim * 2)
        self.conv3 = nn.Conv2d(conv_dim * 2, conv_dim * 4, 4, 2, 1)
        self.bn3 = nn.BatchNorm2d(conv_dim * 4)
        self.fc = nn.Linear(conv_dim * 4 * 4 * 4, 1)

    def forward(self, x):
        x = F.leaky_relu(self.conv1(x), 0.2)
        x = F.leaky_relu(self.bn2(self.conv2(x)), 0.2)
        x = F.leaky_relu(self.bn3(self.conv3(x)), 0.2)
        return self.fc(x.reshape(-1, self.conv_dim * 4 * 4 * 4))


class ExplicitG(nn.Module):
    """Explicit layers, functional relu and torch.tanh, .view to un-flatten."""

    def __init__(self, z_size=100, conv_dim=32):
        super().__init__()
        self.conv_dim = conv_dim
        self.fc = nn.Linear(z_size, conv_dim * 4 * 4 * 4)
        self.t1 = nn.ConvTranspose2d(conv_dim * 4, conv_dim * 2, 4, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(conv_dim * 2)
        self.t2 = nn.ConvTranspose2d(conv_dim * 2, conv_dim, 4, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(conv_dim)
        self.t3 = nn.ConvTranspose2d(conv_dim, 3, 4, 2, 1)

    def forward(self, z):
        x = self.fc(z).view(-1, self.conv_dim * 4, 4, 4)
        x = F.relu(self.bn1(self.t1(x)))
        x = F.relu(self.bn2(self.t2(x)))
        return torch.tanh(self.t3(x))


def classname_init(m):
    """The classic course style: match on the class name."""
    classname = m.__class__.__name__
    if classname.find("Conv") != -1 or classname.find("Linear") != -1:
        m.weight.data.normal_(0.0, 0.02)
        if m.bias is not None:
            m.bias.data.fill_(0)


def module_real_loss(D_out, smooth=False):
    batch_size = D_out.size(0)
    labels = torch.ones(batch_size) * (0.9 if smooth else 1.0)
    return nn.BCEWithLogitsLoss()(D_out.squeeze(), labels)


def module_fake_loss(D_out):
    return nn.BCEWithLogitsLoss()(D_out.squeeze(), torch.zeros(D_out.size(0)))


def separate_backward_d_step(D, G, d_optimizer, real_images, z, smooth=False):
    """Two backward calls instead of one summed loss: the same gradients."""
    D.zero_grad()
    d_real = module_real_loss(D(real_images), smooth)
    d_fake = module_fake_loss(D(G(z).detach()))
    d_real.backward()
    d_fake.backward()
    d_optimizer.step()
    return (d_real + d_fake).item()


def no_grad_fake_d_step(D, G, d_optimizer, real_images, z, smooth=False):
    d_optimizer.zero_grad()
    with torch.no_grad():
        fake = G(z)
    loss = module_real_loss(D(real_images), smooth) + module_fake_loss(D(fake))
    loss.backward()
    d_optimizer.step()
    return loss


def test_other_correct_styles_pass(celeba_dir, capsys):
    checks.test_discriminator(SequentialViewD)
    checks.test_discriminator(ExplicitReshapeD)
    checks.test_generator(ExplicitG)
    checks.test_weights_init(classname_init)
    checks.test_losses(module_real_loss, module_fake_loss)
    D, G = SequentialViewD(), ExplicitG()
    d_opt, g_opt = _optimizers(D, G)
    checks.test_discriminator_step(separate_backward_d_step, D, G, d_opt, torch.rand(8, 3, 32, 32) * 2 - 1,
                                   torch.randn(8, 100))
    checks.test_discriminator_step(no_grad_fake_d_step, D, G, d_opt, torch.rand(8, 3, 32, 32) * 2 - 1,
                                   torch.randn(8, 100))
    checks.test_dataloader(lambda b, s: data.get_dataloader(b, s, num_workers=0), image_size=32)
    out = capsys.readouterr().out
    assert out.count("Tests Passed") == 8
    # .view passes, with a note that it would fail in helpers.train's channels_last layout
    assert out.count("x.flatten(1) works everywhere") == 1


# --- planted mistakes: models

class NoFlattenD(nn.Module):
    """Forgets to flatten: the linear layer sees (N, 128, 4, 4) and acts on the last axis."""

    def __init__(self, conv_dim=32):
        super().__init__()
        self.conv = nn.Conv2d(3, conv_dim, 4, 8, 0)
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(self.conv(x)).squeeze(-1).flatten(1)[:, :4]


class PoolingD(models.Discriminator):
    def __init__(self, conv_dim=32):
        super().__init__(conv_dim)
        self.features.append(nn.MaxPool2d(1))


class SigmoidD(models.Discriminator):
    def forward(self, x):
        return torch.sigmoid(super().forward(x))


class TanhD(models.Discriminator):
    def forward(self, x):
        return torch.tanh(super().forward(x))


class SqueezedD(models.Discriminator):
    def forward(self, x):
        return super().forward(x).squeeze()


class FixedWidthD(models.Discriminator):
    """Ignores conv_dim: always 32 channels."""

    def __init__(self, conv_dim=32):
        super().__init__(32)


class HardCodedLinearD(SequentialViewD):
    """Uses conv_dim for the convs but types the linear layer's size."""

    def __init__(self, conv_dim=32):
        super().__init__(conv_dim)
        self.fc = nn.Linear(2048, 1)


class NoBatchNormD(models.Discriminator):
    def __init__(self, conv_dim=32):
        super().__init__(conv_dim, norm="none")


class TodoD(nn.Module):
    def __init__(self, conv_dim=32):
        super().__init__()
        raise NotImplementedError


class NoTanhG(models.Generator):
    def __init__(self, z_size=100, conv_dim=32):
        super().__init__(z_size, conv_dim)
        self.net[-1] = nn.Identity()


class SigmoidG(models.Generator):
    def __init__(self, z_size=100, conv_dim=32):
        super().__init__(z_size, conv_dim)
        self.net[-1] = nn.Sigmoid()


class ClampG(NoTanhG):
    def forward(self, z):
        return super().forward(z).clamp(-1, 1)


class NoBatchNormG(models.Generator):
    def __init__(self, z_size=100, conv_dim=32):
        super().__init__(z_size, conv_dim)
        self.net = nn.Sequential(*[nn.Identity() if isinstance(m, nn.BatchNorm2d) else m for m in self.net])


class FixedWidthG(models.Generator):
    def __init__(self, z_size=100, conv_dim=32):
        super().__init__(z_size, 64)


class TooSmallG(models.Generator):
    """One transposed conv too few: 16x16 images."""

    def __init__(self, z_size=100, conv_dim=32):
        super().__init__(z_size, conv_dim, n_layers=2, image_size=16)


# --- planted mistakes: data

def bad_scale(x, feature_range=(-1, 1)):
    return x * 2 - 0.5


def hard_coded_scale(x, feature_range=(-1, 1)):
    return x * 2 - 1


def old_next_dataloader(batch_size, image_size):
    class OldStyle:  # the code inside calls dataiter.next()
        def __iter__(self):
            it = iter([torch.zeros(batch_size, 3, image_size, image_size)])
            return type("It", (), {"__next__": lambda s: it.next()})()
    return OldStyle()


def _faces(n, size):
    """Face-like tensors in [-1, 1] reaching both ends, each image different."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def zero_to_one_dataloader(batch_size, image_size):
    return DataLoader((_faces(64, image_size) + 1) / 2, batch_size=batch_size, shuffle=True)


def imagenet_normalised_dataloader(batch_size, image_size):
    x = (_faces(64, image_size) + 1) / 2
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    return DataLoader((x - mean) / std, batch_size=batch_size, shuffle=True)


def unshuffled_dataloader(batch_size, image_size):
    return DataLoader(TensorDataset(_faces(64, image_size)), batch_size=batch_size, shuffle=False)


def wrong_size_dataloader(batch_size, image_size):
    return DataLoader(_faces(64, 64), batch_size=batch_size, shuffle=True)


# --- planted mistakes: init

def no_init(m):
    pass


def init_batchnorm_like_conv(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def init_conv_only(m):
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
        nn.init.zeros_(m.bias)


def init_keeps_bias(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)


def init_without_type_test(m):
    nn.init.normal_(m.weight, 0.0, 0.02)


def init_wrong_std(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.2)
        nn.init.zeros_(m.bias)


# --- planted mistakes: losses

def sigmoid_real_loss(D_out, smooth=False):
    labels = torch.full_like(D_out, 0.9 if smooth else 1.0)
    return F.binary_cross_entropy_with_logits(torch.sigmoid(D_out), labels)


def unsmoothed_real_loss(D_out, smooth=False):
    return F.binary_cross_entropy_with_logits(D_out, torch.ones_like(D_out))


def smooth_to_point_one_real_loss(D_out, smooth=False):
    return F.binary_cross_entropy_with_logits(D_out, torch.full_like(D_out, 0.1 if smooth else 1.0))


def swapped_fake_loss(D_out):
    return F.binary_cross_entropy_with_logits(D_out, torch.ones_like(D_out))


def bce_loss_on_logits(D_out, smooth=False):
    return nn.BCELoss()(D_out, torch.full_like(D_out, 0.9 if smooth else 1.0))


def unsqueezed_labels_real_loss(D_out, smooth=False):
    return nn.BCEWithLogitsLoss()(D_out, torch.ones(D_out.size(0)) * (0.9 if smooth else 1.0))


def summed_real_loss(D_out, smooth=False):
    return F.binary_cross_entropy_with_logits(D_out, torch.full_like(D_out, 0.9 if smooth else 1.0), reduction="sum")


def item_real_loss(D_out, smooth=False):
    return losses.real_loss(D_out, smooth).item()


# --- planted mistakes: steps

def undetached_d_step(D, G, d_optimizer, real_images, z, smooth=False):
    d_optimizer.zero_grad()
    fake = G(z)  # no .detach(): D's loss flows into G
    loss = losses.real_loss(D(real_images)) + losses.fake_loss(D(fake))
    loss.backward()
    d_optimizer.step()
    return loss


def no_zero_grad_d_step(D, G, d_optimizer, real_images, z, smooth=False):
    loss = losses.real_loss(D(real_images)) + losses.fake_loss(D(G(z).detach()))
    loss.backward()
    d_optimizer.step()
    return loss


def swapped_labels_d_step(D, G, d_optimizer, real_images, z, smooth=False):
    d_optimizer.zero_grad()
    loss = losses.fake_loss(D(real_images)) + losses.real_loss(D(G(z).detach()))
    loss.backward()
    d_optimizer.step()
    return loss


def real_only_d_step(D, G, d_optimizer, real_images, z, smooth=False):
    d_optimizer.zero_grad()
    loss = losses.real_loss(D(real_images))
    loss.backward()
    d_optimizer.step()
    return loss


def no_step_d_step(D, G, d_optimizer, real_images, z, smooth=False):
    d_optimizer.zero_grad()
    loss = losses.real_loss(D(real_images)) + losses.fake_loss(D(G(z).detach()))
    loss.backward()
    return loss


def no_return_d_step(D, G, d_optimizer, real_images, z, smooth=False):
    step.discriminator_step(D, G, d_optimizer, real_images, z, smooth)


def fake_loss_g_step(D, G, g_optimizer, z):
    g_optimizer.zero_grad()
    loss = losses.fake_loss(D(G(z)))
    loss.backward()
    g_optimizer.step()
    return loss


def saturating_g_step(D, G, g_optimizer, z):
    g_optimizer.zero_grad()
    loss = -losses.fake_loss(D(G(z)))
    loss.backward()
    g_optimizer.step()
    return loss


def detached_g_step(D, G, g_optimizer, z):
    g_optimizer.zero_grad()
    loss = losses.real_loss(D(G(z).detach()))
    loss.backward()
    g_optimizer.step()
    return loss


def no_zero_grad_g_step(D, G, g_optimizer, z):
    loss = losses.real_loss(D(G(z)))
    loss.backward()
    g_optimizer.step()
    return loss


def no_backward_g_step(D, G, g_optimizer, z):
    g_optimizer.zero_grad()
    loss = losses.real_loss(D(G(z)))
    g_optimizer.step()
    return loss


MISTAKES = [
    # (id, check, args, message: what was expected / got / the hint, matched as a regex)
    ("D forgets to flatten", checks.test_discriminator, (NoFlattenD,),
     r"expected \(50, 1\), got \(50, 4\).*flatten\(1\)"),
    ("D pools", checks.test_discriminator, (PoolingD,), "MaxPool2d.*stride-2 convolutions"),
    ("D ends in sigmoid", checks.test_discriminator, (SigmoidD,), "after a sigmoid.*remove a sigmoid"),
    ("D ends in tanh", checks.test_discriminator, (TanhD,), "after a tanh.*remove a tanh"),
    ("D squeezes", checks.test_discriminator, (SqueezedD,), r"got \(50,\).*do not squeeze"),
    ("D ignores conv_dim", checks.test_discriminator, (FixedWidthD, 64), "expected 64 output channels.*conv_dim"),
    ("D types the linear size", checks.test_discriminator, (HardCodedLinearD,), "mat1 and mat2.*in_features"),
    ("D without BatchNorm", checks.test_discriminator, (NoBatchNormD,), "no BatchNorm2d.*nn.BatchNorm2d"),
    ("D not written", checks.test_discriminator, (TodoD,), "not implemented yet"),
    ("G without tanh", checks.test_generator, (NoTanhG,), "expected tanh.*got nothing.*torch.tanh"),
    ("G ends in sigmoid", checks.test_generator, (SigmoidG,), "got sigmoid.*torch.tanh"),
    ("G clamps", checks.test_generator, (ClampG,), "got a clamp.*torch.tanh"),
    ("G without BatchNorm", checks.test_generator, (NoBatchNormG,), "no BatchNorm.*nn.BatchNorm2d"),
    ("G ignores conv_dim", checks.test_generator, (FixedWidthG,), "expected 32 input channels.*conv_dim"),
    ("G too few layers", checks.test_generator, (TooSmallG,), r"\(50, 3, 32, 32\), got \(50, 3, 16, 16\)"),
    ("scale off", checks.test_scale, (bad_scale,), r"\[-0.5, 1.5\].*multiply by \(max - min\)"),
    ("scale ignores range", checks.test_scale, (hard_coded_scale,),
     r"feature_range=\(0.5, 2\).*lo, hi = feature_range"),
    ("init does nothing", checks.test_weights_init, (no_init,), "mean 0 and std 0.02.*default init.*isinstance"),
    ("init BN like conv", checks.test_weights_init, (init_batchnorm_like_conv,),
     r"BatchNorm2d weights: expected ones, or ~N\(1, 0.02\), got mean 0.*normal_\(m.weight, 1.0, 0.02\)"),
    ("init misses ConvTranspose2d", checks.test_weights_init, (init_conv_only,),
     "ConvTranspose2d weights.*left this layer alone"),
    ("init keeps biases", checks.test_weights_init, (init_keeps_bias,), "Conv2d bias: expected zeros.*zeros_"),
    ("init without type test", checks.test_weights_init, (init_without_type_test,),
     "no attribute 'weight'.*isinstance"),
    ("init std 0.2", checks.test_weights_init, (init_wrong_std,), r"std 0.2\d*.*normal_\(m.weight, 0.0, 0.02\)"),
    ("sigmoid before BCEWithLogits", checks.test_losses, (sigmoid_real_loss, losses.fake_loss),
     "sigmoid is applied before BCEWithLogitsLoss"),
    ("smooth ignored", checks.test_losses, (unsmoothed_real_loss, losses.fake_loss), "smooth argument is ignored"),
    ("smooth gives 0.1", checks.test_losses, (smooth_to_point_one_real_loss, losses.fake_loss),
     r"label 0.1.*lowers the REAL label from 1 to 0.9"),
    ("fake labelled 1", checks.test_losses, (losses.real_loss, swapped_fake_loss), "label 1\\).*labelled 0"),
    ("BCELoss on logits", checks.test_losses, (bce_loss_on_logits, losses.fake_loss), "BCEWithLogitsLoss"),
    ("labels of the wrong shape", checks.test_losses, (unsqueezed_labels_real_loss, losses.fake_loss),
     "same as input size.*ones_like"),
    ("sum reduction", checks.test_losses, (summed_real_loss, losses.fake_loss), r"\(a sum\).*reduction='mean'"),
    ("loss.item()", checks.test_losses, (item_real_loss, losses.fake_loss), "expected a tensor.*not loss.item"),
    ("loader uses .next()", checks.test_dataloader, (old_next_dataloader,), r"next\(iter\(loader\)\)"),
    ("loader in [0, 1]", checks.test_dataloader, (zero_to_one_dataloader,), "as straight from ToTensor.*Normalize"),
    ("loader ImageNet stats", checks.test_dataloader, (imagenet_normalised_dataloader,),
     "spanning \\[-1, 1\\].*not ImageNet's"),
    ("loader not shuffled", checks.test_dataloader, (unshuffled_dataloader,), "same first batch twice.*shuffle=True"),
    ("loader ignores image_size", checks.test_dataloader, (wrong_size_dataloader,),
     r"\(16, 3, 32, 32\), got \(16, 3, 64, 64\).*CenterCrop"),
]


@pytest.mark.parametrize("check, args, message", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_each_mistake_is_named(check, args, message):
    with pytest.raises(checks.CheckFailed, match=f"(?s){message}"):
        check(*args)


def _fresh():
    torch.manual_seed(0)
    D, G = models.build_models(config.make_config("small32"))
    d_opt, g_opt = _optimizers(D, G)
    return D, G, d_opt, g_opt


STEP_MISTAKES = [
    ("D step without detach", "d", undetached_d_step, r"gradients in G.*G\(z\).detach\(\)"),
    ("D step without zero_grad", "d", no_zero_grad_d_step, "zero_grad\\(\\) is missing"),
    ("D step with swapped labels", "d", swapped_labels_d_step, "labels are swapped"),
    ("D step on reals only", "d", real_only_d_step, "only the real images' loss"),
    ("D step without step()", "d", no_step_d_step, "got gradients but did not move.*d_optimizer.step"),
    ("D step returns nothing", "d", no_return_d_step, "got None.*return d_loss"),
    ("G step with fake_loss", "g", fake_loss_g_step, "G's loss is fake_loss.*real_loss\\(D\\(G\\(z\\)\\)\\)"),
    ("G step saturating", "g", saturating_g_step, "saturating form"),
    ("G step detached", "g", detached_g_step, "fakes are detached.*detach only in the D step"),
    ("G step without zero_grad", "g", no_zero_grad_g_step, "g_optimizer.zero_grad\\(\\) is missing"),
    ("G step without backward", "g", no_backward_g_step, "no gradients: call g_loss.backward"),
]


@pytest.mark.parametrize("which, fn, message", [m[1:] for m in STEP_MISTAKES], ids=[m[0] for m in STEP_MISTAKES])
def test_each_step_mistake_is_named(which, fn, message):
    D, G, d_opt, g_opt = _fresh()
    with pytest.raises(checks.CheckFailed, match=f"(?s){message}") as info:
        if which == "d":
            checks.test_discriminator_step(fn, D, G, d_opt, torch.rand(16, 3, 32, 32) * 2 - 1, torch.randn(16, 100))
        else:
            checks.test_generator_step(fn, D, G, g_opt, torch.randn(16, 100))
    assert "expected" in str(info.value) and "Hint:" in str(info.value)
    # a detached G step is not told to "call backward() and step()", which it does
    if fn is detached_g_step:
        assert "call g_loss.backward" not in str(info.value)


def test_optimiser_mistakes_are_named():
    D, G, _, _ = _fresh()
    good = dict(lr=0.002, betas=(0.5, 0.99))
    both = torch.optim.Adam(list(D.parameters()) + list(G.parameters()), 0.002, betas=(0.5, 0.99))
    with pytest.raises(checks.CheckFailed, match="(?s)d_optimizer.*also .* of G's.*its own optimiser"):
        checks.test_optimizers(both, torch.optim.Adam(G.parameters()), D, G, **good)
    swapped = [torch.optim.Adam(net.parameters(), 0.002, betas=(0.5, 0.99)) for net in (G, D)]
    with pytest.raises(checks.CheckFailed, match="(?s)swapped.*D.parameters"):
        checks.test_optimizers(*swapped, D, G, **good)
    stale = torch.optim.Adam(copy.deepcopy(D).parameters(), 0.002, betas=(0.5, 0.99))  # built for an older D
    with pytest.raises(checks.CheckFailed, match="(?s)older D.*run the optimiser cell again") as info:
        checks.test_optimizers(stale, torch.optim.Adam(G.parameters(), 0.002, betas=(0.5, 0.99)), D, G, **good)
    assert "Discriminator.parameters" not in str(info.value)
    defaults = [torch.optim.Adam(net.parameters(), 0.002) for net in (D, G)]
    with pytest.raises(checks.CheckFailed, match=r"(?s)\(0.9, 0.999\), Adam's defaults.*beta1 to 0.5"):
        checks.test_optimizers(*defaults, D, G, **good)
    sgd = [torch.optim.SGD(net.parameters(), 0.002) for net in (D, G)]
    with pytest.raises(checks.CheckFailed, match="(?s)expected torch.optim.Adam, got SGD"):
        checks.test_optimizers(*sgd, D, G, **good)
    slow = [torch.optim.Adam(net.parameters(), 2e-4, betas=(0.5, 0.999)) for net in (D, G)]
    settings = r"(?s)settings: expected lr=0.002, betas=\(0.5, 0.99\), got lr=0.0002.*the values the training"
    with pytest.raises(checks.CheckFailed, match=settings):
        checks.test_optimizers(*slow, D, G, **good)
    with pytest.raises(checks.CheckFailed, match=r"(?s)not implemented yet.*torch.optim.Adam\(D.parameters\(\)"):
        checks.test_optimizers(None, None, D, G, **good)


def test_mistake_count():
    """The issue asks for at least 25 realistic mistakes, each with its message asserted."""
    assert len(MISTAKES) + len(STEP_MISTAKES) + 7 >= 25
