"""Run records: atomic writes, checkpoint pruning, truncated checkpoints skipped, a full disk survived."""

import errno

import pytest
import torch

from aacn.config import RunConfig
from aacn.errors import UserError
from aacn.train import rundir
from aacn.train.rundir import RunDir


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((3,), value)}, "epoch": int(value)}


def test_checkpoints_are_pruned_and_loadable_with_weights_only(tmp_path):
    run = RunDir(tmp_path)
    for epoch in range(1, 5):
        run.save_checkpoint(_state(epoch), epoch, keep=2)
    assert [p.name for p in run.checkpoints()] == ["epoch-0003.pt", "epoch-0004.pt"]
    state = torch.load(run.checkpoints()[-1], weights_only=True)
    assert state["epoch"] == 4 and state["format"] == rundir.CHECKPOINT_FORMAT
    run.save_checkpoint(_state(5), 4, step=7, keep=3)  # a mid-epoch checkpoint sorts after its epoch's
    assert run.checkpoints()[-1].name == "epoch-0004-step-000007.pt"


def test_truncated_checkpoint_is_skipped_with_a_warning(tmp_path):
    run = RunDir(tmp_path)
    run.save_checkpoint(_state(1), 1, keep=5)
    newest = run.save_checkpoint(_state(2), 2, keep=5)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        path, state = run.latest_checkpoint()
    assert path.name == "epoch-0001.pt" and state["epoch"] == 1


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.save_checkpoint(_state(1), 1, keep=1)

    def disk_full(obj, fh):
        fh.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.torch, "save", disk_full)
    with pytest.raises(UserError, match="No space left on device.*previous version is intact"):
        run.save_checkpoint(_state(2), 2, keep=1)
    monkeypatch.undo()
    assert [p.name for p in run.checkpoint_dir.iterdir()] == ["epoch-0001.pt"]  # no temp file left behind
    assert run.latest_checkpoint()[1]["epoch"] == 1


def test_metrics_survive_a_torn_last_line(tmp_path):
    run = RunDir(tmp_path)
    run.write_metrics([{"epoch": 1}, {"epoch": 2}])
    with open(run.metrics_path, "a") as fh:
        fh.write('{"epoch": 3, "train_lo')
    assert run.read_metrics() == [{"epoch": 1}, {"epoch": 2}]


def test_config_round_trip_and_differences(tmp_path):
    a = RunConfig(model="wrn-16-4", epochs=3, base_width=4)
    run = RunDir(tmp_path)
    run.write_config(a.to_dict(), {"params": 1})
    b = RunConfig.load(run.config_path)
    assert b == a and a.differences(b) == []
    c = RunConfig(model="wrn-16-4", epochs=3, base_width=8, out="elsewhere", device="cpu")
    assert a.differences(c) == ["base_width: 4 != 8"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("epochs", 0, "epochs must be a positive integer"), ("dataset", "mnist", "dataset must be one of"),
     ("lr", -1.0, "lr must be a positive"), ("amp", "int8", "amp must be one of")],
)
def test_config_validation_names_the_problem(field, value, message):
    with pytest.raises(UserError, match=message):
        RunConfig(**{field: value})
