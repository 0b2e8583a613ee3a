"""Data files are validated, not trusted: a crafted pickle never runs code, and every malformed batch file is a
UserError naming the file and what is wrong (one line and exit 2 through the CLI)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_files import write_cifar10, write_cifar100

from aacn.cli import main
from aacn.data import safe_pickle
from aacn.data.cifar import load_cifar
from aacn.errors import UserError


class _Call:
    """Pickles as a call of ``func(*args)``: what a crafted data file would do."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _rewrite(path: Path, change) -> None:
    """Load the pickled dict at ``path`` (plain pickle: the test wrote it), apply ``change`` and write it back."""
    batch = pickle.loads(path.read_bytes())
    change(batch)
    path.write_bytes(pickle.dumps(batch, protocol=2))


def _train_argv(data: Path, out: Path) -> list[str]:
    return ["train", "--model", "wrn-10-1", "--base-width", "4", "--epochs", "1", "--subset", "40", "--val-size",
            "10", "--batch-size", "20", "--data-dir", str(data), "--out", str(out), "--device", "cpu",
            "--no-progress"]


@pytest.mark.parametrize("where", ["batches.meta", "data_batch_1"])
@pytest.mark.parametrize("call", ["open", "exec", "os.system"])
def test_a_crafted_pickle_never_runs(tmp_path: Path, where: str, call: str) -> None:
    folder = write_cifar10(tmp_path, per_batch=10, test=10)
    target = tmp_path / "pwned"
    payload = {"open": _Call(open, str(target), "w"),
               "exec": _Call(exec, f"open({str(target)!r}, 'w').close()"),
               "os.system": _Call(os.system, f"touch {target}")}[call]
    _rewrite(folder / where, lambda d: d.__setitem__(b"extra", payload))
    with pytest.raises(UserError, match=rf"refusing to load .*{where}: it asks to call \S*(open|exec|system)"):
        load_cifar("cifar10", tmp_path, val_size=5, download=False)
    assert not target.exists()


def test_a_crafted_pickle_is_one_line_and_exit_2_in_the_cli(tmp_path: Path, capsys) -> None:
    folder = write_cifar10(tmp_path / "data", per_batch=10, test=10)
    target = tmp_path / "pwned"
    _rewrite(folder / "batches.meta", lambda d: d.__setitem__(b"x", _Call(open, str(target), "w")))
    assert main(_train_argv(tmp_path / "data", tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "batches.meta" in err and "refusing to load" in err, err
    assert not target.exists() and not (tmp_path / "run" / "results.json").exists()


def test_the_allowed_globals_still_load_numpy_and_bytes() -> None:
    obj = {b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), "n": np.int64(3), "s": {1, 2}, "b": bytearray(b"x"),
           "t": (1.5, 2j, True, frozenset([3]))}
    for protocol in (2, 4, 5):
        back = safe_pickle.loads_restricted(pickle.dumps(obj, protocol=protocol))
        assert back.keys() == obj.keys() and np.array_equal(back[b"data"], obj[b"data"])
        assert back[b"data"].dtype == np.uint8 and back["n"] == 3 and back["s"] == {1, 2} and back["t"] == obj["t"]
    with pytest.raises(safe_pickle.ForbiddenGlobal, match="numpy.load"):
        safe_pickle.loads_restricted(pickle.dumps(_Call(np.load, "x.npy"), protocol=2))
    codec = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x06\x00\x00\x00rot_13\x86R."
    with pytest.raises(pickle.UnpicklingError, match="only latin1"):
        safe_pickle.loads_restricted(codec)


def _empty(d: dict) -> None:
    d[b"data"], d[b"labels"] = np.zeros((0, 3072), np.uint8), []


BAD_BATCHES = [  # (file, change, message)
    ("data_batch_2", _empty, r"data_batch_2 holds no images"),
    ("test_batch", _empty, r"test_batch holds no images"),
    ("data_batch_1", lambda d: d.__setitem__(b"data", d[b"data"].astype(np.float32)),
     r"data_batch_1: 'data' holds float32 values, expected uint8"),
    ("data_batch_3", lambda d: d.__setitem__(b"data", d[b"data"].astype(np.int64) + 200),
     r"data_batch_3: 'data' holds values in \[\d+, \d+\], expected uint8"),
    ("data_batch_4", lambda d: d.__setitem__(b"data", d[b"data"][:, :3071]),
     r"data_batch_4: 'data' is an array of shape \(10, 3071\), expected .*\(n, 3072\)"),
    ("data_batch_5", lambda d: d.__setitem__(b"data", d[b"data"].tolist()),
     r"data_batch_5: 'data' is a list, expected"),
    ("data_batch_1", lambda d: d.__setitem__(b"labels", [float(v) + 0.5 for v in d[b"labels"]]),
     r"data_batch_1: 'labels' holds float64 values, expected integer class indices"),
    ("test_batch", lambda d: d.__setitem__(b"labels", [10] * len(d[b"labels"])),
     r"test_batch has labels in \[10, 10\], outside the 10 classes"),
    ("data_batch_2", lambda d: d.__setitem__(b"labels", [-1] + d[b"labels"][1:]),
     r"data_batch_2 has labels in \[-1, \d\]"),
    ("data_batch_3", lambda d: d.__setitem__(b"labels", d[b"labels"][:-1]),
     r"data_batch_3 holds 10 images but 'labels' has shape \(9,\); expected one label per image"),
    ("data_batch_3", lambda d: d.__setitem__(b"labels", ["cat"] * 10),
     r"data_batch_3: 'labels' holds <U3 values"),
    ("data_batch_5", lambda d: d.pop(b"labels"), r"data_batch_5 is not a CIFAR batch: it lacks 'labels'"),
    ("batches.meta", lambda d: d.__setitem__(b"label_names", [b"a"] * 3), r"batches.meta has no list 'label_names'"),
]


@pytest.mark.parametrize(("fname", "change", "message"), BAD_BATCHES,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_BATCHES)])
def test_every_malformed_batch_is_refused_naming_the_file(tmp_path: Path, fname: str, change, message: str) -> None:
    folder = write_cifar10(tmp_path, per_batch=10, test=10)
    _rewrite(folder / fname, change)
    with pytest.raises(UserError, match=message):
        load_cifar("cifar10", tmp_path, val_size=5, download=False)


