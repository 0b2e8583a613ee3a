"""Relative attention as one Triton kernel: the relative logits are added inside the attention (``impl="triton"``).

The ``"sdpa"`` implementation folds the relative terms into ``H + W`` extra query/key columns and writes those
folded, zero-padded tensors to GPU memory before a stock fused kernel runs (on a 32x32 grid with dkh = 20 they
are 88 columns wide, 4.4x q). Here instead, per (batch, head) pair with ``N = H*W`` positions:

* PyTorch computes the compact relative logits ``RH[i, x'] = q_i . r^H_(x'-x)`` (N x H) and
  ``RW[i, y'] = q_i . r^W_(y'-y)`` (N x W) with two small einsums (autograd takes them back to q and the tables);
* a flash-attention style kernel streams key blocks and adds ``RH[i, x'(j)] + RW[i, y'(j)]`` to each block of
  ``q . k`` logits in registers. Where ``W`` is a power of two from 16 to 128, a key block is exactly one grid
  row ``x'``: the terms are then one column of ``RH`` plus the query block's ``RW`` rows, no products at all.
  Otherwise they are products with one-hot maps from a key index ``j`` to its row ``x' = j // W`` and column
  ``y' = j % W``, built in registers, never in memory. Softmax statistics are float32; the output and the
  log-sum-exp are all that is saved;
* the backward pass is two kernels in the style of FlashAttention-2: one per key block (gradients of k and v),
  one per query block (gradients of q, ``RH`` and ``RW``). The relative-logit gradients are row sums of the
  logit gradients over each key row / column, accumulated in registers of the query-block program: no atomics,
  so the result is deterministic.

Memory is ``O(B*Nh*HW*(dkh + dvh + H + W))``, nothing ``(HW)^2``-sized and no padded copies. The kernel needs
CUDA tensors and the ``triton`` package (shipped with CUDA builds of PyTorch); with ``TRITON_INTERPRET=1`` Triton
runs it on CPU tensors instead, slowly, which is how the test suite checks it without a GPU.

Forward and backward are the operators ``aacn::triton_relative_attention`` and ``..._backward``: with compiled
kernels ``torch.library.triton_op``s (Inductor sees and schedules the kernels), under the interpreter opaque
custom ops with fake implementations. ``TRITON_INTERPRET`` is read when this module is imported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

import torch
from torch import Tensor
from torch.library import wrap_triton

from aacn.nn.lse_autograd import register_lse_autograd
from aacn.nn.relative_attention import compute_dtype, relative_logits

# triton is optional (CUDA builds of PyTorch ship it, the CPU build does not) and imported on first use.
HAS_TRITON = importlib.util.find_spec("triton") is not None
_LOG2E = 1.4426950408889634

__all__ = ["HAS_TRITON", "triton_attention", "triton_unavailable_reason"]


def _interpreting() -> bool:
    """Whether the kernels run in Triton's CPU interpreter: ``TRITON_INTERPRET=1`` when they were first loaded."""
    kernels = sys.modules.get("aacn.nn.triton_kernels")
    if kernels is not None:
        return kernels.INTERPRETED
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _kernels():
    from aacn.nn import triton_kernels

    return triton_kernels


def triton_unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the Triton kernel cannot run on ``device`` in ``dtype``, as a phrase (None when it can)."""
    if not HAS_TRITON:
        return "needs the triton package (CUDA builds of PyTorch include it)"
    if device.type != "cuda" and not _interpreting():
        return (f"runs on CUDA devices only, not {device.type} (TRITON_INTERPRET=1 runs it slowly on the CPU, "
                f"for debugging)")
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"supports float16, bfloat16 and float32, not {str(dtype).removeprefix('torch.')}"
    return None


def _on_device(t: Tensor):
    """Launch kernels on ``t``'s GPU (Triton uses the current CUDA device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _pow2(n: int, least: int = 16) -> int:
    """Smallest power of two >= max(n, least): Triton block shapes are powers of two, tl.dot needs >= 16."""
    return max(least, 1 << max(0, n - 1).bit_length())


