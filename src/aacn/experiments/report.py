"""``aacn report``: tables of finished runs, read from their run directories only.

A report groups runs whose configurations are equal except for the seed (and the resume-safe fields such as
``out`` or ``device``), so several seeds of one model become one row showing ``mean ± std`` (sample standard
deviation, ``ddof=1``). Rows are named from the config by :func:`run_label` ("AA-WRN-28-10", "ResNet-34 (no
aug)"); when two different groups would get the same name, the config fields on which they differ are appended.

Columns follow the replication's layout: train / validation / test top-1 accuracy (percent) and training time;
``extended`` adds parameters, peak memory and images/s (Table 2); a CIFAR-100 run adds test top-5.

Unfinished runs (no ``results.json``) are refused with a message naming them, unless ``partial=True``: then
they are shown from their last finished epoch, marked ``*``, with no test accuracy.

Outputs (in ``out``): ``report.md`` (the table plus the settings and run folders of each row), ``report.csv``
(one row per group; ``<metric>_mean`` / ``<metric>_std`` columns, raw units) and ``learning_curves.png``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aacn.config import OPTIONS, RESUME_MUTABLE, RunConfig
from aacn.errors import UserError
from aacn.experiments.labels import run_label
from aacn.train.records import RunDir

__all__ = [
    "METRICS",
    "BASIC_COLUMNS",
    "TIME_COLUMN",
    "EXTENDED_COLUMNS",
    "RunRecord",
    "Stat",
    "ReportRow",
    "ReportResult",
    "load_run",
    "load_runs",
    "group_runs",
    "run_label",
    "flat_config",
    "short_value",
    "format_params",
    "markdown_table",
    "format_rows",
    "rows_csv",
    "report",
]

# Config fields that never distinguish two rows (seeds are averaged; the rest cannot change a result).
GROUP_IGNORED = frozenset({"seed"}) | RESUME_MUTABLE

# Numbers collected per run, named as in results.json.
METRICS = ("train_acc", "val_acc", "test_acc", "test_top5", "train_time_s", "params", "peak_mem_bytes",
           "images_per_s", "flops_per_image")


@dataclass
class RunRecord:
    """What a report knows about one run directory (all read from its files)."""

    path: Path
    config: dict[str, Any]
    info: dict[str, Any]
    results: dict[str, Any] | None
    metrics: list[dict[str, Any]]

    @property
    def finished(self) -> bool:
        return self.results is not None

    def values(self) -> dict[str, float | None]:
        """The numbers of :data:`METRICS`; for an unfinished run, taken from its last finished epoch."""
        if self.results is not None:
            res = self.results
            out = {k: res.get(k) for k in METRICS}
            if out["train_time_s"] is None:
                out["train_time_s"] = res.get("wall_time_s")
            return out
        last = self.metrics[-1] if self.metrics else {}
        times = [m.get("epoch_time_s") for m in self.metrics if m.get("epoch_time_s") is not None]
        speeds = [m.get("images_per_s") for m in self.metrics if m.get("images_per_s") is not None]
        mems = [m.get("peak_mem_bytes") for m in self.metrics if m.get("peak_mem_bytes") is not None]
        return {
            "train_acc": last.get("train_acc"),
            "val_acc": last.get("val_acc"),
            "test_acc": None,
            "test_top5": None,
            "train_time_s": sum(times) if times else None,
            "params": self.info.get("params"),
            "peak_mem_bytes": max(mems) if mems else None,
            "images_per_s": sum(speeds) / len(speeds) if speeds else None,
            "flops_per_image": None,
        }


def load_run(path: str | os.PathLike) -> RunRecord:
    """Read one run directory; :class:`UserError` if it is not one."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise UserError(f"run directory {run.path} does not exist; pass folders written by 'aacn train'")
    if not run.config_path.is_file():
        raise UserError(f"{run.path} is not a run directory (no config.json); pass folders written by 'aacn train'")
    stored = run.read_config()
    config = stored.get("config", stored)
    results = run.read_results() if run.is_finished() else None
    return RunRecord(run.path, config, stored.get("info", {}), results, run.read_metrics())


def load_runs(paths: Sequence[str | os.PathLike], *, partial: bool = False) -> list[RunRecord]:
    """Read run directories (in the given order, duplicates dropped).

    Raises :class:`UserError` naming every unfinished run unless ``partial`` is set.
    """
    if not paths:
        raise UserError("no run directories given; pass one or more folders written by 'aacn train'")
    seen: set[Path] = set()
    records = []
    for p in paths:
        key = Path(p).resolve()
        if key not in seen:
            seen.add(key)
            records.append(load_run(p))
    unfinished = [str(r.path) for r in records if not r.finished]
    if unfinished and not partial:
        raise UserError(
            f"unfinished run(s) without results.json: {', '.join(unfinished)}; finish them with "
            f"'aacn train --resume --out DIR ...' or pass --partial to show their last epoch"
        )
    return records


