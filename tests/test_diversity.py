"""The copying and collapse view (facegan/diversity.py, plots.plot_diversity): planted copiers and collapsers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import jpeg_bytes

from facegan import batches, config, data, diversity, plots

N_IMAGES = 48


@pytest.fixture
def faces(tmp_path, monkeypatch) -> tuple[config.Config, np.ndarray]:
    """A data set of 48 synthetic 32x32 images, its Config and its uint8 cache (NHWC)."""
    monkeypatch.setenv("FACEGAN_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(N_IMAGES):
        (folder / f"{i:03d}.jpg").write_bytes(jpeg_bytes(i, (32, 32)))
    cfg = config.make_config("small32", data=str(folder))
    return cfg, np.array(batches.build_image_cache(data.list_images(folder), 32))


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def fresh_faces(n: int, seed: int = 1000) -> torch.Tensor:
    """New images of the same kind as the data set (other seeds of the same JPEG noise): an honest generator."""
    import io

    from PIL import Image

    return torch.stack([torch.from_numpy(np.array(Image.open(io.BytesIO(jpeg_bytes(seed + i, (32, 32))))))
                        for i in range(n)]).permute(0, 3, 1, 2).contiguous()


def test_a_copier_sits_at_zero_and_an_honest_generator_among_the_real_faces(faces):
    cfg, images = faces
    copies = nchw(images[:16])
    copier = diversity.diversity_report(None, cfg, fakes=copies, n_real=16)
    assert copier.reference == "leave-one-out"
    assert copier.fake_distances.max() < 0.01 and copier.copied == 1.0  # every face is a training face
    assert torch.equal(copier.nearest, torch.arange(16))  # ... and the search finds which one
    # the real reference is searched leave-one-out: each face's own copy never counts
    assert copier.real_distances.min() > 0.1 and copier.threshold > 0.1
    honest = diversity.diversity_report(None, cfg, fakes=fresh_faces(16), n_real=16)
    assert honest.copied < 0.2 and honest.repeated == 0.0
    assert abs(honest.fake_distances.median() - honest.real_distances.median()) < 0.05


def test_a_collapsed_generator_shows_its_repeated_faces(faces):
    cfg, images = faces
    few = nchw(images[[3, 7, 11]])
    collapsed = torch.cat([few[torch.arange(20) % 3], fresh_faces(4)])  # 3 faces drawn ~7 times each, 4 others
    report = diversity.diversity_report(None, cfg, fakes=collapsed, n_real=16)
    assert report.repeats[:20].min() >= 5 and report.repeats[20:].max() == 0
    assert report.real_repeats.max() == 0  # distinct real faces are never near-duplicates
    assert report.repeated == pytest.approx(20 / 24)
    assert set(report.most_repeated(3).tolist()) <= set(range(20))
    assert "83.3% have a near-duplicate" in report.summary()


def test_held_out_faces_are_the_reference_when_the_generator_had_some(faces):
    cfg, images = faces
    cfg = config.make_config("small32", data=cfg.data, holdout=10)
    held = nchw(images[N_IMAGES - 10:])
    report = diversity.diversity_report(None, cfg, fakes=held[:6], n_real=10)
    assert report.reference == "held-out" and len(report.real_distances) == 10
    # copies of held-out faces are not copies of training faces: they are searched only among the other 38
    assert report.fake_distances.min() > 0.1 and report.nearest.max() < N_IMAGES - 10
    assert torch.equal(report.fake_distances, report.real_distances[:6])


def test_the_view_needs_two_faces_a_side(faces):
    cfg, images = faces
    with pytest.raises(ValueError, match="at least 2 generated"):
        diversity.diversity_report(None, cfg, fakes=nchw(images[:1]), n_real=4)


def test_plot_diversity_draws_both_parts_and_writes_a_png(faces, tmp_path):
    cfg, images = faces
    report = diversity.diversity_report(None, cfg, fakes=nchw(images[np.arange(12) % 4]), n_real=12)
    fig = plots.plot_diversity(report, tmp_path / "view.png", n_faces=5)
    histogram, *shown = fig.axes
    assert len(shown) == 5 and len(histogram.patches) > 0
    assert "100.0% of generated faces" in histogram.get_title()
    assert [ax.get_title() for ax in shown] == ["2 near-dup."] * 5  # each of the 4 faces is drawn 3 times
    assert Path(tmp_path / "view.png").stat().st_size > 10_000
