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
def _logits(q, k, rh, rw, offs_n, W, offs_h, offs_w,
            HAS_H: tl.constexpr, HAS_W: tl.constexpr, PRECISION: tl.constexpr):
    """(BLOCK_M, BLOCK_N) unscaled logits q.k + RH[:, j // W] + RW[:, j % W] of one query and key block."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    if HAS_H:
        onehot_h = ((offs_n[:, None] // W) == offs_h[None, :]).to(rh.dtype)  # (BLOCK_N, HP)
        s += tl.dot(rh, tl.trans(onehot_h), input_precision=PRECISION)
    if HAS_W:
        onehot_w = ((offs_n[:, None] % W) == offs_w[None, :]).to(rw.dtype)  # (BLOCK_N, WP)
        s += tl.dot(rw, tl.trans(onehot_w), input_precision=PRECISION)
    return s

@triton.jit
def _load_rows(ptr, offs, mask, stride_row, cols, n_cols, stride_col):
    """Rows ``offs`` of a (rows, n_cols) matrix, columns ``cols`` (zero where masked or past n_cols)."""
    return tl.load(ptr + offs[:, None] * stride_row + cols[None, :] * stride_col,
                   mask=mask[:, None] & (cols[None, :] < n_cols), other=0.0)

@triton.jit
def _fwd_kernel(
    Q, K, V, RH, RW, O, LSE,
    sq_b, sq_n, sq_p, sq_d, sk_b, sk_n, sk_p, sk_d, sv_b, sv_n, sv_p, sv_d,
    sh_b, sh_n, sh_p, sh_j, sw_b, sw_n, sw_p, sw_j, so_b, so_n, so_p, so_d,
    NH, N, H, W, DK, DV, qk_scale,
    HAS_H: tl.constexpr, HAS_W: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
    HP: tl.constexpr, WP: tl.constexpr,
):
    pid_m, pair = tl.program_id(0), tl.program_id(1)
    pair = pair.to(tl.int64)  # 64-bit offsets: large batches overflow int32
    b, n = pair // NH, pair % NH
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < N
    offs_dk, offs_dv = tl.arange(0, DKP), tl.arange(0, DVP)
    offs_h, offs_w = tl.arange(0, HP), tl.arange(0, WP)
    Q += b * sq_b + n * sq_n
    K += b * sk_b + n * sk_n
    V += b * sv_b + n * sv_n
    q = _load_rows(Q, offs_m, mask_m, sq_p, offs_dk, DK, sq_d)
    rh = q  # placeholders when a term is absent (never read)
    rw = q
    if HAS_H:
        rh = _load_rows(RH + b * sh_b + n * sh_n, offs_m, mask_m, sh_p, offs_h, H, sh_j)
    if HAS_W:
        rw = _load_rows(RW + b * sw_b + n * sw_n, offs_m, mask_m, sw_p, offs_w, W, sw_j)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DVP], tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        k = _load_rows(K, offs_n, mask_n, sk_p, offs_dk, DK, sk_d)
        v = _load_rows(V, offs_n, mask_n, sv_p, offs_dv, DV, sv_d)
        s = _logits(q, k, rh, rw, offs_n, W, offs_h, offs_w, HAS_H, HAS_W, PRECISION) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    out_ptrs = O + b * so_b + n * so_n + offs_m[:, None] * so_p + offs_dv[None, :] * so_d
    tl.store(out_ptrs, acc.to(O.dtype.element_ty), mask=mask_m[:, None] & (offs_dv[None, :] < DV))
    tl.store(LSE + pair * N + offs_m, m_i + tl.log2(l_i), mask=mask_m)

@triton.jit
def _bwd_kv_kernel(
    Q, K, V, RH, RW, DO, LSE, DELTA, DK_OUT, DV_OUT,
    sq_b, sq_n, sq_p, sq_d, sk_b, sk_n, sk_p, sk_d, sv_b, sv_n, sv_p, sv_d,
    sh_b, sh_n, sh_p, sh_j, sw_b, sw_n, sw_p, sw_j, sg_b, sg_n, sg_p, sg_d,
    NH, N, H, W, DK, DV, scale, qk_scale,
    HAS_H: tl.constexpr, HAS_W: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
    HP: tl.constexpr, WP: tl.constexpr,
):
    """Gradients of one block of keys and values, looping over all query blocks."""
    pid_n, pair = tl.program_id(0), tl.program_id(1)
    pair = pair.to(tl.int64)  # 64-bit offsets: large batches overflow int32
    b, n = pair // NH, pair % NH
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_dk, offs_dv = tl.arange(0, DKP), tl.arange(0, DVP)
    offs_h, offs_w = tl.arange(0, HP), tl.arange(0, WP)
    Q += b * sq_b + n * sq_n
    DO += b * sg_b + n * sg_n
    k = _load_rows(K + b * sk_b + n * sk_n, offs_n, mask_n, sk_p, offs_dk, DK, sk_d)
    v = _load_rows(V + b * sv_b + n * sv_n, offs_n, mask_n, sv_p, offs_dv, DV, sv_d)
    dk = tl.zeros([BLOCK_N, DKP], tl.float32)
    dv = tl.zeros([BLOCK_N, DVP], tl.float32)
    for start in range(0, N, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < N
        q = _load_rows(Q, offs_m, mask_m, sq_p, offs_dk, DK, sq_d)
        rh = q
        rw = q
        if HAS_H:
            rh = _load_rows(RH + b * sh_b + n * sh_n, offs_m, mask_m, sh_p, offs_h, H, sh_j)
        if HAS_W:
            rw = _load_rows(RW + b * sw_b + n * sw_n, offs_m, mask_m, sw_p, offs_w, W, sw_j)
        do = _load_rows(DO, offs_m, mask_m, sg_p, offs_dv, DV, sg_d)
        lse = tl.load(LSE + pair * N + offs_m, mask=mask_m, other=float("inf"))
        delta = tl.load(DELTA + pair * N + offs_m, mask=mask_m, other=0.0)
        s = _logits(q, k, rh, rw, offs_n, W, offs_h, offs_w, HAS_H, HAS_W, PRECISION) * qk_scale
        p = tl.exp2(s - lse[:, None])
        p = tl.where(mask_m[:, None] & mask_n[None, :], p, 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    store_mask = mask_n[:, None]
    tl.store(DK_OUT + pair * N * DK + offs_n[:, None] * DK + offs_dk[None, :], (dk * scale).to(K.dtype.element_ty),
             mask=store_mask & (offs_dk[None, :] < DK))
    tl.store(DV_OUT + pair * N * DV + offs_n[:, None] * DV + offs_dv[None, :], dv.to(V.dtype.element_ty),
             mask=store_mask & (offs_dv[None, :] < DV))

@triton.jit
def _bwd_q_kernel(
    Q, K, V, RH, RW, DO, LSE, DELTA, DQ_OUT, DRH_OUT, DRW_OUT,
    sq_b, sq_n, sq_p, sq_d, sk_b, sk_n, sk_p, sk_d, sv_b, sv_n, sv_p, sv_d,
    sh_b, sh_n, sh_p, sh_j, sw_b, sw_n, sw_p, sw_j, sg_b, sg_n, sg_p, sg_d,
    NH, N, H, W, DK, DV, scale, qk_scale,
    HAS_H: tl.constexpr, HAS_W: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
    HP: tl.constexpr, WP: tl.constexpr,
):
    """Gradients of one block of queries and of its rows of RH and RW, looping over all key blocks."""
    pid_m, pair = tl.program_id(0), tl.program_id(1)
    pair = pair.to(tl.int64)  # 64-bit offsets: large batches overflow int32
    b, n = pair // NH, pair % NH
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < N
    offs_dk, offs_dv = tl.arange(0, DKP), tl.arange(0, DVP)
    offs_h, offs_w = tl.arange(0, HP), tl.arange(0, WP)
    K += b * sk_b + n * sk_n
    V += b * sv_b + n * sv_n
    q = _load_rows(Q + b * sq_b + n * sq_n, offs_m, mask_m, sq_p, offs_dk, DK, sq_d)
    rh = q
    rw = q
    if HAS_H:
        rh = _load_rows(RH + b * sh_b + n * sh_n, offs_m, mask_m, sh_p, offs_h, H, sh_j)
    if HAS_W:
        rw = _load_rows(RW + b * sw_b + n * sw_n, offs_m, mask_m, sw_p, offs_w, W, sw_j)
    do = _load_rows(DO + b * sg_b + n * sg_n, offs_m, mask_m, sg_p, offs_dv, DV, sg_d)
    lse = tl.load(LSE + pair * N + offs_m, mask=mask_m, other=float("inf"))
    delta = tl.load(DELTA + pair * N + offs_m, mask=mask_m, other=0.0)
    dq = tl.zeros([BLOCK_M, DKP], tl.float32)
    drh = tl.zeros([BLOCK_M, HP], tl.float32)
    drw = tl.zeros([BLOCK_M, WP], tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        k = _load_rows(K, offs_n, mask_n, sk_p, offs_dk, DK, sk_d)
        v = _load_rows(V, offs_n, mask_n, sv_p, offs_dv, DV, sv_d)
        s = _logits(q, k, rh, rw, offs_n, W, offs_h, offs_w, HAS_H, HAS_W, PRECISION) * qk_scale
        p = tl.exp2(s - lse[:, None])
        p = tl.where(mask_m[:, None] & mask_n[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
        if HAS_H:  # d RH[i, x'] = sum over the keys j of row x' of d logit[i, j]
            onehot_h = ((offs_n[:, None] // W) == offs_h[None, :]).to(rh.dtype)
            drh += tl.dot(ds.to(rh.dtype), onehot_h, input_precision=PRECISION)
        if HAS_W:
            onehot_w = ((offs_n[:, None] % W) == offs_w[None, :]).to(rw.dtype)
            drw += tl.dot(ds.to(rw.dtype), onehot_w, input_precision=PRECISION)
    rows = pair * N + offs_m[:, None]
    tl.store(DQ_OUT + rows * DK + offs_dk[None, :], (dq * scale).to(Q.dtype.element_ty),
             mask=mask_m[:, None] & (offs_dk[None, :] < DK))
    if HAS_H:
        tl.store(DRH_OUT + rows * H + offs_h[None, :], (drh * scale).to(RH.dtype.element_ty),
                 mask=mask_m[:, None] & (offs_h[None, :] < H))
    if HAS_W:
        tl.store(DRW_OUT + rows * W + offs_w[None, :], (drw * scale).to(RW.dtype.element_ty),
                 mask=mask_m[:, None] & (offs_w[None, :] < W))
