"""The classroom exercise: the solution notebook with every solution region turned into a scaffold.

The solution notebook marks what learners write with nbgrader's markers,
``### BEGIN SOLUTION`` and ``### END SOLUTION``.  ``make_exercise_notebook``
replaces each region with a scaffold: for names imported from ``helpers``, a
stub with the same signature and docstring that raises NotImplementedError;
for assignments, ``name = None`` with a TODO.  So the exercise never imports
the answers, and it cannot drift from the solution.

``python helpers.py exercise --no-hints`` writes the exercise without the graded hints.
"""
# Maintainers: the exercise notebook is generated, never edited by hand.  Edit face_generation.ipynb
# (its markdown, its solution regions and the checks under them), then run `python helpers.py exercise`
# and commit both notebooks; tests/test_exercise.py fails while the committed exercise is stale.  The
# exercise's first cell, written below, is for learners: keep instructions for maintainers here.
from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch.nn as nn

from .config import PROJECT_ROOT
from .setup import colab_badge

#: Where the names that solution regions import from ``helpers`` are defined.  A module that does not
#: exist (yet) is skipped: facegan/updates.py holds the textbook steps once facegan/step.py is split.
TEACHING_MODULES = ("facegan.data", "facegan.models", "facegan.losses", "facegan.updates", "facegan.step")

#: The exercise's file name in the repository: its "Open in Colab" badge opens this notebook.
EXERCISE_NOTEBOOK = "face_generation_exercise.ipynb"


def _teaching_modules():
    for module in TEACHING_MODULES:
        try:
            yield importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # a module that exists but fails to import is a bug to see
                raise


