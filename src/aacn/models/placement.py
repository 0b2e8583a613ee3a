"""Where attention goes: choose conv slots of a ResNet / WRN and swap them for :class:`aacn.nn.AAConv2d`.

Paper symbols (Bello et al., ICCV 2019) map to arguments as: Nh -> ``num_heads``, kappa -> ``kappa``
(key depth ``dk = kappa * F_out``), upsilon -> ``upsilon`` (value depth ``dv = upsilon * F_out``), F_out ->
the replaced conv's ``out_channels``, dk/Nh -> key depth per head (at least ``min_key_depth_per_head``).

Placements (``attention=``): a name of :data:`aacn.models.placement_rules.PLACEMENTS` (the table of named
placements and their rule per architecture family), or a list of names (or one comma-separated string):

- ``"none"``: a plain network.
- ``"seed"``: the replication's placement. ResNet-34: only the last 3x3 conv of the network
  (``layer4.2.conv2``); WRN: only the first conv of the third group (``block3.0.conv1``).
- ``"paper"``: WRN: the first conv of every residual block (12 layers in WRN-28-10), as the paper does on
  CIFAR-100. ResNet-34: the first 3x3 conv of every block of stages 2-4 (13 layers). The paper gives its
  ResNet settings for ImageNet only; applying them to the CIFAR ResNet-34 this way is *our transfer* of them.
- a block name such as ``"layer3.1"`` / ``"block2.0"`` augments that block's first 3x3 conv; a conv name such as
  ``"layer4.2.conv2"`` augments exactly that conv.

Depths of an augmented conv with ``F_out`` output channels (``round`` is round-half-up here):

- ``dk = max(round(kappa * F_out), min_key_depth_per_head * num_heads)``, then rounded *up* to a multiple
  of ``num_heads``.
- ``dv = upsilon * F_out`` rounded to the *nearest* multiple of ``num_heads`` (halves up), at least
  ``num_heads`` and at most the largest multiple of ``num_heads`` not above ``F_out`` (the same rule as
  :class:`aacn.nn.AAConv2d` applies to a fractional ``dv``).

So ``kappa = upsilon = 1`` gives ``dv == F_out``, a fully attentional conv, whenever ``num_heads`` divides
``F_out`` (otherwise that request raises ``ValueError``). Examples with ``num_heads=8``, defaults: F_out 160
-> (dk, dv) = (160, 16); 128 -> (160, 16); 256 -> (160, 32); 640 -> (160, 64).

The replaced conv keeps the block's own BatchNorm after it, so the AAConv2d is built with
``batchnorm=False``: BN(concat(conv, attention)) is exactly the paper's AAConv followed by BN (a WRN
``conv2`` has no BN of its own; it is followed by the residual sum, as the plain conv is). Its relative
embeddings are sized by ``feature_size`` = the conv's input grid for the model's ``input_size``. A stride-2
AAConv2d attends over the 2x2 average-pooled input, so the reported ``resolution`` of a layer is the grid the
attention runs on: the conv's input grid, halved (rounded up) for stride 2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from aacn.errors import OptionError
from aacn.models.config import ATTENTION_OPTIONS, ModelOptions
from aacn.models.placement_rules import PLACEMENTS, describe_placements, rule_for
from aacn.nn.aaconv import AAConv2d, resolve_depth

__all__ = [
    "ConvSlot",
    "PLACEMENTS",
    "conv_output_size",
    "block_slots",
    "attention_depths",
    "resolve_placement",
    "apply_attention",
]


@dataclass(frozen=True)
class ConvSlot:
    """A 3x3 conv inside a residual block that may be replaced by an attention-augmented conv.

    Attributes:
        name: module path, e.g. ``"layer2.0.conv1"``.
        block: block name, e.g. ``"layer2.0"``.
        stage: 1-based stage (ResNet) or group (WRN) index.
        index: position of the conv inside its block (0 = first conv).
        in_channels: input channels of the conv.
        out_channels: output channels of the conv (F_out).
        stride: stride of the conv.
        resolution: ``(H, W)`` of the conv's input for the model's ``input_size``.
    """

    name: str
    block: str
    stage: int
    index: int
    in_channels: int
    out_channels: int
    stride: int
    resolution: tuple[int, int]


def conv_output_size(size: int, stride: int) -> int:
    """Output side of a 'same'-padded odd-kernel conv or pool (kernel ``2p+1``, padding ``p``)."""
    return (size - 1) // stride + 1


def block_slots(
    block: str, stage: int, in_channels: int, out_channels: int, stride: int, size: int
) -> tuple[list[ConvSlot], int]:
    """Slots of a two-3x3-conv block (``conv1`` strided, ``conv2`` not) and the block's output side."""
    mid = conv_output_size(size, stride)
    slots = [
        ConvSlot(f"{block}.conv1", block, stage, 0, in_channels, out_channels, stride, (size, size)),
        ConvSlot(f"{block}.conv2", block, stage, 1, out_channels, out_channels, 1, (mid, mid)),
    ]
    return slots, mid


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def attention_depths(
    out_channels: int,
    *,
    kappa: float,
    upsilon: float,
    num_heads: int,
    min_key_depth_per_head: int,
    name: str = "layer",
) -> tuple[int, int]:
    """Total key and value depths ``(dk, dv)`` of an augmented conv with ``out_channels`` outputs.

    See the module docstring for the rounding rules. Raises ``ValueError`` when ``num_heads`` cannot split
    a value depth that fits the layer (``num_heads > out_channels``) or when a fully attentional layer
    (``upsilon == 1``) is asked for but ``num_heads`` does not divide ``out_channels``.
    """
    if num_heads > out_channels:
        raise ValueError(
            f"num_heads={num_heads} is larger than out_channels={out_channels} of {name}: dv must be a "
            f"positive multiple of num_heads no larger than out_channels; use fewer heads or a wider model"
        )
    if upsilon == 1 and out_channels % num_heads != 0:
        raise ValueError(
            f"upsilon=1 (fully attentional) needs num_heads to divide out_channels, but {name} has "
            f"out_channels={out_channels} and num_heads={num_heads}; pick num_heads dividing {out_channels}"
        )
    dk = max(_round_half_up(kappa * out_channels), min_key_depth_per_head * num_heads)
    dk = -(-dk // num_heads) * num_heads
    return dk, resolve_depth(float(upsilon), "dv", out_channels, num_heads)


def resolve_placement(
    family: str, slots: Sequence[ConvSlot], attention: str | Sequence[str] | None
) -> list[ConvSlot]:
    """The conv slots a placement augments, in forward order.

    Args:
        family: the model's ``arch_family`` (``"resnet"``, ``"wrn"``), which picks each named placement's rule.
        slots: the model's ``conv_slots`` (every 3x3 conv inside a block, forward order).
        attention: a name of :data:`~aacn.models.placement_rules.PLACEMENTS` (``None`` is ``"none"``), a list
            of block / conv names, or one comma-separated string of them.
    """
    if attention is None:
        attention = "none"
    if isinstance(attention, str):
        if attention in PLACEMENTS:
            return rule_for(attention, family).select(slots)
        names = [n.strip() for n in attention.split(",") if n.strip()]
    elif isinstance(attention, Sequence) and all(isinstance(n, str) for n in attention):
        names = [n.strip() for n in attention]
    else:
        raise ValueError(
            f"attention must be {describe_placements()} or a list of block names, got {attention!r}"
        )
    by_conv = {s.name: s for s in slots}
    by_block = {s.block: s for s in reversed(slots)}  # first conv of each block wins
    chosen: list[ConvSlot] = []
    for n in names:
        slot = by_conv.get(n) or by_block.get(n)
        if slot is None:
            blocks = list(by_block)
            raise ValueError(
                f"unknown placement or block {n!r}: use {describe_placements()}, or block names "
                f"{blocks[0]} .. {blocks[-1]} (or a conv such as {slots[-1].name})"
            )
        if slot in chosen:
            raise ValueError(f"attention lists conv {slot.name!r} twice (as {n!r}); list each block once")
        chosen.append(slot)
    return sorted(chosen, key=list(slots).index)


def apply_attention(model: nn.Module, attention: ModelOptions | str | Sequence[str] = "none",
                    **options: Any) -> nn.Module:
    """Replace the placement's conv slots of ``model`` in place by ``AAConv2d`` and describe them.

    ``attention`` is a :class:`~aacn.models.config.ModelOptions` (a ``ModelConfig`` or a ``RunConfig``), or its
    placement with the other attention options given by name (``relative``, ``num_heads``, ``kappa``,
    ``upsilon``, ``min_key_depth_per_head``, ``attention_impl``; their defaults and checks are
    :class:`~aacn.models.config.ModelOptions`'). ``model`` must expose ``arch_family`` and
    ``conv_slots`` (as :class:`~aacn.models.resnet.ResNet` and :class:`~aacn.models.wide_resnet.WideResNet` do).
    Sets ``model.attention_layers`` to one dict per augmented conv: ``name``, ``in_channels``, ``out_channels``,
    ``stride``, ``resolution`` (``[H, W]``, the grid the attention runs on), ``dk``, ``dv``, ``num_heads``,
    ``relative``. Validates everything before changing the model. Returns ``model``.
    """
    if isinstance(attention, ModelOptions):
        config = attention
    else:
        unknown = sorted(set(options) - set(ATTENTION_OPTIONS))
        if unknown:
            raise OptionError(unknown[0], f"unknown attention option(s) {unknown}; "
                                          f"accepted: {list(ATTENTION_OPTIONS)}")
        config = ModelOptions(attention=attention, **options)
    chosen = resolve_placement(model.arch_family, model.conv_slots, config.attention)
    plans = []
    for slot in chosen:  # check every layer before touching the model
        dk, dv = attention_depths(slot.out_channels, kappa=config.kappa, upsilon=config.upsilon,
                                  num_heads=config.num_heads, min_key_depth_per_head=config.min_key_depth_per_head,
                                  name=slot.name)
        plans.append((slot, dk, dv))

    layers: list[dict] = []
    for slot, dk, dv in plans:
        old = model.get_submodule(slot.name)
        new = AAConv2d(slot.in_channels, slot.out_channels, 3, dk=dk, dv=dv, num_heads=config.num_heads,
                       stride=slot.stride, relative=config.relative, padding=1, bias=False, batchnorm=False,
                       feature_size=slot.resolution, attention_impl=config.attention_impl,
                       ).to(device=old.weight.device, dtype=old.weight.dtype)
        if new.conv is not None:  # the convolutional part is initialised like the conv it replaces
            nn.init.kaiming_normal_(new.conv.weight, mode="fan_out", nonlinearity="relu")
        parent_name, _, attr = slot.name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, new)
        layers.append({"name": slot.name, "in_channels": slot.in_channels, "out_channels": slot.out_channels,
                       "stride": slot.stride, "resolution": list(new._grid(*slot.resolution)), "dk": dk, "dv": dv,
                       "num_heads": config.num_heads, "relative": config.relative})
    model.attention_layers = layers
    return model
