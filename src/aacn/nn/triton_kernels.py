"""Triton kernels of :mod:`aacn.nn.triton_attention` (imported only when ``impl="triton"`` runs).

Per (batch, head) pair with ``N = H*W`` positions, query ``i`` and key ``j`` (row ``j // W``, column ``j % W``)
have the logit ``scale * (q_i . k_j + RH[i, j // W] + RW[i, j % W])``. Tensors are addressed through
(batch, head, position, column) strides; the one-hot maps from ``j`` to its row and column are built in
registers, so the relative terms cost two small ``tl.dot`` per block and no memory traffic beyond RH and RW.
Logits are kept in log2 units (scaled by ``log2(e)``) so ``exp2`` replaces ``exp``; the log-sum-exp ``LSE`` is
stored in the same units.
"""

import os

import triton
import triton.language as tl

# Whether Triton's CPU interpreter runs these kernels: Triton decides when a kernel is decorated (at this import).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _program(N, BLOCK: tl.constexpr):
    """(pair, block) of this program on a 1-D grid of B*Nh*cdiv(N, BLOCK) programs, the blocks of one (batch,
    head) pair next to each other (they share K and V in cache); 1-D grids allow 2^31 - 1 programs."""
    pid = tl.program_id(0)
    blocks = tl.cdiv(N, BLOCK)
    return pid // blocks, pid % blocks


