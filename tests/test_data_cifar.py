"""aacn.data.cifar on tiny archives written here in the official pickle layout (offline, file:// URLs)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from aacn.data import cifar
from aacn.data.cifar import load_cifar, resolve_data_dir
from aacn.data.registry import DATASETS
from aacn.data.splits import Splits
from aacn.errors import UserError

PER_BATCH = 5  # images per CIFAR-10 batch file -> 25 train, 5 test
C10_NAMES = [f"class{i}" for i in range(10)]
C100_NAMES = [f"fine{i}" for i in range(100)]


class _Py2Str(bytes):
    """Bytes that pickle as a Python-2 ``str`` (BINSTRING), as in the official files."""


class _Py2Pickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2str(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + n.to_bytes(4, "little")
        self.write(head + bytes(obj))
        self.memoize(obj)

    dispatch[bytes] = _save_py2str
    dispatch[_Py2Str] = _save_py2str


def _dump(obj: object, path: Path, style: str) -> None:
    """style: 'py2' (official: Python-2 str keys), 'bytes' (py3 bytes keys) or 'str' (py3 str keys)."""
    if style == "str":
        path.write_bytes(pickle.dumps(obj, protocol=2))
        return
    buf = io.BytesIO()
    if style == "py2":
        _Py2Pickler(buf, protocol=2).dump(obj)
    else:
        pickle.dump(obj, buf, protocol=2)
    path.write_bytes(buf.getvalue())


def _key(k: str, style: str) -> str | bytes:
    return k if style == "str" else k.encode()


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def write_cifar10(root: Path, style: str = "py2") -> dict[str, np.ndarray]:
    """root/cifar-10-batches-py with 5 training batches of PER_BATCH images and a test batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    k = lambda s: _key(s, style)  # noqa: E731
    xs, ys = [], []
    for b in range(1, 6):
        x, y = _images(PER_BATCH, b), [(b * 3 + i) % 10 for i in range(PER_BATCH)]
        _dump({k("batch_label"): k(f"training batch {b} of 5"), k("labels"): y, k("data"): x},
              folder / f"data_batch_{b}", style)
        xs.append(x)
        ys += y
    xt, yt = _images(PER_BATCH, 99), [i % 10 for i in range(PER_BATCH)]
    _dump({k("labels"): yt, k("data"): xt}, folder / "test_batch", style)
    _dump({k("label_names"): [k(n) for n in C10_NAMES], k("num_vis"): 3072}, folder / "batches.meta", style)
    (folder / "readme.html").write_text("<html></html>")
    return {"x": np.concatenate(xs), "y": np.array(ys), "xt": xt, "yt": np.array(yt)}


