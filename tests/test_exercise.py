"""Instructor checks: the exercise notebook is generated from the solution, its checks fail helpfully
on the untouched scaffolds, the same checks pass on the solution, and the exercise filled in with a
learner's solution runs top to bottom, training the learner's networks."""
from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import time
import warnings
from pathlib import Path

import nbformat
import pytest
import torch

import helpers
import problem_unittests
from facegan import cli, config, exercise, models, setup
from facegan.updates import make_optimizers

ROOT = Path(config.PROJECT_ROOT)
SOLUTION, EXERCISE = ROOT / "face_generation.ipynb", ROOT / "face_generation_exercise.ipynb"

#: What a learner writes into the scaffolds: written from the stubs' signatures, not copied from facegan.
LEARNER_SOLUTION = {
    "get_dataloader": '''
def get_dataloader(batch_size, image_size, data_dir="celeba"):
    transform = transforms.Compose([
        transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    dataset = helpers.FaceImages(helpers.resolve_image_dir(data_dir), transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
''',
    "scale": '''
def scale(x, feature_range=(-1, 1)):
    lo, hi = feature_range
    return x * (hi - lo) + lo
''',
    "Discriminator": '''
class Discriminator(nn.Module):
    def __init__(self, conv_dim=32, n_layers=3):
        super().__init__()
        layers, in_ch = [], 3
        for i in range(n_layers):
            out_ch = conv_dim * 2**i
            layers += [nn.Conv2d(in_ch, out_ch, 4, 2, 1)] + ([nn.BatchNorm2d(out_ch)] if i else [])
            layers.append(nn.LeakyReLU(0.2))
            in_ch = out_ch
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch * (32 // 2**n_layers) ** 2, 1)

    def forward(self, x):
        x = self.conv(x)
        return self.fc(x.view(x.size(0), -1))  # .view: fine in the notebook's loop
''',
    "Generator": '''
class Generator(nn.Module):
    def __init__(self, z_size=100, conv_dim=32, n_layers=3):
        super().__init__()
        self.top, self.side = conv_dim * 2**(n_layers - 1), 32 // 2**n_layers
        self.fc = nn.Linear(z_size, self.top * self.side**2)
        layers, ch = [nn.BatchNorm2d(self.top), nn.ReLU()], self.top
        for _ in range(n_layers - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1), nn.BatchNorm2d(ch // 2), nn.ReLU()]
            ch //= 2
        self.net = nn.Sequential(*layers, nn.ConvTranspose2d(ch, 3, 4, 2, 1))

    def forward(self, z):
        return torch.tanh(self.net(self.fc(z).view(-1, self.top, self.side, self.side)))
''',
    "weights_init_normal": '''
def weights_init_normal(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
''',
    "real_loss": '''
def real_loss(D_out, smooth=False):
    labels = torch.ones(D_out.size(0)) * (0.9 if smooth else 1.0)
    return nn.BCEWithLogitsLoss()(D_out.squeeze(1), labels.to(D_out.device))
''',
    "fake_loss": '''
def fake_loss(D_out):
    return nn.BCEWithLogitsLoss()(D_out.squeeze(1), torch.zeros(D_out.size(0), device=D_out.device))
''',
    "d_optimizer": "d_optimizer = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))",
    "g_optimizer": "g_optimizer = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))",
    "discriminator_step": '''
def discriminator_step(D, G, d_optimizer, real_images, z, smooth=False):
    d_optimizer.zero_grad()
    fake_images = G(z).detach()
    d_loss = real_loss(D(real_images), smooth) + fake_loss(D(fake_images))
    d_loss.backward()
    d_optimizer.step()
    return d_loss.item()
''',
    "generator_step": '''
def generator_step(D, G, g_optimizer, z):
    g_optimizer.zero_grad()
    g_loss = real_loss(D(G(z)))
    g_loss.backward()
    g_optimizer.step()
    return g_loss.item()
''',
}


