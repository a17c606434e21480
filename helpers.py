"""The notebook's front door: what ``face_generation.ipynb`` uses, by section, and where it lives.

The engine is the ``facegan`` package, one module per job; this file re-exports the
teaching API so that the notebook and the exercise need a single import.  The checks they
run on the learner's code are ``problem_unittests.py``, which re-exports them from
``facegan/checks/``.  Notebook section -> functions -> module (every module, one line each: docs/layout.md):

    1. Set-up and parameters  prepare (the first cell, Colab)                  facegan/setup.py
                              Config, PRESETS, make_config, in_ci             facegan/config.py
    2. Get the data           ensure_celeba, list_images, read_image,
                              resolve_image_dir, FaceImages, DataError        facegan/data.py
    3. Pre-process            get_dataloader, scale, image_transform          facegan/data.py
    4. The models             Discriminator, DCGANDiscriminator, Generator,
                              DCGANGenerator, weights_init_normal,
                              build_models, count_parameters, sample_latent   facegan/models.py
    5. Losses and optimisers  real_loss, fake_loss, hinge_*, wasserstein_*,
                              gradient_penalty, LOSSES                        facegan/losses.py
                              make_optimizers                                 facegan/updates.py
    6. Training               discriminator_step, generator_step              facegan/updates.py
                              training_batches (the fast cached batches)      facegan/batches.py
                              pick_device                                     facegan/device.py
                              train, TrainResult, make_progress_gif           facegan/train.py
                              TrainState, make_state                          facegan/state.py
                              train_step                                      facegan/step.py
                              LiveView (the loop's faces and curves, live)    facegan/live.py
    7-8. Curves and samples   plot_losses, show_images, show_samples_over_training,
                              save_progress_gif                               facegan/plots.py
                              generate                                        facegan/sampling.py
    9. A trained generator    load_generator (a model folder or a checkpoint) facegan/export.py
                              export_generator, load_checkpoint,
                              save_checkpoint                                 facegan/checkpoint.py
                              truncated_latent, face_for_seed,
                              interpolate_faces, slerp                        facegan/sampling.py
                              evaluate_generator, nearest_real_faces          facegan/evaluation.py
                              diversity_report (copying and collapse)         facegan/diversity.py
                              plot_diversity                                  facegan/plots.py

It is also the command line, the same as ``python -m facegan``::

    python helpers.py train --preset small32 --epochs 5 --out runs/small32
    python helpers.py train --dry-run                  # a few steps, for CI
    python helpers.py train --out runs/small32 --resume
    python helpers.py sample|fid|bench|exercise|notebook|serve|export|runs --help
"""
from __future__ import annotations

import sys

from facegan.batches import training_batches

# 8. Results
from facegan.checkpoint import export_generator, load_checkpoint, save_checkpoint
from facegan.cli import main

# 7. Training
from facegan.config import PRESETS, Config, in_ci, make_config

# 1-2. Data and pre-processing
from facegan.data import (
    DataError,
    FaceImages,
    ensure_celeba,
    get_dataloader,
    image_transform,
    list_images,
    read_image,
    resolve_image_dir,
    scale,
)

# 6. Optimisers and the training step
from facegan.device import pick_device
from facegan.diversity import diversity_report
from facegan.evaluation import evaluate_generator, nearest_real_faces
from facegan.export import load_generator
from facegan.live import LiveView

# 5. Losses
from facegan.losses import (
    LOSSES,
    fake_loss,
    gradient_penalty,
    hinge_d_loss,
    hinge_g_loss,
    real_loss,
    wasserstein_d_loss,
    wasserstein_g_loss,
)

# 3-4. Models
from facegan.models import (
    DCGANDiscriminator,
    DCGANGenerator,
    Discriminator,
    Generator,
    build_models,
    count_parameters,
    sample_latent,
    weights_init_normal,
)
from facegan.plots import plot_diversity, plot_losses, save_progress_gif, show_images, show_samples_over_training
from facegan.sampling import face_for_seed, generate, interpolate_faces, slerp, truncated_latent
from facegan.setup import prepare
from facegan.state import TrainState, make_state
from facegan.step import train_step
from facegan.train import TrainResult, make_progress_gif, train
from facegan.updates import discriminator_step, generator_step, make_optimizers

__all__ = [
    # 1-2. data
    "DataError", "FaceImages", "ensure_celeba", "get_dataloader", "image_transform", "list_images",
    "read_image", "resolve_image_dir", "scale", "training_batches", "prepare",
    # 3-4. models
    "DCGANDiscriminator", "DCGANGenerator", "Discriminator", "Generator", "build_models",
    "count_parameters", "sample_latent", "weights_init_normal",
    # 5. losses
    "LOSSES", "fake_loss", "gradient_penalty", "hinge_d_loss", "hinge_g_loss", "real_loss",
    "wasserstein_d_loss", "wasserstein_g_loss",
    # 6. optimisers and steps
    "TrainState", "discriminator_step", "generator_step", "make_optimizers", "make_state", "pick_device",
    "train_step", "LiveView",
    # 7. training
    "PRESETS", "Config", "TrainResult", "in_ci", "make_config", "train",
    # 8. results
    "export_generator", "load_checkpoint", "load_generator", "save_checkpoint", "evaluate_generator",
    "nearest_real_faces", "diversity_report", "plot_diversity",
    "plot_losses", "make_progress_gif", "save_progress_gif", "show_images", "show_samples_over_training",
    "face_for_seed", "generate", "interpolate_faces", "slerp", "truncated_latent",
    # the command line
    "main",
]

if __name__ == "__main__":
    sys.exit(main())
