"""``aacn anchor``: the airbench data conversion, the run record (from an injected trainer) and the one-line errors.

airbench itself needs CUDA; here a fake trainer (and a fake airbench module for the glue) stands in for it.
"""

from __future__ import annotations

import json
import pickle
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from aacn.cli import main
from aacn.data import load_cifar
from aacn.errors import UserError
from aacn.experiments import anchor as anchor_mod
from aacn.experiments.anchor import (
    AirbenchTrainer,
    AnchorOutcome,
    airbench_arrays,
    epoch_row,
    record_differences,
    run_anchor,
    write_airbench_data,
)


def _strict(path: Path):
    def refuse(token):
        raise AssertionError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _raw(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    batch = pickle.loads((folder / name).read_bytes(), encoding="latin1")
    return np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])


def test_conversion_is_torchvisions_layout_of_the_same_images(tiny_cifar10, tmp_path):
    data = load_cifar("cifar10", tiny_cifar10, val_size=0)
    folder = write_airbench_data(data, tmp_path)
    assert folder == tmp_path / "cifar10"
    train = torch.load(folder / "train.pt", weights_only=True)
    test = torch.load(folder / "test.pt", weights_only=True)
    for cached, n in ((train, 500), (test, 200)):
        assert cached["images"].dtype == torch.uint8 and cached["images"].shape == (n, 32, 32, 3)
        assert cached["labels"].dtype == torch.int64 and cached["labels"].shape == (n,)
        assert cached["classes"] == data.classes
    # the test set keeps the official order: exactly what torchvision's CIFAR10 makes of the raw batch
    raw = tiny_cifar10 / "cifar-10-batches-py"
    x, y = _raw(raw, "test_batch")
    np.testing.assert_array_equal(test["images"].numpy(), x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(test["labels"].numpy(), y)
    # training: every official training image once, each with its own label
    xs, ys = zip(*(_raw(raw, f"data_batch_{i}") for i in range(1, 6)), strict=True)
    official = sorted((img.tobytes(), int(lab)) for img, lab in zip(np.concatenate(xs), np.concatenate(ys),
                                                                       strict=True))
    converted = sorted((img.permute(2, 0, 1).numpy().reshape(-1).tobytes(), int(lab))
                       for img, lab in zip(train["images"], train["labels"], strict=True))
    assert converted == official


def test_airbench_arrays_order_pixels_and_labels():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.tensor([3, 1, 4, 1, 5])
    from aacn.data import Split

    out = airbench_arrays([Split(images[:3], labels[:3]), Split(images[3:], labels[3:])], ["a", "b"])
    assert out["images"].is_contiguous() and out["images"].shape == (5, 32, 32, 3)
    assert out["images"][4, 7, 2, 1] == images[4, 1, 7, 2]  # [i, y, x, c] == [i, c, y, x]
    assert torch.equal(out["images"], images.permute(0, 2, 3, 1))
    assert torch.equal(out["labels"], labels) and out["classes"] == ["a", "b"]


class FakeTrainer:
    """Checks what airbench would read, then returns fixed numbers (a NaN among them, as a diverged run might)."""

    version = "0.1.8"
    device = torch.device("cpu")
    precision = "fp32"

    def __init__(self):
        self.calls = []

    def __call__(self, anchor, folder, seed):
        train = torch.load(folder / "cifar10" / "train.pt", weights_only=True)
        test = torch.load(folder / "cifar10" / "test.pt", weights_only=True)
        self.calls.append((anchor, seed, len(train["labels"]), len(test["labels"])))
        rows = [{"epoch": 1, "test_acc": 50.0, "train_time_s": 1.5, "epoch_time_s": 1.5},
                {"epoch": 2, "test_acc": float("nan"), "train_time_s": 3.0, "epoch_time_s": 1.5}]
        return AnchorOutcome(test_acc=61.25, test_acc_tta=62.5, test_acc_tta_airbench=float("nan"),
                             train_time_s=3.0, params=1234, metrics=rows,
                             settings={"opt": {"train_epochs": 9.9}, "net": {"scaling_factor": 1 / 9}})


def test_record_from_a_fake_training(tiny_cifar10, tmp_path):
    trainer, out = FakeTrainer(), tmp_path / "runs" / "a94"
    run = run_anchor("airbench94", data_dir=tiny_cifar10, out=out, seed=3, trainer=trainer, log=lambda _: None)
    assert run.status == "trained" and trainer.calls == [("airbench94", 3, 500, 200)]
    config = _strict(out / "config.json")
    assert config["kind"] == "anchor"
    assert config["config"] == {"anchor": "airbench94", "dataset": "cifar10", "seed": 3, "train_images": 500,
                                "test_images": 200, "tta": True, "airbench": "0.1.8", "precision": "fp32",
                                "data_dir": str(tiny_cifar10)}
    assert config["provenance"]["device"] == "cpu" and "torch" in config["provenance"]
    assert "data" in config
    results = _strict(out / "results.json")
    assert results["kind"] == "anchor" and results["anchor"] == "airbench94"
    assert (results["test_acc"], results["test_acc_tta"], results["test_acc_tta_airbench"]) == (61.25, 62.5, None)
    assert results["train_time_s"] == 3.0 and results["params"] == 1234 and results["train_images"] == 500
    assert results["wall_time_s"] >= 0 and results["provenance"] == config["provenance"]
    assert results["epochs"] == 9.9 and results["airbench_settings"]["opt"] == {"train_epochs": 9.9}
    assert results["data"] == config["data"] and results["config"] == config["config"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line, parse_constant=pytest.fail)["test_acc"] for line in lines] == [50.0, None]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.jsonl", "results.json"]


