"""Functional core: exact 2D multi-head self-attention with relative position logits (Bello et al. 2019).

Symbols of the paper and their names here:

* ``Nh`` -- number of heads (dim 1 of every tensor); ``dkh``/``dvh`` -- per-head key/value depth (last dim);
* ``H x W`` -- the grid; a query pixel ``(x, y)`` has row ``x`` in ``[0, H)`` and column ``y`` in ``[0, W)``;
* ``r^H`` -> ``rel_h`` of shape ``(2H-1, dkh)``, ``r^W`` -> ``rel_w`` of shape ``(2W-1, dkh)``: one pair per layer,
  shared by all heads; row ``x' - x + H - 1`` of ``rel_h`` embeds a vertical offset ``x' - x``.

Query ``(x, y)`` attends to key ``(x', y')`` with the logit::

    scale * ( q[x,y] . k[x',y']  +  q[x,y] . rel_w[y'-y+W-1]  +  q[x,y] . rel_h[x'-x+H-1] )

(``scale = dkh ** -0.5`` by default), softmax over all ``H*W`` keys, output = probability-weighted sum of ``v``.
A ``None`` table drops its term. Implementations (``impl``):

* ``"reference"`` -- the paper's appendix algorithm; materialises ``(HW)^2`` logits. Ground truth for tests.
* ``"sdpa"`` -- folds the relative terms into ``H + W`` extra query/key columns and runs a fused attention
  kernel, so no ``(HW)^2`` tensor is built. CUDA: ``F.scaled_dot_product_attention`` restricted to the flash /
  memory-efficient / cuDNN backends (never the math backend); memory ``O(B*Nh*HW*(dkh+H+W))``. CPU: the
  flash kernel over chunks of (batch x head) pairs, keeping only the compact output and log-sum-exp for
  backward (:mod:`aacn.nn.flash_cpu`); memory ``O(B*Nh*HW*dvh)`` plus a bounded chunk.
* ``"chunked"`` -- PyTorch operations, any device and dtype: blocks of queries; only the output and the
  log-sum-exp are saved, and backward recomputes each block's probabilities.
* ``"triton"`` -- one Triton kernel that adds the relative logits inside a flash-attention loop, from compact
  ``(HW, H)`` / ``(HW, W)`` tables of ``q . r`` (:mod:`aacn.nn.triton_attention`): no folded or padded copies,
  memory ``O(B*Nh*HW*(dkh + dvh + H + W))``. CUDA only (or ``TRITON_INTERPRET=1`` on CPU, for testing);
  float16/bfloat16/float32. Never chosen by ``"auto"``: opt in with ``impl="triton"``.
* ``"cpu"`` -- one C++ kernel that adds the relative logits inside the attention loop, from the same compact
  tables (:mod:`aacn.nn.cpu_kernel`): no folded or padded copies, memory ``O(B*Nh*HW*(dkh + dvh + H + W))``,
  vectorised over keys so that small heads are fast. CPU only; float32/float64 natively, bfloat16/float16
  computed in float32. Compiled on first use (a C++ compiler and ninja are needed) and cached.
* ``"auto"`` -- on CPU ``"cpu"`` when its kernel builds (unless ``AACN_CPU_KERNEL=0``); otherwise ``"sdpa"``
  where a fused kernel exists (CPU: float16/bfloat16/float32/float64; CUDA: float16/bfloat16/float32), else
  ``"chunked"``; on CPU also ``"chunked"`` when all ``B*Nh*(HW)^2`` logits fit in one block
  (:data:`~aacn.nn.relative_attention.CHUNK_ELEMENTS`, e.g. 8x8 grids at B=32, Nh=8), where plain attention is
  faster than the folded kernel and its memory is bounded anyway. A failed build of the C++ kernel warns once.

FlexAttention is not used: it has no CPU backward, needs ``torch.compile`` to be memory-efficient, and its
gradients of captured bias tables use atomic adds; the Triton kernel gets those gradients as register sums.

The memory-efficient implementations are registered operators in the ``aacn`` namespace, each with a fake
(shape-only) implementation and a registered backward that is itself an operator:
``torch.ops.aacn.folded_flash_attention_cpu`` (``"sdpa"`` on CPU), ``torch.ops.aacn.chunked_relative_attention``
(``"chunked"``), ``torch.ops.aacn.relative_attention_cpu`` (``"cpu"``) and
``torch.ops.aacn.triton_relative_attention`` (``"triton"``; a ``torch.library.triton_op``
where the kernels are compiled, so Inductor schedules them). ``"reference"`` and ``"sdpa"`` on CUDA are plain
PyTorch. So ``torch.compile(..., fullgraph=True)`` and ``torch.export`` capture every implementation without a
graph break, and the operators save for backward under compilation what they save in eager mode (nothing
``(HW)^2``-sized).

Every implementation is exact (equal up to floating-point rounding), differentiable in ``q, k, v, rel_h,
rel_w``, and keeps softmax statistics in float32 under bf16/fp16 autocast.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from aacn.nn.cpu_kernel import cpu_attention, cpu_kernel_for_auto
from aacn.nn.relative_attention import (
    CHUNK_ELEMENTS,
    block_logits,
    chunked_attention,
    compute_dtype,
    reference_attention,
    sdpa_attention,
)
from aacn.nn.triton_attention import triton_attention

__all__ = ["IMPLS", "relative_attention_2d", "relative_attention_probs", "resolve_impl"]

IMPLS: tuple[str, ...] = ("auto", "reference", "sdpa", "chunked", "triton", "cpu")

_IMPL_FUNCS = {
    "reference": reference_attention, "sdpa": sdpa_attention, "chunked": chunked_attention,
    "triton": triton_attention, "cpu": cpu_attention,
}
_SDPA_DTYPES = {
    "cpu": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
    "cuda": (torch.float16, torch.bfloat16, torch.float32),
}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_dtypes(q: Tensor, others: dict[str, Tensor | None]) -> None:
    """Raise ``ValueError`` naming the argument for a non-floating dtype, or (outside autocast) a dtype that
    differs from q's: the implementations would otherwise truncate, convert silently, or fail deep inside."""
    for name, t in {"q": q, **others}.items():
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point dtype, got {_dtype_name(t.dtype)}")
    if torch.is_autocast_enabled(q.device.type):  # autocast runs every input in its own dtype
        return
    for name, t in others.items():
        if t is not None and t.dtype != q.dtype:
            raise ValueError(
                f"{name}: expected the dtype of q ({_dtype_name(q.dtype)}), got {_dtype_name(t.dtype)}; "
                f"convert the inputs to one dtype, or run under torch.autocast"
            )


