"""aacn report: tables (markdown, CSV) and learning curves from run directories written by hand."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest

from aacn.cli import main
from aacn.config import RunConfig
from aacn.errors import UserError
from aacn.experiments.report import report, run_label
from aacn.train.records import RunDir


def write_run(path: Path, *, finished: bool = True, epochs: int = 3, test_acc: float = 80.0,
              params: int = 1_000_000, **config) -> Path:
    """A run directory as ``aacn train`` leaves it (config, metrics, results), without training."""
    cfg = RunConfig(out=str(path), epochs=epochs, **config)
    run = RunDir(path)
    run.write_config(cfg.to_dict(), {"params": params, "attention_layers": [], "world_size": 1})
    rows = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 30.0 + 10 * e, "val_loss": 2.2 / e,
             "val_acc": 25.0 + 10 * e, "lr": 0.1, "epoch_time_s": 10.0, "images_per_s": 100.0 + e,
             "peak_mem_bytes": 2**20 * (100 + e)} for e in range(1, epochs + 1)]
    run.write_metrics(rows)
    if finished:
        run.write_results({
            "model": cfg.model, "dataset": cfg.dataset, "epochs": epochs, "train_acc": test_acc + 10,
            "val_acc": test_acc + 1, "test_acc": test_acc, "test_top5": test_acc + 15, "train_loss": 0.5,
            "val_loss": 0.7, "test_loss": 0.7, "wall_time_s": 40.0, "train_time_s": 10.0 * epochs,
            "params": params, "flops_per_image": 1e6, "peak_mem_bytes": 2**20 * (100 + epochs),
            "images_per_s": 102.0, "attention_layers": [], "config": cfg.to_dict(),
        })
    return path


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_seeds_share_a_row_with_mean_and_std(tmp_path):
    a = write_run(tmp_path / "r0", seed=0, test_acc=80.0)
    b = write_run(tmp_path / "r1", seed=1, test_acc=82.0)
    c = write_run(tmp_path / "w0", model="wrn-16-4", augment=False, test_acc=70.0, params=2_750_000)
    result = report([a, b, c], tmp_path / "rep")
    assert [r.label for r in result.rows] == ["ResNet-34", "WRN-16-4 (no aug)"]
    md = (tmp_path / "rep" / "report.md").read_text()
    std = math.sqrt(2.0)  # sample std of 80 and 82
    assert f"81.00 ± {std:.2f}" in md  # test accuracy
    assert f"91.00 ± {std:.2f}" in md  # train accuracy
    assert " 70.00 |" in md and "2.75M" in md
    rows = _csv(tmp_path / "rep" / "report.csv")
    assert [r["label"] for r in rows] == ["ResNet-34", "WRN-16-4 (no aug)"]
    assert rows[0]["runs"] == "2" and rows[0]["seeds"] == "0 1"
    assert float(rows[0]["test_acc_mean"]) == pytest.approx(81.0)
    assert float(rows[0]["test_acc_std"]) == pytest.approx(std)
    assert rows[1]["test_acc_std"] == ""
    png = tmp_path / "rep" / "learning_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Test top-5" not in md  # CIFAR-10 only


def test_default_out_is_common_parent_and_cifar100_adds_top5(tmp_path):
    run = write_run(tmp_path / "runs" / "a", dataset="cifar100")
    result = report([run], extended=False)
    md = (tmp_path / "runs" / "report.md").read_text()
    assert "Test top-5 (%)" in md and "95.00" in md
    assert "Params" not in result.markdown  # extended columns off


def test_same_label_rows_are_told_apart_by_their_differences(tmp_path):
    kw = {"attention": "seed", "num_heads": 2}
    a = write_run(tmp_path / "a", model_kwargs={**kw, "kappa": 0.1})
    b = write_run(tmp_path / "b", model_kwargs={**kw, "kappa": 0.2})
    labels = [r.label for r in report([a, b], tmp_path).rows]
    assert labels == ["AA-ResNet-34 [kappa=0.1]", "AA-ResNet-34 [kappa=0.2]"]


def test_labels():
    assert run_label({"model": "wrn-28-10", "model_kwargs": {"attention": "paper", "relative": False}}) == \
        "AA-NRE-WRN-28-10"
    assert run_label({"model": "resnet34", "augment": False, "model_kwargs": {"attention": "none"}}) == \
        "ResNet-34 (no aug)"


def test_unfinished_runs_are_refused_by_name_or_shown_as_partial(tmp_path):
    done = write_run(tmp_path / "done")
    todo = write_run(tmp_path / "todo", finished=False, seed=3, model="wrn-16-4")
    with pytest.raises(UserError, match="unfinished") as err:
        report([done, todo], tmp_path)
    assert str(todo) in str(err.value) and str(done) not in str(err.value)
    result = report([done, todo], tmp_path, partial=True)
    assert "WRN-16-4 *" in result.markdown and "unfinished" in result.markdown
    partial_row = result.rows[1]
    assert partial_row.stats["val_acc"].mean == 55.0 and partial_row.stats["test_acc"].mean is None


def test_cli_report_prints_table_and_bad_input_exits_2(tmp_path, capsys):
    run = write_run(tmp_path / "r")
    assert main(["report", str(run), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "| ResNet-34" in out and (tmp_path / "o" / "report.csv").is_file()

    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "missing"):
        assert main(["report", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(bad) in err
