"""Inference from a run: ``aacn.inference.load_model`` and ``aacn evaluate`` on a tiny trained run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aacn import inference
from aacn.cli import main
from aacn.config import RunConfig
from aacn.errors import UserError
from aacn.models import create_model
from aacn.train.loop import run


@pytest.fixture(scope="module")
def tiny_run(tiny_cifar10, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    run(RunConfig(model="resnet34", epochs=1, subset=100, val_size=100, batch_size=50, lr=0.05, tta=True,
                  data_dir=str(tiny_cifar10), out=str(out), device="cpu", progress=False,
                  base_width=4))
    return out


def test_load_model_is_the_trained_model_in_eval_mode(tiny_run):
    model = inference.load_model(tiny_run)
    assert not model.training
    expected = create_model("resnet34", num_classes=10, base_width=4)
    newest = sorted((tiny_run / "checkpoints").iterdir())[-1]
    expected.load_state_dict(torch.load(newest, weights_only=True)["model"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), expected.eval()(x))


def test_import_aacn_stays_light():
    done = subprocess.run([sys.executable, "-c", "import sys, aacn; print('torch' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_evaluate_run_gives_the_numbers_the_run_recorded(tiny_run):
    recorded = json.loads((tiny_run / "results.json").read_text())
    got = inference.evaluate_run(tiny_run, tta=True, device="cpu")
    for key in ("test_acc", "test_top5", "test_loss", "test_acc_tta", "test_top5_tta", "test_loss_tta"):
        assert got[key] == recorded[key], key
    assert "test_acc_tta" not in inference.evaluate_run(tiny_run, device="cpu")


def test_aacn_evaluate_prints_top1_and_top5(tiny_run, capsys):
    recorded = json.loads((tiny_run / "results.json").read_text())
    assert main(["evaluate", str(tiny_run), "--tta", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"top-1 {recorded['test_acc']:.2f}%" in out and f"top-5 {recorded['test_top5']:.2f}%" in out
    assert f"flip TTA top-1 {recorded['test_acc_tta']:.2f}%" in out


def test_a_different_num_classes_is_refused_naming_both(tiny_run, capsys):
    with pytest.raises(UserError, match="num_classes=100 .* 10 classes"):
        inference.load_model(tiny_run, num_classes=100)
    assert main(["evaluate", str(tiny_run), "--dataset", "cifar100", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "num_classes=100" in err and "10 classes" in err


def test_runs_without_a_checkpoint_or_config_are_one_line(tiny_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", str(empty), "--device", "cpu"]) == 2
    assert "not a run directory" in capsys.readouterr().err
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_bytes((tiny_run / "config.json").read_bytes())
    with pytest.raises(UserError, match="has not finished"):  # no results.json: partial weights at best
        inference.load_model(bare)
    with pytest.raises(UserError, match="has no checkpoint"):
        inference.load_model(bare, partial=True)
    assert main(["evaluate", str(bare), "--device", "cpu", "--partial"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no checkpoint" in err


def test_an_anchor_record_is_refused_in_one_line(tmp_path, capsys):
    from aacn.cli import main

    (tmp_path / "config.json").write_text(json.dumps({"kind": "anchor", "config": {"anchor": "airbench94"}}))
    assert main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "anchor record" in err and err.count("\n") == 1
