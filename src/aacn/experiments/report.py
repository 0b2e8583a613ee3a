"""``aacn report``: tables of finished runs, read from their run directories only.

A report groups runs whose configurations are equal except for the seed (and the resume-safe fields such as
``out`` or ``device``), so several seeds of one model become one row showing ``mean ± std`` (sample standard
deviation, ``ddof=1``). Rows are named from the config by :func:`run_label` ("AA-WRN-28-10", "ResNet-34 (no
aug)"); when two different groups would get the same name, the config fields on which they differ are appended.
Anchor records (``aacn anchor``: public baselines such as airbench94) get their own rows, "airbench94 (anchor)".

Columns follow the replication's layout: train / validation / test top-1 accuracy (percent) and training time;
test accuracy with flip test-time augmentation when a run measured it; ``extended`` adds parameters, peak
memory and images/s (Table 2); a CIFAR-100 run adds test top-5. Every number is read from the run's
``results.json`` as training wrote it; nothing measured (``null``, or the ``NaN`` of older records) shows "—".

Data: each record names the data it was trained on (``official`` or ``not official``, with fingerprints of the
loaded images). Rows trained on data that is not official are marked ``†`` and rows whose record predates data
provenance ``‡``, with footnotes. Runs of one dataset on different images (different test fingerprints or
labels) are refused in one table unless ``allow_mixed_data``; then a Data column tells them apart.
``provenance=True`` (``aacn report --extended``) adds a table of every run's code, software, device, precision
and compile settings; records without them show "unknown".

Unfinished runs (no ``results.json``) are refused with a message naming them, unless ``partial=True``: then
they are shown from their last finished epoch, marked ``*``, with no test accuracy.

A record that is not what ``aacn train`` writes (invalid JSON, a list where an object belongs, a string where a
number belongs) is one :class:`UserError` naming the file. ``out`` is checked before any record is read.

Outputs (in ``out``, each written atomically): ``report.md`` (the table plus the settings and run folders of
each row), ``report.csv`` (one row per group; ``<metric>_mean`` / ``<metric>_std`` columns, raw units) and
``learning_curves.png``.
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
from aacn.experiments.effects import effects_markdown, table_effects
from aacn.experiments.labels import run_label
from aacn.files import atomic_write, check_output_dir, read_json
from aacn.train.rundir import RunDir, check_record, summarize_partial

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
    "check_same_data",
    "data_label",
    "data_text",
    "data_marks",
    "provenance_table",
    "group_runs",
    "run_label",
    "flat_config",
    "short_value",
    "format_params",
    "markdown_table",
    "format_rows",
    "tabulate",
    "rows_csv",
    "report",
]

# Config fields that never distinguish two rows (seeds are averaged; the rest cannot change a result).
GROUP_IGNORED = frozenset({"seed"}) | RESUME_MUTABLE

# Numbers collected per run, named as in results.json.
METRICS = ("train_acc", "val_acc", "test_acc", "test_acc_tta", "test_top5", "train_time_s", "params",
           "peak_mem_bytes", "images_per_s", "flops_per_image")


@dataclass
class RunRecord:
    """What a report knows about one run directory (all read from its files).

    ``kind`` is ``"train"`` for an ``aacn train`` run and ``"anchor"`` for an anchor baseline (airbench), whose
    ``config`` names the anchor instead of a model. ``provenance`` (code, software, device) and ``data`` (label and
    fingerprints of the images) are ``None`` for records written before runs recorded them.
    """

    path: Path
    config: dict[str, Any]
    info: dict[str, Any]
    results: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    kind: str = "train"
    provenance: dict[str, Any] | None = None
    data: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.results is not None

    @property
    def is_anchor(self) -> bool:
        return self.kind == "anchor"

    @property
    def label(self) -> str:
        """Row name: :func:`run_label` of a training run, ``"airbench94 (anchor)"`` for an anchor."""
        if self.is_anchor:
            return f"{self.config.get('anchor', '?')} (anchor)"
        return run_label(self.config)

    @property
    def fields(self) -> dict[str, Any]:
        """The config fields that tell rows apart (see :func:`flat_config`)."""
        if self.is_anchor:
            return {"kind": "anchor", **{k: v for k, v in self.config.items() if k not in GROUP_IGNORED}}
        return flat_config(self.config)

    @property
    def dataset(self) -> str:
        return str(self.config.get("dataset", "cifar10"))

    def values(self) -> dict[str, float | None]:
        """The numbers of :data:`METRICS`, as ``results.json`` holds them (``None`` where it has none).

        An unfinished run has no ``results.json``: its accuracies come from its last finished epoch, its training
        time is the sum of its epoch times so far, its speed their mean and its memory their peak.
        """
        if self.results is not None:
            return {k: self.results.get(k) for k in METRICS}
        partial = summarize_partial(self.metrics, self.info)
        return {k: partial.get(k) for k in METRICS}


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _read_json(path: Path) -> Any:
    return read_json(path)  # bounded: size, depth and integers (names the file and field)


def _object(value: Any, path: Path, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{path}: {what} is {_type_name(value)}, not a JSON object; the record is damaged or was "
                        f"not written by aacn; restore or remove it")
    return value


def _optional_object(value: Any, path: Path, what: str) -> dict[str, Any] | None:
    return None if value is None else _object(value, path, what)


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _check_numbers(row: dict[str, Any], keys: Sequence[str], path: Path, where: str = "") -> None:
    for key in keys:
        if not _is_number(row.get(key)):
            raise UserError(f"{path}: {where}{key!r} is {row[key]!r}, not a number; the record is damaged or was "
                            f"not written by aacn; restore or remove it")


# Per-epoch numbers a report reads from metrics.jsonl.
EPOCH_METRICS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s", "images_per_s",
                 "peak_mem_bytes")


def load_run(path: str | os.PathLike) -> RunRecord:
    """Read one run directory; :class:`UserError` naming the file if it is not one or a file is malformed."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise UserError(f"run directory {run.path} does not exist; pass folders written by 'aacn train'")
    if not run.config_path.is_file():
        raise UserError(f"{run.path} is not a run directory (no config.json); pass folders written by 'aacn train'")
    stored = _object(_read_json(run.config_path), run.config_path, "the file")
    config = _object(stored.get("config", stored), run.config_path, "'config'")
    kind = "anchor" if stored.get("kind") == "anchor" else "train"
    if kind == "train":
        _object(config.get("model_kwargs") or {}, run.config_path, "'config.model_kwargs'")
    info = _object(stored.get("info") or {}, run.config_path, "'info'")
    _check_numbers(info, ("params",), run.config_path, "info ")
    results = None
    if run.results_path.exists():
        results = _object(_read_json(run.results_path), run.results_path, "the file")
        _check_numbers(results, (*METRICS, "wall_time_s"), run.results_path)
    try:
        metrics = run.read_metrics()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{run.metrics_path} cannot be read ({exc}); fix its permissions or restore it") from None
    for i, row in enumerate(metrics, 1):
        _object(row, run.metrics_path, f"line {i}")
        _check_numbers(row, EPOCH_METRICS, run.metrics_path, f"line {i}: ")
    source = results if results is not None and "provenance" in results else stored
    provenance = _optional_object(source.get("provenance"), run.results_path if source is results else
                                  run.config_path, "'provenance'")
    source = results if results is not None and "data" in results else stored
    data = _optional_object(source.get("data"), run.results_path if source is results else run.config_path,
                            "'data'")
    if data is not None:
        where = run.results_path if source is results else run.config_path
        _optional_object(data.get("fingerprint"), where, "'data.fingerprint'")
        if not isinstance(data.get("differing_files") or [], list):
            raise UserError(f"{where}: 'data.differing_files' is {_type_name(data['differing_files'])}, not a list; "
                            f"the record is damaged or was not written by aacn; restore or remove it")
    if kind == "train":  # a complete config.json that results.json agrees with (never filled with defaults)
        check_record(run, stored, results)
    return RunRecord(run.path, config, info, results, metrics, kind, provenance, data)


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


