"""aacn reproduce: the presets' rows, and the skip/resume/report orchestration (with a stand-in trainer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_report import write_run

import aacn.train.loop
from aacn.cli import main
from aacn.config import RunConfig
from aacn.errors import UserError
from aacn.experiments.presets import SCALES, TABLES, preset, run_folder, run_slug, scale_settings
from aacn.experiments.reproduce import reproduce
from aacn.models import create_model
from aacn.train.rundir import RunDir

TABLE1 = ["ResNet-34", "ResNet-34 (no aug)", "WRN-28-10", "WRN-28-10 (no aug)"]
TABLE2 = ["ResNet-34", "AA-ResNet-34", "WRN-28-10", "AA-WRN-28-10", "AA-NRE-WRN-28-10"]


def test_rows_and_seed_major_order():
    runs = preset("table1", "full", seeds=2)
    assert [label for label, _ in runs] == TABLE1 * 2
    assert [cfg.seed for _, cfg in runs] == [0] * 4 + [1] * 4
    assert [cfg.augment for _, cfg in runs[:4]] == [True, False, True, False]
    smoke = [label.replace("ResNet-34", "ResNet-34 (1/8 width)").replace("WRN-28-10", "WRN-28-10 (1/8 width)")
             for label in TABLE2]
    assert [label for label, _ in preset("table2", "smoke")] == smoke  # the width that trains is in the name
    assert [label for label, _ in preset("paper-cifar100", "smoke")] == smoke[-3:-1]
    assert [label for label, _ in preset("table2", "cpu")] == [
        "ResNet-34 (1/4 width)", "AA-ResNet-34 (1/4 width)", "WRN-16-2", "AA-WRN-16-2", "AA-NRE-WRN-16-2"]
    assert len({run_slug(label, cfg.seed) for label, cfg in runs}) == 8


def test_full_scale_is_the_replications_protocol():
    by_model = {cfg.model: cfg for _, cfg in preset("table1", "full")}
    assert (by_model["resnet34"].epochs, by_model["resnet34"].recipe) == (220, "seed-adam")
    assert (by_model["wrn-28-10"].epochs, by_model["wrn-28-10"].recipe) == (60, "wrn-sgd")
    assert all(cfg.subset is None and cfg.base_width is None and cfg.normalize == "seed" for cfg in by_model.values())
    c100 = preset("paper-cifar100", "full")
    assert all(cfg.dataset == "cifar100" and cfg.epochs == 200 and cfg.recipe == "wrn-sgd" and
               cfg.normalize == "standard" and cfg.arch.num_classes == 100 for _, cfg in c100)
    assert (c100[0][1].attention, c100[1][1].attention, c100[1][1].relative) == ("none", "paper", True)


def test_fast_scale_shortens_wrn_only():
    by_model = {cfg.model: cfg for _, cfg in preset("table1", "fast")}
    assert (by_model["resnet34"].epochs, by_model["wrn-28-10"].epochs) == (30, 40)
    assert all(cfg.recipe == "fast" and cfg.batch_size == 512 for cfg in by_model.values())
    assert scale_settings("wrn-16-4", "fast")["epochs"] == 40  # the family, read from the registry


def test_shared_rows_have_one_folder_and_distinct_runs_distinct_folders():
    runs = [(run_folder(label, cfg), cfg) for table in TABLES for p in ("seed", "paper")
            for label, cfg in preset(table, "fast", placement=p)]
    folders = {folder: cfg for folder, cfg in runs}
    assert all(folders[folder] == cfg for folder, cfg in runs)  # one folder holds one experiment
    assert len(folders) == len({repr(cfg) for _, cfg in runs}) == 12  # 4 + 3 + 3 attention rows + 2 CIFAR-100
    t1 = {run_folder(label, cfg) for label, cfg in preset("table1", "fast")}
    t2 = {run_folder(label, cfg) for label, cfg in preset("table2", "fast")}
    assert t1 & t2 == {"resnet-34-seed0", "wrn-28-10-seed0"}  # Table 1's augmented rows are Table 2's plain rows


@pytest.mark.parametrize("placement", ["seed", "paper"])
def test_table2_placement_and_no_relative_row(placement):
    configs = [cfg for _, cfg in preset("table2", "full", placement=placement)]
    assert [c.attention for c in configs] == ["none", placement, "none", placement, placement]
    assert [c.relative for c in configs] == [True, True, True, True, False]
    assert all(cfg.augment for _, cfg in preset("table2", "full", placement=placement))


def test_attention_impl_goes_to_the_attention_rows_only():
    runs = preset("table2", "fast", attention_impl="chunked")
    assert [cfg.attention_impl for _, cfg in runs] == ["auto", "chunked", "auto", "chunked", "chunked"]
    assert [label for label, _ in runs] == [label for label, _ in preset("table2", "fast")]  # same rows
    with pytest.raises(ValueError, match="unknown attention impl 'flash'"):
        preset("table2", attention_impl="flash")


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("scale", SCALES)
def test_every_preset_run_is_valid(table, scale):
    for _, cfg in preset(table, scale, placement="paper", device="cpu"):
        with torch.device("meta"):
            create_model(cfg.arch)
        assert cfg.device == "cpu"
        if scale == "smoke":
            assert cfg.subset and cfg.base_width < 16
        if scale == "fast":
            assert cfg.recipe == "fast"


def test_bad_preset_arguments():
    with pytest.raises(ValueError, match="unknown table"):
        preset("table3")
    with pytest.raises(ValueError, match="unknown scale"):
        scale_settings("resnet34", "huge")
    with pytest.raises(ValueError, match="unknown option"):
        preset("table1", epochz=3)


def _fake_trainer(calls):
    def fake_run(config, *, resume=False, overwrite=False):
        calls.append((Path(config.out).name, resume))
        fields = {k: v for k, v in config.flat().items() if k not in ("out", "epochs")}
        write_run(Path(config.out), epochs=config.epochs, test_acc=60.0 + config.seed, **fields)
        return RunDir(config.out).read_results()
    return fake_run


def test_reproduce_skips_finished_resumes_started_and_reports(tmp_path, monkeypatch, capsys):
    calls: list[tuple[str, bool]] = []
    monkeypatch.setattr(aacn.train.loop, "run", _fake_trainer(calls))
    out = tmp_path / "t1"
    result = reproduce("table1", scale="smoke", seeds=2, out=out, log=lambda *a: None)
    assert len(calls) == 8 and not any(resume for _, resume in calls)
    assert [r.label for r in result.rows] == [label for label, _ in preset("table1", "smoke")]
    assert all(len(r.runs) == 2 for r in result.rows)
    assert "60.50 ± 0.71" in (out / "table1" / "report.md").read_text()  # seeds 0 and 1 -> 60 and 61
    assert "Params" in (out / "table1" / "report.md").read_text()  # every table says how big its models are

    (out / "wrn-28-10-1-8-width-seed1" / "results.json").unlink()  # as if it was interrupted
    calls.clear()
    reproduce("table1", scale="smoke", seeds=2, out=out, log=lambda *a: None)
    assert calls == [("wrn-28-10-1-8-width-seed1", True)]

    calls.clear()
    assert main(["reproduce", "table1", "--seeds", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert calls == [] and "| ResNet-34 (1/8 width) (no aug)" in printed
    assert str(out / "table1" / "report.md") in printed

    calls.clear()  # Table 2 shares its plain rows with Table 1: only its attention rows train
    result = reproduce("table2", scale="smoke", seeds=2, out=out, log=lambda *a: None)
    assert sorted(calls) == sorted((f"{row}-seed-placement-seed{s}", False) for s in (0, 1)
                                   for row in ("aa-resnet-34-1-8-width", "aa-wrn-28-10-1-8-width",
                                               "aa-nre-wrn-28-10-1-8-width"))
    assert [r.label for r in result.rows] == [label for label, _ in preset("table2", "smoke")]
    assert (out / "table2-seed" / "report.md").is_file()


def test_reproduce_refuses_stale_runs_unless_overwrite(tmp_path, monkeypatch, capsys):
    calls: list[tuple[str, bool]] = []
    monkeypatch.setattr(aacn.train.loop, "run", _fake_trainer(calls))
    out = tmp_path / "runs"
    reproduce("table1", scale="smoke", out=out, log=lambda *a: None)
    calls.clear()
    with pytest.raises(UserError, match=r"resnet-34-1-8-width-seed0 holds a finished run with other settings \(amp: "):
        reproduce("table1", scale="smoke", out=out, amp="none", log=lambda *a: None)
    assert calls == []  # refused before anything trained
    reproduce("table1", scale="smoke", out=out, device="cpu", progress=False, log=lambda *a: None)
    assert calls == []  # result-neutral options do not count

    argv = ["reproduce", "table1", "--out", str(out), "--amp", "none"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "amp: 'auto' != 'none'" in err[0] and "--overwrite" in err[0]
    assert main([*argv, "--overwrite"]) == 0
    assert len(calls) == 4


def test_interrupted_reproduce_says_run_the_same_command_again(tmp_path, monkeypatch):
    def interrupted(config, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(aacn.train.loop, "run", interrupted)
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        reproduce("table1", scale="smoke", out=tmp_path, log=lines.append)
    assert "run the same command again" in lines[-1] and "--resume" not in lines[-1]


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert main(["reproduce", "table1", "--placement", "paper", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--placement applies to table2 only" in err[0]
    for argv in (["reproduce", "table9"], ["reproduce", "table1", "--scale", "huge"],
                 ["reproduce", "table1", "--seeds", "0"], ["reproduce", "table2", "--attention-impl", "flash"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag,scale,device,expected", [
    (None, "fast", "cuda", True), (None, "fast", "cuda:1", True), (None, "fast", "cpu", False),
    (None, "smoke", "cuda", False), (None, "full", "cuda", False), (False, "fast", "cuda", False),
    (True, "smoke", "cpu", True), (None, "fast", "mps", False),
])
def test_reproduce_compiles_by_default_only_at_fast_scale_on_cuda(flag, scale, device, expected):
    from aacn.experiments.commands import compile_default

    assert compile_default(flag, scale, device) is expected


def test_cpu_scale_is_the_study_on_two_cores():
    runs = dict(preset("table2", "cpu", placement="paper"))
    assert all(cfg.subset is None and cfg.val_size == 5000 and cfg.epochs == 10 and cfg.recipe == "fast"
               and cfg.channels_last for cfg in runs.values())  # one recipe and epoch count for every row
    assert runs["WRN-16-2"].model == "wrn-16-2" and runs["ResNet-34 (1/4 width)"].base_width == 16
    aa = runs["AA-WRN-16-2"]
    assert (aa.attention, aa.kappa, aa.upsilon, aa.num_heads) == ("paper", 0.2, 0.1, 1)
    assert [layer["dk"] for layer in create_model(aa.arch).attention_layers] == [6, 6, 13, 13, 26, 26]  # kappa


def test_dry_run_prints_every_run_with_an_estimate_and_trains_nothing(tmp_path, tiny_cifar10, monkeypatch, capsys):
    calls: list[tuple[str, bool]] = []
    monkeypatch.setattr(aacn.train.loop, "run", _fake_trainer(calls))
    out = tmp_path / "runs"
    reproduce("table1", scale="smoke", out=out, log=lambda *a: None)  # every run finished
    (out / "wrn-28-10-1-8-width-seed0" / "results.json").unlink()  # one started, not finished
    calls.clear()
    argv = ["reproduce", "table1", "--out", str(out), "--data-dir", str(tiny_cifar10), "--dry-run"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert calls == [] and "dry run: nothing trains" in lines[0] and "load" in lines[0]
    assert "ResNet-34 (1/8 width), seed 0" in lines[1] and lines[1].endswith("finished (took 100 s)")
    assert "WRN-28-10 (1/8 width), seed 0" in lines[3] and "resumes, est. " in lines[3]
    total = next(line for line in lines if line.startswith("total:"))  # a busy machine adds a line after it
    assert total.startswith("total: 3 finished, 1 to train, est. ") and "longest: WRN-28-10" in total
    assert not (out / "table1" / "report.md").exists() or calls == []


def test_estimates_scale_with_the_epochs():
    from aacn.experiments.estimate import Estimator, estimate_seconds, format_duration

    estimator = Estimator(steps=1)
    (_, cfg), = [r for r in preset("table1", "smoke") if r[0] == "ResNet-34 (1/8 width)"]
    one, ten = (estimate_seconds(estimator, cfg.replace(epochs=e)) for e in (1, 10))
    assert len(estimator.cache) == 1 and 0 < one < ten  # timed once, then scaled
    assert ten - one == pytest.approx(9 * (estimate_seconds(estimator, cfg.replace(epochs=2)) - one))
    assert [format_duration(s) for s in (None, 45, 600, 9000)] == ["—", "45 s", "10 min", "2.5 h"]


def test_estimates_count_the_images_of_the_datasets_entry(monkeypatch):
    import dataclasses

    from aacn.data.registry import DATASETS
    from aacn.experiments.estimate import Estimator, estimate_seconds

    class OneSecondSteps(Estimator):  # 1 s per training step, evaluation free
        def per_step_and_image(self, config):
            return 1.0, 0.0

    cfg = RunConfig(model="wrn-10-1", epochs=2, batch_size=100, val_size=100)
    entry = DATASETS["cifar10"]
    monkeypatch.setitem(DATASETS, "cifar10", dataclasses.replace(entry, images=(1000, 100)))
    assert estimate_seconds(OneSecondSteps(), cfg) == 2 * 9  # (1000 - 100) // 100 steps per epoch
    monkeypatch.setitem(DATASETS, "cifar10", dataclasses.replace(entry, images=None))
    assert estimate_seconds(OneSecondSteps(), cfg) is None  # unknown counts: no estimate, not CIFAR's


def test_dry_run_prints_each_run_before_timing_the_next(tmp_path):
    from aacn.experiments.estimate import Estimator
    from aacn.experiments.reproduce import dry_run

    events: list[str] = []

    class Recording(Estimator):  # no real timing: records when each model would be timed
        def per_step_and_image(self, config):
            events.append(f"timed {config.model}")
            return 0.01, 0.0

    configs = [RunConfig(model=m, epochs=1, out=str(tmp_path / m)) for m in ("wrn-10-1", "wrn-10-2")]
    plans = dry_run(configs, {c.out: c.model for c in configs}, "t", log=events.append, estimator=Recording())
    assert [p.status for p in plans] == ["new", "new"]
    assert [e.split(",")[0].split(": ")[0] for e in events[:5]] == [
        "t", "timed wrn-10-1", "  1. wrn-10-1", "timed wrn-10-2", "  2. wrn-10-2"]
    assert events[5].startswith("total: 0 finished, 2 to train")


def test_estimates_on_a_busy_cpu_use_cpu_time_per_thread():
    import time

    from aacn.experiments.estimate import Estimator

    estimator = Estimator(steps=1)
    # sleeping stands for being descheduled: 50 ms of wall time, next to no CPU time
    seconds = estimator._best_time(lambda: time.sleep(0.05), torch.device("cpu"))
    assert estimator.busy and seconds < 0.03
