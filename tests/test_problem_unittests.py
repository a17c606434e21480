"""The learner checks pass on helpers.py, and catch each usual mistake with a message that names it."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import problem_unittests as checks
from facegan import config, data, losses, models, step


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
    D, G = models.Discriminator(), models.Generator()
    d_opt, g_opt = step.make_optimizers(D, G, config.make_config("classic32"))
    checks.test_optimizers(d_opt, g_opt, D, G)
    checks.test_discriminator_step(step.discriminator_step, D, G, d_opt,
                                   torch.rand(8, 3, 32, 32) * 2 - 1, torch.randn(8, 100))
    out = capsys.readouterr().out
    assert out.count("Tests Passed") == 11


def test_dataloader_check_passes_on_real_data(celeba_dir, capsys):
    checks.test_dataloader(data.get_dataloader, image_size=32)
    assert "Tests Passed" in capsys.readouterr().out


# --- planted mistakes

class NoFlattenD(nn.Module):
    """Forgets to flatten: the linear layer sees (N, 128, 4, 4) and acts on the last axis."""

    def __init__(self, conv_dim=32):
        super().__init__()
        self.conv = nn.Conv2d(3, 128, 4, 8, 0)
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


class NoTanhG(models.Generator):
    def __init__(self, z_size=100, conv_dim=32):
        super().__init__(z_size, conv_dim)
        self.net[-1] = nn.Identity()


class TodoD(nn.Module):
    def __init__(self, conv_dim=32):
        super().__init__()
        raise NotImplementedError


def bad_scale(x, feature_range=(-1, 1)):
    return x * 2 - 0.5


def sigmoid_real_loss(D_out, smooth=False):
    labels = torch.full_like(D_out, 0.9 if smooth else 1.0)
    return F.binary_cross_entropy_with_logits(torch.sigmoid(D_out), labels)


def unsmoothed_real_loss(D_out, smooth=False):
    return F.binary_cross_entropy_with_logits(D_out, torch.ones_like(D_out))


def undetached_d_step(D, G, d_optimizer, real_images, z):
    d_optimizer.zero_grad()
    fake = G(z)  # no .detach(): D's loss flows into G
    loss = losses.real_loss(D(real_images)) + losses.fake_loss(D(fake))
    loss.backward()
    d_optimizer.step()
    return loss


def old_next_dataloader(batch_size, image_size):
    class OldStyle:  # the code inside calls dataiter.next()
        def __iter__(self):
            it = iter([torch.zeros(batch_size, 3, image_size, image_size)])
            return type("It", (), {"__next__": lambda s: it.next()})()
    return OldStyle()


def zero_to_one_dataloader(batch_size, image_size):
    return [torch.rand(batch_size, 3, image_size, image_size)]


@pytest.mark.parametrize("check, args, message", [
    (checks.test_discriminator, (NoFlattenD,),
     r"shape \(50, 4\); .*expected \(50, 1\)|expected \(50, 1\).*\(50, 4\).*flatten"),
    (checks.test_discriminator, (PoolingD,), "MaxPool2d.*stride-2 convolutions"),
    (checks.test_discriminator, (SigmoidD,), "do not apply sigmoid"),
    (checks.test_discriminator, (TodoD,), "not implemented yet"),
    (checks.test_generator, (NoTanhG,), "outside|tanh"),
    (checks.test_scale, (bad_scale,), r"\[-0.5, 1.5\].*multiply by \(max - min\)"),
    (checks.test_losses, (sigmoid_real_loss, losses.fake_loss), "sigmoid is applied before BCEWithLogitsLoss"),
    (checks.test_losses, (unsmoothed_real_loss, losses.fake_loss), "smooth argument is ignored"),
    (checks.test_dataloader, (old_next_dataloader,), r"next\(iter\(loader\)\)"),
    (checks.test_dataloader, (zero_to_one_dataloader,), "Normalize"),
])
def test_each_mistake_is_named(check, args, message):
    with pytest.raises(checks.CheckFailed, match=f"(?s){message}"):
        check(*args)


def test_missing_detach_is_named():
    D, G = models.Discriminator(), models.Generator()
    d_opt = torch.optim.Adam(D.parameters(), 2e-4)
    with pytest.raises(checks.CheckFailed, match=r"(?s)gradients in G.*detach\(\)"):
        checks.test_discriminator_step(undetached_d_step, D, G, d_opt, torch.rand(8, 3, 32, 32), torch.randn(8, 100))


def test_bad_init_and_shared_optimiser_are_named():
    with pytest.raises(checks.CheckFailed, match="mean 0 and std 0.02"):
        checks.test_weights_init(lambda m: None)
    D, G = models.Discriminator(), models.Generator()
    both = torch.optim.Adam(list(D.parameters()) + list(G.parameters()))
    with pytest.raises(checks.CheckFailed, match="d_optimizer"):
        checks.test_optimizers(both, torch.optim.Adam(G.parameters()), D, G)
