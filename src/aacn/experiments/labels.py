"""Row names of runs in the replication's style: ``ResNet-34``, ``AA-WRN-28-10``, ``WRN-28-10 (no aug)``.

Presets name their rows with :func:`run_label` and reports name the rows they find the same way, so a report of
a preset's runs shows the preset's names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aacn.config import RunConfig

__all__ = ["model_label", "run_label"]


def model_label(model: str) -> str:
    """``"wrn-28-10"`` -> ``"WRN-28-10"``, ``"resnet34"`` -> ``"ResNet-34"``; other names unchanged."""
    parts = model.lower().split("-")
    if parts[0] == "wrn":
        return "WRN-" + "-".join(parts[1:])
    if model.lower().startswith("resnet"):
        return "ResNet-" + model[len("resnet"):]
    return model


def run_label(config: RunConfig | Mapping[str, Any]) -> str:
    """Row name of a run: ``AA-`` for attention, ``AA-NRE-`` for attention without relative position
    embeddings, `` (no aug)`` without augmentation. ``config`` is a RunConfig or a saved one (any format)."""
    if not isinstance(config, RunConfig):
        config = RunConfig.from_dict(config)
    label = model_label(config.model)
    if config.arch.attention.enabled:
        label = ("AA-" if config.relative else "AA-NRE-") + label
    if not config.augment:
        label += " (no aug)"
    return label
