"""aacn.data.integrity through load_cifar: the official/not-official label against an MD5 table, the per-split
fingerprints, and the per-folder MD5 cache (reused, invalidated by a changed file, optional when unwritable)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
from cifar_files import write_cifar10, write_cifar100

from aacn.data import integrity
from aacn.data.cifar import load_cifar

C10_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]


def _md5_table(folder: Path, names: list[str]) -> dict[str, str]:
    return {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in names}


def _counting_md5(monkeypatch) -> list[str]:
    """Replace integrity.file_md5 with one that records the names it hashes."""
    calls: list[str] = []
    real = integrity.file_md5

    def counting(path: Path, chunk: int = 1 << 20) -> str:
        calls.append(Path(path).name)
        return real(path, chunk)

    monkeypatch.setattr(integrity, "file_md5", counting)
    return calls


def test_official_table_matches_torchvisions() -> None:
    assert integrity.OFFICIAL_MD5["cifar10"]["data_batch_1"] == "c99cafc152244af753f735de768cd75f"
    assert integrity.OFFICIAL_MD5["cifar10"]["test_batch"] == "40351d587109b95175f43aff81a1287e"
    assert sorted(integrity.OFFICIAL_MD5["cifar10"]) == sorted(C10_FILES)
    assert integrity.OFFICIAL_MD5["cifar100"] == {"train": "16019d7e3df5f24257cddd939b257f8d",
                                                   "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
                                                   "meta": "7973b15100ade9c7d40fb424638fde48"}


def test_label_official_then_not_official_naming_the_changed_file(tmp_path: Path, monkeypatch) -> None:
    folder = write_cifar10(tmp_path, per_batch=20, test=10)
    monkeypatch.setitem(integrity.OFFICIAL_MD5, "cifar10", _md5_table(folder, C10_FILES))
    data = load_cifar("cifar10", tmp_path, val_size=10, download=False)
    assert data.provenance["label"] == "official" and data.provenance["differing_files"] == []

    # Same size, new content, a different mtime: the cache must not hide the change.
    path = folder / "test_batch"
    batch = pickle.loads(path.read_bytes())
    batch[b"labels"] = [(v + 1) % 10 for v in batch[b"labels"]]
    old = path.stat()
    path.write_bytes(pickle.dumps(batch, protocol=2))
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns + 10**9))
    changed = load_cifar("cifar10", tmp_path, val_size=10, download=False)
    assert changed.provenance["label"] == "not official"
    assert changed.provenance["differing_files"] == ["test_batch"]
    # The real table: tiny test data is not the official data, and every file is named.
    monkeypatch.undo()
    real = load_cifar("cifar10", tmp_path, val_size=10, download=False).provenance
    assert real["label"] == "not official" and real["differing_files"] == sorted(C10_FILES)


def test_cifar100_label_and_fingerprints(tmp_path: Path, monkeypatch) -> None:
    folder = write_cifar100(tmp_path, train=60, test=20)
    monkeypatch.setitem(integrity.OFFICIAL_MD5, "cifar100", _md5_table(folder, ["train", "test", "meta"]))
    data = load_cifar("cifar100", tmp_path, val_size=10, subset=30, download=False)
    prov = data.provenance
    assert prov["label"] == "official" and prov["differing_files"] == []
    assert json.loads(json.dumps(prov)) == prov  # JSON types only
    assert set(prov) == {"label", "differing_files", "fingerprint"} and set(prov["fingerprint"]) == {
        "train", "val", "test"}
    for name in ("train", "val", "test"):  # SHA-256 of the uint8 image bytes, then the int64 label bytes
        split = getattr(data, name)
        expect = hashlib.sha256(split.images.numpy().tobytes() + split.labels.numpy().astype("<i8").tobytes())
        assert prov["fingerprint"][name] == expect.hexdigest()
    assert len(data.train) == 30  # the fingerprint is of the split as trained on (after subset)
    no_val = load_cifar("cifar100", tmp_path, val_size=0, download=False).provenance["fingerprint"]
    assert no_val["val"] == hashlib.sha256(b"").hexdigest()
    assert no_val["train"] != prov["fingerprint"]["train"] and no_val["test"] == prov["fingerprint"]["test"]


def test_md5_cache_is_reused_and_only_changed_files_are_rehashed(tmp_path: Path, monkeypatch) -> None:
    folder = write_cifar10(tmp_path, per_batch=20, test=10)
    calls = _counting_md5(monkeypatch)
    first = load_cifar("cifar10", tmp_path, val_size=10, download=False).provenance
    assert sorted(calls) == sorted(C10_FILES)
    assert (folder / integrity.CACHE_NAME).is_file()
    calls.clear()
    again = load_cifar("cifar10", folder, val_size=10, download=False).provenance  # the folder itself, too
    assert calls == [] and again == first
    st = (folder / "data_batch_2").stat()
    os.utime(folder / "data_batch_2", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_cifar("cifar10", tmp_path, val_size=10, download=False)
    assert calls == ["data_batch_2"]
    calls.clear()  # an edit that puts the old size and modification time back is still seen (ctime)
    path, st = folder / "data_batch_3", (folder / "data_batch_3").stat()
    batch = pickle.loads(path.read_bytes())
    batch[b"data"][0, 0] ^= 1  # one pixel: the same pickle size
    path.write_bytes(pickle.dumps(batch, protocol=2))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    load_cifar("cifar10", tmp_path, val_size=10, download=False)
    assert calls == ["data_batch_3"]
    assert [p.name for p in folder.iterdir() if p.name.startswith(integrity.CACHE_NAME)] == [integrity.CACHE_NAME]


def test_unwritable_or_damaged_cache_only_costs_a_rehash(tmp_path: Path, monkeypatch) -> None:
    folder = write_cifar10(tmp_path, per_batch=20, test=10)
    calls = _counting_md5(monkeypatch)
    real_replace = os.replace

    def read_only(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", read_only)  # the folder cannot take the cache
    first = load_cifar("cifar10", tmp_path, val_size=10, download=False).provenance
    assert not (folder / integrity.CACHE_NAME).exists() and not list(folder.glob(".aacn-md5*"))  # no temp left
    monkeypatch.setattr(os, "replace", real_replace)
    (folder / integrity.CACHE_NAME).write_text("{not json")
    calls.clear()
    assert load_cifar("cifar10", tmp_path, val_size=10, download=False).provenance == first
    assert sorted(calls) == sorted(C10_FILES)  # a damaged cache is ignored, then rewritten
    assert json.loads((folder / integrity.CACHE_NAME).read_text())["version"] == 1
    (folder / integrity.CACHE_NAME).write_text(json.dumps({"version": 1, "files": {"data_batch_1": "x"}}))
    calls.clear()
    load_cifar("cifar10", tmp_path, val_size=10, download=False)
    assert sorted(calls) == sorted(C10_FILES)


def test_fingerprint_tells_the_images_and_labels_apart() -> None:
    import torch

    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    y = torch.tensor([0, 1])
    base = integrity.split_fingerprint(x, y)
    x2 = x.clone()
    x2[1, 2, 31, 31] = 1
    assert integrity.split_fingerprint(x2, y) != base
    assert integrity.split_fingerprint(x, torch.tensor([1, 0])) != base
    assert integrity.split_fingerprint(x, y) == base == integrity.split_fingerprint(x.clone(), y.clone())
    assert np.frombuffer(bytes.fromhex(base), dtype=np.uint8).size == 32
