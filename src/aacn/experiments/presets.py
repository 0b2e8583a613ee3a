"""The runs behind ``aacn reproduce``: Table 1, Table 2 and the paper's CIFAR-100 protocol, at three scales.

Two tables of data, and pure functions that combine them into ``(row label, RunConfig)`` pairs:

- :data:`ROWS`: each table's rows, every row with the options that make it that row.

  - ``table1`` (augmentation study, CIFAR-10): ResNet-34 and WRN-28-10, each with and without augmentation.
  - ``table2`` (attention, CIFAR-10, augmented): ResNet-34, AA-ResNet-34, WRN-28-10, AA-WRN-28-10 and
    AA-NRE-WRN-28-10 (attention without relative position embeddings). Its attention rows use the table's
    ``placement``: ``"seed"`` (the replication's single low-resolution layer) or ``"paper"`` (Bello et al.'s
    every-block placement).
  - ``paper-cifar100``: WRN-28-10 against AA-WRN-28-10 (paper placement) on CIFAR-100, top-1 and top-5, with
    the paper's settings (``wrn-sgd`` for the standard 200 WRN epochs, per-channel normalisation).

- :data:`SCALES`: per scale, the options of each architecture family (the registry's
  :func:`aacn.models.model_family`, so any ResNet or ``wrn-D-K`` name takes its family's settings).

  - ``full``: the replication's protocol. ResNet-34: ``seed-adam`` for 220 epochs (Adam, steps at epochs
    80/120/160/180 of 220); WRN-28-10: ``wrn-sgd`` for 60 epochs (Zagoruyko & Komodakis' ×0.2 steps at
    30/60/80%). Inputs normalised the replication's way (``seed``: per-pixel mean subtracted), batch 128,
    full-width models with the model defaults (Nh=8, κ=0.2, υ=0.1, at least 20 key dims per head; ResNet-34
    with its CIFAR stem). ``paper-sgd`` stays available through ``aacn train --recipe``; no preset uses it.
  - ``fast``: full-width models on one modern GPU with the ``fast`` recipe (warm-up + cosine, label smoothing,
    batch 512; ``aacn reproduce`` compiles on CUDA). WRN-28-10 trains fewer epochs than ResNet-34 so that every
    row of Tables 1 and 2 fits one short GPU window (the measured times are on the results page).
  - ``smoke``: the full protocol in miniature: the same architectures made narrow (``base_width``), the same
    recipes (their schedules scale with the epoch count) and normalisation, trained on a subset for a few epochs
    with a small validation split, so a table runs in minutes on a 2-core CPU. Attention rows use 4 heads and at
    least 4 key dims per head (:data:`SMOKE_ATTENTION`; Nh=8 with 20 dims per head would be wider than these
    narrow layers). Its accuracies only show that the pipeline works.
  - ``cpu``: the study on two CPU cores: the full 45k/5k/10k split, every row with one recipe (``fast``), 10
    epochs, batch 128 and channels-last. A scale may name the model its family trains (``"model"``): WRN-28-10
    becomes WRN-16-2 and ResNet-34 trains at 1/4 width (the labels say so). Attention rows keep the paper's
    kappa and upsilon with one head (:data:`ATTENTION_SETTINGS`): dk = 6-26 here, and the paper's at least 20
    key dims per head allow no more. Sized so that the slowest row (AA-WRN-16-2, paper placement) finishes in
    under 100 minutes on 2 idle cores with the CPU attention kernel.
  - ``demo``: the ``cpu`` scale's networks on 5,000 images for 3 epochs: every row of a table in minutes.

A row's settings are its family's scale settings, then the row's own options (a scale's ``"model"`` wins over
the row's), then the row's settings for that scale (``per_scale``), then the scale's
:data:`ATTENTION_SETTINGS` for an attention row.

Runs that are the same experiment (Table 1's augmented rows and Table 2's plain rows) have the same config and
the same :func:`run_folder`, so ``aacn reproduce`` trains them once and both tables report them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aacn.config import OPTIONS, RunConfig
from aacn.experiments.labels import run_label
from aacn.models.registry import model_family
from aacn.nn.functional import IMPLS

__all__ = ["TABLES", "SCALES", "TABLE2_PLACEMENTS", "ROWS", "SCALE_SETTINGS", "SMOKE_ATTENTION", "ATTENTION_SETTINGS",
           "SCALE_NOTES", "Row", "preset", "scale_settings", "run_slug", "run_folder", "report_folder"]

RESNET, WRN = "resnet34", "wrn-28-10"
PLACEMENT = "<placement>"  # stands for the table's placement in a row


@dataclass(frozen=True)
class Row:
    """One row of a table: its options (flat names) and, per scale, options that apply at that scale only."""

    options: Mapping[str, Any]
    per_scale: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


_CIFAR100 = {"full": {"epochs": 200, "recipe": "wrn-sgd", "normalize": "standard"},
             "smoke": {"recipe": "wrn-sgd", "normalize": "standard"}}

ROWS: dict[str, list[Row]] = {
    "table1": [
        Row({"model": RESNET}),
        Row({"model": RESNET, "augment": False}),
        Row({"model": WRN}),
        Row({"model": WRN, "augment": False}),
    ],
    "table2": [
        Row({"model": RESNET}),
        Row({"model": RESNET, "attention": PLACEMENT}),
        Row({"model": WRN}),
        Row({"model": WRN, "attention": PLACEMENT}),
        Row({"model": WRN, "attention": PLACEMENT, "relative": False}),
    ],
    "paper-cifar100": [
        Row({"model": WRN, "dataset": "cifar100"}, _CIFAR100),
        Row({"model": WRN, "dataset": "cifar100", "attention": "paper"}, _CIFAR100),
    ],
}

# The cpu scale: every row of a table with one recipe and epoch count, the full 45k/5k/10k split.
_CPU = {"epochs": 10, "recipe": "fast", "batch_size": 128, "channels_last": True}
_DEMO = {"epochs": 3, "subset": 5000, "val_size": 1000}

SCALE_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "resnet": {"epochs": 220, "recipe": "seed-adam", "batch_size": 128, "normalize": "seed"},
        "wrn": {"epochs": 60, "recipe": "wrn-sgd", "batch_size": 128, "normalize": "seed"},
    },
    "fast": {
        "resnet": {"epochs": 30, "recipe": "fast", "batch_size": 512},
        "wrn": {"epochs": 40, "recipe": "fast", "batch_size": 512},
    },
    "cpu": {
        "resnet": {"model": "resnet34", "base_width": 16, **_CPU},  # ResNet-34 at 1/4 width (1.33M params)
        "wrn": {"model": "wrn-16-2", **_CPU},  # WRN-16-2 (0.69M params)
    },
    "demo": {  # the cpu scale in miniature: a first look at attention in minutes, not a result
        "resnet": {"model": "resnet34", "base_width": 16, **_CPU, **_DEMO},
        "wrn": {"model": "wrn-16-2", **_CPU, **_DEMO},
    },
    "smoke": {
        "resnet": {"epochs": 10, "recipe": "seed-adam", "batch_size": 128, "normalize": "seed", "subset": 5000,
                   "val_size": 1000, "base_width": 8},  # ResNet widths 8-64 (335k params)
        "wrn": {"epochs": 10, "recipe": "wrn-sgd", "batch_size": 128, "normalize": "seed", "subset": 5000,
                "val_size": 1000, "base_width": 2},  # WRN-28-10 stem 2, groups 20/40/80 (573k params)
    },
}
# Attention settings of a scale whose models are narrow: the paper's kappa and upsilon, heads suited to the width.
ATTENTION_SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": {"num_heads": 4, "min_key_depth_per_head": 4},
    "cpu": {"num_heads": 1, "min_key_depth_per_head": 4},
    "demo": {"num_heads": 1, "min_key_depth_per_head": 4},
}
SMOKE_ATTENTION = ATTENTION_SETTINGS["smoke"]

# What each scale's numbers can be used for, in a few words (the results page says it per scale).
SCALE_NOTES: dict[str, str] = {
    "demo": "the cpu scale's networks on 5,000 images for 3 epochs, one seed: a first run of every row in minutes, "
            "not a result",
    "smoke": "5,000 training images, one seed: it shows only that the pipeline runs, not the study's answer",
    "cpu": "the full 45k/5k/10k split on two CPU cores, narrow networks, 10 epochs, seeds paired across rows",
    "fast": "full-width networks, short GPU schedules",
    "full": "the replication's protocol",
}

TABLES = tuple(ROWS)
SCALES = ("demo", "smoke", "cpu", "fast", "full")
TABLE2_PLACEMENTS = ("seed", "paper")  # the placements a Table 2 can use (names of aacn.models.PLACEMENTS)


def scale_settings(model: str, scale: str, *, attention: object = "none", dataset: str = "cifar10"
                   ) -> dict[str, Any]:
    """The options (flat names) a scale sets for ``model`` (any registered name) and ``attention``.

    ``dataset`` ``"cifar100"`` adds the paper's CIFAR-100 settings, as its table's rows do.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    settings = dict(SCALE_SETTINGS[scale][model_family(model)])
    if dataset == "cifar100":
        settings.update(_CIFAR100.get(scale, {}))
    if attention not in (None, "none"):
        settings.update(ATTENTION_SETTINGS.get(scale, {}))
    return settings