# ------------------------------------------------------------------------------------------------ labels
def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """Options that tell rows apart (flat names, any saved config format), ignored ones dropped."""
    return {k: v for k, v in RunConfig.from_dict(config).flat().items() if k not in GROUP_IGNORED}


def _key(config: dict[str, Any]) -> str:
    return json.dumps(flat_config(config), sort_keys=True, default=str)


def short_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


# ---------------------------------------------------------------------------------------------- grouping
@dataclass
class Stat:
    """Mean, sample standard deviation (``None`` for one value) and count of one metric over a row's runs."""

    mean: float | None
    std: float | None
    n: int


def _stat(values: list[float | None]) -> Stat:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return Stat(None, None, 0)
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return Stat(mean, std, len(vals))


@dataclass
class ReportRow:
    """One row of a report: runs sharing a config up to the seed."""

    label: str
    runs: list[RunRecord]
    fields: dict[str, Any] = field(default_factory=dict)  # flat config shared by the runs
    stats: dict[str, Stat] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        return any(not r.finished for r in self.runs)

    @property
    def seeds(self) -> list[int]:
        return [r.config.get("seed") for r in self.runs]


def group_runs(records: Sequence[RunRecord]) -> list[ReportRow]:
    """Group runs by config minus seed, in order of first appearance, with unique labels."""
    groups: dict[str, ReportRow] = {}
    for rec in records:
        key = _key(rec.config)
        if key not in groups:
            groups[key] = ReportRow(run_label(rec.config), [], flat_config(rec.config))
        groups[key].runs.append(rec)
    rows = list(groups.values())
    by_label: dict[str, list[ReportRow]] = {}
    for row in rows:
        by_label.setdefault(row.label, []).append(row)
    for same in by_label.values():
        if len(same) > 1:  # disambiguate by the fields that differ among them
            names = sorted({k for r in same for k in r.fields})
            differing = [k for k in names if len({short_value(r.fields.get(k)) for r in same}) > 1]
            for r in same:
                r.label += " [" + ", ".join(f"{k}={short_value(r.fields.get(k))}" for k in differing) + "]"
    for row in rows:
        values = [r.values() for r in row.runs]
        row.stats = {m: _stat([v[m] for v in values]) for m in METRICS}
    return rows


# -------------------------------------------------------------------------------------------- formatting
def _fmt_pct(s: Stat) -> str:
    if s.mean is None:
        return "—"
    return f"{s.mean:.2f}" + (f" ± {s.std:.2f}" if s.std is not None else "")


def _fmt_time(s: Stat) -> str:
    if s.mean is None:
        return "—"
    unit, div = ("s", 1.0) if s.mean < 120 else ("min", 60.0) if s.mean < 7200 else ("h", 3600.0)
    digits = 0 if unit == "s" and s.mean >= 10 else 1
    text = f"{s.mean / div:.{digits}f}"
    if s.std is not None:
        text += f" ± {s.std / div:.{digits}f}"
    return f"{text} {unit}"


def format_params(s: Stat) -> str:
    if s.mean is None:
        return "—"
    return f"{s.mean / 1e6:.2f}M" if s.mean >= 1e6 else f"{s.mean / 1e3:.1f}k"


def _fmt_mem(s: Stat) -> str:
    return "—" if s.mean is None else f"{s.mean / 2**20:.0f} MiB"


def _fmt_speed(s: Stat) -> str:
    if s.mean is None:
        return "—"
    return f"{s.mean:.0f}" + (f" ± {s.std:.0f}" if s.std is not None else "")


Column = tuple[str, str, Callable[[Stat], str]]  # metric, header, formatter
BASIC_COLUMNS: list[Column] = [
    ("train_acc", "Train acc. (%)", _fmt_pct),
    ("val_acc", "Val. acc. (%)", _fmt_pct),
    ("test_acc", "Test acc. (%)", _fmt_pct),
]
TOP5_COLUMN: Column = ("test_top5", "Test top-5 (%)", _fmt_pct)
TIME_COLUMN: Column = ("train_time_s", "Training time", _fmt_time)
EXTENDED_COLUMNS: list[Column] = [
    ("params", "Params", format_params),
    ("peak_mem_bytes", "Peak mem.", _fmt_mem),
    ("images_per_s", "Images/s", _fmt_speed),
]