def test_same_config_is_reused_another_is_refused_overwrite_retrains(tiny_cifar10, tmp_path, capsys):
    trainer, out, quiet = FakeTrainer(), tmp_path / "a94", (lambda _: None)
    run_anchor("airbench94", data_dir=tiny_cifar10, out=out, trainer=trainer, log=quiet)
    before = (out / "results.json").read_text()
    again = run_anchor("airbench94", data_dir=tiny_cifar10, out=out, trainer=trainer, log=print)
    assert again.status == "finished" and len(trainer.calls) == 1
    assert "already finished" in capsys.readouterr().out and (out / "results.json").read_text() == before
    with pytest.raises(UserError, match=r"seed: 0 != 1.*--overwrite") as err:
        run_anchor("airbench94", data_dir=tiny_cifar10, out=out, seed=1, trainer=trainer, log=quiet)
    assert "\n" not in str(err.value) and len(trainer.calls) == 1
    with pytest.raises(UserError, match="anchor: 'airbench94' != 'airbench96'"):
        run_anchor("airbench96", data_dir=tiny_cifar10, out=out, trainer=trainer, log=quiet)
    rerun = run_anchor("airbench94", data_dir=tiny_cifar10, out=out, seed=1, overwrite=True, trainer=trainer,
                       log=quiet)
    assert rerun.status == "trained" and _strict(out / "results.json")["seed"] == 1 and len(trainer.calls) == 2


def test_an_unfinished_record_is_trained_again_and_a_foreign_one_is_refused(tiny_cifar10, tmp_path):
    out = tmp_path / "a94"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"kind": "anchor", "config": {"anchor": "airbench96"}}))
    trainer = FakeTrainer()
    assert run_anchor("airbench94", data_dir=tiny_cifar10, out=out, trainer=trainer, log=lambda _: None).status \
        == "trained"
    other = tmp_path / "train-run"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"config": {"model": "resnet34"}}))
    with pytest.raises(UserError, match="not an anchor"):
        run_anchor("airbench94", data_dir=tiny_cifar10, out=other, trainer=trainer, overwrite=True)


def test_differences_ignore_the_data_folder_but_not_the_data():
    stored = {"config": {"anchor": "airbench94", "seed": 0, "data_dir": "/a"}, "data": {"label": "official"}}
    assert record_differences(stored, {"anchor": "airbench94", "seed": 0, "data_dir": "/b"}, {"label": "official"}) \
        == []
    diff = record_differences(stored, {"anchor": "airbench94", "seed": 0, "data_dir": "/a"}, {"label": "other"})
    assert len(diff) == 1 and diff[0].startswith("data:")


