"""facegan: train DCGANs to draw faces. The engine behind ``face_generation.ipynb``.

One module per job, each importing only the ones listed above it:

    config      Config, the presets
    data        fetching CelebA, image folders, the classic PIL DataLoader
    batches     the uint8 image cache and the training batches made from it
    models      the 32x32 and 64x64 DCGAN discriminators and generators, their init
    losses      BCE, hinge and Wasserstein losses, the gradient penalty; LOSSES
    step        optimisers, TrainState, precision, train_step
    sampling    faces from seeds, latent paths, PNG files
    checkpoint  save, resume and export, loading no code
    evaluation  FID and KID
    plots       grids, curves, the progress GIF
    train       the training loop
    bench       speed and precision benchmarks
    exercise    the classroom exercise notebook
    serve       faces over HTTP
    cli         the command line (``python -m facegan``)

``helpers.py`` at the project root re-exports what the notebook teaches.
"""
