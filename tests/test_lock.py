"""One writer per run directory: a second process is refused at once, naming the holder; a dead holder frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aacn.cli import main
from aacn.errors import UserError
from aacn.train.lock import LOCK_NAME, run_lock

SRC = str(Path(__file__).resolve().parents[1] / "src")
HOLD = ("import sys, time; from aacn.train.lock import run_lock\n"
        "with run_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)\n")


@pytest.fixture
def holder(tmp_path):
    """A process that holds the lock of ``tmp_path / 'run'``; yields (folder, process)."""
    folder = tmp_path / "run"
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield folder, proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_writer_is_refused_naming_the_holder(holder, tiny_cifar10, capsys):
    folder, proc = holder
    args = ["train", "--model", "wrn-10-1", "--epochs", "1", "--data-dir", str(tiny_cifar10), "--out", str(folder),
            "--device", "cpu", "--no-progress"]
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert main(args + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"PID {proc.pid}" in err[0] and str(folder) in err[0], err
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]  # nothing written by the refused command


def test_the_lock_dies_with_its_holder(holder):
    folder, proc = holder
    with pytest.raises(UserError, match=f"PID {proc.pid}"):
        with run_lock(folder):
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with run_lock(folder):  # the OS released it; the stale file is reused
        with run_lock(folder):  # re-entrant in one process
            assert (folder / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert not (folder / LOCK_NAME).exists()  # a clean release leaves the folder as it was


def test_sweep_and_anchor_hold_their_folders(holder, monkeypatch):
    from aacn.config import RunConfig
    from aacn.experiments.anchor import run_anchor
    from aacn.experiments.sweep import sweep

    folder, proc = holder
    with pytest.raises(UserError, match=f"PID {proc.pid}"):
        sweep(RunConfig(model="wrn-10-1"), {"seed": [0]}, folder)

    class Trainer:
        device, version = "cpu", "test"

    monkeypatch.setattr("aacn.experiments.anchor.load_cifar", lambda *a, **k: pytest.fail("trained while locked"))
    with pytest.raises(UserError, match=f"PID {proc.pid}"):
        run_anchor("airbench94", out=folder, trainer=Trainer())
