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

#: Where the notebook's set-up cell clones the project from, and the Colab link points to.
PROJECT_URL = "https://github.com/<owner>/face-generation"

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
    from .step import pick_device

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
