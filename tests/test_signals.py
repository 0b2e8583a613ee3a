"""Signals never land inside a step: two Ctrl-C presses still stop at the step boundary (the resumed run equals an
uninterrupted one), a third aborts without a checkpoint, and SIGTERM exits 143."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

import aacn.train.step as step_module
from aacn.cli import main

TIME_KEYS = {"epoch_time_s", "images_per_s", "peak_mem_bytes"}


def args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "wrn-10-1", "--base-width", "4", "--epochs", "2", "--subset", "200", "--val-size",
            "50", "--batch-size", "50", "--data-dir", str(data), "--out", str(out), "--device", "cpu",
            "--no-progress", *extra]


def rows(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIME_KEYS}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tiny_cifar10, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(args(tiny_cifar10, out)) == 0
    return out


def signal_during_step(monkeypatch, at: int, *signals: int) -> None:
    """Send ``signals`` to this process right after the optimiser step of global step ``at`` (1-based), before
    the loop counts the step: where a signal that raised at once would leave the checkpoint inconsistent."""
    original, count = step_module.train_step, [0]

    def train_step(*a, **k):
        result = original(*a, **k)
        count[0] += 1
        if count[0] == at:
            for signum in signals:
                os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(step_module, "train_step", train_step)


def test_two_ctrl_c_presses_still_stop_at_the_step_boundary(tiny_cifar10, tmp_path, straight, monkeypatch, capsys):
    out = tmp_path / "run"
    signal_during_step(monkeypatch, 2, signal.SIGINT, signal.SIGINT)
    assert main(args(tiny_cifar10, out)) == 130
    monkeypatch.undo()
    assert "press Ctrl-C once more" in capsys.readouterr().err
    assert (out / "checkpoints" / "epoch-0000-step-000002.pt").is_file()
    assert main(args(tiny_cifar10, out, "--resume")) == 0
    assert rows(out) == rows(straight)
    assert json.loads((out / "results.json").read_text())["test_acc"] == \
        json.loads((straight / "results.json").read_text())["test_acc"]


def test_a_third_ctrl_c_aborts_without_a_checkpoint(tiny_cifar10, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    signal_during_step(monkeypatch, 6, *[signal.SIGINT] * 3)  # epoch 2, step 2
    assert main(args(tiny_cifar10, out)) == 130
    assert "without saving" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-0001.pt"]


def test_sigterm_saves_and_exits_143(tiny_cifar10, tmp_path, monkeypatch):
    out = tmp_path / "run"
    signal_during_step(monkeypatch, 3, signal.SIGTERM)
    assert main(args(tiny_cifar10, out)) == 143
    assert (out / "checkpoints" / "epoch-0000-step-000003.pt").is_file()


def test_the_cli_imports_nothing_heavy_before_main_runs():
    """Ctrl-C during start-up lands in main(), which prints one line: the module itself must not import torch."""
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[1] / "src")
    code = "import sys, aacn.cli, aacn.__main__; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": src}, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
