"""Data: fetch the processed CelebA faces, find the images, and the classic PIL pipeline.

``ensure_celeba`` gets the data set (an argument, ``$CELEBA_ZIP``, or the official
download), ``resolve_image_dir`` turns ``Config.data`` into a folder of images, and
``get_dataloader`` is the textbook ``DataLoader`` the notebook builds.  Every archive is
extracted atomically, and an extraction remembers which archive it came from, so a
changed archive is extracted again instead of its stale copy being used.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from tqdm.auto import tqdm

from .config import PROJECT_ROOT

CELEBA_URL = ("https://s3.amazonaws.com/video.udacity-data.com/topher/2018/November/"
              "5be7eb6f_processed-celeba-small/processed-celeba-small.zip")
CELEBA_BYTES = 247_694_507
#: Names a local copy of processed-celeba-small.zip; used instead of downloading.
DATA_ENV = "CELEBA_ZIP"
DATA_DIR = PROJECT_ROOT / "processed_celeba_small"
#: Image caches, FID statistics and extracted archives (git-ignored); $FACEGAN_CACHE moves it.
def cache_dir() -> Path:
    """Where image caches, FID statistics and extracted archives go: ``$FACEGAN_CACHE``, else ``.cache/``."""
    return Path(os.environ.get("FACEGAN_CACHE", PROJECT_ROOT / ".cache"))
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DataError(RuntimeError):
    """The data set is missing, incomplete or unreadable; the message says how to fix it."""


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (sorted), skipping non-images such as ``.DS_Store``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern)
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())


def download(url: str, dest: str | Path, expected_bytes: int | None = None) -> Path:
    """Download ``url`` to ``dest`` with a progress bar.

    Bytes go to ``dest.part`` first and are renamed only once complete, so an
    interrupted download never looks like a finished one.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fix = f"Run again to retry, or download the file yourself and set {DATA_ENV} to its path."
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or expected_bytes
            with open(part, "wb") as f, tqdm(total=total, unit="B", unit_scale=True,
                                             desc=f"downloading {dest.name}") as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        got = part.stat().st_size
        if total and got != total:
            raise DataError(f"download of {url} is truncated: got {got:,} of {total:,} bytes. {fix}")
        os.replace(part, dest)
        return dest
    except (http.client.IncompleteRead, ConnectionError, TimeoutError) as e:
        raise DataError(f"download of {url} is truncated ({type(e).__name__}). {fix}") from e
    finally:
        part.unlink(missing_ok=True)  # only left when something went wrong


def archive_identity(zip_path: str | Path) -> dict:
    """What identifies an archive's contents cheaply: its real path, size and a digest of its index.

    The digest covers each member's name, size and CRC from the zip's central directory (about a second
    for the 32,600 faces, nothing decompressed), not the file's time: a fresh copy of the same
    archive (a new machine, a re-synced share) is the same archive and is not extracted again,
    while one with any image changed is.  The path is resolved, so ``../shared/x.zip`` and
    ``/work/shared/x.zip`` are one archive.
    """
    index = hashlib.sha1()
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                index.update(f"{info.filename}|{info.file_size}|{info.CRC}\n".encode())
    except (zipfile.BadZipFile, OSError):
        index.update(b"unreadable")  # never equal to a good archive's stamp; extraction then says why
    return {"path": str(Path(zip_path).resolve()), "bytes": Path(zip_path).stat().st_size,
            "index": index.hexdigest()[:16]}


SOURCE_STAMP = ".source.json"  # written into every extracted folder: the identity of its archive


def extracted_from(folder: Path) -> dict | None:
    """The identity of the archive ``folder`` was extracted from, or None (not ours, or unreadable)."""
    try:
        return json.loads((folder / SOURCE_STAMP).read_text())
    except (OSError, ValueError):
        return None


def keep_member_times(zf: zipfile.ZipFile, root: Path) -> None:
    """Give each extracted file the time stored in the archive, not the time of extraction.

    The image caches and the cached FID features are keyed on file names, sizes and
    times: with the archive's times, extracting the same archive again (a new machine,
    a moved folder) finds them still valid instead of spending minutes rebuilding them.
    """
    for info in zf.infolist():
        target = root / info.filename  # extractall drops unsafe names: those files are not there
        if not info.is_dir() and target.is_file():
            stamp = time.mktime((*info.date_time, 0, 0, -1))
            os.utime(target, (stamp, stamp))


