"""What ResNet and WRN share: residual stages of two-conv blocks with named conv slots, and their weight init."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from aacn.models.placement import block_slots

__all__ = ["add_stages", "init_weights"]


def add_stages(
    model: nn.Module,
    prefix: str,
    widths: Sequence[int],
    depths: Sequence[int],
    make_block: Callable[[int, int, int], nn.Module],
    in_channels: int,
    size: int,
) -> tuple[int, int]:
    """Add stages ``{prefix}1``, ``{prefix}2``, ... of ``make_block(in, out, stride)`` blocks to ``model``.

    Stage ``s`` has ``depths[s-1]`` blocks of ``widths[s-1]`` channels; the first block of every stage but the
    first has stride 2. Appends to ``model.block_names`` (``"{prefix}{s}.{i}"``) and ``model.conv_slots`` (the two
    3x3 convs of every block, with their input grids for a ``size``-sided input). Returns the channels and the
    side of the last stage's output.
    """
    for stage, (width, num_blocks) in enumerate(zip(widths, depths, strict=True), start=1):
        blocks = []
        for index in range(num_blocks):
            stride = 2 if (stage > 1 and index == 0) else 1
            blocks.append(make_block(in_channels, width, stride))
            block = f"{prefix}{stage}.{index}"
            model.block_names.append(block)
            slots, size = block_slots(block, stage, in_channels, width, stride, size)
            model.conv_slots.extend(slots)
            in_channels = width
        model.add_module(f"{prefix}{stage}", nn.Sequential(*blocks))
    return in_channels, size


def init_weights(model: nn.Module, *, zero_linear_bias: bool = False) -> None:
    """Kaiming-normal (fan-out, ReLU gain) convs, BN weight 1 / bias 0; linear layers keep PyTorch's default
    init, with a zero bias when ``zero_linear_bias``."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif zero_linear_bias and isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)

