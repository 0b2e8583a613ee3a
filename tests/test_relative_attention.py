"""Exactness of every relative-attention implementation against the reference and an explicit per-pair loop."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from aacn.nn import functional as AF
from aacn.nn import relative_attention as RA

SIZES = [(1, 1), (2, 3), (7, 5), (8, 8), (16, 12)]
FAST_IMPLS = ["sdpa", "chunked"]


def _inputs(h, w, dtype=torch.float64, b=2, nh=2, dkh=3, dvh=5, seed=None, grad=True):
    """Random q, k, v, rel_h, rel_w (fresh each run unless ``seed``); returns (tensors, seed used)."""
    seed = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else seed
    gen = torch.Generator().manual_seed(seed)
    shapes = [(b, nh, h, w, dkh), (b, nh, h, w, dkh), (b, nh, h, w, dvh), (2 * h - 1, dkh), (2 * w - 1, dkh)]
    tensors = [torch.randn(s, generator=gen, dtype=dtype).requires_grad_(grad) for s in shapes]
    return tensors, seed


def _run(fn, tensors):
    """Output and the gradients of all five inputs for a random linear functional of the output."""
    for t in tensors:
        t.grad = None
    out = fn(*tensors)
    weight = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)
    (out * weight).sum().backward()
    return [out.detach()] + [t.grad.clone() for t in tensors]


def _impl_fn(impl):
    if impl == "chunked-small":  # several blocks of queries with checkpointing
        return lambda q, k, v, rh, rw: RA.chunked_attention(q, k, v, rh, rw, q.shape[-1] ** -0.5, 37)
    if impl == "sdpa-chunks":  # CPU flash path with one (batch, head) pair per kernel call
        return lambda q, k, v, rh, rw: RA.sdpa_attention(q, k, v, rh, rw, q.shape[-1] ** -0.5, 1)
    if impl == "sdpa-generic":  # the non-CPU (CUDA) code path: autograd through F.scaled_dot_product_attention
        return lambda q, k, v, rh, rw: RA._sdpa_fused(q, k, v, rh, rw, q.shape[-1] ** -0.5)
    return lambda q, k, v, rh, rw: AF.relative_attention_2d(q, k, v, rh, rw, impl=impl)


def _loop_attention(q, k, v, rel_h, rel_w, scale):
    """Second, independent reference: the logit of every (query, key) pair written out one by one."""
    b, nh, h, w, _ = q.shape
    out = torch.zeros(*q.shape[:4], v.shape[-1], dtype=q.dtype)
    for bi in range(b):
        for n in range(nh):
            for x in range(h):
                for y in range(w):
                    qv = q[bi, n, x, y]
                    logits = torch.empty(h * w, dtype=q.dtype)
                    for xp in range(h):
                        for yp in range(w):
                            s = qv @ k[bi, n, xp, yp] + qv @ rel_w[yp - y + w - 1] + qv @ rel_h[xp - x + h - 1]
                            logits[xp * w + yp] = scale * s
                    out[bi, n, x, y] = torch.softmax(logits, 0) @ v[bi, n].reshape(h * w, -1)
    return out


@pytest.mark.parametrize("impl", FAST_IMPLS + ["chunked-small", "sdpa-chunks", "sdpa-generic", "auto"])
@pytest.mark.parametrize("size", SIZES)
def test_float64_matches_reference(impl, size):
    tensors, seed = _inputs(*size)
    ref = _run(_impl_fn("reference"), tensors)
    got = _run(_impl_fn(impl), tensors)
    for name, a, r in zip(["out", "q", "k", "v", "rel_h", "rel_w"], got, ref, strict=True):
        err = (a - r).abs().max().item()
        assert err <= 1e-10, f"{impl} {size} {name}: max abs error {err} (seed {seed})"


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("size", [(2, 3), (7, 5), (16, 12)])
def test_float32_matches_reference(impl, size):
    tensors, seed = _inputs(*size, dtype=torch.float32, dkh=8, dvh=8)
    ref = _run(_impl_fn("reference"), tensors)
    got = _run(_impl_fn(impl), tensors)
    for name, a, r in zip(["out", "q", "k", "v", "rel_h", "rel_w"], got, ref, strict=True):
        rel = ((a - r).abs().max() / r.abs().max()).item()
        assert rel <= 1e-5, f"{impl} {size} {name}: relative error {rel} (seed {seed})"


@pytest.mark.parametrize("impl", ["sdpa", "sdpa-chunks", "chunked-small"])
@pytest.mark.parametrize(
    "wanted, relative",
    [(w, True) for w in [("q",), ("k",), ("v",), ("rel_h",), ("rel_w",), ("k", "v")]] + [(("q", "k", "v"), False)],
)
def test_partial_gradients_and_strided_inputs(impl, wanted, relative):
    """Only some inputs need gradients; q, k, v are permuted views (as AAConv2d passes them)."""
    (q, k, v, rel_h, rel_w), seed = _inputs(3, 5, grad=False)
    q, k, v = (t.permute(0, 1, 4, 2, 3).contiguous().permute(0, 1, 3, 4, 2) for t in (q, k, v))
    tensors = dict(q=q, k=k, v=v, rel_h=rel_h if relative else None, rel_w=rel_w if relative else None)
    for name in wanted:
        tensors[name].requires_grad_()
    grads = {}
    for name_impl in ("reference", impl):
        out = _impl_fn(name_impl)(*tensors.values())
        grads[name_impl] = torch.autograd.grad(out.square().sum(), [tensors[n] for n in wanted])
    for name, a, r in zip(wanted, grads[impl], grads["reference"], strict=True):
        assert (a - r).abs().max().item() <= 1e-10, f"{impl} d{name} (seed {seed})"


@pytest.mark.parametrize("impl", ["reference", "sdpa", "sdpa-chunks", "sdpa-generic", "chunked-small"])
def test_gradcheck(impl):
    tensors, _ = _inputs(2, 3, b=1, nh=2, dkh=2, dvh=3)
    assert torch.autograd.gradcheck(_impl_fn(impl), tuple(tensors))


def test_per_pair_loop_on_3x4_grid():
    tensors, seed = _inputs(3, 4, grad=False)
    expected = _loop_attention(*tensors, scale=0.7)
    for impl in ["reference"] + FAST_IMPLS:
        out = AF.relative_attention_2d(*tensors, scale=0.7, impl=impl)
        assert (out - expected).abs().max().item() <= 1e-12, f"{impl} (seed {seed})"


@pytest.mark.parametrize("impl", ["reference"] + FAST_IMPLS)
def test_permutation_equivariance_without_relative(impl):
    (q, k, v, _, _), seed = _inputs(4, 5, grad=False)
    perm = torch.randperm(20)

    def permute(t):
        return t.flatten(2, 3)[:, :, perm].reshape(t.shape)

    out = AF.relative_attention_2d(q, k, v, impl=impl)
    out_perm = AF.relative_attention_2d(permute(q), permute(k), permute(v), impl=impl)
    assert (out_perm - permute(out)).abs().max().item() <= 1e-12, f"seed {seed}"


def test_single_relative_table_matches_loop():
    (q, k, v, rel_h, rel_w), _ = _inputs(3, 2, grad=False)
    zero_h = torch.zeros_like(rel_h)
    expected = _loop_attention(q, k, v, zero_h, rel_w, scale=3**-0.5)
    for impl in ["reference"] + FAST_IMPLS:
        assert (AF.relative_attention_2d(q, k, v, None, rel_w, impl=impl) - expected).abs().max() <= 1e-12


@pytest.mark.parametrize("size", [(1, 1), (3, 4), (7, 5)])
def test_probs_equal_reference_softmax_rows(size):
    h, w = size
    (q, k, _, rel_h, rel_w), seed = _inputs(h, w, grad=False)
    onehot = torch.eye(h * w, dtype=q.dtype).view(1, 1, h, w, h * w).expand(2, 2, h, w, h * w)
    full = RA.reference_attention(q, k, onehot, rel_h, rel_w, 3**-0.5)  # full softmax matrix, rows = queries
    queries = [(0, 0), (h - 1, w - 1), (h // 2, w // 3)]
    probs = AF.relative_attention_probs(q, k, rel_h, rel_w, queries=queries)
    assert probs.shape == (2, 2, 3, h, w)
    for p, (row, col) in enumerate(queries):
        err = (probs[:, :, p].flatten(-2) - full[:, :, row, col]).abs().max().item()
        assert err <= 1e-12, f"query {(row, col)} (seed {seed})"


def test_sdpa_uses_a_fused_kernel_forward_and_backward():
    tensors, _ = _inputs(6, 5, dtype=torch.float32)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        AF.relative_attention_2d(*tensors, impl="sdpa").sum().backward()
    names = {e.name for e in prof.events()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in names
    assert "aten::_softmax" not in names and "aten::softmax" not in names


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any ATen op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("impl", ["reference", "sdpa", "chunked"])
def test_memory_efficient_impls_never_build_hw_squared(impl):
    tensors, _ = _inputs(16, 12, dtype=torch.float32)
    full = 2 * 2 * (16 * 12) ** 2  # B * Nh * (HW)^2
    if impl == "chunked":  # blocks of 1/8 of the queries
        fn = lambda q, k, v, rh, rw: RA.chunked_attention(q, k, v, rh, rw, 3**-0.5, full // 8)  # noqa: E731
    else:
        fn = _impl_fn(impl)
    with _LargestTensor() as mode:
        fn(*tensors).sum().backward()
    if impl == "reference":
        assert mode.largest >= full  # the probe sees the materialised logits
    else:
        assert mode.largest < full // 4


def test_auto_choice(monkeypatch):
    """The choices without the C++ kernel (tests/test_cpu_kernel.py checks that "auto" picks it on CPU)."""
    monkeypatch.setenv("AACN_CPU_KERNEL", "0")
    small, large = torch.zeros(32, 8, 8, 8, 1), torch.zeros(32, 8, 16, 16, 1)
    assert AF.resolve_impl("auto", small) == "chunked"  # one block of plain attention on CPU
    assert AF.resolve_impl("auto", large) == "sdpa"
    assert AF.resolve_impl("auto", large.to(torch.int32)) == "chunked"  # no fused kernel for the dtype
    assert AF.resolve_impl("reference", large) == "reference"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert AF.resolve_impl("auto", large) == "sdpa"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", ["reference"] + FAST_IMPLS)
def test_autocast_large_logits_are_finite_and_close(dtype, impl):
    (q, k, v, rel_h, rel_w), seed = _inputs(5, 6, dtype=torch.float32, dkh=8, dvh=8, grad=False)
    q = (q * 100).requires_grad_()  # logits in the hundreds: a low-precision softmax without max-shift overflows
    expected = AF.relative_attention_2d(q, k, v, rel_h, rel_w, impl="reference")
    with torch.autocast("cpu", dtype=dtype):
        out = AF.relative_attention_2d(q, k, v, rel_h, rel_w, impl=impl)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    out.float().sum().backward()
    assert torch.isfinite(q.grad).all()
    # Low-precision inputs to a peaked softmax: compare on average, not element-wise.
    assert (out.float() - expected).abs().mean().item() <= 0.05 * expected.abs().mean().item(), f"seed {seed}"


def _bad(**changes):
    (q, k, v, rel_h, rel_w), _ = _inputs(3, 4, grad=False)
    args = dict(q=q, k=k, v=v, rel_h=rel_h, rel_w=rel_w)
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "changes, name",
    [
        (dict(q=torch.zeros(2, 2, 12, 3)), "q"),
        (dict(k=torch.zeros(2, 2, 3, 4, 4)), "k"),
        (dict(v=torch.zeros(2, 2, 4, 3, 5)), "v"),
        (dict(rel_h=torch.zeros(4, 3)), "rel_h"),
        (dict(rel_w=torch.zeros(7, 2)), "rel_w"),
        (dict(q=torch.zeros(2, 2, 3, 4, 0), k=torch.zeros(2, 2, 3, 4, 0)), "q"),
    ],
)
def test_bad_shapes_name_the_argument(changes, name):
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        AF.relative_attention_2d(**_bad(**changes))


def test_bad_impl_and_queries():
    args = _bad()
    with pytest.raises(ValueError, match=r"impl: expected one of 'auto', 'reference', 'sdpa', 'chunked'"):
        AF.relative_attention_2d(**args, impl="flash")
    with pytest.raises(ValueError, match=r"queries: .*got \(3, 0\)"):
        AF.relative_attention_probs(args["q"], args["k"], queries=[(0, 0), (3, 0)])


@pytest.mark.parametrize("impl", ["reference", "sdpa", "chunked", "auto"])
def test_an_empty_batch_gives_an_empty_output_and_zero_gradients(impl):
    (q, k, v, rel_h, rel_w), _ = _inputs(4, 3, b=0)
    out = AF.relative_attention_2d(q, k, v, rel_h, rel_w, impl=impl)
    assert out.shape == (0, 2, 4, 3, 5)
    grads = torch.autograd.grad(out.sum(), [q, k, v, rel_h, rel_w])
    assert [g.shape for g in grads] == [t.shape for t in (q, k, v, rel_h, rel_w)]
    assert all(not g.any() for g in grads)


@pytest.mark.parametrize("op", ["folded_flash_attention_cpu", "chunked_relative_attention"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tables", ["both", "rel_h", "none"])
def test_operators_pass_opcheck(op, dtype, tables):
    """Schema, fake implementation, autograd registration and AOT tracing of the "sdpa" CPU operator and the
    "chunked" operator (3 query blocks) and of their backward operators."""
    (q, k, v, rel_h, rel_w), _ = _inputs(3, 4, dtype=dtype, grad=False)
    # q, k, v as AAConv2d passes them: permuted views of (B, Nh, d, H, W) tensors
    q, k, v = (t.permute(0, 1, 4, 2, 3).contiguous().permute(0, 1, 3, 4, 2).requires_grad_() for t in (q, k, v))
    rel_h, rel_w = rel_h.requires_grad_(), rel_w.requires_grad_()
    rel_h = rel_h if tables in ("both", "rel_h") else None
    rel_w = rel_w if tables == "both" else None
    forward, backward = getattr(torch.ops.aacn, op), getattr(torch.ops.aacn, op + "_backward")
    extra = (3, dtype) if op == "folded_flash_attention_cpu" else (5, dtype)
    torch.library.opcheck(forward, (q, k, v, rel_h, rel_w, 0.5, *extra))
    out, lse = forward(q, k, v, rel_h, rel_w, 0.5, *extra)
    inputs = (torch.randn_like(out), *(t.detach() if t is not None else None for t in (q, k, v, rel_h, rel_w)),
              out.detach(), lse, 0.5)
    if op == "folded_flash_attention_cpu":
        torch.library.opcheck(backward, (*inputs, *extra, [True, False, True, True, rel_w is not None]))
    else:
        torch.library.opcheck(backward, (*inputs, extra[0]))


@pytest.mark.parametrize("impl", ["reference", "sdpa", "chunked-small"])
def test_fullgraph_compile_of_every_impl_equals_eager(impl):
    """The graph is captured whole (no break at the attention) and its backward equals eager's."""
    tensors, seed = _inputs(4, 3, dtype=torch.float32)
    fn = _impl_fn(impl)
    want = _run(fn, tensors)
    torch._dynamo.reset()
    got = _run(torch.compile(fn, fullgraph=True, backend="aot_eager"), tensors)
    for name, a, r in zip(["out", "q", "k", "v", "rel_h", "rel_w"], got, want, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{impl} {n}: {m} (seed {seed})")


@pytest.mark.parametrize("impl", ["reference", "sdpa", "chunked", "triton", "auto"])
def test_integer_and_mixed_dtypes_are_refused_naming_the_argument(impl):
    (q, k, v, rel_h, rel_w), _ = _inputs(3, 4, dtype=torch.float32, grad=False)
    with pytest.raises(ValueError, match=r"^q: expected a floating-point dtype, got int64$"):
        AF.relative_attention_2d(q.long(), k.long(), v.long(), impl=impl)
    with pytest.raises(ValueError, match=r"^v: expected a floating-point dtype, got int32$"):
        AF.relative_attention_2d(q, k, v.int(), rel_h, rel_w, impl=impl)
    with pytest.raises(ValueError, match=r"^k: expected the dtype of q \(float32\), got float64; "):
        AF.relative_attention_2d(q, k.double(), v, rel_h, rel_w, impl=impl)
    with pytest.raises(ValueError, match=r"^rel_w: expected the dtype of q \(float64\), got float32; "):
        AF.relative_attention_2d(q.double(), k.double(), v.double(), rel_h.double(), rel_w, impl=impl)
    with pytest.raises(ValueError, match=r"^rel_h: expected a floating-point dtype, got int64$"):
        AF.relative_attention_probs(q, k, rel_h.long(), rel_w)


def test_autocast_accepts_inputs_of_mixed_dtypes():
    """Under autocast every input runs in the autocast dtype (AAConv2d passes bf16 q/k/v and float32 tables)."""
    (q, k, v, rel_h, rel_w), _ = _inputs(3, 4, dtype=torch.float32, grad=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = AF.relative_attention_2d(q.bfloat16(), k.bfloat16(), v.bfloat16(), rel_h, rel_w, impl="sdpa")
    assert out.dtype == torch.bfloat16
