"""ResNet-34 for CIFAR (He et al. 2016), with named 3x3 conv slots for attention augmentation.

Layout (torchvision naming): ``conv1``/``bn1`` (stem, optional ``maxpool``), ``layer1``..``layer4`` of
:class:`BasicBlock` (``[3, 4, 6, 3]`` blocks, widths ``base_width * (1, 2, 4, 8)``), ``avgpool``, ``fc``.
Convolutions have no bias; every conv is followed by a BatchNorm; a shortcut is a 1x1 conv + BN where the
shape changes (stride 2 or a new width), the identity elsewhere.

Block names (usable in a custom attention list) are ``"layer{stage}.{index}"``, e.g. ``"layer1.0"`` ..
``"layer4.2"``; their augmentable 3x3 convs are ``"layer{stage}.{index}.conv1"`` and ``".conv2"``.

Stems: ``"cifar"`` is a 3x3 stride-1 conv and no max-pool (a 32x32 input keeps 32/16/8/4 grids in the four
stages); ``"imagenet"`` is the 7x7 stride-2 conv + 3x3 stride-2 max-pool of the ImageNet network (grids
8/4/2/1 for a 32x32 input).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from aacn.models.config import STEMS as RESNET_STEMS
from aacn.models.placement import ConvSlot, conv_output_size
from aacn.models.stages import add_stages, init_weights

__all__ = ["BasicBlock", "ResNet", "resnet34", "RESNET_STEMS"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + sc(x))``.

    Args:
        in_channels: channels of the block input.
        out_channels: channels of both convs and of the output.
        stride: stride of ``conv1`` (and of the projection shortcut).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR/ImageNet-stem ResNet of :class:`BasicBlock` stages.

    Args:
        layers: number of blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-34.
        num_classes: size of the classifier output.
        base_width: width of the first stage; stage ``s`` has ``base_width * 2**s`` channels.
        stem: ``"cifar"`` (3x3 stride-1 conv) or ``"imagenet"`` (7x7 stride-2 conv + 3x3 stride-2 max-pool).
        input_size: side of the (square) input image; only used to record each conv slot's input grid.
        in_channels: channels of the input image (3 for RGB).

    Attributes:
        arch_family: ``"resnet"`` (selects the placement rules in :mod:`aacn.models.placement`).
        block_names: ``["layer1.0", ..., "layer4.2"]``.
        conv_slots: one :class:`ConvSlot` per 3x3 conv inside a block, in forward order.
        attention_layers: description of each attention-augmented conv (``[]`` for a plain network).
    """

    arch_family = "resnet"

    def __init__(
        self,
        layers: tuple[int, ...] | list[int],
        num_classes: int = 10,
        base_width: int = 64,
        stem: str = "cifar",
        input_size: int = 32,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if stem not in RESNET_STEMS:
            raise ValueError(f"stem must be one of {list(RESNET_STEMS)}, got {stem!r}")
        res = input_size
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, base_width, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, base_width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            res = conv_output_size(conv_output_size(res, 2), 2)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)

        self.block_names: list[str] = []
        self.conv_slots: list[ConvSlot] = []
        self.attention_layers: list[dict] = []
        widths = [base_width * 2**stage for stage in range(len(layers))]
        in_ch, _ = add_stages(self, "layer", widths, layers, BasicBlock, base_width, res)
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        self.num_features = in_ch
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and residual stages: ``(B, C, H, W) -> (B, 8 * base_width, H', W')``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet34(num_classes: int = 10, **kwargs: Any) -> ResNet:
    """ResNet-34: basic blocks ``[3, 4, 6, 3]``; ``kwargs`` as :class:`ResNet` takes them (``base_width``, ``stem``,
    ``input_size``, ``in_channels``). 21,282,122 parameters with the cifar stem and 10 classes."""
    return ResNet((3, 4, 6, 3), num_classes, **kwargs)
