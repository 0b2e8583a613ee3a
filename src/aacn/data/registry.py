"""The dataset registry: :data:`DATASETS` (a name -> one :class:`Dataset` entry) and :func:`load_data`, the one way
a run's data is loaded (training, ``aacn evaluate``, attention maps, a sweep's checks).

An entry says how to load the dataset and what its images are: the number of classes, the image shape
``(C, H, W)`` and the zero padding of the random-crop augmentation. The run's config takes the classifier's
outputs and the network's input size and channels from its dataset's entry (so a model can be built, e.g. by
``aacn.inference.load_model`` or ``aacn export``, without loading any image), and :func:`load_data` refuses
loaded splits that do not match their entry. The normalisation statistics are not part of an entry: they are
computed from the loaded training split (:class:`aacn.data.normalize.Normalizer`), whatever its image size.

Adding a dataset is one entry::

    DATASETS["svhn"] = Dataset(load_svhn, num_classes=10, image_shape=(3, 32, 32), about="SVHN digits")

where ``load_svhn(data_dir, *, val_size, split_seed, subset, download, progress)`` returns
:class:`aacn.data.splits.Splits` (:func:`aacn.data.splits.split_train_val` and
:func:`~aacn.data.splits.first_images` split and cut the training images the way the CIFAR loader does). The
``--dataset`` choices, the config's check and the error for an unknown name all read :data:`DATASETS`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aacn.data.augment import PAD
from aacn.data.cifar import ARCHIVES, IMAGE_SHAPE, load_cifar
from aacn.data.splits import Splits
from aacn.errors import UserError

__all__ = ["DATASETS", "Dataset", "dataset", "load_data"]


@dataclass(frozen=True)
class Dataset:
    """One registered dataset.

    Attributes:
        load: ``load(data_dir, *, val_size, split_seed, subset, download, progress) -> Splits``; ``data_dir`` may
            be ``None`` (the loader's default location); problems are :class:`~aacn.errors.UserError`.
        num_classes: classes of the labels (the classifier's outputs).
        image_shape: ``(C, H, W)`` of every image; square (``H == W``): the networks take a square input.
        pad: zero padding of the random crop (``H x W`` out of ``(H + 2 pad) x (W + 2 pad)``).
        about: one line naming the dataset.
        images: ``(training, test)`` image counts of the full dataset (before the validation split), for time
            estimates made before it is loaded; ``None`` where unknown.
    """

    load: Callable[..., Splits]
    num_classes: int
    image_shape: tuple[int, int, int]
    pad: int = PAD
    about: str = ""
    images: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        c, h, w = self.image_shape
        if min(c, h, w, self.num_classes) < 1 or h != w or self.pad < 0:
            raise ValueError(f"a dataset needs a square image_shape (C, S, S), num_classes >= 1 and pad >= 0, got "
                             f"image_shape={self.image_shape}, num_classes={self.num_classes}, pad={self.pad}")

    @property
    def channels(self) -> int:
        return self.image_shape[0]

    @property
    def image_size(self) -> int:
        """Side of the square images."""
        return self.image_shape[1]


DATASETS: dict[str, Dataset] = {
    name: Dataset(functools.partial(load_cifar, name), num_classes=spec.num_classes, image_shape=IMAGE_SHAPE,
                  about=f"CIFAR-{spec.num_classes}", images=(50_000, 10_000))
    for name, spec in ARCHIVES.items()
}
"""Every dataset a run can use, by name (``--dataset``)."""


def dataset(name: str) -> Dataset:
    """The entry of ``name``; an unknown name is a UserError naming the registered ones."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


def load_data(config: Any, *, dataset_name: str | None = None, data_dir: str | os.PathLike | None = None,
              use_subset: bool = True, progress: bool | None = None, download: bool = True) -> Splits:
    """The splits of ``config``'s dataset, as ``config`` asks for them.

    ``config`` is a :class:`aacn.config.RunConfig` (read: ``dataset``, ``data_dir``, ``val_size``, ``split_seed``,
    ``subset``, ``progress``). ``dataset_name`` / ``data_dir`` / ``progress``: instead of the config's;
    ``use_subset=False``: the whole training split, ignoring ``subset``.

    Raises:
        UserError: an unknown dataset, what the loader refuses, or splits whose image shape or labels do not
            match the dataset's entry.
    """
    name = dataset_name or config.dataset
    entry = dataset(name)
    data = entry.load(data_dir if data_dir is not None else config.data_dir, val_size=config.val_size,
                      split_seed=config.split_seed, subset=config.subset if use_subset else None, download=download,
                      progress=config.progress if progress is None else progress)
    for part in ("train", "val", "test"):
        split = getattr(data, part)
        if split.image_shape != tuple(entry.image_shape):
            raise UserError(f"the {part} split of {name} holds images of shape {split.image_shape}, but the dataset "
                            f"is registered with image_shape={tuple(entry.image_shape)}; fix its loader or entry")
        if len(split) and not 0 <= int(split.labels.min()) <= int(split.labels.max()) < entry.num_classes:
            raise UserError(f"the {part} split of {name} has labels outside [0, {entry.num_classes - 1}] (its "
                            f"{entry.num_classes} registered classes); fix its loader or entry")
    if data.num_classes != entry.num_classes:
        raise UserError(f"{name} loaded {data.num_classes} class names, but is registered with "
                        f"num_classes={entry.num_classes}; fix its loader or entry")
    return data
