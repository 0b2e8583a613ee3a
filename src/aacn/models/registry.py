"""Model registry: ``create_model(ModelConfig)``, or timm-style ``create_model(name, num_classes, **kwargs)``.

Names: ``"resnet34"`` and the family ``"wrn-D-K"`` (any depth ``D`` with ``(D - 4) % 6 == 0`` and widen factor
``K >= 1``, e.g. ``"wrn-28-10"``, ``"wrn-16-4"``, ``"wrn-40-4"``).

The options, their defaults and their checks are those of :class:`aacn.models.config.ModelConfig`, whose fields the
keyword arguments are (named as the CLI names them: ``attention`` for the placement, ``attention_impl`` for the
implementation):

- ``base_width``: ResNet stage widths ``base_width * (1, 2, 4, 8)`` (default 64); WRN stem width
  ``base_width`` and group widths ``base_width * K * (1, 2, 4)`` (default 16). ``None`` means the default.
- ``attention``: ``"none"`` | ``"seed"`` | ``"paper"`` | list of block names (see
  :mod:`aacn.models.placement`).
- ``relative``, ``num_heads``, ``kappa``, ``upsilon``, ``min_key_depth_per_head``, ``attention_impl``:
  passed to the attention-augmented convs (Nh, kappa, upsilon as in Bello et al. 2019).
- ``input_size``: side of the square input (default 32; a run takes its dataset's); fixes the grids of the
  relative embeddings. ``in_channels``: channels of the input (default 3; a run takes its dataset's).

ResNet only: ``stem`` (``"cifar"`` | ``"imagenet"``). WRN only: ``dropout`` (probability in ``[0, 1)``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from aacn.models.config import ModelConfig
from aacn.models.placement import apply_attention
from aacn.models.resnet import ResNet, resnet34
from aacn.models.wide_resnet import WideResNet, wide_resnet

__all__ = ["create_model", "list_models", "register_model", "model_family"]

_FAMILY_KWARGS = ("stem", "dropout")  # options only some families take


@dataclass(frozen=True)
class _Entry:
    pattern: re.Pattern[str]
    builder: Callable[..., nn.Module]  # (match, ModelConfig) -> plain network
    family: str  # the network class's arch_family
    extra_kwargs: tuple[str, ...]


_REGISTRY: dict[str, _Entry] = {}


def register_model(display_name: str, pattern: str, family: str, extra_kwargs: tuple[str, ...] = ()):
    """Decorator: register a builder ``(match, ModelConfig) -> nn.Module`` for names fully matching ``pattern``.

    ``family`` selects the placement rules and the presets' settings; ``extra_kwargs`` are the family options
    (``stem``, ``dropout``) the builder takes.
    """

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[display_name] = _Entry(re.compile(pattern), builder, family, extra_kwargs)
        return builder

    return wrap


def list_models() -> list[str]:
    """Registered model names; ``"wrn-D-K"`` stands for the whole WRN family (e.g. ``"wrn-28-10"``)."""
    return list(_REGISTRY)


def _lookup(name: str) -> tuple[str, _Entry, re.Match[str]]:
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string such as 'resnet34' or 'wrn-28-10', got {name!r}")
    key = name.strip().lower()
    for display_name, entry in _REGISTRY.items():
        match = entry.pattern.fullmatch(key)
        if match:
            return display_name, entry, match
    raise ValueError(f"unknown model {name!r}: choose one of {list_models()} (wrn-D-K e.g. wrn-28-10, wrn-16-4)")


def model_family(name: str) -> str:
    """The architecture family of a registered name (``"resnet"``, ``"wrn"``), without building the model."""
    return _lookup(name)[1].family


def _given(config: ModelConfig, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(config, n) for n in names if getattr(config, n) is not None}


@register_model("resnet34", r"resnet34", family=ResNet.arch_family, extra_kwargs=("stem",))
def _build_resnet34(match: re.Match[str], config: ModelConfig) -> nn.Module:
    return resnet34(config.num_classes, input_size=config.input_size, in_channels=config.in_channels,
                    **_given(config, ("base_width", "stem")))


@register_model("wrn-D-K", r"wrn-(\d+)-(\d+)", family=WideResNet.arch_family, extra_kwargs=("dropout",))
def _build_wrn(match: re.Match[str], config: ModelConfig) -> nn.Module:
    depth, widen = int(match.group(1)), int(match.group(2))
    if depth < 10 or (depth - 4) % 6 != 0 or widen < 1:
        raise ValueError(
            f"bad WRN name {match.group(0)!r}: expected wrn-D-K with D = 6*N+4 >= 10 (10, 16, 22, 28, 40, "
            f"...) and K >= 1, e.g. wrn-28-10"
        )
    return wide_resnet(depth, widen, config.num_classes, input_size=config.input_size, in_channels=config.in_channels,
                       **_given(config, ("base_width", "dropout")))


def model_config(name: str, num_classes: int = 10, **kwargs: Any) -> ModelConfig:
    """The :class:`ModelConfig` of ``create_model``'s keyword form (unknown keywords raise ``ValueError``)."""
    _lookup(name)
    allowed = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in ("model", "num_classes")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for model {name!r}; accepted: {sorted(allowed)}")
    return ModelConfig(model=name, num_classes=num_classes, **kwargs)


def create_model(config: ModelConfig | str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered network, optionally with attention-augmented convolutions.

    Args:
        config: a :class:`~aacn.config.ModelConfig`, or a model name (``"resnet34"``, ``"wrn-D-K"`` such as
            ``"wrn-28-10"``; case-insensitive) with its options as keyword arguments (see the module docstring).
        num_classes: classifier outputs with a name (default 10); a ModelConfig holds its own.

    Returns:
        The model, with ``arch_family``, ``block_names`` (names for a custom ``attention`` list) and
        ``attention_layers`` (one dict per augmented conv; ``[]`` for a plain model).

    Raises:
        ValueError: unknown name or keyword argument, or a value out of range (one line saying which).
    """
    if not isinstance(config, ModelConfig):
        config = model_config(config, 10 if num_classes is None else num_classes, **kwargs)
    elif num_classes is not None or kwargs:
        raise ValueError("create_model(ModelConfig) takes no other arguments; use dataclasses.replace on the config")
    display_name, entry, match = _lookup(config.model)
    misplaced = sorted(set(_given(config, _FAMILY_KWARGS)) - set(entry.extra_kwargs))
    if misplaced:
        raise ValueError(f"unknown argument(s) {misplaced} for model {config.model!r}; {display_name} takes "
                         f"{', '.join(entry.extra_kwargs)} of {', '.join(_FAMILY_KWARGS)}")
    return apply_attention(entry.builder(match, config), config)
