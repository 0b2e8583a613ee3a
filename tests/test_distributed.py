"""Distributed training on CPU: ``torchrun --nproc-per-node 2 ... aacn train`` with gloo, through the real CLI.

Every rank draws the same epoch plan and trains on its contiguous half of each global batch, so a 2-process run
sees the single-process batches. With ``--sync-bn`` the batch statistics are the global ones too and the runs
differ only by float reduction order; without it each rank normalises with its own half-batch statistics.

The model is WRN-10-1 at base width 8: unlike a width-4 ResNet-34 (where one float32 rounding difference grows
~1000x per SGD step) it is numerically tame, so rounding-level differences stay at rounding level.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from aacn.config import RunConfig
from aacn.data.integrity import cached_md5s
from aacn.train.loop import run
from aacn.train.sync_bn import GlobalBatchNorm2d, convert_sync_batchnorm

NPROC = 2
EPOCHS = 3
TIME_KEYS = {"epoch_time_s", "images_per_s", "peak_mem_bytes"}
# Measured: --sync-bn 2-process vs 1 process differ by <= 2e-5 (absolute) in every loss (reduction order).
LOSS_RTOL = 1e-4
# The training loss of this run falls by 0.23-0.28 over its 3 epochs for seeds 0, 1 and 2 alike; a seed is a far
# larger perturbation than any CPU's rounding, so a fall of more than LOSS_FALL holds on any CPU.
LOSS_FALL = 0.1

# Runs aacn.cli.main exactly as ``python -m aacn`` does, plus two hooks switched on by environment variables:
#   AACN_TEST_WRITE_LOG=DIR   every atomic file write of the run records is logged to DIR/rank-<RANK>.txt
#   AACN_TEST_DIE_AFTER=PATH  rank 1 of the first worker group (no torchrun restart yet) exits with code 1 as
#                             soon as PATH exists, like a worker lost to a crash or a preempted node
WRAPPER = '''
import os, sys, threading, time
from pathlib import Path

rank = os.environ.get("RANK", "0")
log_dir = os.environ.get("AACN_TEST_WRITE_LOG")
if log_dir:
    import aacn.files as files
    original = files.atomic_write

    def logged(path, write, *, binary=False):
        with open(Path(log_dir) / f"rank-{rank}.txt", "a") as fh:
            fh.write(f"{path}\\n")
        original(path, write, binary=binary)

    files.atomic_write = logged

die_after = os.environ.get("AACN_TEST_DIE_AFTER")
if die_after and rank == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
    def watch():
        while not Path(die_after).exists():
            time.sleep(0.01)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()

from aacn.cli import main

raise SystemExit(main())
'''


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "wrn-10-1", "--base-width", "8", "--epochs", str(EPOCHS), "--subset", "400",
            "--val-size", "100", "--batch-size", "50", "--lr", "0.1", "--data-dir", str(data), "--out", str(out),
            "--device", "cpu", "--no-progress", *extra]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AACN_DEBUG", "MASTER_ADDR", "MASTER_PORT",
                                                            "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # one thread per rank on the 2-core machine; unbuffered, so a failure shows every line the workers printed
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def torchrun_cmd(program: list[str], *launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={NPROC}",
            *launcher, *program]


def torchrun(program: list[str], *launcher: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    """Run torchrun to the end; on timeout kill its whole session (the workers too) and fail."""
    cmd = torchrun_cmd(program, *launcher)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(**env),
                          start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(f"torchrun did not finish in {timeout} s:\n{stdout[-2000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def our_traceback(stderr: str) -> list[str]:
    """Traceback frames in aacn's own code (torchrun prints frames of its own when a worker fails)."""
    return [line for line in stderr.splitlines() if line.strip().startswith("File ") and "/aacn/" in line]


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wrapper") / "aacn_worker.py"
    path.write_text(WRAPPER)
    return path


@pytest.fixture(scope="module")
def sync_run(tiny_cifar10, tmp_path_factory, wrapper):
    """A finished 2-process ``--sync-bn`` run, every file write logged per rank. The data's MD5 cache is filled
    first (as any earlier load would), so that the only files rank 0 writes are the run's."""
    folder = tiny_cifar10 / "cifar-10-batches-py"
    cached_md5s(folder, sorted(path.name for path in folder.iterdir()))
    root = tmp_path_factory.mktemp("sync")
    out, logs = root / "run", root / "writes"
    logs.mkdir()
    done = torchrun([str(wrapper), *train_args(tiny_cifar10, out, "--sync-bn")], AACN_TEST_WRITE_LOG=str(logs))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, logs, done


