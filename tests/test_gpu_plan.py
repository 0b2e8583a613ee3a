"""benchmarks/gpu_plan.py: the plan's order and estimates, the budget, records, and a second window's skips.

The steps themselves need a GPU; a fake runner (and a fake clock) stands in for them here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_plan  # noqa: E402
from gpu_plan import ESTIMATES, build_plan, copy_record, execute, main, perform_row, state  # noqa: E402

from aacn.experiments.presets import preset  # noqa: E402


class Clock:
    """A clock that moves only when a step "runs"."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_runner(clock: Clock, ran: list, fail: frozenset = frozenset()):
    """Writes each step's record as the real step would (a row: the three record files), taking its estimate."""
    def run(step):
        ran.append(step.name)
        clock.now += step.estimate_s
        if step.name in fail:
            raise RuntimeError("exit code 1")
        if step.kind == "row":
            folder = step.record.parent
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.json").write_text(json.dumps({"config": step.config.to_dict()}))
            (folder / "metrics.jsonl").write_text("")
        step.record.parent.mkdir(parents=True, exist_ok=True)
        step.record.write_text("{}")

    return run


def test_plan_order_records_shared_rows_and_estimates(tmp_path):
    plan = build_plan(tmp_path / "results", data_dir="/data", scratch=tmp_path / "scratch")
    names = [s.name for s in plan]
    assert names[:4] == ["cuda_check", "aa_step_time", "anchor/airbench94", "anchor/airbench96"]
    assert plan[0].record == tmp_path / "results" / "checks" / "cuda_check.json"
    assert plan[1].record == tmp_path / "results" / "checks" / "aa_step_time.json"
    assert plan[2].record == tmp_path / "results" / "anchors" / "airbench94-seed0" / "results.json"
    rows = [s for s in plan if s.kind == "row"]
    assert len(names) == len(set(names)) and all(s.record.parent.parent == tmp_path / "results" / "fast"
                                                 for s in rows)
    # every fast run of the three tables is planned once, rows shared by Table 1 and Table 2 included
    configs = [c for table in ("table1", "table2", "paper-cifar100") for _, c in preset(table, "fast")]
    distinct = []
    for c in configs:
        if not any(not c.differences(d) for d in distinct):
            distinct.append(c)
    assert len(rows) == len(distinct) < len(configs)
    assert all(any(not c.differences(s.config) for s in rows) for c in configs)
    assert [s.name for s in rows if "cifar100" in s.name] == ["fast/wrn-28-10-cifar100-seed0",
                                                             "fast/aa-wrn-28-10-cifar100-seed0"]
    for step in rows:  # rows train in the scratch folder; estimates scale with epochs
        assert Path(step.config.out) == tmp_path / "scratch" / step.record.parent.name
        family = "wrn" if step.config.model.startswith("wrn") else "resnet"
        plain = ESTIMATES["start_s"] + ESTIMATES["compile_s"] + step.config.epochs * ESTIMATES["epoch_s"][family]
        assert step.estimate_s == pytest.approx(plain) if "/aa-" not in step.name else step.estimate_s > plain


def test_steps_that_do_not_fit_are_not_started_and_a_second_window_goes_on(tmp_path):
    plan = build_plan(tmp_path / "results", scratch=tmp_path / "scratch")
    by_name = {s.name: s for s in plan}
    budget = by_name["cuda_check"].estimate_s + by_name["anchor/airbench94"].estimate_s + 1
    clock, ran = Clock(), []
    first = execute(plan, budget, fake_runner(clock, ran), clock=clock, log=lambda _: None)
    # the step-time check does not fit after the CUDA check; airbench94, later in the plan, still does
    assert ran == ["cuda_check", "anchor/airbench94"]
    assert first["aa_step_time"] == "later" and first["anchor/airbench94"] == "done"
    assert all(first[s.name] == "later" for s in plan if s.name not in ran)
    assert by_name["cuda_check"].record.is_file() and by_name["anchor/airbench94"].record.is_file()
    assert not by_name["aa_step_time"].record.exists()

    clock2, ran2 = Clock(), []
    second = execute(plan, 10_000.0, fake_runner(clock2, ran2), clock=clock2, log=lambda _: None)
    assert "cuda_check" not in ran2 and "anchor/airbench94" not in ran2
    assert second["cuda_check"] == second["anchor/airbench94"] == "recorded"
    assert ran2[:2] == ["aa_step_time", "anchor/airbench96"]
    assert sum(s.estimate_s for s in plan if s.name in ran2) <= 10_000.0
    assert all(state(by_name[name]) == "recorded" for name in ran2)


