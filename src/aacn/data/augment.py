"""Batched CIFAR augmentation (random pad-crop and horizontal flip), as pure tensor functions on any device.

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

Normalisation lives in :mod:`aacn.data.normalize` (``Normalizer`` and ``NORMALIZE_MODES`` are re-exported here
for existing imports).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from aacn.data.normalize import NORMALIZE_MODES, Normalizer

__all__ = ["NORMALIZE_MODES", "PAD", "AugmentPlan", "Normalizer", "PaddedImages", "augment"]

PAD = 4  # the default zero padding of the random crop (CIFAR's 32×32 → 40×40); a dataset's entry may set its own


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
