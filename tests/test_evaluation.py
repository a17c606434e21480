"""FID/KID, the real-feature cache, sampling to PNG, and the latent-explorer callbacks."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from facegan import batches, checkpoint, cli, config, data, evaluation, export, models, plots, sampling, train

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared/fid/inception-2015-12-05-fid-weights.pth"


@pytest.fixture(scope="module")
def inception():
    path = os.environ.get(evaluation.FID_WEIGHTS_ENV) or (SHARED_WEIGHTS if SHARED_WEIGHTS.is_file() else None)
    if path is None and os.environ.get("CI"):
        pytest.fail(f"set {evaluation.FID_WEIGHTS_ENV} to the local FID weights")
    return evaluation.inception_extractor(path)  # downloads on a user's machine when path is None


class CountingExtractor(nn.Module):
    """A stand-in for Inception: cheap features, and a count of the images it saw."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return x.float().flatten(1)[:, :16] * self.scale  # 16 "features": the FID maths stays cheap


@pytest.mark.slow
def test_fid_of_a_set_with_itself_is_zero_and_with_noise_large(celeba_dir, inception):
    real = evaluation.real_features(24, 32, inception)
    noise = evaluation.inception_features(torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8), inception)
    same = evaluation.fid_kid(real, real, kid_subset=12)
    other = evaluation.fid_kid(real, noise, kid_subset=12)
    assert abs(same["fid"]) < 1e-2
    assert other["fid"] > 200
    assert other["kid"] > same["kid"] + 0.1  # KID agrees in direction


@pytest.mark.slow
def test_real_features_are_cached_and_recomputed_when_data_changes(image_folder, tmp_path):
    extractor = CountingExtractor()
    first = evaluation.real_features(8, 32, extractor, data=str(image_folder), cache_dir=tmp_path)
    assert extractor.seen == 8 and first.shape == (8, 16)
    again = evaluation.real_features(8, 32, extractor, data=str(image_folder), cache_dir=tmp_path)
    assert extractor.seen == 8  # the cache was hit: no image went through the extractor
    assert torch.equal(first, again)
    evaluation.real_features(8, 64, extractor, data=str(image_folder), cache_dir=tmp_path)
    assert extractor.seen == 16  # another resolution is another entry
    (image_folder / "000.jpg").unlink()
    evaluation.real_features(8, 32, extractor, data=str(image_folder), cache_dir=tmp_path)
    assert extractor.seen == 24  # the data changed: recomputed
    with pytest.raises(ValueError, match="holds 11"):
        evaluation.real_features(50, 32, extractor, data=str(image_folder), cache_dir=tmp_path)


def test_sample_writes_n_readable_pngs(tmp_path):
    from PIL import Image

    cfg = config.make_config("small32")
    _, G = models.build_models(cfg)
    paths = sampling.write_samples(G, cfg, 7, tmp_path / "png", seed=1)
    assert len(paths) == len(list((tmp_path / "png").glob("*.png"))) == 7
    for p in paths:
        with Image.open(p) as img:
            assert img.size == (32, 32) and img.mode == "RGB"
    again = sampling.write_samples(G, cfg, 7, tmp_path / "png2", seed=1)
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(paths, again, strict=True))  # seeded