def fill_scaffolds(source: str, solutions: dict[str, str] = LEARNER_SOLUTION) -> str:
    """Replace each stub (def, class or `name = None`) in an exercise cell with the learner's code."""
    lines = source.split("\n")
    nodes = [n for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Assign))]
    for node in sorted(nodes, key=lambda n: n.lineno, reverse=True):
        name = node.targets[0].id if isinstance(node, ast.Assign) else node.name
        if name in solutions:
            lines[node.lineno - 1:node.end_lineno] = solutions[name].strip("\n").split("\n")
    return "\n".join(lines)


def test_committed_exercise_is_up_to_date(tmp_path):
    fresh = exercise.make_exercise_notebook(SOLUTION, tmp_path / "exercise.ipynb")
    assert fresh.read_text() == EXERCISE.read_text(), \
        "face_generation_exercise.ipynb is stale: run `python helpers.py exercise` and commit it"


def test_exercise_has_no_solutions_outputs_or_test_markers():
    nb = nbformat.read(EXERCISE, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert exercise.BEGIN_SOLUTION not in code and "from helpers import" not in code
    assert "NBVAL_CHECK_OUTPUT" not in code
    assert code.count("raise NotImplementedError") >= 10
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_exercise_is_committed_as_a_learner_receives_it():
    """No outputs, no execution counts, no execution metadata: never run, in the committed file itself."""
    raw = json.loads(EXERCISE.read_text())
    code = [c for c in raw["cells"] if c["cell_type"] == "code"]
    assert code
    with_outputs = [i for i, c in enumerate(code) if c.get("outputs")]
    counted = [i for i, c in enumerate(code) if c.get("execution_count") is not None]
    assert not with_outputs and not counted, \
        f"face_generation_exercise.ipynb was run (code cells {with_outputs or counted}): regenerate it with " \
        "`python helpers.py exercise` instead of saving it from Jupyter"
    assert not any("execution" in c.get("metadata", {}) for c in code)
    assert set(raw["metadata"]) <= {"kernelspec", "language_info"}


def test_stubs_show_only_what_the_learner_writes():
    code = "\n".join(c.source for c in nbformat.read(EXERCISE, as_version=4).cells if c.cell_type == "code")
    for helper_only in ("norm:", "norm=", "dropout", "spectral", "num_workers", "crop", "recursive", "activation"):
        assert helper_only not in code, helper_only
    # the TODOs are a nudge, not the lines: those are in the collapsed hints below each cell
    assert "zero_grad" not in code and "BCEWithLogitsLoss()" not in code and "normal_(" not in code
    hints = [c.source for c in nbformat.read(EXERCISE, as_version=4).cells
             if c.cell_type == "markdown" and "<details>" in c.source]
    assert len(hints) == 7
    assert all(h.index("<summary>Hint") < h.index("<summary>Still stuck?") for h in hints)


def _exercise_cells(path: Path) -> list[str]:
    """The code cells that hold a solution region (or its scaffold) and its checks."""
    nb = nbformat.read(path, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code" and "tests.test_" in c.source
            and (exercise.BEGIN_SOLUTION in c.source or "Your code goes here" in c.source)]


def _namespace(celeba_batch) -> dict:
    """What the notebook has defined by the time it reaches the exercise cells."""
    cfg = config.make_config("small32")
    D, G = models.build_models(cfg)
    images = torch.nn.functional.interpolate(celeba_batch, size=32, mode="area")
    return {"torch": torch, "helpers": helpers, "tests": problem_unittests, "cfg": cfg, "D": D, "G": G,
            "images": images}


def test_scaffolds_fail_with_helpful_messages(celeba_batch):
    cells = _exercise_cells(EXERCISE)
    assert len(cells) == 7
    ns = _namespace(celeba_batch)
    ns["d_optimizer"], ns["g_optimizer"] = make_optimizers(ns["D"], ns["G"], ns["cfg"])
    for source in cells:
        with pytest.raises(problem_unittests.CheckFailed, match="not implemented yet") as info:
            exec(compile(source, "<exercise cell>", "exec"), dict(ns))
        assert "raise NotImplementedError" in str(info.value) or "torch.optim.Adam" in str(info.value)


@pytest.mark.slow
def test_the_same_checks_pass_on_the_solution(celeba_batch):
    cells = _exercise_cells(SOLUTION)
    assert len(cells) == 7
    ns = _namespace(celeba_batch)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for source in cells:
            exec(compile(source, "<solution cell>", "exec"), ns)
    assert out.getvalue().count("Tests Passed") == 9


def test_filling_in_one_scaffold_makes_its_check_pass(celeba_batch, capsys):
    cell = next(c for c in _exercise_cells(EXERCISE) if "def weights_init_normal" in c)
    exec(compile(fill_scaffolds(cell), "<filled cell>", "exec"), _namespace(celeba_batch))
    assert "Tests Passed: weights" in capsys.readouterr().out


@pytest.mark.slow
def test_filled_exercise_runs_top_to_bottom(celeba_dir, monkeypatch, tmp_path):
    """The whole exercise, every scaffold filled with a learner's code, executed like a learner would (CI budget):
    the checks pass and the notebook's loop trains the learner's networks with the learner's steps."""
    from nbclient import NotebookClient

    monkeypatch.setenv("CI", "1")
    nb = nbformat.read(EXERCISE, as_version=4)
    filled = 0
    for cell in nb.cells:
        if cell.cell_type == "code" and "Your code goes here" in cell.source:
            cell.source = fill_scaffolds(cell.source)
            filled += 1
    stubs_left = [c.source for c in nb.cells if c.cell_type == "code" and "    raise NotImplementedError" in c.source]
    assert filled == 7 and not stubs_left
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    seconds = time.perf_counter() - start
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert text.count("Tests Passed") == 9
    assert "epoch 1/1: step 40," in text  # the learner's loop trained its 40 CI steps
    nbformat.write(nb, tmp_path / "filled_exercise.ipynb")
    warnings.warn(f"the filled-in exercise notebook ran top to bottom in {seconds:.0f} s (CI budget)", stacklevel=1)


# --- what a visitor and a learner meet

def _notebooks():
    return {path.name: nbformat.read(path, as_version=4) for path in (SOLUTION, EXERCISE)}


def test_badges_and_clone_address_follow_project_repo():
    """PROJECT_REPO is the one place the repository's address is written: each notebook's badge opens that
    notebook there, and the set-up cell clones it."""
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", setup.PROJECT_REPO) and "owner" not in setup.PROJECT_REPO
    for name, nb in _notebooks().items():
        badges = re.findall(r"https://colab\.research\.google\.com/github/[^)\s]+", nb.cells[0].source)
        assert badges == [setup.colab_url(name)], \
            f"{name}'s Colab badge is {badges}, not {setup.colab_url(name)}: fix the solution's first cell (from " \
            "facegan.setup.colab_badge) and run `python helpers.py exercise`"
        setup_cell = next(c.source for c in nb.cells if c.cell_type == "code")
        assert re.findall(r"https://github\.com/[^\s\"']+", setup_cell) == [setup.PROJECT_URL]
        assert f'os.chdir("{setup.PROJECT_REPO.split("/")[1]}")' in setup_cell
    for path in (SOLUTION, EXERCISE, ROOT / "facegan" / "setup.py", ROOT / "facegan" / "exercise.py"):
        assert "<owner>" not in path.read_text(), path.name


def test_exercise_first_cell_speaks_to_the_learner():
    first = nbformat.read(EXERCISE, as_version=4).cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# Face generation")
    assert setup.colab_url(EXERCISE.name) in first.source
    assert "yours to write" in first.source and "raise NotImplementedError" in first.source
    for maintainer_talk in ("solution notebook", "Generated from", "helpers.py exercise", "edit the"):
        assert maintainer_talk not in first.source


def test_todos_state_what_the_checks_demand():
    nb = nbformat.read(EXERCISE, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    todos = " ".join(re.sub(r"\s*#\s*", " ", m) for m in re.findall(r"# TODO:.*(?:\n\s*# .*)*", code))
    assert "takes exactly conv_dim channels" in todos                     # G's last transposed convolution
    assert "from z_size to a small deep feature map, followed by BatchNorm and ReLU" in todos
    assert "with tanh alone after it" in todos
    assert "two separate calls to D" in todos and "BatchNorm would mix their statistics" in todos
    assert 'data_dir="celeba" names the processed CelebA set, not a folder path' in todos
    assert "resolve_image_dir" in todos and "FaceImages" in todos
    assert "cfg.lr_d" in todos and "cfg.lr_g" in todos
    markdown = "\n".join(c.source for c in nbformat.read(SOLUTION, as_version=4).cells if c.cell_type == "markdown")
    for demand in ("takes exactly `conv_dim`", "**BatchNorm, then ReLU**, after every hidden layer, the linear "
                   "projection included", "**separate calls** to D", 'data_dir="celeba"` names the processed set',
                   "`cfg.lr_d` for\nD, `cfg.lr_g` for G", "cfg.beta1` is\n0.5 for the DCGAN presets"):
        assert demand in markdown, demand
    assert "beta1 = 0.5" not in markdown


def test_hint_free_exercise(tmp_path, capsys):
    """`python helpers.py exercise --no-hints` writes the exercise without the graded hint cells."""
    assert cli.main(["exercise", "--no-hints", "--out", str(tmp_path / "plain.ipynb")]) == 0
    assert "plain.ipynb" in capsys.readouterr().out
    plain, full = nbformat.read(tmp_path / "plain.ipynb", as_version=4), nbformat.read(EXERCISE, as_version=4)
    assert not [c for c in plain.cells if c.cell_type == "markdown" and "<details>" in c.source]
    assert "Stuck?" not in plain.cells[0].source and "Stuck?" in full.cells[0].source
    # the same exercise otherwise: every code cell, and every cell but the hints
    assert [c.source for c in plain.cells if c.cell_type == "code"] == \
        [c.source for c in full.cells if c.cell_type == "code"]
    assert len(plain.cells) == len(full.cells) - 7
    assert cli.build_parser().parse_args(["exercise"]).no_hints is False


def test_optimiser_cell_holds_for_every_preset(capsys):
    """The solution's optimiser cell passes its check with each preset's own models and rates."""
    cell = next(c for c in _exercise_cells(SOLUTION) if "d_optimizer = torch.optim.Adam" in c)
    for preset in config.PRESETS:
        cfg = config.make_config(preset)
        D, G = models.build_models(cfg)
        exec(compile(cell, "<optimiser cell>", "exec"), {"torch": torch, "tests": problem_unittests, "cfg": cfg,
                                                         "D": D, "G": G})
    out = capsys.readouterr().out
    assert out.count("Tests Passed") == len(config.PRESETS)
    assert "lr 0.0004 for D, 0.0001 for G, betas (0.0, 0.9)" in out


def test_training_loop_refuses_other_games():
    """The notebook's loop plays the BCE game; its first line stops the presets that play another one."""
    for path in (SOLUTION, EXERCISE):
        loop = next(c.source for c in nbformat.read(path, as_version=4).cells
                    if c.cell_type == "code" and "for epoch in range(cfg.epochs)" in c.source)
        first = loop.split("\n")[0]
        assert first.startswith("tests.require_bce_game(cfg)")
        for preset in config.PRESETS:
            cfg = config.make_config(preset)
            ns = {"tests": problem_unittests, "cfg": cfg}
            if cfg.loss == "bce":
                exec(first, ns)
            else:
                with pytest.raises(problem_unittests.NotTheBCEGame, match=rf"(?s)BCE game.*helpers\.train\(cfg\)"
                                   rf".*python helpers\.py train --preset {preset}"):
                    exec(first, ns)
