"""facegan: train DCGANs to draw faces. The engine behind ``face_generation.ipynb``.

One module per job, none importing a module that imports it; the map of the modules,
one line each, is docs/layout.md.

``helpers.py`` at the project root re-exports what the notebook teaches;
``problem_unittests.py`` re-exports the learner-facing checks, which live in ``facegan/checks``.
"""
