"""``aacn reproduce``: train every run of a preset, one after the other, then report them.

Each run lives in ``OUT/<row-slug>-seed<k>/``. A run that has finished is skipped; one that has started but not
finished is resumed from its last checkpoint. So a reproduction that was interrupted (Ctrl-C, a killed job, a
crash) continues where it stopped when the same command is given again.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from aacn.config import RunConfig
from aacn.experiments.presets import preset, run_slug
from aacn.experiments.report import ReportResult, report
from aacn.train.records import RunDir

__all__ = ["default_out", "train_or_resume", "reproduce"]


def default_out(table: str, scale: str, placement: str = "seed") -> Path:
    """``runs/<table>[-<placement>]-<scale>``; the placement only names Table 2 folders."""
    name = f"{table}-{placement}-{scale}" if table == "table2" else f"{table}-{scale}"
    return Path("runs") / name


def train_or_resume(config: RunConfig, *, log: Any = print) -> str:
    """Bring the run in ``config.out`` to its end: skip it if finished, resume it if started, else train it.

    Returns ``"skipped"``, ``"resumed"`` or ``"trained"``. ``aacn.train.run`` is looked up at call time.
    """
    from aacn import train

    run_dir = RunDir(config.out)
    if run_dir.is_finished():
        log(f"[skip] {config.out} has finished")
        return "skipped"
    if run_dir.has_started():
        log(f"[resume] {config.out}")
        train.run(config, resume=True)
        return "resumed"
    log(f"[train] {config.out}")
    train.run(config)
    return "trained"


def reproduce(
    table: str,
    *,
    scale: str = "smoke",
    seeds: int = 1,
    placement: str = "seed",
    attention_impl: str | None = None,
    out: str | os.PathLike | None = None,
    log: Any = print,
    **overrides: Any,
) -> ReportResult:
    """Train (or skip / resume) every run of ``preset(table, scale, ...)`` under ``out``, then report them.

    Args:
        table: ``"table1"``, ``"table2"`` or ``"paper-cifar100"``.
        scale: ``"smoke"``, ``"fast"`` or ``"full"``.
        seeds: runs per row (seeds ``0..seeds-1``).
        placement: Table 2's attention placement, ``"seed"`` or ``"paper"``.
        attention_impl: how the attention rows compute attention (default: each model's ``"auto"``).
        out: folder of the runs and the report; default :func:`default_out`.
        log: where progress lines go.
        **overrides: other :class:`RunConfig` fields for every run (``data_dir``, ``device``, ``amp``, ...).

    Returns:
        The report (also written to ``out/report.md``, ``report.csv``, ``learning_curves.png``).
    """
    out_dir = Path(out) if out is not None else default_out(table, scale, placement)
    runs = preset(table, scale, seeds=seeds, placement=placement, attention_impl=attention_impl, **overrides)
    run_dirs = []
    start = time.perf_counter()
    for i, (label, config) in enumerate(runs, 1):
        run_dir = out_dir / run_slug(label, config.seed)
        config = dataclasses.replace(config, out=str(run_dir))
        log(f"== {table} ({scale}) run {i}/{len(runs)}: {label}, seed {config.seed}")
        train_or_resume(config, log=log)
        run_dirs.append(run_dir)
    elapsed = time.perf_counter() - start
    title = f"{table} ({scale} scale" + (f", {placement} placement)" if table == "table2" else ")")
    result = report(run_dirs, out_dir, extended=table != "table1", title=title)
    log(f"{len(runs)} runs done in {elapsed / 60:.1f} min (this invocation)")
    return result
