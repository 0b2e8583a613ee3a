"""Wide residual networks WRN-D-K (Zagoruyko & Komodakis 2016), pre-activation blocks, named conv slots.

Layout: ``conv1`` (3x3 stem, ``base_width`` channels), ``block1``..``block3`` (groups of
``N = (D - 4) / 6`` :class:`WideBasicBlock` with widths ``base_width * K * (1, 2, 4)`` and strides 1/2/2),
``bn`` + ReLU, global average pool, ``fc``. Convolutions have no bias.

Block names (usable in a custom attention list) are ``"block{group}.{index}"``, e.g. ``"block1.0"`` ..
``"block3.3"`` for WRN-28-10; their augmentable 3x3 convs are ``"block{group}.{index}.conv1"`` and
``".conv2"``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aacn.models.placement import ConvSlot
from aacn.models.stages import add_stages, init_weights

__all__ = ["WideBasicBlock", "WideResNet", "wide_resnet"]


class WideBasicBlock(nn.Module):
    """Pre-activation block: ``conv2(drop(relu(bn2(conv1(relu(bn1(x))))))) + sc(x)``.

    Where the shape changes, the shortcut is a 1x1 (strided) conv applied to ``relu(bn1(x))``, as in the
    reference implementation; otherwise it is the identity on ``x``.

    Args:
        in_channels: channels of the block input.
        out_channels: channels of both convs and of the output.
        stride: stride of ``conv1`` (and of the projection shortcut).
        dropout: dropout probability between the two convs (0 disables it).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.dropout(self.relu(self.bn2(out)))
        return self.conv2(out) + skip


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``.

    Args:
        depth: total depth D; ``(D - 4) % 6 == 0``, giving ``(D - 4) // 6`` blocks per group.
        widen_factor: K, the width multiplier of the three groups.
        num_classes: size of the classifier output.
        base_width: stem width (16 in the paper); group ``g`` has ``base_width * K * 2**(g-1)`` channels.
        dropout: dropout probability inside every block.
        input_size: side of the (square) input image; only used to record each conv slot's input grid.
        in_channels: channels of the input image (3 for RGB).

    Attributes:
        arch_family: ``"wrn"`` (selects the placement rules in :mod:`aacn.models.placement`).
        block_names: ``["block1.0", ..., "block3.{N-1}"]``.
        conv_slots: one :class:`ConvSlot` per 3x3 conv inside a block, in forward order.
        attention_layers: description of each attention-augmented conv (``[]`` for a plain network).
    """

    arch_family = "wrn"

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 10,
        base_width: int = 16,
        dropout: float = 0.0,
        input_size: int = 32,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6*N+4 with N >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"WRN widen factor K must be >= 1, got {widen_factor}")
        num_blocks = (depth - 4) // 6
        self.depth, self.widen_factor = depth, widen_factor
        self.conv1 = nn.Conv2d(in_channels, base_width, 3, stride=1, padding=1, bias=False)

        self.block_names: list[str] = []
        self.conv_slots: list[ConvSlot] = []
        self.attention_layers: list[dict] = []
        widths = [base_width * widen_factor * 2**group for group in range(3)]
        in_ch, _ = add_stages(self, "block", widths, [num_blocks] * 3,
                              lambda i, o, s: WideBasicBlock(i, o, s, dropout), base_width, input_size)
        self.bn = nn.BatchNorm2d(in_ch)
        self.fc = nn.Linear(in_ch, num_classes)
        self.num_features = in_ch
        init_weights(self, zero_linear_bias=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, three groups and the final BN-ReLU: ``(B, C, H, W) -> (B, 4 * K * base_width, H/4, W/4)``."""
        x = self.conv1(x)
        x = self.block3(self.block2(self.block1(x)))
        return F.relu(self.bn(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def wide_resnet(depth: int, widen_factor: int, num_classes: int = 10, **kwargs: Any) -> WideResNet:
    """WRN-D-K; ``kwargs`` as :class:`WideResNet` takes them (``base_width``, ``dropout``, ``input_size``,
    ``in_channels``).
    WRN-28-10 has 36,479,194 parameters for 10 classes."""
    return WideResNet(depth, widen_factor, num_classes, **kwargs)
