"""Configuration: one ``Config`` dataclass holds every value a run needs; a preset is a named set of them.

The configuration is saved into every checkpoint, so a checkpoint rebuilds exactly the
same models (``facegan.checkpoint``).  Each field's trailing comment is its documentation:
``field_help`` reads it, and the command line shows it as the flag's help.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: The DiffAugment transforms ``Config.diffaug`` may name (facegan/augment.py implements them).
AUGMENTATIONS = ("color", "translation", "cutout", "rotation", "lighting")

#: Names from older checkpoints, and what they are called now.
LEGACY_NAMES = {"g_dim": "g_conv_dim", "d_dim": "d_conv_dim"}
LEGACY_ARCH = {"fc": "linear-stem"}


@dataclass
class Config:
    """Everything a run needs, as plain values.

    A preset (see ``PRESETS``) is a named set of values for these fields.  The
    configuration is saved in every checkpoint, and ``load_checkpoint`` rebuilds
    exactly the same models from it.
    """

    preset: str = "small32"  # the named recipe these values started from (PRESETS)
    # --- models
    arch: str = "linear-stem"  # "linear-stem": a linear layer, then transposed convs (32px); "dcgan": all-conv 64px+
    image_size: int = 32  # side of the square images, in pixels (32; dcgan: 64, 128 or 256)
    z_size: int = 100  # length of the latent vector z that G draws a face from
    g_conv_dim: int = 32  # generator width: channels of its last hidden layer (the DCGAN paper's ngf)
    d_conv_dim: int = 32  # discriminator width: channels of its first layer (the DCGAN paper's ndf)
    n_layers: int = 3  # stride-2 layers of the linear-stem models (3 or 4 at 32px)
    g_activation: str = "relu"  # relu | leaky
    d_norm: str = "batch"  # batch | layer | spectral | none
    d_dropout: float = 0.0  # dropout probability after each of D's layers (the "improved" recipe)
    # --- losses and tricks
    loss: str = "bce"  # bce | hinge | wgan-gp | lsgan (least squares, Mao et al. 2017)
    real_label: tuple = (1.0, 1.0)  # D's target for real images, drawn from U(lo, hi) (bce and lsgan)
    instance_noise: float = 0.0  # std of noise on D's inputs at step 0, decays linearly to 0
    gp_weight: float = 10.0  # lambda of the WGAN-GP gradient penalty
    n_critic: int = 1  # D steps per G step
    r1_gamma: float = 0.0  # R1 penalty gamma/2 E|grad D(x)|^2 on real images (Mescheder et al. 2018); 0 = off
    r1_every: int = 16  # lazy R1: the penalty on every k-th D step only, scaled by k (Karras et al. 2020)
    ada_target: float = 0.0  # ADA: p of the diffaug ops steered so E[sign(D(real))] nears this; 0 = off, 0.6 typical
    ada_kimg: float = 100.0  # ADA: thousands of images over which p can move from 0 to 1
    feature_matching: float = 0.0  # weight of G's feature matching loss on D's last hidden features; 0 = off
    progressive: str = ""  # ProGAN (dcgan): "A,B" = steps or run fractions at half size, then fading in; "" = off
    holdout: int = 0  # real faces kept out of training, scored by D at logged steps (overfitting shows); 0 = off
    # --- optimisation
    lr_g: float = 2e-4  # generator learning rate
    lr_d: float = 2e-4  # discriminator learning rate (larger than lr_g is TTUR)
    beta1: float = 0.5  # Adam beta1; DCGAN uses 0.5, less momentum keeps the game stable
    beta2: float = 0.999  # Adam beta2
    d_optimizer: str = "adam"  # adam | sgd
    lr_schedule: str = "constant"  # constant | linear | cosine
    ema_decay: float = 0.0  # EMA of G's weights; 0 disables, 0.999 is typical
    ema_rampup: float = 0.0  # EMA horizon grows as this fraction of the steps so far, up to ema_decay's; 0 = off
    diffaug: str = ""  # DiffAugment on D's inputs: comma-separated color, translation, cutout, rotation, lighting
    batch_size: int = 64  # images per step
    epochs: int = 5  # passes over the data set
    max_steps: int = 0  # stop after this many steps; 0 = run all epochs
    max_minutes: float = 0.0  # stop after this much training time, resumes included (FID, grids on top); 0 = no limit
    checkpoint_minutes: float = 5.0  # also checkpoint mid-epoch this often (minutes of training); 0 = epoch ends only
    # --- data
    data: str = "celeba"  # "celeba" (processed set, fetched on demand), a folder, or a .zip
    crop: int = 0  # centre crop in pixels before resizing (160 for aligned CelebA); 0 = none
    subset: int = 0  # use only the first N images; 0 = all
    recursive: bool = False  # also read images in sub-folders
    fast_data: bool = True  # uint8 memory-mapped cache instead of PIL per image
    # --- run
    seed: int = 0  # seeds weights, latents and the data order: the same seed repeats a run
    device: str = "auto"  # auto | cpu | cuda | mps
    log_every: int = 10  # steps between history records
    sample_every: int = 0  # steps between fixed-latent grids; 0 = once per epoch
    keep_generators: bool = False  # also save G (half precision) at every sample point, for FID curves
    fid_every: int = 0  # steps between FID measurements during training; 0 = off
    fid_samples: int = 256  # samples per FID measurement during training (small N: compare runs, not papers)
    n_samples: int = 64  # size of the fixed latent batch shown in grids
    amp: bool = True  # bf16 autocast where the hardware runs bf16 natively (native_bf16); false = exact fp32
    channels_last: bool = True  # NHWC memory layout: faster convolutions on CPU (oneDNN) and CUDA
    fused_adam: bool = True  # one fused kernel per Adam step instead of a loop over parameters
    compile: bool = False  # torch.compile the models
    sync_batchnorm: bool = False  # multi-GPU: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA only)

    def validate(self) -> Config:
        """Raise ``ValueError`` naming the bad field and the fix; return self."""

        def bad(name: str, why: str) -> None:
            raise ValueError(f"Config.{name}={getattr(self, name)!r}: {why}")

        choices = {
            "arch": ("linear-stem", "dcgan"),
            "g_activation": ("relu", "leaky"),
            "d_norm": ("batch", "layer", "spectral", "none"),
            "loss": ("bce", "hinge", "wgan-gp", "lsgan"),
            "d_optimizer": ("adam", "sgd"),
            "lr_schedule": ("constant", "linear", "cosine"),
            "device": ("auto", "cpu", "cuda", "mps"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                bad(name, f"choose one of {', '.join(allowed)}")
        if self.arch == "dcgan" and self.image_size not in (64, 128, 256):
            bad("image_size", "the dcgan architecture makes 64, 128 or 256 pixel images (one stride-2 layer per "
                "doubling); pick one of those, or arch='linear-stem' for 32")
        if self.arch == "linear-stem":
            if self.n_layers < 1 or self.image_size % (2**self.n_layers):
                bad("n_layers", f"image_size {self.image_size} must be divisible by 2**n_layers")
        for name in ("z_size", "g_conv_dim", "d_conv_dim", "batch_size", "n_critic", "n_samples", "log_every",
                     "r1_every"):
            if getattr(self, name) < 1:
                bad(name, "must be a positive integer")
        for name in ("epochs", "max_steps", "subset", "crop", "sample_every", "max_minutes", "checkpoint_minutes",
                     "fid_every", "fid_samples", "r1_gamma", "holdout"):
            if getattr(self, name) < 0:
                bad(name, "must be 0 or positive")
        if self.epochs == 0 and self.max_steps == 0:
            bad("epochs", "set epochs or max_steps above 0")
        for name in ("lr_g", "lr_d"):
            if not getattr(self, name) > 0:
                bad(name, "learning rates must be positive")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            bad("beta1", "Adam betas must lie in [0, 1)")
        if not 0 <= self.ema_decay < 1:
            bad("ema_decay", "use 0 to disable, or a value like 0.999")
        if not 0 <= self.ema_rampup <= 1:
            bad("ema_rampup", "give the EMA's horizon as a fraction of the steps so far, e.g. 0.05; 0 turns it off")
        if self.ema_rampup and not self.ema_decay:
            bad("ema_rampup", "the ramp-up shapes an EMA, and none is set; add e.g. --ema-decay 0.999")
        unknown_aug = set(filter(None, self.diffaug.split(","))) - set(AUGMENTATIONS)
        if unknown_aug:
            bad("diffaug", f"unknown augmentation {sorted(unknown_aug)}; use a comma-separated subset of "
                f"{','.join(AUGMENTATIONS)}, or '' for none")
        self._validate_stabilisers(bad)
        if not 0 <= self.d_dropout < 1:
            bad("d_dropout", "dropout probability must lie in [0, 1)")
        lo, hi = self.real_label
        if not (0 < lo <= hi):
            bad("real_label", "give (low, high) with 0 < low <= high, e.g. (0.9, 0.9) or (0.7, 1.2)")
        if self.loss == "wgan-gp" and self.d_norm == "batch":
            bad("d_norm", "the gradient penalty is per sample, so a WGAN-GP critic must not use "
                "BatchNorm; use 'layer' or 'none'")
        if self.instance_noise < 0 or self.gp_weight < 0:
            bad("instance_noise", "noise and penalty weights must be >= 0")
        return self

    def _validate_stabilisers(self, bad) -> None:
        """ADA and the held-out view: settings that only make sense together."""
        if not 0 <= self.ada_target < 1:
            bad("ada_target", "ADA's target for E[sign(D(real))] lies in (0, 1), 0.6 is typical; 0 turns ADA off")
        if self.ada_target and not self.diffaug:
            bad("ada_target", "ADA steers the probability of the diffaug ops, and none is set; add e.g. "
                "--diffaug color,translation,cutout")
        if not self.ada_kimg > 0:
            bad("ada_kimg", "give the thousands of images for p to go from 0 to 1, e.g. 100")
        if self.compile and (self.r1_gamma or self.loss == "wgan-gp"):
            bad("compile", "R1 and the gradient penalty need a double backward, which torch.compile does not "
                "support: use --compile false")
        if self.holdout and not self.fast_data:
            bad("holdout", "the held-out faces come from the uint8 cache: drop --fast-data false, or use --holdout 0")
        if not (self.feature_matching >= 0 and math.isfinite(self.feature_matching)):
            bad("feature_matching", "give the loss's weight, e.g. 1, or 0 to turn feature matching off")
        self._validate_progressive(bad)

    def _validate_progressive(self, bad) -> None:
        """``progressive``: two numbers, each a fraction of the run (below 1) or a whole number of steps."""
        if not self.progressive:
            return
        how = ("give two comma-separated numbers, the half-size stage and the fade: fractions of the run "
               "(e.g. '0.25,0.25') or whole numbers of steps (e.g. '4000,4000'); '' turns growing off")
        try:
            values = [float(v) for v in self.progressive.split(",")]
        except ValueError:
            values = []
        if len(values) != 2 or not all(v >= 0 and (v < 1 or v == int(v)) for v in values):
            bad("progressive", how)
        if all(v < 1 for v in values) and sum(values) > 1:
            bad("progressive", "the half-size stage and the fade take more than the whole run; their fractions "
                "must add up to at most 1")
        if self.arch != "dcgan":
            bad("progressive", "progressive growing is built for the dcgan models; use --arch dcgan or drop it")
        if self.compile:
            bad("compile", "progressive growing changes the models' path as it fades in, which would recompile "
                "them at every step: use --compile false")

    def growth_steps(self, total_steps: int) -> tuple[int, int]:
        """(first step of the fade, first step at full size alone) of ``progressive``; (0, 0) when off.

        Fractions are of ``total_steps``, the run's planned length, which the checkpoint keeps, so a
        resumed run grows on the same steps as one that never stopped.
        """
        if not self.progressive:
            return 0, 0
        half, fade = (round(v * total_steps) if v < 1 else int(v) for v in map(float, self.progressive.split(",")))
        return half, half + fade

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        """A validated Config from plain values (a preset, a checkpoint's saved configuration).

        Names from older checkpoints are translated, so files already shipped keep loading.
        """
        values = {LEGACY_NAMES.get(k, k): v for k, v in values.items() if k != "cpu_bf16"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown configuration fields {sorted(unknown)}; known fields: {sorted(known)}")
        if "arch" in values:
            values["arch"] = LEGACY_ARCH.get(values["arch"], values["arch"])
        if "real_label" in values:
            values["real_label"] = tuple(float(v) for v in values["real_label"])
        return cls(**values).validate()


def field_help() -> dict[str, str]:
    """Each Config field's documentation: the comment after it in the class body, plus its default."""
    defaults = Config()
    found = re.findall(r"^\s{4}(\w+): [^=\n]+= [^#\n]+#\s*(.+)$", inspect.getsource(Config), re.M)
    return {name: f"{text} (default: {getattr(defaults, name)!r})" for name, text in found}


#: Each preset reproduces one known recipe; the notebook's table says where each comes from.
PRESETS: dict[str, dict] = {
    # 32x32, 3 stride-2 convs, conv_dim 32, no smoothing, Adam 0.002 (0.5, 0.99).
    "small32": dict(arch="linear-stem", image_size=32, z_size=100, g_conv_dim=32, d_conv_dim=32, n_layers=3,
                    lr_g=0.002, lr_d=0.002, beta1=0.5, beta2=0.99, real_label=(1.0, 1.0), batch_size=64),
    # 32x32, 4 stride-2 convs, conv_dim 64, real labels 0.9, Adam 2e-4 (0.5, 0.999).
    "classic32": dict(arch="linear-stem", image_size=32, z_size=100, g_conv_dim=64, d_conv_dim=64, n_layers=4,
                      lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999, real_label=(0.9, 0.9), batch_size=64),
    # The best 32x32 faces per CPU-minute (docs/results.md): small32's layout twice as wide, real labels
    # 0.9, EMA, a budget of 25 training minutes (FID and grids on top) and a constant rate (decaying it to 0
    # scored worse).
    "fast32": dict(arch="linear-stem", image_size=32, z_size=100, g_conv_dim=64, d_conv_dim=64, n_layers=3,
                   lr_g=0.002, lr_d=0.002, beta1=0.5, beta2=0.99, real_label=(0.9, 0.9), ema_decay=0.999,
                   batch_size=64, epochs=100, max_minutes=25.0),
    # Radford et al. 2016 at 64x64 with a [B,128,1,1] latent.
    "dcgan64": dict(arch="dcgan", image_size=64, z_size=128, g_conv_dim=64, d_conv_dim=64,
                    lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999, real_label=(0.9, 0.9), batch_size=64),
    # The "GAN hacks" variant: dropout in D, LeakyReLU in G, noisy labels, instance noise.
    "improved64": dict(arch="dcgan", image_size=64, z_size=100, g_conv_dim=64, d_conv_dim=64, g_activation="leaky",
                       d_dropout=0.3, real_label=(0.7, 1.2), instance_noise=0.1,
                       lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999, batch_size=64),
    # The best 64x64 faces per CPU-minute (docs/results.md, fast64): dcgan64's five layers at half the width
    # (4x fewer FLOPs, so 4x the images in the hour), Adam 1e-3 (0.5, 0.99) at a constant rate, real
    # labels 0.9, EMA; bf16 where native (2x fp32's img/s) and batch 64 (batch 128 ran only 5-10% more
    # img/s, for half the updates).  Lazy R1 at gamma 0.1 keeps D from drifting into winning: without it
    # D(G(z)) sinks and past about 17,800 steps the faces fall apart (FID-1000 51 -> 135); with it D(G(z))
    # holds near 0.35 and FID-1000 falls to 39.2 at step 20,200 (51.4 at the old stop, 16,797), for 3% of
    # the img/s.  40 epochs (20,360 steps) or 60 minutes of training time (FID and grids come on top),
    # whichever ends first: it levels off after that; on 2 AVX-512 cores the hour ends first, at 18,897
    # steps and FID-1000 39.6 (measured when its hour also counted the epoch-end grids and loss plots).
    # The EMA's horizon ramps up (5% of the steps so far): at 2,000 steps FID-1000 92 against 122.
    "fast64": dict(arch="dcgan", image_size=64, z_size=128, g_conv_dim=32, d_conv_dim=32,
                   lr_g=1e-3, lr_d=1e-3, beta1=0.5, beta2=0.99, real_label=(0.9, 0.9), r1_gamma=0.1, r1_every=16,
                   ema_decay=0.999, ema_rampup=0.05, batch_size=64, epochs=40, max_minutes=60.0),
    # Gulrajani et al. 2017: critic without BatchNorm (layer norm), gradient penalty 10, 5 critic steps.
    "wgangp64": dict(arch="dcgan", image_size=64, z_size=128, g_conv_dim=64, d_conv_dim=64, d_norm="layer",
                     loss="wgan-gp", gp_weight=10.0, n_critic=5, lr_g=1e-4, lr_d=1e-4,
                     beta1=0.0, beta2=0.9, batch_size=64),
    # Miyato et al. 2018 / SAGAN: hinge loss, spectral norm in D, TTUR learning rates.
    "hinge_sn64": dict(arch="dcgan", image_size=64, z_size=128, g_conv_dim=64, d_conv_dim=64, d_norm="spectral",
                       loss="hinge", lr_g=1e-4, lr_d=4e-4, beta1=0.0, beta2=0.9, batch_size=64),
}


def make_config(preset: str = "small32", **overrides) -> Config:
    """The configuration of a named preset, with any fields overridden."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return Config.from_dict({**PRESETS[preset], **overrides, "preset": preset})


def in_ci() -> bool:
    """True when running under CI (the ``CI`` environment variable is set and not 0/false)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
