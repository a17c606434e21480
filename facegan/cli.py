"""The command line: ``python helpers.py CMD`` = ``python -m facegan CMD`` = ``facegan CMD``.

    train     train a preset (every Config field is a flag; --resume continues a run)
    sample    write generated (or the FID reference) faces as PNG files
    fid       FID, KID, precision, recall, density and coverage of a generator
    bench     training speed, classic pipeline against this project's
    exercise  regenerate the classroom exercise notebook and its nbgrader assignment
    grade     grade a class's submitted notebooks: a gradebook CSV and an HTML report
    notebook  execute the notebook in full mode and save its outputs (what GitHub shows)
    serve     faces over HTTP, with a gallery page
    export    a model folder to share: safetensors weights, config.json, a model card, ONNX
    runs      a table of the runs under a folder (--plot: their FID curves in one figure)

Expected problems (missing data, a corrupt image or checkpoint, a bad value) print one
or two lines saying what is wrong and how to fix it, and exit with status 2; ``--debug``
shows the full traceback instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from . import distributed as ddp
from .checkpoint import CHECKPOINT, CheckpointError, newest_checkpoint
from .config import PRESETS, PROJECT_ROOT, Config, field_help, make_config
from .data import DataError, resolve_image_dir
from .device import pick_device, training_precision
from .export import add_arguments as add_export_arguments
from .export import load_generator
from .runlock import RunInUse, hold
from .runs import add_arguments as add_runs_arguments
from .runs import run_from_args as cmd_runs
from .serve import add_arguments as add_serve_arguments
from .serve import run_from_args as cmd_serve
from .train import TrainingDiverged, train


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One --flag per Config field, its help taken from the field's comment; unset flags keep the preset's value."""
    helps = field_help()
    for f in dataclasses.fields(Config):
        if f.name == "preset":
            continue
        flag, text = "--" + f.name.replace("_", "-"), helps.get(f.name, "")
        if f.type == "bool":
            parser.add_argument(flag, type=_parse_bool, default=None, metavar="BOOL", help=text)
        elif f.type == "tuple":
            parser.add_argument(flag, type=lambda s: tuple(float(v) for v in s.split(",")),
                                default=None, metavar="LO,HI", help=text)
        else:
            parser.add_argument(flag, type={"int": int, "float": float}.get(f.type, str), default=None, help=text)


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    """The preset (or ``base``, a resumed run's saved configuration) with the flags given applied."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                 if f.name != "preset" and getattr(args, f.name, None) is not None}
    if args.dry_run:
        # A smoke test: a few steps on a small subset, so CI finishes in seconds.
        overrides = {"max_steps": 5, "subset": 512, "batch_size": 16, "log_every": 1, **overrides}
    if base is not None and args.preset in (None, base.preset):
        return base.replace(**overrides)
    return make_config(args.preset or "small32", **overrides)


def cmd_train(args: argparse.Namespace) -> int:
    out = Path(args.out or f"runs/{args.preset or 'small32'}{'-dry-run' if args.dry_run else ''}")
    with hold(out):  # one writer per run folder, before anything in it is read (facegan/runlock.py)
        return _train_in(out, args)


def _train_in(out: Path, args: argparse.Namespace) -> int:
    # Resume: the run's newest readable checkpoint (with the fallback) gives the configuration and the state.
    resume = newest_checkpoint(out)[0] if args.resume else False
    if not resume and not args.dry_run and (out / CHECKPOINT).is_file():  # never train over a run by accident
        raise ValueError(f"{out} already holds a run ({out / CHECKPOINT}); pass --resume to continue it, or "
                         "--out NEW_FOLDER to start another")
    cfg = config_from_args(args, resume["config"] if resume else None)
    # Under torchrun: join the process group for the run, leave it after (facegan/distributed.py).
    with ddp.process_group(cfg.device):
        device = ddp.local_device(pick_device(cfg.device))
        if ddp.is_main():
            world = f" x {ddp.world_size()} processes (global batch {cfg.batch_size * ddp.world_size()})"
            print(f"training {cfg.preset} on {device} ({training_precision(cfg, device)})"
                  f"{world if ddp.active() else ''} -> {out}")
        result = train(cfg, out, resume=resume)
        if not ddp.is_main():
            return 130 if result.interrupted else 0
    if result.interrupted:
        return 130
    state, h = result.state, result.history
    if not result.steps:
        print(f"nothing to do: the run in {out} is already complete at step {state.step} "
              f"(epoch {state.epoch}); raise --epochs, --max-steps or --max-minutes to train longer")
        return 0
    if cfg.max_minutes and h["seconds"] and h["seconds"][-1] >= 60 * cfg.max_minutes and state.step < state.total_steps:
        print(f"time budget of {cfg.max_minutes:g} training minutes used; to go on: --resume --max-minutes M "
              f"with M above {cfg.max_minutes:g}")
    print(f"done: step {state.step}, epoch {state.epoch}, {result.images_per_second:.0f} img/s, "
          f"d_loss {h['d_loss'][-1]:.3f}, g_loss {h['g_loss'][-1]:.3f}, "
          f"D(x) {h['d_real'][-1]:.2f}, D(G(z)) {h['d_fake'][-1]:.2f}; checkpoint {out / CHECKPOINT}")
    return 0


def _generator(args: argparse.Namespace) -> Path:
    """--generator, else the best shipped model folder (saying which)."""
    if args.generator is not None:
        return Path(args.generator)
    from .export import best_shipped, describe

    path = best_shipped()
    print(f"using the shipped generator {path} ({describe(path)}); pass --generator to choose another")
    return path


def cmd_sample(args: argparse.Namespace) -> int:
    from .evaluation import write_real_samples
    from .sampling import write_samples

    G, cfg = load_generator(_generator(args), pick_device())
    if args.real:
        paths = write_real_samples(cfg, args.n, args.out, args.seed, resolve_image_dir(cfg.data))
        print(f"wrote {len(paths)} real {cfg.image_size}px faces to {args.out}")
    else:
        paths = write_samples(G, cfg, args.n, args.out, args.seed, args.truncation)
        print(f"wrote {len(paths)} generated {cfg.image_size}px faces to {args.out}")
    return 0


def cmd_fid(args: argparse.Namespace) -> int:
    from .evaluation import PRDC_KEYS, evaluate_generator, evaluate_real_pick, inception_extractor

    path = _generator(args)
    if args.record and (args.real or not path.is_dir()):
        raise ValueError(f"--record writes a generator's figures into its model folder's config.json, and {path} "
                         "is not one (or --real scored real faces): export it first (python helpers.py export "
                         f"{path} --out DIR), or drop --real")
    G, cfg = load_generator(path, pick_device())
    extractor = inception_extractor(args.weights, pick_device())
    if args.real:
        result, what = evaluate_real_pick(cfg, args.n, extractor), f"{args.n} other real faces (the reference)"
    else:
        result = evaluate_generator(G, cfg, args.n, extractor=extractor, seed=args.seed, progress=True)
        what = str(path)
    print(f"{what}: FID-{args.n} {result['fid']:.2f}, KID {result['kid']:.4f} "
          f"+- {result['kid_std']:.4f} ({cfg.image_size}px, against {args.n} real faces at {cfg.image_size}px)")
    if PRDC_KEYS[0] in result:  # not at N <= 5: too few faces for k-nearest-neighbour balls
        print("  " + ", ".join(f"{key} {result[key]:.3f}" for key in PRDC_KEYS))
    if args.diversity:
        from .diversity import diversity_report
        from .plots import plot_diversity

        report = diversity_report(G, cfg, min(args.n, 1000), seed=args.seed)
        plot_diversity(report, args.diversity)
        print(f"  {report.summary()}\nwrote {args.diversity}")
    if args.record:
        from .export import record_metrics, scored_metrics

        metrics = scored_metrics(result, args.n)
        record_metrics(path, metrics)
        print(f"recorded {', '.join(metrics)} in {path / 'config.json'} and its model card")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model

    metrics = {"fid_1k": args.fid_1k, "fid_10k": args.fid_10k, "kid": args.kid, "note": args.note}
    out = export_model(args.source, args.out, args.dtype, args.onnx, metrics, args.hardware)
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import benchmark, precision_report, preset_speeds, stabiliser_speeds

    if args.precision:
        precision_report(args.precision)
    elif args.stabilisers:
        stabiliser_speeds(pick_device(args.device or "auto"), args.quick)
    elif args.presets:
        preset_speeds(args.quick, args.device)
    else:
        benchmark(args.quick, args.device, args.repeats, args.compile)
    return 0


def cmd_notebook(args: argparse.Namespace) -> int:
    from .notebook import regenerate_outputs

    print(f"executing {args.path} in full mode (not CI mode); this trains the default preset for minutes")
    print(f"wrote {regenerate_outputs(args.path, args.timeout)} with the outputs of a full run")
    return 0


def cmd_exercise(args: argparse.Namespace) -> int:
    from .exercise import make_exercise_notebook

    out = args.out or PROJECT_ROOT / ("face_generation_exercise_no_hints.ipynb" if args.no_hints
                                      else "face_generation_exercise.ipynb")
    print(f"wrote {make_exercise_notebook(args.solution, out, hints=not args.no_hints)}")
    if args.out is None and not args.no_hints:  # the committed exercise: its nbgrader assignment goes with it
        from .classroom import make_classroom_notebook

        print(f"wrote {make_classroom_notebook(args.solution)} (the nbgrader assignment)")
        from .exercise import write_rules_table

        print(f"wrote {write_rules_table()} (the rule table)")
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    from .grade import Limits, grade_class

    limits = Limits(args.timeout, args.part_seconds, args.memory_gb, args.steps, args.threads)
    rows = grade_class(args.submissions, args.out, limits)
    print(f"graded {len(rows)} submissions: {Path(args.out) / 'gradebook.csv'} and {Path(args.out) / 'report.html'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facegan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)
    show_defaults = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("train", parents=[common], help="train a GAN on faces")
    p.add_argument("--preset", default=None, choices=list(PRESETS), help="recipe to train (default small32)")
    p.add_argument("--out", default=None, help="run folder (default runs/PRESET)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--dry-run", action="store_true", help="a few steps on a small subset (smoke test)")
    _add_config_arguments(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("sample", parents=[common], help="write N generated faces as PNG files (for any FID tool)",
                       formatter_class=show_defaults)
    p.add_argument("--generator", default=None, help="a model folder (assets/models/*), a checkpoint.pt or an "
                   "exported .pt (default: the best shipped model folder)")
    p.add_argument("--n", type=int, default=1000, help="how many faces")
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.add_argument("--seed", type=int, default=0, help="seed of the first latent batch")
    p.add_argument("--truncation", type=float, default=0.0, help="resample |z| > t (0 = off)")
    p.add_argument("--real", action="store_true",
                   help="write N real faces at the generator's resolution instead (the FID reference set)")
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser("fid", parents=[common], help="FID, KID, precision, recall, density and coverage of a "
                       "generator against real faces at its resolution",
                       formatter_class=show_defaults)
    p.add_argument("--generator", default=None, help="a model folder (assets/models/*), a checkpoint.pt or an "
                   "exported .pt (default: the best shipped model folder)")
    p.add_argument("--n", type=int, default=1000, help="samples (and real images); FID falls as N grows")
    p.add_argument("--weights", default=None, help="local FID Inception weights (default $FID_WEIGHTS, else download)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated latents")
    p.add_argument("--record", action="store_true",
                   help="store the result in the model folder's config.json (metrics) and rewrite its card")
    p.add_argument("--real", action="store_true", help="score N other real faces (a pick disjoint from the "
                   "reference) instead of the generator, at its resolution: what the data itself scores")
    p.add_argument("--diversity", metavar="PNG", default=None, help="also draw the copying and collapse view "
                   "(distances to the nearest training face, the most-repeated faces) of N<=1000 faces to PNG")
    p.set_defaults(handler=cmd_fid)

    p = sub.add_parser("exercise", parents=[common],
                       help="regenerate face_generation_exercise.ipynb (and the nbgrader assignment in "
                            "classroom/source/) from the solution notebook",
                       formatter_class=show_defaults)
    p.add_argument("--solution", default=str(PROJECT_ROOT / "face_generation.ipynb"), help="the solution notebook")
    p.add_argument("--out", default=None, help="where to write (default face_generation_exercise.ipynb, or "
                   "face_generation_exercise_no_hints.ipynb with --no-hints)")
    p.add_argument("--no-hints", action="store_true", help="leave out the graded hints under each exercise cell")
    p.set_defaults(handler=cmd_exercise)

    p = sub.add_parser("grade", parents=[common], formatter_class=show_defaults,
                       help="grade submitted exercise notebooks: a gradebook CSV and an HTML report with their faces")
    p.add_argument("submissions", nargs="+", help="notebooks, or folders searched for *.ipynb")
    p.add_argument("--out", default="grades", help="folder for gradebook.csv, report.html and the scratch folders")
    p.add_argument("--timeout", type=int, default=300, help="seconds one submission may take in all")
    p.add_argument("--part-seconds", type=int, default=60, help="seconds one part's cell (or its checks) may take")
    p.add_argument("--memory-gb", type=float, default=8.0, help="address space one submission may use")
    p.add_argument("--steps", type=int, default=100, help="training steps of the learner's D and G (batch 64)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per submission")
    p.set_defaults(handler=cmd_grade)

    p = sub.add_parser("notebook", parents=[common], formatter_class=show_defaults,
                       help="execute face_generation.ipynb in full mode and save its outputs (what GitHub shows)")
    p.add_argument("--path", default=str(PROJECT_ROOT / "face_generation.ipynb"), help="the notebook to run")
    p.add_argument("--timeout", type=int, default=3600, help="seconds one cell may take")
    p.set_defaults(handler=cmd_notebook)

    p = sub.add_parser("bench", parents=[common], help="training speed: the classic pipeline against this project's",
                       formatter_class=show_defaults)
    p.add_argument("--quick", action="store_true", help="fewer steps on a 4,096-image subset (under 2 minutes)")
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    p.add_argument("--repeats", type=int, default=1, help="alternate the pipelines this many times; report the spread")
    p.add_argument("--compile", action="store_true",
                   help="also time the default pipeline under torch.compile (compile time printed apart)")
    p.add_argument("--presets", action="store_true",
                   help="instead: img/s and size of every preset, then fast64 with each stabiliser")
    p.add_argument("--stabilisers", action="store_true",
                   help="instead: only fast64's img/s with each stabiliser (lsgan, R1, ADA), beside the plain step")
    p.add_argument("--precision", metavar="CHECKPOINT", default=None,
                   help="instead: how much bf16 changes this checkpoint's updates, next to minibatch noise")
    p.set_defaults(handler=cmd_bench)

    p = sub.add_parser("serve", parents=[common], help="faces over HTTP, with a gallery page",
                       formatter_class=show_defaults)
    add_serve_arguments(p)
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("export", parents=[common], help="write a model folder to share: safetensors weights, "
                       "config.json, a model card, samples (and ONNX)")
    add_export_arguments(p)
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("runs", parents=[common], help="a table of the runs under a folder: preset, steps, images "
                       "seen, minutes, last FID, state (--plot: their FID curves in one figure)")
    add_runs_arguments(p)
    p.set_defaults(handler=cmd_runs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:
        return args.handler(args)
    try:
        return args.handler(args)
    except RunInUse as e:  # the whole story in one line: who holds the folder, what to do
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, FileNotFoundError, ValueError, TrainingDiverged) as e:
        # Expected problems: one line that names the problem and the fix, not a traceback.
        print(f"error: {e}\n(run with --debug for the full traceback)", file=sys.stderr)
        return 2


def run() -> None:
    """The console script's entry point (``facegan``, from pyproject.toml)."""
    sys.exit(main())
