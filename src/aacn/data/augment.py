"""Batched CIFAR augmentation and normalisation, as pure tensor functions that run on any device.

Augmentation (the standard CIFAR recipe): zero-pad each H×W (32×32) image by ``pad`` pixels to 40×40,
crop an H×W window at a per-image offset, and flip the crop horizontally with a per-image bit. The random
parameters are *inputs* (``flips``, ``offsets``), so the functions are deterministic and the caller owns
the randomness (see :class:`aacn.data.loader.DeviceLoader`).

How it is batched, without a per-image loop: the images are zero-padded once and stored next to their
left-right mirror images (:func:`mirror_pad`). A flipped crop at column ``col`` is then the *unflipped*
crop of the mirror image at column ``2*pad - col``, so every output row is one contiguous run of W bytes
of that source. :func:`crop_origins` turns (image, flip, offsets) into a flat start offset per image and
:func:`take_crops` copies all B·C·H rows at once with a single ``index_select`` on an overlapping strided
view of the source — a row-wise copy, several times faster than a per-pixel ``gather`` on CPU.
:class:`~aacn.data.loader.DeviceLoader` keeps the whole training split in this mirrored, padded form.

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


def mirror_pad(images_u8: Tensor, pad: int = 4) -> Tensor:
    """``(2B, C, H + 2*pad, W + 2*pad)`` contiguous: the zero-padded images, then their left-right mirrors."""
    padded = F.pad(images_u8, (pad, pad, pad, pad))
    return torch.cat([padded, padded.flip(-1)])


def crop_origins(index: Tensor, flips: Tensor, offsets: Tensor, source_shape: torch.Size | tuple[int, ...],
                 pad: int = 4) -> Tensor:
    """Flat offset in a :func:`mirror_pad` source of the top-left pixel of each crop.

    Args:
        index: int64 ``(B,)``, which of the source's ``M = source_shape[0] // 2`` images to crop.
        flips: ``(B,)`` bool/int, flip the crop left-right.
        offsets: int64 ``(B, 2)`` in ``[0, 2*pad]``, (row, col) of the crop in the padded image.
        source_shape: ``(2M, C, Hp, Wp)``.

    Returns:
        int64 ``(B,)``: ``image * C*Hp*Wp + row * Wp + col'`` with ``image = index + M*flip`` and
        ``col' = 2*pad - col`` for flipped crops (the mirror image's equivalent window), else ``col``.
    """
    two_m, c, hp, wp = source_shape
    flips = flips.to(torch.int64)
    col = torch.where(flips.bool(), 2 * pad - offsets[:, 1], offsets[:, 1])
    image = index.to(torch.int64) + flips * (two_m // 2)
    return image * (c * hp * wp) + offsets[:, 0] * wp + col


@functools.lru_cache(maxsize=16)
def _row_starts(channels: int, height: int, hp: int, wp: int, device: torch.device) -> Tensor:
    """int64 ``(C*H,)``: flat offset of row ``i`` of channel ``c`` relative to a crop's origin. Cached."""
    c = torch.arange(channels, device=device)[:, None] * (hp * wp)
    return (c + torch.arange(height, device=device)[None, :] * wp).reshape(-1)


def take_crops(source: Tensor, origins: Tensor, height: int, width: int) -> Tensor:
    """Copy the ``height × width`` windows starting at flat ``origins`` of a contiguous ``(2M, C, Hp, Wp)``
    source: one ``index_select`` of B·C·H rows of ``width`` bytes. Returns ``(B, C, height, width)``."""
    if not source.is_contiguous():
        raise ValueError("take_crops needs a contiguous source (see mirror_pad)")
    _, c, hp, wp = source.shape
    rows = (origins[:, None] + _row_starts(c, height, hp, wp, source.device)).reshape(-1)
    flat = source.reshape(-1)
    windows = flat.as_strided((flat.numel() - width + 1, width), (1, 1))  # every run of `width` elements
    return windows.index_select(0, rows).view(origins.shape[0], c, height, width)


def random_crop_flip(images_u8: Tensor, flips: Tensor, offsets: Tensor, pad: int = 4) -> Tensor:
    """Zero-pad, crop and horizontally flip a batch with batched tensor ops (no per-image loop).

    Args:
        images_u8: ``(B, C, H, W)`` images (any dtype, usually uint8), on any device.
        flips: ``(B,)`` bool; flip image ``b`` left-right after cropping where True.
        offsets: ``(B, 2)`` int64 in ``[0, 2*pad]``: (row, col) of the crop's top-left corner in the
            padded image; ``(pad, pad)`` is the identity crop.
        pad: zero padding on each side.

    Returns:
        ``(B, C, H, W)`` tensor of the input dtype: ``out[b, :, i, j] = padded[b, :, row + i, col + jj]``
        with ``jj = W - 1 - j`` where ``flips[b]``, else ``j``.
    """
    b, c, h, w = images_u8.shape
    if flips.shape != (b,) or offsets.shape != (b, 2):
        raise ValueError(f"flips must be ({b},) and offsets ({b}, 2), got {tuple(flips.shape)} and "
                         f"{tuple(offsets.shape)}")
    if b == 0:
        return images_u8.clone()
    device = images_u8.device
    source = mirror_pad(images_u8, pad)
    index = torch.arange(b, device=device)
    origins = crop_origins(index, flips.to(device), offsets.to(device, torch.int64), source.shape, pad)
    return take_crops(source, origins, h, w)


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
        # Full (C, H, W) tensors: broadcasting (3, 1, 1) ones in addcmul is ~2x slower on CPU.
        shape = train_images_u8.shape[1:]
        self.register_buffer("scale", (1.0 / (255.0 * std)).expand(shape).float().contiguous())
        self.register_buffer("shift", (-mean / std).expand(shape).float().contiguous())

    def forward(self, images_u8: Tensor) -> Tensor:
        """``(B, C, H, W)`` images (uint8 0..255) → float32 ``(x / 255 - mean) / std``, memory format kept."""
        x = images_u8.to(torch.float32, copy=True)  # a new tensor in the input's memory format
        return torch.addcmul(self.shift, x, self.scale, out=x)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
