"""Bounded resources and range-checked numbers: crafted sizes are refused before anything is allocated or built."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from cifar_files import write_cifar10

from aacn.cli import main
from aacn.data.cifar import load_cifar
from aacn.data.safe_pickle import TooLarge, loads_restricted
from aacn.errors import UserError
from aacn.nn import AAConv2d
from aacn.nn.functional import relative_attention_2d


class _Huge:
    def __init__(self, call):
        self.call = call

    def __reduce__(self):
        return self.call


@pytest.mark.parametrize("call", [(bytearray, (8_000_000_000,)), (bytes, (8_000_000_000,)),
                                  (np.ndarray, ((8_000_000_000,),))])
def test_a_tiny_pickle_cannot_ask_for_gigabytes(tmp_path, call):
    data = pickle.dumps(_Huge(call), protocol=2)
    assert len(data) < 100
    with pytest.raises(TooLarge):
        loads_restricted(data)
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(data)
    with pytest.raises(UserError, match="batches.meta: it asks for .*000,000,000 bytes"):
        load_cifar("cifar10", tmp_path, val_size=50, progress=False)


def test_real_arrays_still_load_at_every_protocol():
    array = np.arange(3 * 2**20, dtype=np.uint8).reshape(3, -1)  # larger than the minimum limit
    for protocol in (2, 4, 5):
        assert (loads_restricted(pickle.dumps({b"data": array}, protocol=protocol))[b"data"] == array).all()


@pytest.mark.parametrize("args, words", [
    (["--model", "wrn-100000000-1"], ["--model", "depth"]),
    (["--model", "wrn-1000-64"], ["--model", "parameters"]),
    (["--base-width", "100000"], ["--base-width", "at most"]),
    (["--lr", "1e39"], ["--lr", "at most"]),
    (["--seed", "18446744073709551616"], ["--seed", "at most"]),
    (["--epochs", "10000000"], ["--epochs", "at most"]),
    (["--kappa", "1e-9"], ["--kappa", "at least"]),
])
def test_out_of_range_numbers_are_one_line_naming_the_flag(tmp_path, capsys, args, words):
    try:
        code = main(["train", *args, "--out", str(tmp_path / "r"), "--device", "cpu"])
    except SystemExit as exc:  # argparse refuses what the flag's own check sees
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert not (tmp_path / "r").exists()


def test_evaluate_names_a_bad_device(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device" in err[0] and "tpu" in err[0], err


def test_attention_arguments_are_checked():
    q = torch.randn(1, 2, 4, 4, 3)
    with pytest.raises(ValueError, match="q: expected a torch.Tensor, got list"):
        relative_attention_2d(q.tolist(), q, q)
    for scale in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match="scale"):
            relative_attention_2d(q, q, q, scale=scale)
    with pytest.raises(ValueError, match="dk: fraction 1e-09"):
        AAConv2d(8, 16, 3, dk=1e-9, dv=0.5, num_heads=2)
