"""``aacn report --publish RESULTS_DIR OUT_MD``: the published results page, generated from run records.

``RESULTS_DIR`` (the repository's ``results/``) holds the records of every published run, never checkpoints::

    results/<scale>/<run-slug>/{config.json, metrics.jsonl, results.json}    scale: smoke | fast | full
    results/anchors/<name>-seed<k>/{config.json, metrics.jsonl, results.json}
    results/NOTES.md    (optional) hand-written measurements that are not run records, included verbatim

The page (``OUT_MD``, e.g. ``docs/RESULTS.md``) shows, for every scale, every table of
:func:`aacn.experiments.presets.preset`: Table 1, Table 2 with the seed and with the paper placement, and the
paper's CIFAR-100 protocol. A published run belongs to a table row when its config equals the row's (ignoring
the seed, where it ran and with which attention implementation, none of which changes what is trained), so one
run appears in every table that has its row (Table 1's augmented rows are Table 2's plain rows). Rows without
a run say "not run yet"; seeds of one row are averaged. The anchors stand beside every table of their dataset.
Each row names its data (official or not), device and commit; a last section lists the provenance of every
run. Runs at a scale that match no row are listed apart, so nothing published is hidden.

Learning curves are drawn as PNG files in ``results/`` beside ``OUT_MD`` (``docs/results/`` for
``docs/RESULTS.md``) and linked from the page.

The markdown depends on the records only: the same records give byte-identical text (no dates, no absolute
paths), so a test can check that the committed page matches the committed records. Every file is written
atomically, the page last, so it never links a figure that is not there. A record that does not parse, an
unfinished run, a folder that is no record, or runs on different data in one table (unless
``allow_mixed_data``) raise :class:`UserError` naming the file or the runs, before anything is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aacn.errors import UserError
from aacn.experiments.effects import effects_markdown, table_effects
from aacn.experiments.labels import AA, NO_AUG
from aacn.experiments.presets import SCALE_NOTES, SCALES, TABLE2_PLACEMENTS, preset
from aacn.experiments.rows import (
    METRICS,
    ReportRow,
    RunRecord,
    Stat,
    check_same_data,
    flat_config,
    group_runs,
    load_run,
)
from aacn.experiments.tables import (
    PROVENANCE_COLUMNS,
    columns_for,
    data_marks,
    data_text,
    format_params,
    markdown_table,
    provenance_table,
    row_values,
    settings_line,
)
from aacn.files import atomic_write, check_output_dir, check_output_file

__all__ = ["VIEWS", "ANCHORS_DIR", "NOTES_FILE", "Published", "load_published", "render", "publish"]

ANCHORS_DIR = "anchors"
NOTES_FILE = "NOTES.md"
FIGURES_DIR = "results"  # beside OUT_MD

# The tables of the page: (table, placement, title). Table 2 appears once per attention placement.
VIEWS: tuple[tuple[str, str, str], ...] = (
    ("table1", "seed", "Table 1: data augmentation (CIFAR-10)"),
    *(("table2", p, f"Table 2: attention augmentation, {p} placement (CIFAR-10)") for p in TABLE2_PLACEMENTS),
    ("paper-cifar100", "seed", "Paper protocol on CIFAR-100: WRN against AA-WRN, every block augmented"),
)

# Fields that cannot change what a run trains, beyond those a report already ignores: the attention
# implementation computes the same attention (other speed and memory).
MATCH_IGNORED = frozenset({"attention_impl"})

NOT_RUN = "not run yet"
QUICK_SCALES = ("demo", "smoke")  # pipeline checks: their accuracies are not set against the anchors
# The order of the scale sections: the study's answer first, the quick looks and pipeline checks last.
PAGE_ORDER = tuple(sorted(SCALES, key=lambda scale: scale in QUICK_SCALES))


def match_key(config: dict[str, Any]) -> str:
    """What a published run and a table row must share: the flat config without seed, place and impl."""
    fields = {k: v for k, v in flat_config(config).items() if k not in MATCH_IGNORED}
    return json.dumps(fields, sort_keys=True, default=str)


def _view_slug(table: str, placement: str) -> str:
    return f"{table}-{placement}" if table == "table2" else table


@dataclass
class Published:
    """The records under a results folder: training runs per scale and anchors, each sorted by folder."""

    root: Path
    runs: dict[str, list[RunRecord]]
    anchors: list[RunRecord]
    notes: str | None

    def name(self, rec: RunRecord) -> str:
        """A record's folder relative to the results folder, with forward slashes."""
        return rec.path.relative_to(self.root).as_posix()


