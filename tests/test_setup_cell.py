"""The notebook's first cell: on a fresh machine it installs what is missing and fetches the data;
where both are present it installs and downloads nothing; it picks the GPU when there is one."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import torch
from conftest import make_celeba_zip

from facegan import config, data, setup
from facegan import device as device_policy

NOTEBOOK = Path(config.PROJECT_ROOT) / "face_generation.ipynb"


def _record(calls):
    def run(cmd, check):
        calls.append(cmd)
    return run


def test_nothing_to_do_on_a_ready_machine(monkeypatch, capsys, tmp_path):
    calls, fetched = [], []
    monkeypatch.setattr(data, "ensure_celeba", lambda: fetched.append(1) or tmp_path / "celeba")
    monkeypatch.setattr(device_policy, "pick_device", lambda: torch.device("cpu"))
    assert setup.missing_packages() == []
    assert setup.prepare(run=_record(calls)) == torch.device("cpu")
    assert calls == [] and fetched == [1]  # ensure_celeba returns at once when the images are there
    assert "packages present" in capsys.readouterr().out


def test_installs_only_the_missing_packages(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("ipywidgets", "PIL") else real_find_spec(name, *a))
    monkeypatch.setattr(data, "ensure_celeba", lambda: tmp_path / "celeba")
    calls = []
    setup.prepare(run=_record(calls))
    assert len(calls) == 1 and calls[0][1:4] == ["-m", "pip", "install"]
    assert calls[0][-2:] == ["pillow", "ipywidgets"]


def test_fetches_the_data_when_missing(monkeypatch, tmp_path):
    """No images yet: prepare() gets them (here from a local archive, as $CELEBA_ZIP would give)."""
    archive = make_celeba_zip(tmp_path / "processed-celeba-small.zip")
    target = tmp_path / "data"
    monkeypatch.setattr(data, "ensure_celeba", lambda: _original_ensure(archive, target))
    monkeypatch.setattr(device_policy, "pick_device", lambda: torch.device("cpu"))
    setup.prepare(run=_record([]))
    assert len(data.list_images(target / "celeba")) == 10


def test_picks_the_gpu(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(data, "ensure_celeba", lambda: tmp_path / "celeba")
    monkeypatch.setattr(device_policy, "pick_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert setup.prepare(run=_record([])).type == "cuda"
    assert "GPU Tesla T4" in capsys.readouterr().out


def test_colab_without_gpu_says_how_to_get_one(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(data, "ensure_celeba", lambda: tmp_path / "celeba")
    monkeypatch.setattr(device_policy, "pick_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(setup, "in_colab", lambda: True)
    setup.prepare(run=_record([]))
    assert "Runtime > Change runtime type > GPU" in capsys.readouterr().out


def test_the_notebook_starts_with_the_setup_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first_code = next(c.source for c in nb.cells if c.cell_type == "code")
    assert "prepare()" in first_code and 'os.path.exists("helpers.py")' in first_code
    assert "colab.research.google.com" in nb.cells[0].source


_original_ensure = data.ensure_celeba
