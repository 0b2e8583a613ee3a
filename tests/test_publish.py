"""aacn report --publish: docs/RESULTS.md generated from the records under results/, and kept up to date."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aacn.cli import main
from aacn.config import RunConfig
from aacn.errors import UserError
from aacn.experiments.presets import preset, run_slug
from aacn.experiments.publish import publish
from aacn.train.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]

PROV = {"aacn_version": "0.9.1", "git_commit": "fedcba9876543210", "git_dirty": False, "torch": "2.13.0",
        "cuda": None, "cudnn": None, "device": "cpu", "device_name": "Some CPU", "device_count": 1,
        "precision": "fp32", "compile": False}


def data(label: str = "official", test: str = "a" * 64) -> dict:
    return {"label": label, "differing_files": [] if label == "official" else ["test_batch"],
            "fingerprint": {"train": "1" * 64, "val": "2" * 64, "test": test}}


def write_record(path: Path, cfg: RunConfig, test_acc: float, *, data_record: dict | None = None) -> Path:
    """A finished run's record as 'aacn train' writes it (config, metrics, results), without training."""
    config = cfg.replace(out=str(path)).to_dict()
    record = {"provenance": PROV, "data": data_record or data()}
    run = RunDir(path)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"config": config, "info": {"params": 1234}, **record}))
    run.write_metrics([{"epoch": e, "train_loss": 2.0 / e, "train_acc": 20.0 * e, "val_loss": 2.1 / e,
                        "val_acc": 19.0 * e, "epoch_time_s": 1.0} for e in (1, 2)])
    (path / "results.json").write_text(json.dumps({
        "train_acc": 40.0, "val_acc": 38.0, "test_acc": test_acc, "test_top5": None, "train_time_s": 2.0,
        "wall_time_s": 3.0, "params": 1234, "config": config, **record}))
    return path


def write_anchor(path: Path, test_acc: float = 93.0, tta: float = 94.0) -> Path:
    path.mkdir(parents=True)
    config = {"anchor": "airbench94", "dataset": "cifar10", "seed": 0, "tta": True, "train_images": 50000}
    record = {"provenance": PROV, "data": data()}
    (path / "config.json").write_text(json.dumps({"kind": "anchor", "config": config, **record}))
    (path / "results.json").write_text(json.dumps({
        "kind": "anchor", "anchor": "airbench94", "test_acc": test_acc, "test_acc_tta": tta, "train_time_s": 5.0,
        "wall_time_s": 6.0, **record}))
    return path


def row(md: str, section: str, label: str) -> str:
    """The table line of ``label`` in the section whose heading contains ``section``."""
    for part in md.split("\n#")[1:]:
        heading, _, body = part.partition("\n")
        lines = [line for line in body.splitlines() if line.startswith(f"| {label} ")]
        if section in heading and lines:
            return lines[0]
    raise AssertionError(f"no row {label!r} under a heading with {section!r}")


@pytest.fixture
def results(tmp_path) -> Path:
    """results/ with two seeds of smoke ResNet-34, smoke AA-ResNet-34 (seed placement, an impl set), one run
    that matches no row, an anchor and hand-written notes."""
    root = tmp_path / "results"
    rows = dict(preset("table2", "smoke"))
    resnet, aa = rows["ResNet-34 (1/8 width)"], rows["AA-ResNet-34 (1/8 width)"]
    write_record(root / "smoke" / run_slug("ResNet-34", 0), resnet, 50.0)
    write_record(root / "smoke" / run_slug("ResNet-34", 1), resnet.replace(seed=1), 52.0)
    aa_sdpa = aa.replace(attention_impl="sdpa", device="cpu")
    write_record(root / "smoke" / "aa-resnet-34-seed0", aa_sdpa, 55.5)
    write_record(root / "smoke" / "resnet-34-3-epochs", resnet.replace(epochs=3), 44.0)
    write_anchor(root / "anchors" / "airbench94-seed0")
    (root / "NOTES.md").write_text("Measured by hand: **AA/plain step time 1.9x**.\n")
    return root