def _load_finished(path: Path, anchor: bool) -> RunRecord:
    rec = load_run(path)
    if not rec.finished:
        raise UserError(f"{path} has no results.json: only finished runs are published; finish the run or remove "
                        f"the folder")
    if rec.is_anchor != anchor:
        where = f"{ANCHORS_DIR}/" if rec.is_anchor else f"a scale folder ({', '.join(SCALES)})"
        raise UserError(f"{path} is {'an anchor' if rec.is_anchor else 'a training run'} record in the wrong "
                        f"folder; move it under {where}")
    return rec


def _subfolders(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({exc.strerror or exc}); fix its permissions") from None


def load_published(results_dir: str | os.PathLike) -> Published:
    """Read every record under ``results_dir`` (layout in the module docstring); :class:`UserError` on any
    folder or file that does not belong there, naming it."""
    root = Path(results_dir)
    if not root.is_dir():
        raise UserError(f"results folder {root} does not exist; pass the folder holding <scale>/<run>/ and "
                        f"{ANCHORS_DIR}/<run>/ records, e.g. results/")
    runs: dict[str, list[RunRecord]] = {scale: [] for scale in SCALES}
    anchors: list[RunRecord] = []
    for folder in _subfolders(root):
        if folder.name == ANCHORS_DIR:
            anchors = [_load_finished(p, anchor=True) for p in _subfolders(folder)]
        elif folder.name in SCALES:
            runs[folder.name] = [_load_finished(p, anchor=False) for p in _subfolders(folder)]
        else:
            raise UserError(f"{folder} is not a folder of published records: name it after a scale "
                            f"({', '.join(SCALES)}) or '{ANCHORS_DIR}', or move it out of {root}")
    notes = None
    notes_path = root / NOTES_FILE
    if notes_path.exists():
        try:
            notes = notes_path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{notes_path} cannot be read as UTF-8 text ({exc}); fix or remove it") from None
    return Published(root, runs, anchors, notes)


# ------------------------------------------------------------------------------------------------ tables
def _empty_row(label: str, fields: dict[str, Any]) -> ReportRow:
    return ReportRow(label, [], fields, {m: Stat(None, None, 0) for m in METRICS})


def _prov(header: str) -> Callable[[RunRecord], str]:
    return dict(PROVENANCE_COLUMNS)[header]


def _row_table(rows: Sequence[ReportRow], marks: dict[int, str]) -> str:
    """Rows with their metrics and, per row, the data, device and commit of its runs."""
    columns = columns_for(rows, extended=False)
    headers = ["Model", "Runs", *(h for _, h, _ in columns), "Params", "Data", "Device", "Commit"]
    body = []
    for i, row in enumerate(rows):
        name = row.label + (f" {marks[i]}" if i in marks else "")
        if not row.runs:
            body.append([name, NOT_RUN, *("—" for _ in columns), "—", "—", "—", "—"])
            continue
        body.append([
            name, str(len(row.runs)), *(fmt(row.stats[m]) for m, _, fmt in columns), format_params(row.stats["params"]),
            row_values(row, data_text), row_values(row, _prov("Device")), row_values(row, _prov("Commit")),
        ])
    return markdown_table(headers, body)


@dataclass
class _Table:
    title: str
    slug: str
    rows: list[ReportRow]  # the table's rows (some without runs), then the anchors


def _tables(published: Published, scale: str, allow_mixed: bool) -> tuple[list[_Table], list[RunRecord]]:
    """The tables of one scale, and the runs of that scale that belong to no table row."""
    records = published.runs[scale]
    keys = {id(rec): match_key(rec.config) for rec in records}
    used: set[int] = set()
    tables = []
    for table, placement, title in VIEWS:
        rows = []
        for label, cfg in preset(table, scale, placement=placement):
            config = cfg.to_dict()
            key = match_key(config)
            matched = [rec for rec in records if keys[id(rec)] == key]
            used.update(id(rec) for rec in matched)
            if matched:
                row = group_runs(matched)[0]
                row.label = label
                rows.append(row)
            else:
                rows.append(_empty_row(label, flat_config(config)))
        dataset = rows[0].fields.get("dataset", "cifar10")
        anchors = [rec for rec in published.anchors if rec.dataset == dataset]
        rows += group_runs(anchors) if anchors else []
        check_same_data([rec for row in rows for rec in row.runs], allow_mixed=allow_mixed,
                        what=f"{scale} {table} ({placement} placement)" if table == "table2" else f"{scale} {table}")
        tables.append(_Table(title, _view_slug(table, placement), rows))
    return tables, [rec for rec in records if id(rec) not in used]


def _curves(rows: Sequence[ReportRow]) -> list[tuple[str, list[list[dict[str, Any]]]]]:
    return [(r.label, [x.metrics for x in r.runs]) for r in rows
            if r.runs and not r.runs[0].is_anchor and any(x.metrics for x in r.runs)]


@dataclass
class Page:
    """The page's markdown and the learning-curve figures it links: (file name, title, curves)."""

    markdown: str
    figures: list[tuple[str, str, list[tuple[str, list[list[dict[str, Any]]]]]]]


def render(published: Published, *, allow_mixed_data: bool = False) -> Page:
    """The results page of ``published`` (deterministic: it depends on the records only)."""
    root = published.root.name or "results"
    tables = {scale: _tables(published, scale, allow_mixed_data) for scale in PAGE_ORDER}
    md = _intro(root) + _summary(published, tables)
    figures: list[tuple[str, str, list[tuple[str, list[list[dict[str, Any]]]]]]] = []
    shown: list[ReportRow] = []
    for scale in PAGE_ORDER:
        md += _scale_section(published, scale, tables[scale], figures, shown)
    md += _anchors_section(published, root, shown)
    md += ["## Provenance of every run", ""]
    md += [provenance_table(shown, published.name), ""] if shown else ["No run is published yet.", ""]
    if published.notes:
        md += ["## Notes", "", f"Included verbatim from `{root}/{NOTES_FILE}`.", "", published.notes, ""]
    return Page("\n".join(md).rstrip("\n") + "\n", figures)


def _intro(root: str) -> list[str]:
    return [
        "# Published results",
        "",
        f"Generated by `aacn report --publish` from the run records under `{root}/` (one folder per run: "
        "`config.json`, `metrics.jsonl`, `results.json`). Do not edit it by hand: change the records and publish "
        "again.",
        "",
        "Accuracies are top-1 test accuracy in percent unless a column says otherwise; several runs per row show "
        "mean ± sample standard deviation over seeds. Each row names the data it was trained on (`official`: "
        "every file matches the official CIFAR checksums), the device and the commit.",
        "",
    ]


def _summary(published: Published, tables: dict[str, tuple[list[_Table], list[RunRecord]]]) -> list[str]:
    """The answer first: per scale with runs, each table's paired effects in words, the plain rows against the
    anchors on the same images, and the rows still missing."""
    md = ["## Summary", ""]
    scales = [scale for scale in PAGE_ORDER if published.runs[scale]]
    if not scales:
        return md + ["No run is published yet.", ""]
    anchors = group_runs(published.anchors) if published.anchors else []
    for scale in scales:
        md += [f"**`{scale}` scale** ({SCALE_NOTES.get(scale, 'see its section')}):", ""]
        for t in tables[scale][0]:
            rows = [r for r in t.rows if r.runs and not r.runs[0].is_anchor]
            if not rows:
                continue
            missing = [r.label for r in t.rows if not r.runs]
            found_effects = table_effects(rows)
            # a table whose one comparison is its title's subject (Table 1: augmentation) names it once
            named = len({e.what for e in found_effects}) > 1 or not all(
                e.what in t.title for e in found_effects)
            effects = [(f"{e.what} ({e.changed} − {e.baseline})" if named else f"{e.changed} − {e.baseline}")
                       + f": {e.verdict}" for e in found_effects]
            found = "; ".join(effects) if effects else "; ".join(
                f"{r.label} {_pct(r.stats['test_acc'])}" for r in rows)
            md.append(f"- {t.title}: {found}." + (f" Not run yet: {', '.join(missing)}." if missing else ""))
        plain = [r for t in tables[scale][0] for r in t.rows if r.runs and not r.runs[0].is_anchor
                 and not r.label.startswith(AA) and NO_AUG not in r.label]
        for row in {r.label: r for r in plain if scale not in QUICK_SCALES}.values():  # a shared row once
            for anchor in anchors:
                gap = _gap(row, anchor)
                if gap:
                    md.append(f"- {row.label} {_pct(row.stats['test_acc'])} test against {anchor.label} "
                              f"{_pct(anchor.stats['test_acc'])} on the same images: {gap}.")
        md.append("")
    return md


def _pct(stat: Stat) -> str:
    if stat.mean is None:
        return "—"
    return f"{stat.mean:.2f}%" + (f" ± {stat.std:.2f}" if stat.std is not None else "") + f" (n={stat.n})"


def _gap(row: ReportRow, anchor: ReportRow) -> str | None:
    """How far a row's mean test accuracy is below (or above) an anchor's, when both ran on the same test data."""
    mine, theirs = row.stats["test_acc"].mean, anchor.stats["test_acc"].mean
    if mine is None or theirs is None or data_text(row.runs[0]) != data_text(anchor.runs[0]):
        return None
    diff = mine - theirs
    return f"{abs(diff):.2f} points {'below' if diff < 0 else 'above'} it"


def _marked_table(rows: Sequence[ReportRow]) -> list[str]:
    """:func:`_row_table` with the data marks of its rows, then their footnotes."""
    marks, notes = data_marks(rows)
    return [_row_table(rows, marks), "", *([*notes, ""] if notes else [])]


def _scale_section(published: Published, scale: str, scale_tables: tuple[list[_Table], list[RunRecord]],
                   figures: list, shown: list[ReportRow]) -> list[str]:
    """The section of one scale: every table, then the runs that match no table row. Appends the learning-curve
    figures it links to ``figures`` and the rows with runs to ``shown`` (each once)."""
    md = [f"## Scale `{scale}`", "", f"What it is: {SCALE_NOTES.get(scale, scale)}.", ""]
    tables, others = scale_tables
    if not published.runs[scale]:
        md += [f"Nothing is published at the `{scale}` scale yet:", "",
               *(f"- {t.title}: {NOT_RUN}." for t in tables), ""]
        if published.anchors:
            md += ["The anchors are listed in the Anchors section.", ""]
        return md
    for t in tables:
        md += [f"### {t.title}", ""]
        trained = [r for r in t.rows if r.runs and not r.runs[0].is_anchor]
        if not trained:
            md += [f"Nothing is published for this table at the `{scale}` scale yet.", ""]
        md += _marked_table(t.rows)
        md += effects_markdown(table_effects(t.rows))
        curves = _curves(t.rows)
        if curves:
            name = f"{scale}-{t.slug}.png"
            figures.append((name, f"{t.title}, {scale} scale", curves))
            md += [f"![Learning curves: {t.title}, {scale} scale]({FIGURES_DIR}/{name})", ""]
        shown += [r for r in trained if r not in shown]
    if others:
        rows = group_runs(others)
        md += ["### Other runs at this scale", "",
               "Published runs whose config matches no table row (for instance a row whose preset changed).", "",
               *_marked_table(rows)]
        md += [f"- **{r.label}**: {settings_line(r)}; runs: "
               + ", ".join(f"`{published.name(x)}`" for x in r.runs) for r in rows] + [""]
        shown += rows
    return md


def _anchors_section(published: Published, root: str, shown: list[ReportRow]) -> list[str]:
    """The Anchors section; appends the anchor rows to ``shown``."""
    md = ["## Anchors", ""]
    if not published.anchors:
        return md + [f"No anchor is published yet (`{root}/{ANCHORS_DIR}/` holds no record).", ""]
    anchor_rows = group_runs(published.anchors)
    md += ["Public baselines trained on the same images as our runs; they also stand beside every table of "
           "their dataset.", "", *_marked_table(anchor_rows)]
    shown += anchor_rows
    return md


@dataclass
class PublishResult:
    """What :func:`publish` wrote: the page's text and every file (figures first, the page last)."""

    markdown: str
    files: list[Path]


def publish(
    results_dir: str | os.PathLike, out_md: str | os.PathLike, *, allow_mixed_data: bool = False
) -> PublishResult:
    """Write ``out_md`` (and its learning-curve PNGs) from the records under ``results_dir``.

    Raises:
        UserError: an unusable ``out_md``, a missing ``results_dir``, a record that does not parse or is not
            finished, a stray folder, or runs on different data in one table without ``allow_mixed_data``.
    """
    out_md = check_output_file(out_md, "OUT_MD")
    page = render(load_published(results_dir), allow_mixed_data=allow_mixed_data)
    files = []
    if page.figures:
        from aacn.viz.curves import plot_learning_curves

        fig_dir = check_output_dir(out_md.parent / FIGURES_DIR, "OUT_MD")
        for name, title, curves in page.figures:
            files.append(plot_learning_curves(curves, fig_dir / name, title=title))
    atomic_write(out_md, lambda fh: fh.write(page.markdown))
    files.append(out_md)
    return PublishResult(page.markdown, files)

