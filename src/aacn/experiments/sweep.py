"""``aacn sweep``: train a grid of variations of one run and tabulate them.

A grid is given as ``key=v1,v2,...`` items; the keys are run options (:data:`aacn.config.SWEEP_KEYS`: model
options such as ``num_heads``, ``kappa``, ``upsilon``, ``attention``, ``base_width``, and training options such
as ``epochs``, ``lr``, ``recipe``, ``seed``); dashes may stand for underscores. Every combination (the Cartesian
product, in the order given) is one point, trained in ``OUT/<key>-<value>_<key>-<value>/``. Points that have
finished are kept and started ones resumed, so an interrupted sweep continues where it stopped when the same
command is given again; a point folder holding other settings is refused unless ``overwrite``. Every point is
validated (its config, its recipe, its model built on the ``meta`` device, and its subset and batch against the
data) before the first one trains, so a bad value fails at once, naming the point.

Outputs in ``OUT``: ``sweep.md`` and ``sweep.csv`` (one row per point; several seeds of a point, via
``seed=0,1,2``, become mean ± std) and ``accuracy_vs_params.png`` (test accuracy against parameter count).
Their data are checked as ``aacn report`` checks them: points trained on different images are refused unless
``--allow-mixed-data``, and rows trained on data that is not official are marked.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aacn.config import OPTIONS, RESULT_NEUTRAL, SWEEP_KEYS, RunConfig
from aacn.errors import UserError
from aacn.experiments.report import ReportResult
from aacn.experiments.reproduce import train_all
from aacn.experiments.rows import check_same_data, group_runs, load_runs, short_value
from aacn.experiments.tables import BASIC_COLUMNS, TIME_COLUMN, format_params, rows_csv, tabulate
from aacn.files import atomic_write, check_output_dir
from aacn.train.lock import run_lock
from aacn.train.progress import describe_attention
from aacn.train.rundir import RunDir

__all__ = ["parse_grid", "grid_points", "check_points", "summarize", "sweep"]


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["num_heads=1,4", "kappa=0.1"]`` -> ``{"num_heads": [1, 4], "kappa": [0.1]}`` (typed, order kept).

    Raises :class:`UserError` naming a malformed item, an unknown key (listing the valid ones), a value of the
    wrong type, a repeated key or a repeated value. A custom placement is written with ``+`` between names
    (``attention=seed,layer3.0+layer4.0``), as commas separate values.
    """
    if not items:
        raise UserError("--grid needs at least one KEY=V1,V2 item, e.g. --grid num_heads=1,4,8 kappa=0.1,0.2")
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not values.strip():
            raise UserError(f"--grid item {item!r} is not KEY=V1,V2,...; e.g. num_heads=1,4,8")
        if key not in SWEEP_KEYS:
            raise UserError(f"--grid key {key!r} is not sweepable; choose from {', '.join(SWEEP_KEYS)}")
        if key in grid:
            raise UserError(f"--grid key {key!r} is given twice; list all its values in one item")
        parsed = []
        for text in values.split(","):
            try:
                parsed.append(OPTIONS[key].parse(text.replace("+", ",") if key == "attention" else text))
            except ValueError as exc:
                raise UserError(f"--grid {key}: {text.strip()!r} is not a valid {OPTIONS[key].kind.__name__} "
                                f"value ({exc})") from None
        if len(set(map(repr, parsed))) != len(parsed):
            raise UserError(f"--grid {key}: values {values!r} repeat; list each value once")
        grid[key] = parsed
    return grid


def _slug(point: dict[str, Any]) -> str:
    parts = [f"{k}-{short_value(v)}" for k, v in point.items()]
    return re.sub(r"[^A-Za-z0-9._-]+", "", "_".join(parts)) or "point"


def grid_points(base: RunConfig, grid: dict[str, list[Any]], out: str | os.PathLike) -> list[RunConfig]:
    """One config per combination of ``grid`` values applied to ``base``, each with ``out`` = ``OUT/<slug>``.

    Raises :class:`UserError` naming the first point whose values no run can use.
    """
    points = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values, strict=True))
        name = _slug(point)
        try:
            points.append(base.replace(**point, out=str(Path(out) / name)))
        except UserError as exc:
            raise UserError(f"sweep point {name}: {exc}") from None
    return points


