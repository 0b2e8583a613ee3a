"""aacn sweep: grid parsing and validation, and a real two-point sweep that resumes after a crash."""

from __future__ import annotations

import csv
import io

import pytest

import aacn.train.loop
from aacn.cli import main
from aacn.config import RunConfig
from aacn.errors import UserError
from aacn.experiments.sweep import check_points, grid_points, parse_grid, summarize, sweep
from aacn.train.rundir import RunDir


def test_parse_grid_types_and_order():
    grid = parse_grid(["num-heads=1,4", "kappa=0.1,0.2", "relative=true,false", "lr=none,0.05", "recipe=fast"])
    assert grid == {"num_heads": [1, 4], "kappa": [0.1, 0.2], "relative": [True, False], "lr": [None, 0.05],
                    "recipe": ["fast"]}


@pytest.mark.parametrize("items, words", [
    (["heads=1,2"], ["'heads'", "num_heads"]),
    (["device=cpu"], ["'device'", "not sweepable"]),
    (["num_heads=1,x"], ["num_heads", "'x'", "int"]),
    (["epochs=2.5"], ["epochs", "'2.5'"]),
    (["kappa"], ["'kappa'", "KEY=V1,V2"]),
    (["relative=maybe"], ["relative", "'maybe'"]),
    (["kappa=0.1", "kappa=0.2"], ["twice"]),
    (["num_heads=2,2"], ["repeat"]),
    ([], ["at least one"]),
])
def test_parse_grid_errors_name_the_problem(items, words):
    with pytest.raises(UserError) as err:
        parse_grid(items)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_points_are_the_product_with_their_own_folders(tmp_path):
    base = RunConfig(model="wrn-10-1", attention="seed", base_width=4)
    points = grid_points(base, parse_grid(["num_heads=1,2", "epochs=1,2,3"]), tmp_path)
    assert len(points) == 6
    assert len({p.out for p in points}) == 6
    assert points[1].out == str(tmp_path / "num_heads-1_epochs-2")
    assert points[1].epochs == 2 and (points[1].attention, points[1].base_width, points[1].num_heads) == ("seed", 4, 1)
    assert base.num_heads == 8 and base.epochs == 10  # base untouched


def test_bad_values_fail_before_any_training(tmp_path, tiny_cifar10, monkeypatch):
    monkeypatch.setattr(aacn.train.loop, "run", lambda *a, **k: pytest.fail("trained despite a bad grid"))
    base = RunConfig(model="wrn-10-1", attention="seed", base_width=4, data_dir=str(tiny_cifar10), val_size=50,
                     batch_size=50, progress=False)
    with pytest.raises(UserError, match=r"kappa-1.5.*kappa must be a fraction in \(0, 1\]"):
        sweep(base, parse_grid(["kappa=0.2,1.5"]), tmp_path)
    with pytest.raises(UserError, match="num_heads=32 is larger than out_channels"):
        check_points(grid_points(base, {"num_heads": [32]}, tmp_path))
    with pytest.raises(UserError, match="sweep point subset-100000: subset=100000 is larger than the 450 training"):
        sweep(base, parse_grid(["subset=100,100000"]), tmp_path)
    with pytest.raises(UserError, match="point subset-100_batch_size-128: batch_size=128 is larger than the 100 "):
        sweep(base, parse_grid(["subset=100", "batch_size=50,128"]), tmp_path)
    with pytest.raises(UserError, match="sweep point recipe-sgd: recipe must be one of"):
        check_points(grid_points(base, {"recipe": ["fast", "sgd"]}, tmp_path))


