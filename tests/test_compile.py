"""Whole-graph capture: ``torch.compile(fullgraph=True)`` and ``torch.export`` of attention-augmented models.

Tiny widths and 8x8 inputs keep compilation affordable. ``backend="aot_eager"`` traces the forward and the
backward through AOTAutograd (the same capture Inductor gets, including the fake implementations of the custom
operators) without generating code; one test runs Inductor itself where a C++ compiler is present.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from aacn.models import create_model

CASES = [  # (model, placement, attention_impl): every placement of both families, both kinds of impl
    ("wrn-10-1", "none", "auto"),
    ("wrn-10-1", "seed", "sdpa"),
    ("wrn-10-1", "paper", "auto"),
    ("resnet34", "none", "auto"),
    ("resnet34", "seed", "auto"),
    ("resnet34", "paper", "sdpa"),
]


def _model(name, placement, impl, base_width=2):
    torch.manual_seed(0)
    return create_model(name, num_classes=10, base_width=base_width, attention=placement, num_heads=2,
                        min_key_depth_per_head=2, input_size=8, attention_impl=impl)


def _output_and_grads(model, fn, x):
    model.zero_grad(set_to_none=True)
    out = fn(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return [out.detach()] + [p.grad.clone() for p in model.parameters()]


def _assert_compiled_equals_eager(name, placement, impl, backend, rtol, atol, base_width=2):
    model = _model(name, placement, impl, base_width).train()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    want = _output_and_grads(model, model, x)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    got = _output_and_grads(model, compiled, x)
    assert len(got) == len(want) == 1 + len(list(model.parameters()))
    for (pname, _), a, b in zip([("output", None), *model.named_parameters()], got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, p=pname: f"{p}: {m}")


@pytest.mark.parametrize("name, placement, impl", CASES)
def test_fullgraph_compile_equals_eager_forward_and_backward(name, placement, impl):
    torch._dynamo.reset()
    _assert_compiled_equals_eager(name, placement, impl, "aot_eager", rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="Inductor's CPU code generation needs a C++ compiler (g++ or c++ on PATH)")
@pytest.mark.parametrize("impl", ["sdpa", "chunked"])
def test_inductor_fullgraph_compile_equals_eager(impl):
    """Inductor generates code around the registered CPU operators (one compile worker: tiny graphs gain nothing
    from a pool). Base width 8: Inductor's CPU backward of these convolutions crashes at 2 channels, with or
    without attention."""
    torch._dynamo.reset()
    with torch._inductor.config.patch(compile_threads=1):
        _assert_compiled_equals_eager("wrn-10-1", "seed", impl, "inductor", rtol=1e-3, atol=1e-4, base_width=8)


@pytest.mark.parametrize("name, placement, impl", [("wrn-10-1", "paper", "sdpa"), ("resnet34", "seed", "auto")])
def test_exported_program_equals_eager_in_eval_mode(name, placement, impl):
    model = _model(name, placement, impl)
    with torch.no_grad():  # a few steps of running statistics, so eval-mode BatchNorm is not the identity
        for _ in range(2):
            model(torch.randn(8, 3, 8, 8))
    model.eval()
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(5, 3, 8, 8, generator=gen) * 2 - 1
    exported = torch.export.export(model, (images,))
    with torch.no_grad():
        want = model(images)
    torch.testing.assert_close(exported.module()(images), want, rtol=1e-5, atol=1e-6)
    ops = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    if impl == "sdpa":  # the registered operator is one node of the exported graph
        assert "aacn.folded_flash_attention_cpu.default" in ops, sorted(ops)
