"""The runs behind ``aacn reproduce``: Table 1, Table 2 and the paper's CIFAR-100 protocol, at three scales.

Every function here is pure: it returns ``(row label, RunConfig)`` pairs and trains nothing.

Tables (rows; labels come from :func:`aacn.experiments.report.run_label`, so a report names them the same):

- ``table1`` (augmentation study, CIFAR-10): ResNet-34 and WRN-28-10, each with and without augmentation.
- ``table2`` (attention, CIFAR-10, augmented): ResNet-34, AA-ResNet-34, WRN-28-10, AA-WRN-28-10 and
  AA-NRE-WRN-28-10 (attention without relative position embeddings), with ``placement`` ``"seed"`` (the
  replication's single low-resolution layer) or ``"paper"`` (Bello et al.'s every-block placement).
- ``paper-cifar100``: WRN-28-10 against AA-WRN-28-10 (paper placement) on CIFAR-100, top-1 and top-5.

Scales:

- ``full``: the replication's protocol. ResNet-34 trains 220 epochs with ``seed-adam`` (the replication's
  ResNet schedule: Adam, steps at epochs 80/120/160/180 of 220 — the recipe is defined for exactly this run);
  WRN-28-10 trains 60 epochs with ``wrn-sgd`` (Zagoruyko & Komodakis' SGD recipe, its ×0.2 steps at
  30/60/80% scaled to the replication's 60 epochs). Inputs are normalised the replication's way (``seed``:
  per-pixel mean subtracted). ``paper-cifar100`` follows the paper instead: ``wrn-sgd`` for 200 epochs (the
  standard WRN length) with per-channel (``standard``) normalisation. Batch 128, full-width models, model
  defaults (Nh=8, κ=0.2, υ=0.1, at least 20 key dims per head; ResNet-34 with its CIFAR stem, the replication's
  ImageNet stem being one ``aacn train --stem imagenet`` away). ``paper-sgd`` (warm-up + cosine) stays
  available through ``aacn train --recipe``; it is not the replication's, so no preset uses it.
- ``fast``: full-width models on one modern GPU with the ``fast`` recipe (warm-up + cosine, label smoothing, batch
  512, bf16/channels-last chosen automatically; ``aacn reproduce`` compiles on CUDA) and :data:`FAST_EPOCHS`
  epochs. Measured on one H100 (PyTorch 2.11, real CIFAR-10 images from a JPEG re-encoding): WRN-28-10, 90 epochs,
  403 s with ``--compile`` (3.8 s per epoch of 45k images), 91.72% test; ResNet-34, 30 epochs, 79 s eager, 89.52%
  test. AA-WRN-28-10 with the paper placement takes 18.2 s per epoch. Estimated from these epoch times: Table 1
  about 17 minutes, Table 2 with the seed placement about 25; with the paper placement each of its two AA-WRN rows
  takes about 27 minutes.
- ``smoke``: the full protocol in miniature: the same architectures made narrow (``base_width``), the same
  recipes (their schedules scale with the epoch count) and normalisation, trained on a subset for a few epochs
  with a small validation split, so the whole of Table 1 runs in about 15 minutes and Table 2 (seed
  placement) in about 20 on a 2-core CPU. Attention uses 4 heads and at least 4 key dims per head (Nh=8 with
  20 dims per head would make the attention wider than these narrow layers). Its accuracies only show that
  the pipeline works. The paper placement puts attention on 32x32 grids, which is far slower on a CPU.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from aacn.config import RunConfig
from aacn.experiments.report import run_label
from aacn.nn.functional import IMPLS

__all__ = ["TABLES", "SCALES", "PLACEMENTS", "FAST_EPOCHS", "SMOKE", "preset", "scale_settings", "run_slug"]

TABLES = ("table1", "table2", "paper-cifar100")
SCALES = ("smoke", "fast", "full")
PLACEMENTS = ("seed", "paper")

RESNET, WRN = "resnet34", "wrn-28-10"

# full scale on CIFAR-10: (epochs, recipe) of each architecture.
FULL = {
    RESNET: (220, "seed-adam"),
    WRN: (60, "wrn-sgd"),
}
FULL_CIFAR100 = (200, "wrn-sgd")

FAST_EPOCHS = {RESNET: 30, WRN: 90}  # WRN: 90 epochs fit 10 minutes on one H100 (see above)
FAST_BATCH = 512

# smoke scale: narrow widths and a small training set. Timed on the 2-core CPU (see the module docstring).
SMOKE: dict[str, Any] = {
    "base_width": {RESNET: 8, WRN: 2},  # ResNet widths 8-64 (335k params); WRN stem 2, groups 20/40/80 (573k)
    "epochs": 10,
    "subset": 5000,
    "val_size": 1000,
    "batch_size": 128,
    "attention": {"num_heads": 4, "min_key_depth_per_head": 4},
}


def _row(model: str, *, augment: bool = True, attention: str = "none", relative: bool = True) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if attention != "none":
        kwargs.update(attention=attention, relative=relative)
    return {"model": model, "augment": augment, "model_kwargs": kwargs}


def _rows(table: str, placement: str) -> list[dict[str, Any]]:
    if table == "table1":
        return [_row(RESNET), _row(RESNET, augment=False), _row(WRN), _row(WRN, augment=False)]
    if table == "table2":
        return [
            _row(RESNET),
            _row(RESNET, attention=placement),
            _row(WRN),
            _row(WRN, attention=placement),
            _row(WRN, attention=placement, relative=False),
        ]
    return [_row(WRN), _row(WRN, attention="paper")]


def _family(model: str) -> str:
    return "wrn" if model.lower().startswith("wrn") else "resnet"


def scale_settings(
    model: str, scale: str, *, attention: object = None, dataset: str = "cifar10"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The :class:`RunConfig` fields and model keyword arguments a scale sets for one model.

    ``model`` may be any registered name; ResNets take the ResNet-34 settings, ``wrn-D-K`` the WRN-28-10 ones.
    ``attention`` (a placement, or ``None``/``"none"``) decides whether the smoke scale's head settings apply.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    key = WRN if _family(model) == "wrn" else RESNET
    cifar100 = dataset == "cifar100"
    epochs, recipe = FULL_CIFAR100 if cifar100 else FULL[key]
    normalize = "standard" if cifar100 else "seed"
    if scale == "full":
        return {"epochs": epochs, "recipe": recipe, "batch_size": 128, "normalize": normalize}, {}
    if scale == "fast":
        return {"epochs": FAST_EPOCHS[key], "recipe": "fast", "batch_size": FAST_BATCH}, {}
    run = {k: SMOKE[k] for k in ("epochs", "batch_size", "subset", "val_size")}
    kwargs = {"base_width": SMOKE["base_width"][key]}
    if attention not in (None, "none"):
        kwargs.update(SMOKE["attention"])
    return {**run, "recipe": recipe, "normalize": normalize}, kwargs


def _scaled(row: dict[str, Any], table: str, scale: str) -> RunConfig:
    dataset = "cifar100" if table == "paper-cifar100" else "cifar10"
    attention = row["model_kwargs"].get("attention")
    run, kwargs = scale_settings(row["model"], scale, attention=attention, dataset=dataset)
    return RunConfig(model=row["model"], dataset=dataset, augment=row["augment"], **run,
                     model_kwargs={**row["model_kwargs"], **kwargs})


def preset(
    table: str, scale: str = "smoke", *, seeds: int = 1, placement: str = "seed", attention_impl: str | None = None,
    **overrides: Any,
) -> list[tuple[str, RunConfig]]:
    """The runs of one table: ``(row label, config)`` for every row and seed ``0..seeds-1``.

    Runs are ordered seed by seed (all rows of seed 0, then of seed 1, ...), so an interrupted reproduction
    already holds a complete table. ``attention_impl`` (one of :data:`aacn.nn.functional.IMPLS`) sets how the
    attention rows compute their attention (same results, other speed and memory); ``overrides`` set other
    :class:`RunConfig` fields on every run (e.g. ``data_dir``, ``device``, ``progress``); ``out`` is left for
    the caller.

    Raises:
        ValueError: unknown table, scale, placement or attention impl, ``seeds < 1``, or an override that is
            no config field.
    """
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; choose one of {', '.join(TABLES)}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; choose one of {', '.join(PLACEMENTS)}")
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown RunConfig field(s) {unknown}; valid: {sorted(fields)}")
    if attention_impl is not None and attention_impl not in IMPLS:
        raise ValueError(f"unknown attention impl {attention_impl!r}; choose one of {', '.join(IMPLS)}")
    configs = [_scaled(row, table, scale) for row in _rows(table, placement)]
    if attention_impl is not None:
        configs = [
            dataclasses.replace(cfg, model_kwargs={**cfg.model_kwargs, "attention_impl": attention_impl})
            if cfg.model_kwargs.get("attention", "none") != "none" else cfg
            for cfg in configs
        ]
    return [
        (run_label(cfg.to_dict()), dataclasses.replace(cfg, seed=seed, **overrides))
        for seed in range(seeds)
        for cfg in configs
    ]


def run_slug(label: str, seed: int) -> str:
    """Folder name of one run of a preset: ``"AA-WRN-28-10"``, seed 1 -> ``"aa-wrn-28-10-seed1"``."""
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    return f"{slug}-seed{seed}"

