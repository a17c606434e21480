"""The notebook's live view: one output, redrawn in place through a display handle; quiet under CI."""
from __future__ import annotations

import IPython.display
import pytest
import torch

from facegan import live


class FakeHandle:
    def __init__(self):
        self.updates = []

    def update(self, obj):
        self.updates.append(obj)


@pytest.fixture
def notebook(monkeypatch):
    """A stand-in for a running kernel: what ``display`` was asked to show, and the handle it returned."""
    shown = {"displays": [], "handle": FakeHandle()}

    def display(obj, display_id=False):
        shown["displays"].append((obj, display_id))
        return shown["handle"]

    monkeypatch.setattr(live, "in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", display)
    monkeypatch.setenv("CI", "0")
    return shown


def history(n: int) -> dict:
    return {"step": [10 * (i + 1) for i in range(n)], "d_loss": [1.2] * n, "g_loss": [0.8] * n,
            "d_real": [0.7] * n, "d_fake": [0.3] * n}


def test_the_view_is_displayed_once_then_updated_in_place(notebook):
    view = live.LiveView(every=100)
    assert [s for s in (50, 100, 150, 200) if view.due(s)] == [100, 200]
    faces = torch.rand(64, 3, 32, 32) * 2 - 1
    view.update(100, history(10), faces)
    view.update(200, history(20), faces)
    assert len(notebook["displays"]) == 1 and notebook["displays"][0][1] is True  # display_id=True: a handle
    assert len(notebook["handle"].updates) == 1 and view.draws == 2


def test_the_figure_shows_the_faces_and_both_curves():
    fig = live.LiveView().draw(300, history(30), torch.zeros(16, 3, 32, 32))
    faces, losses, scores = fig.axes
    assert faces.get_title() == "G at step 300"
    assert faces.images[0].get_array().shape == (2 * 34 + 2, 8 * 34 + 2, 3)  # 16 faces, 8 a row, 2 px apart
    assert [line.get_label() for line in losses.lines][:2] == ["D", "G"]
    assert [line.get_label() for line in scores.lines][:2] == ["D(x), real", "D(G(z)), fake"]
    assert list(losses.lines[0].get_xdata()) == history(30)["step"]


def test_under_ci_only_the_final_update_draws(notebook, monkeypatch):
    monkeypatch.setenv("CI", "1")
    view = live.LiveView(every=10)
    assert not any(view.due(s) for s in range(1, 101))
    view.update(40, history(4), torch.zeros(64, 3, 32, 32))
    assert len(notebook["displays"]) == 1


def test_outside_ipython_it_draws_nothing_and_a_bad_interval_is_refused(monkeypatch):
    monkeypatch.setattr(live, "in_notebook", lambda: False)
    view = live.LiveView()
    view.update(1, history(1), torch.zeros(4, 3, 32, 32))
    assert view.draws == 0
    with pytest.raises(ValueError, match="every=0"):
        live.LiveView(every=0)