def test_publish_writes_every_table_with_rows_anchors_curves_and_provenance(results, tmp_path):
    out = tmp_path / "docs" / "RESULTS.md"
    result = publish(results, out)
    md = out.read_text()
    assert md == result.markdown
    t1, t2 = "Table 1: data augmentation", "Table 2: attention augmentation, seed placement"
    assert "| 2 |" in row(md, t1, "ResNet-34 (1/8 width)").replace(" ", "").replace("|2|", "| 2 |")
    assert "51.00 ± 1.41" in row(md, t1, "ResNet-34 (1/8 width)")  # seeds 0 and 1 averaged
    assert "51.00 ± 1.41" in row(md, t2, "ResNet-34 (1/8 width)")  # the same runs serve both tables
    assert "not run yet" in row(md, t1, "WRN-28-10 (1/8 width) (no aug)")
    aa = row(md, t2, "AA-ResNet-34 (1/8 width)")
    assert "55.50" in aa and "official" in aa and "Some CPU" in aa and "fedcba987654" in aa
    assert "not run yet" in row(md, "paper placement", "AA-ResNet-34 (1/8 width)")
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]  # the answer first, before any table
    assert "**`smoke` scale** (5,000 training images" in summary and md.index("## Summary") < md.index("| Model")
    # the table's one comparison is its subject, so it is not named twice
    assert ("- Table 2: attention augmentation, seed placement (CIFAR-10): AA-ResNet-34 (1/8 width) − ResNet-34 "
            "(1/8 width): +5.50 points from one seed" in summary)
    assert "points below it" not in summary  # a pipeline check is not set against the anchor
    anchor = row(md, t1, "airbench94 (anchor)")
    assert "93.00" in anchor and "94.00" in anchor
    assert "airbench94 (anchor)" not in md.split("CIFAR-100")[1].split("## Anchors")[0]  # CIFAR-10 anchor only
    assert "44.00" in row(md, "Other runs at this scale", "ResNet-34 (1/8 width)")  # a run matching no row is shown
    assert "Nothing is published at the `fast` scale yet" in md and "Nothing is published at the `full`" in md
    assert "smoke/resnet-34-seed1" in md.split("## Provenance of every run")[1]
    assert md.rstrip().endswith("Measured by hand: **AA/plain step time 1.9x**.")
    assert "(results/smoke-table1.png)" in md and "(results/smoke-table2-seed.png)" in md
    png = tmp_path / "docs" / "results" / "smoke-table1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png in result.files
    assert result.files[-1] == out


def test_publishing_is_deterministic(results, tmp_path):
    first = publish(results, tmp_path / "a" / "RESULTS.md").markdown
    copy = tmp_path / "elsewhere" / "results"
    shutil.copytree(results, copy)
    assert publish(copy, tmp_path / "b" / "RESULTS.md").markdown == first
    assert str(tmp_path) not in first


def test_without_records_every_table_says_nothing_is_published(tmp_path):
    (tmp_path / "results").mkdir()
    md = publish(tmp_path / "results", tmp_path / "RESULTS.md").markdown
    for scale in ("demo", "smoke", "cpu", "fast", "full"):
        assert f"Nothing is published at the `{scale}` scale yet" in md
    assert md.count("not run yet") == 20  # 4 tables x 5 scales
    assert "No anchor is published yet" in md and "No run is published" in md
    assert not (tmp_path / "results" / "results").exists()  # no figures, no figure folder


@pytest.mark.parametrize("damage, words", [
    (lambda r: (r / "smoke" / "resnet-34-seed0" / "results.json").write_text("[1, 2, 3]"),
     ["resnet-34-seed0/results.json", "a list"]),
    (lambda r: (r / "smoke" / "resnet-34-seed0" / "config.json").write_text('{"config": "x"}'),
     ["resnet-34-seed0/config.json", "'config'"]),
    (lambda r: (r / "smoke" / "resnet-34-seed1" / "results.json").unlink(), ["resnet-34-seed1", "finished"]),
    (lambda r: (r / "cifar").mkdir(), ["cifar", "scale"]),
    (lambda r: (r / "smoke" / "empty").mkdir(), ["empty", "no config.json"]),
    (lambda r: shutil.move(r / "anchors" / "airbench94-seed0", r / "smoke"), ["airbench94-seed0", "anchors/"]),
])
def test_bad_records_are_one_line_and_nothing_is_written(results, tmp_path, capsys, damage, words):
    damage(results)
    out = tmp_path / "docs" / "RESULTS.md"
    assert main(["report", "--publish", str(results), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert not out.exists() and not (tmp_path / "docs" / "results").exists()


def test_mixed_data_in_one_table_is_refused_unless_allowed(results, tmp_path):
    cfg = dict(preset("table1", "smoke"))["WRN-28-10 (1/8 width)"]
    write_record(results / "smoke" / "wrn-28-10-seed0", cfg, 60.0, data_record=data("not official", "b" * 64))
    with pytest.raises(UserError, match="--allow-mixed-data") as err:
        publish(results, tmp_path / "RESULTS.md")
    assert "table1" in str(err.value) and "bbbbbbbbbbbb" in str(err.value)
    md = publish(results, tmp_path / "RESULTS.md", allow_mixed_data=True).markdown
    assert "WRN-28-10 (1/8 width) †" in md and "not official" in row(md, "Table 1", "WRN-28-10 (1/8 width) †")


def test_cli_publish_and_its_misuse(results, tmp_path, capsys):
    out = tmp_path / "RESULTS.md"
    assert main(["report", "--publish", str(results), str(out)]) == 0
    assert str(out) in capsys.readouterr().out and out.is_file()
    run = results / "smoke" / "resnet-34-seed0"
    for argv in (["report", str(run), "--publish", str(results), str(out)], ["report"],
                 ["report", "--publish", str(tmp_path / "missing"), str(out)],
                 ["report", "--publish", str(results), str(tmp_path)]):
        assert main(argv) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1, argv


def test_committed_results_page_matches_the_committed_records(tmp_path):
    """docs/RESULTS.md is what 'aacn report --publish results docs/RESULTS.md' makes of results/ (the markdown
    only: PNG bytes depend on the matplotlib version). Regenerate it after changing results/."""
    committed = (REPO / "docs" / "RESULTS.md").read_text()
    assert publish(REPO / "results", tmp_path / "RESULTS.md").markdown == committed, (
        "docs/RESULTS.md is out of date: run 'aacn report --publish results docs/RESULTS.md' and commit it")
