"""Implementations of exact 2D multi-head self-attention with relative position logits.

All functions here take already-validated tensors (see :mod:`aacn.nn.functional` for the public entry
points, argument checks and the meaning of every symbol) and compute, for every query pixel ``(x, y)`` and
key pixel ``(x', y')`` of an ``H x W`` grid::

    logit = scale * (q[x, y] . k[x', y'] + q[x, y] . rel_w[y' - y + W - 1] + q[x, y] . rel_h[x' - x + H - 1])

followed by a softmax over all keys and a weighted sum of the values.

* :func:`reference_attention` -- the paper's appendix algorithm (Bello et al. 2019, appendix A): it
  materialises the ``(HW)^2`` logits and two more ``(HW)^2`` relative-logit tensors. Ground truth for tests.
* :func:`sdpa_attention` -- folds the relative terms into the query/key product (``H + W`` extra columns: the
  query gets ``q . r^H_(x'-x)`` for every key row ``x'`` and ``q . r^W_(y'-y)`` for every key column ``y'``,
  the key gets one-hot(``x'``) and one-hot(``y'``)) and runs a fused kernel: ``F.scaled_dot_product_attention``
  restricted to its fused backends on CUDA, the ``aacn::folded_flash_attention_cpu`` operator on CPU. No
  ``(HW)^2`` tensor is ever built.
* :func:`chunked_attention` -- fallback for any device and dtype, written with PyTorch operations: exact
  attention over blocks of queries; the backward recomputes each block's probabilities from the saved
  log-sum-exp, so only a few ``(B, Nh, block, HW)`` tensors are alive at a time.

Softmax statistics are always float32 (or float64 for float64 inputs), also under bf16/fp16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from aacn.nn.flash_cpu import HAS_CPU_FLASH, flash_attention_cpu
from aacn.nn.lse_autograd import register_lse_autograd
from aacn.nn.positions import rel_index

# Fused SDPA backends only: the "math" backend would materialise (HW)^2 and is never allowed here.
_FUSED_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]

# Elements of one (B, Nh, block, HW) logits tensor in chunked_attention (16 MiB in float32).
CHUNK_ELEMENTS = 1 << 22
# Elements of one chunk's folded (pairs, HW, D) buffer in sdpa_attention on CPU (16 MiB in float32): fewer,
# larger chunks cost less synchronisation between threads; ~8 such buffers are alive in backward.
SDPA_CHUNK_ELEMENTS = 1 << 22


def softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of softmax statistics: float64 stays float64, everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for the tensors' device, else the promoted dtype of the inputs."""
    device_type = tensors[0].device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


# --------------------------------------------------------------------------------------------- reference


def _rel_to_abs(x: Tensor) -> Tensor:
    """Paper's ``rel_to_abs``: ``(..., L, 2L-1)`` relative logits -> ``(..., L, L)`` with
    ``out[..., i, j] = x[..., i, j - i + L - 1]`` (pad one column, flatten, pad ``L-1``, reshape, slice)."""
    *batch, length, _ = x.shape
    x = F.pad(x, (0, 1)).reshape(*batch, length * 2 * length)
    x = F.pad(x, (0, length - 1)).reshape(*batch, length + 1, 2 * length - 1)
    return x[..., :length, length - 1 :]


def _relative_logits_1d(q: Tensor, rel: Tensor) -> Tensor:
    """Relative logits along the last grid axis of ``q`` (B, Nh, A, L, d) -> (B, Nh, A, L, A, L) tiled,
    indexed ``[a, l, a', l']`` = ``q[a, l] . rel[l' - l + L - 1]`` (independent of ``a'``)."""
    b, nh, a, length, _ = q.shape
    logits = _rel_to_abs(torch.einsum("bnald,md->bnalm", q, rel.to(q.dtype)))  # (B, Nh, A, L, L') [a, l, l']
    return logits.unsqueeze(4).expand(b, nh, a, length, a, length)


