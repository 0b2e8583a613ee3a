"""impl="triton": the Triton kernel that adds the relative logits inside the attention.

Without a GPU the kernels run in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1), which
checks their arithmetic in float32 and float16 (the interpreter's bfloat16 matmul is wrong, so bfloat16 is left
to tests/test_cuda.py). Compiling them for a GPU target needs no GPU, so that is checked here too.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from aacn.cli import main  # noqa: E402
from aacn.nn import AAConv2d  # noqa: E402
from aacn.nn import functional as AF  # noqa: E402
from aacn.nn import triton_attention as TA  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and not TA._interpreting(), reason="needs CUDA or TRITON_INTERPRET=1"
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(b, nh, h, w, dkh, dvh, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, nh, h, w, dkh, dtype=torch.float64, generator=gen) for _ in range(2))
    v = torch.randn(b, nh, h, w, dvh, dtype=torch.float64, generator=gen)
    rel_h = torch.randn(2 * h - 1, dkh, dtype=torch.float64, generator=gen)
    rel_w = torch.randn(2 * w - 1, dkh, dtype=torch.float64, generator=gen)
    grad = torch.randn(b, nh, h, w, dvh, dtype=torch.float64, generator=gen)
    return [q, k, v, rel_h, rel_w], grad


def _errors(shape, dtype, relative=(True, True)):
    """Relative errors of the output and every gradient against the float64 reference."""
    tensors, grad = _inputs(*shape)
    tensors[3] = tensors[3] if relative[0] else None
    tensors[4] = tensors[4] if relative[1] else None
    ref_in = [t.clone().requires_grad_() if t is not None else None for t in tensors]
    ref = AF.relative_attention_2d(*ref_in, impl="reference")
    ref_grads = torch.autograd.grad(ref, [t for t in ref_in if t is not None], grad)
    ins = [t.to(DEVICE, dtype).requires_grad_() if t is not None else None for t in tensors]
    out = AF.relative_attention_2d(*ins, impl="triton")
    grads = torch.autograd.grad(out, [t for t in ins if t is not None], grad.to(DEVICE, dtype))
    pairs = [(out, ref), *zip(grads, ref_grads, strict=True)]
    return [((a.double().cpu() - r).norm() / r.norm()).item() for a, r in pairs]


@pytest.mark.parametrize("shape", [
    (2, 2, 5, 3, 3, 2),     # one partial block; dkh and dvh far below the 16-wide tiles
    (1, 2, 12, 11, 6, 3),   # N = 132: several query and key blocks, the last one partial
    (1, 1, 4, 16, 20, 17),  # wide grid (W > H); dvh above one tile of 16
])
def test_float32_output_and_all_gradients_match_the_reference(shape):
    assert max(_errors(shape, torch.float32)) < 1e-5


@pytest.mark.parametrize("relative", [(True, False), (False, True), (False, False)])
def test_either_or_no_relative_table(relative):
    assert max(_errors((1, 2, 6, 5, 4, 3), torch.float32, relative)) < 1e-5


def test_float16_matches_the_reference():
    assert max(_errors((2, 2, 5, 3, 3, 2), torch.float16)) < 5e-3


def _layer_outputs(layer, x):
    out = layer(x)
    return [out, *torch.autograd.grad(out.square().sum(), [x, *layer.parameters()])]


def test_aaconv2d_with_triton_equals_the_reference_layer():
    """Through the layer: strided (channels-last) q/k/v views, stride 2, and the merged-heads output layout."""
    torch.manual_seed(0)
    for stride in (1, 2):
        layer = AAConv2d(8, 16, 3, dk=8, dv=4, num_heads=2, stride=stride, feature_size=(7, 6),
                         attention_impl="reference").to(DEVICE).eval()
        x = torch.randn(2, 8, 7, 6, device=DEVICE).to(memory_format=torch.channels_last).requires_grad_()

        want = _layer_outputs(layer, x)
        layer.attention_impl = "triton"
        got = _layer_outputs(layer, x)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_heads_merge_without_a_copy():
    tensors, _ = _inputs(2, 2, 4, 5, 3, 2)
    out = AF.relative_attention_2d(*(t.float().to(DEVICE) for t in tensors), impl="triton")
    assert out.shape == (2, 2, 4, 5, 2)
    assert out.permute(0, 1, 4, 2, 3).is_contiguous()  # AAConv2d's (B, Nh*dvh, H, W) reshape is a view


def test_where_it_cannot_run_the_error_says_why(monkeypatch):
    tensors, _ = _inputs(1, 1, 2, 2, 2, 2)
    with pytest.raises(ValueError, match=r"^impl='triton' supports float16, bfloat16 and float32, not float64"):
        AF.relative_attention_2d(*tensors, impl="triton")
    monkeypatch.setattr(TA, "_interpreting", lambda: False)
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match=r"^impl='triton' runs on CUDA devices only, not cpu .*impl='auto'$"):
            AF.relative_attention_2d(*(t.float() for t in tensors), impl="triton")
    monkeypatch.setattr(TA, "HAS_TRITON", False)
    assert TA.triton_unavailable_reason(torch.device("cuda"), torch.float32).startswith("needs the triton package")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only: checks the error for a CPU run")
def test_train_with_triton_on_cpu_is_a_one_line_error(tiny_cifar10, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(TA, "_interpreting", lambda: False)
    args = ["train", "--model", "wrn-10-2", "--attention", "seed", "--num-heads", "2", "--attention-impl", "triton",
            "--min-key-depth-per-head", "4", "--epochs", "1", "--subset", "100", "--val-size", "50",
            "--batch-size", "50", "--data-dir", str(tiny_cifar10), "--out", str(tmp_path / "run"),
            "--device", "cpu", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--attention-impl triton runs on CUDA devices only, not cpu" in err[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


_COMPILE_FOR_SM80 = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from aacn.nn import triton_kernels as K

pointers = {"Q", "K", "V", "RH", "RW", "O", "DO", "DK_OUT", "DV_OUT", "DQ_OUT", "DRH_OUT", "DRW_OUT"}
# a 32x32 grid (key blocks are grid rows) and a 7x7 grid (one-hot products), as impl="triton" launches them
variants = [dict(ROWS=True, BLOCK_N=32, HP=32, WP=32), dict(ROWS=False, BLOCK_N=64, HP=16, WP=16)]
for name, variant in [(n, v) for v in variants for n in ("_fwd_kernel", "_bwd_kv_kernel", "_bwd_q_kernel")]:
    meta = dict(HAS_H=True, HAS_W=True, PRECISION="tf32", BLOCK_M=64, DKP=32, DVP=16, **variant)
    fn = getattr(K, name)
    signature = {}
    for arg in fn.arg_names:
        if arg in meta:
            signature[arg] = "constexpr"
        elif arg in pointers:
            signature[arg] = "*bf16"
        elif arg in ("LSE", "DELTA"):
            signature[arg] = "*fp32"
        else:
            signature[arg] = "fp32" if arg in ("scale", "qk_scale") else "i32"
    constexprs = {k: v for k, v in meta.items() if k in fn.arg_names}
    compiled = triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=GPUTarget("cuda", 80, 32),
                              options=dict(num_warps=4, num_stages=2))
    assert compiled.asm.get("cubin"), name
    print("compiled", name)
"""


