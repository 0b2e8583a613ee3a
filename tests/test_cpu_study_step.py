"""benchmarks/cpu_study_step.py: the cpu scale's attention rows, timed against plain and the SDPA floor."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from aacn.nn.cpu_kernel import cpu_kernel_unavailable_reason

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cpu_study_step  # noqa: E402


def test_it_times_the_study_rows_and_writes_ratios(tmp_path, capsys):
    reason = cpu_kernel_unavailable_reason()
    if reason is not None:
        pytest.skip(f"the CPU attention kernel does not build here: {reason}")
    assert list(cpu_study_step.study_configs()) == ["AA-ResNet-34 (1/4 width)", "AA-WRN-16-2"]
    out = tmp_path / "step.json"
    result = cpu_study_step.main(["--batch", "2", "--rounds", "1", "--out", str(out)])
    assert [row["model"] for row in result["rows"]] == ["AA-ResNet-34 (1/4 width)", "AA-WRN-16-2"]
    for row in result["rows"]:
        assert set(row["seconds"]) == {"plain", "aa-cpu", "aa-sdpa", "floor"} and row["vs_plain"]["plain"] == 1.0
        assert row["aa_cpu_vs_floor"] == row["seconds"]["aa-cpu"] / row["seconds"]["floor"] > 0
    assert json.loads(out.read_text())["benchmark"] == "cpu_study_step"
    assert "AA with the kernel / floor" in capsys.readouterr().out