def find_solution(name: str):
    """The function or class called ``name`` in the teaching modules."""
    for module in _teaching_modules():
        obj = getattr(module, name, None)
        if obj is not None:
            return obj
    raise ValueError(f"{name!r} is imported in a solution region but defined in none of {TEACHING_MODULES}")

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
#: What each scaffold shows: the signature a learner writes (only the teaching arguments: none of the
#: engine's extras such as norm, dropout, num_workers or crop), a one-line docstring, a nudge in the
#: TODO, and two graded hints that the exercise shows collapsed under the cell: a hint, then the key lines.
EXERCISE_STUBS: dict[str, dict] = {
    "get_dataloader": dict(
        signature='(batch_size: int, image_size: int, data_dir: str = "celeba") -> DataLoader',
        doc="A shuffling DataLoader of face tensors in [-1, 1], each of shape (3, image_size, image_size).",
        todo='turn each image into a tensor in [-1, 1] of the right size, and serve them in shuffled batches. '
             'data_dir="celeba" names the processed CelebA set, not a folder path: '
             'helpers.resolve_image_dir(data_dir) finds its folder and helpers.FaceImages reads it '
             '(ImageFolder would want one sub-folder per class).',
        hint="Chain five transforms: Resize, CenterCrop, RandomHorizontalFlip, ToTensor, Normalize. "
             "`helpers.resolve_image_dir(data_dir)` turns `\"celeba\"` into the folder of the processed set "
             "(fetching it if needed), and `helpers.FaceImages(folder, transform)` is a dataset of that folder's "
             "images; `ImageFolder` does not fit, since it wants one sub-folder per class.",
        lines="transform = transforms.Compose([\n"
              "    transforms.Resize(image_size), transforms.CenterCrop(image_size), "
              "transforms.RandomHorizontalFlip(),\n"
              "    transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])\n"
              "dataset = helpers.FaceImages(helpers.resolve_image_dir(data_dir), transform)\n"
              "return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)"),
    "scale": dict(
        signature="(x: torch.Tensor, feature_range: tuple = (-1, 1)) -> torch.Tensor",
        doc="Map x from [0, 1] to feature_range.",
        todo="stretch [0, 1] to the width of feature_range, then shift it.",
        hint="The width of the range is max - min; 0 must land on min.",
        lines="lo, hi = feature_range\nreturn x * (hi - lo) + lo"),
    "Discriminator": dict(
        doc="32x32 images (N, 3, 32, 32) -> one raw logit per image (N, 1).",
        methods={"__init__": ("(self, conv_dim: int = 32, n_layers: int = 3)",
                              "n_layers stride-2 convolutions with conv_dim, 2*conv_dim... channels, "
                              "BatchNorm after each but the first, then one linear layer whose size follows "
                              "from conv_dim and n_layers."),
                 "forward": ("(self, x: torch.Tensor) -> torch.Tensor",
                             "convolutions, flatten, linear: return the logits.")},
        hint="`nn.Conv2d(in_ch, out_ch, 4, 2, 1)` halves the image; put `nn.BatchNorm2d` after every convolution "
             "but the first, and `nn.LeakyReLU(0.2)` after each. After n_layers halvings a 32x32 image is "
             "32 // 2**n_layers pixels wide. Flatten with `x.flatten(1)`; no sigmoid at the end.",
        lines="layers, in_ch = [], 3\n"
              "for i in range(n_layers):\n"
              "    out_ch = conv_dim * 2**i\n"
              "    layers += [nn.Conv2d(in_ch, out_ch, 4, 2, 1)] + ([nn.BatchNorm2d(out_ch)] if i else []) "
              "+ [nn.LeakyReLU(0.2)]\n"
              "    in_ch = out_ch\n"
              "self.features = nn.Sequential(*layers)\n"
              "self.fc = nn.Linear(in_ch * (32 // 2**n_layers) ** 2, 1)\n"
              "# forward:\nreturn self.fc(self.features(x).flatten(1))"),
    "Generator": dict(
        doc="Latent vectors (N, z_size) -> 32x32 images (N, 3, 32, 32) in [-1, 1].",
        methods={"__init__": ("(self, z_size: int = 100, conv_dim: int = 32, n_layers: int = 3)",
                              "a linear layer from z_size to a small deep feature map, followed by BatchNorm "
                              "and ReLU; then n_layers transposed convolutions that double its size and halve "
                              "its channels, each but the last followed by BatchNorm and ReLU. The last one "
                              "takes exactly conv_dim channels and outputs 3, with tanh alone after it."),
                 "forward": ("(self, z: torch.Tensor) -> torch.Tensor",
                             "linear, reshape to (N, channels, side, side), BatchNorm and ReLU, transposed "
                             "convolutions, tanh.")},
        hint="Start from top = conv_dim * 2**(n_layers - 1) channels at side = 32 // 2**n_layers pixels, and "
             "follow the linear projection with BatchNorm2d and ReLU, like every hidden layer. "
             "`nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1)` doubles the size; the last one takes exactly conv_dim "
             "channels, outputs 3, and is followed by tanh alone: no BatchNorm or ReLU after it.",
        lines="self.top, self.side = conv_dim * 2**(n_layers - 1), 32 // 2**n_layers\n"
              "self.fc = nn.Linear(z_size, self.top * self.side**2)\n"
              "layers, ch = [nn.BatchNorm2d(self.top), nn.ReLU()], self.top\n"
              "for _ in range(n_layers - 1):\n"
              "    layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1), nn.BatchNorm2d(ch // 2), nn.ReLU()]\n"
              "    ch //= 2\n"
              "self.net = nn.Sequential(*layers, nn.ConvTranspose2d(ch, 3, 4, 2, 1), nn.Tanh())\n"
              "# forward:\nreturn self.net(self.fc(z).view(-1, self.top, self.side, self.side))"),
    "weights_init_normal": dict(
        signature="(m: nn.Module) -> None",
        doc="DCGAN init for one module m; use as model.apply(weights_init_normal).",
        todo="draw the weights of conv, transposed-conv and linear layers from N(0, 0.02), and zero their biases.",
        hint="`apply` calls the function on every module, also ReLU and Sequential: test the type with "
             "`isinstance` first. Leave BatchNorm alone (or set its weight ~ N(1, 0.02)).",
        lines="if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):\n"
              "    nn.init.normal_(m.weight, 0.0, 0.02)\n"
              "    if m.bias is not None:\n"
              "        nn.init.zeros_(m.bias)"),
    "real_loss": dict(
        signature="(D_out: torch.Tensor, smooth: bool = False) -> torch.Tensor",
        doc="BCE-with-logits of D's outputs against the label 'real' (1, or 0.9 with smooth=True).",
        todo="compare D_out with a tensor of real labels using a loss that applies the sigmoid itself.",
        hint="`nn.BCEWithLogitsLoss()` takes raw logits; the labels must have D_out's shape.",
        lines="labels = torch.full_like(D_out, 0.9 if smooth else 1.0)\n"
              "return nn.BCEWithLogitsLoss()(D_out, labels)"),
    "fake_loss": dict(
        signature="(D_out: torch.Tensor) -> torch.Tensor",
        doc="BCE-with-logits of D's outputs against the label 'fake' (0).",
        todo="the same as real_loss, with the label of fake images.",
        hint="Fakes are labelled 0: `torch.zeros_like(D_out)`.",
        lines="return nn.BCEWithLogitsLoss()(D_out, torch.zeros_like(D_out))"),
    "discriminator_step": dict(
        signature="(D, G, d_optimizer, real_images, z, smooth=False) -> torch.Tensor",
        doc="One update of D on a real batch and a batch of fakes G(z); returns D's loss.",
        todo="score the real images and the fakes in two separate calls to D (in one batch, BatchNorm would "
             "mix their statistics), add the two losses, and update D only.",
        hint="Clear old gradients first, then backward() the loss, then step() the optimiser. "
             "Make the fakes with `G(z).detach()` so D's loss stays out of G. "
             "D's loss is `real_loss(D(real_images), smooth) + fake_loss(D(fake_images))`: two calls to D, "
             "so that BatchNorm normalises the real batch and the fake batch each with its own statistics.",
        lines="d_optimizer.zero_grad()\n"
              "fake_images = G(z).detach()\n"
              "d_loss = real_loss(D(real_images), smooth) + fake_loss(D(fake_images))\n"
              "d_loss.backward()\nd_optimizer.step()\nreturn d_loss"),
    "generator_step": dict(
        signature="(D, G, g_optimizer, z) -> torch.Tensor",
        doc="One update of G, towards D calling G(z) real; returns G's loss.",
        todo="score G(z) with D and update G so that D calls its fakes real.",
        hint="Clear G's old gradients first, as in the D step. "
             "No detach here: the gradient must flow through D into G. G's loss is real_loss of D's output "
             "on the fakes (the non-saturating loss).",
        lines="g_optimizer.zero_grad()\ng_loss = real_loss(D(G(z)))\ng_loss.backward()\n"
              "g_optimizer.step()\nreturn g_loss"),
    "d_optimizer": dict(
        todo="an Adam optimiser over D's parameters, with D's own learning rate cfg.lr_d and the betas "
             "(cfg.beta1, cfg.beta2)",
        hint="`torch.optim.Adam(params, lr=..., betas=(beta1, beta2))`; cfg holds lr_d, lr_g, beta1 and beta2 "
             "(beta1 is 0.5 for the DCGAN presets, 0.0 for the WGAN-GP and hinge ones).",
        lines="d_optimizer = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))"),
    "g_optimizer": dict(
        todo="the same for G, with G's own learning rate cfg.lr_g (some presets train D faster than G)",
        hint="A separate optimiser, over G.parameters() only, with cfg.lr_g.",
        lines="g_optimizer = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))"),
}

