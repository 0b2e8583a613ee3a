"""Where loaded data came from: the official-files check and the fingerprints of the loaded splits.

:func:`differing_files` compares every file of an extracted CIFAR folder with the official per-file MD5s (the
table torchvision's integrity check uses, :data:`OFFICIAL_MD5`). Hashing the ~180 MB of a CIFAR folder is done
once: each file's MD5 is cached in ``.aacn-md5.json`` inside the folder, keyed by the file's name, size,
``mtime_ns`` and ``ctime_ns``, and reused while all of them match. The status-change time cannot be set back, so
even an edit that restores the modification time is seen; a ``chmod`` or a move just costs one re-hash. The cache
is written atomically; a folder that cannot be written (read-only data) just means the hashes are recomputed next
time. A cache file that is unreadable or malformed is ignored. Trust boundary: the cache is believed as it is, so
it guards against honest changes, not against someone who can write the folder (they can write a matching
entry too); deleting ``.aacn-md5.json`` makes the next load hash every file from scratch.

:func:`split_fingerprint` is the SHA-256 of a split's uint8 image bytes followed by its int64 (little-endian)
label bytes: equal fingerprints mean the very same images, labels and order were trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aacn.errors import UserError
from aacn.files import atomic_write

# Official per-file MD5s of the extracted archives (the table of torchvision.datasets.CIFAR10 / CIFAR100).
OFFICIAL_MD5: dict[str, dict[str, str]] = {
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    "cifar100": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
}
OFFICIAL, NOT_OFFICIAL = "official", "not official"
CACHE_NAME = ".aacn-md5.json"
_CACHE_VERSION = 1


def read_error(path: Path, exc: OSError) -> UserError:
    """The one-line error for a data file that cannot be read: which file, and what is wrong with it."""
    if isinstance(exc, PermissionError):
        return UserError(f"cannot read {path}: permission denied; give your user read access to it (e.g. chmod u+r)")
    return UserError(f"cannot read {path}: {exc.strerror or exc}")


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION or not isinstance(data.get("files"), dict):
        return {}
    return {k: v for k, v in data["files"].items() if isinstance(v, dict)}


def _write_cache(path: Path, files: dict[str, dict[str, Any]]) -> None:
    """Atomically replace ``path``; silently does nothing where the folder is not writable."""
    text = json.dumps({"version": _CACHE_VERSION, "files": files}, indent=1, sort_keys=True)
    try:
        atomic_write(path, lambda fh: fh.write(text))
    except UserError:
        pass  # a cache we cannot write only means hashing again next time


def cached_md5s(folder: Path, names: list[str] | tuple[str, ...]) -> dict[str, str]:
    """MD5 of each file ``folder/name``, from the folder's cache where the file's size and times are unchanged.

    Raises :class:`UserError` naming the file when one cannot be read.
    """
    cache_path = folder / CACHE_NAME
    cache = _read_cache(cache_path)
    result, changed = {}, False
    for name in names:
        path = folder / name
        try:
            st = path.stat()
            entry = cache.get(name)
            key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}
            if entry and all(entry.get(k) == v for k, v in key.items()) and isinstance(entry.get("md5"), str):
                result[name] = entry["md5"]
                continue
            result[name] = file_md5(path)
        except OSError as e:
            raise read_error(path, e) from None
        cache[name] = {**key, "md5": result[name]}
        changed = True
    if changed:
        _write_cache(cache_path, cache)
    return result


def differing_files(folder: Path, expected: Mapping[str, str]) -> list[str]:
    """Names (sorted) of the files in ``expected`` whose MD5 in ``folder`` differs from ``expected[name]``."""
    names = sorted(expected)
    actual = cached_md5s(folder, names)
    return [n for n in names if actual[n] != expected[n]]


def split_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 (hex) of ``images`` as uint8 bytes, then ``labels`` as int64 little-endian bytes."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images.cpu().numpy(), dtype=np.uint8).data)
    h.update(np.ascontiguousarray(labels.cpu().numpy(), dtype="<i8").data)
    return h.hexdigest()


def provenance(folder: Path, expected: Mapping[str, str], splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
               ) -> dict[str, Any]:
    """``{"label": "official" | "not official", "differing_files": [...], "fingerprint": {split: sha256}}``.

    ``expected`` maps file names in ``folder`` to their official MD5; ``splits`` maps a split's name to its
    ``(images, labels)``. The dict holds only JSON types.
    """
    differ = differing_files(folder, expected)
    return {
        "label": NOT_OFFICIAL if differ else OFFICIAL,
        "differing_files": differ,
        "fingerprint": {name: split_fingerprint(x, y) for name, (x, y) in splits.items()},
    }
