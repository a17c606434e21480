"""FID/KID, the real-feature cache, sampling to PNG, and the latent-explorer callbacks."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from facegan import batches, checkpoint, cli, config, data, evaluation, export, models, plots, sampling, train
from facegan import card as card_module

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
    cli.main(["fid", "--generator", str(gen), "--n", "6", "--diversity", str(tmp_path / "view.png")])
    out = capsys.readouterr().out
    assert "FID-6" in out and "precision" in out and "coverage" in out and "have a near-duplicate" in out
    assert (tmp_path / "view.png").stat().st_size > 10_000
    cli.main(["fid", "--generator", str(gen), "--n", "6", "--real"])  # a second, disjoint pick of real faces
    out = capsys.readouterr().out
    assert "6 other real faces (the reference): FID-6" in out and "FID-6 0.00," not in out  # not the same 6
    cli.main(["fid", "--generator", str(gen), "--n", "4"])  # too few for k = 5 balls: FID and KID only
    assert "FID-4" in (out := capsys.readouterr().out) and "precision" not in out


@pytest.mark.slow
def test_fid_tracking_during_training(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "inception_extractor", lambda *a, **k: CountingExtractor())
    monkeypatch.setenv("FACEGAN_CACHE", str(tmp_path / "cache"))
    cfg = config.make_config("small32", batch_size=4, data=str(image_folder), max_steps=4, fid_every=2,
                              fid_samples=8)
    state = train.train(cfg, tmp_path / "run", progress=False)
    assert state.history["fid_step"] == [2, 4] and all(np.isfinite(state.history["fid"]))
    assert len(plots.plot_losses(state.history).axes) == 3  # FID beside the losses
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0})
    events.Reload()
    for name in ("fid", "kid", *evaluation.PRDC_KEYS):  # TensorBoard's eval/ group, at each FID step
        assert [e.step for e in events.Scalars(f"eval/{name}")] == [2, 4]
    assert all(0 <= e.value <= 1 for e in events.Scalars("eval/coverage"))


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


# --- precision, recall, density and coverage (evaluation.prdc)

def brute_force_prdc(real: np.ndarray, fake: np.ndarray, k_pr: int, k_dc: int) -> dict[str, float]:
    """The four definitions written out with plain loops: the reference ``prdc`` must equal."""
    def dist(a, b):
        return float(np.sqrt(((a - b) ** 2).sum()))

    def radius(x, i, k):  # distance to the k-th nearest *other* point
        return sorted(dist(x[i], x[j]) for j in range(len(x)) if j != i)[k - 1]

    real_pr = [radius(real, i, k_pr) for i in range(len(real))]
    real_dc = [radius(real, i, k_dc) for i in range(len(real))]
    fake_pr = [radius(fake, j, k_pr) for j in range(len(fake))]
    precision = np.mean([any(dist(f, r) <= real_pr[i] for i, r in enumerate(real)) for f in fake])
    recall = np.mean([any(dist(r, f) <= fake_pr[j] for j, f in enumerate(fake)) for r in real])
    density = np.mean([sum(dist(f, r) <= real_dc[i] for i, r in enumerate(real)) for f in fake]) / k_dc
    coverage = np.mean([min(dist(r, f) for f in fake) <= real_dc[i] for i, r in enumerate(real)])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


@pytest.mark.parametrize("k_pr,k_dc,chunk", [(3, 5, 1024), (1, 2, 7), (4, 4, 5)])
def test_prdc_equals_the_brute_force_definitions(k_pr, k_dc, chunk):
    rng = np.random.default_rng(k_pr)
    real = rng.normal(size=(60, 8))
    fake = rng.normal(0.4, 1.3, size=(45, 8))  # shifted and wider: all four away from 0 and 1
    got = evaluation.prdc(torch.from_numpy(real), torch.from_numpy(fake), k_pr, k_dc, chunk=chunk)
    want = brute_force_prdc(real, fake, k_pr, k_dc)
    assert got == pytest.approx(want, abs=1e-12)
    assert 0 < want["precision"] < 1 and 0 < want["coverage"] < 1  # not a trivial all-in or all-out case


def test_precision_and_recall_agree_with_torch_fidelity():
    """torch-fidelity (installed with torchmetrics[image]) implements Kynkaanniemi et al. at k = 3."""
    prc = pytest.importorskip("torch_fidelity.metric_prc")
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(300, 32, generator=g), torch.randn(250, 32, generator=g) * 1.2
    theirs = prc.calculate_precision_recall_full(fake, real, neighborhood=3)
    ours = evaluation.prdc(real, fake, k_pr=3)
    assert (ours["precision"], ours["recall"]) == pytest.approx(theirs, abs=1e-6)  # theirs: a float32 mean


def manifold(n: int, seed: int, dim: int = 8, ambient: int = 256) -> torch.Tensor:
    """Points on an 8-dimensional plane in 256 dimensions (the same plane for every seed): like Inception
    features of faces, a low-dimensional set in a high-dimensional space."""
    basis = torch.randn(dim, ambient, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) @ basis


def test_prdc_known_answers_on_synthetic_features():
    real, other = manifold(500, 1), manifold(500, 2)
    same = evaluation.prdc(real, other)
    # Two samples of one distribution.  Naeem et al. derive E[density] = 1 and E[coverage] = 1 - 2**-k
    # (0.97 at k = 5); precision and recall fall short of 1 because k = 3 balls around a finite sample
    # leave gaps (0.86 and 0.88 here, lower in more dimensions): "near 1" means well above the failures below.
    assert same["precision"] > 0.75 and same["recall"] > 0.75
    assert 0.85 < same["density"] < 1.15 and same["coverage"] > 0.92
    # A "generator" repeating 5 real samples 100 times: every face is real (precision 1) but it reaches
    # only the 5 faces' neighbourhoods (recall and coverage near 0).
    copies = real[torch.arange(500) % 5]
    repeat = evaluation.prdc(real, copies)
    assert repeat["precision"] == 1.0 and repeat["recall"] < 0.03 and repeat["coverage"] < 0.1
    # Noise with the same mean and spread, in every direction: off the plane, so no face is realistic.
    noise = torch.randn(500, 256, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    noise = noise * real.std() + real.mean()
    off = evaluation.prdc(real, noise)
    assert off["precision"] < 0.02 and off["density"] < 0.02 and off["coverage"] < 0.02
    # (its recall is high: noise's wide k-NN balls swallow the real faces, the flaw density and coverage fix)


def test_a_model_folder_records_all_six_figures_and_its_card_shows_them(tmp_path):
    result = {"fid": 39.634, "kid": 0.02461, "kid_std": 0.001, "precision": 0.7123, "recall": 0.4567,
              "density": 1.0234, "coverage": 0.8766, "n": 10000}
    metrics = export.scored_metrics(result, 10000)
    assert metrics == {"fid_10k": 39.63, "kid_10k": 0.0246, "precision_10k": 0.712, "recall_10k": 0.457,
                       "density_10k": 1.023, "coverage_10k": 0.877}
    assert set(export.scored_metrics(result, 1000)) == {"fid_1k", "kid", *evaluation.PRDC_KEYS}
    card = card_module.render_card({"metrics": metrics}, config.make_config("fast64"), tmp_path, False, 0)
    for row in ("| FID-10000@64 | 39.63 |", "| recall-10000@64 | 0.457 |", "| coverage-10000@64 | 0.877 |"):
        assert row in card


def test_the_second_real_pick_is_disjoint_from_the_reference_and_fixed():
    first, second = evaluation.real_sample_indices(100, 30), evaluation.real_sample_indices(100, 30, pick=1)
    assert len(set(first)) == len(set(second)) == 30 and not set(first) & set(second)
    assert np.array_equal(second, evaluation.real_sample_indices(100, 30, pick=1))


def test_prdc_needs_more_faces_than_k():
    with pytest.raises(ValueError, match="more than 5 faces"):
        evaluation.prdc(torch.randn(5, 4), torch.randn(10, 4))


@pytest.mark.slow
def test_prdc_on_real_faces_through_inception(celeba_dir, inception):
    """The same answers on real Inception features: 100 faces, a disjoint 100, noise and copies."""
    real = evaluation.real_features(100, 32, inception)
    other = evaluation.real_features(100, 32, inception, pick=1)
    noise = evaluation.inception_features(torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8,
                                                        generator=torch.Generator().manual_seed(0)), inception)
    same, off = evaluation.prdc(real, other), evaluation.prdc(real, noise)
    repeat = evaluation.prdc(real, real[torch.arange(100) % 4])
    assert same["precision"] > 0.5 and same["recall"] > 0.5 and same["density"] > 0.6 and same["coverage"] > 0.8
    assert off["precision"] < 0.05 and off["density"] < 0.05 and off["coverage"] < 0.05
    assert repeat["precision"] == 1.0 and repeat["recall"] < 0.1 and repeat["coverage"] < 0.2