#: Lines of the solution notebook that stay out of the exercise (nbval markers are for the solution's tests).
SOLUTION_ONLY_LINES = ("# NBVAL_CHECK_OUTPUT",)


def _signature_text(fn) -> str:
    import inspect

    sig = inspect.signature(fn)
    params = []
    for p in sig.parameters.values():
        text = p.name + (f": {p.annotation}" if p.annotation is not inspect.Parameter.empty else "")
        if p.default is not inspect.Parameter.empty:
            text += f" = {p.default!r}"
        params.append(text)
    ret = f" -> {sig.return_annotation}" if sig.return_annotation is not inspect.Signature.empty else ""
    return f"({', '.join(params)}){ret}"


def _docstring(obj, indent: str) -> list[str]:
    import inspect

    doc = inspect.cleandoc(obj.__doc__) if obj.__doc__ else None  # its own docstring, not an inherited one
    if not doc:
        return []
    lines = [f'{indent}"""{doc.splitlines()[0]}'] + [f"{indent}{line}" if line else "" for line in doc.splitlines()[1:]]
    return lines + [f'{indent}"""'] if len(lines) > 1 else [lines[0] + '"""']


def _todo(text: str, indent: str) -> list[str]:
    import textwrap

    lines = textwrap.wrap(f"TODO: {text}", 96 - len(indent))
    return [f"{indent}# {line}" for line in lines] + [f"{indent}raise NotImplementedError"]


