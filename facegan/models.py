"""Models: the classic 32x32 DCGAN pair, the five-layer 64x64 DCGAN pair, and their init.

DCGAN (Radford, Metz & Chintala, 2016) made GANs train reliably with a few
architectural rules: strided convolutions instead of pooling (D learns its own
down-sampling), transposed convolutions in G, BatchNorm in both nets (except
D's input and G's output layers), LeakyReLU(0.2) in D, ReLU in G and tanh on
G's output, so that images live in [-1, 1].

Every model takes one width knob, ``conv_dim``: the channels of D's first layer and of
G's last hidden layer (the DCGAN paper's ndf and ngf).  The 64x64 models can also grow
progressively (``HalfSizeStage``), and every D can hand out its last hidden features.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Config


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        # Layer norm over (C, H, W) per sample: what WGAN-GP recommends instead of BatchNorm.
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def _spectral(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018): divide W by its largest singular value,
    estimated by one power iteration per step, so each layer is 1-Lipschitz."""
    return nn.utils.parametrizations.spectral_norm(module)


class Discriminator(nn.Module):
    """The classic 32x32 discriminator: stride-2 convolutions, then one linear layer.

    ``n_layers`` convolutions with 4x4 kernels and stride 2 halve the image each
    time while the channels double (conv_dim, 2*conv_dim, ...).  BatchNorm follows
    every convolution but the first; a linear layer turns the final feature map
    into one logit per image (no sigmoid: the loss applies it).
    """

    def __init__(self, conv_dim: int = 32, n_layers: int = 3, image_size: int = 32,
                 norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        self.conv_dim, self.n_layers = conv_dim, n_layers
        layers: list[nn.Module] = []
        in_ch = 3
        for i in range(n_layers):
            out_ch = conv_dim * 2**i
            use_norm = i > 0 and norm in ("batch", "layer")
            conv = nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=not use_norm)  # BN has its own bias
            layers += [_spectral(conv) if norm == "spectral" else conv]
            if use_norm:
                layers.append(_norm(norm, out_ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            if dropout:
                layers.append(nn.Dropout(dropout))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        side = image_size // 2**n_layers
        fc = nn.Linear(in_ch * side * side, 1)
        self.fc = _spectral(fc) if norm == "spectral" else fc

    def forward(self, x: torch.Tensor, with_features: bool = False):
        """One logit per image; with ``with_features`` also the last hidden features it is read from."""
        h = self.features(x).flatten(1)
        return (self.fc(h), h) if with_features else self.fc(h)


class Generator(nn.Module):
    """The classic 32x32 generator: a linear "project and reshape" stem, then transposed convs.

    z (N, z_size) is mapped by a linear layer to a small, deep feature map
    (e.g. 128x4x4 = 2048 values), which ``n_layers`` stride-2 transposed
    convolutions double in size and halve in depth until it is a 3-channel
    image; tanh squashes it into [-1, 1].
    """

    def __init__(self, z_size: int = 100, conv_dim: int = 32, n_layers: int = 3,
                 image_size: int = 32, activation: str = "relu"):
        super().__init__()
        self.z_size, self.conv_dim, self.n_layers = z_size, conv_dim, n_layers
        self.top = conv_dim * 2**(n_layers - 1)
        self.side = image_size // 2**n_layers
        self.fc = nn.Linear(z_size, self.top * self.side * self.side)
        act = (lambda: nn.LeakyReLU(0.2, inplace=True)) if activation == "leaky" else (lambda: nn.ReLU(True))
        layers: list[nn.Module] = [nn.BatchNorm2d(self.top), act()]
        ch = self.top
        for _i in range(n_layers - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), act()]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z.flatten(1)).view(-1, self.top, self.side, self.side)
        return self.net(x)


DCGAN_SIZES = (64, 128, 256)


def dcgan_widths(conv_dim: int, image_size: int = 64) -> list[int]:
    """Channels of the all-convolutional models' hidden layers, from the image side inwards.

    One stride-2 layer per doubling of the image: 4 at 64x64 (conv_dim, 2, 4 and 8 times
    conv_dim, the DCGAN paper's layout), 5 at 128x128, 6 at 256x256.  The widths stop
    growing at 8 x conv_dim, so a bigger image adds layers, not a 16x-wide one.
    """
    if image_size not in DCGAN_SIZES:
        raise ValueError(f"the dcgan models make {DCGAN_SIZES} pixel images, not {image_size}")
    return [conv_dim * min(2**i, 8) for i in range(int(math.log2(image_size)) - 2)]


