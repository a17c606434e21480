"""The data: acquisition (local zip, bad zip, present folder, HTTP download), loading and the cache."""
from __future__ import annotations

import http.server
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_celeba_zip

from facegan import batches, data

# --- the real data set

def test_real_set_has_the_standard_32600_images(celeba_dir):
    files = data.list_images(celeba_dir)
    assert len(files) == 32_600
    assert all(f.suffix == ".jpg" for f in files)  # .DS_Store skipped


@pytest.mark.parametrize("size", [32, 64])
def test_real_batches_have_shape_and_range(celeba_dir, size):
    loader = data.get_dataloader(32, size, celeba_dir)
    assert len(loader.dataset) == 32_600
    x = next(iter(loader))
    assert x.shape == (32, 3, size, size) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert x.min() < -0.5 and x.max() > 0.5  # really spans the range, not [0, 1]


def test_full_celeba_crop_pipeline(tmp_path):
    zip_path = Path(__file__).resolve().parents[2] / "shared/data/img-align-celeba-sample.zip"
    if not zip_path.is_file():
        pytest.skip(f"{zip_path} not present")
    folder = data.extract_zip(zip_path, tmp_path / "img_align_celeba")
    assert len(data.list_images(folder)) == 3000
    loader = data.get_dataloader(8, 64, folder, crop=160)
    x = next(iter(loader))
    assert x.shape == (8, 3, 64, 64) and -1 <= x.min() < 0 < x.max() <= 1


def test_scale_maps_unit_interval():
    x = torch.tensor([0.0, 0.25, 1.0])
    assert torch.allclose(data.scale(x), torch.tensor([-1.0, -0.5, 1.0]))
    assert torch.allclose(data.scale(x, (0, 255)), torch.tensor([0.0, 63.75, 255.0]))


# --- folders of images

def test_non_images_skipped_and_subfolders_optional(image_folder):
    assert len(data.list_images(image_folder)) == 12
    assert len(data.list_images(image_folder, recursive=True)) == 15
    assert len(data.FaceImages(image_folder, recursive=True)) == 15


def test_unreadable_image_error_names_the_file(image_folder):
    bad = image_folder / "005.jpg"
    bad.write_bytes(b"this is not a jpeg")
    ds = data.FaceImages(image_folder, data.image_transform(32))
    with pytest.raises(data.DataError, match="005.jpg"):
        ds[5]