def _doc(text: str, indent: str) -> list[str]:
    return [f'{indent}"""{text}"""']


def exercise_stub(name: str) -> str:
    """Scaffold for one teaching name: the learner's signature, a one-line docstring, a TODO, NotImplementedError."""
    obj = find_solution(name)  # raises for names the teaching modules do not define
    spec = EXERCISE_STUBS.get(name)
    if isinstance(obj, type):
        base = "nn.Module" if issubclass(obj, nn.Module) else obj.__bases__[0].__name__
        lines = [f"class {name}({base}):"] + (_doc(spec["doc"], "    ") if spec else _docstring(obj, "    "))
        for method in ("__init__", "forward"):
            sig, todo = spec["methods"][method] if spec else (_signature_text(getattr(obj, method)), "implement this.")
            lines += ["", f"    def {method}{sig}:"]
            if method == "__init__":
                lines.append("        super().__init__()")
            lines += _todo(todo, "        ")
        return "\n".join(lines)
    if spec:
        return "\n".join([f"def {name}{spec['signature']}:"] + _doc(spec["doc"], "    ") + _todo(spec["todo"], "    "))
    return "\n".join([f"def {name}{_signature_text(obj)}:"] + _docstring(obj, "    ")
                     + _todo("implement this.", "    "))


def _region_names(solution: str) -> list[str]:
    """The names a solution region defines: imported from helpers, or assigned."""
    import ast

    names = []
    for node in ast.parse(solution).body:
        if isinstance(node, ast.ImportFrom) and node.module == "helpers":
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets]
        else:
            raise ValueError(f"cannot scaffold this solution line: {ast.unparse(node)!r}; use "
                             "'from helpers import ...' or simple assignments inside solution regions")
    return names


def exercise_region(solution: str) -> str:
    """The scaffold that replaces one solution region."""
    import ast

    out = []
    for node in ast.parse(solution).body:
        if isinstance(node, ast.ImportFrom) and node.module == "helpers":
            out += [exercise_stub(alias.name) for alias in node.names]
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                todo = EXERCISE_STUBS.get(target.id, {}).get("todo", "fill this in")
                out.append(f"{target.id} = None  # TODO: {todo}")
    _region_names(solution)  # rejects anything else
    body = "\n\n\n".join(out) if any(o.startswith(("def ", "class ")) for o in out) else "\n".join(out)
    header = ["# Your code goes here: replace each `raise NotImplementedError` (or None) with an implementation."]
    needs = [("torch.", "import torch"), ("nn.", "import torch.nn as nn"), ("Path", "from pathlib import Path"),
             ("DataLoader", "from torch.utils.data import DataLoader"),
             ("DataLoader", "from torchvision import transforms")]
    header += [imp for key, imp in needs if key in body]
    return "\n".join(header) + "\n\n" + body


#: Which check judges each piece a learner writes (the rules of facegan/checks/rules.py are listed per check).
CHECK_OF = {"get_dataloader": "test_dataloader", "scale": "test_scale", "Discriminator": "test_discriminator",
            "Generator": "test_generator", "weights_init_normal": "test_weights_init", "real_loss": "test_losses",
            "d_optimizer": "test_optimizers", "discriminator_step": "test_discriminator_step",
            "generator_step": "test_generator_step"}


def rules_of(names: list[str]) -> list:
    """The rules (facegan/checks/rules.py) the checks of a cell defining ``names`` hold it to, in table order."""
    from .checks.rules import RULES

    checks = {CHECK_OF[n] for n in names if n in CHECK_OF}
    return [r for r in RULES.values() if r.part in checks]


def rules_comment(names: list[str]) -> str:
    """One comment line naming the rule ids a cell's checks enforce (the nbgrader test cells carry it)."""
    ids = [r.id for r in rules_of(names)]
    return f"# The checks below enforce rules {', '.join(ids)} (docs/teaching.md#the-rules)\n" if ids else ""


def rules_markdown(names: list[str]) -> str:
    """The rules a cell's checks enforce, collapsed under it: each id with the exercise's words."""
    rules = rules_of(names)
    if not rules:
        return ""
    items = "\n".join(f"- **{r.id}** {r.text}" for r in rules)
    return f"<details><summary>What the check holds this cell to</summary>\n\n{items}\n\n</details>"