class HalfSizeStage(nn.Module):
    """Progressive growing's extra layer (Karras et al. 2018), and how far the full size is faded in.

    In G a ``to_rgb`` 1x1 convolution turns the half-size feature map into an image; in D a
    ``from_rgb`` 1x1 convolution (and LeakyReLU) turns a half-size image into D's first feature
    map.  ``alpha`` is the full-size path's share: 0 while the models train at half size, rising
    to 1 over the fade, 1 from then on (the full-size models alone, as without growing).  It is
    saved with the weights (``get_extra_state``), so a generator kept mid-run samples as it trained.
    """

    def __init__(self, conv: nn.Module, act: nn.Module | None = None):
        super().__init__()
        self.conv, self.act, self.alpha = conv, act or nn.Identity(), 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))

    @torch.no_grad()
    def widen_init(self) -> None:
        """After ``weights_init_normal``: 4x its std for this 1x1 convolution.

        DCGAN's N(0, 0.02) suits 4x4 kernels; a 1x1 kernel reads 16x fewer inputs, so at the same
        std its outputs come out 4x smaller: near-grey half-size images whose small gradients bf16
        rounds to a third of a minibatch's noise (a tenth at 4x, as for the full-size layers).
        """
        conv = self.conv
        (conv.parametrizations.weight.original if hasattr(conv, "parametrizations") else conv.weight).mul_(4.0)

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self.alpha)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.alpha = float(state)


class DCGANDiscriminator(nn.Module):
    """The all-convolutional DCGAN discriminator: five layers at 64x64, one more per doubling.

    64 -> 32 -> 16 -> 8 -> 4 with 4x4 stride-2 convolutions (ndf, 2ndf, 4ndf,
    8ndf channels), then a 4x4 convolution without padding reduces the 4x4 map
    to one logit.  ``norm`` picks BatchNorm (DCGAN), layer norm (a WGAN-GP
    critic) or spectral norm (hinge GAN); ``dropout`` is the "improved" recipe's.
    At 128 or 256 pixels the same layers follow one or two more stride-2 ones.
    ``grow`` adds progressive growing's half-size input (``HalfSizeStage``).
    """

    def __init__(self, conv_dim: int = 64, norm: str = "batch", dropout: float = 0.0, image_size: int = 64,
                 grow: bool = False):
        super().__init__()
        self.conv_dim = conv_dim
        wrap = _spectral if norm == "spectral" else (lambda m: m)
        chans = [3, *dcgan_widths(conv_dim, image_size)]
        layers: list[nn.Module] = []
        for i in range(len(chans) - 1):
            use_norm = i > 0 and norm in ("batch", "layer")
            layers.append(wrap(nn.Conv2d(chans[i], chans[i + 1], 4, 2, 1, bias=not use_norm)))
            if use_norm:
                layers.append(_norm(norm, chans[i + 1]))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            if dropout:
                layers.append(nn.Dropout(dropout))
        layers.append(wrap(nn.Conv2d(chans[-1], 1, 4, 1, 0)))
        self.net = nn.Sequential(*layers)
        self.first = 3 if dropout else 2  # the modules of the first (full-size) layer
        self.grow = HalfSizeStage(wrap(nn.Conv2d(3, chans[1], 1)), nn.LeakyReLU(0.2)) if grow else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """D's last hidden feature map, the one its final convolution reads the logit from."""
        alpha = 1.0 if self.grow is None else self.grow.alpha
        if alpha >= 1:
            return self.net[:-1](x)
        h = self.grow(F.avg_pool2d(x, 2))  # the half-size image, through from_rgb
        if alpha > 0:  # fading in: the full-size first layer's share grows with alpha
            h = torch.lerp(h, self.net[:self.first](x), alpha)
        return self.net[self.first:-1](h)

    def forward(self, x: torch.Tensor, with_features: bool = False):
        """One logit per image, shape (N, 1); with ``with_features`` also D's last hidden features, flat."""
        if self.grow is None and not with_features:
            return self.net(x).flatten(1)
        h = self.features(x)
        out = self.net[-1](h).flatten(1)
        return (out, h.flatten(1)) if with_features else out


class LatentProjection(nn.ConvTranspose2d):
    """G's first layer: a 4x4 transposed convolution of the 1x1 latent "image", done as one matrix product.

    On a 1x1 input with stride 1 and no padding, output pixel (i, j) of channel o is
    sum_c z_c W[c, o, i, j]: exactly ``z @ W.view(in, out * 16)``.  The convolution
    libraries handle this 1x1 case poorly (12-17% of the CPU's peak, against 80% and
    more for a plain matrix product), so it is computed as one.  The weights are the
    same tensor as before (a ``ConvTranspose2d``'s), so checkpoints load either way.
    """

    def forward(self, z: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        plain = (self.stride, self.padding, self.dilation, self.output_padding, self.groups) == \
            ((1, 1), (0, 0), (1, 1), (0, 0), 1)
        if z.shape[-2:] != (1, 1) or not plain or output_size is not None:
            return super().forward(z, output_size)  # not the 1x1 case: an ordinary transposed convolution
        out = z.flatten(1) @ self.weight.flatten(1)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype).repeat_interleave(self.weight[0, 0].numel())
        return out.view(z.size(0), self.out_channels, *self.kernel_size)


