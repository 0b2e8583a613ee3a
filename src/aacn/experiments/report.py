"""``aacn report``: tables of finished runs, read from their run directories only.

:func:`report` reads the run directories (:mod:`aacn.experiments.rows`: records checked, grouped by config up to
the seed, mean ± std over seeds), refuses runs of one dataset on different images unless ``allow_mixed_data``,
and writes the tables (:mod:`aacn.experiments.tables`), the paired effects of attention
(:mod:`aacn.experiments.effects`) and the learning curves. ``out`` is checked before any record is read.

Outputs (in ``out``, each written atomically): ``report.md`` (the table plus the settings and run folders of
each row), ``report.csv`` (one row per group; ``<metric>_mean`` / ``<metric>_std`` columns, raw units) and
``learning_curves.png``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aacn.errors import UserError
from aacn.experiments.effects import effects_markdown, table_effects
from aacn.experiments.rows import ReportRow, check_same_data, group_runs, load_runs
from aacn.experiments.tables import columns_for, provenance_table, rows_csv, settings_line, tabulate
from aacn.files import atomic_write, check_output_dir

__all__ = ["ReportResult", "default_out", "report"]


def default_out(paths: Sequence[str | os.PathLike]) -> Path:
    """The common parent folder of the run directories (the current folder if they share none)."""
    try:
        return Path(os.path.commonpath([str(Path(p).resolve().parent) for p in paths]))
    except ValueError:
        return Path.cwd()


@dataclass
class ReportResult:
    """What :func:`report` produced: the markdown table and the files written."""

    markdown: str
    rows: list[ReportRow]
    files: list[Path]


def report(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    partial: bool = False,
    extended: bool = True,
    provenance: bool = False,
    allow_mixed_data: bool = False,
    title: str = "Results",
    curves: bool = True,
) -> ReportResult:
    """Summarise run directories into ``out/report.md``, ``out/report.csv`` and ``out/learning_curves.png``.

    ``out`` is checked before any record is read; every file is written atomically. Rows trained on data that
    is not official are marked ``†`` (``‡`` where the record does not say), with a footnote naming the data.

    Args:
        run_dirs: folders written by ``aacn train`` (or ``aacn reproduce`` / ``aacn sweep`` / ``aacn anchor``).
        out: where to write; default: the common parent of ``run_dirs``.
        partial: include unfinished runs (marked ``*``) instead of refusing them.
        extended: add parameter, peak-memory and images/s columns.
        provenance: add a table of every run's provenance (code, software, device, precision, compile, data).
        allow_mixed_data: tabulate runs of one dataset trained on different images instead of refusing them.
        title: heading of ``report.md``.
        curves: draw the learning curves.

    Raises:
        UserError: an unusable ``out``, a folder that is no run, a malformed record (naming the file), an
            unfinished run without ``partial``, or runs on different data without ``allow_mixed_data``.
    """
    if not run_dirs:
        raise UserError("no run directories given; pass one or more folders written by 'aacn train'")
    out_dir = check_output_dir(out if out is not None else default_out(run_dirs), "--out")
    records = load_runs(run_dirs, partial=partial)
    mixed = check_same_data(records, allow_mixed=allow_mixed_data)
    rows = group_runs(records)
    table, notes = tabulate(rows, columns_for(rows, extended), mixed=mixed)
    prov = provenance_table(rows) if provenance else None
    effects = effects_markdown(table_effects(rows))
    shown = "\n".join([table, *([""] + notes if notes else []), *([""] + effects if effects else [])]).rstrip()
    shown += "" if prov is None else "\n\n" + prov
    files = [out_dir / "report.md", out_dir / "report.csv"]
    text, csv_text = _report_markdown(title, rows, table, [*notes, *effects], prov), rows_csv(rows)
    atomic_write(files[0], lambda fh: fh.write(text))
    atomic_write(files[1], lambda fh: fh.write(csv_text))
    if curves:
        from aacn.viz.curves import plot_learning_curves

        files.append(plot_learning_curves(
            [(r.label, [x.metrics for x in r.runs]) for r in rows if not r.runs[0].is_anchor],
            out_dir / "learning_curves.png", title=title,
        ))
    return ReportResult(shown, rows, files)


def _report_markdown(title: str, rows: Sequence[ReportRow], table: str, notes: Sequence[str],
                     provenance: str | None) -> str:
    """``report.md``: the title, the table and its notes, the provenance table if any, each row's settings."""
    md = [f"# {title}", "", table, ""]
    md += [*notes, ""] if notes else []
    if provenance is not None:
        md += ["## Provenance", "", provenance, ""]
    md += ["## Settings", ""]
    md += [f"- **{r.label}**: {settings_line(r)}; runs: {', '.join(str(x.path) for x in r.runs)}" for r in rows]
    return "\n".join(md) + "\n"
