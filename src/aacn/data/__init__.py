"""aacn.data: the dataset registry and its CIFAR-10/100 entries; batched on-device augmentation and loading.

* :mod:`aacn.data.registry` — ``DATASETS`` (name -> how to load it, its classes, image shape and crop padding)
  and ``load_data(config)``, the one way a run's data is loaded,
* :mod:`aacn.data.splits` — ``Split`` and ``Splits``, what every loader returns, and the train/val split,
* :mod:`aacn.data.cifar` — ``load_cifar`` (download + MD5 + safe extraction, validated batch files, 45k/5k/10k
  split, provenance),
* :mod:`aacn.data.integrity` — the official-files check (per-file MD5s, cached) and the split fingerprints,
* :mod:`aacn.data.safe_pickle` — loading the batch pickles without running code,
* :mod:`aacn.data.augment` — ``augment(images, plan)`` (pad, crop, flip; batched, no per-image loop),
* :mod:`aacn.data.normalize` — ``Normalizer`` (uint8 → float32 with the training split's statistics),
* :mod:`aacn.data.loader` — ``DeviceLoader`` (whole split on the device, deterministic per-epoch plans).
"""

from aacn.data.augment import AugmentPlan, PaddedImages, augment
from aacn.data.cifar import load_cifar, resolve_data_dir
from aacn.data.integrity import OFFICIAL_MD5
from aacn.data.loader import DeviceLoader, epoch_plan
from aacn.data.normalize import NORMALIZE_MODES, Normalizer
from aacn.data.registry import DATASETS, Dataset, load_data
from aacn.data.splits import Split, Splits

__all__ = [
    "DATASETS",
    "NORMALIZE_MODES",
    "OFFICIAL_MD5",
    "AugmentPlan",
    "Dataset",
    "DeviceLoader",
    "Normalizer",
    "PaddedImages",
    "Split",
    "Splits",
    "augment",
    "epoch_plan",
    "load_cifar",
    "load_data",
    "resolve_data_dir",
]
