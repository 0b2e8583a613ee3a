"""The runs a report reads, grouped into rows: run directories read into :class:`RunRecord`, grouped by config
into :class:`ReportRow` with per-metric statistics.

A report groups runs whose configurations are equal except for the seed (and the resume-safe fields such as
``out`` or ``device``), so several seeds of one model become one row with ``mean ± std`` (sample standard
deviation, ``ddof=1``). Rows are named from the config by :func:`~aacn.experiments.labels.run_label`
("AA-WRN-28-10", "ResNet-34 (no aug)"); when two different groups would get the same name, the config fields on
which they differ are appended. Anchor records (``aacn anchor``: public baselines such as airbench94) get their
own rows, "airbench94 (anchor)". Every number is read from the run's ``results.json`` as training wrote it;
nothing measured is ``None`` (``null``, or the ``NaN`` of older records).

Unfinished runs (no ``results.json``) are refused with a message naming them, unless ``partial=True``: then
their numbers come from their last finished epoch, with no test accuracy.

A record that is not what ``aacn train`` writes (invalid JSON, a list where an object belongs, a string where a
number belongs, a config that is incomplete or disagrees with ``results.json``) is one :class:`UserError` naming
the file.

Data: each record names the data it was trained on (``official`` or ``not official``, with fingerprints of the
loaded images; :func:`data_label`, :func:`test_fingerprint`). Runs of one dataset on different images are refused
in one table unless allowed (:func:`check_same_data`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aacn.config import RESULT_NEUTRAL, RunConfig
from aacn.errors import UserError
from aacn.experiments.labels import run_label
from aacn.files import read_json
from aacn.train.rundir import RunDir, check_record, summarize_partial

__all__ = [
    "GROUP_IGNORED",
    "METRICS",
    "EPOCH_METRICS",
    "RunRecord",
    "load_run",
    "load_runs",
    "flat_config",
    "short_value",
    "Stat",
    "ReportRow",
    "group_runs",
    "UNKNOWN",
    "data_label",
    "test_fingerprint",
    "short_fingerprint",
    "check_same_data",
]

# Config fields that never distinguish two rows (seeds are averaged; the rest cannot change a result).
GROUP_IGNORED = frozenset({"seed"}) | RESULT_NEUTRAL

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


# ------------------------------------------------------------------------------------------------- data
UNKNOWN = "unknown"


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


def short_fingerprint(fingerprint: str | None) -> str:
    """The first 12 characters of a fingerprint, as reports show it (``unknown`` for none)."""
    return UNKNOWN if fingerprint is None else fingerprint[:12]


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
                f"{label}, test fingerprint {short_fingerprint(fp)}: {', '.join(str(r.path) for r in runs[:3])}"
                + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
                for (label, fp), runs in sorted(kinds.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
            )
            raise UserError(f"runs on different {dataset} data in {what} ({described}); compare runs trained on "
                            f"the same images, or pass --allow-mixed-data to tabulate them anyway")
    return mixed