def _present(rh: Tensor | None, rw: Tensor | None, placeholder: Tensor) -> tuple[Tensor, Tensor]:
    """The two tables, ``placeholder`` standing in for an absent one (the kernels then never touch it)."""
    return (rh if rh is not None else placeholder, rw if rw is not None else placeholder)


class _Launch:
    """Shapes, strides and launch constants of one call, shared by the forward and backward kernels."""

    def __init__(self, q: Tensor, v: Tensor, rh: Tensor | None, rw: Tensor | None, h: int, w: int):
        self.b, self.nh, self.n, self.dk = q.shape
        self.dv = v.shape[-1]
        self.h, self.w = h, w
        # 64-query blocks for 16-bit inputs; float32 operands need twice the shared memory per element.
        self.block_m = min(64 if q.dtype != torch.float32 else 32, _pow2(self.n))
        # Key blocks of one grid row where the row length allows (a power of two, 16..128): the relative terms
        # then need no products with one-hot maps (see triton_kernels._logits).
        rows = w & (w - 1) == 0 and 16 <= w <= 128
        self.block_n = w if rows else self.block_m
        self.meta = dict(
            HAS_H=rh is not None, HAS_W=rw is not None, ROWS=rows,
            PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            BLOCK_M=self.block_m, BLOCK_N=self.block_n, DKP=_pow2(self.dk), DVP=_pow2(self.dv),
            HP=_pow2(h), WP=_pow2(w), num_warps=4, num_stages=2,
        )

    def grid(self, block: int) -> tuple[int]:
        """Programs: one per block of ``block`` positions (queries or keys) of each (batch, head) pair, on a 1-D
        grid (see triton_kernels._program)."""
        return (self.b * self.nh * -(-self.n // block),)

    def sizes(self) -> tuple[int, ...]:
        return (self.nh, self.n, self.h, self.w, self.dk, self.dv)


def _forward_buffers(q: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Fresh output and log-sum-exp of the forward kernel. The output has (B, Nh, dvh, N) storage, the caller's
    (B, Nh*dvh, H, W) layout, so merging heads costs no copy."""
    b, nh, n, _ = q.shape
    out = torch.empty(b, nh, v.shape[-1], n, dtype=q.dtype, device=q.device).transpose(-1, -2)
    return out, torch.empty(b * nh, n, dtype=torch.float32, device=q.device)


def _forward(
    q: Tensor, k: Tensor, v: Tensor, rh: Tensor | None, rw: Tensor | None, scale: float, h: int, w: int
) -> tuple[Tensor, Tensor]:
    """Forward kernel on (B, Nh, N, d) inputs in one dtype: the (B, Nh, N, dvh) output and the (B*Nh, N) float32
    log-sum-exp (log2 units). ``rh``/``rw``: the compact relative logits (B, Nh, N, H) / (B, Nh, N, W) or None.

    Registered as the operator ``aacn::triton_relative_attention`` (see :func:`_register`).
    """
    run = _Launch(q, v, rh, rw, h, w)
    out, lse = _forward_buffers(q, v)
    tables = _present(rh, rw, q)
    with _on_device(q):
        wrap_triton(_kernels()._fwd_kernel)[run.grid(run.block_m)](
            q, k, v, *tables, out, lse, *q.stride(), *k.stride(), *v.stride(), *tables[0].stride(),
            *tables[1].stride(), *out.stride(), *run.sizes(), scale * _LOG2E, **run.meta,
        )
    return out, lse


def _backward_kernels(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, rh: Tensor | None, rw: Tensor | None, out: Tensor,
    lse: Tensor, scale: float, h: int, w: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward kernels: contiguous gradients of q, k, v, ``rh``, ``rw`` (an empty tensor for an absent table)."""
    run = _Launch(q, v, rh, rw, h, w)
    grad_out = grad_out.to(q.dtype)
    delta = (grad_out.float() * out.float()).sum(-1).reshape(run.b * run.nh, run.n)
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    drh, drw = (torch.empty(t.shape, dtype=t.dtype, device=t.device) if t is not None else None for t in (rh, rw))
    tables = _present(rh, rw, q)
    common = (
        *q.stride(), *k.stride(), *v.stride(), *tables[0].stride(), *tables[1].stride(), *grad_out.stride(),
        *run.sizes(), scale, scale * _LOG2E,
    )
    inputs = (q, k, v, *tables, grad_out, lse, delta)
    with _on_device(q):
        wrap_triton(_kernels()._bwd_kv_kernel)[run.grid(run.block_n)](*inputs, dk, dv, *common, **run.meta)
        wrap_triton(_kernels()._bwd_q_kernel)[run.grid(run.block_m)](
            *inputs, dq, *_present(drh, drw, dq), *common, **run.meta
        )
    empty = q.new_empty(0)
    return dq, dk, dv, drh if drh is not None else empty, drw if drw is not None else empty.clone()


def _register(name: str, fn, fake):
    """``fn`` as the operator ``aacn::<name>``.

    With compilable kernels it is a ``torch.library.triton_op``: ``torch.compile`` traces into it and sees the
    Triton kernels themselves (through ``wrap_triton``), so Inductor schedules them inside its graph, and
    ``torch.export`` keeps the operator as one call. Where Triton's CPU interpreter runs the kernels (or triton
    is absent and they never run), it is an opaque ``torch.library.custom_op`` with the shape-only ``fake``: the
    interpreter reads tensor memory directly, so its launches cannot be traced.
    """
    if HAS_TRITON and not _interpreting():
        return torch.library.triton_op(f"aacn::{name}", fn, mutates_args=())
    op = torch.library.custom_op(f"aacn::{name}", fn, mutates_args=())
    op.register_fake(fake)
    return op


def _forward_fake(q, k, v, rh, rw, scale, h, w):
    return _forward_buffers(q, v)


def _backward_fake(grad_out, q, k, v, rh, rw, out, lse, scale, h, w):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) if t is not None else q.new_empty(0)
                 for t in (q, k, v, rh, rw))


triton_relative_attention = _register("triton_relative_attention", _forward, _forward_fake)
triton_relative_attention_backward = _register(
    "triton_relative_attention_backward", _backward_kernels, _backward_fake
)


register_lse_autograd(triton_relative_attention, triton_relative_attention_backward)


def triton_attention(
    q: Tensor, k: Tensor, v: Tensor, rel_h: Tensor | None, rel_w: Tensor | None, scale: float
) -> Tensor:
    """Exact attention with the relative logits added inside one Triton kernel; returns (B, Nh, H, W, dvh).

    Inputs as in :func:`aacn.nn.functional.relative_attention_2d` (already validated). Runs in the autocast
    dtype under autocast; raises ``ValueError`` (see :func:`triton_unavailable_reason`) where it cannot run.
    The result is a view of a (B, Nh, dvh, H, W) tensor, so ``permute(0, 1, 4, 2, 3)`` of it is contiguous.
    """
    dtype = compute_dtype(q, k, v)
    reason = triton_unavailable_reason(q.device, dtype)
    if reason:
        raise ValueError(f"impl='triton' {reason}; use impl='auto'")
    b, nh, h, w, _ = q.shape
    dvh = v.shape[-1]

    # (B, Nh, N, ·) in the kernel's dtype: q, k, v and the compact tables RH (N x H) and RW (N x W)
    flat = [t.to(dtype).reshape(b, nh, h * w, t.shape[-1]) if t is not None else None
            for t in (q, k, v, *relative_logits(q, rel_h, rel_w))]
    out, _ = triton_relative_attention(*flat, float(scale), h, w)  # (B, Nh, N, dvh)
    return out.transpose(-1, -2).reshape(b, nh, dvh, h, w).permute(0, 1, 3, 4, 2)
