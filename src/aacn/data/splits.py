"""What every dataset loader returns: :class:`Split` (uint8 images and int64 labels) and :class:`Splits` (a
dataset's train / val / test splits, class names and provenance), with the train/val split and the training
subset that every loader applies the same way.

Images stay uint8 ``(N, C, H, W)`` on the CPU, whatever their size; normalisation and augmentation happen later,
batched on the training device (:mod:`aacn.data.normalize`, :mod:`aacn.data.augment`, :mod:`aacn.data.loader`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aacn.errors import UserError


@dataclass(frozen=True)
class Split:
    """One part of a dataset: ``images`` uint8 ``(N, C, H, W)`` (CPU), ``labels`` int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"Split.images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"Split.labels must be int64 ({self.images.shape[0]},), got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])


@dataclass(frozen=True)
class Splits:
    """A loaded dataset: its name, class names, the three splits and their provenance.

    ``provenance`` (JSON types only): ``{"label": "official" | "not official", "differing_files": [names of the
    folder's files whose checksum is not the published one], "fingerprint": {"train" | "val" | "test": SHA-256
    hex of the split's uint8 images then int64 labels}}`` (see :mod:`aacn.data.integrity`).
    """

    name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    provenance: dict

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the dataset's images."""
        return self.train.image_shape


def split_train_val(full: Split, val_size: int, split_seed: int) -> tuple[Split, Split]:
    """Split ``full`` by a permutation from ``torch.Generator().manual_seed(split_seed)``:
    the first ``val_size`` permuted indices form ``val``, the rest ``train`` (both in permuted order)."""
    n = len(full)
    if not 0 <= val_size < n:
        raise UserError(f"val_size={val_size} must be in [0, {n}) for a training set of {n} images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    take = lambda idx: Split(full.images[idx].contiguous(), full.labels[idx].contiguous())  # noqa: E731
    return take(train_idx), take(val_idx)


def first_images(train: Split, subset: int | None, name: str, val_size: int) -> Split:
    """The first ``subset`` images of ``train`` (all of them for ``None``); a subset out of range is a
    UserError naming the split's size."""
    if subset is None:
        return train
    if not 0 < subset <= len(train):
        raise UserError(f"subset={subset} must be in [1, {len(train)}]: the train split of {name} holds "
                        f"{len(train)} images once val_size={val_size} are held out")
    return Split(train.images[:subset].contiguous(), train.labels[:subset].contiguous())
