"""The committed notebook shows a real run: ``python helpers.py notebook`` executes it top to bottom.

Under CI the notebook trains a smoke-sized budget (``in_ci``: 1 epoch of 2,560 faces), so
that ``pytest --nbval`` finishes in minutes; its outputs are noise and must not be what a
visitor sees on GitHub.  This command runs the same cells outside CI mode (the default
preset's full 5 epochs, a few minutes on a 2-core CPU) and writes the outputs into the
notebook, with ``metadata.facegan.run = "full"``; ``tests/test_notebook_outputs.py`` fails
when the committed notebook holds CI-mode outputs.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .config import PROJECT_ROOT

NOTEBOOK = PROJECT_ROOT / "face_generation.ipynb"


def regenerate_outputs(path: str | Path = NOTEBOOK, timeout: int = 3600) -> Path:
    """Execute the notebook in full mode (``CI=0``) in the project root and save it with its outputs."""
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    previous = os.environ.get("CI")
    os.environ["CI"] = "0"  # the kernel inherits it: in_ci() is false, the full budget runs
    start = time.perf_counter()
    try:
        ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(
            nb, {"metadata": {"path": str(PROJECT_ROOT)}})
    finally:
        if previous is None:
            del os.environ["CI"]
        else:
            os.environ["CI"] = previous
    nb.metadata["facegan"] = {"run": "full", "minutes": round((time.perf_counter() - start) / 60, 1)}
    nbformat.write(nb, path)
    return path
