"""Checks for the pieces of a face GAN, written to be read by a learner.

Call them from the notebook on your own code::

    import problem_unittests as tests
    tests.test_discriminator(Discriminator)

Each check prints one pass line, or raises ``AssertionError`` (``CheckFailed``) saying which check
failed, what was expected, what came back, the likely cause and a hint.  The checks test behaviour,
not only shapes.  What each one covers, and where its code lives in ``facegan/checks/``:

    test_scale, test_dataloader       [-1, 1] images, batch shape, a new order each epoch    data.py
    test_discriminator                (N, 3, H, W) -> (N, 1) raw logits; stride-2 convs of
                                      conv_dim, 2*conv_dim...; no pooling, no sigmoid         discriminator.py
    test_generator                    (N, z_size) -> (N, 3, H, W) in [-1, 1]: projection,
                                      BatchNorm and ReLU, transposed convs, tanh alone at
                                      the end; a function of z                                generator.py
    test_weights_init                 weights ~ N(0, 0.02), biases 0, BatchNorm scales ~1     weights.py
    test_losses                       BCE-with-logits towards 1 (0.9 smoothed) and 0          losses.py
    test_optimizers                   one Adam per network, its own parameters and settings  optimizers.py
    test_discriminator_step,          the learner's update against a reference update on
    test_generator_step               copies of the same models and batch                    training.py
    require_bce_game(cfg)             guards the notebook's training loop                    training.py

The model checks build each network at a second width and depth, so that numbers typed in for one
setting fail.  The step checks match a mismatch against the usual mistakes (a missing
``zero_grad``, swapped labels, ``fake_loss`` in the G step...) to name the likely one;
``tests/test_problem_unittests.py`` plants those mistakes.  ``require_bce_game(cfg)`` plays the
BCE game with your steps, and for a preset that plays another game it says what to run instead.
How a check reports (and the crashes it turns into advice) is ``facegan/checks/report.py``.
"""
from __future__ import annotations

from facegan.checks.data import test_dataloader, test_scale
from facegan.checks.discriminator import test_discriminator
from facegan.checks.generator import G_CRASH_HINTS, test_generator
from facegan.checks.losses import test_losses
from facegan.checks.optimizers import test_optimizers
from facegan.checks.report import CRASH_HINTS, CheckFailed
from facegan.checks.training import (
    D_STEP_MISTAKES,
    G_STEP_MISTAKES,
    NotTheBCEGame,
    require_bce_game,
    test_discriminator_step,
    test_generator_step,
)
from facegan.checks.weights import test_weights_init

__all__ = [
    "CRASH_HINTS", "D_STEP_MISTAKES", "G_CRASH_HINTS", "G_STEP_MISTAKES", "CheckFailed", "NotTheBCEGame",
    "require_bce_game", "test_dataloader", "test_discriminator", "test_discriminator_step", "test_generator",
    "test_generator_step", "test_losses", "test_optimizers", "test_scale", "test_weights_init",
]
