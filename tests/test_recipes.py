"""LR schedules of each recipe at chosen steps, their torch.optim.lr_scheduler plumbing, and recipes recorded
by content: a run made under an older declaration of its recipe is not reused as the same experiment."""

import dataclasses
import io
import json
import math
from pathlib import Path

import pytest
import torch
from test_report import write_run
from test_train import tiny_args

import aacn.train.loop
from aacn.cli import main
from aacn.config import RunConfig
from aacn.errors import UserError
from aacn.experiments.reproduce import reproduce
from aacn.experiments.sweep import parse_grid, sweep
from aacn.train.recipes import RECIPES, StepDecay, WarmupCosine, build_optimizer, resolved_recipe, schedule_for
from aacn.train.rundir import RunDir


def test_paper_sgd_warms_up_then_cosine():
    f = schedule_for("paper-sgd", epochs=100, steps_per_epoch=10)  # warm-up: 5 epochs = 50 steps
    assert f(0) == 0.0
    assert f(25) == pytest.approx(0.5)
    assert f(50) == pytest.approx(1.0)
    assert f(50 + 475) == pytest.approx(0.5)  # half-way through the cosine
    assert f(1000) == pytest.approx(0.0, abs=1e-12)


def test_seed_adam_milestones_of_the_replication():
    f = schedule_for("seed-adam", epochs=220, steps_per_epoch=3)
    expected = {0: 1.0, 79: 1.0, 80: 0.1, 119: 0.1, 120: 0.01, 160: 0.001, 180: 0.0005, 219: 0.0005}
    for epoch, factor in expected.items():
        assert f(epoch * 3) == pytest.approx(factor), epoch
        assert f(epoch * 3 + 2) == pytest.approx(factor), epoch


def test_wrn_sgd_steps_at_30_60_80_percent():
    f = schedule_for("wrn-sgd", epochs=10, steps_per_epoch=7)
    assert [f(e * 7) for e in range(10)] == pytest.approx([1, 1, 1, 0.2, 0.2, 0.2, 0.04, 0.04, 0.008, 0.008])


