"""CLI verbs of the experiment layer: ``reproduce``, ``report``, ``sweep``, ``attention-maps`` and ``anchor``.

:func:`register` adds them to the ``aacn`` sub-parsers; each sets ``func(args) -> exit code``.
:func:`add_run_arguments` adds the flags that describe one run (``aacn train`` and ``aacn sweep``). Mistakes a
user can make raise :class:`aacn.errors.UserError`, which the CLI prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from aacn.errors import UserError
from aacn.experiments.presets import SCALES, TABLE2_PLACEMENTS, TABLES
from aacn.flags import add_arguments, config_from_args, given_options
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
                       attention_impl=args.attention_impl, out=args.out, overwrite=args.overwrite,
                       dry_run_only=args.dry_run, **overrides)
    if result is None:
        return 0
    print()
    print(result.markdown)
    print(f"\nreport: {', '.join(str(p) for p in result.files)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    if args.publish:
        from aacn.experiments.publish import publish

        if args.run_dirs or args.out or args.partial:
            raise UserError("--publish RESULTS_DIR OUT_MD reads every finished record under RESULTS_DIR: give no "
                            "RUN_DIR, --out or --partial with it")
        published = publish(*args.publish, allow_mixed_data=args.allow_mixed_data)
        print(f"wrote {', '.join(str(p) for p in published.files)}")
        return 0
    from aacn.experiments.report import report

    if not args.run_dirs:
        raise UserError("no run directories given; pass folders written by 'aacn train', or --publish RESULTS_DIR "
                        "OUT_MD")
    result = report(args.run_dirs, args.out, partial=args.partial, extended=not args.basic,
                    provenance=args.extended, allow_mixed_data=args.allow_mixed_data)
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
    result = sweep(base, grid, args.out, overwrite=args.overwrite, allow_mixed_data=args.allow_mixed_data)
    print()
    print(result.markdown)
    print(f"\nsummary: {', '.join(str(p) for p in result.files)}")
    return 0


def _attention_maps(args: argparse.Namespace) -> int:
    from aacn.viz.attention_maps import attention_maps_command

    path = attention_maps_command(args.run_dir, layer=args.layer, image=args.image, pixels=args.pixels,
                                  out=args.out, data_dir=args.data_dir, partial=args.partial)
    print(f"wrote {path}")
    return 0


def _anchor(args: argparse.Namespace) -> int:
    from aacn.experiments.anchor import run_anchor

    run_anchor(args.anchor, data_dir=args.data_dir, out=args.out, seed=args.seed, device=args.device,
               overwrite=args.overwrite)
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


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


_REPRODUCE_OPTIONS = ("data_dir", "device", "amp", "compile_mode", "tta", "eval_batch_size", "progress",
                      "tensorboard")
_OVERWRITE_HELP = "retrain runs whose saved settings differ from the requested ones (default: refuse, naming them)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``reproduce``, ``report``, ``sweep``, ``attention-maps`` and ``anchor`` to the ``aacn`` sub-parsers."""
    for add in (_add_reproduce, _add_report, _add_sweep, _add_attention_maps, _add_anchor):
        add(subparsers)


def _add_reproduce(subparsers: argparse._SubParsersAction) -> None:
    p = _verb(
        subparsers, "reproduce", _reproduce, help="train and report table1 | table2 | paper-cifar100",
        description="Train every run of a table one after the other into OUT/<run>/ (finished runs are kept, "
                    "unfinished ones resumed; a run shared by two tables trains once), then write the table's "
                    "report.md, report.csv and learning_curves.png into OUT/<table>[-<placement>]/.")
    p.add_argument("table", choices=TABLES)
    p.add_argument("--scale", choices=SCALES, default="smoke",
                   help="demo: the cpu scale in miniature (minutes); smoke: narrow models on 5,000 images with the "
                        "full protocol's recipes, a pipeline check; cpu: the study on two CPU cores "
                        "(full split, narrow models, 10 epochs); fast: one modern GPU; full: the replication's "
                        "epochs (default smoke)")
    p.add_argument("--seeds", type=_positive_int, default=1, help="runs per row, seeds 0..N-1 (default 1)")
    p.add_argument("--placement", choices=TABLE2_PLACEMENTS,
                   help="table2 only: the replication's single attention layer (seed, default) or the paper's")
    p.add_argument("--attention-impl", choices=IMPLS,
                   help="attention implementation of the attention rows (default auto; triton: CUDA only)")
    p.add_argument("--out", help="folder of the runs and the reports (default runs/<scale>)")
    p.add_argument("--dry-run", action="store_true",
                   help="print every run with its state (finished, started) or its training time estimated on this "
                        "machine, and the total; train nothing")
    add_arguments(p, only=_REPRODUCE_OPTIONS)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile every model (default: on for --scale fast on CUDA, else off)")
    _add_overwrite(p)


