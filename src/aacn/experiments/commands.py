"""CLI verbs of the experiment layer: ``reproduce``, ``report``, ``sweep`` and ``attention-maps``.

:func:`register` adds them to the ``aacn`` sub-parsers; each sets ``func(args) -> exit code``.
:func:`add_run_arguments` adds the flags that describe one run (``aacn train`` and ``aacn sweep``). Mistakes a
user can make raise :class:`aacn.errors.UserError`, which the CLI prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse

from aacn.config import add_arguments, config_from_args, given_options
from aacn.errors import UserError
from aacn.experiments.presets import PLACEMENTS, SCALES, TABLES
from aacn.nn.functional import IMPLS
from aacn.train.recipes import RECIPES

__all__ = ["register", "add_run_arguments", "compile_default"]


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag that describes a run (derived from :mod:`aacn.config`), with the recipes' names as choices."""
    add_arguments(parser, choices={"recipe": RECIPES})


def compile_default(flag: bool | None, scale: str, device: str) -> bool:
    """``--compile``/``--no-compile`` when given; otherwise on for the ``fast`` scale on a CUDA device (its
    schedules are sized for compiled models) and off elsewhere."""
    if flag is not None:
        return flag
    if scale != "fast":
        return False
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def _reproduce(args: argparse.Namespace) -> int:
    from aacn.experiments.reproduce import reproduce

    if args.placement is not None and args.table != "table2":
        raise UserError(f"--placement applies to table2 only (table {args.table!r} has a fixed placement); drop it")
    overrides = given_options(args, _REPRODUCE_OPTIONS)
    overrides["compile"] = compile_default(args.compile, args.scale, overrides.get("device", "auto"))
    result = reproduce(args.table, scale=args.scale, seeds=args.seeds, placement=args.placement or "seed",
                       attention_impl=args.attention_impl, out=args.out, overwrite=args.overwrite, **overrides)
    print()
    print(result.markdown)
    print(f"\nreport: {', '.join(str(p) for p in result.files)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from aacn.experiments.report import report

    result = report(args.run_dirs, args.out, partial=args.partial, extended=not args.basic)
    print(result.markdown)
    print(f"\nwrote {', '.join(str(p) for p in result.files)}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from aacn.experiments.presets import scale_settings
    from aacn.experiments.sweep import parse_grid, sweep

    grid = parse_grid(args.grid)
    defaults = {}
    if args.scale is not None:  # the scale's settings for the flags left out
        given = given_options(args)
        defaults = scale_settings(given.get("model", "resnet34"), args.scale,
                                  attention=given.get("attention", "none"), dataset=given.get("dataset", "cifar10"))
    base = config_from_args(args, defaults).replace(out=args.out)  # every point gets a subfolder of out
    result = sweep(base, grid, args.out, overwrite=args.overwrite)
    print()
    print(result.markdown)
    print(f"\nsummary: {', '.join(str(p) for p in result.files)}")
    return 0


def _attention_maps(args: argparse.Namespace) -> int:
    from aacn.viz.attention_maps import attention_maps_command

    path = attention_maps_command(args.run_dir, layer=args.layer, image=args.image, pixels=args.pixels,
                                  out=args.out, data_dir=args.data_dir)
    print(f"wrote {path}")
    return 0


def _pixel(text: str) -> tuple[int, int]:
    x, sep, y = text.partition(",")
    try:
        if not sep:
            raise ValueError
        return int(x), int(y)
    except ValueError:
        raise argparse.ArgumentTypeError(f"pixel must be X,Y (column,row) integers such as 16,8, got {text!r}"
                                         ) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


_REPRODUCE_OPTIONS = ("data_dir", "device", "amp", "compile_mode", "tta", "eval_batch_size", "progress")
_OVERWRITE_HELP = "retrain runs whose saved settings differ from the requested ones (default: refuse, naming them)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``reproduce``, ``report``, ``sweep`` and ``attention-maps`` to the ``aacn`` sub-parsers."""
    p = subparsers.add_parser(
        "reproduce", help="train and report table1 | table2 | paper-cifar100",
        description="Train every run of a table one after the other into OUT/<run>/ (finished runs are kept, "
                    "unfinished ones resumed; a run shared by two tables trains once), then write the table's "
                    "report.md, report.csv and learning_curves.png into OUT/<table>[-<placement>]/.")
    p.add_argument("table", choices=TABLES)
    p.add_argument("--scale", choices=SCALES, default="smoke",
                   help="smoke: narrow models, 2-core CPU minutes; fast: one modern GPU; full: the replication's "
                        "epochs (default smoke)")
    p.add_argument("--seeds", type=_positive_int, default=1, help="runs per row, seeds 0..N-1 (default 1)")
    p.add_argument("--placement", choices=PLACEMENTS,
                   help="table2 only: the replication's single attention layer (seed, default) or the paper's")
    p.add_argument("--attention-impl", choices=IMPLS,
                   help="attention implementation of the attention rows (default auto; triton: CUDA only)")
    p.add_argument("--out", help="folder of the runs and the reports (default runs/<scale>)")
    add_arguments(p, only=_REPRODUCE_OPTIONS)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile every model (default: on for --scale fast on CUDA, else off)")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    p.set_defaults(func=_reproduce)

    p = subparsers.add_parser(
        "report", help="tabulate finished runs (markdown, CSV, learning curves)",
        description="Read run directories and write report.md, report.csv and learning_curves.png; runs that "
                    "differ only in their seed share a row (mean ± std).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="where to write (default: the common parent of the run directories)")
    p.add_argument("--partial", action="store_true", help="include unfinished runs (last epoch, marked *)")
    p.add_argument("--basic", action="store_true", help="accuracy and time only (no params/memory/images/s)")
    p.set_defaults(func=_report)

    p = subparsers.add_parser(
        "sweep", help="train a grid of model/training settings and tabulate it",
        description="Train every combination of --grid values on top of the run flags, each in OUT/<point>/ "
                    "(finished points are kept, unfinished ones resumed; every point is checked before any "
                    "trains); write OUT/sweep.md, sweep.csv and accuracy_vs_params.png.")
    add_run_arguments(p)
    p.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                   help="e.g. num_heads=1,4,8 kappa=0.1,0.2 upsilon=0.1,0.2 (any option with a flag above, "
                        "written with underscores or dashes)")
    p.add_argument("--scale", choices=SCALES,
                   help="this scale's settings (epochs, subset, width, recipe, ...) for the flags you leave out")
    p.add_argument("--out", default="runs/sweep", help="folder of the points and the summary (default runs/sweep)")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    p.set_defaults(func=_sweep)

    p = subparsers.add_parser(
        "attention-maps", help="draw a trained AA layer's attention weights over a test image",
        description="Rebuild the model of RUN_DIR, load its newest checkpoint and draw a grid (heads x query "
                    "pixels) of the attention weights of one attention-augmented layer over test image I.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--layer", help="attention layer name (default: the highest-resolution one)")
    p.add_argument("--image", type=int, default=0, help="index into the test set (default 0)")
    p.add_argument("--pixels", nargs="+", type=_pixel, metavar="X,Y",
                   help="query pixels as X,Y = column,row in the 32x32 image (default: a few spread out)")
    p.add_argument("--out", help="PNG to write (default RUN_DIR/attention-<layer>-img<I>.png)")
    p.add_argument("--data-dir", help="CIFAR location (default: the run's)")
    p.set_defaults(func=_attention_maps)
