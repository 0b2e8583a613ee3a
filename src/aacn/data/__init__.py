"""aacn.data: CIFAR-10/100 download, verification and split; batched on-device augmentation and loading.

* :mod:`aacn.data.cifar` — ``load_cifar`` (download + MD5 + safe extraction, 45k/5k/10k split),
* :mod:`aacn.data.augment` — ``random_crop_flip`` (batched, no per-image loop) and ``Normalizer``,
* :mod:`aacn.data.loader` — ``DeviceLoader`` (whole split on the device, deterministic per-epoch plans).
"""

from aacn.data.augment import NORMALIZE_MODES, Normalizer, random_crop_flip
from aacn.data.cifar import NUM_CLASSES, CifarData, Split, load_cifar, resolve_data_dir
from aacn.data.loader import DeviceLoader

__all__ = [
    "NUM_CLASSES",
    "NORMALIZE_MODES",
    "CifarData",
    "DeviceLoader",
    "Normalizer",
    "Split",
    "load_cifar",
    "random_crop_flip",
    "resolve_data_dir",
]
