"""Every rule the exercise states, written down once: its id, its words, and the check that guards it.

A rule is a sentence of the exercise (a stub's docstring or TODO, a hint, or the markdown around the
cell) that tells the learner what a piece must do.  ``text`` quotes it word for word, so
``tests/test_rules.py`` can find it in the exercise; ``check`` names the function in ``facegan/checks``
whose failures enforce it (each ``_fail`` there names its rule).  The tests fail when a rule has no check,
when a check fails without naming a rule, when a rule's words are no longer in the exercise, when a
directive sentence of a TODO or hint is in no rule, and when a rule has no planted violation that its
check catches.  Every failure message ends with its rule, so the learner sees which sentence was broken.

The exercise, the nbgrader assignment and docs/teaching.md all read this table: the checks cite it, the
exercise lists each part's rule ids under its cell, and the teaching page's rule table is generated from
it (``python helpers.py exercise`` writes all three; the tests fail while one is stale).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    id: str
    part: str  # the check a learner calls for this piece (problem_unittests.<part>)
    source: str  # where the exercise says it: doc | todo | hint | markdown
    text: str  # the exercise's words, quoted exactly
    check: str  # module.function in facegan/checks whose failures name this rule


def _rules(*rows: tuple[str, str, str, str, str]) -> dict[str, Rule]:
    return {row[0]: Rule(*row) for row in rows}


RULES: dict[str, Rule] = _rules(
    # --- Pre-process: scale and get_dataloader
    ("SC1", "test_scale", "doc", "Map x from [0, 1] to feature_range.", "data.check_scale_formula"),
    ("SC2", "test_scale", "todo", "stretch [0, 1] to the width of feature_range, then shift it.",
     "data.check_scale_formula"),
    ("DL1", "test_dataloader", "doc", "each of shape (3, image_size, image_size)", "data.test_dataloader"),
    ("DL2", "test_dataloader", "doc", "face tensors in [-1, 1]", "data.check_range"),
    ("DL3", "test_dataloader", "todo", "serve them in shuffled batches", "data.check_order"),
    ("DL4", "test_dataloader", "markdown", "flips half of them left-right", "data.check_flips"),
    ("DL5", "test_dataloader", "markdown", "resizes and centre-crops every face to `image_size`",
     "data.test_dataloader"),
    ("DL6", "test_dataloader", "hint", "Chain five transforms: Resize, CenterCrop, RandomHorizontalFlip, ToTensor, "
     "Normalize.", "report.crash_message"),
    # --- Discriminator
    ("D1", "test_discriminator", "doc", "one raw logit per image (N, 1)", "discriminator.check_one_logit_per_image"),
    ("D2", "test_discriminator", "markdown", "a score anywhere on the real line", "discriminator.check_raw_logits"),
    ("D3", "test_discriminator", "todo", "n_layers stride-2 convolutions", "layers.compare_layers"),
    ("D4", "test_discriminator", "todo", "with conv_dim, 2*conv_dim... channels", "layers.compare_layers"),
    ("D5", "test_discriminator", "todo", "BatchNorm after each but the first", "layers.compare_layers"),
    ("D6", "test_discriminator", "markdown", "**LeakyReLU(0.2)**, so gradients flow even for negative activations",
     "layers.compare_layers"),
    ("D7", "test_discriminator", "todo", "then one linear layer whose size follows from conv_dim and n_layers.",
     "layers.compare_layers"),
    ("D8", "test_discriminator", "markdown", "no pooling: **stride-2 convolutions** halve the image",
     "discriminator.check_no_pooling"),
    ("D9", "test_discriminator", "markdown", "Flatten with `x.flatten(1)`: it keeps the batch dimension",
     "discriminator.check_one_logit_per_image"),
    # --- Generator
    ("G1", "test_generator", "doc", "Latent vectors (N, z_size) -> 32x32 images (N, 3, 32, 32) in [-1, 1].",
     "generator.check_output_shape"),
    ("G2", "test_generator", "todo", "a linear layer from z_size to a small deep feature map, followed by BatchNorm "
     "and ReLU", "layers.compare_layers"),
    ("G3", "test_generator", "todo", "n_layers transposed convolutions that double its size and halve its channels",
     "layers.compare_layers"),
    ("G4", "test_generator", "todo", "each but the last followed by BatchNorm and ReLU", "layers.compare_layers"),
    ("G5", "test_generator", "todo", "The last one takes exactly conv_dim channels and outputs 3",
     "layers.compare_layers"),
    ("G6", "test_generator", "todo", "with tanh alone after it", "layers.compare_layers"),
    ("G7", "test_generator", "markdown", "every width and size must come from the arguments",
     "generator.check_other_sizes"),
    ("G8", "test_generator", "markdown", "different z give different faces", "generator.check_function_of_z"),
    ("G9", "test_generator", "markdown", "so the images span [-1, 1] like the scaled real ones",
     "generator.check_tanh_range"),
    # --- Weight initialisation
    ("W1", "test_weights_init", "todo", "draw the weights of conv, transposed-conv and linear layers from N(0, 0.02)",
     "weights.check_layer"),
    ("W2", "test_weights_init", "todo", "and zero their biases.", "weights.check_layer"),
    ("W3", "test_weights_init", "hint", "Leave BatchNorm alone (or set its weight ~ N(1, 0.02)).",
     "weights.check_batchnorm"),
    ("W4", "test_weights_init", "hint", "test the type with `isinstance` first", "weights.test_weights_init"),
    # --- Losses
    ("L1", "test_losses", "todo", "using a loss that applies the sigmoid itself", "losses.check_loss"),
    ("L2", "test_losses", "doc", "(1, or 0.9 with smooth=True)", "losses.check_loss"),
    ("L3", "test_losses", "hint", "Fakes are labelled 0", "losses.check_loss"),
    ("L4", "test_losses", "hint", "the labels must have D_out's shape", "losses.check_loss"),
    ("L5", "test_losses", "markdown", "Only the real label is smoothed", "losses.check_loss"),
    ("L6", "test_losses", "doc", "BCE-with-logits of D's outputs", "losses.loss_value"),
    # --- Optimisers
    ("O1", "test_optimizers", "todo", "an Adam optimiser over D's parameters, with D's own learning rate cfg.lr_d "
     "and the betas (cfg.beta1, cfg.beta2)", "optimizers.test_optimizers"),
    ("O2", "test_optimizers", "todo", "the same for G, with G's own learning rate cfg.lr_g",
     "optimizers.test_optimizers"),
    ("O3", "test_optimizers", "hint", "A separate optimiser, over G.parameters() only", "optimizers.check_parameters"),
    # --- The training steps
    ("SD1", "test_discriminator_step", "todo", "score the real images and the fakes in two separate calls to D",
     "steps.compare_records"),
    ("SD2", "test_discriminator_step", "todo", "add the two losses", "training.check_d_update"),
    ("SD3", "test_discriminator_step", "todo", "and update D only.", "steps.compare_records"),
    ("SD4", "test_discriminator_step", "hint", "Clear old gradients first.", "steps.compare_records"),
    ("SD5", "test_discriminator_step", "hint", "Make the fakes with `G(z).detach()` so D's loss stays out of G.",
     "steps.compare_records"),
    ("SD6", "test_discriminator_step", "hint", "`real_loss(D(real_images), smooth)`", "training.check_smooth"),
    ("SD7", "test_discriminator_step", "doc", "returns D's loss", "training.check_returned_loss"),
    ("SD8", "test_discriminator_step", "doc", "a batch of fakes G(z)", "training.check_repeatable"),
    ("SD9", "test_discriminator_step", "hint", "then backward() the loss, then step() the optimiser",
     "steps.compare_records"),
    ("SG1", "test_generator_step", "todo", "update G so that D calls its fakes real.", "training.check_g_update"),
    ("SG2", "test_generator_step", "hint", "No detach here: the gradient must flow through D into G.",
     "steps.compare_records"),
    ("SG3", "test_generator_step", "doc", "returns G's loss", "training.check_returned_loss"),
    ("SG4", "test_generator_step", "hint", "G's loss is real_loss of D's output on the fakes (the non-saturating "
     "loss).", "training.check_g_update"),
    ("SG5", "test_generator_step", "todo", "score G(z) with D", "training.check_repeatable"),
    ("ST1", "test_discriminator_step", "markdown", "Each step leaves both networks as it found them: in training "
     "mode, with every parameter trainable.", "training.check_left_as_found"),
    ("ST2", "test_generator_step", "hint", "Clear G's old gradients first, as in the D step.",
     "steps.compare_records"),
)

#: Sentences of the stubs and hints that say a rule again in other words (often with the code that keeps it):
#: each traced to the rule it restates, so that a directive sentence is never without a check.
RESTATED = {
    "0 must land on min.": "SC2",
    "`nn.Conv2d(in_ch, out_ch, 4, 2, 1)` halves the image;": "D3",
    "put `nn.BatchNorm2d` after every convolution but the first, and `nn.LeakyReLU(0.2)` after each.": "D5",
    "Flatten with `x.flatten(1)`;": "D9",
    "no sigmoid at the end.": "D2",
    "convolutions, flatten, linear:": "D7",
    "return the logits.": "D2",
    "Start from top = conv_dim * 2**(n_layers - 1) channels at side = 32 // 2**n_layers pixels, and follow the "
    "linear projection with BatchNorm2d and ReLU, like every hidden layer.": "G2",
    "`nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1)` doubles the size;": "G3",
    "the last one takes exactly conv_dim channels, outputs 3, and is followed by tanh alone:": "G5",
    "no BatchNorm or ReLU after it.": "G6",
    "linear, reshape to (N, channels, side, side), BatchNorm and ReLU, transposed convolutions, tanh.": "G2",
    "use as model.apply(weights_init_normal).": "W4",
    "`nn.BCEWithLogitsLoss()` takes raw logits;": "L1",
    "the same as real_loss, with the label of fake images.": "L3",
    "`torch.zeros_like(D_out)`.": "L3",
    "D's loss is `real_loss(D(real_images), smooth) + fake_loss(D(fake_images))`:": "SD2",
    "two calls to D, so that BatchNorm normalises the real batch and the fake batch each with its own statistics.":
        "SD1",
    "One update of G, towards D calling G(z) real;": "SG1",
    "`torch.optim.Adam(params, lr=..., betas=(beta1, beta2))`;": "O1",
}

#: Sentences of the stubs and hints that explain rather than direct (a test checks that every other sentence of
#: a stub or hint is a rule's words, contains them, or is in RESTATED).
EXPLANATIONS = (
    "ImageFolder would want one sub-folder per class",
    "`ImageFolder` does not fit, since it wants one sub-folder per class",
    "After n_layers halvings a 32x32 image is 32 // 2**n_layers pixels wide",
    "beta1 is 0.5 for the DCGAN presets, 0.0 for the WGAN-GP and hinge ones",
    "`apply` calls the function on every module, also ReLU and Sequential",
    "The width of the range is max - min",
    'data_dir="celeba" names the processed CelebA set, not a folder path',
    "`helpers.resolve_image_dir(data_dir)` turns `\"celeba\"` into the folder of the processed set",
    "DCGAN init for one module m",
)


def rules_for(part: str) -> list[Rule]:
    """The rules the check ``part`` (e.g. "test_generator") enforces, in the table's order."""
    return [r for r in RULES.values() if r.part == part or (part == "test_generator_step" and r.id == "ST1")]


def rules_markdown() -> str:
    """The rule table as markdown: docs/teaching.md embeds it."""
    rows = ["| rule | check | the exercise says | where | guarded by |", "|---|---|---|---|---|"]
    rows += [f"| {r.id} | `{r.part}` | {r.text.replace('|', '/')} | {r.source} | `{r.check}` |" for r in RULES.values()]
    return "\n".join(rows) + "\n"