def _check_inputs(q: Tensor, k: Tensor, v: Tensor | None, rel_h: Tensor | None, rel_w: Tensor | None) -> None:
    """Raise ``ValueError`` naming the argument when shapes or dtypes disagree with the contract."""
    for name, t in (("q", q), ("k", k), ("v", v), ("rel_h", rel_h), ("rel_w", rel_w)):
        if not isinstance(t, Tensor) and (t is not None or name in ("q", "k")):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 5:
        raise ValueError(f"q: expected a 5-d tensor (B, Nh, H, W, dkh), got shape {tuple(q.shape)}")
    b, nh, h, w, dkh = q.shape
    if h < 1 or w < 1 or dkh < 1:
        raise ValueError(f"q: expected H, W, dkh >= 1 in (B, Nh, H, W, dkh), got shape {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"k: expected the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v is not None:
        if v.dim() != 5 or v.shape[:4] != q.shape[:4] or v.shape[4] < 1:
            raise ValueError(f"v: expected shape ({b}, {nh}, {h}, {w}, dvh>=1) matching q, got {tuple(v.shape)}")
    for name, table, size in (("rel_h", rel_h, h), ("rel_w", rel_w, w)):
        if table is not None and tuple(table.shape) != (2 * size - 1, dkh):
            raise ValueError(
                f"{name}: expected shape (2*{size}-1, dkh) = ({2 * size - 1}, {dkh}) for a "
                f"{h}x{w} grid with dkh={dkh}, got {tuple(table.shape)}"
            )
    _check_dtypes(q, {"k": k, "v": v, "rel_h": rel_h, "rel_w": rel_w})


def _scale(scale: float | None, dkh: int) -> float:
    if scale is None:
        return dkh**-0.5
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale: expected a finite positive number (default dkh ** -0.5), got {scale!r}")
    return float(scale)


def resolve_impl(impl: str, q: Tensor) -> str:
    """Map ``impl`` (possibly ``"auto"``) to a concrete implementation name for ``q``'s device and dtype."""
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    if impl != "auto":
        return impl
    if q.device.type == "cpu" and cpu_kernel_for_auto():
        return "cpu"
    if compute_dtype(q) not in _SDPA_DTYPES.get(q.device.type, ()):
        return "chunked"
    b, nh, h, w, _ = q.shape
    if q.device.type == "cpu" and b * nh * (h * w) ** 2 <= CHUNK_ELEMENTS:
        return "chunked"  # small grid: one block of plain attention beats the folded kernel on CPU
    return "sdpa"


def relative_attention_2d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel_h: Tensor | None = None,
    rel_w: Tensor | None = None,
    scale: float | None = None,
    impl: str = "auto",
) -> Tensor:
    """Multi-head self-attention over an ``H x W`` grid with 2D relative position logits.

    Args:
        q: queries, (B, Nh, H, W, dkh).
        k: keys, (B, Nh, H, W, dkh).
        v: values, (B, Nh, H, W, dvh).
        rel_h: ``r^H``, (2H-1, dkh) or None (no height-relative term).
        rel_w: ``r^W``, (2W-1, dkh) or None (no width-relative term).
        scale: logit scale ``s``; default ``dkh ** -0.5``.
        impl: one of ``"auto"``, ``"reference"``, ``"sdpa"``, ``"chunked"``, ``"triton"``, ``"cpu"`` (see the
            module docstring).

    Returns:
        (B, Nh, H, W, dvh): for each query pixel, the attention-weighted sum of the values.

    Raises:
        ValueError: naming the argument, for shapes that disagree, an integer dtype, or (outside autocast) a
            dtype other than q's; for an unknown ``impl``; for ``"triton"`` where it cannot run (no triton
            package, not a CUDA tensor, float64); or for ``"cpu"`` where it cannot run (not a CPU tensor, the
            C++ kernel does not build).
    """
    _check_inputs(q, k, v, rel_h, rel_w)
    logit_scale = _scale(scale, q.shape[-1])
    name = resolve_impl(impl, q)
    if q.shape[0] == 0 or q.shape[1] == 0:  # an empty batch (or no heads): an empty output, still in the graph
        others = [t.sum() for t in (q, k, rel_h, rel_w) if t is not None]
        return v.to(compute_dtype(q, k, v)) + 0 * sum(others)
    return _IMPL_FUNCS[name](q, k, v, rel_h, rel_w, logit_scale)


