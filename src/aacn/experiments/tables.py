"""Report rows as text: markdown tables, CSV, marks and notes, provenance tables.

Columns follow the replication's layout: train / validation / test top-1 accuracy (percent) and training time;
test accuracy with flip test-time augmentation when a run measured it; ``extended`` adds parameters, peak
memory and images/s (Table 2); a CIFAR-100 run adds test top-5 (:func:`columns_for`). A number that was not
measured shows "—"; rows of several seeds show ``mean ± std``; unfinished rows are marked ``*``.

Rows trained on data that is not official are marked ``†`` and rows whose record predates data provenance
``‡``, with footnotes (:func:`data_marks`); mixed data adds a Data column (:func:`tabulate`). The provenance
table (:func:`provenance_table`) lists every run's code, software, device, precision and compile settings;
records without them show "unknown".
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from typing import Any

from aacn.config import OPTIONS
from aacn.experiments.rows import (
    METRICS,
    UNKNOWN,
    ReportRow,
    RunRecord,
    Stat,
    data_label,
    short_fingerprint,
    short_value,
    test_fingerprint,
)

__all__ = [
    "Column",
    "BASIC_COLUMNS",
    "TOP5_COLUMN",
    "TTA_COLUMN",
    "TIME_COLUMN",
    "EXTENDED_COLUMNS",
    "columns_for",
    "format_params",
    "markdown_table",
    "format_rows",
    "settings_line",
    "rows_csv",
    "NOT_OFFICIAL_MARK",
    "UNKNOWN_DATA_MARK",
    "data_text",
    "data_marks",
    "PROVENANCE_COLUMNS",
    "provenance_table",
    "row_values",
    "tabulate",
]

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
TTA_COLUMN: Column = ("test_acc_tta", "Test acc. TTA (%)", _fmt_pct)
TIME_COLUMN: Column = ("train_time_s", "Training time", _fmt_time)
EXTENDED_COLUMNS: list[Column] = [
    ("params", "Params", format_params),
    ("peak_mem_bytes", "Peak mem.", _fmt_mem),
    ("images_per_s", "Images/s", _fmt_speed),
]


def columns_for(rows: Sequence[ReportRow], extended: bool) -> list[Column]:
    """The report's metric columns: flip-TTA test accuracy when any row has it, top-5 when any row is
    CIFAR-100, extras for ``extended``."""
    cols = list(BASIC_COLUMNS)
    if any(r.stats.get("test_acc_tta", Stat(None, None, 0)).n for r in rows):
        cols.append(TTA_COLUMN)
    if any(r.fields.get("dataset") == "cifar100" for r in rows):
        cols.append(TOP5_COLUMN)
    cols.append(TIME_COLUMN)
    if extended:
        cols += EXTENDED_COLUMNS
    return cols


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, align_right: bool = True) -> str:
    """A GitHub-flavoured markdown table with padded columns (the first left, the others right unless
    ``align_right`` is off)."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = (str(c).ljust(w) if i == 0 or not align_right else str(c).rjust(w) for i, (c, w) in pairs)
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i and align_right else ("-" * (w + 2))
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def format_rows(
    rows: Sequence[ReportRow], columns: Sequence[Column], *, lead: Sequence[tuple[str, Callable]] = (),
    trail: Sequence[tuple[str, Callable]] = (), marks: dict[int, str] | None = None,
) -> str:
    """Markdown table of ``rows``: Model, Runs, the ``lead`` columns (header, row -> text), ``columns``, then the
    ``trail`` columns. ``marks`` (row index -> text, e.g. from :func:`data_marks`) are appended to row names."""
    marks = marks or {}
    headers = ["Model", "Runs", *(h for h, _ in lead), *(h for _, h, _ in columns), *(h for h, _ in trail)]
    body = [
        [row.label + (" *" if row.partial else "") + (f" {marks[i]}" if i in marks else ""), str(len(row.runs)),
         *(f(row) for _, f in lead), *(fmt(row.stats[m]) for m, _, fmt in columns), *(f(row) for _, f in trail)]
        for i, row in enumerate(rows)
    ]
    return markdown_table(headers, body)


def settings_line(row: ReportRow) -> str:
    """How a row's runs were trained, in one line (for report.md)."""
    f = row.fields
    if row.runs[0].is_anchor:
        extra = [f"{k} {short_value(v)}" for k, v in f.items() if k not in ("kind", "anchor", "dataset")]
        return "; ".join([f"anchor {f.get('anchor')} on {f.get('dataset')}", *extra,
                          "seeds " + ",".join(map(str, row.seeds))])
    kwargs = {k: v for k, v in f.items()
              if OPTIONS[k].group.startswith("arch") and k != "model" and v != OPTIONS[k].default}
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


# ------------------------------------------------------------------------------------- data, provenance
NOT_OFFICIAL_MARK = "†"
UNKNOWN_DATA_MARK = "‡"


def data_text(rec: RunRecord) -> str:
    """The run's data in a few words: label and the start of its test fingerprint."""
    label = data_label(rec)
    fingerprint = test_fingerprint(rec)
    return label if fingerprint is None else f"{label}, test {short_fingerprint(fingerprint)}"


