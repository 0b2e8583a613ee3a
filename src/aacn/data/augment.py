"""Batched CIFAR augmentation and normalisation, as pure tensor functions that run on any device.

Augmentation is one function, :func:`augment`: for each image of a batch, zero-pad it by ``pad`` pixels, crop
an H×W window at a per-image offset and mirror the crop left-right where a per-image bit says so. The random
choices are an input (an :class:`AugmentPlan`), so the function is deterministic and the caller owns the
randomness (see :func:`aacn.data.loader.epoch_plan`). Per image it computes exactly::

    padded = F.pad(image, (pad, pad, pad, pad))                  # zeros around
    crop = padded[:, row:row + H, col:col + W]                   # (row, col) = plan.offsets[b]
    out[b] = crop.flip(-1) if plan.flips[b] else crop

To add an augmentation (cutout, colour jitter, ...), transform ``out`` at the end of :func:`augment`, and draw its
random choices with the others in ``epoch_plan``.

How it is batched, without a per-image loop: :class:`PaddedImages` stores the image set zero-padded once, next
to its left-right mirror images. A mirrored crop at column ``col`` is the *unmirrored* crop of the mirror image
at column ``2*pad - col``, so every output row is one contiguous run of W bytes of that store, and the whole
batch is a single ``index_select`` of B·C·H rows on an overlapping strided view of it: a copy of whole rows
instead of a per-pixel ``gather``. :class:`~aacn.data.loader.DeviceLoader` prepares its training split this
way once; :func:`augment` also accepts plain images and prepares the batch itself.

Normalisation modes (:data:`NORMALIZE_MODES`):

* ``"seed"`` — ``x / 255 - mean_image``, where ``mean_image`` is the per-pixel mean (3, 32, 32) of the
  training split (what the replication did);
* ``"standard"`` — per-channel ``(x / 255 - mean_c) / std_c`` with the training split's channel statistics.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

NORMALIZE_MODES = ("seed", "standard")
PAD = 4  # zero padding of the random crop (32×32 → 40×40)


@dataclass(frozen=True)
class AugmentPlan:
    """The random choices of one batch of :func:`augment`.

    Attributes:
        flips: ``(B,)`` bool, or int 0/1: mirror crop ``b`` left-right.
        offsets: int64 ``(B, 2)`` in ``[0, 2*pad]``: (row, col) of crop ``b``'s top-left corner in the padded
            image; ``(pad, pad)`` leaves the image where it was.
        index: int64 ``(B,)``: which images of the set form the batch, in order; ``None``: every image, in order.
        pad: zero padding on each side.
    """

    flips: Tensor
    offsets: Tensor
    index: Tensor | None = None
    pad: int = PAD


class PaddedImages:
    """An image set stored for :func:`augment`: ``data`` is the contiguous ``(2N, C, H + 2*pad, W + 2*pad)``
    stack of the zero-padded images followed by their left-right mirrors (uint8: 3.1× the set's memory)."""

    def __init__(self, images_u8: Tensor, pad: int = PAD) -> None:
        padded = F.pad(images_u8, (pad, pad, pad, pad))
        self.data = torch.cat([padded, padded.flip(-1)])
        self.pad = pad
        self.image_size: tuple[int, int] = tuple(images_u8.shape[-2:])

    def __len__(self) -> int:
        return self.data.shape[0] // 2


def augment(images: Tensor | PaddedImages, plan: AugmentPlan) -> Tensor:
    """The augmented batch: ``images[plan.index]``, each zero-padded, cropped at ``plan.offsets`` and mirrored
    where ``plan.flips`` (see the module docstring for the per-image definition).

    Args:
        images: ``(N, C, H, W)`` images (any dtype, usually uint8) or a :class:`PaddedImages` of them.
        plan: the batch's random choices, on the images' device.

    Returns:
        ``(B, C, H, W)``, contiguous, of the images' dtype.
    """
    b = plan.flips.shape[0]
    if plan.flips.shape != (b,) or plan.offsets.shape != (b, 2) or (
            plan.index is not None and plan.index.shape != (b,)):
        raise ValueError(f"plan.flips must be (B,), plan.offsets (B, 2) and plan.index (B,) or None, got "
                         f"{tuple(plan.flips.shape)}, {tuple(plan.offsets.shape)} and "
                         f"{None if plan.index is None else tuple(plan.index.shape)}")
    if not isinstance(images, PaddedImages):
        if plan.index is not None:
            images = images.index_select(0, plan.index)
        elif images.shape[0] != b:
            raise ValueError(f"a plan without index needs one flip per image: {b} flips for {images.shape[0]}")
        images, plan = PaddedImages(images, plan.pad), AugmentPlan(plan.flips, plan.offsets, None, plan.pad)
    if images.pad != plan.pad:
        raise ValueError(f"images are padded by {images.pad}, the plan by {plan.pad}")
    index = plan.index if plan.index is not None else torch.arange(b, device=images.data.device)
    origins = _crop_origins(images.data.shape, index, plan.flips, plan.offsets, plan.pad)
    out = _take_crops(images.data, origins, *images.image_size)  # pad + crop + flip, as one row copy
    return out


def _crop_origins(source_shape: torch.Size, index: Tensor, flips: Tensor, offsets: Tensor, pad: int) -> Tensor:
    """int64 ``(B,)``: flat offset in a :class:`PaddedImages` store of the top-left pixel of each crop,
    ``image * C*Hp*Wp + row * Wp + col'`` with ``image = index + N*flip`` and ``col' = 2*pad - col`` for
    mirrored crops (the mirror image's equivalent window), else ``col``."""
    two_n, c, hp, wp = source_shape
    flips = flips.to(torch.int64)
    col = torch.where(flips.bool(), 2 * pad - offsets[:, 1], offsets[:, 1])
    image = index.to(torch.int64) + flips * (two_n // 2)
    return image * (c * hp * wp) + offsets[:, 0] * wp + col


@functools.lru_cache(maxsize=16)
def _row_starts(channels: int, height: int, hp: int, wp: int, device: torch.device) -> Tensor:
    """int64 ``(C*H,)``: flat offset of row ``i`` of channel ``c`` relative to a crop's origin. Cached."""
    c = torch.arange(channels, device=device)[:, None] * (hp * wp)
    return (c + torch.arange(height, device=device)[None, :] * wp).reshape(-1)


def _take_crops(source: Tensor, origins: Tensor, height: int, width: int) -> Tensor:
    """The ``height × width`` windows starting at flat ``origins`` of a contiguous ``(2N, C, Hp, Wp)`` source:
    one ``index_select`` of B·C·H rows of ``width`` elements. Returns ``(B, C, height, width)``."""
    _, c, hp, wp = source.shape
    if origins.shape[0] == 0:
        return source.new_empty((0, c, height, width))
    rows = (origins[:, None] + _row_starts(c, height, hp, wp, source.device)).reshape(-1)
    flat = source.view(-1)
    windows = flat.as_strided((flat.numel() - width + 1, width), (1, 1))  # every run of `width` elements
    return windows.index_select(0, rows).view(origins.shape[0], c, height, width)


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
