"""Set up a fresh machine for the notebook (Google Colab, a new laptop): packages, data, device.

The notebook's first cell clones the project when it runs outside it (Colab opens the
notebook alone), then calls ``prepare()``.  Where the packages and the data are already
present, ``prepare`` installs and downloads nothing: it only reports the device.
Nothing here imports torch before the packages are checked.
"""
from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys

#: The project's GitHub repository, owner/name: the one place its address is written.  Everything else
#: follows from it: the clone URL of the notebook's set-up cell and its "Open in Colab" badges (the
#: exercise's badge is generated from it by facegan/exercise.py; tests/test_exercise.py checks that both
#: notebooks' links match it).
PROJECT_REPO = "facegan-project/face-generation"
PROJECT_BRANCH = "main"
#: Where the notebook's set-up cell clones the project from.
PROJECT_URL = f"https://github.com/{PROJECT_REPO}"


def colab_url(notebook: str) -> str:
    """The address that opens ``notebook`` (a path inside the repository) in Google Colab."""
    return f"https://colab.research.google.com/github/{PROJECT_REPO}/blob/{PROJECT_BRANCH}/{notebook}"


def colab_badge(notebook: str) -> str:
    """The Markdown "Open in Colab" badge for ``notebook``."""
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook)})"

#: What the notebook imports -> the pip package that provides it.
NOTEBOOK_PACKAGES = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "PIL": "pillow",
                     "matplotlib": "matplotlib", "tqdm": "tqdm", "ipywidgets": "ipywidgets"}


def missing_packages(packages: dict[str, str] = NOTEBOOK_PACKAGES) -> list[str]:
    """The pip names of the packages that cannot be imported here."""
    return [pip for module, pip in packages.items() if importlib.util.find_spec(module) is None]


def in_colab() -> bool:
    return "google.colab" in sys.modules


def prepare(fetch_data: bool = True, run=subprocess.run):
    """Install the missing packages, fetch the data if it is not here, and return the device (the GPU if any)."""
    missing = missing_packages()
    if missing:
        print(f"installing {', '.join(missing)}")
        run([sys.executable, "-m", "pip", "install", "--quiet", *missing], check=True)
        importlib.invalidate_caches()
    from .data import ensure_celeba
    from .device import pick_device

    data = ensure_celeba() if fetch_data else None
    device = pick_device()
    if device.type == "cuda":
        import torch

        where = f"GPU {torch.cuda.get_device_name(device)}"
    else:
        where = device.type
        if in_colab():
            print("No GPU here: in Colab pick Runtime > Change runtime type > GPU and run again "
                  "(the CPU works too, only slower).")
    print(f"ready: packages {'installed' if missing else 'present'}, "
          f"{'data in ' + data.parent.name + '/' + data.name if data else 'data not checked'}, training on {where}")
    return device
