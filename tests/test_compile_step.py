"""benchmarks/compile_step.py: its defaults per device, the modes it skips on CPU, and one tiny eager case."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compile_step  # noqa: E402


def test_cpu_defaults_and_reduce_overhead_is_skipped_with_a_note():
    args = compile_step.parse_args(["--device", "cpu"])
    assert args.model == "wrn-28-10" and args.base_width == compile_step.DEFAULTS["base_width"][0]
    assert args.modes == ["eager", "default"] and args.impls == ["auto"] and args.amp == "none"
    todo, notes = compile_step.cases(["auto", "chunked"], ["eager", "default", "reduce-overhead"],
                                     torch.device("cpu"))
    assert todo == [("eager", None), ("eager", "auto"), ("eager", "chunked"), ("default", None),
                    ("default", "auto"), ("default", "chunked")]
    assert notes == ["reduce-overhead: skipped, it captures CUDA graphs (CUDA only)"]
    with pytest.raises(SystemExit):
        compile_step.parse_args(["--device", "cpu", "--steps", "0"])


def test_one_tiny_run_prints_the_table_with_ratios(tmp_path, capsys):
    out = tmp_path / "compile_step.json"
    result = compile_step.main(["--device", "cpu", "--model", "wrn-10-1", "--base-width", "4", "--batch", "1",
                                "--steps", "1", "--repeats", "1", "--warmup", "1", "--modes", "eager",
                                "--out", str(out)])
    rows = result["rows"]
    assert [(r["mode"], r["impl"]) for r in rows] == [("eager", None), ("eager", "auto")] and out.is_file()
    assert rows[0]["aa_over_plain"] == rows[0]["over_eager"] == rows[1]["over_eager"] == 1.0
    assert rows[1]["aa_over_plain"] == rows[1]["step_ms"] / rows[0]["step_ms"]
    assert "| wrn-10-1 | 4 | paper | auto | eager |" in capsys.readouterr().out
