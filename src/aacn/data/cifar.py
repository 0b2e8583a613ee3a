"""CIFAR-10 / CIFAR-100: download, MD5 verification, safe extraction, loading and the train/val/test split.

The official python archives (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``) are downloaded once
into a data directory (``data_dir``, else ``$AACN_DATA``, else a per-user cache), verified against the
official MD5 *before* extraction and extracted without letting any member escape the directory. A directory
that already holds the extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``) is used as is.

Loading never trusts the files: they are unpickled without running code (:mod:`aacn.data.safe_pickle`), and
every batch file is validated (uint8 images of 3,072 values, at least one per file, one integer label in range
per image) before anything trains on it; each problem is a :class:`~aacn.errors.UserError` naming the file.
Each loaded dataset carries its provenance: whether every file matches the official per-file MD5s, and a
SHA-256 fingerprint of each split (:mod:`aacn.data.integrity`).

The official 50,000 training images are split by a fixed-seed permutation into ``train`` (45,000) and
``val`` (5,000 by default); ``test`` is the official 10,000-image test set (:mod:`aacn.data.splits`). Images
are kept as uint8 ``(N, 3, 32, 32)`` tensors; normalisation and augmentation happen later, batched on the training
device (see :mod:`aacn.data.augment` and :mod:`aacn.data.loader`). Runs reach this module through the dataset
registry (:mod:`aacn.data.registry`), which holds one entry per CIFAR variant.
"""

from __future__ import annotations

import math
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from tqdm import tqdm

from aacn.data import integrity
from aacn.data.integrity import file_md5
from aacn.data.safe_pickle import load_pickle
from aacn.data.splits import Split, Splits, first_images, split_train_val
from aacn.errors import UserError

BASE_URL = "https://www.cs.toronto.edu/~kriz/"
IMAGE_SHAPE = (3, 32, 32)  # every CIFAR image: (channels, height, width), stored as 3,072 bytes


@dataclass(frozen=True)
class ArchiveSpec:
    """Where a dataset comes from and what its extracted folder must hold."""

    filename: str  # archive name under BASE_URL
    md5: str  # official checksum of the archive
    folder: str  # top-level folder inside the archive
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str  # "labels" (CIFAR-10) or "fine_labels" (CIFAR-100)
    names_key: str  # class-name list in the meta file
    num_classes: int

    @property
    def expected_files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)


ARCHIVES: dict[str, ArchiveSpec] = {
    "cifar10": ArchiveSpec(
        filename="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
    ),
    "cifar100": ArchiveSpec(
        filename="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
    ),
}


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$AACN_DATA``, else ``$XDG_CACHE_HOME/aacn``
    (``~/.cache/aacn`` when unset). The directory is not created here."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get("AACN_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "aacn"


# ----------------------------------------------------------------------------------------------- files


def _is_complete(folder: Path, spec: ArchiveSpec) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in spec.expected_files)


def find_extracted(data_dir: Path, spec: ArchiveSpec) -> Path | None:
    """The extracted folder if ``data_dir`` is it or contains it with all expected files, else None."""
    for cand in (data_dir, data_dir / spec.folder):
        if _is_complete(cand, spec):
            return cand
    return None


def download_file(url: str, dest: Path, *, progress: bool = True) -> None:
    """Download ``url`` to ``dest`` via a temporary file in the same directory, renamed on success.

    Raises ``OSError`` (incl. ``urllib.error.URLError``) on network or disk failures; no partial file remains.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            total = resp.headers.get("Content-Length")
            with tqdm(total=int(total) if total else None, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"download {dest.name}", disable=not progress, leave=False) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _safe_members(tar: tarfile.TarFile, archive: Path, folder: str) -> list[tarfile.TarInfo]:
    """Members to extract; refuses absolute paths, ``..``, links/devices and anything outside ``folder/``."""
    members = []
    for m in tar.getmembers():
        p = PurePosixPath(m.name)
        if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()) or p.parts[:1] != (folder,):
            raise UserError(f"archive {archive} has an unsafe or unexpected member {m.name!r} "
                            f"(only regular files under {folder}/ are allowed); nothing was extracted — "
                            f"delete it and re-run to download the official archive")
        members.append(m)
    return members


def extract_archive(archive: Path, data_dir: Path, spec: ArchiveSpec) -> Path:
    """Safely extract ``archive`` into ``data_dir``; returns the extracted folder.

    Members are first extracted into a temporary directory inside ``data_dir``; only when every expected
    file is present are they moved into ``data_dir/spec.folder``, so a failed extraction leaves nothing
    that looks valid.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=data_dir))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = _safe_members(tar, archive, spec.folder)
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(tmp, members=members, **kwargs)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise UserError(f"archive {archive} is corrupt or truncated ({type(e).__name__}: {e}); "
                            f"delete it and re-run to download it again") from None
        src = tmp / spec.folder
        if not _is_complete(src, spec):
            raise UserError(f"archive {archive} does not hold {spec.folder}/ with "
                            f"{', '.join(spec.expected_files)}; delete it and re-run to download the "
                            f"official archive")
        dst = data_dir / spec.folder
        dst.mkdir(exist_ok=True)
        for item in src.iterdir():  # replace file by file: never deletes anything else in dst
            if item.is_file():
                os.replace(item, dst / item.name)
        return dst
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _missing_error(data_dir: Path, spec: ArchiveSpec, reason: str) -> UserError:
    return UserError(f"{reason}: {data_dir} holds neither {spec.folder}/ with "
                     f"{', '.join(spec.expected_files)} nor a valid {spec.filename}; put the extracted "
                     f"{spec.folder} (or {spec.filename} from {BASE_URL}) there, or point data_dir at it")


