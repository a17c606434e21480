"""The model card of a model folder (its README.md): what G is, how it was trained, what it scores,
its limits and licence, how to load and publish it.  ``facegan.export`` writes it from config.json.

The front matter is what the Hugging Face Hub reads (library, licence, tags); the training command is
rebuilt from the saved configuration as the preset plus a flag for every field that differs.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from .config import PRESETS, PROJECT_ROOT, Config, make_config
from .evaluation import PRDC_KEYS

FID_PROTOCOL = ("FID-N: N generated faces (latents from seed 0) against N real faces of the processed CelebA set "
                "(a fixed pick, seed 0) resized to the generator's resolution, through the standard TF-Inception "
                "(2015-12-05) pool features in torchmetrics; KID on the same features, subsets of 1,000. "
                "Precision and recall (Kynkaanniemi et al. 2019, k = 3), density and coverage (Naeem et al. 2020, "
                "k = 5) on the same features: precision and density say how realistic the faces are, recall and "
                "coverage how much of the real faces' variety they reach.")


def train_command(cfg: Config) -> str:
    """``python helpers.py train --preset P`` plus a flag for every field that differs from the preset."""
    base = (make_config(cfg.preset) if cfg.preset in PRESETS else Config()).to_dict()
    flags = []
    for name, value in cfg.to_dict().items():
        if name == "preset" or value == base[name]:
            continue
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, (tuple, list)):
            text = ",".join(f"{v:g}" for v in value)
        else:
            text = f"{value:g}" if isinstance(value, float) else shlex.quote(str(value))
        flags.append(f"--{name.replace('_', '-')} {text}")
    return " ".join(["python helpers.py train", f"--preset {shlex.quote(cfg.preset)}", *flags])


def _results(metrics: dict, size: int) -> str:
    rows = []
    for key, value in metrics.items():
        name = key.split("_")[0]
        if (key.startswith(("fid_", "kid")) or name in PRDC_KEYS) and isinstance(value, (int, float)):
            n = key.split("_")[1] if "_" in key else "1k"
            n = {"1k": "1000", "10k": "10000"}.get(n, n)
            rows.append(f"| {name.upper() if name in ('fid', 'kid') else name}-{n}@{size} | {value:g} |")
    if not rows:
        return "Not measured yet: `python helpers.py fid --generator DIR --n 1000 --record` adds FID-1000 here.\n"
    note = f"\n{metrics['note']}\n" if metrics.get("note") else ""
    return "| metric | value |\n|---|---|\n" + "\n".join(rows) + f"\n\n{FID_PROTOCOL}\n{note}"


def _shown_path(folder: Path) -> str:
    """The folder as the card's commands name it: relative to the project when inside it."""
    try:
        return folder.resolve().relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return folder.name


def render_card(record: dict, cfg: Config, folder: Path, onnx: bool, weights_bytes: int) -> str:
    """The model card (README.md) of a model folder from its config.json record and validated Config."""
    training = record.get("training") or {}
    seconds, images = training.get("seconds"), training.get("images_seen")
    arch = ("DCGAN generator: a 4x4 transposed-convolution projection of z, then "
            f"{(cfg.image_size // 4).bit_length() - 1} stride-2 transposed convolutions with BatchNorm"
            if cfg.arch == "dcgan" else
            f"linear-stem DCGAN generator: a linear projection of z, then {cfg.n_layers} stride-2 transposed "
            "convolutions with BatchNorm")
    weights = (f"the EMA of G's weights (decay {cfg.ema_decay:g}), its BatchNorm statistics re-estimated"
               if cfg.ema_decay else "G's weights at the end of training")
    return CARD_TEMPLATE.format(
        name=folder.name, path=_shown_path(folder), size=cfg.image_size, arch=arch, act=cfg.g_activation,
        z=cfg.z_size, width=cfg.g_conv_dim, params=f"{record.get('parameters', 0):,}", dtype=record.get("dtype"),
        mb=f"{weights_bytes / 2**20:.1f}", preset=cfg.preset, weights=weights, command=train_command(cfg),
        step=f"{training['step']:,}" if "step" in training else "not recorded",
        images=f"{images / 1e6:.2f} M" if images else "not recorded",
        minutes=f"{seconds / 60:.0f} min" if seconds else "not recorded",
        hardware=training.get("hardware", "not recorded"),
        results=_results(record.get("metrics") or {}, cfg.image_size),
        onnx=ONNX_SECTION.format(z=cfg.z_size) if onnx else "")


CARD_TEMPLATE = """---
library_name: pytorch
license: other
license_name: celeba-non-commercial-research
license_link: https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html
pipeline_tag: unconditional-image-generation
tags:
- gan
- dcgan
- face-generation
- celeba
- pytorch_model_hub_mixin
---

# {name}: {size}x{size} faces from a DCGAN generator

A {arch}, {act} activations and tanh on the output.
It maps a latent z, a vector of {z} standard normal numbers, to one {size}x{size} RGB face with values
in [-1, 1]. {params} parameters, stored in {dtype} (BatchNorm statistics in float32): {mb} MB.
Width (`g_conv_dim`) {width}; preset `{preset}`; the weights are {weights}.
Trained on the processed CelebA faces (32,600 aligned, cropped faces) with the `facegan` package.

![64 faces from seed 0](samples.png)

## Training

```bash
{command}
```

Step {step}; images seen by D: {images} (steps x batch size); training time: {minutes}; hardware: {hardware}.

## Results

{results}
## Intended use and limitations

For teaching and research on generative models: sample grids, latent interpolation, FID experiments.
The faces reflect CelebA's celebrity photographs: mostly young, light-skinned, Western celebrities,
smiling and posed, so the generator under-represents most of the world's faces and should not be used
to stand for any population. The faces are not real people; do not use them to identify, profile or
impersonate anyone, or present them as real photographs. At {size}x{size} pixels artefacts are common.

## Licence

The weights are derived from CelebA, whose licence allows non-commercial research purposes only
(see the CelebA agreement); `license: other` above. Using this generator commercially is not permitted.

## How to load it

```python
from facegan.export import load_generator
from facegan.sampling import generate, truncated_latent

G, cfg = load_generator("{path}")                   # this folder: reads only safetensors and JSON
faces = generate(G, truncated_latent(16, cfg, seed=0))   # (16, 3, {size}, {size}) in [-1, 1]

from facegan.export import FaceGenerator            # needs huggingface_hub
model = FaceGenerator.from_pretrained("{path}")     # a local folder, or "user/repo" on the Hub
```

The command line takes the folder wherever it takes a generator:
`python helpers.py sample --generator {path} --n 1000 --out faces/`, `fid`, `serve`.
{onnx}
## How to publish it

```bash
huggingface-cli upload user/facegan-{name} {path} .     # the folder as it is: card, weights, samples
```

or in Python: `huggingface_hub.HfApi().upload_folder(repo_id="user/facegan-{name}", folder_path="{path}")`,
or `FaceGenerator.from_pretrained("{path}").push_to_hub("user/facegan-{name}")` (writes the same folder).
"""

ONNX_SECTION = """
`generator.onnx` (opset 18) runs without PyTorch: input `z` (batch, {z}), float32 standard normal;
output `images` (batch, 3, H, W) in [-1, 1]; any batch size.

```python
import numpy as np, onnxruntime as ort
session = ort.InferenceSession("generator.onnx")
images = session.run(["images"], {{"z": np.random.randn(8, {z}).astype(np.float32)}})[0]
```
"""
