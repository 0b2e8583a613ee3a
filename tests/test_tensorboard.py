"""--tensorboard: TensorBoard event files of a run (read back with TensorBoard's own reader), a result-neutral
option through train, reproduce and sweep, and one line before training when the package is missing."""

from __future__ import annotations

import json
import sys

import pytest
from test_train import tiny_args

import aacn.train.loop
from aacn.cli import main
from aacn.train.recipes import schedule_for
from aacn.train.rundir import RunDir

STEP_TAGS = {"step/loss", "step/lr"}
EPOCH_TAGS = {f"epoch/{key}" for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s",
                                          "peak_mem_bytes")}


def test_a_run_writes_per_step_and_per_epoch_scalars(tiny_cifar10, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = tiny_args(tiny_cifar10, out, "--tensorboard", epochs=2)
    assert main(args) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert STEP_TAGS | EPOCH_TAGS <= set(events.Tags()["scalars"])
    steps = 400 // 50  # --subset 400, --batch-size 50
    losses = events.Scalars("step/loss")
    assert [e.step for e in losses] == list(range(1, 2 * steps + 1))
    lr = schedule_for("paper-sgd", epochs=2, steps_per_epoch=steps)
    assert [e.value for e in events.Scalars("step/lr")] == pytest.approx([0.05 * lr(s) for s in range(2 * steps)])
    rows = RunDir(out).read_metrics()
    for key in ("train_loss", "val_acc", "images_per_s"):
        logged = events.Scalars(f"epoch/{key}")
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([r[key] for r in rows], rel=1e-6)
    assert json.loads((out / "config.json").read_text())["config"]["tensorboard"] is True
    capsys.readouterr()
    assert main(tiny_args(tiny_cifar10, out, "--resume", epochs=2)) == 0  # result-neutral: the same run
    assert "already finished" in capsys.readouterr().out
    assert main([*args, "--overwrite"]) == 0  # the earlier run's event files go with it
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("step/loss")) == 2 * steps


def test_without_the_package_it_is_one_line_and_nothing_trains(tiny_cifar10, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails, as without tensorboard
    out = tmp_path / "run"
    assert main(tiny_args(tiny_cifar10, out, "--tensorboard", epochs=1)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tensorboard needs the tensorboard package" in err[0] and "pip install" in err[0]
    assert not RunDir(out).has_started() and not (out / "tensorboard").exists()


def test_reproduce_and_sweep_pass_it_on_and_do_not_compare_it(tmp_path, monkeypatch):
    from test_reproduce import _fake_trainer

    import aacn.experiments.sweep as sweep_module
    from aacn.experiments.report import ReportResult

    calls: list[tuple[str, bool]] = []
    seen = []
    fake = _fake_trainer(calls)

    def recording(config, **kwargs):
        seen.append(config.tensorboard)
        return fake(config, **kwargs)

    monkeypatch.setattr(aacn.train.loop, "run", recording)
    out = tmp_path / "t1"
    assert main(["reproduce", "table1", "--out", str(out), "--tensorboard"]) == 0
    assert seen == [True] * 4
    calls.clear()
    assert main(["reproduce", "table1", "--out", str(out)]) == 0 and calls == []  # not compared for reuse

    bases = []
    monkeypatch.setattr(sweep_module, "sweep", lambda base, grid, out, **kw: bases.append(base) or
                        ReportResult("table", [], []))
    assert main(["sweep", "--model", "wrn-10-1", "--grid", "seed=0,1", "--out", str(tmp_path / "s"),
                 "--tensorboard"]) == 0
    assert bases[0].tensorboard is True
    assert main(["sweep", "--model", "wrn-10-1", "--grid", "tensorboard=true", "--out", str(tmp_path / "s")]) == 2