def reference_attention(
    q: Tensor, k: Tensor, v: Tensor, rel_h: Tensor | None, rel_w: Tensor | None, scale: float
) -> Tensor:
    """Materialised attention following the paper's appendix algorithm; returns (B, Nh, H, W, dvh)."""
    b, nh, h, w, _ = q.shape
    n = h * w
    logits = torch.matmul(q.reshape(b, nh, n, -1), k.reshape(b, nh, n, -1).transpose(-1, -2))
    if rel_w is not None:  # [x, y, x', y'] from width-relative logits of rows x
        logits = logits + _relative_logits_1d(q, rel_w).reshape(b, nh, n, n)
    if rel_h is not None:  # same on the transposed grid, then back to [x, y, x', y']
        rel = _relative_logits_1d(q.transpose(2, 3), rel_h)  # [y, x, y', x']
        logits = logits + rel.permute(0, 1, 3, 2, 5, 4).reshape(b, nh, n, n)
    probs = torch.softmax(logits.to(softmax_dtype(logits.dtype)) * scale, dim=-1)
    out = torch.matmul(probs.to(compute_dtype(v, logits)), v.reshape(b, nh, n, -1))
    return out.reshape(b, nh, h, w, -1)


# -------------------------------------------------------------------------------------------------- sdpa


