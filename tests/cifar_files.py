"""Tiny CIFAR-format data for tests, written in the official python layout (pickled batches).

The images are learnable: each class has its own mean image (random colours in 8x8-pixel blocks), and every
sample is that mean plus noise, so a few epochs of a tiny network visibly lower the loss.
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np


def _images(labels: np.ndarray, num_classes: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    blocks = np.random.default_rng(1234).uniform(40, 215, size=(num_classes, 3, 4, 4))
    means = np.kron(blocks, np.ones((1, 1, 8, 8))).reshape(num_classes, 3072)  # smooth 8x8-pixel blocks
    x = means[labels] + rng.normal(0, noise, size=(len(labels), 3072))
    return np.clip(x, 0, 255).astype(np.uint8)


def write_cifar10(root: Path, *, per_batch: int = 100, test: int = 200, seed: int = 0,
                  noise: float = 40.0) -> Path:
    """``root/cifar-10-batches-py`` with 5 training batches of ``per_batch`` images and a test batch."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for i, count in [(f"data_batch_{k}", per_batch) for k in range(1, 6)] + [("test_batch", test)]:
        labels = rng.integers(0, 10, size=count)
        batch = {b"batch_label": i.encode(), b"labels": labels.tolist(),
                 b"data": _images(labels, 10, rng, noise), b"filenames": [b"x.png"] * count}
        (folder / i).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [n.encode() for n in names], b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_cifar100(root: Path, *, train: int = 500, test: int = 200, seed: int = 0, noise: float = 40.0) -> Path:
    """``root/cifar-100-python`` with ``train`` and ``test`` images (fine and coarse labels)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", train), ("test", test)):
        fine = rng.integers(0, 100, size=count)
        batch = {b"batch_label": name.encode(), b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist(),
                 b"data": _images(fine, 100, rng, noise), b"filenames": [b"x.png"] * count}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"fine_label_names": [f"class{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def tar_folder(folder: Path, archive: Path) -> Path:
    """Pack ``folder`` as the official archives are packed (the folder at the archive's top level)."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive
