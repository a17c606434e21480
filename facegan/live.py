"""A live view for a training loop in a notebook: the latest faces and the curves, redrawn in place.

    view = helpers.LiveView(every=100)
    for ...:                                    # the training loop
        ...
        if view.due(step):
            view.update(step, history, helpers.generate(G, fixed_z))
    view.update(step, history, helpers.generate(G, fixed_z))   # the final state

Watching the faces emerge is the moment a learner waits for, so the view shows them while the loop
runs rather than after it.  It is one output of the cell, replaced through an IPython display
handle (``display(..., display_id=True)`` then ``handle.update``): the cell does not fill with
figures, and a saved notebook keeps the last one.  Under CI (``in_ci()``) ``due`` is never true,
so the smoke run draws once, at the final update: cheap, and not dependent on timing.  Outside
IPython (a script) ``update`` draws nothing.
"""
from __future__ import annotations

import math

import torch

from .config import in_ci


def in_notebook() -> bool:
    """Whether an IPython shell (a notebook's kernel) is running: the only place the view can show."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


class LiveView:
    """One figure, redrawn every ``every`` steps: the fixed-latent faces, the losses, D's verdicts."""

    def __init__(self, every: int = 100, nrow: int = 8):
        if every < 1:
            raise ValueError(f"every={every}: the view redraws every N steps, N >= 1 (100 suits a CPU)")
        self.every, self.nrow = every, nrow
        self.live = not in_ci()
        self.handle = None  # IPython's DisplayHandle once the view is shown
        self.draws = 0

    def due(self, step: int) -> bool:
        """Whether to redraw at ``step`` (never under CI: the smoke run draws only its final state)."""
        return self.live and step > 0 and step % self.every == 0

    def update(self, step: int, history: dict, images: torch.Tensor) -> None:
        """Redraw the view in place with G's latest ``images`` (N x 3 x S x S) and the ``history`` so far."""
        if not in_notebook():
            return
        import matplotlib.pyplot as plt
        from IPython.display import display

        fig = self.draw(step, history, images)
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        plt.close(fig)  # shown through the handle only, not again at the end of the cell
        self.draws += 1

    def draw(self, step: int, history: dict, images: torch.Tensor):
        """The figure: faces at ``step`` | D's and G's losses | D(x) and D(G(z)), with chance dotted."""
        import matplotlib.pyplot as plt

        from .plots import image_grid

        fig, (faces, losses, scores) = plt.subplots(1, 3, figsize=(14, 4), gridspec_kw={"width_ratios": (1, 1.4, 1.4)})
        faces.imshow(image_grid(images.detach().cpu(), self.nrow))
        faces.set_title(f"G at step {step:,}")
        faces.axis("off")
        steps = history.get("step", [])
        for key, label, ax in (("d_loss", "D", losses), ("g_loss", "G", losses),
                               ("d_real", "D(x), real", scores), ("d_fake", "D(G(z)), fake", scores)):
            values = history.get(key, [])
            if values:
                ax.plot(steps[:len(values)], values, label=label, alpha=0.85)
        losses.axhline(2 * math.log(2), color="C0", ls=":", lw=1)  # D at chance
        losses.axhline(math.log(2), color="C1", ls=":", lw=1)  # G at chance
        scores.axhline(0.5, color="gray", ls=":", lw=1)
        losses.set(xlabel="step", ylabel="loss", title="Training losses (dotted: at chance)")
        scores.set(xlabel="step", ylabel="mean D output", title="What D thinks", ylim=(-0.02, 1.02))
        for ax in (losses, scores):
            if steps:
                ax.legend(loc="upper right")
        fig.tight_layout()
        return fig