def relative_logits(q: Tensor, rel_h: Tensor | None, rel_w: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """The compact relative logits of every query, in q's dtype (None where a table is None):
    ``RH[b, n, x, y, x'] = q[b, n, x, y] . r^H_(x'-x)`` (B, Nh, H, W, H) and
    ``RW[b, n, x, y, y'] = q[b, n, x, y] . r^W_(y'-y)`` (B, Nh, H, W, W)."""
    _, _, h, w, _ = q.shape
    rh = rw = None
    if rel_h is not None:  # table (H, H', d): [x, x'] -> r^H_(x'-x)
        rh = torch.einsum("bnxyd,xpd->bnxyp", q, rel_h.to(q.dtype)[rel_index(h, q.device)])
    if rel_w is not None:  # table (W, W', d): [y, y'] -> r^W_(y'-y)
        rw = torch.einsum("bnxyd,yqd->bnxyq", q, rel_w.to(q.dtype)[rel_index(w, q.device)])
    return rh, rw


def fold_relative(
    q: Tensor, k: Tensor, rel_h: Tensor | None, rel_w: Tensor | None, depth: int | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Append the relative terms to queries and keys: returns contiguous ``(B, Nh, H, W, D)`` tensors whose dot
    products equal ``q.k + q.r^H + q.r^W``, with ``D = dkh + H + W`` (fewer columns when a table is None), or
    zero-padded to ``depth`` columns in the same single copy, in ``dtype`` (default: q's)."""
    b, nh, h, w, d = q.shape
    dtype = q.dtype if dtype is None else dtype
    q_parts, k_parts = [q.to(dtype)], [k.to(dtype)]
    rh, rw = relative_logits(q, rel_h, rel_w)
    if rh is not None:
        q_parts.append(rh.to(dtype))
        k_parts.append(torch.eye(h, device=k.device, dtype=dtype).view(h, 1, h).expand(b, nh, h, w, h))
    if rw is not None:
        q_parts.append(rw.to(dtype))
        k_parts.append(torch.eye(w, device=k.device, dtype=dtype).view(1, w, w).expand(b, nh, h, w, w))
    used = d + h * (rel_h is not None) + w * (rel_w is not None)
    if depth is not None and depth > used:  # zero columns change no logit; written by the same cat
        zeros = q.new_zeros((), dtype=dtype).expand(b, nh, h, w, depth - used)
        q_parts.append(zeros)
        k_parts.append(zeros)
    return torch.cat(q_parts, dim=-1), torch.cat(k_parts, dim=-1)


def _pad_depth(t: Tensor, depth: int, dtype: torch.dtype) -> Tensor:
    """(B, Nh, H, W, d) -> contiguous (B, Nh, HW, depth) in ``dtype``, zero-padded (fused kernels need stride 1)."""
    b, nh, h, w, d = t.shape
    return F.pad(t.to(dtype), (0, depth - d)).contiguous().view(b, nh, h * w, depth)


def _folded_heads(
    q: Tensor, k: Tensor, v: Tensor, rel_h: Tensor | None, rel_w: Tensor | None, dtype: torch.dtype, depth: int,
    value_depth: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Folded, zero-padded (B, Nh, HW, depth) query/key tensors and (B, Nh, HW, value_depth) values in
    ``dtype`` for a fused kernel; each is written by one copy."""
    b, nh, h, w, _ = q.shape
    qe, ke = fold_relative(q, k, rel_h, rel_w, depth, dtype)
    flat = (b, nh, h * w, depth)
    return qe.view(flat), ke.view(flat), _pad_depth(v, value_depth, dtype)


def _round8(n: int) -> int:
    return -(-n // 8) * 8


def _sdpa_fused(q: Tensor, k: Tensor, v: Tensor, rel_h: Tensor | None, rel_w: Tensor | None, scale: float) -> Tensor:
    """One ``F.scaled_dot_product_attention`` call (fused backends only) on the folded heads.

    Query/key and value head sizes are each rounded up to a multiple of 8 (kernel alignment), but not to one
    common size: in the paper's layers the values are far narrower than the folded keys (e.g. dvh = 2 against
    dkh + H + W = 84 at 32x32), and padding them would spend most of the kernel's work on zeros. With unequal
    sizes the memory-efficient (or cuDNN) backend runs instead of flash. On other devices all three share one
    size (the CPU flash kernel needs it).
    """
    b, nh, h, w, dvh = v.shape
    depth = _round8(q.shape[-1] + h * (rel_h is not None) + w * (rel_w is not None))
    value_depth = _round8(dvh)
    if q.device.type != "cuda":  # the CPU flash kernel needs one common size
        depth = value_depth = max(depth, value_depth)
    qe, ke, ve = _folded_heads(q, k, v, rel_h, rel_w, compute_dtype(q, k, v), depth, value_depth)
    with sdpa_kernel(_FUSED_BACKENDS):
        out = F.scaled_dot_product_attention(qe, ke, ve, scale=scale)
    return out[..., :dvh].unflatten(2, (h, w))  # a view: the caller merges the heads with one copy


def sdpa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel_h: Tensor | None,
    rel_w: Tensor | None,
    scale: float,
    chunk_elements: int | None = None,
) -> Tensor:
    """Exact attention through a fused scaled-dot-product-attention kernel (never the math backend).

    Head sizes are padded with zeros (zero columns change neither the logits nor the output): on CPU to one
    common size for queries, keys and values (the CPU flash kernel needs it); on CUDA query/key and value
    sizes are each rounded up to a multiple of 8 (see :func:`_sdpa_fused`). On CUDA this is one
    ``F.scaled_dot_product_attention`` call restricted to the flash / memory-efficient / cuDNN backends; it
    raises ``RuntimeError`` where none supports the dtype (e.g. float64), which ``impl="auto"`` avoids.

    On CPU the flash kernel runs over chunks of (batch x head) pairs with at most ``chunk_elements`` (default
    :data:`SDPA_CHUNK_ELEMENTS`) elements per folded tensor, and only the compact output and log-sum-exp are
    kept for backward (the ``aacn::folded_flash_attention_cpu`` operator): the folded tensors are
    ``(dkh + H + W) / dkh`` times larger than q and would otherwise dominate the layer's memory.
    """
    if q.device.type != "cpu" or not HAS_CPU_FLASH:
        return _sdpa_fused(q, k, v, rel_h, rel_w, scale)
    b, nh, h, w, dvh = v.shape
    chunk_elements = SDPA_CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
    pairs = max(1, chunk_elements // (h * w * max(q.shape[-1] + h + w, dvh)))
    return flash_attention_cpu(q, k, v, rel_h, rel_w, scale, pairs, compute_dtype(q, k, v))


# ----------------------------------------------------------------------------------------------- chunked


def block_logits(
    q_block: Tensor,
    rows: Tensor,
    cols: Tensor,
    k: Tensor,
    rel_h: Tensor | None,
    rel_w: Tensor | None,
    scale: float,
) -> Tensor:
    """Scaled logits of P chosen queries against all keys: ``q_block`` (B, Nh, P, d) for the query pixels at
    ``rows``/``cols`` (P,), ``k`` (B, Nh, H, W, d) -> (B, Nh, P, H, W) in the softmax dtype."""
    b, nh, h, w, d = k.shape
    logits = torch.matmul(q_block, k.reshape(b, nh, h * w, d).transpose(-1, -2)).view(b, nh, -1, h, w)
    if rel_h is not None:  # (P, H', d): r^H_(x'-x) for each chosen query row x
        table = rel_h.to(q_block.dtype)[rel_index(h, q_block.device)[rows]]
        logits = logits + torch.einsum("bnpd,pxd->bnpx", q_block, table)[..., :, None]
    if rel_w is not None:
        table = rel_w.to(q_block.dtype)[rel_index(w, q_block.device)[cols]]
        logits = logits + torch.einsum("bnpd,pyd->bnpy", q_block, table)[..., None, :]
    return logits.to(softmax_dtype(logits.dtype)) * scale


def _blocks(n: int, block: int, device: torch.device):
    """(start, stop, rows, cols) of consecutive blocks of ``block`` query positions on an ``n``-position grid."""
    pos = torch.arange(n, device=device)
    for start in range(0, n, block):
        yield start, min(n, start + block), pos[start : start + block]


@torch.library.custom_op("aacn::chunked_relative_attention", mutates_args=())
def chunked_relative_attention(
    q: Tensor, k: Tensor, v: Tensor, rel_h: Tensor | None, rel_w: Tensor | None, scale: float, block: int,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Forward over blocks of ``block`` queries in ``dtype``: the (B, Nh, H, W, dvh) output and the (B, Nh, HW)
    log-sum-exp of the scaled logits in the softmax dtype (all the backward needs besides the inputs)."""
    b, nh, h, w, d = q.shape
    n = h * w
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = (t.to(dtype) for t in (q, k, v))
        q_flat, v_flat = q.reshape(b, nh, n, d), v.reshape(b, nh, n, -1)
        out = torch.empty(b, nh, n, v.shape[-1], dtype=dtype, device=q.device)
        lse = torch.empty(b, nh, n, dtype=softmax_dtype(dtype), device=q.device)
        for start, stop, idx in _blocks(n, block, q.device):
            logits = block_logits(q_flat[:, :, start:stop], idx // w, idx % w, k, rel_h, rel_w, scale).flatten(-2)
            lse[:, :, start:stop] = torch.logsumexp(logits, dim=-1)
            probs = torch.exp(logits - lse[:, :, start:stop, None])
            out[:, :, start:stop] = torch.matmul(probs.to(dtype), v_flat)
    return out.view(b, nh, h, w, -1), lse


@chunked_relative_attention.register_fake
def _(q, k, v, rel_h, rel_w, scale, block, dtype):
    b, nh, h, w, _ = q.shape
    out = q.new_empty((b, nh, h, w, v.shape[-1]), dtype=dtype)
    return out, q.new_empty((b, nh, h * w), dtype=softmax_dtype(dtype))


@torch.library.custom_op("aacn::chunked_relative_attention_backward", mutates_args=())
def chunked_relative_attention_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, rel_h: Tensor | None, rel_w: Tensor | None, out: Tensor,
    lse: Tensor, scale: float, block: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of q, k, v, rel_h, rel_w (in their dtypes; an empty tensor for an absent table).

    Each block's probabilities are recomputed from the saved log-sum-exp, so at most a few
    ``(B, Nh, block, HW)`` tensors are alive at a time; the arithmetic is in the softmax dtype.
    """
    b, nh, h, w, d = q.shape
    n, dt = h * w, lse.dtype
    with torch.autocast(q.device.type, enabled=False):
        qs, ks, vs, go, o = (t.to(dt).reshape(b, nh, n, -1) for t in (q, k, v, grad_out, out))
        rh, rw = (t.to(dt) if t is not None else None for t in (rel_h, rel_w))
        delta = (go * o).sum(-1, keepdim=True)  # (B, Nh, N, 1): sum_j p_ij dP_ij per query
        dq, dk, dv, drh, drw = (torch.zeros(t.shape, dtype=dt, device=q.device) if t is not None else None
                                for t in (qs, ks, vs, rh, rw))  # contiguous, as the fake implementation says
        k_grid = ks.view(b, nh, h, w, d)
        for start, stop, idx in _blocks(n, block, q.device):
            rows, cols, qb = idx // w, idx % w, qs[:, :, start:stop]
            logits = block_logits(qb, rows, cols, k_grid, rh, rw, scale).flatten(-2)
            probs = torch.exp(logits - lse[:, :, start:stop, None])  # (B, Nh, P, N)
            dv += torch.matmul(probs.transpose(-1, -2), go[:, :, start:stop])
            dp = torch.matmul(go[:, :, start:stop], vs.transpose(-1, -2))
            ds = probs.mul_(dp.sub_(delta[:, :, start:stop])).mul_(scale)  # d loss / d (unscaled logit)
            dq[:, :, start:stop] = torch.matmul(ds, ks)
            dk += torch.matmul(ds.transpose(-1, -2), qb)
            grid = ds.view(b, nh, stop - start, h, w)
            for table, grad, size, pos, axis in ((rh, drh, h, rows, -1), (rw, drw, w, cols, -2)):
                if table is None:
                    continue
                index = rel_index(size, q.device)[pos]  # (P, size): table row of each query's offsets
                g = grid.sum(axis)  # (B, Nh, P, size): logit gradient summed over the other grid axis
                dq[:, :, start:stop] += torch.einsum("bnpx,pxd->bnpd", g, table[index])
                grad.index_add_(0, index.flatten(), torch.einsum("bnpx,bnpd->pxd", g, qb).reshape(-1, d))
    grads = [dq.view(q.shape).to(q.dtype), dk.view(k.shape).to(k.dtype), dv.view(v.shape).to(v.dtype)]
    for grad, table in ((drh, rel_h), (drw, rel_w)):
        grads.append(grad.to(table.dtype) if table is not None else q.new_empty(0))
    return tuple(grads)


@chunked_relative_attention_backward.register_fake
def _(grad_out, q, k, v, rel_h, rel_w, out, lse, scale, block):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) if t is not None else q.new_empty(0)
                 for t in (q, k, v, rel_h, rel_w))


register_lse_autograd(chunked_relative_attention, chunked_relative_attention_backward, config_args=2)


def chunked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel_h: Tensor | None,
    rel_w: Tensor | None,
    scale: float,
    chunk_elements: int | None = None,
) -> Tensor:
    """Exact attention over blocks of queries; returns (B, Nh, H, W, dvh) in the compute dtype.

    ``chunk_elements`` bounds the size of one block's logits (default :data:`CHUNK_ELEMENTS`). Forward and
    backward are the operators ``aacn::chunked_relative_attention`` and its ``_backward``: only the output and
    the log-sum-exp are saved, and the backward recomputes each block's probabilities from them.
    """
    b, nh, h, w, _ = q.shape
    n = h * w
    chunk_elements = CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
    block = max(1, min(n, chunk_elements // max(1, b * nh * n)))
    return chunked_relative_attention(q, k, v, rel_h, rel_w, scale, block, compute_dtype(q, k, v))[0]