def prepare(name: str, data_dir: Path, *, download: bool = True, progress: bool = True) -> Path:
    """Make sure the extracted folder for ``name`` exists under ``data_dir``; returns its path.

    Order: an already extracted folder (``data_dir`` itself or ``data_dir/<folder>``), else the archive in
    ``data_dir`` (downloaded first if missing and ``download``), MD5-verified, then extracted.
    """
    spec = ARCHIVES[name]
    found = find_extracted(data_dir, spec)
    if found is not None:
        return found
    archive = data_dir / spec.filename
    if not archive.is_file():
        if not download:
            raise _missing_error(data_dir, spec, f"{name} not found and download=False")
        url = BASE_URL + spec.filename
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            download_file(url, archive, progress=progress)
        except OSError as e:  # URLError is an OSError; so are a full disk and a read-only dir
            raise _missing_error(data_dir, spec, f"could not download {url} ({e})") from None
    try:
        digest = file_md5(archive)
    except OSError as e:
        raise integrity.read_error(archive, e) from None
    if digest != spec.md5:
        archive.unlink(missing_ok=True)
        raise UserError(f"{archive} has MD5 {digest}, expected {spec.md5} (truncated or corrupt download); "
                        f"the bad file was deleted — re-run to download it again, or point data_dir at a "
                        f"folder holding the extracted {spec.folder}")
    try:
        return extract_archive(archive, data_dir, spec)
    except OSError as e:  # e.g. a read-only directory or a full disk while moving the files into place
        raise UserError(f"cannot extract {archive} into {data_dir} ({e}); free some space or choose a writable "
                        f"data_dir") from None


# ----------------------------------------------------------------------------------------------- loading


def _text(x: object) -> object:
    return x.decode("latin1") if isinstance(x, bytes) else x


def _replace_hint(spec: ArchiveSpec) -> str:
    return f"replace it with the file from the official {spec.filename}"


def _read_dict(path: Path, spec: ArchiveSpec) -> dict[str, object]:
    """A CIFAR pickle (Python-2 or Python-3 style, loaded without running code); keys come back as ``str``."""
    obj = load_pickle(path)
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a CIFAR batch (it holds a {type(obj).__name__}, not a dict); "
                        f"{_replace_hint(spec)}")
    return {_text(k): v for k, v in obj.items()}


def _batch_images(path: Path, data: object, spec: ArchiveSpec) -> np.ndarray:
    """``data`` checked and returned as uint8 ``(n, 3072)`` with ``n >= 1``; integer arrays with all values in
    0..255 are converted losslessly, anything else is a UserError naming ``path``."""
    x = np.asarray(data) if isinstance(data, np.ndarray) else None
    if x is None or x.ndim != 2 or x.shape[1] != math.prod(IMAGE_SHAPE):
        what = f"an array of shape {x.shape}" if x is not None else f"a {type(data).__name__}"
        raise UserError(f"{path}: 'data' is {what}, expected uint8 images as an array of shape (n, 3072); "
                        f"{_replace_hint(spec)}")
    if x.shape[0] == 0:
        raise UserError(f"{path} holds no images ('data' has 0 rows); {_replace_hint(spec)}")
    if x.dtype != np.uint8:
        if x.dtype.kind not in "iu":
            raise UserError(f"{path}: 'data' holds {x.dtype} values, expected uint8 pixels (0..255); "
                            f"{_replace_hint(spec)}")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise UserError(f"{path}: 'data' holds values in [{lo}, {hi}], expected uint8 pixels (0..255); "
                            f"{_replace_hint(spec)}")
        x = x.astype(np.uint8)
    return x


