"""Row names of runs in the replication's style: ``ResNet-34``, ``AA-WRN-28-10``, ``WRN-28-10 (no aug)``.

Presets name their rows with :func:`run_label` and reports name the rows they find the same way, so a report of
a preset's runs shows the preset's names.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from aacn.config import RunConfig
from aacn.models.registry import model_family
from aacn.models.resnet import ResNet
from aacn.models.wide_resnet import WideResNet

# Each family's own base width (its constructor's default): the full-width network.
_FULL_WIDTH = {cls.arch_family: inspect.signature(cls).parameters["base_width"].default
               for cls in (ResNet, WideResNet)}

__all__ = ["AA", "AA_NRE", "NO_AUG", "model_label", "run_label"]

AA, AA_NRE, NO_AUG = "AA-", "AA-NRE-", " (no aug)"  # with attention; without relative embeddings; no augmentation


def model_label(model: str, base_width: int | None = None) -> str:
    """``"wrn-28-10"`` -> ``"WRN-28-10"``, ``"resnet34"`` -> ``"ResNet-34"``; other names unchanged.

    A ``base_width`` other than the architecture's own is part of the name, as the fraction of the full width
    that trained: ``("wrn-28-10", 2)`` -> ``"WRN-28-10 (1/8 width)"``, ``("resnet34", 16)`` ->
    ``"ResNet-34 (1/4 width)"``.
    """
    parts = model.lower().split("-")
    if parts[0] == "wrn":
        name = "WRN-" + "-".join(parts[1:])
    elif model.lower().startswith("resnet"):
        name = "ResNet-" + model[len("resnet"):]
    else:
        return model
    try:
        full = _FULL_WIDTH.get(model_family(model))
    except ValueError:  # not a registered name: no width to compare with
        full = None
    if base_width is None or full is None or base_width == full:
        return name
    fraction = Fraction(base_width, full)
    return f"{name} ({fraction} width)" if fraction < 1 else f"{name} ({fraction}× width)"


def run_label(config: RunConfig | Mapping[str, Any]) -> str:
    """Row name of a run: ``AA-`` for attention, ``AA-NRE-`` for attention without relative position
    embeddings, `` (no aug)`` without augmentation. ``config`` is a RunConfig or a saved one (any format)."""
    if not isinstance(config, RunConfig):
        config = RunConfig.from_dict(config)
    label = model_label(config.model, config.base_width)
    if config.attention != "none":
        label = (AA if config.relative else AA_NRE) + label
    if not config.augment:
        label += NO_AUG
    return label
