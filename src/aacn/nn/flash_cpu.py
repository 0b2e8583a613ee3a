"""Relative attention through PyTorch's CPU flash-attention kernel, with a compact saved state.

The relative terms are folded into the query/key product (``impl="sdpa"``, see
:mod:`aacn.nn.relative_attention`): per head, the kernel sees queries
``[q, q.r^H_(x'-x) for x' < H, q.r^W_(y'-y) for y' < W, 0...]``, keys ``[k, onehot(x'), onehot(y'), 0...]`` and
values ``[v, 0...]``, all zero-padded to one depth ``D`` (the CPU kernel needs equal head sizes), a multiple of 8.

Those folded tensors are ``D / dkh`` times larger than q (``D = 88`` for dkh = 20 on a 32x32 grid), so keeping
them for backward, as autograd around ``F.scaled_dot_product_attention`` would, dominates the layer's memory.
The operator ``aacn::folded_flash_attention_cpu`` (:func:`folded_flash_attention_cpu`) instead

* runs the kernel over chunks of (batch x head) pairs, refilling the same preallocated buffers (the zero
  padding and one-hot columns are written once);
* saves only q, k, v, the tables, the compact output and the log-sum-exp (``B*Nh*HW`` floats);
* in backward rebuilds each chunk's folded tensors (the padded output is exact: its padding columns are
  zero because the value padding is), calls the flash backward kernel and maps the folded gradients back
  to q, k, v, ``rel_h``, ``rel_w`` by hand.

Nothing ``(HW)^2``-sized is ever allocated and the kernel's forward is not recomputed.

Both directions are registered operators (``torch.library.custom_op``) with fake implementations, and the
backward operator is the forward's registered autograd formula: ``torch.compile`` and ``torch.export`` keep them
whole in their graphs (opaque calls with known output shapes) instead of tracing into the chunk loop, and
compiled graphs save exactly what eager saves.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aacn.nn.lse_autograd import register_lse_autograd
from aacn.nn.positions import rel_index

# PyTorch's own CPU flash-attention forward/backward ops (what F.scaled_dot_product_attention dispatches to).
HAS_CPU_FLASH = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward")
if HAS_CPU_FLASH:
    _flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    _flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class _Layout:
    """Column layout of the folded heads and the reusable kernel buffers for one call."""

    def __init__(self, q: Tensor, v: Tensor, rel_h: Tensor | None, rel_w: Tensor | None, pairs: int, dtype):
        b, nh, self.h, self.w, self.dkh = q.shape
        self.dvh = v.shape[-1]
        self.n = b * nh
        self.cols_h = self.h if rel_h is not None else 0
        self.cols_w = self.w if rel_w is not None else 0
        self.depth = -(-max(self.dkh + self.cols_h + self.cols_w, self.dvh) // 8) * 8
        self.pairs = max(1, min(pairs, self.n))
        self.dtype = dtype
        # (H, H', d) tables: table_h[x, x'] = r^H_(x'-x), in the promoted dtype of q and the table.
        self.table_h = self._table(q, rel_h, self.h)
        self.table_w = self._table(q, rel_w, self.w)

    @staticmethod
    def _table(q: Tensor, rel: Tensor | None, size: int) -> Tensor | None:
        if rel is None:
            return None
        return rel.to(torch.promote_types(q.dtype, rel.dtype))[rel_index(size, q.device)]

    def buffer(self, device: torch.device) -> Tensor:
        return torch.zeros(self.pairs, 1, self.h * self.w, self.depth, dtype=self.dtype, device=device)

    def key_buffer(self, device: torch.device) -> Tensor:
        """Zero buffer with the one-hot(x') and one-hot(y') key columns already set."""
        buf = self.buffer(device)
        grid = buf.view(self.pairs, self.h, self.w, self.depth)
        start = self.dkh
        if self.cols_h:
            grid[..., start : start + self.h] = torch.eye(self.h, dtype=self.dtype, device=device)[:, None, :]
            start += self.h
        if self.cols_w:
            grid[..., start : start + self.w] = torch.eye(self.w, dtype=self.dtype, device=device)[None, :, :]
        return buf

    def grid(self, t: Tensor) -> Tensor:
        """(P, 1, HW, D) buffer -> (P, H, W, D) view."""
        return t.view(t.shape[0], self.h, self.w, self.depth)

    def fill_query(self, buf: Tensor, q: Tensor) -> None:
        """Write the folded queries of chunk ``q`` (P, H, W, dkh) into ``buf``."""
        grid, d = self.grid(buf), self.dkh
        grid[..., :d] = q
        if self.table_h is not None:
            qc = q.to(self.table_h.dtype)
            grid[..., d : d + self.h] = torch.einsum("pxyd,xjd->pxyj", qc, self.table_h)
        if self.table_w is not None:
            qc = q.to(self.table_w.dtype)
            grid[..., d + self.cols_h : d + self.cols_h + self.w] = torch.einsum("pxyd,yjd->pxyj", qc, self.table_w)


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the kernel's log-sum-exp: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("aacn::folded_flash_attention_cpu", mutates_args=())
def folded_flash_attention_cpu(
    q: Tensor, k: Tensor, v: Tensor, rel_h: Tensor | None, rel_w: Tensor | None, scale: float, pairs: int,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Forward: (B, Nh, H, W, dvh) output in ``dtype`` and the (B*Nh, 1, HW) log-sum-exp; see the module doc.

    ``pairs``: (batch x head) pairs per kernel call; ``dtype``: the kernel's dtype (the autocast dtype under
    autocast). Inputs may be any dtype and strides.
    """
    with torch.autocast("cpu", enabled=False):
        lay = _Layout(q, v, rel_h, rel_w, pairs, dtype)
        qf, kf, vf = (t.reshape(lay.n, lay.h, lay.w, t.shape[-1]) for t in (q, k, v))
        qb, kb, vb = lay.buffer(q.device), lay.key_buffer(q.device), lay.buffer(q.device)
        out = torch.empty(lay.n, lay.h * lay.w, lay.dvh, dtype=dtype, device=q.device)
        lse = torch.empty(lay.n, 1, lay.h * lay.w, dtype=_lse_dtype(dtype), device=q.device)
        for i in range(0, lay.n, lay.pairs):
            p = min(lay.pairs, lay.n - i)
            lay.fill_query(qb[:p], qf[i : i + p])
            lay.grid(kb[:p])[..., : lay.dkh] = kf[i : i + p]
            lay.grid(vb[:p])[..., : lay.dvh] = vf[i : i + p]
            o, l = _flash(qb[:p], kb[:p], vb[:p], 0.0, False, scale=scale)
            out[i : i + p] = o[:, 0, :, : lay.dvh]
            lse[i : i + p] = l
    return out.view(*q.shape[:4], lay.dvh), lse


