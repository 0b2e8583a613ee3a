"""AAConv2d: shapes, parameter counts, depth rounding, exactness of the attention branch, sizing, errors."""

from __future__ import annotations

import pytest
import torch

from aacn.nn import AAConv2d
from aacn.nn import functional as AF


def _layer(**kw):
    args = dict(in_channels=8, out_channels=16, kernel_size=3, dk=8, dv=4, num_heads=2)
    args.update(kw)
    return AAConv2d(**args)


@pytest.mark.parametrize("relative", [True, False])
@pytest.mark.parametrize("stride, size, expected", [(1, (9, 7), (9, 7)), (2, (8, 8), (4, 4)), (2, (9, 7), (5, 4))])
def test_output_shapes(relative, stride, size, expected):
    layer = _layer(stride=stride, relative=relative, feature_size=size)
    out = layer(torch.randn(2, 8, *size))
    assert out.shape == (2, 16, *expected)
    assert (layer.rel_h is not None) == relative
    if relative:  # embeddings sized for the attention grid (pooled when stride 2)
        assert layer.rel_h.shape == (2 * expected[0] - 1, 4) and layer.rel_w.shape == (2 * expected[1] - 1, 4)
    assert layer.attention_weights(torch.randn(2, 8, *size), [(0, 0), (1, 2)]).shape == (2, 2, 2, *expected)


def test_fully_attentional_has_no_conv_branch():
    layer = _layer(dk=1.0, dv=1.0, num_heads=4, feature_size=6, stride=2)
    assert layer.conv is None and layer.dv == 16 and layer.dk == 16
    assert layer(torch.randn(3, 8, 6, 6)).shape == (3, 16, 3, 3)


@pytest.mark.parametrize("bias, batchnorm, stride", [(False, True, 1), (True, False, 1), (False, True, 2)])
def test_parameter_count(bias, batchnorm, stride):
    layer = _layer(bias=bias, batchnorm=batchnorm, stride=stride, feature_size=(6, 5))
    # in=8, out=16, k=3, dk=8, dv=4, Nh=2 -> dkh=4; conv branch 16-4=12 channels.
    conv = 8 * 12 * 3 * 3 + (12 if bias else 0)
    qkv = 8 * (2 * 8 + 4) + (20 if bias else 0)
    out_proj = 4 * 4 + (4 if bias else 0)
    bn = 2 * 16 if batchnorm else 0
    gh, gw = (6, 5) if stride == 1 else (3, 3)
    rel = (2 * gh - 1) * 4 + (2 * gw - 1) * 4
    assert sum(p.numel() for p in layer.parameters()) == conv + qkv + out_proj + bn + rel


@pytest.mark.parametrize(
    "out_channels, num_heads, dk, dv, expected",
    [
        (64, 8, 0.2, 0.2, (16, 16)),  # 12.8 -> nearest multiple of 8
        (64, 8, 0.25, 1.0, (16, 64)),
        (20, 8, 0.5, 1.0, (8, 16)),  # 10 -> 8; dv capped at the largest multiple <= out_channels
        (64, 8, 0.01, 0.01, (8, 8)),  # at least one channel per head
        (30, 3, 0.25, 0.5, (9, 15)),  # 7.5 -> 2.5 per head rounds half up to 3
        (64, 8, 24, 40, (24, 40)),
    ],
)
def test_depth_resolution(out_channels, num_heads, dk, dv, expected):
    layer = AAConv2d(4, out_channels, 3, dk=dk, dv=dv, num_heads=num_heads, feature_size=4)
    assert (layer.dk, layer.dv) == expected
    assert layer.num_heads == num_heads and layer.relative and layer.feature_size == (4, 4)


def test_attention_branch_matches_hand_computation():
    """Fully attentional, no BN, no relative: out = W^O [softmax(q_h k_h^T / sqrt(dkh)) v_h]_h per head."""
    torch.manual_seed(0)
    layer = _layer(dk=6, dv=1.0, num_heads=2, relative=False, batchnorm=False).double()
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    out = layer(x)
    wq, wk, wv = layer.qkv.weight[:, :, 0, 0].split([6, 6, 16])
    pix = x.flatten(2).transpose(1, 2)  # (B, HW, C)
    heads = []
    for h in range(2):
        q, k = pix @ wq[3 * h : 3 * h + 3].T, pix @ wk[3 * h : 3 * h + 3].T
        v = pix @ wv[8 * h : 8 * h + 8].T
        heads.append(torch.softmax(q @ k.transpose(1, 2) / 3**0.5, -1) @ v)
    expected = torch.cat(heads, -1) @ layer.out_proj.weight[:, :, 0, 0].T
    assert (out.flatten(2).transpose(1, 2) - expected).abs().max().item() <= 1e-12


