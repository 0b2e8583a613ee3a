"""``aacn reproduce``: train every run of a preset, one after the other, then report them.

Runs live in ``OUT/<run>/`` (:func:`aacn.experiments.presets.run_folder`), one folder per distinct experiment of
a scale, so a run that two tables share (Table 1's augmented rows are Table 2's plain rows) trains once. Each
table's report goes to ``OUT/<table>/``. A finished run is kept and one that has started is resumed from its
last checkpoint, so a reproduction that was interrupted (Ctrl-C, a killed job, a crash) continues where it
stopped when the same command is given again. A run folder whose saved settings differ from the requested
ones (other than :data:`aacn.config.RESULT_NEUTRAL` options) is refused, naming the differences, unless
``overwrite`` retrains it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aacn.config import RunConfig
from aacn.errors import UserError
from aacn.experiments.estimate import Estimator, RunPlan, estimate_seconds, format_duration, load_average, plan_line
from aacn.experiments.presets import preset, report_folder, run_folder
from aacn.experiments.report import ReportResult, report
from aacn.train import loop
from aacn.train.rundir import RunDir, run_differences

__all__ = ["default_out", "check_reuse", "train_or_resume", "train_all", "plan_runs", "dry_run", "reproduce",
           "RERUN_HINT"]

RERUN_HINT = "run the same command again to continue (finished runs are kept, the interrupted one resumes)"


def default_out(scale: str) -> Path:
    """``runs/<scale>``: the runs of every table at one scale, and the tables' reports."""
    return Path("runs") / scale


def check_reuse(config: RunConfig) -> RunDir:
    """The run directory of ``config``; raises :class:`UserError` if it holds a run with other settings.

    Options that cannot change a result (:data:`aacn.config.RESULT_NEUTRAL`) are not compared; the recorded
    recipe is compared field by field with its declaration now.
    """
    run_dir = RunDir(config.out)
    diffs = run_differences(run_dir, config)  # options and resolved recipe; an inconsistent record is refused
    if diffs:
        state = "finished" if run_dir.is_finished() else "unfinished"
        raise UserError(f"{config.out} holds a {state} run with other settings ({'; '.join(diffs)}); "
                        "pass --overwrite to retrain it, or choose another --out")
    return run_dir


def train_or_resume(config: RunConfig, *, overwrite: bool = False, log: Any = print) -> str:
    """Bring the run in ``config.out`` to its end: keep it if finished, resume it if started, else train it.

    A run directory with other settings is refused (:func:`check_reuse`) unless ``overwrite``, which trains
    afresh. Returns ``"skipped"``, ``"resumed"`` or ``"trained"``. ``aacn.train.loop.run`` is looked up at call
    time.
    """
    if overwrite:
        log(f"[train] {config.out} (overwrite)")
        loop.run(config, overwrite=True)
        return "trained"
    run_dir = check_reuse(config)
    if run_dir.is_finished():
        log(f"[skip] {config.out} has finished")
        return "skipped"
    if run_dir.has_started():
        log(f"[resume] {config.out}")
        loop.run(config, resume=True)
        return "resumed"
    log(f"[train] {config.out}")
    loop.run(config)
    return "trained"


def train_all(configs: list[RunConfig], *, overwrite: bool = False, log: Any = print,
              heading: Any = None) -> None:
    """:func:`train_or_resume` each config in turn; on Ctrl-C say how to continue, then re-raise.

    Every run directory is checked before the first trains, so a mismatch stops the command before any work.
    ``heading(i, config)`` gives the line logged before run ``i`` (1-based).
    """
    if not overwrite:
        for config in configs:
            check_reuse(config)
    try:
        for i, config in enumerate(configs, 1):
            if heading is not None:
                log(heading(i, config))
            train_or_resume(config, overwrite=overwrite, log=log)
    except KeyboardInterrupt:
        log(f"interrupted: {RERUN_HINT}")
        raise


