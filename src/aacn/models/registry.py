"""Model registry: ``create_model(name, num_classes, **kwargs)`` in the style of timm.

Names: ``"resnet34"`` and the family ``"wrn-D-K"`` (any depth ``D`` with ``(D - 4) % 6 == 0`` and widen factor
``K >= 1``, e.g. ``"wrn-28-10"``, ``"wrn-16-4"``, ``"wrn-40-4"``).

Keyword arguments accepted by every model:

- ``base_width``: ResNet stage widths ``base_width * (1, 2, 4, 8)`` (default 64); WRN stem width
  ``base_width`` and group widths ``base_width * K * (1, 2, 4)`` (default 16). ``None`` means the default.
- ``attention``: ``"none"`` | ``"seed"`` | ``"paper"`` | list of block names (see
  :mod:`aacn.models.placement`).
- ``relative``, ``num_heads``, ``kappa``, ``upsilon``, ``min_key_depth_per_head``, ``attention_impl``:
  passed to the attention-augmented convs (Nh, kappa, upsilon as in Bello et al. 2019).
- ``input_size``: side of the square input (32 for CIFAR); fixes the grids of the relative embeddings.

ResNet only: ``stem`` (``"cifar"`` | ``"imagenet"``). WRN only: ``dropout`` (probability in ``[0, 1)``).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable
from typing import Any

from torch import nn

from aacn.models.placement import apply_attention, validate_attention_options
from aacn.models.resnet import resnet34
from aacn.models.wide_resnet import wide_resnet

__all__ = ["create_model", "list_models", "register_model"]

_ATTENTION_KWARGS = {
    "attention": "none",
    "relative": True,
    "num_heads": 8,
    "kappa": 0.2,
    "upsilon": 0.1,
    "min_key_depth_per_head": 20,
    "attention_impl": "auto",
}
_COMMON_KWARGS = ("base_width", "input_size", *_ATTENTION_KWARGS)

# display name -> (builder taking (match, num_classes, **arch_kwargs), names of its own extra kwargs)
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...]]] = {}
_PATTERNS: dict[str, re.Pattern[str]] = {}


def register_model(display_name: str, pattern: str, extra_kwargs: tuple[str, ...] = ()):
    """Decorator: register a builder for names fully matching ``pattern`` (listed as ``display_name``)."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[display_name] = (builder, extra_kwargs)
        _PATTERNS[display_name] = re.compile(pattern)
        return builder

    return wrap


def list_models() -> list[str]:
    """Registered model names; ``"wrn-D-K"`` stands for the whole WRN family (e.g. ``"wrn-28-10"``)."""
    return list(_REGISTRY)


def _positive_int(arg: str, value: Any) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    return int(value)


@register_model("resnet34", r"resnet34", extra_kwargs=("stem",))
def _build_resnet34(
    match: re.Match[str], num_classes: int, base_width: int | None, input_size: int, stem: str = "cifar"
) -> nn.Module:
    width = 64 if base_width is None else base_width
    return resnet34(num_classes=num_classes, base_width=width, stem=stem, input_size=input_size)


@register_model("wrn-D-K", r"wrn-(\d+)-(\d+)", extra_kwargs=("dropout",))
def _build_wrn(
    match: re.Match[str], num_classes: int, base_width: int | None, input_size: int, dropout: float = 0.0
) -> nn.Module:
    depth, widen = int(match.group(1)), int(match.group(2))
    if depth < 10 or (depth - 4) % 6 != 0 or widen < 1:
        raise ValueError(
            f"bad WRN name {match.group(0)!r}: expected wrn-D-K with D = 6*N+4 >= 10 (10, 16, 22, 28, 40, "
            f"...) and K >= 1, e.g. wrn-28-10"
        )
    if not isinstance(dropout, numbers.Real) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    width = 16 if base_width is None else base_width
    return wide_resnet(depth, widen, num_classes, width, dropout=float(dropout), input_size=input_size)


def create_model(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build a registered network, optionally with attention-augmented convolutions.

    Args:
        name: ``"resnet34"`` or ``"wrn-D-K"`` (e.g. ``"wrn-28-10"``); case-insensitive.
        num_classes: classifier outputs (10 for CIFAR-10, 100 for CIFAR-100).
        **kwargs: see the module docstring.

    Returns:
        The model, with ``block_names`` (names for a custom ``attention`` list) and ``attention_layers``
        (one dict per augmented conv; ``[]`` for a plain model).

    Raises:
        ValueError: unknown name or keyword argument, or a value out of range (one line saying which).
    """
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string such as 'resnet34' or 'wrn-28-10', got {name!r}")
    key = name.strip().lower()
    found = [(n, m) for n, p in _PATTERNS.items() if (m := p.fullmatch(key))]
    if not found:
        raise ValueError(
            f"unknown model {name!r}: choose one of {list_models()} (wrn-D-K e.g. wrn-28-10, wrn-16-4)"
        )
    display_name, match = found[0]
    builder, extra = _REGISTRY[display_name]
    allowed = (*_COMMON_KWARGS, *extra)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for model {name!r}; accepted: {sorted(allowed)}")

    num_classes = _positive_int("num_classes", num_classes)
    base_width = kwargs.pop("base_width", None)
    if base_width is not None:
        base_width = _positive_int("base_width", base_width)
    input_size = _positive_int("input_size", kwargs.pop("input_size", 32))
    attn = {k: kwargs.pop(k, default) for k, default in _ATTENTION_KWARGS.items()}
    validate_attention_options(**{k: v for k, v in attn.items() if k != "attention"})
    model = builder(match, num_classes, base_width, input_size, **kwargs)
    return apply_attention(model, **attn)
