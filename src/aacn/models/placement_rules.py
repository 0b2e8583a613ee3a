"""The named attention placements, as data: :data:`PLACEMENTS` maps a name to its :class:`Rule` per architecture
family (the model's ``arch_family``: ``"resnet"``, ``"wrn"``; :data:`ANY_FAMILY` for a rule every family shares).

Everything that names placements derives from this table: the ``--attention`` help, the check of the
``attention`` option (:mod:`aacn.models.config`) and its messages, and :func:`aacn.models.placement.resolve_placement`.
Adding a placement is one entry here. This module imports nothing of aacn: every module of the models reads it.

A :class:`Rule` selects among a model's conv slots (every 3x3 conv inside a residual block, in forward order):
those at position ``conv`` of their block (0: the block's first conv; ``None``: any) in stages ``from_stage``
and later, then only the ``first`` or the ``last`` few of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ANY_FAMILY", "Rule", "PLACEMENTS", "describe_placements", "rule_for"]

ANY_FAMILY = "*"


@dataclass(frozen=True)
class Rule:
    """Which conv slots a placement augments in one architecture family (see the module docstring)."""

    conv: int | None = None
    from_stage: int = 1
    first: int | None = None
    last: int | None = None

    def select(self, slots: Sequence[Any]) -> list[Any]:
        """The slots (objects with ``stage`` and ``index``, forward order) this rule augments, in forward order."""
        chosen = [s for s in slots if (self.conv is None or s.index == self.conv) and s.stage >= self.from_stage]
        if self.first is not None:
            chosen = chosen[:self.first]
        if self.last is not None:
            chosen = chosen[-self.last:] if self.last else []
        return chosen


PLACEMENTS: dict[str, dict[str, Rule]] = {
    # a plain network
    "none": {ANY_FAMILY: Rule(first=0)},
    # the replication's single layer: ResNet-34 its last 3x3 conv (layer4.2.conv2), WRN the first conv of group 3
    "seed": {"resnet": Rule(last=1), "wrn": Rule(conv=0, from_stage=3, first=1)},
    # Bello et al.: WRN the first conv of every block; ResNet-34 the first 3x3 conv of every block of stages 2-4
    # (the paper gives ResNet settings for ImageNet only: this transfer to the CIFAR ResNet-34 is ours)
    "paper": {"resnet": Rule(conv=0, from_stage=2), "wrn": Rule(conv=0)},
}
"""Placement name -> {architecture family (or :data:`ANY_FAMILY`) -> rule}."""


def describe_placements() -> str:
    """The names for a message: ``'none', 'seed', 'paper'``."""
    return ", ".join(repr(name) for name in PLACEMENTS)


def rule_for(placement: str, family: str) -> Rule:
    """The rule of ``placement`` for architecture ``family``; ``ValueError`` when it has none."""
    rules = PLACEMENTS[placement]
    rule = rules.get(family) or rules.get(ANY_FAMILY)
    if rule is None:
        raise ValueError(f"placement {placement!r} has no rule for architecture family {family!r} (it has rules for "
                         f"{', '.join(rules)}); add one to aacn.models.placement_rules.PLACEMENTS or list block names")
    return rule