def test_kernels_compile_for_a_gpu_without_one():
    """Triton's front end and NVIDIA back end (its bundled ptxas) compile all three kernels for sm_80 in bf16,
    with key blocks of one grid row and with one-hot products.

    A fresh process without TRITON_INTERPRET, so the kernels load as compilable JIT functions.
    """
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError:
        pytest.skip("this triton version has no ASTSource/GPUTarget")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM80], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["compiled", "_fwd_kernel", "compiled", "_bwd_kv_kernel", "compiled",
                                   "_bwd_q_kernel"] * 2


def _op_inputs(b=1, nh=2, h=3, w=5, dk=3, dv=2):
    gen = torch.Generator().manual_seed(0)
    n = h * w
    shapes = [(b, nh, n, dk), (b, nh, n, dk), (b, nh, n, dv), (b, nh, n, h), (b, nh, n, w)]
    return [torch.randn(s, generator=gen, device="cpu").to(DEVICE).requires_grad_() for s in shapes], h, w


@pytest.mark.parametrize("tables", ["both", "rw", "none"])
def test_triton_operator_passes_opcheck(tables):
    """Schema, fake implementation, autograd registration and AOT tracing of the "triton" operator and of its
    backward operator."""
    (q, k, v, rh, rw), h, w = _op_inputs()
    rh = rh if tables == "both" else None
    rw = rw if tables in ("both", "rw") else None
    torch.library.opcheck(torch.ops.aacn.triton_relative_attention, (q, k, v, rh, rw, 0.5, h, w))
    out, lse = torch.ops.aacn.triton_relative_attention(q, k, v, rh, rw, 0.5, h, w)
    detached = [t.detach() if t is not None else None for t in (q, k, v, rh, rw)]
    torch.library.opcheck(torch.ops.aacn.triton_relative_attention_backward,
                          (torch.randn_like(out), *detached, out.detach(), lse, 0.5, h, w))


_TRACE_TRITON_OP = """
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from aacn.nn import triton_attention as TA

h, w = 3, 5
q, k, rh, rw = torch.randn(1, 2, 15, 4), torch.randn(1, 2, 15, 4), torch.randn(1, 2, 15, h), torch.randn(1, 2, 15, w)
v = torch.randn(1, 2, 15, 2)
fwd = make_fx(lambda *a: TA._forward(*a, 0.5, h, w), tracing_mode="fake")(q, k, v, rh, rw)
out, lse = torch.empty(1, 2, 2, 15).transpose(-1, -2), torch.empty(2, 15)
bwd = make_fx(lambda *a: TA._backward_kernels(*a, 0.5, h, w), tracing_mode="fake")(out, q, k, v, rh, rw, out, lse)
for gm in (fwd, bwd):
    print(sum("triton_kernel_wrapper_mutation" in str(n.target) for n in gm.graph.nodes))
print(torch.ops.aacn.triton_relative_attention.default._schema)
"""


def test_with_compiled_kernels_the_operator_is_a_triton_op_that_traces_into_its_kernels():
    """Outside the interpreter the operators are ``torch.library.triton_op``s whose bodies trace (on fake tensors,
    no GPU needed) into graphs that hold the Triton kernels: one launch forward, two backward."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _TRACE_TRITON_OP], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.split("\n")
    assert lines[:2] == ["1", "2"], done.stdout
    assert lines[2].startswith("aacn::triton_relative_attention("), done.stdout
