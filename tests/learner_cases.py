"""A fresh corpus of learner code for the exercise's checks: realistic mistakes, and correct code in other styles.

Each mistake breaks one sentence the exercise states (``breaks`` quotes it, ``rule`` is its id in
``facegan/checks/rules.py``) and is written as a learner would write it against the stub, the TODO and the
hints.  ``cause_words`` are lowercase words or phrases of which at least one must appear in a failure message
that names the real cause; for a crash inside torch they include the learner's own line, since the message
must point at it.  ``tests/test_learner_rules.py`` runs every case through its check.  The earlier corpora are
``tests/test_problem_unittests.py`` and ``tests/test_learner_mistakes.py``; nothing here repeats them.

Like the notebook, the learner's steps use the learner's own ``real_loss`` and ``fake_loss`` and may reach
the notebook's globals ``d_optimizer`` and ``g_optimizer`` (the runner sets them, as the notebook's cells do).
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms

from facegan import data as helpers  # the notebook's helpers.resolve_image_dir and helpers.FaceImages

#: The notebook's optimiser globals; the runner sets them before a step is checked.
d_optimizer: torch.optim.Optimizer | None = None
g_optimizer: torch.optim.Optimizer | None = None


@dataclass(frozen=True)
class Mistake:
    name: str
    part: str  # the check: problem_unittests.<part>
    breaks: str  # the exercise's sentence it breaks, quoted
    rule: str  # its id in facegan/checks/rules.py
    code: object  # the learner's function or class (a pair (real_loss, fake_loss) for test_losses)
    cause_words: tuple[str, ...]  # lowercase; one must be in a message that names the real cause
    preset: str = "small32"  # the preset whose models and config the check runs with


@dataclass(frozen=True)
class Correct:
    name: str
    part: str
    code: object
    preset: str = "small32"


# --- the learner's correct pieces that the other cells use (as in the notebook)

def scale(x, feature_range=(-1, 1)):
    lo, hi = feature_range
    return x * (hi - lo) + lo


def real_loss(D_out, smooth=False):
    labels = torch.full_like(D_out, 0.9 if smooth else 1.0)
    return nn.BCEWithLogitsLoss()(D_out, labels)


def fake_loss(D_out):
    return nn.BCEWithLogitsLoss()(D_out, torch.zeros_like(D_out))


def _face_transform(image_size):
    return transforms.Compose([
        transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])


# --- scale

def scale_min_max(x, feature_range=(-1, 1)):
    """Min-max normalises first "to be safe": right only when x already spans exactly [0, 1]."""
    lo, hi = feature_range
    x = (x - x.min()) / (x.max() - x.min())
    return x * (hi - lo) + lo


def scale_lerp_backwards(x, feature_range=(-1, 1)):
    """A lerp with the weights the wrong way round: 0 lands on max."""
    lo, hi = feature_range
    return x * lo + (1 - x) * hi


def scale_centre_then_stretch(x, feature_range=(-1, 1)):
    """Centres, then stretches: right for any range centred on 0, never shifted."""
    lo, hi = feature_range
    return (x - 0.5) * (hi - lo)


# --- get_dataloader (real data: data_dir="celeba")

def loader_normalize_before_totensor(batch_size, image_size, data_dir="celeba"):
    transform = transforms.Compose([
        transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.RandomHorizontalFlip(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), transforms.ToTensor()])
    dataset = helpers.FaceImages(helpers.resolve_image_dir(data_dir), transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)


def loader_arguments_swapped(image_size, batch_size, data_dir="celeba"):
    """The stub's two arguments typed the other way round."""
    dataset = helpers.FaceImages(helpers.resolve_image_dir(data_dir), _face_transform(image_size))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)


def loader_returns_the_dataset(batch_size, image_size, data_dir="celeba"):
    dataset = helpers.FaceImages(helpers.resolve_image_dir(data_dir), _face_transform(image_size))
    return dataset  # DataLoader(dataset, batch_size=batch_size, shuffle=True) was meant to follow


def loader_scales_twice(batch_size, image_size, data_dir="celeba"):
    """Normalize already maps to [-1, 1]; the learner's scale maps it again, to [-3, 1]."""
    transform = transforms.Compose([_face_transform(image_size), transforms.Lambda(scale)])
    dataset = helpers.FaceImages(helpers.resolve_image_dir(data_dir), transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)


def loader_image_folder_parent(batch_size, image_size, data_dir="celeba"):
    """ImageFolder wants a sub-folder per class, so it is given the parent: batches become (images, labels)."""
    folder = Path(helpers.resolve_image_dir(data_dir))
    dataset = datasets.ImageFolder(str(folder.parent), _face_transform(image_size))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)


def loader_min_max_per_image(batch_size, image_size, data_dir="celeba"):
    """Stretches every image to its own min and max: right only for images that span black to white."""
    transform = transforms.Compose([
        transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Lambda(lambda x: (x - x.min()) / (x.max() - x.min()) * 2 - 1)])
    dataset = helpers.FaceImages(helpers.resolve_image_dir(data_dir), transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)


# --- Discriminator

