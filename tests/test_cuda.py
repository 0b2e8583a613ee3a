"""GPU checks: run where CUDA is available (skipped on CPU-only machines such as CI).

They cover what the CPU suite cannot: the fused CUDA attention kernels against the float64 reference (values
padded to their own depth, so cuDNN / memory-efficient kernels run), whole-graph ``torch.compile`` with Inductor of
an attention-augmented layer for each CUDA impl, and a short ``aacn train`` on the GPU with bf16 autocast and
channels-last.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from aacn.cli import main
from aacn.nn import AAConv2d

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cuda_check import CUDA_IMPLS, relative_errors  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("impl", CUDA_IMPLS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("shape", [(2, 8, 8, 8, 20, 20), (2, 4, 7, 5, 8, 12), (2, 8, 32, 32, 20, 2)])
def test_cuda_attention_matches_float64_reference(impl, dtype, tol, shape):
    """Output and the five gradients, relative to the float64 CPU reference (benchmarks/cuda_check.py)."""
    assert all(err < tol for err in relative_errors(shape, dtype, impl))


@pytest.mark.parametrize("impl", ["sdpa", "chunked", "triton"])
def test_inductor_compiled_layer_matches_eager_on_cuda(impl):
    """One graph (fullgraph=True) with the attention inside it; "triton" is a triton_op that Inductor schedules."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    layer = AAConv2d(32, 64, 3, dk=40, dv=16, num_heads=4, feature_size=(16, 16), attention_impl=impl).cuda()
    x = torch.randn(4, 32, 16, 16, device="cuda")
    compiled = torch.compile(layer, fullgraph=True)
    params = list(layer.parameters())
    with torch.autocast("cuda", torch.bfloat16):
        want = layer(x).float()
    want_grads = torch.autograd.grad(want.square().mean(), params)
    with torch.autocast("cuda", torch.bfloat16):
        got = compiled(x).float()
    got_grads = torch.autograd.grad(got.square().mean(), params)
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    for a, b in zip(got_grads, want_grads, strict=True):
        assert ((a - b).norm() / b.norm().clamp_min(1e-12)).item() < 5e-2


def test_train_on_cuda_with_attention_and_compile(tiny_cifar10, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "wrn-10-2", "--attention", "paper", "--num-heads", "2",
            "--min-key-depth-per-head", "4", "--epochs", "3", "--subset", "400", "--val-size", "100",
            "--batch-size", "50", "--lr", "0.05", "--data-dir", str(tiny_cifar10), "--out", str(out),
            "--device", "cuda", "--compile", "--no-progress"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    info = json.loads((out / "config.json").read_text())["info"]
    assert info["amp"] == "bfloat16" and info["channels_last"] and info["device"].startswith("cuda")


def test_train_on_cuda_with_the_triton_attention(tiny_cifar10, tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "run"
    args = ["train", "--model", "wrn-10-2", "--attention", "paper", "--num-heads", "2", "--attention-impl", "triton",
            "--min-key-depth-per-head", "4", "--epochs", "3", "--subset", "400", "--val-size", "100",
            "--batch-size", "50", "--lr", "0.05", "--data-dir", str(tiny_cifar10), "--out", str(out),
            "--device", "cuda", "--no-progress"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
