"""``aacn sweep``: train a grid of variations of one run and tabulate them.

A grid is given as ``key=v1,v2,...`` items; the keys are model keyword arguments (``num_heads``, ``kappa``,
``upsilon``, ``min_key_depth_per_head``, ``relative``, ``attention``, ``base_width``, ...) or training fields
(``epochs``, ``lr``, ``recipe``, ``seed``, ...); dashes may stand for underscores. Every combination (the
Cartesian product, in the order given) is one point, trained in ``OUT/<key>-<value>_<key>-<value>/``. Points that
have finished are skipped and started ones resumed, so an interrupted sweep continues where it stopped. Every
point is validated (config and model construction on the ``meta`` device) before the first one trains, so a bad
value fails at once.

Outputs in ``OUT``: ``sweep.md`` and ``sweep.csv`` (one row per point; several seeds of a point, via
``seed=0,1,2``, become mean ± std) and ``accuracy_vs_params.png`` (test accuracy against parameter count).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aacn.config import RunConfig
from aacn.errors import UserError
from aacn.experiments.report import (
    BASIC_COLUMNS,
    TIME_COLUMN,
    ReportResult,
    format_params,
    format_rows,
    group_runs,
    load_runs,
    rows_csv,
    short_value,
)
from aacn.experiments.reproduce import train_or_resume

__all__ = ["MODEL_KEYS", "RUN_KEYS", "parse_grid", "grid_points", "check_points", "summarize", "sweep"]

# Model keyword arguments a grid may vary, with their value types.
MODEL_KEYS: dict[str, type] = {
    "attention": str,
    "relative": bool,
    "num_heads": int,
    "kappa": float,
    "upsilon": float,
    "min_key_depth_per_head": int,
    "attention_impl": str,
    "base_width": int,
    "dropout": float,
    "stem": str,
}
# RunConfig fields a grid may vary (the others name places or devices, not experiments).
RUN_KEYS: dict[str, type] = {
    "model": str, "dataset": str, "epochs": int, "batch_size": int, "recipe": str, "lr": float,
    "weight_decay": float, "label_smoothing": float, "augment": bool, "normalize": str, "subset": int,
    "val_size": int, "split_seed": int, "seed": int,
}
_OPTIONAL = {"lr", "weight_decay", "label_smoothing", "subset"}  # "none" means the recipe's default / no subset
_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


def _parse_value(key: str, kind: type, text: str) -> Any:
    text = text.strip()
    if key in _OPTIONAL and text.lower() == "none":
        return None
    try:
        if kind is bool:
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError
        return kind(text)
    except ValueError:
        raise UserError(f"--grid {key}: {text!r} is not a valid {kind.__name__} value") from None


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["num_heads=1,4", "kappa=0.1"]`` -> ``{"num_heads": [1, 4], "kappa": [0.1]}`` (typed, order kept).

    Raises :class:`UserError` naming a malformed item, an unknown key (listing the valid ones), a value of the
    wrong type, a repeated key or a repeated value.
    """
    if not items:
        raise UserError("--grid needs at least one KEY=V1,V2 item, e.g. --grid num_heads=1,4,8 kappa=0.1,0.2")
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not values.strip():
            raise UserError(f"--grid item {item!r} is not KEY=V1,V2,...; e.g. num_heads=1,4,8")
        kind = MODEL_KEYS.get(key) or RUN_KEYS.get(key)
        if kind is None:
            raise UserError(f"--grid key {key!r} is not sweepable; choose from model options "
                            f"{', '.join(MODEL_KEYS)} or run fields {', '.join(RUN_KEYS)}")
        if key in grid:
            raise UserError(f"--grid key {key!r} is given twice; list all its values in one item")
        parsed = [_parse_value(key, kind, v) for v in values.split(",")]
        if len(set(map(repr, parsed))) != len(parsed):
            raise UserError(f"--grid {key}: values {values!r} repeat; list each value once")
        grid[key] = parsed
    return grid


def _slug(point: dict[str, Any]) -> str:
    parts = [f"{k}-{short_value(v)}" for k, v in point.items()]
    return re.sub(r"[^A-Za-z0-9._-]+", "", "_".join(parts)) or "point"


def grid_points(base: RunConfig, grid: dict[str, list[Any]], out: str | os.PathLike) -> list[RunConfig]:
    """One config per combination of ``grid`` values applied to ``base``, each with ``out`` = ``OUT/<slug>``."""
    points = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values, strict=True))
        run_fields = {k: v for k, v in point.items() if k in RUN_KEYS}
        model_kwargs = {**base.model_kwargs, **{k: v for k, v in point.items() if k in MODEL_KEYS}}
        points.append(dataclasses.replace(base, **run_fields, model_kwargs=model_kwargs,
                                          out=str(Path(out) / _slug(point))))
    return points


def check_points(points: Sequence[RunConfig]) -> None:
    """Validate every point's config and build its model on the ``meta`` device (no memory, no compute).

    Raises :class:`UserError` naming the first bad point and what is wrong with it.
    """
    import torch

    from aacn.data import NUM_CLASSES
    from aacn.models import create_model

    for cfg in points:
        name = Path(cfg.out).name
        try:
            cfg.validate()
            with torch.device("meta"):
                create_model(cfg.model, NUM_CLASSES[cfg.dataset], **cfg.model_kwargs)
        except (UserError, ValueError) as exc:
            raise UserError(f"sweep point {name}: {exc}") from None


def summarize(run_dirs: Sequence[str | os.PathLike], keys: Sequence[str], out: str | os.PathLike,
              *, partial: bool = False) -> ReportResult:
    """Write ``sweep.md``, ``sweep.csv`` and ``accuracy_vs_params.png`` for the runs, one row per point."""
    from aacn.viz.curves import plot_accuracy_vs_params

    rows = group_runs(load_runs(run_dirs, partial=partial))
    shown = [k for k in keys if k != "seed"]
    for row in rows:
        row.label = ", ".join(f"{k}={short_value(row.fields.get(k))}" for k in shown) or row.label
    columns = [*BASIC_COLUMNS, TIME_COLUMN]
    table = format_rows(rows, columns, lead=[("Params", lambda r: format_params(r.stats["params"]))])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "sweep.md"
    csv_path = out / "sweep.csv"
    md.write_text(f"# Sweep over {', '.join(keys)}\n\n{table}\n")
    csv_path.write_text(rows_csv(rows, extra=shown))
    points = [(r.label, r.stats["params"].mean, r.stats["test_acc"].mean, r.stats["test_acc"].std)
              for r in rows if r.stats["params"].mean is not None and r.stats["test_acc"].mean is not None]
    png = plot_accuracy_vs_params(points, out / "accuracy_vs_params.png", title=f"Sweep over {', '.join(shown)}")
    return ReportResult(table, rows, [md, csv_path, png])


def sweep(base: RunConfig, grid: dict[str, list[Any]], out: str | os.PathLike, *, log: Any = print
          ) -> ReportResult:
    """Train (or skip / resume) every grid point under ``out``, then write the summary there."""
    points = grid_points(base, grid, out)
    check_points(points)
    for i, cfg in enumerate(points, 1):
        log(f"== sweep point {i}/{len(points)}: {Path(cfg.out).name}")
        train_or_resume(cfg, log=log)
    return summarize([cfg.out for cfg in points], list(grid), out)
