"""A second round of realistic learner mistakes, written against the exercise's stubs, TODOs, hints and markdown:
each breaks one rule the notebook states, and each must be caught by behaviour with a message that names it.
Correct code in yet other styles must still pass.  (The first round is tests/test_problem_unittests.py.)"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

import problem_unittests as checks
from facegan import config, data, losses, models
from facegan.updates import discriminator_step, make_optimizers


def _fresh(seed: int = 0):
    torch.manual_seed(seed)
    cfg = config.make_config("small32", fused_adam=False)
    D, G = models.build_models(cfg)
    return (D, G, *make_optimizers(D, G, cfg))


def _run_step(which: str, fn):
    D, G, d_opt, g_opt = _fresh()
    if which == "d":
        checks.test_discriminator_step(fn, D, G, d_opt, torch.rand(16, 3, 32, 32) * 2 - 1, torch.randn(16, 100))
    else:
        checks.test_generator_step(fn, D, G, g_opt, torch.randn(16, 100))


# --- D steps: what the TODO ("update D only", the smooth argument) and the hints ask

def d_step_ignores_smooth(D, G, d_optimizer, real_images, z, smooth=False):
    d_optimizer.zero_grad()
    d_loss = losses.real_loss(D(real_images)) + losses.fake_loss(D(G(z).detach()))  # smooth never passed on
    d_loss.backward()
    d_optimizer.step()
    return d_loss


def d_step_always_smooths(D, G, d_optimizer, real_images, z, smooth=False):
    d_optimizer.zero_grad()
    d_loss = losses.real_loss(D(real_images), True) + losses.fake_loss(D(G(z).detach()))
    d_loss.backward()
    d_optimizer.step()
    return d_loss


def d_step_draws_its_own_z(D, G, d_optimizer, real_images, z, smooth=False):
    d_optimizer.zero_grad()
    fake = G(torch.randn_like(z)).detach()
    d_loss = losses.real_loss(D(real_images), smooth) + losses.fake_loss(D(fake))
    d_loss.backward()
    d_optimizer.step()
    return d_loss


def d_step_reals_without_grad(D, G, d_optimizer, real_images, z, smooth=False):
    """Detaches "the images" a line too early: the real scores too."""
    d_optimizer.zero_grad()
    with torch.no_grad():
        d_real = D(real_images)
    d_loss = losses.real_loss(d_real, smooth) + losses.fake_loss(D(G(z).detach()))
    d_loss.backward()
    d_optimizer.step()
    return d_loss


def d_step_leaves_g_in_eval(D, G, d_optimizer, real_images, z, smooth=False):
    """Puts G in eval mode to make the fakes "without training it", and leaves it there."""
    d_optimizer.zero_grad()
    G.eval()
    d_loss = losses.real_loss(D(real_images), smooth) + losses.fake_loss(D(G(z).detach()))
    d_loss.backward()
    d_optimizer.step()
    return d_loss


def d_step_without_smooth_argument(D, G, d_optimizer, real_images, z):
    return discriminator_step(D, G, d_optimizer, real_images, z)


# --- G steps: "update G so that D calls its fakes real"

def g_step_freezes_d(D, G, g_optimizer, z):
    D.requires_grad_(False)  # "D must not learn here", and never unfrozen
    g_optimizer.zero_grad()
    g_loss = losses.real_loss(D(G(z)))
    g_loss.backward()
    g_optimizer.step()
    return g_loss


def g_step_leaves_d_in_eval(D, G, g_optimizer, z):
    D.eval()  # "D is only judging here"
    g_optimizer.zero_grad()
    g_loss = losses.real_loss(D(G(z)))
    g_loss.backward()
    g_optimizer.step()
    return g_loss


def g_step_smoothed(D, G, g_optimizer, z):
    g_optimizer.zero_grad()
    g_loss = losses.real_loss(D(G(z)), smooth=True)
    g_loss.backward()
    g_optimizer.step()
    return g_loss


def g_step_draws_its_own_z(D, G, g_optimizer, z):
    g_optimizer.zero_grad()
    g_loss = losses.real_loss(D(G(torch.randn(z.shape))))
    g_loss.backward()
    g_optimizer.step()
    return g_loss


# --- G: "each but the last followed by BatchNorm and ReLU"

class HiddenG(nn.Module):
    """The textbook three-layer G, with what follows each hidden transposed convolution as a knob."""

    def __init__(self, z_size=100, conv_dim=32, hidden=("bn", "relu")):
        super().__init__()
        self.c4 = conv_dim * 4
        self.fc = nn.Linear(z_size, self.c4 * 16)
        self.bn0 = nn.BatchNorm2d(self.c4)
        after = lambda ch: nn.Sequential(*[nn.BatchNorm2d(ch) if k == "bn" else nn.ReLU() for k in hidden])
        self.t1, self.a1 = nn.ConvTranspose2d(self.c4, conv_dim * 2, 4, 2, 1), after(conv_dim * 2)
        self.t2, self.a2 = nn.ConvTranspose2d(conv_dim * 2, conv_dim, 4, 2, 1), after(conv_dim)
        self.t3 = nn.ConvTranspose2d(conv_dim, 3, 4, 2, 1)

    def forward(self, z):
        x = F.relu(self.bn0(self.fc(z).view(-1, self.c4, 4, 4)))
        return torch.tanh(self.t3(self.a2(self.t2(self.a1(self.t1(x))))))


class BatchNormOnlyAfterProjectionG(HiddenG):
    def __init__(self, z_size=100, conv_dim=32):
        super().__init__(z_size, conv_dim, hidden=("relu",))


class NoHiddenReLUG(HiddenG):
    def __init__(self, z_size=100, conv_dim=32):
        super().__init__(z_size, conv_dim, hidden=("bn",))


class HiddenReLUBeforeBatchNormG(HiddenG):
    def __init__(self, z_size=100, conv_dim=32):
        super().__init__(z_size, conv_dim, hidden=("relu", "bn"))


# --- D: "BatchNorm after every convolution except the first", "LeakyReLU(0.2)", "conv_dim, 2*conv_dim..."

class KnobD(nn.Module):
    """Three stride-2 convolutions and a linear layer, with the rules as knobs."""

    def __init__(self, conv_dim=32, bn=(False, True, True), act=lambda: nn.LeakyReLU(0.2), widths=(1, 2, 4)):
        super().__init__()
        layers, ch = [], 3
        for use_bn, w in zip(bn, widths, strict=True):
            layers += [nn.Conv2d(ch, conv_dim * w, 4, 2, 1)] + ([nn.BatchNorm2d(conv_dim * w)] if use_bn else [])
            layers.append(act())
            ch = conv_dim * w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(ch * 16, 1)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class FirstLayerBatchNormD(KnobD):
    def __init__(self, conv_dim=32):
        super().__init__(conv_dim, bn=(True, True, True))


class LastLayerWithoutBatchNormD(KnobD):
    def __init__(self, conv_dim=32):
        super().__init__(conv_dim, bn=(False, True, False))


class DefaultLeakyD(KnobD):
    def __init__(self, conv_dim=32):
        super().__init__(conv_dim, act=nn.LeakyReLU)  # slope 0.01


class ReLUD(KnobD):
    def __init__(self, conv_dim=32):
        super().__init__(conv_dim, act=nn.ReLU)


class ConstantWidthD(KnobD):
    """conv_dim channels in every layer: the channels never double."""

    def __init__(self, conv_dim=32):
        super().__init__(conv_dim, widths=(1, 1, 1))


# --- the init and the data

def init_mean_not_std(m):
    """nn.init.normal_(m.weight, 0.02): the second argument is the mean."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class _Faces(torch.utils.data.Dataset):
    """A few random face-sized images in [-1, 1], through an optional transform on the tensor."""

    def __init__(self, size, transform=None):
        self.x = torch.rand(64, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        self.transform = transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.transform(self.x[i]) if self.transform else self.x[i]


def unflipped_dataloader(batch_size, image_size):
    return DataLoader(_Faces(image_size), batch_size=batch_size, shuffle=True)


NEW_MISTAKES = [
    # (id, run it, the message that names the mistake, as a regex)
    ("D step ignores smooth", lambda: _run_step("d", d_step_ignores_smooth),
     r"smooth=True: expected the reference update with real labels 0.9, got the update without smoothing.*"
     r"smooth argument is ignored.*real_loss\(D\(real_images\), smooth\)"),
    ("D step always smooths", lambda: _run_step("d", d_step_always_smooths),
     r"smoothed \(0.9\) although smooth=False.*pass the smooth argument on"),
    ("D step draws its own z", lambda: _run_step("d", d_step_draws_its_own_z),
     r"D step run twice.*two different updates.*draws its own random numbers.*use the z you are given"),
    ("D step scores reals without grad", lambda: _run_step("d", d_step_reals_without_grad),
     r"score of the real images detached.*real_loss\(D\(real_images\), smooth\) must reach D"),
    ("D step leaves G in eval mode", lambda: _run_step("d", d_step_leaves_g_in_eval),
     r"G after the D step: expected training mode.*got eval mode.*BatchNorm uses running statistics"),
    ("D step drops the smooth argument", lambda: _run_step("d", d_step_without_smooth_argument),
     "as the check called it.*unexpected keyword argument 'smooth'.*keep the stub's smooth=False.*Rule SD6"),
    ("G step freezes D for good", lambda: _run_step("g", g_step_freezes_d),
     r"D after the G step: expected all of D's parameters trainable.*frozen.*D stops learning.*"
     r"D.requires_grad_\(True\)"),
    ("G step leaves D in eval mode", lambda: _run_step("g", g_step_leaves_d_in_eval),
     r"D after the G step: expected training mode.*got eval mode"),
    ("G step smooths its labels", lambda: _run_step("g", g_step_smoothed),
     r"G's loss uses smoothed labels.*real images only.*without smooth"),
    ("G step draws its own z", lambda: _run_step("g", g_step_draws_its_own_z),
     r"G step run twice.*draws its own random numbers"),
    ("G BatchNorm only after the projection", lambda: checks.test_generator(BatchNormOnlyAfterProjectionG),
     'ReLU.*Rule G4:'),
    ("G no ReLU after hidden BatchNorm", lambda: checks.test_generator(NoHiddenReLUG),
     'BatchNorm.*Rule G4:'),
    ("G ReLU before BatchNorm in hidden layers", lambda: checks.test_generator(HiddenReLUBeforeBatchNormG),
     'ReLU\\ and\\ then\\ BatchNorm.*Rule G4:'),
    ("D BatchNorm on the first convolution", lambda: checks.test_discriminator(FirstLayerBatchNormD),
     'BatchNorm\\ and\\ then\\ LeakyReLU\\(0\\.2\\).*Rule D5:'),
    ("D last convolution without BatchNorm", lambda: checks.test_discriminator(LastLayerWithoutBatchNormD),
     'LeakyReLU\\(0\\.2\\).*Rule D5:'),
    ("D nn.LeakyReLU() with its default slope", lambda: checks.test_discriminator(DefaultLeakyD),
     'LeakyReLU\\(0\\.01\\).*Rule D6:'),
    ("D ReLU instead of LeakyReLU", lambda: checks.test_discriminator(ReLUD),
     'ReLU.*Rule D6:'),
    ("D channels never double", lambda: checks.test_discriminator(ConstantWidthD),
     'Conv2d\\(32,\\ 32,\\ stride\\ 2\\).*Rule D4:'),
    ("init normal_(w, 0.02) sets the mean", lambda: checks.test_weights_init(init_mean_not_std),
     r"std 1\.0\d*\..*arguments are \(tensor, mean, std\).*normal_\(m.weight, 0.0, 0.02\)"),
    ("loader never flips", lambda: checks.test_dataloader(unflipped_dataloader),
     r"data augmentation: expected each face mirrored.*the same image 16 times.*RandomHorizontalFlip"),
]


@pytest.mark.parametrize("run, message", [m[1:] for m in NEW_MISTAKES], ids=[m[0] for m in NEW_MISTAKES])
def test_each_new_mistake_is_named(run, message):
    with pytest.raises(checks.CheckFailed, match=f"(?s){message}") as info:
        run()
    assert "Hint:" in str(info.value)


def test_at_least_fifteen_new_mistakes():
    assert len({m[0] for m in NEW_MISTAKES}) == len(NEW_MISTAKES) >= 15


# --- correct code in still other styles

def d_step_with_model_zero_grad(D, G, d_optimizer, real_images, z, smooth=False):
    """D.zero_grad() instead of the optimiser's, the labels written out, smooth passed by keyword."""
    D.zero_grad(set_to_none=False)
    fake = G(z).detach()
    real_out, fake_out = D(real_images), D(fake)
    d_loss = F.binary_cross_entropy_with_logits(real_out, torch.full_like(real_out, 0.9 if smooth else 1.0)) \
        + F.binary_cross_entropy_with_logits(fake_out, torch.zeros_like(fake_out))
    d_loss.backward()
    d_optimizer.step()
    return d_loss.item()


def g_step_freezing_d_politely(D, G, g_optimizer, z):
    """Freezes D to save its gradients, and unfreezes it before returning."""
    D.requires_grad_(False)
    try:
        g_optimizer.zero_grad()
        g_loss = losses.real_loss(D(G(z)), smooth=False)
        g_loss.backward()
        g_optimizer.step()
    finally:
        D.requires_grad_(True)
    return g_loss.detach()


class InplaceLeakyD(nn.Module):
    """In-place LeakyReLU(0.2) modules, BatchNorm without affine scales, an nn.Flatten layer."""

    def __init__(self, conv_dim=32, n_layers=3):
        super().__init__()
        layers, ch = [], 3
        for i in range(n_layers):
            layers.append(nn.Conv2d(ch, conv_dim * 2**i, 4, 2, 1, bias=i == 0))
            if i:
                layers.append(nn.BatchNorm2d(conv_dim * 2**i, affine=False))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            ch = conv_dim * 2**i
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch * (32 // 2**n_layers) ** 2, 1))

    def forward(self, x):
        return self.net(x)


class DictG(nn.Module):
    """Layers in an nn.ModuleDict, BatchNorm1d on the projection, F.relu, torch.tanh."""

    def __init__(self, z_size=100, conv_dim=32, n_layers=3):
        super().__init__()
        self.top, self.side = conv_dim * 2 ** (n_layers - 1), 32 // 2**n_layers
        self.n = n_layers
        layers = {"fc": nn.Linear(z_size, self.top * self.side**2), "bn0": nn.BatchNorm1d(self.top * self.side**2)}
        ch = self.top
        for i in range(1, n_layers):
            layers[f"up{i}"], layers[f"bn{i}"] = nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1), nn.BatchNorm2d(ch // 2)
            ch //= 2
        layers["out"] = nn.ConvTranspose2d(ch, 3, 4, 2, 1)
        self.layers = nn.ModuleDict(layers)

    def forward(self, z):
        x = F.relu(self.layers["bn0"](self.layers["fc"](z))).view(-1, self.top, self.side, self.side)
        for i in range(1, self.n):
            x = F.relu(self.layers[f"bn{i}"](self.layers[f"up{i}"](x)))
        return torch.tanh(self.layers["out"](x))


def init_by_type_table(m):
    """A dict of init functions by layer type; BatchNorm scales ~N(1, 0.02)."""
    if type(m) in (nn.Conv2d, nn.ConvTranspose2d, nn.Linear):
        m.weight.data.normal_(0.0, 0.02)
        if m.bias is not None:
            m.bias.data.zero_()
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.constant_(m.bias, 0.0)


@pytest.mark.slow
def test_still_other_correct_styles_pass(celeba_dir, capsys):
    D, G, d_opt, g_opt = _fresh()
    checks.test_discriminator_step(d_step_with_model_zero_grad, D, G, d_opt, torch.rand(16, 3, 32, 32) * 2 - 1,
                                   torch.randn(16, 100))
    checks.test_generator_step(g_step_freezing_d_politely, D, G, g_opt, torch.randn(16, 100))
    checks.test_discriminator(InplaceLeakyD)
    checks.test_discriminator(InplaceLeakyD, 16, n_layers=4)
    checks.test_generator(DictG)
    checks.test_generator(DictG, 64, 16, n_layers=4)
    checks.test_weights_init(init_by_type_table)
    checks.test_dataloader(lambda b, s: data.get_dataloader(b, s, num_workers=0), image_size=32)
    checks.test_discriminator(KnobD)  # the knobs at their defaults are the rules
    checks.test_generator(HiddenG)
    assert capsys.readouterr().out.count("Tests Passed") == 10