@pytest.fixture(scope="module")
def plain_run(tiny_cifar10, tmp_path_factory):
    """A finished 2-process run without --sync-bn, launched as ``torchrun -m aacn train``."""
    out = tmp_path_factory.mktemp("plain") / "run"
    done = torchrun(["-m", "aacn", *train_args(tiny_cifar10, out)])
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def single_run(tiny_cifar10, tmp_path_factory):
    """The same run in one process (same global batch 50), one thread like each rank."""
    out = tmp_path_factory.mktemp("single") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(RunConfig(model="wrn-10-1", epochs=EPOCHS, subset=400, val_size=100, batch_size=50, lr=0.1,
                      data_dir=str(tiny_cifar10), out=str(out), device="cpu", progress=False,
                      base_width=8))
    finally:
        torch.set_num_threads(threads)
    return out


# ------------------------------------------------------------------------------------ 2-process runs
def test_two_process_run_trains_and_only_rank_0_writes(sync_run):
    out, logs, done = sync_run
    rows = read_rows(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # one row per epoch, not one per rank
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - LOSS_FALL
    assert files_under(out) == ["checkpoints/epoch-0002.pt", "checkpoints/epoch-0003.pt", "config.json",
                                "metrics.jsonl", "results.json"]  # no temporary or duplicate files
    written = (logs / "rank-0.txt").read_text().splitlines()
    assert written and all(Path(p).parent in (out, out / "checkpoints") for p in written)
    assert not (logs / "rank-1.txt").exists(), "rank 1 wrote run records"

    info = json.loads((out / "config.json").read_text())["info"]
    assert info["world_size"] == 2 and info["global_batch_size"] == 50 and info["steps_per_epoch"] == 8
    assert json.loads((out / "results.json").read_text())["world_size"] == 2
    assert done.stdout.count("global batch 50 (2 x 25), base lr 0.1") == 1  # printed once, by rank 0
    assert done.stdout.count("done in") == 1


def test_sync_bn_run_matches_the_single_process_run(sync_run, single_run):
    ddp, single = read_rows(sync_run[0]), read_rows(single_run)
    assert len(ddp) == len(single) == EPOCHS
    for a, b in zip(ddp, single, strict=True):
        assert a["lr"] == b["lr"]  # the same global batches, so the same schedule
        for key in ("train_loss", "val_loss"):
            assert a[key] == pytest.approx(b[key], rel=LOSS_RTOL), (a["epoch"], key)
        assert abs(a["train_acc"] - b["train_acc"]) <= 100 / 400  # at most one image flips
        assert abs(a["val_acc"] - b["val_acc"]) <= 100 / 100
    ddp_res = json.loads((sync_run[0] / "results.json").read_text())
    single_res = json.loads((single_run / "results.json").read_text())
    for key in ("train_loss", "val_loss", "test_loss"):
        assert ddp_res[key] == pytest.approx(single_res[key], rel=LOSS_RTOL), key


def test_without_sync_bn_both_train_on_the_same_batches(plain_run, single_run):
    plain, single = read_rows(plain_run), read_rows(single_run)
    assert [r["lr"] for r in plain] == [r["lr"] for r in single]
    for rows in (plain, single):
        assert rows[-1]["train_loss"] < rows[0]["train_loss"] - LOSS_FALL
    # Only BatchNorm differs: each rank normalises its 25 images with their own statistics, not the 50's.
    assert plain[0]["train_loss"] != single[0]["train_loss"]


# ----------------------------------------------------------------------------------------- bad input
def test_world_size_that_does_not_divide_the_batch_is_refused(tiny_cifar10, tmp_path):
    out = tmp_path / "run"
    done = torchrun(["-m", "aacn", *train_args(tiny_cifar10, out, "--batch-size", "51")])
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("aacn train: error:")]
    assert ours and all("--batch-size 51" in line and "world size 2" in line for line in ours), done.stderr
    assert len(ours) == 1  # the same error on every rank: rank 0 prints it once
    assert not our_traceback(done.stderr), done.stderr
    assert not out.exists() or not files_under(out)


