"""End to end through the real CLI on tiny CIFAR-format data: records, falling loss, resumption, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_config import as_format2

import aacn
from aacn.cli import main
from aacn.config import RunConfig
from aacn.data.augment import Normalizer
from aacn.data.cifar import load_cifar
from aacn.data.loader import DeviceLoader
from aacn.models import create_model
from aacn.train import distributed
from aacn.train.evaluate import evaluate
from aacn.train.loop import run
from aacn.train.step import EpochState, Learner, train_one_epoch

TIME_KEYS = {"epoch_time_s", "images_per_s", "peak_mem_bytes"}


def tiny_args(data: Path, out: Path, *extra: str, epochs: int = 3) -> list[str]:
    return ["train", "--model", "resnet34", "--base-width", "4", "--epochs", str(epochs), "--subset", "400",
            "--val-size", "100", "--batch-size", "50", "--lr", "0.05", "--data-dir", str(data), "--out", str(out),
            "--device", "cpu", "--no-progress", *extra]


def tiny_config(data: Path, out: Path, **kw) -> RunConfig:
    base = dict(model="resnet34", epochs=3, subset=400, val_size=100, batch_size=50, lr=0.05, data_dir=str(data),
                out=str(out), device="cpu", progress=False, base_width=4)
    return RunConfig(**{**base, **kw})


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tiny_cifar10, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "straight"
    run(tiny_config(tiny_cifar10, out))
    return out


def strict_load(path: Path):
    """JSON as a strict reader sees it: NaN or Infinity in a record is an error."""
    def refuse(name):
        raise AssertionError(f"{path} holds {name}")

    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]
    return json.loads(text, parse_constant=refuse)


def test_train_writes_the_records(tiny_cifar10, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(tiny_cifar10, out, epochs=3)) == 0
    rows = strict_load(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert {"train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s", "peak_mem_bytes"} <= set(rows[0])
    results = strict_load(out / "results.json")
    for key in ("train_acc", "val_acc", "test_acc", "test_top5", "wall_time_s", "flops_per_image"):
        assert isinstance(results[key], float | int), key
    assert "test_acc_tta" not in results  # only with --tta
    model = create_model("resnet34", num_classes=10, base_width=4)
    assert results["params"] == sum(p.numel() for p in model.parameters())
    state = torch.load(sorted((out / "checkpoints").iterdir())[-1], weights_only=True)
    model.load_state_dict(state["model"])  # a plain state dict, loadable with weights_only=True
    saved = strict_load(out / "config.json")
    assert saved["config"]["base_width"] == 4 and saved["info"]["global_batch_size"] == 50
    assert len(list((out / "checkpoints").iterdir())) == 2  # the newest two are kept

    # provenance: the code, the software stack, the device and the run's settings, in both records
    for record in (saved, results):
        prov = record["provenance"]
        assert prov["aacn_version"] == aacn.__version__ and prov["torch"] == torch.__version__
        assert prov["device"] == "cpu" and prov["device_count"] == 1 and prov["device_name"]
        assert {"git_commit", "git_dirty", "cuda", "cudnn"} <= set(prov)
        assert prov["precision"] == "float32" and prov["compile"] is False and prov["channels_last"] is False
        assert prov["world_size"] == 1
        assert "data" in record  # the data's label and fingerprint (None where the loader gives none)

    capsys.readouterr()
    assert main(tiny_args(tiny_cifar10, out, epochs=3)) == 2  # a finished run is not overwritten silently
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a finished run" in err and "--overwrite" in err


def test_train_one_epoch_overfits_a_fixed_batch(tiny_cifar10):
    """The step learns: 20 steps on one fixed batch of 20 images lower its loss by more than 10x.

    Any seed lowers it by more than 200x (a far larger perturbation than the rounding differences between CPUs,
    thread counts or oneDNN code paths), so the 10x margin holds on any CPU.
    """
    data = load_cifar("cifar10", tiny_cifar10, val_size=0, subset=20, progress=False)
    ctx = distributed.Context(device=torch.device("cpu"))
    torch.manual_seed(0)
    model = create_model("resnet34", num_classes=10, base_width=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    learner = Learner(model, model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
                      torch.amp.GradScaler("cpu", enabled=False), torch.nn.CrossEntropyLoss(), ctx.device)
    loader = DeviceLoader(data.train, 20, device="cpu", normalizer=Normalizer("standard", data.train.images),
                          train=True)
    model.train()
    losses = []
    for epoch in range(20):  # one step per epoch: the same 20 images every time
        state = train_one_epoch(learner, loader, EpochState(epoch, 0, torch.zeros(3, dtype=torch.float64)), ctx)
        assert state.step == 1 and state.sums[2] == 20
        losses.append(float(state.sums[0] / state.sums[2]))
    assert losses[-1] < losses[0] / 10, losses


def as_format2_records(out: Path) -> None:
    """Rewrite the configs of a run's records as aacn wrote them in format 2 (config.json, results.json,
    checkpoints)."""
    for path in (out / "config.json", out / "results.json"):
        if path.exists():
            record = json.loads(path.read_text())
            path.write_text(json.dumps({**record, "config": as_format2(record["config"])}))
    for path in (out / "checkpoints").iterdir():
        state = torch.load(path, weights_only=True)
        torch.save({**state, "config": as_format2(state["config"])}, path)


@pytest.mark.parametrize("recorded_as", ["format 3", "format 2"])
def test_ctrl_c_mid_epoch_then_resume_matches_an_uninterrupted_run(tiny_cifar10, tmp_path, uninterrupted,
                                                                    monkeypatch, capsys, recorded_as):
    out = tmp_path / "interrupted"
    original = DeviceLoader.batches

    def batches(self, epoch, start=0):
        for i, batch in enumerate(original(self, epoch, start)):
            if self.train and epoch == 1 and start + i == 3:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does; the loop stops after this step
            yield batch

    monkeypatch.setattr(DeviceLoader, "batches", batches)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(tiny_cifar10, out))
    monkeypatch.undo()
    assert "continue with the same command plus --resume" in capsys.readouterr().err
    assert (out / "checkpoints" / "epoch-0001-step-000004.pt").is_file()
    assert not (out / "results.json").exists()
    if recorded_as == "format 2":  # a run interrupted before config.json had format 3 continues the same
        as_format2_records(out)
        assert json.loads((out / "config.json").read_text())["config"]["format"] == 2

    resumed = run(tiny_config(tiny_cifar10, out), resume=True)
    expected = json.loads((uninterrupted / "results.json").read_text())
    assert comparable(read_rows(out)) == comparable(read_rows(uninterrupted))
    for key in ("train_acc", "val_acc", "test_acc", "test_loss"):
        assert resumed[key] == expected[key]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_cifar10, tmp_path, uninterrupted):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "aacn", *tiny_args(tiny_cifar10, out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "epoch-0001.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert comparable(read_rows(out)) == comparable(read_rows(uninterrupted))
    assert json.loads((out / "results.json").read_text())["test_acc"] == json.loads(
        (uninterrupted / "results.json").read_text())["test_acc"]


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_cifar10, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}

    class Poisoned(torch.nn.CrossEntropyLoss):
        def forward(self, logits, target):
            calls["n"] += 1
            loss = super().forward(logits, target)
            return loss * float("nan") if calls["n"] > 10 else loss  # epoch 2 (8 steps per epoch)

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", Poisoned)
    out = tmp_path / "nan"
    assert main(tiny_args(tiny_cifar10, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loss became nan at epoch 2" in err[0] and "epoch-0001.pt" in err[0]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch-0001.pt"]
    state = torch.load(out / "checkpoints" / "epoch-0001.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.dtype.is_floating_point)


def test_resume_with_a_different_config_is_refused(tiny_cifar10, tmp_path, uninterrupted, capsys):
    out = tmp_path / "changed"
    run(tiny_config(tiny_cifar10, out, epochs=1))
    (out / "results.json").unlink()  # pretend it was cut short
    assert main(tiny_args(tiny_cifar10, out, "--resume", "--seed", "7", epochs=1)) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "seed: 0 != 7" in err


def exit_code(argv: list[str]) -> int:
    """main()'s exit code, also when argparse exits for a bad flag."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--epochs", "0"], "--epochs: must be a positive integer"),
        (["--batch-size", "-3"], "--batch-size: must be a positive integer"),
        (["--lr", "0"], "--lr: must be a positive number"),
        (["--model", "resnet99"], "resnet99"),
        (["--subset", "100000"], "subset=100000"),
        (["--batch-size", "1000"], "larger than the 400 training images"),
        (["--dataset", "mnist"], "invalid choice"),
        (["--recipe", "adamw"], "invalid choice: 'adamw'"),
        (["--kappa", "1.5"], "--kappa: must be a fraction in (0, 1]"),
        (["--compile-mode", "reduce-overhead"], "add --compile"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_cifar10, tmp_path, capsys, change, message):
    assert exit_code(tiny_args(tiny_cifar10, tmp_path / "bad") + change) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "bad" / "results.json").exists()