@pytest.mark.parametrize("stride", [1, 2])
def test_impls_agree_inside_layer_and_weights_match_reference(stride):
    layer = _layer(stride=stride, feature_size=(7, 6), attention_impl="reference").double().eval()
    x = torch.randn(2, 8, 7, 6, dtype=torch.float64, requires_grad=True)

    def run():
        out = layer(x)
        grads = torch.autograd.grad(out.square().sum(), [x, *layer.parameters()])
        return [out.detach(), *grads]

    expected = run()
    for impl in ["sdpa", "chunked"]:
        layer.attention_impl = impl
        for got, ref in zip(run(), expected, strict=True):
            assert (got - ref).abs().max().item() <= 1e-10, impl
    x = x.detach()
    # attention_weights == softmax rows from the reference with one-hot values
    q, k, _, rel_h, rel_w = layer._heads(x)
    h, w = q.shape[2:4]
    onehot = torch.eye(h * w, dtype=x.dtype).view(1, 1, h, w, h * w).expand(2, 2, h, w, h * w)
    full = AF.relative_attention_2d(q, k, onehot, rel_h, rel_w, impl="reference")
    probs = layer.attention_weights(x, [(1, 2), (h - 1, 0)])
    assert (probs[:, :, 0].flatten(-2) - full[:, :, 1, 2]).abs().max().item() <= 1e-12
    assert (probs[:, :, 1].flatten(-2) - full[:, :, h - 1, 0]).abs().max().item() <= 1e-12


def test_smaller_input_uses_central_embeddings_and_larger_is_rejected():
    torch.manual_seed(0)
    big = _layer(feature_size=(7, 6), batchnorm=False)
    small = _layer(feature_size=(4, 3), batchnorm=False)
    small.load_state_dict({**big.state_dict(), "rel_h": big.rel_h[3:10], "rel_w": big.rel_w[3:8]})
    x = torch.randn(1, 8, 4, 3)
    assert torch.allclose(big(x), small(x), atol=1e-6)
    with pytest.raises(ValueError, match=r"x: input 8x6 is larger than feature_size 7x6"):
        big(torch.randn(1, 8, 8, 6))


def test_lazy_embeddings_state_dict_and_optimizer():
    torch.manual_seed(0)
    sized = _layer(stride=2, feature_size=(8, 6))
    lazy = _layer(stride=2)
    lazy.load_state_dict(sized.state_dict())  # materialises rel_h/rel_w from the saved shapes
    assert lazy.rel_h.shape == (7, 4) and lazy.feature_size == (8, 6)
    x = torch.randn(2, 8, 8, 6)
    assert torch.equal(lazy(x), sized(x))

    fresh = _layer()
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1)  # created before the embeddings exist
    fresh(torch.randn(2, 8, 5, 4)).square().sum().backward()
    assert fresh.feature_size == (5, 4) and fresh.rel_w.shape == (7, 4)
    before = fresh.rel_w.detach().clone()
    opt.step()
    assert not torch.equal(before, fresh.rel_w.detach())


def test_relative_embedding_init_std():
    layer = AAConv2d(4, 64, 3, dk=64, dv=8, num_heads=1, feature_size=64)  # dkh = 64 -> std 1/8
    values = torch.cat([layer.rel_h.flatten(), layer.rel_w.flatten()])
    assert abs(values.std().item() - 0.125) < 0.01 and abs(values.mean().item()) < 0.01


@pytest.mark.parametrize(
    "kw, pattern",
    [
        (dict(dk=7), r"^dk: expected a multiple of num_heads=2"),
        (dict(dv=5), r"^dv: expected a multiple of num_heads=2"),
        (dict(dk=0), r"^dk: expected a positive depth"),
        (dict(dk=1.5), r"^dk: a float .* must be in \(0, 1\], got 1.5"),
        (dict(dv=0.0), r"^dv: a float .* must be in \(0, 1\], got 0.0"),
        (dict(dv=18), r"^dv: expected at most out_channels=16, got 18"),
        (dict(stride=3), r"^stride: expected 1 or 2"),
        (dict(padding=0), r"^padding: expected 'same' padding"),
        (dict(num_heads=0), r"^num_heads: expected a positive int"),
        (dict(attention_impl="flex"), r"^attention_impl: expected one of"),
        (dict(feature_size=(0, 4)), r"^feature_size: expected positive"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        _layer(**kw)


def test_bad_input_channels():
    with pytest.raises(ValueError, match=r"^x: expected shape \(B, 8, H, W\), got \(1, 3, 4, 4\)"):
        _layer(feature_size=4)(torch.randn(1, 3, 4, 4))


@pytest.mark.parametrize("impl", ["reference", "sdpa", "chunked"])
def test_layer_compiles_as_one_graph_equal_to_eager(impl):
    """torch.compile(fullgraph=True) captures both branches, the attention included (no graph break): outputs and
    gradients equal the eager layer's."""
    torch.manual_seed(0)
    layer = AAConv2d(6, 16, 3, dk=8, dv=8, num_heads=2, feature_size=(5, 5), attention_impl=impl).double()
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    out_eager = layer(x)
    grads_eager = torch.autograd.grad(out_eager.square().sum(), list(layer.parameters()))
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), list(layer.parameters()))
    torch.testing.assert_close(out, out_eager)
    for a, b in zip(grads, grads_eager, strict=True):
        torch.testing.assert_close(a, b)