def test_cli_bad_grid_point_exits_2_before_training(tmp_path, tiny_cifar10, monkeypatch, capsys):
    monkeypatch.setattr(aacn.train.loop, "run", lambda *a, **k: pytest.fail("trained despite a bad grid"))
    argv = ["sweep", "--model", "wrn-10-1", "--base-width", "2", "--data-dir", str(tiny_cifar10), "--val-size", "50",
            "--batch-size", "50", "--no-progress", "--grid", "subset=100,100000", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "subset-100000" in err[0] and "larger than" in err[0]


def test_cli_bad_grid_exits_2_with_one_line(tmp_path, capsys):
    assert main(["sweep", "--model", "wrn-10-1", "--grid", "nonsense=1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nonsense" in err[0] and "num_heads" in err[0]


def test_two_point_sweep_resumes_after_a_crash(tmp_path, tiny_cifar10, monkeypatch, capsys):
    """Point 2 crashes once between its epochs; the rerun skips point 1 and resumes point 2."""
    base = RunConfig(model="wrn-10-1", epochs=2, batch_size=50, subset=100, val_size=50, recipe="paper-sgd",
                     data_dir=str(tiny_cifar10), device="cpu", progress=False, eval_batch_size=200,
                     base_width=4, attention="seed", min_key_depth_per_head=2)
    grid = parse_grid(["num_heads=1,2"])
    out = tmp_path / "sweep"
    second = out / "num_heads-2"

    calls: list[tuple[str, bool]] = []
    real_run = aacn.train.loop.run

    def recording_run(config, *, resume=False, overwrite=False):
        calls.append((config.out, resume))
        return real_run(config, resume=resume, overwrite=overwrite)

    real_save = RunDir.save_checkpoint
    crashed = []

    def crash_once(self, state, epoch, *args, **kwargs):
        if self.path == second and epoch == 2 and not crashed:
            crashed.append(epoch)
            raise RuntimeError("simulated crash")
        return real_save(self, state, epoch, *args, **kwargs)

    monkeypatch.setattr(aacn.train.loop, "run", recording_run)
    monkeypatch.setattr(RunDir, "save_checkpoint", crash_once)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sweep(base, grid, out)
    assert RunDir(out / "num_heads-1").is_finished()
    assert not RunDir(second).is_finished() and RunDir(second).checkpoints()
    assert RunDir(second).checkpoints()[-1].name == "epoch-0001.pt"  # the crash hit epoch 2's checkpoint
    first_epoch = RunDir(second).read_metrics()[:1]  # (epoch 2's row, written first, is dropped on resume)

    calls.clear()
    result = sweep(base, grid, out)
    assert calls == [(str(second), True)]  # point 1 skipped, point 2 resumed
    metrics = RunDir(second).read_metrics()
    assert [r["epoch"] for r in metrics] == [1, 2] and metrics[0] == first_epoch[0]

    assert [r.label for r in result.rows] == ["num_heads=1", "num_heads=2"]
    rows = list(csv.DictReader(io.StringIO((out / "sweep.csv").read_text())))
    assert [r["num_heads"] for r in rows] == ["1", "2"]
    assert all(r["partial"] == "0" and r["test_acc_mean"] for r in rows)
    assert "| num_heads=2" in (out / "sweep.md").read_text()
    assert (out / "accuracy_vs_params.png").read_bytes()[:4] == b"\x89PNG"

    calls.clear()
    sweep(base, grid, out)  # everything finished: nothing trains
    assert calls == []

    # stale reuse: other settings in a finished point's folder are refused, naming them, unless overwrite
    other = base.replace(epochs=1)
    with pytest.raises(UserError, match=r"num_heads-1 holds a finished run with other settings \(epochs: 2 != 1\)"):
        sweep(other, grid, out)
    assert calls == []
    sweep(other, parse_grid(["num_heads=1"]), out, overwrite=True)
    assert calls == [(str(out / "num_heads-1"), False)]
    assert [r["epoch"] for r in RunDir(out / "num_heads-1").read_metrics()] == [1]


def test_cli_scale_fills_only_flags_left_out(tmp_path, monkeypatch, capsys):
    import aacn.experiments.sweep as sweep_module
    from aacn.experiments.presets import SCALE_SETTINGS, SMOKE_ATTENTION
    from aacn.experiments.report import ReportResult

    seen = {}

    def fake_sweep(base, grid, out, **kwargs):
        seen.update(base=base, grid=grid, out=out)
        return ReportResult("table", [], [])

    monkeypatch.setattr(sweep_module, "sweep", fake_sweep)
    argv = ["sweep", "--model", "wrn-28-10", "--attention", "seed", "--epochs", "7", "--val-size", "5000",
            "--scale", "smoke", "--grid", "kappa=0.1,0.2", "--out", str(tmp_path)]
    assert main(argv) == 0
    base, smoke = seen["base"], SCALE_SETTINGS["smoke"]["wrn"]
    assert base.epochs == 7 and base.val_size == 5000  # given explicitly (even at the default value): kept
    assert base.subset == smoke["subset"] and base.base_width == smoke["base_width"]
    assert base.num_heads == SMOKE_ATTENTION["num_heads"]
    assert seen["grid"] == {"kappa": [0.1, 0.2]} and seen["out"] == str(tmp_path) and base.out == str(tmp_path)


def _data(label: str, test: str) -> dict:
    return {"label": label, "differing_files": [] if label == "official" else ["test_batch"],
            "fingerprint": {"train": "1" * 64, "test": test}}


def _finished_point(path, num_heads: int, test_acc: float, data: dict):
    """A finished sweep point's record (config, metrics, results with its data), without training."""
    cfg = RunConfig(model="wrn-10-1", attention="seed", base_width=4, num_heads=num_heads, out=str(path))
    run = RunDir(path)
    run.write_config(cfg.to_dict(), {"params": 1000, "attention_layers": []}, data=data)
    run.write_metrics([{"epoch": 1, "train_loss": 1.0, "train_acc": 50.0, "val_loss": 1.1, "val_acc": 45.0,
                        "epoch_time_s": 1.0}])
    run.write_results({"train_acc": 50.0, "val_acc": 45.0, "test_acc": test_acc, "train_time_s": 1.0,
                       "wall_time_s": 2.0, "params": 1000, "config": cfg.to_dict(), "data": data})
    return path


def test_summary_checks_data_as_report_does(tmp_path):
    a = _finished_point(tmp_path / "num_heads-1", 1, 60.0, _data("official", "a" * 64))
    b = _finished_point(tmp_path / "num_heads-2", 2, 61.0, _data("not official", "b" * 64))
    with pytest.raises(UserError, match="--allow-mixed-data") as err:
        summarize([a, b], ["num_heads"], tmp_path)
    assert "one sweep" in str(err.value) and "bbbbbbbbbbbb" in str(err.value)
    assert not (tmp_path / "sweep.md").exists()

    result = summarize([a, b], ["num_heads"], tmp_path, allow_mixed_data=True)
    md = (tmp_path / "sweep.md").read_text()
    assert " Data |" in md and "| num_heads=2 † |" in md and "| num_heads=1   |" in md
    assert "† trained on cifar10 data labelled 'not official'" in md and "test_batch" in md
    assert "not directly comparable" in md and result.markdown in md

    c = _finished_point(tmp_path / "same" / "num_heads-1", 1, 59.0, _data("not official", "b" * 64))
    summarize([c, b], ["num_heads"], tmp_path / "same")  # one kind of data: tabulated, rows still marked
    md = (tmp_path / "same" / "sweep.md").read_text()
    assert " Data |" not in md and "| num_heads=1 † |" in md and "| num_heads=2 † |" in md


def test_cli_sweep_refuses_mixed_data_unless_allowed(tmp_path, monkeypatch, capsys):
    import aacn.experiments.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "check_points", lambda points: None)
    monkeypatch.setattr(sweep_module, "train_all", lambda points, **kwargs: None)  # the points are recorded below
    _finished_point(tmp_path / "num_heads-1", 1, 60.0, _data("official", "a" * 64))
    _finished_point(tmp_path / "num_heads-2", 2, 61.0, _data("not official", "b" * 64))
    argv = ["sweep", "--model", "wrn-10-1", "--attention", "seed", "--base-width", "4", "--grid", "num_heads=1,2",
            "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--allow-mixed-data" in err[0] and "different cifar10 data" in err[0], err
    assert main([*argv, "--allow-mixed-data"]) == 0
    out = capsys.readouterr().out
    assert " Data |" in out and "| num_heads=2 † |" in out


def test_grid_points_that_train_the_same_model_are_refused_before_training(tmp_path, tiny_cifar10, monkeypatch):
    monkeypatch.setattr(aacn.train.loop, "run", lambda *a, **k: pytest.fail("nothing may train"))
    base = RunConfig(model="wrn-10-1", attention="seed", base_width=4, epochs=1, val_size=100,
                     data_dir=str(tiny_cifar10))
    # at least 20 key dims per head: kappa 0.1 and 0.2 both give dk = 20 * num_heads
    grid = parse_grid(["num_heads=1,2", "kappa=0.1,0.2"])
    with pytest.raises(UserError, match=r"sweep points num_heads-1_kappa-0.1 and num_heads-1_kappa-0.2 train the "
                                        r"same model \(1 attention-augmented conv\(s\): block3.0.conv1 @ 8x8 "
                                        r"\(dk=20"):
        sweep(base, grid, tmp_path / "sweep", log=lambda *a: None)
    plain = RunConfig(model="wrn-10-1", base_width=4, epochs=1, val_size=100, data_dir=str(tiny_cifar10))
    with pytest.raises(UserError, match="train the same model \\(no attention\\)"):
        sweep(plain, parse_grid(["kappa=0.1,0.2"]), tmp_path / "sweep2", log=lambda *a: None)