def _add_report(subparsers: argparse._SubParsersAction) -> None:
    p = _verb(
        subparsers, "report", _report, help="tabulate finished runs (markdown, CSV, learning curves)",
        description="Read run directories and write report.md, report.csv and learning_curves.png; runs that "
                    "differ only in their seed share a row (mean ± std).")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR")
    p.add_argument("--out", help="where to write (default: the common parent of the run directories)")
    p.add_argument("--partial", action="store_true", help="include unfinished runs (last epoch, marked *)")
    p.add_argument("--basic", action="store_true", help="accuracy and time only (no params/memory/images/s)")
    p.add_argument("--extended", action="store_true",
                   help="add every run's provenance: aacn version, commit, torch/CUDA/cuDNN, device, precision, "
                        "compile, data")
    _add_allow_mixed_data(p)
    p.add_argument("--publish", nargs=2, metavar=("RESULTS_DIR", "OUT_MD"),
                   help="write OUT_MD (e.g. docs/RESULTS.md) from the published records under RESULTS_DIR: every "
                        "table per scale, the anchors, learning curves and provenance")


def _add_sweep(subparsers: argparse._SubParsersAction) -> None:
    p = _verb(
        subparsers, "sweep", _sweep, help="train a grid of model/training settings and tabulate it",
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
    _add_overwrite(p)
    _add_allow_mixed_data(p)


def _add_attention_maps(subparsers: argparse._SubParsersAction) -> None:
    p = _verb(
        subparsers, "attention-maps", _attention_maps,
        help="draw a trained AA layer's attention weights over a test image",
        description="Rebuild the model of RUN_DIR, load its final checkpoint and draw a grid (heads x query "
                    "pixels) of the attention weights of one attention-augmented layer over test image I.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--layer", help="attention layer name (default: the highest-resolution one)")
    p.add_argument("--image", type=int, default=0, help="index into the test set (default 0)")
    p.add_argument("--pixels", nargs="+", type=_pixel, metavar="X,Y",
                   help="query pixels as X,Y = column,row in the 32x32 image (default: a few spread out)")
    p.add_argument("--out", help="PNG to write (default RUN_DIR/attention-<layer>-img<I>.png)")
    p.add_argument("--data-dir", help="CIFAR location (default: the run's)")
    p.add_argument("--partial", action="store_true",
                   help="use the newest checkpoint of an unfinished run (partial weights; said in the output)")
    # argparse takes "-1,3" for an option; read it as a pixel so the error says coordinates cannot be negative.
    p._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-?\d+,-?\d+$")


def _add_anchor(subparsers: argparse._SubParsersAction) -> None:
    p = _verb(
        subparsers, "anchor", _anchor,
        help="train a public airbench baseline (airbench94 | airbench96) on the same CIFAR-10 images",
        description="Train airbench's own airbench94 or airbench96 (pip install -e \".[anchors]\"; needs a CUDA "
                    "GPU) on all 50,000 training images of --data-dir and write a run record that 'aacn report' "
                    "reads beside ours (default runs/anchors/NAME-seedK).")
    p.add_argument("anchor", metavar="NAME", help="airbench94 | airbench96")
    p.add_argument("--data-dir", help="where CIFAR-10 lives or is downloaded (default $AACN_DATA, else a cache)")
    p.add_argument("--out", help="record folder (default runs/anchors/NAME-seedK)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="torch.manual_seed before training (default 0)")
    p.add_argument("--device", default="auto", help="auto | cuda (airbench trains on cuda:0; pick the GPU with "
                                                    "CUDA_VISIBLE_DEVICES)")
    p.add_argument("--overwrite", action="store_true", help="retrain over a finished record with another config")


def _verb(subparsers: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int], *,
          help: str, description: str) -> argparse.ArgumentParser:
    """The sub-parser of verb ``name``, which runs ``func(args) -> exit code``."""
    p = subparsers.add_parser(name, help=help, description=description)
    p.set_defaults(func=func)
    return p


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)


def _add_allow_mixed_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-mixed-data", action="store_true",
                   help="tabulate runs trained on different images (different data fingerprints) together")