def extract_zip(zip_path: str | Path, dest: str | Path, replace: bool = False) -> Path:
    """Extract ``zip_path`` so that its top folder becomes ``dest``, atomically.

    Members are written to a temporary folder beside ``dest`` and renamed into
    place only when all are out, so a crash never leaves a partial data set
    that looks complete.  ``replace=True`` swaps out an earlier extraction; the
    archive's identity is stamped into ``dest`` (``extracted_from``).
    """
    zip_path, dest = Path(zip_path), Path(dest)
    if not zip_path.is_file():
        raise DataError(f"archive {zip_path} does not exist")
    if not zipfile.is_zipfile(zip_path):
        raise DataError(f"{zip_path} is not a zip archive (truncated or wrong file). "
                        "Download it again, or point to a good copy.")
    if dest.exists() and any(dest.iterdir()) and not replace:
        raise DataError(f"{dest} exists but holds no images; delete it and run again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    try:
        with zipfile.ZipFile(zip_path) as zf:
            broken = zf.testzip()
            if broken is not None:
                raise DataError(f"{zip_path} is corrupt (bad CRC in {broken}). Download it again.")
            zf.extractall(tmp)
            keep_member_times(zf, tmp)
        tops = [p for p in tmp.iterdir() if p.name != "__MACOSX"]
        # Archives usually hold one top folder named like dest: move that one.
        src = tops[0] if len(tops) == 1 and tops[0].is_dir() else tmp
        (src / SOURCE_STAMP).write_text(json.dumps(archive_identity(zip_path)))
        if dest.exists():
            os.replace(dest, old)  # the stale copy goes only once the new one is complete
        os.replace(src, dest)
    except zipfile.BadZipFile as e:
        raise DataError(f"{zip_path} is corrupt ({e}). Download it again.") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return dest


def ensure_celeba(source: str | Path | None = None, data_dir: str | Path = DATA_DIR,
                  url: str = CELEBA_URL, expected_bytes: int | None = CELEBA_BYTES) -> Path:
    """Make sure the processed CelebA faces are present; return the image folder.

    Uses ``data_dir/celeba`` when it already holds images.  Otherwise it gets
    ``processed-celeba-small.zip`` from, in order: ``source`` (a zip path or a
    URL), the ``CELEBA_ZIP`` environment variable, or the official download,
    and extracts it atomically.
    """
    data_dir = Path(data_dir)
    image_dir = data_dir / "celeba"
    local = str(source or os.environ.get(DATA_ENV) or "")
    if image_dir.is_dir() and list_images(image_dir):
        stamp = extracted_from(data_dir)  # None for a folder the user made: always kept
        if stamp is None or not Path(local).is_file() or stamp == archive_identity(local):
            return image_dir
        print(f"{local} is not the archive {data_dir} was extracted from; extracting it again")
        extract_zip(local, data_dir, replace=True)
        return image_dir
    source = local or url
    if source.startswith(("http://", "https://")):
        archive = data_dir.parent / "processed-celeba-small.zip"
        if not archive.is_file():
            print(f"Downloading the processed CelebA faces from {source}")
            download(source, archive, expected_bytes if source == url else None)
        try:
            extract_zip(archive, data_dir)
        except DataError:
            archive.unlink(missing_ok=True)  # a bad download must not be reused next time
            raise
        archive.unlink(missing_ok=True)
    else:
        if not Path(source).is_file():
            raise DataError(f"{source} does not exist. Set {DATA_ENV} to the path of "
                            "processed-celeba-small.zip, or unset it to download the data.")
        extract_zip(source, data_dir)
    if not (image_dir.is_dir() and list_images(image_dir)):
        raise DataError(f"the archive did not contain celeba/*.jpg; {data_dir} holds "
                        f"{sorted(p.name for p in data_dir.iterdir())}")
    return image_dir


def resolve_image_dir(data: str | Path = "celeba", recursive: bool = False) -> Path:
    """Turn ``Config.data`` into a folder of images.

    ``"celeba"`` is the processed set (fetched by ``ensure_celeba``); a folder is
    used as it is (its ``celeba/`` child if it has one); a ``.zip`` is extracted once,
    into ``.cache/data/`` (an archive of one folder of images means that folder).
    """
    if str(data) == "celeba":
        return ensure_celeba()
    path = Path(data)
    if path.suffix == ".zip":
        target = cache_dir() / "data" / path.stem
        if not path.is_file() and extracted_from(target) is None:
            raise DataError(f"archive {path} does not exist; check the --data path")
        # Reuse an extraction only when it came from this very archive (path, size, time):
        # another archive under the same name must not train on the old images.  Once
        # extracted, the archive itself may go.
        if path.is_file() and extracted_from(target) != archive_identity(path):
            if target.exists():
                print(f"{path} changed since it was extracted to {target}; extracting it again")
            extract_zip(path, target, replace=True)
        path = target
    if not path.is_dir():
        raise DataError(f"data {data!r} is neither 'celeba', a folder, nor a .zip archive")
    if (path / "celeba").is_dir():
        path = path / "celeba"
    if str(data).endswith(".zip") and not recursive and not list_images(path):
        subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))]
        path = subdirs[0] if len(subdirs) == 1 else path  # an archive of one folder (img_align_celeba/)
    if not list_images(path, recursive):
        sub = [p.name for p in path.iterdir() if p.is_dir()]
        hint = (f"; its sub-folders {sub} may hold them: pass --recursive true (recursive=True in Python) "
                "or point at one" if sub else "")
        raise DataError(f"no images in {path}{hint}")
    return path