def test_missing_rendezvous_is_one_line_and_exit_2(tiny_cifar10, tmp_path):
    out = tmp_path / "run"
    env = child_env(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")  # as if launched by hand, not by torchrun
    done = subprocess.run([sys.executable, "-m", "aacn", *train_args(tiny_cifar10, out)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "MASTER_ADDR" in err[0] and "torchrun" in err[0], done.stderr
    assert not out.exists()


# ---------------------------------------------------------------------------------- fault tolerance
@pytest.mark.slow
def test_torchrun_restart_after_a_lost_worker_resumes_and_matches(tiny_cifar10, tmp_path, wrapper, plain_run):
    out = tmp_path / "run"
    done = torchrun([str(wrapper), *train_args(tiny_cifar10, out)], "--max-restarts=1",
                    AACN_TEST_DIE_AFTER=str(out / "checkpoints" / "epoch-0001.pt"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stdout and "from epoch-000" in done.stdout  # continued, not started over
    assert comparable(read_rows(out)) == comparable(read_rows(plain_run))
    got, expected = (json.loads((p / "results.json").read_text()) for p in (out, plain_run))
    for key in ("train_loss", "val_loss", "test_loss", "test_acc"):
        assert got[key] == expected[key]


@pytest.mark.slow
def test_sigterm_to_the_job_saves_mid_epoch_and_resume_matches(tiny_cifar10, tmp_path, sync_run):
    """Preemption: torchrun forwards SIGTERM, the ranks agree to stop at the same step, rank 0 saves the
    whole batch's partial sums; ``--resume`` then ends exactly like the uninterrupted run."""
    out = tmp_path / "run"
    program = ["-m", "aacn", *train_args(tiny_cifar10, out, "--sync-bn")]
    proc = subprocess.Popen(torchrun_cmd(program), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=child_env(), start_new_session=True)
    try:
        deadline = time.time() + 180
        while not (out / "checkpoints" / "epoch-0001.pt").exists():
            assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)  # to torchrun only, which passes it on to its workers
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode != 0 and not (out / "results.json").exists(), stderr[-3000:]
    assert any("-step-" in p.name for p in (out / "checkpoints").iterdir()), stderr[-3000:]

    done = torchrun([*program, "--resume"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert comparable(read_rows(out)) == comparable(read_rows(sync_run[0]))


# -------------------------------------------------------------------- GlobalBatchNorm2d, exactly
def _bn_worker(rank: int, store: str, result: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        _bn_step(rank, result)
    finally:
        # DDP is freed (with _bn_step's frame) before the group is destroyed, as in aacn.train.loop.run: freeing a
        # DDP model after destroy_process_group sometimes hung the process at exit (PyTorch 2.13, gloo)
        dist.destroy_process_group()


def _bn_step(rank: int, result: str) -> None:
    model = convert_sync_batchnorm(_bn_net(), torch.device("cpu"))
    ddp = nn.parallel.DistributedDataParallel(model)
    x, y = _bn_data()
    out = ddp(x[rank * 4:(rank + 1) * 4])
    nn.functional.cross_entropy(out, y[rank * 4:(rank + 1) * 4]).backward()
    torch.save({"out": out.detach(), "grads": {n: p.grad for n, p in model.named_parameters()},
                "buffers": dict(model.named_buffers())}, f"{result}{rank}")


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3),
                         nn.BatchNorm2d(5, momentum=None), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(5, 3)).double()


def _bn_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)


def test_global_batchnorm_under_ddp_equals_batchnorm_on_the_whole_batch(tmp_path):
    """Outputs, every parameter gradient and the running statistics of 2 ranks x 4 images equal plain
    BatchNorm on the 8 images (float64, so equal to ~1e-15)."""
    mp.spawn(_bn_worker, args=(str(tmp_path / "store"), str(tmp_path / "rank")), nprocs=2)
    model = _bn_net()
    x, y = _bn_data()
    out = model(x)
    nn.functional.cross_entropy(out, y).backward()
    ranks = [torch.load(tmp_path / f"rank{r}", weights_only=True) for r in range(2)]
    torch.testing.assert_close(torch.cat([r["out"] for r in ranks]), out.detach(), rtol=1e-12, atol=1e-12)
    for name, param in model.named_parameters():
        for r in ranks:  # DDP averages the per-rank gradients; they equal the whole batch's gradient
            torch.testing.assert_close(r["grads"][name], param.grad, rtol=1e-12, atol=1e-12)
    for name, buffer in model.named_buffers():
        for r in ranks:
            torch.testing.assert_close(r["buffers"][name], buffer, rtol=1e-12, atol=1e-12)
    converted = convert_sync_batchnorm(_bn_net(), torch.device("cpu"))
    assert sum(isinstance(m, GlobalBatchNorm2d) for m in converted.modules()) == 2
    assert converted.state_dict().keys() == model.state_dict().keys()
