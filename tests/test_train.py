"""End to end through the real CLI on tiny CIFAR-format data: records, falling loss, resumption, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aacn.cli import main
from aacn.config import RunConfig
from aacn.data.loader import DeviceLoader
from aacn.models import create_model
from aacn.train import run

TIME_KEYS = {"epoch_time_s", "images_per_s", "peak_mem_bytes"}


def tiny_args(data: Path, out: Path, *extra: str, epochs: int = 3) -> list[str]:
    return ["train", "--model", "resnet34", "--base-width", "4", "--epochs", str(epochs), "--subset", "400",
            "--val-size", "100", "--batch-size", "50", "--lr", "0.05", "--data-dir", str(data), "--out", str(out),
            "--device", "cpu", "--no-progress", *extra]


def tiny_config(data: Path, out: Path, **kw) -> RunConfig:
    base = dict(model="resnet34", epochs=3, subset=400, val_size=100, batch_size=50, lr=0.05, data_dir=str(data),
                out=str(out), device="cpu", progress=False, model_kwargs={"base_width": 4})
    return RunConfig(**{**base, **kw})


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tiny_cifar10, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "straight"
    run(tiny_config(tiny_cifar10, out))
    return out


def test_train_writes_the_records_and_the_loss_falls(tiny_cifar10, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(tiny_cifar10, out, epochs=4)) == 0
    rows = read_rows(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.3
    assert {"train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s", "peak_mem_bytes"} <= set(rows[0])
    results = json.loads((out / "results.json").read_text())
    for key in ("train_acc", "val_acc", "test_acc", "wall_time_s", "flops_per_image"):
        assert key in results
    model = create_model("resnet34", num_classes=10, base_width=4)
    assert results["params"] == sum(p.numel() for p in model.parameters())
    state = torch.load(sorted((out / "checkpoints").iterdir())[-1], weights_only=True)
    model.load_state_dict(state["model"])  # a plain state dict, loadable with weights_only=True
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["arch"]["base_width"] == 4 and saved["info"]["global_batch_size"] == 50
    assert len(list((out / "checkpoints").iterdir())) == 2  # the newest two are kept

    capsys.readouterr()
    assert main(tiny_args(tiny_cifar10, out, epochs=4)) == 2  # a finished run is not overwritten silently
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a finished run" in err and "--overwrite" in err
    assert main(tiny_args(tiny_cifar10, out, "--resume", epochs=4)) == 0


def test_ctrl_c_mid_epoch_then_resume_matches_an_uninterrupted_run(tiny_cifar10, tmp_path, uninterrupted,
                                                                    monkeypatch):
    out = tmp_path / "interrupted"
    original = DeviceLoader.batches

    def batches(self, epoch, start=0):
        for i, batch in enumerate(original(self, epoch, start)):
            if self.train and epoch == 1 and start + i == 3:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does; the loop stops after this step
            yield batch

    monkeypatch.setattr(DeviceLoader, "batches", batches)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(tiny_cifar10, out))
    monkeypatch.undo()
    assert (out / "checkpoints" / "epoch-0001-step-000004.pt").is_file()
    assert not (out / "results.json").exists()

    resumed = run(tiny_config(tiny_cifar10, out), resume=True)
    expected = json.loads((uninterrupted / "results.json").read_text())
    assert comparable(read_rows(out)) == comparable(read_rows(uninterrupted))
    for key in ("train_acc", "val_acc", "test_acc", "test_loss"):
        assert resumed[key] == expected[key]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_cifar10, tmp_path, uninterrupted):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "aacn", *tiny_args(tiny_cifar10, out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "epoch-0001.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert comparable(read_rows(out)) == comparable(read_rows(uninterrupted))
    assert json.loads((out / "results.json").read_text())["test_acc"] == json.loads(
        (uninterrupted / "results.json").read_text())["test_acc"]


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_cifar10, tmp_path, monkeypatch, capsys):
    import aacn.train.loop as loop

    calls = {"n": 0}

    class Poisoned(torch.nn.CrossEntropyLoss):
        def forward(self, logits, target):
            calls["n"] += 1
            loss = super().forward(logits, target)
            return loss * float("nan") if calls["n"] > 10 else loss  # epoch 2 (8 steps per epoch)

    monkeypatch.setattr(loop.nn, "CrossEntropyLoss", Poisoned)
    out = tmp_path / "nan"
    assert main(tiny_args(tiny_cifar10, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loss became nan at epoch 2" in err[0] and "epoch-0001.pt" in err[0]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch-0001.pt"]
    state = torch.load(out / "checkpoints" / "epoch-0001.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.dtype.is_floating_point)


def test_resume_with_a_different_config_is_refused(tiny_cifar10, tmp_path, uninterrupted, capsys):
    out = tmp_path / "changed"
    run(tiny_config(tiny_cifar10, out, epochs=1))
    (out / "results.json").unlink()  # pretend it was cut short
    assert main(tiny_args(tiny_cifar10, out, "--resume", "--seed", "7", epochs=1)) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "seed: 0 != 7" in err


def exit_code(argv: list[str]) -> int:
    """main()'s exit code, also when argparse exits for a bad flag."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--epochs", "0"], "--epochs: must be a positive integer"),
        (["--batch-size", "-3"], "--batch-size: must be a positive integer"),
        (["--lr", "0"], "--lr: must be a positive number"),
        (["--model", "resnet99"], "resnet99"),
        (["--subset", "100000"], "subset=100000"),
        (["--batch-size", "1000"], "larger than the 400 training images"),
        (["--dataset", "mnist"], "invalid choice"),
        (["--recipe", "adamw"], "invalid choice: 'adamw'"),
        (["--kappa", "1.5"], "--kappa: must be a fraction in (0, 1]"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_cifar10, tmp_path, capsys, change, message):
    assert exit_code(tiny_args(tiny_cifar10, tmp_path / "bad") + change) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "bad" / "results.json").exists()


def test_data_dir_without_cifar_says_what_is_missing(tmp_path, capsys, monkeypatch):
    import aacn.data.cifar as cifar

    def offline(url, dest, progress=True):
        raise OSError("network is unreachable")

    monkeypatch.setattr(cifar, "download_file", offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert exit_code(tiny_args(empty, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(empty) in err and "cifar-10-batches-py" in err


def test_a_failing_torch_compile_is_one_line_that_says_how_to_go_on(tiny_cifar10, tmp_path, monkeypatch, capsys):
    import aacn.train.loop as loop

    def failing_backend(graph_module, example_inputs):
        raise RuntimeError("the compiler broke")

    real_compile = torch.compile
    monkeypatch.setattr(loop.torch, "compile", lambda model: real_compile(model, backend=failing_backend))
    out = tmp_path / "run"
    assert main(tiny_args(tiny_cifar10, out, "--compile", epochs=1)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch.compile failed" in err[0] and "the compiler broke" in err[0], err
    assert "without --compile" in err[0] and "--resume" in err[0]
    monkeypatch.setattr(loop.torch, "compile", real_compile)
    assert main(tiny_args(tiny_cifar10, out, "--resume", epochs=1)) == 0  # the advice works
