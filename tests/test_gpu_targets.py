"""benchmarks/gpu_targets.py: the summary table's verdicts (its runs are real ``aacn train`` subprocesses)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gpu_targets import fast_epochs, rows_of  # noqa: E402

from aacn.experiments.presets import preset  # noqa: E402


def test_verdicts_ratios_and_failures():
    result = {
        "plain": {"epoch_time_s": 4.0, "test_acc": 10.0, "wall_time_s": 9.0},
        "attention": {"auto": {"epoch_time_s": 18.0}, "triton": {"epoch_time_s": 5.6},
                      "chunked": {"error": "aacn train: error: out of memory"}},
        "accuracy": {"epoch_time_s": 4.0, "test_acc": 95.2, "wall_time_s": 610.0},
        "scaling": {"gpus": 8, "efficiency": 0.93},
    }
    rows = {row[0]: row[2:] for row in rows_of(result)}
    assert rows["plain epoch"] == ("4.00 s", "yes")
    assert rows["AA paper / plain epoch (auto)"] == ("4.50x (18.00 s)", "**no**")
    assert rows["AA paper / plain epoch (triton)"] == ("1.40x (5.60 s)", "yes")
    assert rows["AA paper / plain epoch (chunked)"] == ("failed: aacn train: error: out of memory", "-")
    assert rows["fast accuracy"] == ("95.20% in 610 s", "**no**")  # accurate enough, 10 s too slow
    assert rows["8-GPU scaling"] == ("93.0%", "yes")


def test_a_failed_plain_run_fails_every_ratio_and_one_gpu_is_not_measured():
    rows = rows_of({"plain": {"error": "boom"}, "attention": {"auto": {"epoch_time_s": 1.0}}, "scaling": None})
    assert [r[3] for r in rows] == ["-", "-", "-"]
    assert rows[1][2] == "failed: plain run failed"
    assert rows[2][2].startswith("not measured")


def test_the_accuracy_run_takes_the_fast_scales_epochs_of_the_model():
    epochs = {config.model: config.epochs for _, config in preset("table1", "fast")}
    assert fast_epochs("wrn-28-10") == epochs["wrn-28-10"] and fast_epochs("resnet34") == epochs["resnet34"]
    assert fast_epochs("wrn-10-2") is None
