"""Attention-augmented convolution (Bello et al., ICCV 2019): ``AAConv(X) = BN(Concat[Conv(X), MHA(X)])``.

Paper symbols and their argument names:

* ``Fout`` -> ``out_channels``; ``Nh`` -> ``num_heads``;
* ``dk``/``dv`` -> ``dk``/``dv``: total key/value depth over all heads, given as ints, or as floats in (0, 1]
  meaning ``kappa = dk / Fout`` and ``upsilon = dv / Fout`` (the paper's κ, υ);
* ``dkh = dk / Nh``, ``dvh = dv / Nh``: per-head depths;
* ``r^H``, ``r^W`` -> parameters ``rel_h`` (2H-1, dkh) and ``rel_w`` (2W-1, dkh), shared by all heads;
* ``W^O`` -> ``self.out_proj`` (1x1 conv, dv -> dv); ``W^q, W^k, W^v`` -> ``self.qkv`` (one 1x1 conv, in -> 2dk+dv).

Rounding of fractions: a float ``f`` gives a per-head depth ``max(1, floor(f * out_channels / num_heads + 0.5))``
(round half up), i.e. ``f * out_channels`` rounded to the nearest multiple of ``num_heads`` (at least
``num_heads``). For ``dv`` the result is then capped at the largest multiple of ``num_heads`` that is
``<= out_channels``. Example: ``out_channels=64, num_heads=8, dk=0.2`` -> 12.8 -> dkh=2 -> dk=16. A fraction
below :data:`MIN_FRACTION` (e.g. ``dk=1e-9``) is refused rather than rounded up to ``num_heads``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from aacn.nn.functional import IMPLS, relative_attention_2d, relative_attention_probs

__all__ = ["AAConv2d", "resolve_depth"]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name}: expected an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


MIN_FRACTION = 1e-3  # the smallest dk/dv fraction accepted; the paper's are 0.1 to 0.25


def resolve_depth(value: int | float, name: str, out_channels: int, num_heads: int) -> int:
    """Total depth (multiple of ``num_heads``) for ``dk``/``dv`` given as an int or a fraction of out_channels.

    See the module docstring for the rounding rule. Raises ``ValueError`` naming ``name`` on bad values.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected an int or a float fraction in (0, 1], got {value!r}")
    if isinstance(value, float):
        if not 0.0 < value <= 1.0:
            raise ValueError(
                f"{name}: a float is a fraction of out_channels and must be in (0, 1], got {value}; "
                f"pass an int for an absolute depth"
            )
        if value < MIN_FRACTION:  # a typo (1e-9), which the rounding would silently turn into num_heads
            raise ValueError(f"{name}: fraction {value} is below {MIN_FRACTION} (no attention layer is that thin); "
                             f"pass a larger fraction or an int depth")
        depth = num_heads * max(1, math.floor(value * out_channels / num_heads + 0.5))
        if name == "dv" and depth > out_channels:
            depth = num_heads * (out_channels // num_heads)
        if depth < 1:
            raise ValueError(
                f"{name}: fraction {value} of out_channels={out_channels} gives no multiple of "
                f"num_heads={num_heads}; use more out_channels or fewer heads"
            )
        return depth
    if value < 1:
        raise ValueError(f"{name}: expected a positive depth, got {value}")
    if value % num_heads:
        raise ValueError(
            f"{name}: expected a multiple of num_heads={num_heads} (per-head depth {name}/num_heads), got {value}"
        )
    return value


class AAConv2d(LazyModuleMixin, nn.Module):
    """Attention-augmented 2D convolution.

    The output concatenates ``out_channels - dv`` channels of a ``kernel_size`` convolution with ``dv`` channels
    of multi-head self-attention (``num_heads`` heads, 2D relative position logits when ``relative``),
    followed by a BatchNorm (``batchnorm=False`` drops it, e.g. when the surrounding block already has one).
    ``dv == out_channels`` gives a fully attentional layer (no conv branch).

    Stride 2: the convolution is strided and the attention runs on the 2x2 average-pooled input
    (``ceil_mode=True``) so both branches have ``ceil(H/2) x ceil(W/2)`` outputs. ``padding`` defaults to
    ``kernel_size // 2`` and must be "same" padding (``2 * padding == kernel_size - 1``).

    Relative embeddings are sized for ``feature_size=(H, W)``, the layer's *input* size; any input no larger
    works (the central part of the tables is used), a larger one raises ``ValueError``. Without
    ``feature_size`` the tables are created lazily from the first input (``torch.nn.LazyModuleMixin``):
    loading a ``state_dict`` materialises them, and an optimizer created before the first forward still
    updates them, but model code should pass ``feature_size`` so parameters exist at construction (needed by
    DDP, ``torch.compile`` and parameter counting).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, bias: as in ``nn.Conv2d``; ``bias`` applies to
            the convolution, the q/k/v projection and ``W^O`` alike.
        dk, dv: total key/value depth (int, multiple of ``num_heads``) or fraction (float in (0, 1]).
        num_heads: ``Nh``.
        relative: use relative position logits.
        batchnorm: add ``BatchNorm2d(out_channels)`` after the concat.
        feature_size: input (H, W) (or an int for square inputs) that sizes the relative embeddings.
        attention_impl: ``impl`` passed to :func:`aacn.nn.functional.relative_attention_2d`.
    """

    cls_to_become = None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        *,
        dk: int | float,
        dv: int | float,
        num_heads: int,
        stride: int = 1,
        relative: bool = True,
        padding: int | Sequence[int] | None = None,
        bias: bool = False,
        batchnorm: bool = True,
        feature_size: int | Sequence[int] | None = None,
        attention_impl: str = "auto",
    ) -> None:
        super().__init__()
        for name, val in (("in_channels", in_channels), ("out_channels", out_channels), ("num_heads", num_heads)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name}: expected a positive int, got {val!r}")
        if stride not in (1, 2):
            raise ValueError(f"stride: expected 1 or 2, got {stride!r}")
        if attention_impl not in IMPLS:
            raise ValueError(f"attention_impl: expected one of {', '.join(map(repr, IMPLS))}, got {attention_impl!r}")
        kernel = _pair(kernel_size, "kernel_size")
        pad = tuple(k // 2 for k in kernel) if padding is None else _pair(padding, "padding")
        if any(2 * p != k - 1 for p, k in zip(pad, kernel, strict=True)):
            raise ValueError(
                f"padding: expected 'same' padding (kernel_size - 1) / 2 per dim for kernel_size {kernel} "
                f"(odd kernels only), got {pad}"
            )
        self.dk = resolve_depth(dk, "dk", out_channels, num_heads)
        self.dv = resolve_depth(dv, "dv", out_channels, num_heads)
        if self.dv > out_channels:
            raise ValueError(f"dv: expected at most out_channels={out_channels}, got {self.dv}")
        self.in_channels, self.out_channels, self.num_heads = in_channels, out_channels, num_heads
        self.dkh, self.dvh = self.dk // num_heads, self.dv // num_heads
        self.stride, self.relative, self.attention_impl = stride, relative, attention_impl
        self.feature_size: tuple[int, int] | None = None

        conv_channels = out_channels - self.dv
        self.conv = (
            nn.Conv2d(in_channels, conv_channels, kernel, stride=stride, padding=pad, bias=bias)
            if conv_channels > 0
            else None
        )
        self.qkv = nn.Conv2d(in_channels, 2 * self.dk + self.dv, 1, bias=bias)
        self.out_proj = nn.Conv2d(self.dv, self.dv, 1, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels) if batchnorm else None
        if relative:
            self.rel_h = UninitializedParameter()
            self.rel_w = UninitializedParameter()
        else:
            self.register_parameter("rel_h", None)
            self.register_parameter("rel_w", None)
        if feature_size is not None:
            self._set_feature_size(_pair(feature_size, "feature_size"))
            self.initialize_parameters()
        self._register_load_state_dict_pre_hook(self._size_from_state_dict)

    # ------------------------------------------------------------------------------------------- sizing

    def _grid(self, h: int, w: int) -> tuple[int, int]:
        """Attention grid for an input of size ``h x w`` (2x2 pooled with ceil_mode when stride 2)."""
        return (h, w) if self.stride == 1 else (-(-h // 2), -(-w // 2))

    def _set_feature_size(self, size: tuple[int, int]) -> None:
        if min(size) < 1:
            raise ValueError(f"feature_size: expected positive (H, W), got {size}")
        self.feature_size = size

    def initialize_parameters(self, x: Tensor | None = None) -> None:  # noqa: D401 (LazyModuleMixin hook)
        """Create the relative embeddings (from ``feature_size`` or the first input), init N(0, dkh^-0.5)."""
        if self.feature_size is None:
            if x is None:
                return
            self._check_size(x)
            self._set_feature_size((int(x.shape[-2]), int(x.shape[-1])))
        if not self.has_uninitialized_params():
            return
        gh, gw = self._grid(*self.feature_size)
        with torch.no_grad():
            for param, n in ((self.rel_h, gh), (self.rel_w, gw)):
                param.materialize((2 * n - 1, self.dkh))
                param.normal_(0.0, self.dkh**-0.5)

    def _size_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Before loading: derive ``feature_size`` from saved embeddings (largest input they support)."""
        key = prefix + "rel_h"
        if self.relative and self.feature_size is None and key in state_dict:
            gh = (state_dict[key].shape[0] + 1) // 2
            gw = (state_dict[prefix + "rel_w"].shape[0] + 1) // 2
            self.feature_size = (gh * self.stride, gw * self.stride)

    def _check_size(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if self.feature_size is not None and self.relative:
            h, w = x.shape[-2:]
            if h > self.feature_size[0] or w > self.feature_size[1]:
                raise ValueError(
                    f"x: input {h}x{w} is larger than feature_size {self.feature_size[0]}x{self.feature_size[1]} "
                    f"the relative embeddings were sized for; construct AAConv2d with a larger feature_size"
                )

    # ---------------------------------------------------------------------------------------- attention

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """q, k (B, Nh, H', W', dkh), v (B, Nh, H', W', dvh) and the central parts of rel_h/rel_w."""
        if self.stride == 2:
            x = F.avg_pool2d(x, 2, stride=2, ceil_mode=True)
        b, _, h, w = x.shape
        qkv = self.qkv(x)
        q, k, v = torch.split(qkv, [self.dk, self.dk, self.dv], dim=1)
        q = q.reshape(b, self.num_heads, self.dkh, h, w).permute(0, 1, 3, 4, 2)
        k = k.reshape(b, self.num_heads, self.dkh, h, w).permute(0, 1, 3, 4, 2)
        v = v.reshape(b, self.num_heads, self.dvh, h, w).permute(0, 1, 3, 4, 2)
        rel_h = rel_w = None
        if self.relative:
            gh, gw = (self.rel_h.shape[0] + 1) // 2, (self.rel_w.shape[0] + 1) // 2
            rel_h = self.rel_h[gh - h : gh + h - 1]
            rel_w = self.rel_w[gw - w : gw + w - 1]
        return q, k, v, rel_h, rel_w

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride) (rounded up)."""
        self._check_size(x)
        attn = self._attend(x)
        out = attn if self.conv is None else torch.cat([self.conv(x), attn], dim=1)
        return out if self.bn is None else self.bn(out)

    def _attend(self, x: Tensor) -> Tensor:
        """The attention branch, MHA(X) projected by W^O: (B, in_channels, H, W) -> (B, dv, H', W').

        Traceable by ``torch.compile`` and ``torch.export`` for every ``attention_impl``: the hand-written kernels
        are registered operators (see :mod:`aacn.nn.functional`), so a compiled model is one graph.
        """
        q, k, v, rel_h, rel_w = self._heads(x)
        b, nh, h, w, dvh = v.shape
        attn = relative_attention_2d(q, k, v, rel_h, rel_w, impl=self.attention_impl)
        return self.out_proj(attn.permute(0, 1, 4, 2, 3).reshape(b, nh * dvh, h, w))

    def attention_weights(self, x: Tensor, queries: Sequence[Sequence[int]] | Tensor) -> Tensor:
        """Attention probabilities (B, Nh, P, H', W') of query pixels ``queries`` ((row, col) on the attention
        grid, i.e. after pooling when stride 2), without building the full (H'W')^2 matrix."""
        if self.has_uninitialized_params():
            self.initialize_parameters(x)
        self._check_size(x)
        q, k, _, rel_h, rel_w = self._heads(x)
        return relative_attention_probs(q, k, rel_h, rel_w, queries=queries)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, dk={self.dk}, dv={self.dv}, num_heads={self.num_heads}, "
            f"stride={self.stride}, relative={self.relative}, feature_size={self.feature_size}, "
            f"attention_impl={self.attention_impl!r}"
        )
