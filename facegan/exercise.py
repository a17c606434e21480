"""The classroom exercise: the solution notebook with every solution region turned into a scaffold.

The solution notebook marks what learners write with nbgrader's markers,
``### BEGIN SOLUTION`` and ``### END SOLUTION``.  ``make_exercise_notebook``
replaces each region with a scaffold: for names imported from ``helpers``, a
stub with the same signature and docstring that raises NotImplementedError;
for assignments, ``name = None`` with a TODO.  So the exercise never imports
the answers, and it cannot drift from the solution.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch.nn as nn

from .config import PROJECT_ROOT

#: Where the names that solution regions import from ``helpers`` are defined.
TEACHING_MODULES = ("facegan.data", "facegan.models", "facegan.losses", "facegan.step")


def find_solution(name: str):
    """The function or class called ``name`` in the teaching modules."""
    for module in TEACHING_MODULES:
        obj = getattr(importlib.import_module(module), name, None)
        if obj is not None:
            return obj
    raise ValueError(f"{name!r} is imported in a solution region but defined in none of {TEACHING_MODULES}")

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
EXERCISE_TODOS = {
    "get_dataloader": "Build the transform (Resize, CenterCrop, RandomHorizontalFlip, ToTensor, then Normalize "
                      "with mean and std 0.5 to reach [-1, 1]), a dataset of the images in "
                      "helpers.resolve_image_dir(data_dir) (helpers.FaceImages takes a folder and a transform), "
                      "and return a DataLoader with batch_size, shuffle=True and drop_last=True.",
    "scale": "Map x from [0, 1] to feature_range: x * (max - min) + min.",
    "Discriminator.__init__": "n_layers Conv2d layers, kernel 4, stride 2, padding 1; channels conv_dim, "
                              "2*conv_dim, 4*conv_dim...; BatchNorm2d after all but the first; LeakyReLU(0.2). "
                              "Then one nn.Linear from the flattened feature map to 1 output.",
    "Discriminator.forward": "Apply the convolutions, flatten with x.flatten(1) (keep the batch dimension), "
                             "apply the linear layer. Return the logits: no sigmoid.",
    "Generator.__init__": "nn.Linear(z_size, top * side * side) with top = conv_dim * 2**(n_layers - 1) and "
                          "side = image_size // 2**n_layers; then BatchNorm2d + ReLU, and n_layers "
                          "ConvTranspose2d layers (kernel 4, stride 2, padding 1) halving the channels, "
                          "the last one to 3 channels followed by tanh.",
    "Generator.forward": "Apply the linear layer to z.flatten(1), reshape to (N, top, side, side), then apply "
                         "the transposed convolutions.",
    "weights_init_normal": "For Conv2d, ConvTranspose2d and Linear modules: nn.init.normal_(m.weight, 0.0, 0.02) "
                           "and nn.init.zeros_(m.bias) when there is a bias.",
    "real_loss": "labels = 1 (0.9 when smooth is True, the value itself when smooth is a number), then "
                 "nn.BCEWithLogitsLoss() on the raw D_out and the labels.",
    "fake_loss": "labels = 0, then nn.BCEWithLogitsLoss() on the raw D_out and the labels.",
    "discriminator_step": "zero_grad; fake = G(z).detach(); loss = real_loss(D(real_images), smooth) + "
                          "fake_loss(D(fake)); backward; step; return the loss.",
    "generator_step": "zero_grad; loss = real_loss(D(G(z))) (G wants its fakes called real); backward; step; "
                      "return the loss.",
    "d_optimizer": "torch.optim.Adam over D.parameters(), lr 2e-4, betas (0.5, 0.999)",
    "g_optimizer": "torch.optim.Adam over G.parameters(), lr 2e-4, betas (0.5, 0.999)",
}


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


def _todo(key: str, indent: str) -> list[str]:
    import textwrap

    text = textwrap.wrap(f"TODO: {EXERCISE_TODOS.get(key, 'implement this.')}", 96 - len(indent))
    return [f"{indent}# {line}" for line in text] + [f"{indent}raise NotImplementedError"]


def exercise_stub(name: str) -> str:
    """Scaffold for one teaching name: same signature and docstring, a TODO, NotImplementedError."""
    obj = find_solution(name)
    if isinstance(obj, type):
        base = "nn.Module" if issubclass(obj, nn.Module) else obj.__bases__[0].__name__
        lines = [f"class {name}({base}):"] + _docstring(obj, "    ")
        for method in ("__init__", "forward"):
            fn = getattr(obj, method)
            lines += ["", f"    def {method}{_signature_text(fn)}:"] + _docstring(fn, "        ")
            if method == "__init__":
                lines.append("        super().__init__()")
            lines += _todo(f"{name}.{method}", "        ")
        return "\n".join(lines)
    return "\n".join([f"def {name}{_signature_text(obj)}:"] + _docstring(obj, "    ") + _todo(name, "    "))


def exercise_region(solution: str) -> str:
    """The scaffold that replaces one solution region."""
    import ast

    out = []
    for node in ast.parse(solution).body:
        if isinstance(node, ast.ImportFrom) and node.module == "helpers":
            out += [exercise_stub(alias.name) for alias in node.names]
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                out.append(f"{target.id} = None  # TODO: {EXERCISE_TODOS.get(target.id, 'fill this in')}")
        else:
            raise ValueError(f"cannot scaffold this solution line: {ast.unparse(node)!r}; use "
                             "'from helpers import ...' or simple assignments inside solution regions")
    body = "\n\n\n".join(out) if any(o.startswith(("def ", "class ")) for o in out) else "\n".join(out)
    header = ["# Your code goes here: replace each `raise NotImplementedError` (or None) with an implementation."]
    needs = [("torch.", "import torch"), ("nn.", "import torch.nn as nn"), ("Path", "from pathlib import Path"),
             ("DataLoader", "from torch.utils.data import DataLoader")]
    header += [imp for key, imp in needs if key in body]
    return "\n".join(header) + "\n\n" + body


def make_exercise_notebook(solution_path: str | Path = PROJECT_ROOT / "face_generation.ipynb",
                           exercise_path: str | Path = PROJECT_ROOT / "face_generation_exercise.ipynb") -> Path:
    """Write the exercise notebook: the solution with every solution region scaffolded and no outputs."""
    import nbformat

    nb = nbformat.read(solution_path, as_version=4)
    # Keep the kernel, drop what execution wrote (widget state, versions): the exercise must not
    # change when the solution notebook is re-run.
    nb.metadata = nbformat.from_dict({"kernelspec": nb.metadata.get("kernelspec", {}),
                                      "language_info": {"name": "python"}})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
        src = cell.source
        while BEGIN_SOLUTION in src:
            start = src.index(BEGIN_SOLUTION)
            end = src.index(END_SOLUTION, start)
            region = src[start + len(BEGIN_SOLUTION):end].strip("\n")
            src = src[:start] + exercise_region(region) + "\n\n" + src[end + len(END_SOLUTION):].lstrip("\n")
        cell.source = src
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(
        "**Exercise version.** Cells marked *Your code goes here* are yours to write: each is checked by the "
        "test call below it, which explains what is wrong until it passes. Generated from "
        "`face_generation.ipynb` by `python helpers.py exercise`; edit the solution notebook, not this one."))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"  # stable ids, so regenerating gives the same file
    exercise_path = Path(exercise_path)
    nbformat.write(nb, exercise_path)
    return exercise_path