def columns_for(rows: Sequence[ReportRow], extended: bool) -> list[Column]:
    """The report's metric columns: top-5 when any row is CIFAR-100, extras for ``extended``."""
    cols = list(BASIC_COLUMNS)
    if any(r.fields.get("dataset") == "cifar100" for r in rows):
        cols.append(TOP5_COLUMN)
    cols.append(TIME_COLUMN)
    if extended:
        cols += EXTENDED_COLUMNS
    return cols


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table with padded columns (text left, everything else right)."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = (str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in pairs)
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def format_rows(
    rows: Sequence[ReportRow], columns: Sequence[Column], *, lead: Sequence[tuple[str, Callable]] = ()
) -> str:
    """Markdown table of ``rows``: Model, Runs, the ``lead`` columns (header, row -> text), then ``columns``."""
    headers = ["Model", "Runs", *(h for h, _ in lead), *(h for _, h, _ in columns)]
    body = [
        [row.label + (" *" if row.partial else ""), str(len(row.runs)), *(f(row) for _, f in lead),
         *(fmt(row.stats[m]) for m, _, fmt in columns)]
        for row in rows
    ]
    return markdown_table(headers, body)


def settings_line(row: ReportRow) -> str:
    """How a row's runs were trained, in one line (for report.md)."""
    f = row.fields
    kwargs = {k: v for k, v in f.items() if OPTIONS[k].group == "arch" and k != "model" and v != OPTIONS[k].default}
    parts = [f"{f.get('model')} on {f.get('dataset')}", f"{f.get('epochs')} epochs", f"recipe {f.get('recipe')}",
             f"batch {f.get('batch_size')}", "augmented" if f.get("augment") else "no augmentation"]
    if f.get("subset"):
        parts.append(f"subset {f['subset']}")
    parts += [f"{k}={short_value(v)}" for k, v in kwargs.items()]
    parts.append("seeds " + ",".join(map(str, row.seeds)))
    return "; ".join(parts)


def rows_csv(rows: Sequence[ReportRow], extra: Sequence[str] = ()) -> str:
    """CSV text, one line per row: label, runs, seeds, partial, ``extra`` config fields, metric means/stds."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["label", "runs", "seeds", "partial", "model", "dataset", "epochs", "recipe", *extra,
                     *(f"{m}_{s}" for m in METRICS for s in ("mean", "std")), "run_dirs"])
    for row in rows:
        f = row.fields
        writer.writerow([
            row.label, len(row.runs), " ".join(map(str, row.seeds)), int(row.partial), f.get("model"),
            f.get("dataset"), f.get("epochs"), f.get("recipe"), *(short_value(f.get(k)) for k in extra),
            *("" if v is None else repr(v) for m in METRICS for v in (row.stats[m].mean, row.stats[m].std)),
            " ".join(str(r.path) for r in row.runs),
        ])
    return buf.getvalue()


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
    title: str = "Results",
    curves: bool = True,
) -> ReportResult:
    """Summarise run directories into ``out/report.md``, ``out/report.csv`` and ``out/learning_curves.png``.

    Args:
        run_dirs: folders written by ``aacn train`` (or ``aacn reproduce`` / ``aacn sweep``).
        out: where to write; default: the common parent of ``run_dirs``.
        partial: include unfinished runs (marked ``*``) instead of refusing them.
        extended: add parameter, peak-memory and images/s columns.
        title: heading of ``report.md``.
        curves: draw the learning curves.
    """
    records = load_runs(run_dirs, partial=partial)
    rows = group_runs(records)
    table = format_rows(rows, columns_for(rows, extended))
    notes = []
    if any(r.partial for r in rows):
        notes.append("\\* unfinished: last finished epoch shown; no test accuracy yet.")
    if any(len(r.runs) > 1 for r in rows):
        notes.append("Several runs per row: mean ± sample standard deviation over seeds.")
    out_dir = Path(out) if out is not None else default_out(run_dirs)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", "", table, ""]
    md += [*notes, ""] if notes else []
    md += ["## Settings", ""]
    md += [f"- **{r.label}**: {settings_line(r)}; runs: {', '.join(str(x.path) for x in r.runs)}" for r in rows]
    files = [out_dir / "report.md", out_dir / "report.csv"]
    files[0].write_text("\n".join(md) + "\n")
    files[1].write_text(rows_csv(rows))
    if curves:
        from aacn.viz.curves import plot_learning_curves

        files.append(plot_learning_curves(
            [(r.label, [x.metrics for x in r.runs]) for r in rows], out_dir / "learning_curves.png", title=title
        ))
    return ReportResult("\n".join([table, *notes]), rows, files)