@triton.jit
def _head(ptr, pair, NH, stride_b, stride_n):
    """``ptr`` moved to (batch, head) pair ``pair`` (64-bit: large batches overflow 32-bit offsets)."""
    pair = pair.to(tl.int64)
    return ptr + (pair // NH) * stride_b + (pair % NH) * stride_n


@triton.jit
def _load_rows(ptr, offs, mask, stride_row, cols, n_cols, stride_col):
    """Rows ``offs`` of a (rows, n_cols) matrix, columns ``cols`` (zero where masked or past n_cols)."""
    return tl.load(ptr + offs[:, None] * stride_row + cols[None, :] * stride_col,
                   mask=mask[:, None] & (cols[None, :] < n_cols), other=0.0)


@triton.jit
def _store_rows(ptr, value, offs, mask, cols, n_cols):
    """Write ``value`` to rows ``offs`` of a contiguous (rows, n_cols) matrix (masked like :func:`_load_rows`)."""
    tl.store(ptr + offs[:, None] * n_cols + cols[None, :], value.to(ptr.dtype.element_ty),
             mask=mask[:, None] & (cols[None, :] < n_cols))


@triton.jit
def _row_onehot(offs_n, W, offs_h, like):
    """(BLOCK_N, HP): 1 where key ``j`` lies in grid row ``x'`` (``j // W == x'``), in ``like``'s dtype."""
    return ((offs_n[:, None] // W) == offs_h[None, :]).to(like.dtype)


@triton.jit
def _col_onehot(offs_n, W, offs_w, like):
    """(BLOCK_N, WP): 1 where key ``j`` lies in grid column ``y'`` (``j % W == y'``), in ``like``'s dtype."""
    return ((offs_n[:, None] % W) == offs_w[None, :]).to(like.dtype)


@triton.jit
def _logits(q, k, rh, rw, RH, offs_m, mask_m, sh_p, sh_j, start, offs_n, W, offs_h, offs_w,
            HAS_H: tl.constexpr, HAS_W: tl.constexpr, ROWS: tl.constexpr, PRECISION: tl.constexpr):
    """(BLOCK_M, BLOCK_N) unscaled logits q.k + RH[:, j // W] + RW[:, j % W] of the key block at ``start``.

    ``ROWS``: the key block is exactly grid row ``x' = start // W`` (``BLOCK_N == W``), so the RH term is one
    column of RH (loaded here) and the RW term is the query block's RW rows as they are: no products at all.
    Otherwise both terms are products with one-hot maps of the keys' rows and columns.
    """
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    if ROWS:
        if HAS_H:
            col = tl.load(RH + offs_m * sh_p + (start // W) * sh_j, mask=mask_m, other=0.0)
            s += col.to(tl.float32)[:, None]
        if HAS_W:
            s += rw.to(tl.float32)
    else:
        if HAS_H:
            s += tl.dot(rh, tl.trans(_row_onehot(offs_n, W, offs_h, rh)), input_precision=PRECISION)
        if HAS_W:
            s += tl.dot(rw, tl.trans(_col_onehot(offs_n, W, offs_w, rw)), input_precision=PRECISION)
    return s


@triton.jit
def _query_rows(Q, RH, RW, offs_m, mask_m, H, W, DK, sq_p, sq_d, sh_p, sh_j, sw_p, sw_j, offs_dk, offs_h, offs_w,
                HAS_H: tl.constexpr, HAS_W: tl.constexpr, ROWS: tl.constexpr):
    """One block of queries and their RH / RW rows (q stands in for a table not needed here; never read).

    With ``ROWS`` the RH term is read one column per key block instead (see :func:`_logits`).
    """
    q = _load_rows(Q, offs_m, mask_m, sq_p, offs_dk, DK, sq_d)
    rh = q
    rw = q
    if HAS_H:
        if not ROWS:
            rh = _load_rows(RH, offs_m, mask_m, sh_p, offs_h, H, sh_j)
    if HAS_W:
        rw = _load_rows(RW, offs_m, mask_m, sw_p, offs_w, W, sw_j)
    return q, rh, rw


@triton.jit
def _fwd_kernel(
    Q, K, V, RH, RW, O, LSE,
    sq_b, sq_n, sq_p, sq_d, sk_b, sk_n, sk_p, sk_d, sv_b, sv_n, sv_p, sv_d,
    sh_b, sh_n, sh_p, sh_j, sw_b, sw_n, sw_p, sw_j, so_b, so_n, so_p, so_d,
    NH, N, H, W, DK, DV, qk_scale,
    HAS_H: tl.constexpr, HAS_W: tl.constexpr, ROWS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
    HP: tl.constexpr, WP: tl.constexpr,
):
    """Output and log-sum-exp of one block of queries: an online softmax over all key blocks."""
    pair, pid_m = _program(N, BLOCK_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < N
    offs_dk, offs_dv = tl.arange(0, DKP), tl.arange(0, DVP)
    offs_h, offs_w = tl.arange(0, HP), tl.arange(0, WP)
    K = _head(K, pair, NH, sk_b, sk_n)
    V = _head(V, pair, NH, sv_b, sv_n)
    RH = _head(RH, pair, NH, sh_b, sh_n)
    q, rh, rw = _query_rows(_head(Q, pair, NH, sq_b, sq_n), RH, _head(RW, pair, NH, sw_b, sw_n), offs_m, mask_m,
                            H, W, DK, sq_p, sq_d, sh_p, sh_j, sw_p, sw_j, offs_dk, offs_h, offs_w, HAS_H, HAS_W, ROWS)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DVP], tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        k = _load_rows(K, offs_n, mask_n, sk_p, offs_dk, DK, sk_d)
        v = _load_rows(V, offs_n, mask_n, sv_p, offs_dv, DV, sv_d)
        s = _logits(q, k, rh, rw, RH, offs_m, mask_m, sh_p, sh_j, start, offs_n, W, offs_h, offs_w,
                    HAS_H, HAS_W, ROWS, PRECISION) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    out_ptrs = _head(O, pair, NH, so_b, so_n) + offs_m[:, None] * so_p + offs_dv[None, :] * so_d
    tl.store(out_ptrs, acc.to(O.dtype.element_ty), mask=mask_m[:, None] & (offs_dv[None, :] < DV))
    tl.store(LSE + pair.to(tl.int64) * N + offs_m, m_i + tl.log2(l_i), mask=mask_m)


@triton.jit
def _probs_and_dlogits(q, k, v, rh, rw, RH, do, lse, delta, offs_m, offs_n, mask_m, mask_n, sh_p, sh_j, start, W,
                       offs_h, offs_w, qk_scale,
                       HAS_H: tl.constexpr, HAS_W: tl.constexpr, ROWS: tl.constexpr, PRECISION: tl.constexpr):
    """Recomputed probabilities P and the unscaled logit gradients dS = P * (dO.v - delta) of one block pair."""
    s = _logits(q, k, rh, rw, RH, offs_m, mask_m, sh_p, sh_j, start, offs_n, W, offs_h, offs_w,
                HAS_H, HAS_W, ROWS, PRECISION) * qk_scale
    p = tl.where(mask_m[:, None] & mask_n[None, :], tl.exp2(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    return p, p * (dp - delta[:, None])


@triton.jit
def _bwd_kv_kernel(
    Q, K, V, RH, RW, DO, LSE, DELTA, DK_OUT, DV_OUT,
    sq_b, sq_n, sq_p, sq_d, sk_b, sk_n, sk_p, sk_d, sv_b, sv_n, sv_p, sv_d,
    sh_b, sh_n, sh_p, sh_j, sw_b, sw_n, sw_p, sw_j, sg_b, sg_n, sg_p, sg_d,
    NH, N, H, W, DK, DV, scale, qk_scale,
    HAS_H: tl.constexpr, HAS_W: tl.constexpr, ROWS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
    HP: tl.constexpr, WP: tl.constexpr,
):
    """Gradients of one block of keys and values, looping over all query blocks."""
    pair, pid_n = _program(N, BLOCK_N)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_dk, offs_dv = tl.arange(0, DKP), tl.arange(0, DVP)
    offs_h, offs_w = tl.arange(0, HP), tl.arange(0, WP)
    Q, RH, RW = _head(Q, pair, NH, sq_b, sq_n), _head(RH, pair, NH, sh_b, sh_n), _head(RW, pair, NH, sw_b, sw_n)
    DO = _head(DO, pair, NH, sg_b, sg_n)
    row0 = pair.to(tl.int64) * N
    k = _load_rows(_head(K, pair, NH, sk_b, sk_n), offs_n, mask_n, sk_p, offs_dk, DK, sk_d)
    v = _load_rows(_head(V, pair, NH, sv_b, sv_n), offs_n, mask_n, sv_p, offs_dv, DV, sv_d)
    dk = tl.zeros([BLOCK_N, DKP], tl.float32)
    dv = tl.zeros([BLOCK_N, DVP], tl.float32)
    key_start = pid_n * BLOCK_N
    for start in range(0, N, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < N
        q, rh, rw = _query_rows(Q, RH, RW, offs_m, mask_m, H, W, DK, sq_p, sq_d, sh_p, sh_j, sw_p, sw_j, offs_dk,
                                offs_h, offs_w, HAS_H, HAS_W, ROWS)
        do = _load_rows(DO, offs_m, mask_m, sg_p, offs_dv, DV, sg_d)
        lse = tl.load(LSE + row0 + offs_m, mask=mask_m, other=float("inf"))
        delta = tl.load(DELTA + row0 + offs_m, mask=mask_m, other=0.0)
        p, ds = _probs_and_dlogits(q, k, v, rh, rw, RH, do, lse, delta, offs_m, offs_n, mask_m, mask_n, sh_p,
                                   sh_j, key_start, W, offs_h, offs_w, qk_scale, HAS_H, HAS_W, ROWS, PRECISION)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    _store_rows(DK_OUT + row0 * DK, dk * scale, offs_n, mask_n, offs_dk, DK)
    _store_rows(DV_OUT + row0 * DV, dv, offs_n, mask_n, offs_dv, DV)


@triton.jit
def _bwd_q_kernel(
    Q, K, V, RH, RW, DO, LSE, DELTA, DQ_OUT, DRH_OUT, DRW_OUT,
    sq_b, sq_n, sq_p, sq_d, sk_b, sk_n, sk_p, sk_d, sv_b, sv_n, sv_p, sv_d,
    sh_b, sh_n, sh_p, sh_j, sw_b, sw_n, sw_p, sw_j, sg_b, sg_n, sg_p, sg_d,
    NH, N, H, W, DK, DV, scale, qk_scale,
    HAS_H: tl.constexpr, HAS_W: tl.constexpr, ROWS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
    HP: tl.constexpr, WP: tl.constexpr,
):
    """Gradients of one block of queries and of its rows of RH and RW, looping over all key blocks.

    ``dRH[i, x']`` is the sum of the logit gradients of query ``i`` over the keys of grid row ``x'``: a product
    with the row one-hot map, accumulated here in registers (likewise ``dRW`` over grid columns).
    """
    pair, pid_m = _program(N, BLOCK_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < N
    offs_dk, offs_dv = tl.arange(0, DKP), tl.arange(0, DVP)
    offs_h, offs_w = tl.arange(0, HP), tl.arange(0, WP)
    K, V = _head(K, pair, NH, sk_b, sk_n), _head(V, pair, NH, sv_b, sv_n)
    RH = _head(RH, pair, NH, sh_b, sh_n)
    row0 = pair.to(tl.int64) * N
    q, rh, rw = _query_rows(_head(Q, pair, NH, sq_b, sq_n), RH, _head(RW, pair, NH, sw_b, sw_n), offs_m, mask_m,
                            H, W, DK, sq_p, sq_d, sh_p, sh_j, sw_p, sw_j, offs_dk, offs_h, offs_w, HAS_H, HAS_W, ROWS)
    do = _load_rows(_head(DO, pair, NH, sg_b, sg_n), offs_m, mask_m, sg_p, offs_dv, DV, sg_d)
    lse = tl.load(LSE + row0 + offs_m, mask=mask_m, other=float("inf"))
    delta = tl.load(DELTA + row0 + offs_m, mask=mask_m, other=0.0)
    dq = tl.zeros([BLOCK_M, DKP], tl.float32)
    drh = tl.zeros([BLOCK_M, HP], tl.float32)
    drw = tl.zeros([BLOCK_M, WP], tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        k = _load_rows(K, offs_n, mask_n, sk_p, offs_dk, DK, sk_d)
        v = _load_rows(V, offs_n, mask_n, sv_p, offs_dv, DV, sv_d)
        _, ds = _probs_and_dlogits(q, k, v, rh, rw, RH, do, lse, delta, offs_m, offs_n, mask_m, mask_n, sh_p,
                                   sh_j, start, W, offs_h, offs_w, qk_scale, HAS_H, HAS_W, ROWS, PRECISION)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
        if ROWS:  # this key block is grid row start // W: its dRH column is complete, and dRW is dS itself
            if HAS_H:
                tl.store(DRH_OUT + (row0 + offs_m) * H + start // W,
                         (tl.sum(ds, 1) * scale).to(DRH_OUT.dtype.element_ty), mask=mask_m)
            if HAS_W:
                drw += ds
        else:
            if HAS_H:
                drh += tl.dot(ds.to(rh.dtype), _row_onehot(offs_n, W, offs_h, rh), input_precision=PRECISION)
            if HAS_W:
                drw += tl.dot(ds.to(rw.dtype), _col_onehot(offs_n, W, offs_w, rw), input_precision=PRECISION)
    _store_rows(DQ_OUT + row0 * DK, dq * scale, offs_m, mask_m, offs_dk, DK)
    if HAS_H:
        if not ROWS:
            _store_rows(DRH_OUT + row0 * H, drh * scale, offs_m, mask_m, offs_h, H)
    if HAS_W:
        _store_rows(DRW_OUT + row0 * W, drw * scale, offs_m, mask_m, offs_w, W)
