"""Batched CIFAR augmentation and normalisation, as pure tensor functions that run on any device.

Augmentation (the standard CIFAR recipe): zero-pad each 32×32 image by ``pad`` pixels to 40×40, crop a
32×32 window at a per-image offset, and flip the crop horizontally with a per-image bit. The random
parameters are *inputs* (``flips``, ``offsets``), so the functions are deterministic and the caller owns
the randomness (see :class:`aacn.data.loader.DeviceLoader`). The whole batch is produced by one
``gather`` with precomputed source indices — no per-image Python loop.

Normalisation modes (:data:`NORMALIZE_MODES`):

* ``"seed"`` — ``x / 255 - mean_image``, where ``mean_image`` is the per-pixel mean (3, 32, 32) of the
  training split (what the replication did);
* ``"standard"`` — per-channel ``(x / 255 - mean_c) / std_c`` with the training split's channel statistics.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

NORMALIZE_MODES = ("seed", "standard")


@functools.lru_cache(maxsize=16)
def _flat_grid(height: int, width: int, pad: int, device: torch.device) -> Tensor:
    """int64 ``(2, height*width)``: flat indices into the padded image of the crop at offset (0, 0),
    unflipped (row 0) and flipped left-right (row 1). Cached: the table is tiny and reused every batch."""
    wp = width + 2 * pad
    i = torch.arange(height, device=device)[:, None] * wp
    j = torch.arange(width, device=device)[None, :]
    return torch.stack([(i + j).reshape(-1), (i + (width - 1) - j).reshape(-1)])


def crop_flip_padded(padded_u8: Tensor, flip_idx: Tensor, shift: Tensor, pad: int = 4) -> Tensor:
    """Crop (and flip) already zero-padded images with one ``gather``; the core of :func:`random_crop_flip`.

    Args:
        padded_u8: ``(B, C, H + 2*pad, W + 2*pad)`` contiguous images.
        flip_idx: int64 ``(B,)``, 1 to flip image ``b`` left-right after cropping, 0 not to.
        shift: int64 ``(B,)``, flat offset ``row * (W + 2*pad) + col`` of the crop's top-left corner.
        pad: the padding already applied.

    Returns:
        ``(B, C, H, W)``; output pixel ``(i, j)`` of image ``b`` is padded pixel ``(row + i, col + jj)`` with
        ``jj = W - 1 - j`` if flipped else ``j``.
    """
    b, c, hp, wp = padded_u8.shape
    h, w = hp - 2 * pad, wp - 2 * pad
    index = _flat_grid(h, w, pad, padded_u8.device).index_select(0, flip_idx).add_(shift[:, None])  # (B, H*W)
    out = padded_u8.reshape(b, c, hp * wp).gather(2, index[:, None, :].expand(b, c, h * w))
    return out.reshape(b, c, h, w)


def random_crop_flip(images_u8: Tensor, flips: Tensor, offsets: Tensor, pad: int = 4) -> Tensor:
    """Zero-pad, crop and horizontally flip a batch in one gather.

    Args:
        images_u8: ``(B, C, H, W)`` images (any dtype, usually uint8), on any device.
        flips: ``(B,)`` bool; flip image ``b`` left-right after cropping where True.
        offsets: ``(B, 2)`` int64 in ``[0, 2*pad]``: (row, col) of the crop's top-left corner in the
            padded image; ``(pad, pad)`` is the identity crop.
        pad: zero padding on each side.

    Returns:
        ``(B, C, H, W)`` tensor of the input dtype.
    """
    b, c, h, w = images_u8.shape
    if flips.shape != (b,) or offsets.shape != (b, 2):
        raise ValueError(f"flips must be ({b},) and offsets ({b}, 2), got {tuple(flips.shape)} and "
                         f"{tuple(offsets.shape)}")
    if b == 0:
        return images_u8.clone()
    device = images_u8.device
    offsets = offsets.to(device, torch.int64)
    shift = offsets[:, 0] * (w + 2 * pad) + offsets[:, 1]
    padded = F.pad(images_u8, (pad, pad, pad, pad))
    return crop_flip_padded(padded, flips.to(device, torch.int64), shift, pad)


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
    ``"standard"``) define ``forward(x) = (x / 255 - mean) / std``, computed as ``x * scale + shift``.
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
        self.register_buffer("scale", (1.0 / (255.0 * std)).float())
        self.register_buffer("shift", (-mean / std).float())

    def forward(self, images_u8: Tensor) -> Tensor:
        """``(B, C, H, W)`` images (uint8 0..255) → float32 ``(x / 255 - mean) / std``, memory format kept."""
        x = images_u8.to(torch.float32, copy=True)  # a new tensor in the input's memory format
        return torch.addcmul(self.shift, x, self.scale, out=x)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