def test_epoch_rows_from_airbenchs_log_variables():
    first = epoch_row({"epoch": 0, "train_loss": 1.25, "train_acc": 0.5, "val_acc": 0.625,
                       "total_time_seconds": 2.0, "run": 0}, None)
    assert first == {"epoch": 1, "test_acc": 62.5, "last_batch_train_loss": 1.25, "last_batch_train_acc": 50.0,
                     "train_time_s": 2.0, "epoch_time_s": 2.0}
    second = epoch_row({"epoch": 1, "train_loss": 1.0, "train_acc": 0.75, "val_acc": 0.75,
                        "total_time_seconds": 3.5}, first)
    assert second["epoch"] == 2 and second["epoch_time_s"] == 1.5
    assert epoch_row({"epoch": None}, first) is None  # the warm-up line
    assert epoch_row({"epoch": "eval", "tta_val_acc": 0.8}, second) is None  # the final TTA line


def _fake_airbench(seen: list) -> types.SimpleNamespace:
    """A module with airbench's interface: train94 logs two epochs through utils.print_training_details."""
    printed = []
    utils = types.SimpleNamespace(print_training_details=lambda variables, is_final_entry: printed.append(variables))

    def train94(run=0):
        assert Path("cifar10/train.pt").is_file() and Path("cifar10/test.pt").is_file()  # reads ./cifar10
        if run == -1:
            utils.print_training_details({"epoch": None}, False)
            return None
        seen.append(torch.initial_seed())
        for epoch, total in ((0, 1.0), (1, 2.5)):
            utils.print_training_details({"epoch": epoch, "train_loss": 0.5, "train_acc": 0.5, "val_acc": 0.5,
                                          "total_time_seconds": total}, False)
        utils.print_training_details({"epoch": "eval", "tta_val_acc": 0.9}, True)
        return torch.nn.Linear(3, 2)

    return types.SimpleNamespace(
        utils=utils, train94=train94, printed=printed, lib_airbench94=types.SimpleNamespace(hyp={"opt": {"lr": 11.5}}),
        CifarLoader=lambda path, train, batch_size: (path, train),
        evaluate=lambda model, loader, tta_level: [0.25, 0.5, 0.75][tta_level])


def test_airbench_glue_runs_in_the_data_folder_logs_epochs_and_restores(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    (tmp_path / "cifar10").mkdir()
    for name in ("train.pt", "test.pt"):
        (tmp_path / "cifar10" / name).write_bytes(b"")
    seen: list = []
    fake = _fake_airbench(seen)
    original = fake.utils.print_training_details
    cwd = Path.cwd()
    outcome = AirbenchTrainer(fake, "0.1.8")("airbench94", tmp_path, seed=7)
    assert Path.cwd() == cwd and fake.utils.print_training_details is original
    assert seen == [7] and len(fake.printed) == 4  # airbench's own output still goes out
    assert (outcome.test_acc, outcome.test_acc_tta, outcome.test_acc_tta_airbench) == (25.0, 50.0, 75.0)
    assert outcome.train_time_s == 2.5 and outcome.params == 8 and outcome.settings == {"opt": {"lr": 11.5}}
    assert [r["epoch"] for r in outcome.metrics] == [1, 2] and outcome.metrics[1]["epoch_time_s"] == 1.5


def test_missing_airbench_missing_cuda_and_unknown_anchor_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(anchor_mod, "_airbench_spec", lambda: None)
    assert main(["anchor", "airbench94", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "airbench is not installed" in err and 'pip install -e ".[anchors]"' in err

    monkeypatch.setattr(anchor_mod, "_airbench_spec", lambda: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["anchor", "airbench96", "--device", "cuda", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA GPU" in err and "--device cpu" in err

    assert main(["anchor", "airbench96", "--device", "tpu"]) == 2
    assert "choose --device cuda, cpu or auto" in capsys.readouterr().err
    assert main(["anchor", "airbench96", "--device", "cuda:1"]) == 2
    assert "CUDA_VISIBLE_DEVICES=1" in capsys.readouterr().err

    assert main(["anchor", "resnet18", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown anchor 'resnet18'" in err and "airbench94, airbench96" in err
    assert not any(tmp_path.iterdir())  # nothing written before the requirements hold