def _row_options(row: Row, scale: str, placement: str) -> dict[str, Any]:
    options = {k: placement if v == PLACEMENT else v for k, v in row.options.items()}
    family = dict(SCALE_SETTINGS[scale][model_family(options["model"])])
    settings = {**family, **options, "model": family.get("model", options["model"])}
    settings.update(row.per_scale.get(scale, {}))
    if settings.get("attention", "none") != "none":
        settings.update(ATTENTION_SETTINGS.get(scale, {}))
    return settings


def preset(
    table: str, scale: str = "smoke", *, seeds: int = 1, placement: str = "seed", attention_impl: str | None = None,
    **overrides: Any,
) -> list[tuple[str, RunConfig]]:
    """The runs of one table: ``(row label, config)`` for every row and seed ``0..seeds-1``.

    Runs are ordered seed by seed (all rows of seed 0, then of seed 1, ...), so an interrupted reproduction
    already holds a complete table. ``attention_impl`` (one of :data:`aacn.nn.functional.IMPLS`) sets how the
    attention rows compute their attention (same results, other speed and memory); ``overrides`` set other
    options (flat names) on every run (e.g. ``data_dir``, ``device``, ``progress``); ``out`` is left for the
    caller (see :func:`run_folder`).

    Raises:
        ValueError: unknown table, scale, placement or attention impl, ``seeds < 1``, or an override that is
            no option.
    """
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; choose one of {', '.join(TABLES)}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if placement not in TABLE2_PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; choose one of {', '.join(TABLE2_PLACEMENTS)}")
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    unknown = sorted(set(overrides) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; valid: {', '.join(OPTIONS)}")
    if attention_impl is not None and attention_impl not in IMPLS:
        raise ValueError(f"unknown attention impl {attention_impl!r}; choose one of {', '.join(IMPLS)}")
    runs = []
    for row in ROWS[table]:
        options = _row_options(row, scale, placement)
        if attention_impl is not None and options.get("attention", "none") != "none":
            options["attention_impl"] = attention_impl
        runs.append(RunConfig(**{**options, **overrides}))
    return [(run_label(cfg), cfg.replace(seed=seed)) for seed in range(seeds) for cfg in runs]


def run_slug(label: str, seed: int) -> str:
    """Folder name of a run by its label: ``"AA-WRN-28-10"``, seed 1 -> ``"aa-wrn-28-10-seed1"``."""
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    return f"{slug}-seed{seed}"


def run_folder(label: str, config: RunConfig) -> str:
    """Folder name of a preset's run, unique over every table of a scale: the label, then the placement of an
    attention row and a dataset other than CIFAR-10, then the seed (``"aa-wrn-28-10-paper-placement-seed0"``).

    The same experiment in two tables (Table 1's ``ResNet-34`` and Table 2's) gets the same folder."""
    parts = [label]
    if config.attention != "none":
        placement = config.attention
        parts.append(f"{placement if isinstance(placement, str) else 'custom'} placement")
    if config.dataset != "cifar10":
        parts.append(config.dataset)
    return run_slug(" ".join(parts), config.seed)


def report_folder(table: str, placement: str = "seed") -> str:
    """Folder name of a table's report, beside its runs: ``table1``, ``table2-paper``, ``paper-cifar100``."""
    return f"{table}-{placement}" if table == "table2" else table