def _batch_labels(path: Path, labels: object, n: int, spec: ArchiveSpec, num_classes: int) -> np.ndarray:
    """``labels`` checked and returned as int64 ``(n,)``: integers in ``[0, num_classes)``, one per image."""
    try:
        y = np.asarray(labels)
    except (ValueError, OverflowError, TypeError) as e:
        raise UserError(f"{path}: {spec.label_key!r} is not a list of integers ({e}); {_replace_hint(spec)}") \
            from None
    if y.ndim != 1 or y.shape[0] != n:
        raise UserError(f"{path} holds {n} images but {spec.label_key!r} has shape {y.shape}; expected one label "
                        f"per image; {_replace_hint(spec)}")
    if y.dtype.kind not in "iu":
        raise UserError(f"{path}: {spec.label_key!r} holds {y.dtype} values, expected integer class indices; "
                        f"{_replace_hint(spec)}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise UserError(f"{path} has labels in [{lo}, {hi}], outside the {num_classes} classes "
                        f"[0, {num_classes - 1}]; {_replace_hint(spec)}")
    return y.astype(np.int64)


def _read_batches(folder: Path, files: tuple[str, ...], spec: ArchiveSpec, num_classes: int) -> Split:
    """The images and labels of ``files``, each file validated (see :func:`_batch_images`, :func:`_batch_labels`)."""
    images, labels = [], []
    for fname in files:
        path = folder / fname
        d = _read_dict(path, spec)
        missing = [k for k in ("data", spec.label_key) if k not in d]
        if missing:
            raise UserError(f"{path} is not a CIFAR batch: it lacks {' and '.join(map(repr, missing))}; "
                            f"{_replace_hint(spec)}")
        x = _batch_images(path, d["data"], spec)
        images.append(x)
        labels.append(_batch_labels(path, d[spec.label_key], x.shape[0], spec, num_classes))
    x = np.concatenate(images).reshape(-1, *IMAGE_SHAPE)
    return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.concatenate(labels)))


def _read_classes(folder: Path, spec: ArchiveSpec, num_classes: int) -> list[str]:
    path = folder / spec.meta_file
    names = _read_dict(path, spec).get(spec.names_key)
    if not isinstance(names, (list, tuple)) or len(names) != num_classes \
            or not all(isinstance(n, (str, bytes)) for n in names):
        raise UserError(f"{path} has no list {spec.names_key!r} of {num_classes} class names; "
                        f"{_replace_hint(spec)}")
    return [str(_text(n)) for n in names]


def load_cifar(name: str, data_dir: str | os.PathLike | None = None, *, val_size: int = 5000,
               split_seed: int = 0, subset: int | None = None, download: bool = True,
               progress: bool = True) -> Splits:
    """Load CIFAR-10 or CIFAR-100 (fine labels) as uint8 tensors, split into train/val/test.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        data_dir: directory holding (or to receive) the data; see :func:`resolve_data_dir`. May also point
            directly at the extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder.
        val_size: images held out of the official training set for validation (0 allowed).
        split_seed: seed of the train/val permutation.
        subset: keep only the first ``subset`` images of the train split (after the split).
        download: allow downloading the official archive when nothing usable is found.
        progress: show a download progress bar.

    Raises:
        UserError: naming the argument or the file that is wrong, and how to fix it.
    """
    if name not in ARCHIVES:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(ARCHIVES)}")
    spec = ARCHIVES[name]
    num_classes = spec.num_classes
    folder = prepare(name, resolve_data_dir(data_dir), download=download, progress=progress)
    full = _read_batches(folder, spec.train_files, spec, num_classes)
    test = _read_batches(folder, spec.test_files, spec, num_classes)
    classes = _read_classes(folder, spec, num_classes)
    train, val = split_train_val(full, val_size, split_seed)
    train = first_images(train, subset, name, val_size)
    splits = {s: (part.images, part.labels) for s, part in (("train", train), ("val", val), ("test", test))}
    prov = integrity.provenance(folder, integrity.OFFICIAL_MD5[name], splits)
    return Splits(name=name, classes=classes, train=train, val=val, test=test, provenance=prov)