def image_transform(image_size: int, crop: int = 0, flip: bool = True) -> transforms.Compose:
    """PIL image -> tensor in [-1, 1] of shape (3, image_size, image_size).

    With ``crop`` (e.g. 160 for aligned 178x218 CelebA) the face is centre-cropped
    first, then resized; otherwise the image is resized and centre-cropped.
    """
    steps = [transforms.CenterCrop(crop), transforms.Resize(image_size)] if crop else \
            [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    if flip:
        steps.append(transforms.RandomHorizontalFlip())
    # ToTensor gives [0, 1]; Normalize(0.5, 0.5) maps that to [-1, 1], the range of G's tanh.
    steps += [transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
    return transforms.Compose(steps)


def read_image(path: Path):
    """Open an image as RGB, or raise ``DataError`` naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as e:  # PIL raises several types for bad files
        raise DataError(f"cannot read image {path}: {e}. Delete or replace this file "
                        "(or re-extract the data set).") from e


class FaceImages(Dataset):
    """A folder of face images (no class sub-folders needed, unlike ImageFolder)."""

    def __init__(self, folder: str | Path, transform=None, recursive: bool = False, subset: int = 0):
        self.folder = Path(folder)
        self.files = list_images(self.folder, recursive)
        if subset:
            self.files = self.files[:subset]
        if not self.files:
            raise DataError(f"no images found in {self.folder}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        img = read_image(self.files[i])
        return self.transform(img) if self.transform else img


def get_dataloader(batch_size: int, image_size: int, data_dir: str | Path = "celeba",
                   crop: int = 0, subset: int = 0, recursive: bool = False,
                   num_workers: int = 0, shuffle: bool = True, seed: int | None = None) -> DataLoader:
    """A shuffling, batching ``DataLoader`` of face tensors in [-1, 1].

    Each image is resized and centre-cropped to ``image_size`` and flipped left-right
    with probability 0.5 (a free way to double the data).  ``data_dir`` may be
    ``"celeba"`` (the processed set, fetched on demand) or any folder of images.
    """
    folder = resolve_image_dir(data_dir, recursive)
    dataset = FaceImages(folder, image_transform(image_size, crop), recursive, subset)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=True,
                      num_workers=num_workers, generator=generator,
                      persistent_workers=num_workers > 0)


def scale(x: torch.Tensor, feature_range: tuple[float, float] = (-1, 1)) -> torch.Tensor:
    """Map a tensor from [0, 1] to ``feature_range`` (by default the tanh range [-1, 1])."""
    lo, hi = feature_range
    return x * (hi - lo) + lo