class LeakyBeforeBatchNormD(nn.Module):
    def __init__(self, conv_dim=32, n_layers=3):
        super().__init__()
        layers, in_ch = [], 3
        for i in range(n_layers):
            out_ch = conv_dim * 2**i
            layers += [nn.Conv2d(in_ch, out_ch, 4, 2, 1), nn.LeakyReLU(0.2)]
            if i > 0:
                layers.append(nn.BatchNorm2d(out_ch))  # "BatchNorm after each but the first"
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch * (32 // 2**n_layers) ** 2, 1)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class ClampedLogitsD(nn.Module):
    def __init__(self, conv_dim=32, n_layers=3):
        super().__init__()
        layers, in_ch = [], 3
        for i in range(n_layers):
            out_ch = conv_dim * 2**i
            layers += [nn.Conv2d(in_ch, out_ch, 4, 2, 1)] + ([nn.BatchNorm2d(out_ch)] if i else [])
            layers.append(nn.LeakyReLU(0.2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch * (32 // 2**n_layers) ** 2, 1)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1)).clamp(-10, 10)  # keep the loss from exploding


class InputChannelsConvDimD(nn.Module):
    def __init__(self, conv_dim=32, n_layers=3):
        super().__init__()
        layers, in_ch = [], conv_dim
        for i in range(n_layers):
            out_ch = conv_dim * 2**i
            layers += [nn.Conv2d(in_ch, out_ch, 4, 2, 1)] + ([nn.BatchNorm2d(out_ch)] if i else [])
            layers.append(nn.LeakyReLU(0.2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch * (32 // 2**n_layers) ** 2, 1)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class LinearWidthsD(nn.Module):
    """conv_dim * (i + 1): 32, 64, 96 channels."""

    def __init__(self, conv_dim=32, n_layers=3):
        super().__init__()
        layers, in_ch = [], 3
        for i in range(n_layers):
            out_ch = conv_dim * (i + 1)
            layers += [nn.Conv2d(in_ch, out_ch, 4, 2, 1)] + ([nn.BatchNorm2d(out_ch)] if i else [])
            layers.append(nn.LeakyReLU(0.2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch * (32 // 2**n_layers) ** 2, 1)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class LeakyOnlyFirstD(nn.Module):
    """Explicit layers; the LeakyReLU written only after the first convolution."""

    def __init__(self, conv_dim=32):
        super().__init__()
        self.conv1 = nn.Conv2d(3, conv_dim, 4, 2, 1)
        self.conv2 = nn.Conv2d(conv_dim, conv_dim * 2, 4, 2, 1)
        self.bn2 = nn.BatchNorm2d(conv_dim * 2)
        self.conv3 = nn.Conv2d(conv_dim * 2, conv_dim * 4, 4, 2, 1)
        self.bn3 = nn.BatchNorm2d(conv_dim * 4)
        self.fc = nn.Linear(conv_dim * 4 * 4 * 4, 1)

    def forward(self, x):
        x = F.leaky_relu(self.conv1(x), 0.2)
        x = self.bn2(self.conv2(x))
        x = self.bn3(self.conv3(x))
        return self.fc(x.flatten(1))


class BatchNormInChannelsD(nn.Module):
    def __init__(self, conv_dim=32, n_layers=3):
        super().__init__()
        layers, in_ch = [], 3
        for i in range(n_layers):
            out_ch = conv_dim * 2**i
            layers.append(nn.Conv2d(in_ch, out_ch, 4, 2, 1))
            if i > 0:
                layers.append(nn.BatchNorm2d(in_ch))
            layers.append(nn.LeakyReLU(0.2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch * (32 // 2**n_layers) ** 2, 1)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class TwoClassD(nn.Module):
    """Two outputs, "one score for real and one for fake", as in an image classifier."""

    def __init__(self, conv_dim=32, n_layers=3):
        super().__init__()
        layers, in_ch = [], 3
        for i in range(n_layers):
            out_ch = conv_dim * 2**i
            layers += [nn.Conv2d(in_ch, out_ch, 4, 2, 1)] + ([nn.BatchNorm2d(out_ch)] if i else [])
            layers.append(nn.LeakyReLU(0.2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch * (32 // 2**n_layers) ** 2, 2)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


# --- Generator

class SigmoidScaledG(nn.Module):
    """Reuses the learner's scale to bring a sigmoid to [-1, 1]: 2 * sigmoid(x) - 1, which is tanh(x / 2)."""

    def __init__(self, z_size=100, conv_dim=32, n_layers=3):
        super().__init__()
        self.top, self.side = conv_dim * 2 ** (n_layers - 1), 32 // 2**n_layers
        self.fc = nn.Linear(z_size, self.top * self.side**2)
        layers, ch = [nn.BatchNorm2d(self.top), nn.ReLU()], self.top
        for _ in range(n_layers - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1), nn.BatchNorm2d(ch // 2), nn.ReLU()]
            ch //= 2
        self.net = nn.Sequential(*layers, nn.ConvTranspose2d(ch, 3, 4, 2, 1))

    def forward(self, z):
        x = self.net(self.fc(z).view(-1, self.top, self.side, self.side))
        return scale(torch.sigmoid(x))


class TanhClassCalledG(nn.Module):
    def __init__(self, z_size=100, conv_dim=32, n_layers=3):
        super().__init__()
        self.top, self.side = conv_dim * 2 ** (n_layers - 1), 32 // 2**n_layers
        self.fc = nn.Linear(z_size, self.top * self.side**2)
        layers, ch = [nn.BatchNorm2d(self.top), nn.ReLU()], self.top
        for _ in range(n_layers - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1), nn.BatchNorm2d(ch // 2), nn.ReLU()]
            ch //= 2
        self.net = nn.Sequential(*layers)
        self.out = nn.ConvTranspose2d(ch, 3, 4, 2, 1)

    def forward(self, z):
        x = self.net(self.fc(z).view(-1, self.top, self.side, self.side))
        return nn.Tanh(self.out(x))


class BatchNormBeforeReshapeG(nn.Module):
    def __init__(self, z_size=100, conv_dim=32, n_layers=3):
        super().__init__()
        self.top, self.side = conv_dim * 2 ** (n_layers - 1), 32 // 2**n_layers
        self.fc = nn.Linear(z_size, self.top * self.side**2)
        self.bn0 = nn.BatchNorm2d(self.top)
        layers, ch = [], self.top
        for _ in range(n_layers - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1), nn.BatchNorm2d(ch // 2), nn.ReLU()]
            ch //= 2
        self.net = nn.Sequential(*layers, nn.ConvTranspose2d(ch, 3, 4, 2, 1), nn.Tanh())

    def forward(self, z):
        x = self.fc(z)
        x = torch.relu(self.bn0(x))
        x = x.view(-1, self.top, self.side, self.side)
        return self.net(x)


class FloatChannelsG(nn.Module):
    def __init__(self, z_size=100, conv_dim=32, n_layers=3):
        super().__init__()
        self.top, self.side = conv_dim * 2 ** (n_layers - 1), 32 // 2**n_layers
        self.fc = nn.Linear(z_size, self.top * self.side**2)
        layers, ch = [nn.BatchNorm2d(self.top), nn.ReLU()], self.top
        for _ in range(n_layers - 1):
            layers += [nn.ConvTranspose2d(ch, ch / 2, 4, 2, 1), nn.BatchNorm2d(ch // 2), nn.ReLU()]
            ch //= 2
        self.net = nn.Sequential(*layers, nn.ConvTranspose2d(ch, 3, 4, 2, 1), nn.Tanh())

    def forward(self, z):
        return self.net(self.fc(z).view(-1, self.top, self.side, self.side))


class LastHiddenWithoutBatchNormG(nn.Module):
    """An off-by-one in "each but the last": BatchNorm stops one hidden layer early."""

    def __init__(self, z_size=100, conv_dim=32, n_layers=3):
        super().__init__()
        self.top, self.side = conv_dim * 2 ** (n_layers - 1), 32 // 2**n_layers
        self.fc = nn.Linear(z_size, self.top * self.side**2)
        layers, ch = [nn.BatchNorm2d(self.top), nn.ReLU()], self.top
        for i in range(n_layers - 1):
            layers.append(nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1))
            if i < n_layers - 2:
                layers.append(nn.BatchNorm2d(ch // 2))
            layers.append(nn.ReLU())
            ch //= 2
        self.net = nn.Sequential(*layers, nn.ConvTranspose2d(ch, 3, 4, 2, 1), nn.Tanh())

    def forward(self, z):
        return self.net(self.fc(z).view(-1, self.top, self.side, self.side))


class TopTypedG(nn.Module):
    """The projection's depth typed as conv_dim * 4, right for n_layers=3 only."""

    def __init__(self, z_size=100, conv_dim=32, n_layers=3):
        super().__init__()
        self.top, self.side = conv_dim * 4, 32 // 2**n_layers
        self.fc = nn.Linear(z_size, self.top * self.side**2)
        layers, ch = [nn.BatchNorm2d(self.top), nn.ReLU()], self.top
        for _ in range(n_layers - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1), nn.BatchNorm2d(ch // 2), nn.ReLU()]
            ch //= 2
        self.net = nn.Sequential(*layers, nn.ConvTranspose2d(ch, 3, 4, 2, 1), nn.Tanh())

    def forward(self, z):
        return self.net(self.fc(z).view(-1, self.top, self.side, self.side))


class TanhBeforeOutputG(nn.Module):
    """nn.Tanh() appended inside the loop's list, one line before the output layer."""

    def __init__(self, z_size=100, conv_dim=32, n_layers=3):
        super().__init__()
        self.top, self.side = conv_dim * 2 ** (n_layers - 1), 32 // 2**n_layers
        self.fc = nn.Linear(z_size, self.top * self.side**2)
        layers, ch = [nn.BatchNorm2d(self.top), nn.ReLU()], self.top
        for _ in range(n_layers - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1), nn.BatchNorm2d(ch // 2), nn.ReLU()]
            ch //= 2
        self.net = nn.Sequential(*layers, nn.Tanh(), nn.ConvTranspose2d(ch, 3, 4, 2, 1))

    def forward(self, z):
        return self.net(self.fc(z).view(-1, self.top, self.side, self.side))


# --- weights_init_normal

def init_zeros_every_bias(m):
    """No None test on the bias: crashes on the bias=False convolutions that precede BatchNorm."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        nn.init.zeros_(m.bias)


def init_class_name_conv(m):
    """The course's class-name test, which catches Conv2d and ConvTranspose2d but not Linear."""
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        m.weight.data.normal_(0.0, 0.02)
        if m.bias is not None:
            m.bias.data.fill_(0)


def init_uniform(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.uniform_(m.weight, -0.02, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def init_bias_normal_too(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.normal_(m.bias, 0.0, 0.02)


def init_only_layers_with_bias(m):
    """The bias crash "fixed" one level too high: layers without a bias keep PyTorch's default weights."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and m.bias is not None:
        nn.init.normal_(m.weight, 0.0, 0.02)
        nn.init.zeros_(m.bias)


# --- real_loss and fake_loss

def real_loss_log_sigmoid(D_out, smooth=False):
    """BCE written out from its formula, on probabilities."""
    p = torch.sigmoid(D_out)
    y = 0.9 if smooth else 1.0
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def fake_loss_log_sigmoid(D_out):
    return -torch.log(1 - torch.sigmoid(D_out)).mean()


def real_loss_bce_on_sigmoid(D_out, smooth=False):
    labels = torch.full_like(D_out, 0.9 if smooth else 1.0)
    return nn.BCELoss()(torch.sigmoid(D_out), labels)


def fake_loss_bce_on_sigmoid(D_out):
    return nn.BCELoss()(torch.sigmoid(D_out), torch.zeros_like(D_out))


def real_loss_of_mean_logit(D_out, smooth=False):
    """Averages D's outputs first, then one BCE: the same only when every logit is the same."""
    return F.binary_cross_entropy_with_logits(D_out.mean(), torch.tensor(0.9 if smooth else 1.0))


def real_loss_noisy_labels(D_out, smooth=False):
    """Smooths with random labels in [0.8, 1.0] (a tip from "GAN hacks"), not with 0.9."""
    labels = torch.empty_like(D_out).uniform_(0.8, 1.0) if smooth else torch.ones_like(D_out)
    return nn.BCEWithLogitsLoss()(D_out, labels)


def real_loss_squared(D_out, smooth=False):
    """Least-squares GAN's loss, found in another tutorial."""
    return ((D_out - (0.9 if smooth else 1.0)) ** 2).mean()


def fake_loss_squared(D_out):
    return (D_out**2).mean()


def real_loss_per_image(D_out, smooth=False):
    labels = torch.full_like(D_out, 0.9 if smooth else 1.0)
    return nn.BCEWithLogitsLoss(reduction="none")(D_out, labels)


def real_loss_int_labels(D_out, smooth=False):
    labels = torch.tensor([0.9 if smooth else 1] * len(D_out)).view_as(D_out)
    return nn.BCEWithLogitsLoss()(D_out, labels)


# --- the optimiser cell (D, G and cfg are the notebook's)

def optimizers_adamw(D, G, cfg):
    d_optimizer = torch.optim.AdamW(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    g_optimizer = torch.optim.AdamW(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    return d_optimizer, g_optimizer


def optimizers_one_for_both(D, G, cfg):
    optimizer = torch.optim.Adam(itertools.chain(D.parameters(), G.parameters()), lr=cfg.lr_d,
                                 betas=(cfg.beta1, cfg.beta2))
    return optimizer, optimizer


def optimizers_betas_reversed(D, G, cfg):
    d_optimizer = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta2, cfg.beta1))
    g_optimizer = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta2, cfg.beta1))
    return d_optimizer, g_optimizer


def optimizers_dcgan_beta2(D, G, cfg):
    """beta2 typed from the DCGAN paper (0.999), where small32's recipe says 0.99."""
    d_optimizer = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, 0.999))
    g_optimizer = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, 0.999))
    return d_optimizer, g_optimizer


# --- discriminator_step

def d_step_zero_grad_after_backward(D, G, d_optimizer, real_images, z, smooth=False):
    fake_images = G(z).detach()
    d_loss = real_loss(D(real_images), smooth) + fake_loss(D(fake_images))
    d_loss.backward()
    d_optimizer.zero_grad()
    d_optimizer.step()
    return d_loss


def d_step_step_before_backward(D, G, d_optimizer, real_images, z, smooth=False):
    d_optimizer.zero_grad()
    fake_images = G(z).detach()
    d_loss = real_loss(D(real_images), smooth) + fake_loss(D(fake_images))
    d_optimizer.step()
    d_loss.backward()
    return d_loss


def d_step_detaches_d_output(D, G, d_optimizer, real_images, z, smooth=False):
    """Detaches D's score of the fakes instead of the fakes themselves."""
    d_optimizer.zero_grad()
    d_loss = real_loss(D(real_images), smooth) + fake_loss(D(G(z)).detach())
    d_loss.backward()
    d_optimizer.step()
    return d_loss


def d_step_averages_losses(D, G, d_optimizer, real_images, z, smooth=False):
    d_optimizer.zero_grad()
    fake_images = G(z).detach()
    d_loss = (real_loss(D(real_images), smooth) + fake_loss(D(fake_images))) / 2
    d_loss.backward()
    d_optimizer.step()
    return d_loss


def d_step_zero_grads_g(D, G, d_optimizer, real_images, z, smooth=False):
    G.zero_grad()  # "clear old gradients" on the network that made the fakes
    fake_images = G(z).detach()
    d_loss = real_loss(D(real_images), smooth) + fake_loss(D(fake_images))
    d_loss.backward()
    d_optimizer.step()
    return d_loss


def d_step_steps_g_optimizer(D, G, d_optimizer, real_images, z, smooth=False):
    d_optimizer.zero_grad()
    fake_images = G(z).detach()
    d_loss = real_loss(D(real_images), smooth) + fake_loss(D(fake_images))
    d_loss.backward()
    g_optimizer.step()  # the notebook's global, typed from memory
    return d_loss


def d_step_scores_z(D, G, d_optimizer, real_images, z, smooth=False):
    d_optimizer.zero_grad()
    fake_images = G(z).detach()  # noqa: F841 - made, then not used
    d_loss = real_loss(D(real_images), smooth) + fake_loss(D(z))
    d_loss.backward()
    d_optimizer.step()
    return d_loss


# --- generator_step

def g_step_zero_grad_after_backward(D, G, g_optimizer, z):
    g_loss = real_loss(D(G(z)))
    g_loss.backward()
    g_optimizer.zero_grad()
    g_optimizer.step()
    return g_loss


def g_step_zero_grad_at_the_end(D, G, g_optimizer, z):
    """Clears the gradients after the update "to leave things clean", not before it."""
    g_loss = real_loss(D(G(z)))
    g_loss.backward()
    g_optimizer.step()
    g_optimizer.zero_grad()
    return g_loss


def g_step_steps_d_optimizer(D, G, g_optimizer, z):
    g_optimizer.zero_grad()
    g_loss = real_loss(D(G(z)))
    g_loss.backward()
    d_optimizer.step()  # copied from the D step
    return g_loss


def g_step_detaches_d_output(D, G, g_optimizer, z):
    g_optimizer.zero_grad()
    g_loss = real_loss(D(G(z)).detach())
    g_loss.backward()
    g_optimizer.step()
    return g_loss


def g_step_zero_grads_d(D, G, g_optimizer, z):
    D.zero_grad()  # D's gradients are the ones that pile up here
    g_loss = real_loss(D(G(z)))
    g_loss.backward()
    g_optimizer.step()
    return g_loss


# --- correct code in other styles

def scale_lerp(x, feature_range=(-1, 1)):
    lo, hi = feature_range
    return torch.lerp(torch.full_like(x, lo), torch.full_like(x, hi), x)


class OwnFaces(Dataset):
    """A Dataset of its own: the image files listed and opened with PIL."""

    def __init__(self, folder, transform):
        self.files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        self.transform = transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB"))


def loader_own_dataset(batch_size, image_size, data_dir="celeba"):
    transform = transforms.Compose([
        transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.RandomHorizontalFlip(p=0.5),
        transforms.ToTensor(), transforms.Lambda(lambda x: x * 2 - 1)])
    return DataLoader(OwnFaces(helpers.resolve_image_dir(data_dir), transform), batch_size, shuffle=True)


class OrderedDictD(nn.Module):
    """Named layers in an OrderedDict, bias=False before BatchNorm, torch.flatten."""

    def __init__(self, conv_dim=32, n_layers=3):
        super().__init__()
        layers, in_ch = OrderedDict(), 3
        for i in range(n_layers):
            out_ch = conv_dim * 2**i
            layers[f"conv{i}"] = nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=i == 0)
            if i:
                layers[f"bn{i}"] = nn.BatchNorm2d(out_ch)
            layers[f"act{i}"] = nn.LeakyReLU(negative_slope=0.2, inplace=True)
            in_ch = out_ch
        self.body = nn.Sequential(layers)
        side = 32 // 2**n_layers
        self.head = nn.Linear(in_ch * side * side, 1)

    def forward(self, x):
        return self.head(torch.flatten(self.body(x), start_dim=1))


class BlockListD(nn.Module):
    """A ModuleList of (conv, norm) blocks, nn.Identity for the first norm, functional leaky_relu."""

    def __init__(self, conv_dim=32, n_layers=3):
        super().__init__()
        chans = [3] + [conv_dim * 2**i for i in range(n_layers)]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 4, 2, 1), nn.BatchNorm2d(b) if i else nn.Identity())
            for i, (a, b) in enumerate(itertools.pairwise(chans)))
        self.out = nn.Linear(chans[-1] * (32 >> n_layers) ** 2, 1)

    def forward(self, x):
        for block in self.blocks:
            x = F.leaky_relu(block(x), negative_slope=0.2)
        return self.out(x.reshape(len(x), -1))


class BlockListG(nn.Module):
    """Blocks in a ModuleList, x.unflatten to reshape, in-place ReLUs, an nn.Tanh module at the end."""

    def __init__(self, z_size=100, conv_dim=32, n_layers=3):
        super().__init__()
        top, side = conv_dim * 2 ** (n_layers - 1), 32 // 2**n_layers
        self.shape = (top, side, side)
        self.project = nn.Linear(z_size, top * side * side, bias=False)
        self.blocks = nn.ModuleList([nn.Sequential(nn.BatchNorm2d(top), nn.ReLU(inplace=True))])
        for i in range(n_layers - 1):
            ch = top // 2**i
            self.blocks.append(nn.Sequential(nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                                             nn.BatchNorm2d(ch // 2), nn.ReLU(inplace=True)))
        self.to_rgb = nn.Sequential(nn.ConvTranspose2d(conv_dim, 3, 4, 2, 1), nn.Tanh())

    def forward(self, z):
        x = self.project(z).unflatten(1, self.shape)
        for block in self.blocks:
            x = block(x)
        return self.to_rgb(x)


def init_conv_nd(m):
    """One isinstance test for every convolution (_ConvNd), under no_grad, with in-place tensor methods."""
    if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
        with torch.no_grad():
            m.weight.normal_(mean=0.0, std=0.02)
            if m.bias is not None:
                m.bias.zero_()


def real_loss_logsigmoid(D_out, smooth=False):
    y = 0.9 if smooth else 1.0
    return -(y * F.logsigmoid(D_out) + (1 - y) * F.logsigmoid(-D_out)).mean()


def fake_loss_logsigmoid(D_out):
    return -F.logsigmoid(-D_out).mean()


def _stable_bce(logits, y):
    """max(l, 0) - l * y + log(1 + exp(-|l|)), the stable form, with torch.where."""
    return (torch.where(logits > 0, logits, torch.zeros_like(logits)) - logits * y
            + torch.log1p(torch.exp(-logits.abs()))).mean()


def real_loss_where(D_out, smooth=False):
    return _stable_bce(D_out, 0.9 if smooth else 1.0)


def fake_loss_where(D_out):
    return _stable_bce(D_out, 0.0)


def fake_loss_by_symmetry(D_out):
    """BCE(l, 0) = BCE(-l, 1): a fake scored l is a real scored -l."""
    return real_loss(-D_out)


def optimizers_param_groups(D, G, cfg):
    betas = (cfg.beta1, cfg.beta2)
    d_optimizer = torch.optim.Adam([{"params": [p for p in D.parameters() if p.requires_grad]}], lr=cfg.lr_d,
                                   betas=betas)
    g_optimizer = torch.optim.Adam(params=list(G.parameters()), lr=cfg.lr_g, betas=betas)
    return d_optimizer, g_optimizer


def d_step_grads_to_none(D, G, d_optimizer, real_images, z, smooth=False):
    """Clears gradients by hand, makes the fakes under no_grad, returns a detached loss."""
    for p in D.parameters():
        p.grad = None
    with torch.no_grad():
        fake_images = G(z)
    d_real, d_fake = D(real_images), D(fake_images)
    d_loss = real_loss(d_real, smooth=smooth) + fake_loss(d_fake)
    d_loss.backward()
    d_optimizer.step()
    return d_loss.detach()


def g_step_softplus(D, G, g_optimizer, z):
    """G.zero_grad(), and the non-saturating loss written as softplus(-l)."""
    G.zero_grad(set_to_none=True)
    g_loss = F.softplus(-D(G(z))).mean()
    g_loss.backward()
    g_optimizer.step()
    return g_loss


def _m(name, part, rule, breaks, code, *cause_words, preset="small32") -> Mistake:
    return Mistake(name, part, breaks, rule, code, tuple(cause_words), preset)


MISTAKES: list[Mistake] = [
    # scale: formulas that agree with x * (max - min) + min only on special inputs
    _m("scale min-max normalises its input", "test_scale", "SC1", "Map x from [0, 1] to feature_range.",
       scale_min_max, "x.min", "own min", "own range", "input's range", "does not span"),
    _m("scale lerp weights reversed", "test_scale", "SC1", "The width of the range is max - min; 0 must land on min.",
       scale_lerp_backwards, "reversed", "0 must land", "flipped", "upside down"),
    _m("scale centres instead of shifting", "test_scale", "SC2",
       "stretch [0, 1] to the width of feature_range, then shift it.",
       scale_centre_then_stretch, "shift", "+ lo", "add min", "+ min", "centre"),
    # get_dataloader, on the real data
    _m("loader Normalize before ToTensor", "test_dataloader", "DL2",
       "Chain five transforms: Resize, CenterCrop, RandomHorizontalFlip, ToTensor, Normalize.",
       loader_normalize_before_totensor, "totensor", "order"),
    _m("loader arguments swapped", "test_dataloader", "DL1",
       "A shuffling DataLoader of face tensors in [-1, 1], each of shape (3, image_size, image_size).",
       loader_arguments_swapped, "swapped", "argument order", "order of the arguments", "batch_size first"),
    _m("loader returns the dataset", "test_dataloader", "DL3",
       "turn each image into a tensor in [-1, 1] of the right size, and serve them in shuffled batches.",
       loader_returns_the_dataset, "dataloader"),
    _m("loader scales twice", "test_dataloader", "DL2",
       "A shuffling DataLoader of face tensors in [-1, 1], each of shape (3, image_size, image_size).",
       loader_scales_twice, "twice", "already", "scale"),
    _m("loader ImageFolder on the parent folder", "test_dataloader", "DL1",
       "A shuffling DataLoader of face tensors in [-1, 1], each of shape (3, image_size, image_size).",
       loader_image_folder_parent, "labels", "pairs", "tuple"),
    _m("loader stretches each image to its own min and max", "test_dataloader", "DL2",
       "converts to a tensor in [0, 1] and maps that to [-1, 1].",
       loader_min_max_per_image, "own min", "per image", "each image", "x.min", "min-max"),
    # Discriminator
    _m("D LeakyReLU before BatchNorm", "test_discriminator", "D5",
       "put `nn.BatchNorm2d` after every convolution but the first, and `nn.LeakyReLU(0.2)` after each.",
       LeakyBeforeBatchNormD, "order", "before"),
    _m("D clamps its logits", "test_discriminator", "D2",
       "one output per image, a raw **logit**: a score anywhere on the real line",
       ClampedLogitsD, "clamp", "real line", "squash", "bounded", "any sign and size"),
    _m("D first convolution takes conv_dim channels (crash)", "test_discriminator", "D4",
       "n_layers stride-2 convolutions with conv_dim, 2*conv_dim... channels",
       InputChannelsConvDimD, "layers, in_ch = [], conv_dim", "return self.fc(self.features(x).flatten(1))"),
    _m("D widths grow by conv_dim, not double", "test_discriminator", "D4",
       "n_layers stride-2 convolutions with conv_dim, 2*conv_dim... channels",
       LinearWidthsD, "double", "2**i", "conv_dim * 4"),
    _m("D LeakyReLU only after the first convolution", "test_discriminator", "D6",
       "put `nn.BatchNorm2d` after every convolution but the first, and `nn.LeakyReLU(0.2)` after each.",
       LeakyOnlyFirstD, "leakyrelu", "leaky_relu", "activation"),
    _m("D BatchNorm2d of the input channels (crash)", "test_discriminator", "D5",
       "BatchNorm after each but the first",
       BatchNormInChannelsD, "nn.batchnorm2d(in_ch)", "return self.fc(self.features(x).flatten(1))"),
    _m("D two outputs per image, real and fake", "test_discriminator", "D1",
       "32x32 images (N, 3, 32, 32) -> one raw logit per image (N, 1).",
       TwoClassD, "1 output", "one output", "out_features", "two outputs"),
    # Generator
    _m("G scale(sigmoid(x)) instead of tanh", "test_generator", "G6",
       "The last one takes exactly conv_dim channels and outputs 3, with tanh alone after it.",
       SigmoidScaledG, "sigmoid", "scale", "tanh(x / 2)"),
    _m("G calls the nn.Tanh class (crash)", "test_generator", "G6",
       "The last one takes exactly conv_dim channels and outputs 3, with tanh alone after it.",
       TanhClassCalledG, "nn.tanh(self.out(x))", "instance"),
    _m("G BatchNorm2d before the reshape (crash)", "test_generator", "G2",
       "linear, reshape to (N, channels, side, side), BatchNorm and ReLU, transposed convolutions, tanh.",
       BatchNormBeforeReshapeG, "x = torch.relu(self.bn0(x))", "before the reshape"),
    _m("G ch / 2 channels (crash)", "test_generator", "G3",
       "n_layers transposed convolutions that double its size and halve its channels",
       FloatChannelsG, "ch / 2", "integer division"),
    _m("G projection depth typed as conv_dim * 4", "test_generator", "G7",
       "every width and size must come from the arguments",
       TopTypedG, "2**(n_layers - 1)", "2 ** (n_layers - 1)", "256 channels"),
    _m("G tanh before the output layer", "test_generator", "G6",
       "The last one takes exactly conv_dim channels and outputs 3, with tanh alone after it.",
       TanhBeforeOutputG, "before the last", "tanh before", "order"),
    _m("G last hidden layer without BatchNorm", "test_generator", "G4",
       "each but the last followed by BatchNorm and ReLU", LastHiddenWithoutBatchNormG, "batchnorm"),
    # weights_init_normal
    _m("init zeros m.bias without a None test (crash on bias=False)", "test_weights_init", "W2",
       "draw the weights of conv, transposed-conv and linear layers from N(0, 0.02), and zero their biases.",
       init_zeros_every_bias, "bias=false", "is not none", "nn.init.zeros_(m.bias)"),
    _m("init class-name test misses Linear", "test_weights_init", "W1",
       "draw the weights of conv, transposed-conv and linear layers from N(0, 0.02), and zero their biases.",
       init_class_name_conv, "linear"),
    _m("init uniform instead of normal", "test_weights_init", "W1",
       "draw the weights of conv, transposed-conv and linear layers from N(0, 0.02), and zero their biases.",
       init_uniform, "uniform", "normal"),
    _m("init draws the biases too", "test_weights_init", "W2",
       "draw the weights of conv, transposed-conv and linear layers from N(0, 0.02), and zero their biases.",
       init_bias_normal_too, "bias"),
    _m("init skips layers without a bias", "test_weights_init", "W1",
       "draw the weights of conv, transposed-conv and linear layers from N(0, 0.02), and zero their biases.",
       init_only_layers_with_bias, "bias=false", "without a bias", "without bias", "no bias"),
    # real_loss and fake_loss
    _m("losses log(sigmoid) by hand", "test_losses", "L1",
       "compare D_out with a tensor of real labels using a loss that applies the sigmoid itself.",
       (real_loss_log_sigmoid, fake_loss_log_sigmoid), "stable", "large logits", "inf", "overflow", "logsigmoid"),
    _m("losses BCELoss on sigmoid", "test_losses", "L1",
       "compare D_out with a tensor of real labels using a loss that applies the sigmoid itself.",
       (real_loss_bce_on_sigmoid, fake_loss_bce_on_sigmoid), "stable", "large logits", "numerically", "saturat"),
    _m("real_loss of the mean logit", "test_losses", "L4", "`nn.BCEWithLogitsLoss()` takes raw logits; the labels "
       "must have D_out's shape.", (real_loss_of_mean_logit, fake_loss),
       "mean of the logits", "per image", "each image", "d_out.mean()", "the logits first"),
    _m("real_loss smooths with random labels", "test_losses", "L2",
       "BCE-with-logits of D's outputs against the label 'real' (1, or 0.9 with smooth=True).",
       (real_loss_noisy_labels, fake_loss), "random", "noisy", "uniform", "0.9 exactly"),
    _m("losses least squares", "test_losses", "L6",
       "BCE-with-logits of D's outputs against the label 'real' (1, or 0.9 with smooth=True).",
       (real_loss_squared, fake_loss_squared), "squared", "mse", "least squares", "least-squares"),
    _m("real_loss per image (reduction='none')", "test_losses", "L6",
       "BCE-with-logits of D's outputs against the label 'real' (1, or 0.9 with smooth=True).",
       (real_loss_per_image, fake_loss), "reduction", "one number", "mean"),
    _m("real_loss integer labels (crash)", "test_losses", "L2",
       "BCE-with-logits of D's outputs against the label 'real' (1, or 0.9 with smooth=True).",
       (real_loss_int_labels, fake_loss), "torch.tensor([0.9 if smooth else 1] * len(d_out))", "integer"),
    # the optimisers
    _m("optimisers AdamW", "test_optimizers", "O1", "Each network gets its own **Adam** optimiser",
       optimizers_adamw, "adamw", "weight decay", "weight_decay"),
    _m("one optimiser for both networks", "test_optimizers", "O3",
       "A separate optimiser, over G.parameters() only, with cfg.lr_g.",
       optimizers_one_for_both, "own optimiser", "both networks", "same optimiser", "separate"),
    _m("optimisers betas reversed", "test_optimizers", "O1",
       "an Adam optimiser over D's parameters, with D's own learning rate cfg.lr_d and the betas (cfg.beta1, "
       "cfg.beta2)", optimizers_betas_reversed, "swapped", "reversed", "order", "beta1 first"),
    _m("optimisers DCGAN's beta2 on small32", "test_optimizers", "O1",
       "an Adam optimiser over D's parameters, with D's own learning rate cfg.lr_d and the betas (cfg.beta1, "
       "cfg.beta2)", optimizers_dcgan_beta2, "beta2"),
    # discriminator_step
    _m("D step zero_grad after backward", "test_discriminator_step", "SD4", "Clear old gradients first.",
       d_step_zero_grad_after_backward, "zero_grad() ran after", "after backward", "after the backward"),
    _m("D step step() before backward", "test_discriminator_step", "SD3",
       "score the real images and the fakes in two separate calls to D (in one batch, BatchNorm would mix their "
       "statistics), add the two losses, and update D only.",
       d_step_step_before_backward, "before backward", "before the backward", "step() ran before",
       "after d_loss.backward()"),
    _m("D step detaches D's score of the fakes", "test_discriminator_step", "SD5",
       "Make the fakes with `G(z).detach()` so D's loss stays out of G.",
       d_step_detaches_d_output, "detach"),
    _m("D step averages the two losses", "test_discriminator_step", "SD2",
       "update D on the sum of the two losses", d_step_averages_losses, "sum", "/ 2", "half", "total"),
    _m("D step clears G's gradients", "test_discriminator_step", "SD4", "Clear old gradients first.",
       d_step_zero_grads_g, "zero_grad"),
    _m("D step steps g_optimizer", "test_discriminator_step", "SD3",
       "score the real images and the fakes in two separate calls to D (in one batch, BatchNorm would mix their "
       "statistics), add the two losses, and update D only.",
       d_step_steps_g_optimizer, "d_optimizer.step()", "g_optimizer"),
    _m("D step scores z (crash)", "test_discriminator_step", "SD8",
       "One update of D on a real batch and a batch of fakes G(z); returns D's loss.",
       d_step_scores_z, "fake_loss(d(z))"),
    # generator_step
    _m("G step zero_grad after backward", "test_generator_step", "ST2",
       "g_optimizer.zero_grad()\ng_loss = real_loss(D(G(z)))\ng_loss.backward()",
       g_step_zero_grad_after_backward, "zero_grad() ran after", "after backward", "after the backward"),
    _m("G step zero_grad at the end", "test_generator_step", "ST2",
       "g_optimizer.zero_grad()\ng_loss = real_loss(D(G(z)))\ng_loss.backward()",
       g_step_zero_grad_at_the_end, "at the end", "after step", "ran after"),
    _m("G step steps d_optimizer", "test_generator_step", "SG1",
       "score G(z) with D and update G so that D calls its fakes real.",
       g_step_steps_d_optimizer, "d_optimizer", "only g_optimizer"),
    _m("G step detaches D's output (crash)", "test_generator_step", "SG2",
       "No detach here: the gradient must flow through D into G.",
       g_step_detaches_d_output, "real_loss(d(g(z)).detach())", "detach"),
    _m("G step clears D's gradients", "test_generator_step", "ST2",
       "g_optimizer.zero_grad()\ng_loss = real_loss(D(G(z)))\ng_loss.backward()",
       g_step_zero_grads_d, "zero_grad"),
]

CORRECT: list[Correct] = [
    Correct("scale with torch.lerp", "test_scale", scale_lerp),
    Correct("loader with its own Dataset and x * 2 - 1", "test_dataloader", loader_own_dataset),
    Correct("D in an OrderedDict", "test_discriminator", OrderedDictD),
    Correct("D as a ModuleList of blocks", "test_discriminator", BlockListD),
    Correct("G as a ModuleList of blocks", "test_generator", BlockListG),
    Correct("init over _ConvNd", "test_weights_init", init_conv_nd),
    Correct("losses via logsigmoid", "test_losses", (real_loss_logsigmoid, fake_loss_logsigmoid)),
    Correct("losses via torch.where", "test_losses", (real_loss_where, fake_loss_where)),
    Correct("fake_loss by symmetry", "test_losses", (real_loss, fake_loss_by_symmetry)),
    Correct("optimisers with parameter groups", "test_optimizers", optimizers_param_groups),
    Correct("optimisers with parameter groups (hinge_sn64)", "test_optimizers", optimizers_param_groups,
            "hinge_sn64"),
    Correct("D step with grads set to None", "test_discriminator_step", d_step_grads_to_none),
    Correct("G step with softplus", "test_generator_step", g_step_softplus),
]