def _key(fields: dict[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, default=str)


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
    """Statistics of the measured values; ``None`` and the ``NaN`` of records written before records were strict
    JSON both mean "not measured"."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
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
        fields = rec.fields
        key = _key(fields)
        if key not in groups:
            groups[key] = ReportRow(rec.label, [], fields)
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


# ------------------------------------------------------------------------------------- data, provenance
UNKNOWN = "unknown"
NOT_OFFICIAL_MARK = "†"
UNKNOWN_DATA_MARK = "‡"


def data_label(rec: RunRecord) -> str:
    """``"official"``, ``"not official"`` or ``"unknown"`` (a record written before runs recorded their data)."""
    if rec.data is None:
        return UNKNOWN
    return str(rec.data.get("label") or UNKNOWN)


def test_fingerprint(rec: RunRecord) -> str | None:
    """The recorded fingerprint of the run's test set, if any."""
    fingerprint = (rec.data or {}).get("fingerprint") or {}
    value = fingerprint.get("test")
    return None if value is None else str(value)


def _short_fp(fingerprint: str | None) -> str:
    return UNKNOWN if fingerprint is None else fingerprint[:12]


def data_text(rec: RunRecord) -> str:
    """The run's data in a few words: label and the start of its test fingerprint."""
    label = data_label(rec)
    fingerprint = test_fingerprint(rec)
    return label if fingerprint is None else f"{label}, test {_short_fp(fingerprint)}"


def check_same_data(records: Sequence[RunRecord], *, allow_mixed: bool = False, what: str = "one table") -> bool:
    """Refuse runs of one dataset trained on different images (different test fingerprints or data labels).

    Records that do not say which data they used cannot be compared and are let through (their rows are marked
    instead). Returns whether the data is mixed; raises :class:`UserError` for mixed data unless ``allow_mixed``.
    """
    mixed = False
    by_dataset: dict[str, dict[tuple[str, str | None], list[RunRecord]]] = {}
    for rec in records:
        if rec.data is not None:
            by_dataset.setdefault(rec.dataset, {}).setdefault((data_label(rec), test_fingerprint(rec)), []).append(rec)
    for dataset, kinds in by_dataset.items():
        if len(kinds) < 2:
            continue
        mixed = True
        if not allow_mixed:
            described = "; ".join(
                f"{label}, test fingerprint {_short_fp(fp)}: {', '.join(str(r.path) for r in runs[:3])}"
                + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
                for (label, fp), runs in sorted(kinds.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
            )
            raise UserError(f"runs on different {dataset} data in {what} ({described}); compare runs trained on "
                            f"the same images, or pass --allow-mixed-data to tabulate them anyway")
    return mixed


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
                     f"test fingerprint {_short_fp(fp)}){differing}.")
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


def tabulate(rows: Sequence[ReportRow], columns: Sequence[Column], *, mixed: bool,
             lead: Sequence[tuple[str, Callable]] = ()) -> tuple[str, list[str]]:
    """The markdown table of ``rows`` and the notes under it.

    Rows trained on data that is not official (or of unknown origin) are marked, as :func:`data_marks` says;
    ``mixed`` (runs on different data, see :func:`check_same_data`) adds a Data column after the ``lead``
    columns. The notes explain the marks, unfinished rows, rows of several seeds and mixed data.
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