def test_a_failed_step_is_reported_and_the_window_goes_on(tmp_path):
    plan = build_plan(tmp_path / "results", scratch=tmp_path / "scratch")[:4]
    clock, ran = Clock(), []
    outcome = execute(plan, 10_000.0, fake_runner(clock, ran, fail=frozenset({"aa_step_time"})), clock=clock,
                      log=lambda _: None)
    assert outcome["aa_step_time"] == "failed: exit code 1" and not plan[1].record.exists()
    assert outcome["anchor/airbench96"] == "done"


def test_a_row_recorded_with_another_config_is_stale_and_runs_again(tmp_path):
    plan = build_plan(tmp_path / "results", scratch=tmp_path / "scratch")
    row = next(s for s in plan if s.kind == "row")
    clock, ran = Clock(), []
    fake_runner(clock, ran)(row)
    assert state(row) == "recorded"
    old = {**row.config.to_dict(), "seed": 5}
    (row.record.parent / "config.json").write_text(json.dumps({"config": old}))
    assert state(row).startswith("stale: ") and "seed" in state(row)
    outcome = execute([row], 10_000.0, fake_runner(clock, ran), clock=clock, log=lambda _: None)
    assert outcome[row.name] == "done" and ran == [row.name, row.name] and state(row) == "recorded"


def test_a_row_copies_its_record_files_and_never_checkpoints(tmp_path):
    plan = build_plan(tmp_path / "results", scratch=tmp_path / "scratch")
    row = next(s for s in plan if s.kind == "row")

    def train(config):  # what a finished run leaves in its folder
        out = Path(config.out)
        (out / "checkpoints").mkdir(parents=True)
        (out / "checkpoints" / "epoch-0001.pt").write_bytes(b"weights")
        (out / "config.json").write_text(json.dumps({"config": config.to_dict()}))
        (out / "metrics.jsonl").write_text('{"epoch": 1}\n')
        (out / "results.json").write_text('{"test_acc": 50.0}')

    perform_row(row, train=train)
    assert sorted(p.name for p in row.record.parent.iterdir()) == ["config.json", "metrics.jsonl", "results.json"]
    assert json.loads(row.record.read_text()) == {"test_acc": 50.0} and state(row) == "recorded"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="did not finish"):
        copy_record(unfinished, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path, monkeypatch):
    lines: list[str] = []
    monkeypatch.setattr(gpu_plan, "execute", lambda *a, **k: pytest.fail("a dry run started a step"))
    assert main(["--budget-s", "600", "--results", str(tmp_path / "r"), "--dry-run"], log=lines.append) == {}
    text = "\n".join(lines)
    assert "| 1 | cuda_check |" in text and "anchor/airbench96" in text and "fast/wrn-28-10-seed0" in text
    assert "budget 10.0 min" in text and not (tmp_path / "r").exists()


def test_main_with_an_injected_runner_runs_what_fits(tmp_path):
    ran: list[str] = []

    def runner(step):
        ran.append(step.name)
        step.record.parent.mkdir(parents=True, exist_ok=True)
        step.record.write_text("{}")

    budget = ESTIMATES["cuda_check_s"] + 5.0
    outcome = main(["--budget-s", str(budget), "--results", str(tmp_path / "r")], runner=runner, log=lambda _: None)
    assert ran[0] == "cuda_check" and outcome["cuda_check"] == "done" and outcome["aa_step_time"] == "later"
    # the budget is spent by the time that passes: these instant steps leave it for airbench94, not for more
    assert ran == ["cuda_check", "anchor/airbench94"]
    assert (tmp_path / "r" / "checks" / "cuda_check.json").is_file()


def test_the_subprocess_runner_passes_the_plan_arguments_and_reports_a_failed_step(tmp_path, capfd):
    import argparse
    import dataclasses

    args = argparse.Namespace(results=tmp_path / "r", scratch=tmp_path / "s", data_dir=str(tmp_path))
    step = dataclasses.replace(build_plan(tmp_path / "r")[0], name="no-such-step")
    with pytest.raises(RuntimeError, match="exit code 2"):
        gpu_plan.subprocess_runner(args)(step)
    assert "no step 'no-such-step' in the plan" in capfd.readouterr().err  # its arguments parsed, its plan built
    assert not (tmp_path / "r").exists()
