"""The C++ CPU kernel (``impl="cpu"``, :mod:`aacn.nn.cpu_kernel`): exactness against the reference in float64,
tolerances in float32/bfloat16, the registered operators, compile/export, and the ``"auto"`` choice and fallback.

Built once per session by the module fixture (a minute on a slow machine); every test skips with the reason where
the extension cannot be built.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from aacn.nn import cpu_kernel as CK
from aacn.nn import functional as AF
from aacn.nn import relative_attention as RA


@pytest.fixture(scope="module", autouse=True)
def kernel():
    reason = CK.cpu_kernel_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def _inputs(h, w, dtype=torch.float64, b=2, nh=2, dkh=3, dvh=5, seed=0, channel_major=False):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(b, nh, h, w, dkh), (b, nh, h, w, dkh), (b, nh, h, w, dvh), (2 * h - 1, dkh), (2 * w - 1, dkh)]
    ts = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    if channel_major:  # as AAConv2d passes them: permuted views of (B, Nh, d, H, W) tensors
        ts[:3] = [t.permute(0, 1, 4, 2, 3).contiguous().permute(0, 1, 3, 4, 2) for t in ts[:3]]
    return [t.requires_grad_() for t in ts]


def _run(impl, tensors, tables="both", scale=None):
    q, k, v, rel_h, rel_w = tensors
    rel_h = rel_h if tables in ("both", "rel_h") else None
    rel_w = rel_w if tables in ("both", "rel_w") else None
    out = AF.relative_attention_2d(q, k, v, rel_h, rel_w, scale=scale, impl=impl)
    weight = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)
    wanted = [t for t in tensors if t is not None]
    grads = torch.autograd.grad((out * weight).sum(), wanted, allow_unused=True)
    return [out.detach()] + [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, wanted, strict=True)]


@pytest.mark.parametrize("tables", ["both", "rel_h", "rel_w", "none"])
@pytest.mark.parametrize("size", [(1, 1), (3, 5), (5, 3), (8, 8), (6, 17)])
def test_float64_forward_and_every_gradient_match_reference(size, tables):
    tensors = _inputs(*size, channel_major=size == (3, 5))
    want, got = _run("reference", tensors, tables), _run("cpu", tensors, tables)
    for name, a, r in zip(["out", "q", "k", "v", "rel_h", "rel_w"], got, want, strict=True):
        assert (a - r).abs().max().item() <= 1e-10, f"{size} {tables} {name}"


def test_float64_embedding_gradients_summed_over_many_pairs_match_reference():
    tensors = _inputs(3, 4, b=35, nh=2, seed=3)  # 70 (batch, head) pairs: more than the kernel's 64 groups
    want, got = _run("reference", tensors), _run("cpu", tensors)
    for name, a, r in zip(["out", "q", "k", "v", "rel_h", "rel_w"], got, want, strict=True):
        assert (a - r).abs().max().item() <= 1e-10, name


@pytest.mark.parametrize("dkh, dvh", [(1, 1), (6, 3), (26, 13), (20, 20)])
def test_float64_head_sizes_and_scale(dkh, dvh):
    tensors = _inputs(4, 6, b=1, nh=3, dkh=dkh, dvh=dvh, seed=dkh)
    want, got = _run("reference", tensors, scale=0.37), _run("cpu", tensors, scale=0.37)
    for a, r in zip(got, want, strict=True):
        assert (a - r).abs().max().item() <= 1e-10


@pytest.mark.parametrize("h, w, dkh, dvh", [(7, 9, 6, 3), (17, 5, 9, 8)])  # 17: two groups of 16 key rows
def test_float32_close_to_float64_reference(h, w, dkh, dvh):
    tensors = _inputs(h, w, dkh=dkh, dvh=dvh)
    want = _run("reference", tensors)
    got = _run("cpu", [t.detach().float().requires_grad_() for t in tensors])
    for name, a, r in zip(["out", "q", "k", "v", "rel_h", "rel_w"], got, want, strict=True):
        assert a.dtype == torch.float32
        err = (a.double() - r).abs().max().item()
        assert err <= 2e-5 * max(1.0, r.abs().max().item()), f"{name}: {err}"


def test_bfloat16_inputs_and_autocast_close_to_float32():
    tensors = _inputs(5, 6, dtype=torch.float32, dkh=8, dvh=8)
    want = AF.relative_attention_2d(*tensors, impl="reference")
    q, k, v, rel_h, rel_w = tensors
    out = AF.relative_attention_2d(q.bfloat16(), k.bfloat16(), v.bfloat16(), rel_h.bfloat16(), rel_w.bfloat16(),
                                   impl="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_autocast = AF.relative_attention_2d(q, k, v, rel_h, rel_w, impl="cpu")
    for o in (out, out_autocast):
        assert o.dtype == torch.bfloat16
        assert (o.float() - want).abs().mean().item() <= 0.02 * want.abs().mean().item()
    out_autocast.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in tensors)


def test_large_logits_stay_finite():
    q, k, v, rel_h, rel_w = (t.detach() for t in _inputs(4, 4, dtype=torch.float32))
    q = (q * 100).requires_grad_()
    out = AF.relative_attention_2d(q, k, v, rel_h, rel_w, impl="cpu")
    want = AF.relative_attention_2d(q.double(), k.double(), v.double(), rel_h.double(), rel_w.double(),
                                    impl="reference")
    assert (out.double() - want).abs().max().item() <= 1e-3
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("b", [3, 35])  # 6 pairs: one per group; 70: groups of one and two pairs (64 groups)
def test_result_does_not_depend_on_the_thread_count(b):
    tensors = _inputs(6, 7, dtype=torch.float32, b=b, nh=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run("cpu", tensors)
        torch.set_num_threads(2)
        two = _run("cpu", tensors)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tables", ["both", "rel_h", "none"])
def test_operators_pass_opcheck(dtype, tables):
    b, nh, h, w, dkh, dvh = 2, 2, 3, 4, 3, 5
    gen = torch.Generator().manual_seed(1)
    q, k = (torch.randn(b, nh, dkh, h * w, generator=gen).to(dtype).requires_grad_() for _ in range(2))
    v = torch.randn(b, nh, h * w, dvh, generator=gen).to(dtype).transpose(-1, -2).requires_grad_()  # strided
    rd = RA.softmax_dtype(dtype)
    rh = torch.randn(2 * h - 1, dkh, generator=gen, dtype=rd).requires_grad_() if tables != "none" else None
    rw = torch.randn(2 * w - 1, dkh, generator=gen, dtype=rd).requires_grad_() if tables == "both" else None
    op, backward = torch.ops.aacn.relative_attention_cpu, torch.ops.aacn.relative_attention_cpu_backward
    torch.library.opcheck(op, (q, k, v, rh, rw, 0.5, h, w))
    out, lse = op(q, k, v, rh, rw, 0.5, h, w)
    assert out.shape == (b, nh, dvh, h * w) and out.dtype == dtype and lse.dtype == rd
    args = (torch.randn_like(out), *(t.detach() if t is not None else None for t in (q, k, v, rh, rw)),
            out.detach(), lse, 0.5, h, w)
    torch.library.opcheck(backward, args)


def test_fullgraph_compile_equals_eager():
    tensors = _inputs(4, 3, dtype=torch.float32)

    def fn(q, k, v, rel_h, rel_w):
        return AF.relative_attention_2d(q, k, v, rel_h, rel_w, impl="cpu")

    want = [t.clone() for t in _run("cpu", tensors)]
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(*tensors)
    weight = torch.linspace(-1.0, 1.0, out.numel()).view_as(out)
    got = [out.detach(), *torch.autograd.grad((out * weight).sum(), tensors)]
    for a, r in zip(got, want, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)


def test_export_keeps_the_operator_whole():
    class Attend(torch.nn.Module):
        def forward(self, q, k, v, rel_h, rel_w):
            return AF.relative_attention_2d(q, k, v, rel_h, rel_w, impl="cpu")

    tensors = [t.detach() for t in _inputs(3, 4, dtype=torch.float32)]
    exported = torch.export.export(Attend(), tuple(tensors))
    ops = {str(node.target) for module in exported.graph_module.modules() if isinstance(module, torch.fx.GraphModule)
           for node in module.graph.nodes if node.op == "call_function"}  # also inside the autocast-off region
    assert "aacn.relative_attention_cpu.default" in ops, sorted(ops)
    torch.testing.assert_close(exported.module()(*tensors), Attend()(*tensors))


def test_auto_uses_the_kernel_on_cpu_unless_switched_off(monkeypatch):
    x = torch.zeros(32, 8, 16, 16, 1)
    assert AF.resolve_impl("auto", x) == "cpu"
    assert AF.resolve_impl("auto", x.double()) == "cpu"
    monkeypatch.setenv(CK.ENV_SWITCH, "0")
    assert AF.resolve_impl("auto", x) == "sdpa"
    assert AF.resolve_impl("cpu", x) == "cpu"  # an explicit request still runs it


def test_a_failed_build_falls_back_with_one_warning_and_explicit_use_raises(monkeypatch):
    monkeypatch.setattr(CK, "_module", None)
    monkeypatch.setattr(CK, "_failure", "CalledProcessError: g++ not found")
    monkeypatch.setattr(CK, "_warned", False)
    monkeypatch.delenv(CK.ENV_SWITCH, raising=False)
    x = torch.zeros(32, 8, 16, 16, 1)
    with pytest.warns(RuntimeWarning, match=r"uses the slower CPU paths: could not build .*g\+\+ not found"):
        assert AF.resolve_impl("auto", x) == "sdpa"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert AF.resolve_impl("auto", x) == "sdpa"  # warned once only
    tensors = [t.detach() for t in _inputs(3, 4)]
    with pytest.raises(ValueError, match=r"^impl='cpu' could not build the C\+\+ CPU kernel .*; use impl='auto'$"):
        AF.relative_attention_2d(*tensors, impl="cpu")