def _query_positions(queries: Sequence[Sequence[int]] | Tensor, h: int, w: int, device: torch.device):
    """Validate ``queries`` ((row, col) pairs) and return (rows, cols) long tensors of length P."""
    pos = torch.as_tensor(queries, dtype=torch.long).reshape(-1, 2) if len(queries) else None
    if pos is None:
        raise ValueError("queries: expected at least one (row, col) pair, got an empty sequence")
    bad = (pos[:, 0] < 0) | (pos[:, 0] >= h) | (pos[:, 1] < 0) | (pos[:, 1] >= w)
    if bool(bad.any()):
        first = tuple(pos[bad][0].tolist())
        raise ValueError(f"queries: expected (row, col) with 0 <= row < {h} and 0 <= col < {w}, got {first}")
    pos = pos.to(device)
    return pos[:, 0], pos[:, 1]


def relative_attention_probs(
    q: Tensor,
    k: Tensor,
    rel_h: Tensor | None = None,
    rel_w: Tensor | None = None,
    scale: float | None = None,
    queries: Sequence[Sequence[int]] | Tensor = ((0, 0),),
) -> Tensor:
    """Attention probabilities of chosen query pixels, without building the full ``(HW)^2`` matrix.

    Args:
        q, k, rel_h, rel_w, scale: as in :func:`relative_attention_2d`.
        queries: P query pixels as ``(row, col)`` pairs (a sequence or a (P, 2) integer tensor).

    Returns:
        (B, Nh, P, H, W) probabilities (float32, or float64 for float64 inputs); entry ``[b, n, p, x', y']``
        is the weight query ``queries[p]`` gives to key ``(x', y')``; each ``[b, n, p]`` sums to one.
    """
    _check_inputs(q, k, None, rel_h, rel_w)
    b, nh, h, w, d = q.shape
    rows, cols = _query_positions(queries, h, w, q.device)
    q_block = q[:, :, rows, cols]  # (B, Nh, P, d)
    logits = block_logits(q_block, rows, cols, k, rel_h, rel_w, _scale(scale, d))
    return torch.softmax(logits.flatten(-2), dim=-1).view(b, nh, -1, h, w)
