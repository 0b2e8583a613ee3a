"""uint8 images → normalised float32, with the training split's statistics.

Normalisation modes (:data:`NORMALIZE_MODES`):

* ``"seed"`` — ``x / 255 - mean_image``, where ``mean_image`` is the per-pixel mean (C, H, W) of the
  training split (what the replication did);
* ``"standard"`` — per-channel ``(x / 255 - mean_c) / std_c`` with the training split's channel statistics.
"""

from __future__ import annotations

import torch
from torch import Tensor

NORMALIZE_MODES = ("seed", "standard")


def _image_stats(images_u8: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Exact per-pixel sums of ``x`` and ``x**2`` over the batch (int64, shape (C, H, W)), in chunks."""
    total = torch.zeros(images_u8.shape[1:], dtype=torch.int64)
    total_sq = torch.zeros_like(total)
    for start in range(0, images_u8.shape[0], chunk):
        x = images_u8[start:start + chunk].to("cpu", torch.int32)
        total += x.sum(0, dtype=torch.int64)
        total_sq += (x * x).sum(0, dtype=torch.int64)
    return total, total_sq


class Normalizer(torch.nn.Module):
    """uint8 images → normalised float32, with statistics of the training split held as buffers.

    Args:
        mode: ``"seed"`` (per-pixel mean image subtracted from ``x/255``) or ``"standard"``
            (per-channel mean/std).
        train_images_u8: the training split, uint8 ``(N, 3, H, W)``; statistics are computed once here.

    Buffers ``mean`` and ``std`` (``(3, H, W)`` / ``(1, 1, 1)`` for ``"seed"``, ``(3, 1, 1)`` for
    ``"standard"``) define ``forward(x) = (x / 255 - mean) / std``, computed as ``x * scale + shift`` with
    ``scale``/``shift`` buffers of the full ``(3, H, W)`` shape.
    """

    def __init__(self, mode: str, train_images_u8: Tensor) -> None:
        super().__init__()
        if mode not in NORMALIZE_MODES:
            raise ValueError(f"unknown normalisation mode {mode!r}; choose one of "
                             f"{', '.join(NORMALIZE_MODES)}")
        if train_images_u8.dim() != 4 or train_images_u8.shape[0] == 0:
            raise ValueError(f"train_images_u8 must be a non-empty (N, C, H, W) batch, got "
                             f"{tuple(train_images_u8.shape)}")
        self.mode = mode
        n = train_images_u8.shape[0]
        total, total_sq = _image_stats(train_images_u8)  # exact integers; statistics in float64
        if mode == "seed":
            mean = total.double() / (255.0 * n)
            std = torch.ones(1, 1, 1, dtype=torch.float64)
        else:
            count = n * total[0].numel()
            mean = total.sum((1, 2), keepdim=True).double() / (255.0 * count)
            var = total_sq.sum((1, 2), keepdim=True).double() / (255.0**2 * count) - mean * mean
            std = var.clamp_min(1e-12).sqrt()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        # Full (C, H, W) tensors keep addcmul on its same-shape path instead of broadcasting (3, 1, 1) ones.
        shape = train_images_u8.shape[1:]
        self.register_buffer("scale", (1.0 / (255.0 * std)).expand(shape).float().contiguous())
        self.register_buffer("shift", (-mean / std).expand(shape).float().contiguous())

    def forward(self, images_u8: Tensor) -> Tensor:
        """``(B, C, H, W)`` images (uint8 0..255) → float32 ``(x / 255 - mean) / std``, memory format kept."""
        x = images_u8.to(torch.float32, copy=True)  # a new tensor in the input's memory format
        return torch.addcmul(self.shift, x, self.scale, out=x)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