class DCGANGenerator(nn.Module):
    """The all-convolutional DCGAN generator, from a latent of shape (N, z, 1, 1).

    A 4x4 transposed convolution without padding turns the 1x1 latent into a
    4x4 map with 8ngf channels; four stride-2 transposed convolutions take it
    to 8, 16, 32 and 64 pixels, the last one with 3 channels and tanh.  Each
    doubling beyond 64 (``image_size`` 128 or 256) adds one stride-2 layer.  ``grow`` adds
    progressive growing's half-size output (``HalfSizeStage``); at ``alpha`` 1 it is unused.
    """

    def __init__(self, z_size: int = 128, conv_dim: int = 64, activation: str = "relu", image_size: int = 64,
                 grow: bool = False):
        super().__init__()
        self.z_size, self.conv_dim = z_size, conv_dim
        act = (lambda: nn.LeakyReLU(0.2, inplace=True)) if activation == "leaky" else (lambda: nn.ReLU(True))
        chans = [z_size, *dcgan_widths(conv_dim, image_size)[::-1]]
        layers: list[nn.Module] = []
        for i in range(len(chans) - 1):
            stride, pad = (1, 0) if i == 0 else (2, 1)
            conv = LatentProjection if i == 0 else nn.ConvTranspose2d
            layers += [conv(chans[i], chans[i + 1], 4, stride, pad, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), act()]
        layers += [nn.ConvTranspose2d(conv_dim, 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.grow = HalfSizeStage(nn.Conv2d(conv_dim, 3, 1), nn.Tanh()) if grow else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.view(z.size(0), self.z_size, 1, 1)
        alpha = 1.0 if self.grow is None else self.grow.alpha
        if alpha >= 1:
            return self.net(z)
        h = self.net[:-2](z)  # the half-size feature map
        # The half-size image, each pixel repeated 2x2: images keep their full size whatever the stage,
        # so data, grids and FID are untouched, and D's avg-pooling reads the half-size image back exactly.
        low = F.interpolate(self.grow(h), scale_factor=2, mode="nearest")
        return torch.lerp(low, self.net[-2:](h), alpha) if alpha > 0 else low


def weights_init_normal(m: nn.Module) -> None:
    """DCGAN initialisation: conv and linear weights ~ N(0, 0.02), biases 0; BatchNorm scale ~ N(1, 0.02).

    Use as ``model.apply(weights_init_normal)``.  With spectral norm the raw
    weight lives in ``parametrizations.weight.original``, and that is what we set.
    """
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
        nn.init.normal_(weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def build_models(cfg: Config) -> tuple[nn.Module, nn.Module]:
    """(D, G) for a configuration, initialised with ``weights_init_normal``."""
    if cfg.arch == "linear-stem":
        D = Discriminator(cfg.d_conv_dim, cfg.n_layers, cfg.image_size, cfg.d_norm, cfg.d_dropout)
        G = Generator(cfg.z_size, cfg.g_conv_dim, cfg.n_layers, cfg.image_size, cfg.g_activation)
    else:
        grow = bool(cfg.progressive)  # progressive growing's half-size layers (the finished G ignores them)
        D = DCGANDiscriminator(cfg.d_conv_dim, cfg.d_norm, cfg.d_dropout, cfg.image_size, grow)
        G = DCGANGenerator(cfg.z_size, cfg.g_conv_dim, cfg.g_activation, cfg.image_size, grow)
    D.apply(weights_init_normal)
    G.apply(weights_init_normal)
    for net in (D, G):
        if getattr(net, "grow", None) is not None:
            net.grow.widen_init()
    return D, G


def sample_latent(n: int, cfg: Config, device: torch.device | str = "cpu",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """z ~ N(0, I): shape (n, z) for the linear-stem models, (n, z, 1, 1) for the 64x64 DCGANs."""
    shape = (n, cfg.z_size) if cfg.arch == "linear-stem" else (n, cfg.z_size, 1, 1)
    return torch.randn(shape, device=device, generator=generator)


def count_parameters(model: nn.Module) -> int:
    """How many numbers the model learns."""
    return sum(p.numel() for p in model.parameters())
