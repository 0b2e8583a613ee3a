"""aacn report: tables (markdown, CSV) and learning curves from run directories written by hand."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path

import pytest

from aacn.cli import main
from aacn.config import RunConfig
from aacn.errors import UserError
from aacn.experiments.labels import run_label
from aacn.experiments.report import report
from aacn.train.rundir import RunDir


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
    a = write_run(tmp_path / "a", **kw, kappa=0.1)
    b = write_run(tmp_path / "b", **kw, kappa=0.2)
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


# ------------------------------------------------------------------------------ provenance, data, bad JSON
PROV = {"aacn_version": "0.9.1", "git_commit": "0123456789abcdef0123", "git_dirty": True, "python": "3.11.9",
        "torch": "2.13.0", "cuda": "12.8", "cudnn": 91000, "device": "cuda", "device_name": "NVIDIA H200",
        "device_count": 2, "precision": "bf16", "compile": True, "compile_mode": "max-autotune"}


def data_record(label: str = "official", test: str = "a" * 64, differing: tuple[str, ...] = ()) -> dict:
    return {"label": label, "differing_files": list(differing),
            "fingerprint": {"train": "1" * 64, "val": "2" * 64, "test": test}}


def add_provenance(run: Path, provenance: dict | None = PROV, data: dict | None = None) -> Path:
    """Add the provenance and data keys to a record written by :func:`write_run` (as new runs hold them)."""
    for name in ("config.json", "results.json"):
        path = run / name
        record = json.loads(path.read_text())
        record["provenance"] = provenance
        record["data"] = data if data is not None else data_record()
        path.write_text(json.dumps(record))
    return run


def headers(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_rows_on_data_that_is_not_official_are_marked_with_a_footnote(tmp_path):
    official = add_provenance(write_run(tmp_path / "a", model="wrn-16-4"))
    jpeg = add_provenance(write_run(tmp_path / "b"), data=data_record("not official", "b" * 64, ("test_batch",)))
    old = write_run(tmp_path / "c", model="resnet18")  # written before records held data provenance
    result = report([official, jpeg, old], tmp_path / "o", allow_mixed_data=True, curves=False)
    lines = result.markdown.splitlines()
    row = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    assert "WRN-16-4" in row and "ResNet-34 †" in row and "ResNet-18 ‡" in row
    foot = next(line for line in lines if line.startswith("†"))
    assert "not official" in foot and "bbbbbbbbbbbb" in foot and "test_batch" in foot
    assert any(line.startswith("‡") and "does not say" in line for line in lines)
    assert "Data" in headers(lines[0])  # mixed data (allowed): each row says which
    assert "†" in (tmp_path / "o" / "report.md").read_text()


def test_runs_on_different_data_are_refused_unless_allowed(tmp_path, capsys):
    a = add_provenance(write_run(tmp_path / "a"))
    b = add_provenance(write_run(tmp_path / "b", seed=1), data=data_record("official", "c" * 64))
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--allow-mixed-data" in err[0] and str(a) in err[0] and "cccccccccccc" in err[0]
    assert not (tmp_path / "o" / "report.md").exists()
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "o"), "--allow-mixed-data"]) == 0
    same = add_provenance(write_run(tmp_path / "c", seed=2))
    old = write_run(tmp_path / "d", seed=3)  # unknown data cannot conflict: it is marked instead
    result = report([a, same, old], tmp_path / "o2", curves=False)
    assert [len(r.runs) for r in result.rows] == [3] and "Data" not in headers(result.markdown.splitlines()[0])


def test_extended_shows_each_runs_provenance_and_unknown_for_old_records(tmp_path, capsys):
    new = add_provenance(write_run(tmp_path / "new"))
    old = write_run(tmp_path / "old", model="wrn-16-4")
    assert main(["report", str(new), str(old), "--out", str(tmp_path / "o"), "--extended"]) == 0
    out = capsys.readouterr().out
    prov = next(line for line in out.splitlines() if str(new) in line)
    for text in ("0.9.1", "0123456789ab +dirty", "2.13.0", "12.8", "91000", "NVIDIA H200 x2", "bf16",
                 "on (max-autotune)", "official, test aaaaaaaaaaaa"):
        assert text in prov, text
    old_line = next(line for line in out.splitlines() if str(old) in line)
    assert old_line.count("unknown") == len(PROV_HEADERS)
    assert "## Provenance" in (tmp_path / "o" / "report.md").read_text()
    main(["report", str(new), "--out", str(tmp_path / "o")])
    assert "0.9.1" not in capsys.readouterr().out  # provenance only with --extended


PROV_HEADERS = ("aacn", "Commit", "torch", "CUDA", "cuDNN", "Device", "Precision", "Compile", "Data")


def test_anchor_records_get_their_own_row(tmp_path):
    run = add_provenance(write_run(tmp_path / "ours"))
    anchor = tmp_path / "airbench94-seed0"
    anchor.mkdir()
    (anchor / "config.json").write_text(json.dumps({
        "kind": "anchor", "config": {"anchor": "airbench94", "dataset": "cifar10", "seed": 0, "tta": True,
                                     "train_images": 50000}, "provenance": PROV, "data": data_record()}))
    (anchor / "results.json").write_text(json.dumps({
        "kind": "anchor", "anchor": "airbench94", "test_acc": 93.5, "test_acc_tta": 94.0, "train_time_s": 3.5,
        "wall_time_s": 9.0, "provenance": PROV, "data": data_record()}))
    result = report([run, anchor], tmp_path / "o")
    assert [r.label for r in result.rows] == ["ResNet-34", "airbench94 (anchor)"]
    assert "Test acc. TTA (%)" in result.markdown and "94.00" in result.markdown
    assert "anchor airbench94 on cifar10" in (tmp_path / "o" / "report.md").read_text()


def test_summary_numbers_come_from_results_json(tmp_path):
    run = write_run(tmp_path / "r", epochs=3)
    results = json.loads((run / "results.json").read_text())
    results.update(train_time_s=123.0, images_per_s=777.0, peak_mem_bytes=5 * 2**20)
    del results["val_acc"]  # e.g. --val-size 0 records hold null; older ones may lack the key
    (run / "results.json").write_text(json.dumps(results))
    stats = report([run], tmp_path / "o", curves=False).rows[0].stats
    assert stats["train_time_s"].mean == 123.0 and stats["images_per_s"].mean == 777.0
    assert stats["peak_mem_bytes"].mean == 5 * 2**20 and stats["val_acc"].mean is None


@pytest.mark.parametrize("file, content, words", [
    ("results.json", [1, 2, 3], ["results.json", "a list"]),
    ("config.json", {"config": "resnet34", "info": {}}, ["config.json", "'config'", "a string"]),
    ("results.json", "patch", ["results.json", "test_acc", "'81.5'"]),
    ("config.json", {"config": {"model": "resnet34", "model_kwargs": [1]}, "info": {}}, ["config.json"]),
    ("metrics.jsonl", None, ["metrics.jsonl", "line 2"]),
    ("results.json", "{not json", ["results.json", "not valid JSON"]),
])
def test_wrong_structure_json_is_one_line_naming_the_file(tmp_path, capsys, file, content, words):
    run = write_run(tmp_path / "r")
    path = run / file
    if content == "patch":
        results = json.loads(path.read_text())
        results["test_acc"] = "81.5"
        path.write_text(json.dumps(results))
    elif file == "metrics.jsonl":
        path.write_text('{"epoch": 1, "train_acc": 10.0}\n["not", "an", "object"]\n')
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert main(["report", str(run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and all(w in err[0] for w in words), err


def test_bad_out_is_refused_before_any_work(tmp_path, capsys):
    run = write_run(tmp_path / "r")
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        cases = [afile, afile / "below"]
        if not os.access(readonly, os.W_OK):  # root may write anywhere
            cases += [readonly, readonly / "sub"]
        for out in cases:
            assert main(["report", str(run), "--out", str(out)]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "--out" in err[0] and str(out) in err[0], err
    finally:
        readonly.chmod(0o700)
    broken = write_run(tmp_path / "broken")
    (broken / "results.json").write_text("[]")
    assert main(["report", str(broken), "--out", str(afile)]) == 2  # the output is checked first
    assert "--out" in capsys.readouterr().err


def test_nan_in_an_old_record_reads_as_not_measured(tmp_path):
    run = write_run(tmp_path / "r")
    text = (run / "results.json").read_text().replace('"test_acc": 80.0', '"test_acc": NaN')
    (run / "results.json").write_text(text)
    result = report([run], tmp_path / "o", curves=False)
    assert result.rows[0].stats["test_acc"].mean is None and not re.search(r"\bnan\b", result.markdown.lower())