def test_missing_folder_error_is_clear(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.FaceImages(tmp_path / "nope")


# --- acquisition

def test_local_zip_is_extracted(tmp_path):
    archive = make_celeba_zip(tmp_path / "processed-celeba-small.zip", n=10)
    folder = data.ensure_celeba(archive, data_dir=tmp_path / "processed_celeba_small")
    assert folder == tmp_path / "processed_celeba_small" / "celeba"
    assert len(data.list_images(folder)) == 10
    assert not list(tmp_path.glob(".*partial*"))  # the temporary folder is gone


def test_local_zip_from_environment_variable(tmp_path, monkeypatch):
    archive = make_celeba_zip(tmp_path / "x.zip", n=4)
    monkeypatch.setenv(data.DATA_ENV, str(archive))
    folder = data.ensure_celeba(data_dir=tmp_path / "data")
    assert len(data.list_images(folder)) == 4


def test_present_folder_is_used_without_any_source(tmp_path):
    archive = make_celeba_zip(tmp_path / "a.zip", n=3)
    data_dir = tmp_path / "processed_celeba_small"
    data.ensure_celeba(archive, data_dir=data_dir)
    archive.unlink()
    # The source no longer exists: if ensure_celeba touched it, this would fail.
    assert len(data.list_images(data.ensure_celeba(archive, data_dir=data_dir))) == 3


@pytest.mark.parametrize("content", [b"not a zip at all", "truncated"])
def test_bad_zip_gives_clear_error_and_leaves_nothing(tmp_path, content):
    archive = tmp_path / "processed-celeba-small.zip"
    if content == "truncated":
        good = make_celeba_zip(tmp_path / "good.zip", n=10).read_bytes()
        archive.write_bytes(good[: len(good) // 2])
    else:
        archive.write_bytes(content)
    data_dir = tmp_path / "processed_celeba_small"
    with pytest.raises(data.DataError, match="not a zip|corrupt"):
        data.ensure_celeba(archive, data_dir=data_dir)
    assert not data_dir.exists()
    assert not list(tmp_path.glob(".*partial*"))


def test_missing_local_zip_names_the_variable(tmp_path):
    with pytest.raises(data.DataError, match=data.DATA_ENV):
        data.ensure_celeba(tmp_path / "missing.zip", data_dir=tmp_path / "d")


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate = False

    def log_message(self, *args):
        pass

    def do_GET(self):
        if not self.truncate:
            return super().do_GET()
        body = Path(self.directory, self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])  # the connection drops half-way


@pytest.fixture
def http_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    make_celeba_zip(served / "processed-celeba-small.zip", n=7)
    servers = []

    def start(truncate: bool = False) -> str:
        handler = type("H", (_Handler,), {"truncate": truncate})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(served)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/processed-celeba-small.zip"

    yield start
    for s in servers:
        s.shutdown()


def test_download_from_local_server(tmp_path, http_server):
    data_dir = tmp_path / "proj" / "processed_celeba_small"
    folder = data.ensure_celeba(http_server(), data_dir=data_dir)
    assert len(data.list_images(folder)) == 7
    assert not list((tmp_path / "proj").glob("*.zip*"))  # the archive is removed after extraction


def test_truncated_download_is_reported_and_removed(tmp_path, http_server):
    data_dir = tmp_path / "proj" / "processed_celeba_small"
    with pytest.raises(data.DataError, match="truncated"):
        data.ensure_celeba(http_server(truncate=True), data_dir=data_dir)
    assert not data_dir.exists()
    assert not list((tmp_path / "proj").glob("*.zip*"))


# --- the fast path: uint8 cache

def test_cache_yields_exactly_the_decoded_images(celeba_dir, tmp_path):
    files = data.list_images(celeba_dir)[:64]
    for size in (32, 64):
        cache = batches.build_image_cache(files, size, cache_dir=tmp_path)
        fast = batches.uint8_to_model_range(torch.from_numpy(np.array(cache[:64])))
        tf = data.image_transform(size, flip=False)
        plain = torch.stack([tf(data.read_image(f)) for f in files])
        assert torch.equal(fast, plain)


def test_cache_batches_flip_half_the_images(celeba_dir, tmp_path):
    files = data.list_images(celeba_dir)[:512]
    cache = batches.build_image_cache(files, 32, cache_dir=tmp_path)
    flat = batches.CachedBatches(cache, 512, seed=0, flip=False)
    flipped = batches.CachedBatches(cache, 512, seed=0, flip=True)
    a, b = next(flat.epoch(0)), next(flipped.epoch(0))
    is_flipped = (a != b).flatten(1).any(1)
    assert torch.equal(b[is_flipped], a[is_flipped].flip(3))
    assert 0.4 < is_flipped.float().mean() < 0.6  # p = 0.5; 512 draws put it within 0.4..0.6
    # same seed and epoch, same batches; another epoch, another order
    assert torch.equal(next(flipped.epoch(0)), b)
    assert not torch.equal(next(flipped.epoch(1)), b)


def test_cache_rebuilds_when_source_changes(image_folder, tmp_path):
    cache_dir = tmp_path / "cache"
    files = data.list_images(image_folder)
    legacy = cache_dir / "faces-32px-c0-0123456789abcdef.npy"  # the naming before source tags
    cache_dir.mkdir()
    legacy.write_bytes(b"old")
    first = batches.build_image_cache(files, 32, cache_dir=cache_dir, num_workers=0)
    assert not legacy.exists()
    again = batches.build_image_cache(files, 32, cache_dir=cache_dir, num_workers=0)
    assert again.filename == first.filename  # reused
    from conftest import jpeg_bytes
    files[0].write_bytes(jpeg_bytes(999, size=(50, 50)))  # rewrite one image
    rebuilt = batches.build_image_cache(files, 32, cache_dir=cache_dir, num_workers=0)
    assert rebuilt.filename != first.filename
    assert not np.array_equal(rebuilt[0], first[0]) and np.array_equal(rebuilt[1:], first[1:])
    # the stale cache is deleted (an open memmap keeps reading it), other subsets are kept
    assert not Path(first.filename).exists() and Path(rebuilt.filename).exists()
    subset = batches.build_image_cache(files[:4], 32, cache_dir=cache_dir, num_workers=0)
    other_size = batches.build_image_cache(files, 16, cache_dir=cache_dir, num_workers=0)
    assert {Path(a.filename) for a in (rebuilt, subset, other_size)} == set(cache_dir.glob("*.npy"))
    assert np.array_equal(first[1:], rebuilt[1:])


def test_any_zip_of_faces_is_extracted_once_into_the_cache(tmp_path, monkeypatch):
    import zipfile

    from conftest import jpeg_bytes

    monkeypatch.setenv("FACEGAN_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "my-faces.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(5):
            zf.writestr(f"img_align_celeba/{i:06d}.jpg", jpeg_bytes(i, size=(178, 218)))
    folder = data.resolve_image_dir(str(archive))
    assert folder.is_relative_to(tmp_path / "cache") and len(data.list_images(folder)) == 5
    archive.unlink()  # already extracted: the archive is not needed again
    assert data.resolve_image_dir(str(tmp_path / "my-faces.zip")) == folder
    x = next(iter(data.get_dataloader(4, 64, folder, crop=160)))
    assert x.shape == (4, 3, 64, 64)


def test_failed_cache_build_leaves_no_partial_file(image_folder, tmp_path):
    (image_folder / "003.jpg").write_bytes(b"broken")
    with pytest.raises(data.DataError, match="003.jpg"):
        batches.build_image_cache(data.list_images(image_folder), 32, cache_dir=tmp_path / "cache", num_workers=0)
    assert list((tmp_path / "cache").iterdir()) == []


def test_extracting_the_same_archive_again_keeps_the_cache_keys(tmp_path):
    """Files keep the archive's times, so caches and cached FID features survive a re-extraction."""
    archive = make_celeba_zip(tmp_path / "processed-celeba-small.zip", n=5)
    data_dir = tmp_path / "processed_celeba_small"
    before = batches.cache_key(data.list_images(data.ensure_celeba(archive, data_dir=data_dir)), 32, 0)
    data.extract_zip(archive, data_dir, replace=True)
    assert batches.cache_key(data.list_images(data_dir / "celeba"), 32, 0) == before


def test_a_relative_path_to_the_same_archive_is_the_same_archive(tmp_path, monkeypatch, capsys):
    (tmp_path / "shared").mkdir()
    archive = make_celeba_zip(tmp_path / "shared" / "processed-celeba-small.zip", n=3)
    data_dir = tmp_path / "main" / "processed_celeba_small"
    data.ensure_celeba(archive, data_dir=data_dir)
    monkeypatch.chdir(tmp_path / "main")
    data.ensure_celeba("../shared/processed-celeba-small.zip", data_dir=data_dir)
    assert "again" not in capsys.readouterr().out