def test_not_a_dict_and_an_empty_test_set_in_the_cli(tmp_path: Path, capsys) -> None:
    folder = write_cifar100(tmp_path / "c100", train=50, test=10)
    (folder / "train").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(UserError, match=r"train is not a CIFAR batch \(it holds a list, not a dict\)"):
        load_cifar("cifar100", tmp_path / "c100", download=False)
    folder = write_cifar10(tmp_path / "c10", per_batch=10, test=10)
    _rewrite(folder / "test_batch", _empty)
    assert main(_train_argv(tmp_path / "c10", tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "test_batch holds no images" in err, err
    assert not (tmp_path / "run" / "results.json").exists()


def test_integer_pixels_that_fit_uint8_load_unchanged(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, per_batch=10, test=10)
    before = load_cifar("cifar10", tmp_path, val_size=5, download=False)
    for name in ("data_batch_1", "test_batch"):
        _rewrite(folder / name, lambda d: d.__setitem__(b"data", d[b"data"].astype(np.int64)))
    _rewrite(folder / "data_batch_2", lambda d: d.__setitem__(b"labels", np.asarray(d[b"labels"], np.uint8)))
    after = load_cifar("cifar10", tmp_path, val_size=5, download=False)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(after, split).images, getattr(before, split).images)
        assert torch.equal(getattr(after, split).labels, getattr(before, split).labels)
    assert after.provenance["fingerprint"] == before.provenance["fingerprint"]


@pytest.mark.parametrize("how", ["chmod", "simulated"])
def test_an_unreadable_file_is_named_with_what_is_wrong(tmp_path: Path, monkeypatch, how: str) -> None:
    folder = write_cifar10(tmp_path, per_batch=10, test=10)
    path = folder / "data_batch_4"
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root reads files without read permission; the 'simulated' case covers it")
        path.chmod(0)
    else:
        real_open = open

        def denied(file, *args, **kwargs):
            if Path(file) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(safe_pickle, "open", denied, raising=False)
    try:
        with pytest.raises(UserError, match=r"cannot read .*data_batch_4: permission denied") as info:
            load_cifar("cifar10", tmp_path, val_size=5, download=False)
        assert "delete" not in str(info.value)
    finally:
        path.chmod(0o644)