def plan_runs(configs: list[RunConfig], labels: dict[str, str], estimator: Estimator | None = None
              ) -> Iterator[RunPlan]:
    """Where each run stands (finished, started, new) and, for the unfinished, the estimated training time on
    this machine (:mod:`aacn.experiments.estimate`), one run at a time; a folder with other settings is refused
    (before any run is timed) as training would refuse it."""
    estimator = estimator if estimator is not None else Estimator()
    run_dirs = [check_reuse(config) for config in configs]  # every folder checked before the slow timing
    for config, run_dir in zip(configs, run_dirs, strict=True):
        label = labels[config.out]
        if run_dir.is_finished():
            recorded = run_dir.read_results().get("train_time_s")
            yield RunPlan(label, config, "finished", 0.0, recorded if isinstance(recorded, (int, float)) else None)
            continue
        done = len(run_dir.read_metrics()) if run_dir.has_started() else 0
        yield RunPlan(label, config, "started" if run_dir.has_started() else "new",
                      estimate_seconds(estimator, config, from_epoch=min(done, config.epochs)))


def dry_run(configs: list[RunConfig], labels: dict[str, str], title: str, log: Any = print,
            estimator: Estimator | None = None) -> list[RunPlan]:
    """Print each run with its state or estimated time as soon as it is known (timing a model takes a while on
    a busy machine), then the totals; nothing trains. Returns the plans."""
    estimator = estimator if estimator is not None else Estimator()
    log(f"{title}: {len(configs)} runs (dry run: nothing trains; estimates timed on this machine, "
        f"{load_average()})")
    plans = []
    for i, plan in enumerate(plan_runs(configs, labels, estimator), 1):
        plans.append(plan)
        log(plan_line(i, plan))
    todo = [p for p in plans if p.status != "finished"]
    longest = max(todo, key=lambda p: p.seconds or 0.0, default=None)
    unknown = sum(p.seconds is None for p in todo)
    log(f"total: {len(plans) - len(todo)} finished, {len(todo)} to train, est. "
        f"{format_duration(sum(p.seconds or 0.0 for p in todo))}"
        + (f" (longest: {longest.label}, {format_duration(longest.seconds)})" if longest else "")
        + (f"; {unknown} run(s) without an estimate (their dataset's entry has no image counts)" if unknown else ""))
    if estimator.busy:
        log(f"the machine was busy while timing ({load_average()}): estimates use CPU time per thread, nearer "
            "what the runs take on idle cores than the wall time but still high; time on a quiet machine")
    return plans


def reproduce(
    table: str,
    *,
    scale: str = "smoke",
    seeds: int = 1,
    placement: str = "seed",
    attention_impl: str | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    dry_run_only: bool = False,
    log: Any = print,
    **overrides: Any,
) -> ReportResult | None:
    """Train (or keep / resume) every run of ``preset(table, scale, ...)`` under ``out``, then report them.

    Args:
        table: ``"table1"``, ``"table2"`` or ``"paper-cifar100"``.
        scale: ``"smoke"``, ``"fast"`` or ``"full"``.
        seeds: runs per row (seeds ``0..seeds-1``).
        placement: Table 2's attention placement, ``"seed"`` or ``"paper"``.
        attention_impl: how the attention rows compute attention (default: each model's ``"auto"``).
        out: folder of the runs and the reports; default :func:`default_out`.
        overwrite: retrain runs whose folders hold other settings instead of refusing them.
        dry_run_only: print each run with its state or estimated time and the total (:func:`dry_run`), train
            nothing, return ``None``.
        log: where progress lines go.
        **overrides: other options for every run (``data_dir``, ``device``, ``amp``, ...).

    Returns:
        The report (also written to ``out/<table>/report.md``, ``report.csv``, ``learning_curves.png``).
    """
    out_dir = Path(out) if out is not None else default_out(scale)
    runs = preset(table, scale, seeds=seeds, placement=placement, attention_impl=attention_impl, **overrides)
    configs = [config.replace(out=str(out_dir / run_folder(label, config))) for label, config in runs]
    labels = {config.out: label for (label, _), config in zip(runs, configs, strict=True)}
    title = f"{table} ({scale} scale" + (f", {placement} placement)" if table == "table2" else ")")
    if dry_run_only:
        dry_run(configs, labels, title, log)
        return None
    start = time.perf_counter()
    train_all(configs, overwrite=overwrite, log=log, heading=lambda i, c: (
        f"== {table} ({scale}) run {i}/{len(configs)}: {labels[c.out]}, seed {c.seed}"))
    elapsed = time.perf_counter() - start
    result = report([c.out for c in configs], out_dir / report_folder(table, placement),
                    extended=True, title=title)
    log(f"{len(configs)} runs done in {elapsed / 60:.1f} min (this invocation)")
    return result
