"""The learner-facing checks, one module per part of the notebook; ``problem_unittests.py`` re-exports them.

    report.py         CheckFailed, and how every check passes, fails and runs the learner's code
    data.py           test_scale, test_dataloader
    layers.py         reading a model from a forward pass (shared by the model checks)
    discriminator.py  test_discriminator
    generator.py      test_generator
    weights.py        test_weights_init
    losses.py         test_losses
    optimizers.py     test_optimizers
    training.py       test_discriminator_step, test_generator_step, require_bce_game

No module here imports ``helpers.py`` or ``problem_unittests.py``: the checks depend on torch alone,
so that they judge the learner's code, not the engine's.
"""