def write_cifar100(root: Path, style: str = "str") -> dict[str, np.ndarray]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    k = lambda s: _key(s, style)  # noqa: E731
    x, y = _images(25, 1), [(7 * i) % 100 for i in range(25)]
    _dump({k("fine_labels"): y, k("coarse_labels"): [v // 5 for v in y], k("data"): x}, folder / "train", style)
    xt, yt = _images(5, 2), [99, 0, 50, 1, 2]
    _dump({k("fine_labels"): yt, k("coarse_labels"): [v // 5 for v in yt], k("data"): xt}, folder / "test", style)
    _dump({k("fine_label_names"): [k(n) for n in C100_NAMES], k("coarse_label_names"): []}, folder / "meta", style)
    return {"x": x, "y": np.array(y), "xt": xt, "yt": np.array(yt)}


def make_archive(src_root: Path, folder: str, out: Path) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        tar.add(src_root / folder, arcname=folder)
    return hashlib.md5(out.read_bytes()).hexdigest()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Builds both archives under tmp/server, points BASE_URL there and sets the MD5 table to theirs."""
    src, srv = tmp_path / "src", tmp_path / "server"
    arrays = {"cifar10": write_cifar10(src), "cifar100": write_cifar100(src)}
    for name in ("cifar10", "cifar100"):
        spec = cifar.ARCHIVES[name]
        md5 = make_archive(src, spec.folder, srv / spec.filename)
        monkeypatch.setitem(cifar.ARCHIVES, name, dataclasses.replace(spec, md5=md5))
    monkeypatch.setattr(cifar, "BASE_URL", srv.as_uri() + "/")
    return srv, arrays


def _check_split(data: Splits, arrays: dict[str, np.ndarray], val_size: int, seed: int) -> None:
    x = torch.from_numpy(arrays["x"]).reshape(-1, 3, 32, 32)
    y = torch.from_numpy(arrays["y"])
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(data.val.images, x[perm[:val_size]]) and torch.equal(data.val.labels, y[perm[:val_size]])
    assert torch.equal(data.train.images, x[perm[val_size:]]) and torch.equal(data.train.labels, y[perm[val_size:]])
    assert torch.equal(data.test.images, torch.from_numpy(arrays["xt"]).reshape(-1, 3, 32, 32))
    assert torch.equal(data.test.labels, torch.from_numpy(arrays["yt"]))
    for s in (data.train, data.val, data.test):
        assert s.images.dtype == torch.uint8 and s.images.is_contiguous() and s.labels.dtype == torch.int64


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_download_verify_extract_then_offline(server, tmp_path: Path, monkeypatch, name: str) -> None:
    _, arrays = server
    data_dir = tmp_path / "data"
    data = load_cifar(name, data_dir, val_size=5, split_seed=3, progress=False)
    spec = cifar.ARCHIVES[name]
    assert (data_dir / spec.filename).is_file() and (data_dir / spec.folder).is_dir()
    assert sorted(p.name for p in data_dir.iterdir()) == sorted([spec.filename, spec.folder])  # no temp files
    assert (len(data.train), len(data.val), len(data.test)) == (20, 5, 5)
    assert data.name == name and data.num_classes == DATASETS[name].num_classes == spec.num_classes
    assert data.classes == (C10_NAMES if name == "cifar10" else C100_NAMES)
    _check_split(data, arrays[name], 5, 3)
    # Second load: no network needed, archive not even needed.
    monkeypatch.setattr(cifar, "BASE_URL", (tmp_path / "nowhere").as_uri() + "/")
    (data_dir / spec.filename).unlink()
    again = load_cifar(name, data_dir, val_size=5, split_seed=3, download=False)
    assert torch.equal(again.train.images, data.train.images) and torch.equal(again.val.labels, data.val.labels)


@pytest.mark.parametrize("how", ["truncated-download", "corrupt-file-in-dir"])
def test_corrupt_archive_rejected_and_removed(server, tmp_path: Path, how: str) -> None:
    srv, _ = server
    spec = cifar.ARCHIVES["cifar10"]
    good = (srv / spec.filename).read_bytes()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if how == "truncated-download":
        (srv / spec.filename).write_bytes(good[: len(good) // 2])
    else:
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0xFF
        (data_dir / spec.filename).write_bytes(bytes(bad))
    with pytest.raises(UserError, match="MD5.*deleted.*re-run.*data_dir"):
        load_cifar("cifar10", data_dir, val_size=5, progress=False)
    assert list(data_dir.iterdir()) == []  # bad file removed, nothing extracted, no temp left


def test_unsafe_archive_member_refused(server, tmp_path: Path, monkeypatch) -> None:
    srv, _ = server
    spec = cifar.ARCHIVES["cifar10"]
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        payload = b"pwned"
        info = tarfile.TarInfo(f"{spec.folder}/../../escaped.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    (srv / spec.filename).write_bytes(evil.read_bytes())
    monkeypatch.setitem(cifar.ARCHIVES, "cifar10",
                        dataclasses.replace(spec, md5=hashlib.md5(evil.read_bytes()).hexdigest()))
    data_dir = tmp_path / "a" / "data"
    with pytest.raises(UserError, match="unsafe"):
        load_cifar("cifar10", data_dir, val_size=5, progress=False)
    assert not (tmp_path / "a" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert not (data_dir / spec.folder).exists()


@pytest.mark.parametrize("style", ["py2", "bytes", "str"])
@pytest.mark.parametrize("point_at_folder", [False, True])
def test_extracted_folder_used_as_is(tmp_path: Path, monkeypatch, style: str, point_at_folder: bool) -> None:
    monkeypatch.setattr(cifar, "BASE_URL", (tmp_path / "nowhere").as_uri() + "/")
    arrays = write_cifar10(tmp_path / "d", style=style)
    data_dir = tmp_path / "d" / "cifar-10-batches-py" if point_at_folder else tmp_path / "d"
    data = load_cifar("cifar10", data_dir, val_size=4, split_seed=1, download=True, progress=False)
    _check_split(data, arrays, 4, 1)
    assert data.classes == C10_NAMES
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["cifar-10-batches-py"]  # nothing downloaded


def test_missing_or_incomplete_data(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cifar, "BASE_URL", (tmp_path / "nowhere").as_uri() + "/")
    empty = tmp_path / "empty"
    with pytest.raises(UserError, match=r"download=False.*empty.*data_batch_1.*batches\.meta"):
        load_cifar("cifar10", empty, download=False)
    with pytest.raises(UserError, match=r"could not download.*train, test, meta"):
        load_cifar("cifar100", empty, progress=False)
    assert not any(empty.iterdir())  # no partial download left
    write_cifar10(tmp_path / "inc")
    (tmp_path / "inc" / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UserError, match="data_batch_3"):
        load_cifar("cifar10", tmp_path / "inc", download=False)


def test_damaged_pickle_is_user_error(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(UserError, match="cannot read .*test_batch"):
        load_cifar("cifar10", tmp_path, val_size=5, download=False)


def test_split_determinism_val_size_and_subset(tmp_path: Path) -> None:
    arrays = write_cifar10(tmp_path)
    load = lambda **kw: load_cifar("cifar10", tmp_path, download=False, **kw)  # noqa: E731
    a, b, c = load(val_size=5), load(val_size=5), load(val_size=5, split_seed=1)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    assert not torch.equal(a.val.images, c.val.images)
    _check_split(c, arrays, 5, 1)
    none = load(val_size=0)
    assert len(none.val) == 0 and len(none.train) == 25 and none.val.images.shape == (0, 3, 32, 32)
    sub = load(val_size=5, subset=7)
    assert len(sub.train) == 7 and torch.equal(sub.train.images, a.train.images[:7])
    assert torch.equal(sub.val.images, a.val.images) and len(sub.test) == 5
    for bad in (0, -1, 21):
        with pytest.raises(UserError, match=f"subset={bad}") as info:
            load(val_size=5, subset=bad)
        assert "--" not in str(info.value)  # a library error names the argument; the CLI maps it to its flag
    for bad in (-1, 25):
        with pytest.raises(UserError, match=f"val_size={bad}") as info:
            load(val_size=bad)
        assert "--" not in str(info.value)
    with pytest.raises(UserError, match="unknown dataset 'cifar1000'.*cifar10, cifar100"):
        load_cifar("cifar1000", tmp_path)


def test_resolve_data_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AACN_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("AACN_DATA")
    assert resolve_data_dir(None) == tmp_path / "xdg" / "aacn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir(None) == tmp_path / "home" / ".cache" / "aacn"


def test_an_unreadable_archive_is_named_and_kept(server, tmp_path: Path, monkeypatch) -> None:
    srv, _ = server
    spec = cifar.ARCHIVES["cifar10"]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    archive = data_dir / spec.filename
    archive.write_bytes((srv / spec.filename).read_bytes())

    def denied(path, chunk=1 << 20):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cifar, "file_md5", denied)
    with pytest.raises(UserError, match=r"cannot read .*cifar-10-python.tar.gz: permission denied") as info:
        load_cifar("cifar10", data_dir, val_size=5, progress=False)
    assert archive.is_file() and "delete" not in str(info.value)
