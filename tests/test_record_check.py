"""Records that cannot lie: a finished run is reused, resumed, reported or published only when its config.json is
complete and agrees with results.json; resume compares the data; report/publish never trace back on any JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cifar_files import write_cifar10
from test_config import as_format2
from test_report import write_run

from aacn.cli import main
from aacn.config import RunConfig
from aacn.errors import UserError
from aacn.experiments.reproduce import check_reuse
from aacn.inference import load_model
from aacn.train.rundir import complete_config


def tiny(data: Path, out: Path, *extra: str, epochs: int = 2) -> list[str]:
    return ["train", "--model", "wrn-10-1", "--base-width", "4", "--epochs", str(epochs), "--subset", "100",
            "--val-size", "50", "--batch-size", "50", "--data-dir", str(data), "--out", str(out), "--device", "cpu",
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def finished(tiny_cifar10, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(tiny(tiny_cifar10, out)) == 0
    return out


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def edit(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def test_a_finished_run_without_its_config_is_not_reused(tiny_cifar10, copy, capsys):
    (copy / "config.json").unlink()  # results.json says wrn-10-1, 2 epochs, seed 0
    args = tiny(tiny_cifar10, copy, "--resume")
    args[args.index("wrn-10-1")] = "wrn-16-2"
    assert main([*args, "--seed", "9"]) == 2
    err = one_error_line(capsys)
    assert "config.json" in err and "already finished" not in err
    with pytest.raises(UserError, match="no config.json"):
        check_reuse(RunConfig.load(copy / "results.json").replace(out=str(copy)))


def test_a_hand_edited_config_is_refused_naming_the_field(tiny_cifar10, copy, capsys):
    edit(copy / "config.json", lambda r: r["config"].update(epochs=3))
    assert main(tiny(tiny_cifar10, copy, "--resume", epochs=3)) == 2
    err = one_error_line(capsys)
    assert "disagree" in err and "epochs" in err and "results.json" in err
    assert main(["report", str(copy), "--out", str(copy.parent / "rep")]) == 2
    assert "epochs" in one_error_line(capsys)


def _format2(r):
    r["config"] = as_format2(r["config"])


@pytest.mark.parametrize("change, field", [
    (lambda r: r.update(config={}), "config.model"),  # no format: the flat form
    (lambda r: r["config"].pop("model"), "config.model"),
    (lambda r: r["config"].pop("epochs"), "config.epochs"),
    (lambda r: r["config"].update(epochs="2"), "config.epochs"),
    (lambda r: (_format2(r), r["config"].pop("arch")), "config.arch"),  # format 2: nested objects
    (lambda r: (_format2(r), r["config"]["optim"].pop("epochs")), "config.optim.epochs"),
    (lambda r: (_format2(r), r["config"]["arch"].update(attention="x")), "config.arch.attention"),
    (lambda r: (_format2(r), r["config"]["optim"].update(epochs="2")), "config.optim.epochs"),
])
def test_an_incomplete_or_mistyped_config_is_refused_not_filled_with_defaults(copy, tmp_path, capsys, change,
                                                                              field):
    edit(copy / "config.json", change)
    for args in (["report", str(copy), "--out", str(tmp_path / "rep")], ["evaluate", str(copy)]):
        assert main(args) == 2
        err = one_error_line(capsys)
        assert str(copy / "config.json") in err and field in err and "--epochs" not in err, err
    published = tmp_path / "results" / "smoke"
    published.mkdir(parents=True)
    shutil.copytree(copy, published / "run", ignore=shutil.ignore_patterns("checkpoints"))
    assert main(["report", "--publish", str(tmp_path / "results"), str(tmp_path / "RESULTS.md")]) == 2
    assert field in one_error_line(capsys) and not (tmp_path / "RESULTS.md").exists()


def test_complete_flat_configs_of_older_records_still_load(tmp_path):
    old = {"model": "wrn-10-1", "dataset": "cifar10", "epochs": 2, "batch_size": 50, "recipe": "paper-sgd",
           "augment": True, "normalize": "standard", "subset": 100, "val_size": 50, "split_seed": 0, "seed": 1,
           "amp": "auto", "model_kwargs": {"base_width": 4}}
    assert complete_config({"config": old}, tmp_path / "config.json").epochs == 2
    with pytest.raises(UserError, match="config.epochs is missing"):
        complete_config({"config": {k: v for k, v in old.items() if k != "epochs"}}, tmp_path / "config.json")


HOSTILE = {
    "deep results": ("results.json", lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "nested"),
    "deep field": ("results.json", lambda p: edit(p, lambda r: r.update(provenance={"a": json.loads(
        "[" * 40 + "]" * 40)})), "nested"),
    "huge test_acc": ("results.json", lambda p: p.write_text(p.read_text().replace('"test_acc": 80.0',
                                                                                     '"test_acc": ' + "9" * 400)),
                      "test_acc"),
    "huge params": ("config.json", lambda p: edit(p, lambda r: r["info"].update(params=10**400)), "info.params"),
    "big file": ("metrics.jsonl", lambda p: p.write_text(" " * 70_000), "larger than"),  # limit lowered below
    "deep metrics": ("metrics.jsonl", lambda p: p.write_text('{"epoch": 1}\n' + "[" * 5000 + "]" * 5000 + "\n"),
                     "line 2"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_report_never_traces_back_on_hostile_json(tmp_path, capsys, monkeypatch, case):
    if case == "big file":
        monkeypatch.setattr("aacn.files.MAX_JSON_BYTES", 65_536)
    name, damage, words = HOSTILE[case]
    run = write_run(tmp_path / "r")
    damage(run / name)
    assert main(["report", str(run), "--out", str(tmp_path / "o")]) == 2
    err = one_error_line(capsys)
    assert name in err and words in err, err


def test_resume_on_other_data_is_refused(tiny_cifar10, copy, tmp_path, capsys):
    for name in ("results.json", "checkpoints/epoch-0002.pt"):  # as if stopped after epoch 1
        (copy / name).unlink()
    (copy / "metrics.jsonl").write_text((copy / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    other = tmp_path / "other"
    write_cifar10(other, seed=5)
    assert main(tiny(other, copy, "--resume")) == 2
    assert "fingerprint" in one_error_line(capsys)
    (copy / "config.json").unlink()  # the checkpoint records the data too
    assert main(tiny(other, copy, "--resume")) == 2
    assert "epoch-0001.pt" in (err := one_error_line(capsys)) and "fingerprint" in err
    leftover = copy / "checkpoints" / ".epoch-0002.pt.x1y2.tmp"  # what a killed atomic write leaves
    leftover.write_bytes(b"half a checkpoint")
    assert main(tiny(tiny_cifar10, copy, "--resume")) == 0
    assert not leftover.exists() and (copy / "results.json").is_file()


class _Crafted:
    def __reduce__(self):
        return (print, ("crafted code ran",))


@pytest.mark.parametrize("damage, words", [
    (lambda p: p.write_bytes(p.read_bytes()[:1000]), "not a loadable checkpoint"),
    (lambda p: (p.unlink(), p.mkdir()), "not a file but a folder"),
    (lambda p: p.write_bytes(__import__("pickle").dumps(_Crafted(), protocol=2)), "not a loadable checkpoint"),
    (lambda p: torch.save({"format": 1, "model": {"bogus": torch.zeros(1)}, "epoch": 2, "step": 0}, p),
     "does not hold the weights"),
])
def test_a_damaged_final_checkpoint_is_refused_never_replaced_by_an_older_one(copy, capsys, damage, words):
    final = copy / "checkpoints" / "epoch-0002.pt"
    state = torch.load(final, weights_only=True)
    damage(final)
    if "weights" in words:  # a checkpoint of this run whose weights are missing or mis-shaped
        state["model"] = {k: v[..., :1] if v.dim() else v for k, v in state["model"].items()}
        torch.save(state, final)
    for args in (["evaluate", str(copy), "--device", "cpu"], ["export", str(copy)]):
        assert main(args) == 2
        err = one_error_line(capsys)
        assert str(final) in err and words in err, err
    assert "crafted code ran" not in capsys.readouterr().out
    with pytest.raises(UserError, match="epoch-0002.pt"):
        load_model(copy)


def test_an_unfinished_run_needs_partial_and_says_so(copy, capsys):
    (copy / "results.json").unlink()
    assert main(["evaluate", str(copy), "--device", "cpu"]) == 2
    assert "--partial" in one_error_line(capsys)
    assert main(["evaluate", str(copy), "--device", "cpu", "--partial"]) == 0
    assert "PARTIAL weights" in capsys.readouterr().out


def test_a_config_of_another_model_is_one_line(copy, capsys):
    edit(copy / "config.json", lambda r: r["config"].update(model="resnet34"))
    (copy / "results.json").unlink()  # so that only the checkpoint disagrees
    assert main(["evaluate", str(copy), "--device", "cpu", "--partial"]) == 2
    assert "made with another config" in one_error_line(capsys)