@folded_flash_attention_cpu.register_fake
def _(q, k, v, rel_h, rel_w, scale, pairs, dtype):
    b, nh, h, w, _ = q.shape
    out = q.new_empty((b, nh, h, w, v.shape[-1]), dtype=dtype)
    return out, q.new_empty((b * nh, 1, h * w), dtype=_lse_dtype(dtype))


@torch.library.custom_op("aacn::folded_flash_attention_cpu_backward", mutates_args=())
def folded_flash_attention_cpu_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, rel_h: Tensor | None, rel_w: Tensor | None, out: Tensor,
    lse: Tensor, scale: float, pairs: int, dtype: torch.dtype, needed: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of q, k, v, rel_h, rel_w (contiguous, in the inputs' dtypes) from the saved compact state.

    ``needed``: which of the five to compute; the others (and those of absent tables) come back as empty
    tensors.
    """
    need_q, need_k, need_v, need_h, need_w = needed
    need_h, need_w = need_h and rel_h is not None, need_w and rel_w is not None
    with torch.autocast("cpu", enabled=False):
        lay = _Layout(q, v, rel_h, rel_w, pairs, dtype)
        h, w, d, dvh = lay.h, lay.w, lay.dkh, lay.dvh
        qf, kf, vf = (t.reshape(lay.n, h, w, t.shape[-1]) for t in (q, k, v))
        of, gf = out.reshape(lay.n, h, w, dvh), grad_out.reshape(lay.n, h, w, dvh)
        qb, vb, ob, gb = (lay.buffer(q.device) for _ in range(4))
        kb = lay.key_buffer(q.device)
        dq = torch.empty(qf.shape, dtype=q.dtype, device=q.device) if need_q else None
        dk = torch.empty(kf.shape, dtype=k.dtype, device=k.device) if need_k else None
        dv = torch.empty(vf.shape, dtype=v.dtype, device=v.device) if need_v else None
        d_th = torch.zeros_like(lay.table_h) if need_h else None
        d_tw = torch.zeros_like(lay.table_w) if need_w else None
        for i in range(0, lay.n, lay.pairs):
            p = min(lay.pairs, lay.n - i)
            qc = qf[i : i + p]
            lay.fill_query(qb[:p], qc)
            lay.grid(kb[:p])[..., :d] = kf[i : i + p]
            lay.grid(vb[:p])[..., :dvh] = vf[i : i + p]
            lay.grid(ob[:p])[..., :dvh] = of[i : i + p]
            lay.grid(gb[:p])[..., :dvh] = gf[i : i + p]
            gq, gk, gv = _flash_backward(
                gb[:p], qb[:p], kb[:p], vb[:p], ob[:p], lse[i : i + p], 0.0, False, scale=scale
            )
            gq = gq.reshape(p, h, w, lay.depth)
            if need_k:
                dk[i : i + p] = gk.reshape(p, h, w, lay.depth)[..., :d]
            if need_v:
                dv[i : i + p] = gv.reshape(p, h, w, lay.depth)[..., :dvh]
            if need_q:
                dq[i : i + p] = gq[..., :d]
            if lay.table_h is not None and (need_q or need_h):  # columns q . r^H: d/dq and d/dtable
                g = gq[..., d : d + h].to(lay.table_h.dtype)
                if need_q:
                    dq[i : i + p] += torch.einsum("pxyj,xjd->pxyd", g, lay.table_h).to(dq.dtype)
                if need_h:
                    d_th += torch.einsum("pxyj,pxyd->xjd", g, qc.to(d_th.dtype))
            if lay.table_w is not None and (need_q or need_w):
                g = gq[..., d + lay.cols_h : d + lay.cols_h + w].to(lay.table_w.dtype)
                if need_q:
                    dq[i : i + p] += torch.einsum("pxyj,yjd->pxyd", g, lay.table_w).to(dq.dtype)
                if need_w:
                    d_tw += torch.einsum("pxyj,pxyd->yjd", g, qc.to(d_tw.dtype))
        grads = (
            dq.view(q.shape) if need_q else None,
            dk.view(k.shape) if need_k else None,
            dv.view(v.shape) if need_v else None,
            _scatter_table(d_th, rel_h, h) if need_h else None,
            _scatter_table(d_tw, rel_w, w) if need_w else None,
        )
    return tuple(g if g is not None else q.new_empty(0) for g in grads)


@folded_flash_attention_cpu_backward.register_fake
def _(grad_out, q, k, v, rel_h, rel_w, out, lse, scale, pairs, dtype, needed):
    inputs = (q, k, v, rel_h, rel_w)
    return tuple(
        torch.empty_like(t, memory_format=torch.contiguous_format) if need and t is not None else q.new_empty(0)
        for need, t in zip(needed, inputs, strict=True)
    )


register_lse_autograd(folded_flash_attention_cpu, folded_flash_attention_cpu_backward, pass_needed=True)


def flash_attention_cpu(
    q: Tensor, k: Tensor, v: Tensor, rel_h: Tensor | None, rel_w: Tensor | None, scale: float, pairs: int,
    dtype: torch.dtype,
) -> Tensor:
    """(B, Nh, H, W, dvh) relative attention through :func:`folded_flash_attention_cpu`, differentiable in q, k,
    v and the tables (the backward is :func:`folded_flash_attention_cpu_backward`)."""
    return folded_flash_attention_cpu(q, k, v, rel_h, rel_w, scale, pairs, dtype)[0]


def _scatter_table(d_table: Tensor, rel: Tensor, size: int) -> Tensor:
    """Gradient of ``rel[rel_index(size)]``: sum the (size, size, d) table gradient into rel's rows."""
    flat = d_table.reshape(size * size, -1)
    grad = torch.zeros(rel.shape, dtype=flat.dtype, device=rel.device)
    return grad.index_add_(0, rel_index(size, rel.device).flatten(), flat).to(rel.dtype)