def test_data_dir_without_cifar_says_what_is_missing(tmp_path, capsys, monkeypatch):
    import aacn.data.cifar as cifar

    def offline(url, dest, progress=True):
        raise OSError("network is unreachable")

    monkeypatch.setattr(cifar, "download_file", offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert exit_code(tiny_args(empty, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(empty) in err and "cifar-10-batches-py" in err


def test_a_failing_torch_compile_is_one_line_that_says_how_to_go_on(tiny_cifar10, tmp_path, monkeypatch, capsys):
    import aacn.train.loop as loop

    def failing_backend(graph_module, example_inputs):
        raise RuntimeError("the compiler broke")

    real_compile = torch.compile
    monkeypatch.setattr(loop.torch, "compile", lambda model: real_compile(model, backend=failing_backend))
    out = tmp_path / "run"
    assert main(tiny_args(tiny_cifar10, out, "--compile", epochs=1)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch.compile failed" in err[0] and "the compiler broke" in err[0], err
    assert "without --compile" in err[0] and "--resume" in err[0]
    monkeypatch.setattr(loop.torch, "compile", real_compile)
    assert main(tiny_args(tiny_cifar10, out, "--resume", epochs=1)) == 0  # the advice works


# ------------------------------------------------------------------------------- no stale reuse on --resume
def test_resume_of_a_finished_run_with_the_same_config_says_so(tiny_cifar10, uninterrupted, capsys):
    before = (uninterrupted / "results.json").read_bytes()
    # --attention-impl, --device and --eval-batch-size cannot change a result: still the same run
    same = tiny_args(tiny_cifar10, uninterrupted, "--resume", "--attention-impl", "sdpa", "--eval-batch-size", "7")
    assert main(same) == 0
    out = capsys.readouterr().out
    assert "already finished" in out and str(uninterrupted / "results.json") in out
    assert (uninterrupted / "results.json").read_bytes() == before


def test_a_finished_run_recorded_in_format_2_is_recognised_or_refused(tiny_cifar10, uninterrupted, tmp_path,
                                                                       capsys):
    out = tmp_path / "format2"
    shutil.copytree(uninterrupted, out)
    as_format2_records(out)
    assert main(tiny_args(tiny_cifar10, out, "--resume", "--attention-impl", "sdpa")) == 0
    assert "already finished" in capsys.readouterr().out
    assert main(tiny_args(tiny_cifar10, out, "--resume", "--kappa", "0.25", epochs=4)) == 2
    assert "kappa: 0.2 != 0.25" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["config"]["format"] == 2  # left as it was


def test_resume_of_a_finished_run_with_another_config_is_refused(tiny_cifar10, uninterrupted, capsys):
    before = (uninterrupted / "results.json").read_bytes()
    assert main(tiny_args(tiny_cifar10, uninterrupted, "--resume", "--model", "wrn-10-1", epochs=4)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different config" in err, err
    assert "model: 'resnet34' != 'wrn-10-1'" in err and "epochs: 3 != 4" in err and "--overwrite" in err
    assert (uninterrupted / "results.json").read_bytes() == before


def test_resume_without_a_checkpoint_still_compares_the_config(tiny_cifar10, tmp_path, capsys):
    out = tmp_path / "run"
    run(tiny_config(tiny_cifar10, out, epochs=1))
    (out / "results.json").unlink()
    for ckpt in (out / "checkpoints").iterdir():
        ckpt.write_bytes(b"not a checkpoint")  # unreadable: nothing to compare with but config.json
    assert main(tiny_args(tiny_cifar10, out, "--resume", "--model", "wrn-10-1", epochs=1)) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "model: 'resnet34' != 'wrn-10-1'" in err
    assert strict_load(out / "config.json")["config"]["model"] == "resnet34"  # the old run's record is intact


# ------------------------------------------------------------------------------ comparable with the literature
def test_val_size_0_trains_on_every_image_and_records_null_not_nan(tiny_cifar10, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_args(tiny_cifar10, out, "--tta", epochs=1)
    args[args.index("--subset"):args.index("--subset") + 2] = []  # every training image
    args[args.index("--val-size") + 1] = "0"
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "500 train / 0 val" in printed and "val -" in printed and "val -  test" in printed
    rows, results = strict_load(out / "metrics.jsonl"), strict_load(out / "results.json")
    assert rows[0]["val_loss"] is None and rows[0]["val_acc"] is None
    assert results["val_acc"] is None and results["val_loss"] is None and results["val_top5"] is None
    assert strict_load(out / "config.json")["info"]["train_images"] == 500
    # flip TTA is recorded apart from plain accuracy, never instead of it
    for key in ("test_acc", "test_top5", "test_loss", "test_acc_tta", "test_top5_tta", "test_loss_tta"):
        assert isinstance(results[key], float), key
    assert results["test_loss_tta"] != results["test_loss"]


def test_tta_is_the_mean_of_the_logits_of_an_image_and_its_mirror(tiny_cifar10):
    data = load_cifar("cifar10", tiny_cifar10, val_size=0, progress=False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 32 * 32, 10))  # not mirror-symmetric
    normalizer = Normalizer("standard", data.train.images)
    loader = DeviceLoader(data.test, 64, device="cpu", normalizer=normalizer, train=False)  # a partial last batch
    ctx = distributed.Context(device=torch.device("cpu"))
    got = evaluate(model, loader, ctx, tta=True)

    with torch.no_grad():
        x = normalizer(data.test.images)
        logits = (model(x) + model(torch.flip(x, dims=[3]))) / 2
    labels = data.test.labels
    top5 = logits.topk(5, dim=1).indices
    assert got["acc"] == pytest.approx(100.0 * (logits.argmax(1) == labels).double().mean().item(), abs=1e-9)
    assert got["top5"] == pytest.approx(100.0 * (top5 == labels[:, None]).any(1).double().mean().item(), abs=1e-9)
    assert got["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits.double(), labels).item(), rel=1e-5)
    assert got["loss"] != pytest.approx(evaluate(model, loader, ctx)["loss"], rel=1e-3)  # the mirror counted


# --------------------------------------------------------------------------------------- bad paths, messages
def _no_data_loading(monkeypatch):
    import aacn.train.loop as loop

    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before --out was checked")

    monkeypatch.setattr(loop, "load_run_data", refuse)


@pytest.mark.parametrize("where", ["existing file", "below a file", "read-only folder", "impossible path"])
def test_an_unusable_out_is_one_line_before_any_data_is_loaded(tiny_cifar10, tmp_path, monkeypatch, capsys, where):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = {"existing file": blocker, "below a file": blocker / "run", "read-only folder": tmp_path / "ro" / "run",
           "impossible path": Path("/proc/aacn-test/run")}
    if where == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "ro").mkdir(mode=0o500)
    _no_data_loading(monkeypatch)
    assert main(tiny_args(tiny_cifar10, out[where])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out" in err and str(out[where]) in err, err


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 4000000000000 bytes.\nError code 12"),
    MemoryError(),
])
def test_running_out_of_memory_is_one_line_naming_the_flags_that_help(tiny_cifar10, tmp_path, monkeypatch, capsys,
                                                                      error):
    import aacn.train.step as step

    def out_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(step, "train_step", out_of_memory)
    assert main(tiny_args(tiny_cifar10, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "out of memory on cpu" in err, err
    for flag in ("--batch-size", "--base-width", "--attention-impl", "--amp"):
        assert flag in err


def test_ctrl_c_during_start_up_is_one_line(tiny_cifar10, tmp_path, monkeypatch, capsys):
    import aacn.cli as cli
    import aacn.train.loop as loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "load_run_data", interrupted)  # while the data loads
    assert main(tiny_args(tiny_cifar10, tmp_path / "run")) == 130
    assert capsys.readouterr().err.strip() == "aacn: interrupted"
    monkeypatch.setattr(cli, "build_parser", interrupted)  # while the CLI imports torch and builds its parser
    assert main(tiny_args(tiny_cifar10, tmp_path / "run")) == 130
    assert capsys.readouterr().err.strip() == "aacn: interrupted"


def test_compile_mode_reaches_torch_compile(tiny_cifar10, tmp_path, monkeypatch):
    modes = []

    def record(model, **kwargs):
        modes.append(kwargs.get("mode", "default"))
        return model  # eager: this test is about the plumbing, not the compiler

    monkeypatch.setattr(torch, "compile", record)
    out = tmp_path / "run"
    assert main(tiny_args(tiny_cifar10, out, "--compile", "--compile-mode", "reduce-overhead", epochs=1)) == 0
    assert modes == ["reduce-overhead"]
    prov = strict_load(out / "results.json")["provenance"]
    assert prov["compile"] is True and prov["compile_mode"] == "reduce-overhead"