@pytest.mark.slow
def test_cli_sample_and_fid(image_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FACEGAN_CACHE", str(tmp_path / "cache"))
    cfg = config.make_config("small32", batch_size=4, data=str(image_folder), max_steps=1)
    state = train.train(cfg, tmp_path, progress=False).state
    gen = checkpoint.export_generator(state, tmp_path / "g.pt")
    assert cli.main(["sample", "--generator", str(gen), "--n", "5", "--out", str(tmp_path / "s")]) == 0
    assert len(list((tmp_path / "s").glob("*.png"))) == 5
    cli.main(["sample", "--generator", str(gen), "--n", "4", "--out", str(tmp_path / "r"), "--real"])
    assert len(list((tmp_path / "r").glob("*.png"))) == 4
    monkeypatch.setattr(evaluation, "inception_extractor", lambda *a, **k: CountingExtractor())
    cli.main(["fid", "--generator", str(gen), "--n", "6"])
    assert "FID-6" in capsys.readouterr().out


@pytest.mark.slow
def test_fid_tracking_during_training(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "inception_extractor", lambda *a, **k: CountingExtractor())
    monkeypatch.setenv("FACEGAN_CACHE", str(tmp_path / "cache"))
    cfg = config.make_config("small32", batch_size=4, data=str(image_folder), max_steps=4, fid_every=2,
                              fid_samples=8)
    state = train.train(cfg, tmp_path / "run", progress=False)
    assert state.history["fid_step"] == [2, 4] and all(np.isfinite(state.history["fid"]))
    assert len(plots.plot_losses(state.history).axes) == 3  # FID beside the losses


@pytest.mark.slow
def test_exported_generator_is_half_precision_and_loads(celeba_dir, tmp_path):
    state = train.train(config.make_config("small32", batch_size=8, subset=16, max_steps=1, ema_decay=0.9),
                          tmp_path, progress=False).state
    path = checkpoint.export_generator(state, tmp_path / "g.pt")
    saved = torch.load(path, weights_only=False)
    assert all(v.dtype == torch.float16 for v in saved["G"].values() if v.is_floating_point())
    G, cfg = export.load_generator(path)
    z = state.fixed_z[:4]
    assert torch.allclose(G(z), sampling.generate(state.sampler, z), atol=2e-2)  # fp16 rounding only


# --- latent explorer callbacks

@pytest.fixture(scope="module")
def small_g():
    torch.manual_seed(0)
    cfg = config.make_config("small32")
    return models.build_models(cfg)[1].eval(), cfg


def test_face_for_seed_is_deterministic(small_g):
    G, cfg = small_g
    a, b, c = (sampling.face_for_seed(G, cfg, s) for s in (3, 3, 4))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_interpolation_ends_at_the_two_seeds(small_g):
    G, cfg = small_g
    start = sampling.interpolate_faces(G, cfg, 1, 2, 0.0)
    end = sampling.interpolate_faces(G, cfg, 1, 2, 1.0)
    mid = sampling.interpolate_faces(G, cfg, 1, 2, 0.5)
    assert np.array_equal(start, sampling.face_for_seed(G, cfg, 1))
    assert np.abs(end.astype(int) - sampling.face_for_seed(G, cfg, 2).astype(int)).max() <= 1
    assert not np.array_equal(mid, start) and not np.array_equal(mid, end)


def test_slerp_keeps_the_norm_between_equal_norm_endpoints():
    z0, z1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = sampling.slerp(z0, z1, 0.5)
    assert torch.allclose(mid, torch.tensor([0.5**0.5, 0.5**0.5]))
    assert torch.allclose(sampling.slerp(z0, z1, 0.0), z0)
    assert torch.allclose(sampling.slerp(z0, z1, 1.0), z1, atol=1e-6)


def test_truncation_bounds_the_latent():
    cfg = config.make_config("dcgan64")
    z = sampling.truncated_latent(500, cfg, truncation=0.5, seed=0)
    assert z.shape == (500, 128, 1, 1) and z.abs().max() <= 0.5
    assert sampling.truncated_latent(500, cfg, 0.0, seed=0).abs().max() > 2


# --- the shipped generators: model folders (facegan/export.py)

SHIPPED = export.shipped_models()


def test_a_generator_is_shipped():
    assert SHIPPED, "assets/models/ should hold at least one trained generator"
    assert not list((Path(config.PROJECT_ROOT) / "assets").glob("*.pt")), "ship model folders, not .pt files"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_generator_is_small_and_draws_faces(path, celeba_dir):
    G, cfg = export.load_generator(path)
    # half precision: 2 bytes a parameter, plus config.json, the card and the sample grid
    assert sum(f.stat().st_size for f in path.iterdir()) <= 2 * models.count_parameters(G) + 2**20
    fid = export.read_model_config(path)["metrics"]["fid_1k"]
    assert f"| FID-1000@{cfg.image_size} | {fid:g} |" in (path / "README.md").read_text()  # the card names it
    images = sampling.generate(G, sampling.truncated_latent(64, cfg, seed=0))
    assert images.shape == (64, 3, cfg.image_size, cfg.image_size)
    assert images.std(0).mean() > 0.15  # varied: no mode collapse
    # The average face of G looks like the average real face (a cheap check that G draws faces).
    files = data.list_images(celeba_dir)[:512]
    real = batches.build_image_cache(files, cfg.image_size)
    real_mean = batches.uint8_to_model_range(torch.from_numpy(np.array(real))).mean(0)
    corr = torch.corrcoef(torch.stack([images.mean(0).flatten(), real_mean.flatten()]))[0, 1]
    assert corr > 0.8, corr