def hints_markdown(names: list[str]) -> str:
    """The graded hints under a scaffold, collapsed: the rules the check enforces, a hint, then the key lines."""
    parts = [rules_markdown(names)] if rules_markdown(names) else []
    for name in names:
        spec = EXERCISE_STUBS.get(name)
        if not spec:
            continue
        parts.append(f"<details><summary>Hint: {name}</summary>\n\n{spec['hint']}\n\n</details>")
        parts.append(f"<details><summary>Still stuck? The key lines of {name}</summary>\n\n"
                     f"```python\n{spec['lines']}\n```\n\n</details>")
    return "\n".join(parts)


#: The solution notebook's "Open in Colab" badge, which the exercise replaces with its own.
COLAB_BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")


def learner_note(hints: bool = True) -> str:
    """What the exercise's first cell tells the learner, under the title and the badge."""
    note = ("**This is the exercise.** The cells marked *Your code goes here* are yours to write: replace each "
            "`raise NotImplementedError` (or `None`) with your code and run the cell. The check under it says "
            "what it expected, what it got and what to try, until it passes.")
    if hints:
        note += " Stuck? Under each of those cells a collapsed hint opens first, then the key lines."
    return note


def make_exercise_notebook(solution_path: str | Path = PROJECT_ROOT / "face_generation.ipynb",
                           exercise_path: str | Path = PROJECT_ROOT / EXERCISE_NOTEBOOK,
                           hints: bool = True) -> Path:
    """Write the exercise notebook: the solution with every solution region scaffolded and no outputs.

    Under each scaffolded cell come its graded hints (a hint, then the key lines), unless ``hints`` is
    false.  The first cell keeps the solution's title and introduction, with the exercise's own "Open in
    Colab" badge (built from ``facegan.setup.PROJECT_REPO``) and a note to the learner.
    """
    import nbformat

    nb = nbformat.read(solution_path, as_version=4)
    # Keep the kernel, drop what execution wrote (widget state, versions): the exercise must not
    # change when the solution notebook is re-run.
    nb.metadata = nbformat.from_dict({"kernelspec": nb.metadata.get("kernelspec", {}),
                                      "language_info": {"name": "python"}})
    cells = []
    for cell in nb.cells:
        cells.append(cell)
        if cell.cell_type != "code":
            continue
        cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
        src = "\n".join(line for line in cell.source.split("\n") if line.strip() not in SOLUTION_ONLY_LINES)
        names = []
        while BEGIN_SOLUTION in src:
            start = src.index(BEGIN_SOLUTION)
            end = src.index(END_SOLUTION, start)
            region = src[start + len(BEGIN_SOLUTION):end].strip("\n")
            names += _region_names(region)
            src = src[:start] + exercise_region(region) + "\n\n" + src[end + len(END_SOLUTION):].lstrip("\n")
        cell.source = src
        if hints and names and hints_markdown(names):
            cells.append(nbformat.v4.new_markdown_cell(hints_markdown(names)))
    nb.cells = cells
    badge_and_note = f"{colab_badge(EXERCISE_NOTEBOOK)}\n\n{learner_note(hints)}"
    first = nb.cells[0] if nb.cells else None
    if first is not None and first.cell_type == "markdown" and COLAB_BADGE.search(first.source):
        first.source = COLAB_BADGE.sub(lambda _: badge_and_note, first.source, count=1)
    else:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(badge_and_note))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"  # stable ids, so regenerating gives the same file
    exercise_path = Path(exercise_path)
    nbformat.write(nb, exercise_path)
    return exercise_path


RULES_BEGIN, RULES_END = "<!-- rules: generated by python helpers.py exercise -->", "<!-- end of rules -->"


def write_rules_table(page: Path = PROJECT_ROOT / "docs" / "teaching.md") -> Path:
    """Write the rule table (facegan/checks/rules.py) between the markers of docs/teaching.md."""
    from .checks.rules import rules_markdown as table

    text = page.read_text()
    head, rest = text.split(RULES_BEGIN)
    _, tail = rest.split(RULES_END)
    page.write_text(f"{head}{RULES_BEGIN}\n{table()}{RULES_END}{tail}")
    return page