def check_points(points: Sequence[RunConfig]) -> None:
    """Check every point before any trains: its recipe, its model (built on the ``meta`` device: no memory, no
    compute), that no two points train the same model with the same settings (their attention sizes compared
    as the depths they resolve to), and its subset and batch size against the training split (loaded once per
    distinct split).

    Raises :class:`UserError` naming the first bad point (or pair of points) and what is wrong.
    """
    import torch

    from aacn.data.registry import load_data
    from aacn.models.registry import create_model
    from aacn.train.recipes import RECIPES

    seen: dict[str, str] = {}  # what a point trains -> the first point that trains it
    for cfg in points:
        name = Path(cfg.out).name
        try:
            if cfg.recipe not in RECIPES:
                raise UserError(f"recipe must be one of {', '.join(RECIPES)}, got {cfg.recipe!r}")
            with torch.device("meta"):
                model = create_model(cfg.arch)
        except (UserError, ValueError) as exc:
            raise UserError(f"sweep point {name}: {exc}") from None
        same = seen.setdefault(_trained(cfg, model), name)
        if same != name:
            layers = describe_attention(list(getattr(model, "attention_layers", [])))
            raise UserError(f"sweep points {same} and {name} train the same model ({layers}) with the same "
                            "settings; drop one of the values, or change the other options so they differ")
    train_sizes: dict[tuple, int] = {}
    for cfg in points:
        name = Path(cfg.out).name
        if RunDir(cfg.out).is_finished():
            continue  # its data were checked when it trained
        split = (cfg.dataset, cfg.data_dir, cfg.val_size, cfg.split_seed)
        if split not in train_sizes:  # data problems are no point's own: they keep their own message
            data = load_data(cfg, use_subset=False)
            train_sizes[split] = len(data.train)
            del data
        images = train_sizes[split]
        if cfg.subset is not None and cfg.subset > images:
            raise UserError(f"sweep point {name}: subset={cfg.subset} is larger than the {images} training "
                            f"images of {cfg.dataset} (val_size={cfg.val_size})")
        if cfg.batch_size > min(images, cfg.subset or images):
            raise UserError(f"sweep point {name}: batch_size={cfg.batch_size} is larger than the "
                            f"{min(images, cfg.subset or images)} training images")


def _trained(cfg: RunConfig, model: Any) -> str:
    """What a point trains: its result-affecting options, with the attention sizes (heads, kappa, upsilon, key
    depth per head) replaced by the depths they resolve to in the built model."""
    sizes = {"num_heads", "kappa", "upsilon", "min_key_depth_per_head"}
    options = {k: getattr(cfg, k) for k in OPTIONS if k not in RESULT_NEUTRAL and k not in sizes}
    return json.dumps([options, list(getattr(model, "attention_layers", []))], sort_keys=True, default=str)


def summarize(run_dirs: Sequence[str | os.PathLike], keys: Sequence[str], out: str | os.PathLike,
              *, partial: bool = False, allow_mixed_data: bool = False) -> ReportResult:
    """Write ``sweep.md``, ``sweep.csv`` and ``accuracy_vs_params.png`` for the runs, one row per point.

    Data are checked as ``aacn report`` checks them: points trained on different images are refused (naming
    ``--allow-mixed-data``) unless ``allow_mixed_data``, which adds a Data column; rows trained on data that is
    not official are marked, with a footnote.
    """
    from aacn.viz.curves import plot_accuracy_vs_params

    records = load_runs(run_dirs, partial=partial)
    mixed = check_same_data(records, allow_mixed=allow_mixed_data, what="one sweep")
    rows = group_runs(records)
    shown = [k for k in keys if k != "seed"]
    for row in rows:
        row.label = ", ".join(f"{k}={short_value(row.fields.get(k))}" for k in shown) or row.label
    columns = [*BASIC_COLUMNS, TIME_COLUMN]
    table, notes = tabulate(rows, columns, mixed=mixed, lead=[("Params", lambda r: format_params(r.stats["params"]))])
    text = "\n".join([table, "", *notes] if notes else [table])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "sweep.md"
    csv_path = out / "sweep.csv"
    summary, table = f"# Sweep over {', '.join(keys)}\n\n{text}\n", rows_csv(rows, extra=shown)
    atomic_write(md, lambda fh: fh.write(summary))
    atomic_write(csv_path, lambda fh: fh.write(table))
    points = [(r.label, r.stats["params"].mean, r.stats["test_acc"].mean, r.stats["test_acc"].std)
              for r in rows if r.stats["params"].mean is not None and r.stats["test_acc"].mean is not None]
    png = plot_accuracy_vs_params(points, out / "accuracy_vs_params.png", title=f"Sweep over {', '.join(shown)}")
    return ReportResult(text, rows, [md, csv_path, png])


def sweep(base: RunConfig, grid: dict[str, list[Any]], out: str | os.PathLike, *, overwrite: bool = False,
          allow_mixed_data: bool = False, log: Any = print) -> ReportResult:
    """Check every grid point, train (or keep / resume) each under ``out``, then write the summary there.

    ``overwrite`` retrains points whose folders hold other settings instead of refusing them;
    ``allow_mixed_data`` tabulates points trained on different images (see :func:`summarize`).
    """
    points = grid_points(base, grid, out)
    with run_lock(check_output_dir(out, "--out")):  # one sweep per folder; each point also locks its own
        check_points(points)
        train_all(points, overwrite=overwrite, log=log,
                  heading=lambda i, cfg: f"== sweep point {i}/{len(points)}: {Path(cfg.out).name}")
        return summarize([cfg.out for cfg in points], list(grid), out, allow_mixed_data=allow_mixed_data)