def test_fast_recipe_warms_up_and_ends_at_zero():
    f = schedule_for("fast", epochs=10, steps_per_epoch=10)
    assert f(0) == 0 and f(20) == pytest.approx(1.0) and f(100) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_scheduler_steps_match_the_pure_schedule_and_survive_a_checkpoint(recipe):
    model = torch.nn.Linear(3, 2)
    opt, sched, hyper = build_optimizer(recipe, model, epochs=4, steps_per_epoch=5, batch_size=512)
    base = hyper["base_lr"]
    f = schedule_for(recipe, epochs=4, steps_per_epoch=5)
    for step in range(12):
        assert opt.param_groups[0]["lr"] == pytest.approx(base * f(step))
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save({"s": sched.state_dict(), "o": opt.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    opt2, sched2, _ = build_optimizer(recipe, model, epochs=4, steps_per_epoch=5, batch_size=512)
    opt2.load_state_dict(state["o"])
    sched2.load_state_dict(state["s"])
    for step in range(12, 20):
        assert opt2.param_groups[0]["lr"] == pytest.approx(base * f(step))
        opt2.step()
        sched2.step()


def test_base_lr_rules_and_overrides():
    model = torch.nn.Linear(3, 2)
    assert build_optimizer("paper-sgd", model, epochs=1, steps_per_epoch=1, batch_size=512)[2]["base_lr"] == 0.4
    _, _, h = build_optimizer("wrn-sgd", model, epochs=1, steps_per_epoch=1, batch_size=512, lr=0.05,
                              weight_decay=0.0)
    assert h["base_lr"] == 0.05 and h["weight_decay"] == 0.0 and h["optimizer"] == "sgd-nesterov"
    assert math.isclose(RECIPES["seed-adam"].peak_lr(128), 1e-3)
    with pytest.raises(ValueError, match="unknown recipe"):
        build_optimizer("nope", model, epochs=1, steps_per_epoch=1, batch_size=1)


# ------------------------------------------------------------------ the declarations give the old schedules
def _old_schedule_for(recipe: str, *, epochs: int, steps_per_epoch: int):
    """The if-chain that defined the schedules before recipes became data, kept verbatim as the reference."""
    from functools import partial

    from aacn.train.recipes import piecewise, warmup_cosine

    total = epochs * steps_per_epoch

    def at_epoch(fraction: float) -> int:
        return round(fraction * epochs) * steps_per_epoch

    if recipe == "paper-sgd":
        return partial(warmup_cosine, total=total, warmup=round(0.05 * epochs * steps_per_epoch))
    if recipe == "seed-adam":
        marks = [at_epoch(e / 220) for e in (80, 120, 160, 180)]
        return partial(piecewise, milestones=marks, factors=[0.1, 0.01, 0.001, 0.0005])
    if recipe == "wrn-sgd":
        marks = [at_epoch(f) for f in (0.3, 0.6, 0.8)]
        return partial(piecewise, milestones=marks, factors=[0.2, 0.04, 0.008])
    if recipe == "fast":
        return partial(warmup_cosine, total=total, warmup=min(2 * steps_per_epoch, total // 4))
    raise ValueError(recipe)


_OLD_LR = {"paper-sgd": lambda b: 0.2 * b / 256, "seed-adam": lambda b: 1e-3, "wrn-sgd": lambda b: 0.1,
           "fast": lambda b: 0.1 * b / 128}


@pytest.mark.parametrize("recipe", ["paper-sgd", "seed-adam", "wrn-sgd", "fast"])
def test_declared_recipes_give_bit_identical_lr_sequences_to_the_old_schedules(recipe):
    for epochs, steps in [(1, 1), (3, 8), (5, 7), (10, 1), (11, 3), (30, 88), (60, 351), (220, 3), (7, 97)]:
        new, old = schedule_for(recipe, epochs=epochs, steps_per_epoch=steps), _old_schedule_for(
            recipe, epochs=epochs, steps_per_epoch=steps)
        assert [new(s) for s in range(epochs * steps + 2)] == [old(s) for s in range(epochs * steps + 2)], (epochs,
                                                                                                            steps)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    for batch in (1, 50, 128, 500, 512, 1000):
        opt, _, hyper = build_optimizer(recipe, model, epochs=2, steps_per_epoch=3, batch_size=batch)
        assert hyper["base_lr"] == _OLD_LR[recipe](batch)
        groups = [(len(g["params"]), g["weight_decay"], g.get("momentum"), g.get("nesterov")) for g in opt.param_groups]
        old_groups = {"paper-sgd": [(4, 5e-4, 0.9, False)], "seed-adam": [(4, 0.0, None, None)],
                      "wrn-sgd": [(4, 5e-4, 0.9, True)], "fast": [(1, 5e-4, 0.9, True), (3, 0.0, 0.9, True)]}
        assert groups == old_groups[recipe]
    assert (type(opt).__name__ == "Adam") == (recipe == "seed-adam")


# ---------------------------------------------------------------------- runs record the resolved recipe
def test_resolved_recipe_holds_every_field_with_the_overrides():
    fast = resolved_recipe(RunConfig(recipe="fast", batch_size=512))
    assert fast == {"name": "fast", "optimizer": "sgd", "lr": 0.1, "lr_batch": 128, "momentum": 0.9, "nesterov": True,
                    "weight_decay": 5e-4, "decay_norm_and_bias": False, "label_smoothing": 0.1, "peak_lr": 0.4,
                    "schedule": {"shape": "warmup-cosine", "warmup_fraction": None, "warmup_epochs": 2,
                                 "warmup_max_fraction": 0.25, "per": "step"}}
    adam = resolved_recipe(RunConfig(recipe="seed-adam", lr=0.01, weight_decay=0.1, label_smoothing=0.2))
    assert (adam["peak_lr"], adam["weight_decay"], adam["label_smoothing"]) == (0.01, 0.1, 0.2)
    assert adam["schedule"] == {"shape": "step-decay", "milestones": [80, 120, 160, 180], "milestones_of": 220,
                                "factors": [0.1, 0.01, 0.001, 0.0005], "per": "epoch"}


def _edit_paper_sgd(monkeypatch) -> None:
    """The declaration of paper-sgd changed after a run finished: another warm-up and weight decay."""
    edited = dataclasses.replace(RECIPES["paper-sgd"], weight_decay=1e-4, schedule=WarmupCosine(warmup_fraction=0.1))
    monkeypatch.setitem(RECIPES, "paper-sgd", edited)


CHANGED = ("recipe paper-sgd weight_decay: 0.0005 != 0.0001", "recipe paper-sgd schedule.warmup_fraction: 0.05 != 0.1")


def test_train_resume_refuses_a_run_whose_recipe_was_edited(tiny_cifar10, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = tiny_args(tiny_cifar10, out, "--recipe", "paper-sgd", epochs=1)
    assert main(args) == 0
    recorded = json.loads((out / "config.json").read_text())["recipe"]
    assert recorded["name"] == "paper-sgd" and recorded["peak_lr"] == 0.05  # tiny_args' --lr 0.05
    assert json.loads((out / "results.json").read_text())["recipe"] == recorded
    assert main([*args, "--resume"]) == 0 and "already finished" in capsys.readouterr().out

    _edit_paper_sgd(monkeypatch)
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(change in err[0] for change in CHANGED) and "--overwrite" in err[0], err
    (out / "results.json").unlink()  # unfinished: its config.json is compared
    assert main([*args, "--resume"]) == 2 and CHANGED[1] in capsys.readouterr().err
    (out / "config.json").unlink()  # then its checkpoint's recipe
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "its checkpoint was made with" in err and CHANGED[1] in err
    assert main([*args, "--overwrite"]) == 0  # retrains under the recipe as declared now
    assert json.loads((out / "config.json").read_text())["recipe"]["schedule"]["warmup_fraction"] == 0.1


def _recording_trainer(calls, *, record_recipe=True):
    """A stand-in for aacn.train.loop.run that writes a finished record (with the resolved recipe, as train does)."""
    def fake_run(config, *, resume=False, overwrite=False):
        calls.append(Path(config.out).name)
        fields = {k: v for k, v in config.flat().items() if k not in ("out", "epochs")}
        write_run(Path(config.out), epochs=config.epochs, **fields)
        if record_recipe:
            for name in ("config.json", "results.json"):
                path = Path(config.out) / name
                path.write_text(json.dumps({**json.loads(path.read_text()), "recipe": resolved_recipe(config)}))
        return RunDir(config.out).read_results()
    return fake_run


def test_reproduce_refuses_runs_whose_recipe_was_edited_and_reads_older_records_by_name(tmp_path, monkeypatch,
                                                                                        capsys):
    calls: list[str] = []
    out = tmp_path / "runs"
    monkeypatch.setattr(aacn.train.loop, "run", _recording_trainer(calls, record_recipe=False))
    reproduce("table1", scale="smoke", out=out, log=lambda *a: None)
    edited = dataclasses.replace(RECIPES["wrn-sgd"], schedule=StepDecay((30, 60, 90), 100, (0.2, 0.04, 0.008)))
    monkeypatch.setitem(RECIPES, "wrn-sgd", edited)
    calls.clear()
    reproduce("table1", scale="smoke", out=out, log=lambda *a: None)
    assert calls == []  # records without a resolved recipe are compared by its name, as before

    monkeypatch.undo()
    monkeypatch.setattr(aacn.train.loop, "run", _recording_trainer(calls))
    other = tmp_path / "recorded"
    reproduce("table1", scale="smoke", out=other, log=lambda *a: None)
    monkeypatch.setitem(RECIPES, "wrn-sgd", edited)
    calls.clear()
    with pytest.raises(UserError, match=r"wrn-28-10-1-8-width-seed0 holds a finished run with other settings "
                                        r"\(recipe wrn-sgd schedule.milestones: \[30, 60, 80\] != \[30, 60, 90\]\)"):
        reproduce("table1", scale="smoke", out=other, log=lambda *a: None)
    assert calls == []
    argv = ["reproduce", "table1", "--out", str(other)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recipe wrn-sgd schedule.milestones" in err[0] and "--overwrite" in err[0]
    assert main([*argv, "--overwrite"]) == 0 and len(calls) == 4


def test_sweep_refuses_points_whose_recipe_was_edited(tiny_cifar10, tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(aacn.train.loop, "run", _recording_trainer(calls))
    base = RunConfig(model="wrn-10-1", base_width=2, epochs=1, batch_size=50, subset=100, val_size=50,
                     recipe="paper-sgd", data_dir=str(tiny_cifar10), device="cpu", progress=False)
    grid = parse_grid(["seed=0,1"])
    sweep(base, grid, tmp_path / "sweep", log=lambda *a: None)
    assert calls == ["seed-0", "seed-1"]
    _edit_paper_sgd(monkeypatch)
    calls.clear()
    with pytest.raises(UserError, match=r"seed-0 holds a finished run with other settings \(recipe paper-sgd "
                                        r"weight_decay: 0.0005 != 0.0001; recipe paper-sgd schedule.warmup_fraction"):
        sweep(base, grid, tmp_path / "sweep", log=lambda *a: None)
    assert calls == []
    sweep(base, grid, tmp_path / "sweep", overwrite=True, log=lambda *a: None)
    assert calls == ["seed-0", "seed-1"]