def data_marks(rows: Sequence[ReportRow]) -> tuple[dict[int, str], list[str]]:
    """Marks for rows trained on data that is not official (``†``) or of unknown origin (``‡``), and their notes.

    Returns ``({row index: mark}, footnote lines)``; the footnote of ``†`` names each such data set's label,
    test fingerprint and the files that differ from the official ones.
    """
    marks: dict[int, str] = {}
    unofficial: dict[tuple[str, str | None], tuple[str, list[str]]] = {}
    unknown = False
    for i, row in enumerate(rows):
        mark = ""
        for rec in row.runs:
            label = data_label(rec)
            if label == UNKNOWN:
                unknown = True
                mark += UNKNOWN_DATA_MARK if UNKNOWN_DATA_MARK not in mark else ""
            elif label != "official":
                files = [str(f) for f in (rec.data or {}).get("differing_files") or []]
                unofficial.setdefault((rec.dataset, test_fingerprint(rec)), (label, files))
                mark = NOT_OFFICIAL_MARK + mark if NOT_OFFICIAL_MARK not in mark else mark
        if mark:
            marks[i] = mark
    notes = []
    for (dataset, fp), (label, files) in sorted(unofficial.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        differing = f"; files that differ from the official ones: {', '.join(files)}" if files else ""
        notes.append(f"{NOT_OFFICIAL_MARK} trained on {dataset} data labelled '{label}' (not the official files; "
                     f"test fingerprint {short_fingerprint(fp)}){differing}.")
    if unknown:
        notes.append(f"{UNKNOWN_DATA_MARK} the record does not say which data it was trained on (written before "
                     "records held data provenance).")
    return marks, notes


def _commit_text(prov: dict[str, Any]) -> str:
    commit = prov.get("git_commit")
    if not commit:
        return UNKNOWN
    dirty = prov.get("git_dirty")
    return str(commit)[:12] + (" +dirty" if dirty else "" if dirty is not None else " (dirty?)")


def _device_text(prov: dict[str, Any]) -> str:
    name = prov.get("device_name") or prov.get("device")
    if not name:
        return UNKNOWN
    count = prov.get("device_count")
    return f"{name} x{count}" if count not in (None, 1) else str(name)


def _compile_text(prov: dict[str, Any]) -> str:
    if "compile" not in prov:
        return UNKNOWN
    if not prov["compile"]:
        return "off"
    return f"on ({prov['compile_mode']})" if prov.get("compile_mode") else "on"


def _value_text(prov: dict[str, Any], key: str) -> str:
    value = prov.get(key)
    return UNKNOWN if value is None else str(value)


# Provenance columns: header, record -> text. Records without provenance show "unknown".
PROVENANCE_COLUMNS: list[tuple[str, Callable[[RunRecord], str]]] = [
    ("aacn", lambda r: _value_text(r.provenance or {}, "aacn_version")),
    ("Commit", lambda r: _commit_text(r.provenance or {})),
    ("torch", lambda r: _value_text(r.provenance or {}, "torch")),
    ("CUDA", lambda r: _value_text(r.provenance or {}, "cuda") if r.provenance else UNKNOWN),
    ("cuDNN", lambda r: _value_text(r.provenance or {}, "cudnn") if r.provenance else UNKNOWN),
    ("Device", lambda r: _device_text(r.provenance or {})),
    ("Precision", lambda r: _value_text(r.provenance or {}, "precision")),
    ("Compile", lambda r: _compile_text(r.provenance or {})),
    ("Data", data_text),
]


def provenance_table(rows: Sequence[ReportRow], run_name: Callable[[RunRecord], str] = lambda r: str(r.path)) -> str:
    """Markdown table with one line per run: its row, folder and every :data:`PROVENANCE_COLUMNS` entry."""
    headers = ["Model", "Run", *(h for h, _ in PROVENANCE_COLUMNS)]
    body = [[row.label, run_name(rec), *(f(rec) for _, f in PROVENANCE_COLUMNS)] for row in rows for rec in row.runs]
    return markdown_table(headers, body, align_right=False)


def row_values(row: ReportRow, text: Callable[[RunRecord], str]) -> str:
    """The distinct values of ``text`` over a row's runs, in run order, joined by commas."""
    return ", ".join(dict.fromkeys(text(r) for r in row.runs))


def tabulate(rows: Sequence[ReportRow], columns: Sequence[Column], *, mixed: bool,
             lead: Sequence[tuple[str, Callable]] = ()) -> tuple[str, list[str]]:
    """The markdown table of ``rows`` and the notes under it.

    Rows trained on data that is not official (or of unknown origin) are marked, as :func:`data_marks` says;
    ``mixed`` (runs on different data, see :func:`~aacn.experiments.rows.check_same_data`) adds a Data column
    after the ``lead`` columns. The notes explain the marks, unfinished rows, rows of several seeds and mixed data.
    """
    marks, data_notes = data_marks(rows)
    data_column = [("Data", lambda r: row_values(r, data_text))] if mixed else []
    table = format_rows(rows, columns, lead=[*lead, *data_column], marks=marks)
    notes = list(data_notes)
    if any(r.partial for r in rows):
        notes.append("\\* unfinished: last finished epoch shown; no test accuracy yet.")
    if any(len(r.runs) > 1 for r in rows):
        notes.append("Several runs per row: mean ± sample standard deviation over seeds.")
    if mixed:
        notes.append("Rows were trained on different data (see the Data column): their accuracies are not "
                     "directly comparable.")
    return table, notes

