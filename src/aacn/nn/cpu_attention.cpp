// Exact 2D relative self-attention on the CPU with the relative logits added inside the attention loop.
//
// Built at first use by aacn/nn/cpu_kernel.py (torch.utils.cpp_extension.load), which documents the layout and
// the guarantees. Per (batch x head) pair with N = H*W positions, the tensors are
//   q, k (D, N), v (DV, N), out (DV, N)  -- channel-major: the key index is the contiguous one, so every inner
//                                           loop runs over keys with full SIMD vectors whatever D and DV are;
//   lse (N)                              -- log-sum-exp of each query's scaled logits;
// and, shared by every pair, the relative embeddings
//   rel_h (2H-1, D), rel_w (2W-1, D)     -- row m holds r^H_(m-H+1) (offsets -(H-1) .. H-1), likewise r^W.
// The scaled logit of query i = (x, y) and key j = (x', y') is
//   s_ij = scale * (q_i . k_j + rh[i, x'] + rw[i, y']),  rh[i, x'] = q_i . r^H_(x'-x),  rw[i, y'] = q_i . r^W_(y'-y).
// The compact relative logits rh[i, .] (H values) and rw[i, .] (W values) are computed per query inside the loop,
// from a transposed copy (D, 2H-1) of rel_h whose H columns H-1-x .. 2H-2-x are exactly query row x's offsets:
// D vector FMAs per query and table, vectorised over x', and nothing of size B*Nh*HW*(H+W) in memory.
// The kernel keeps it in base 2, s2_ij = log2(e) s_ij (log2(e) folded into the scale), so every probability is
// one exp2: p_ij = 2^(s2_ij - max_j s2_ij) = e^(s_ij - max_j s_ij); lse is saved in natural units.
//
// Forward, per query: the row s_i. (N values, per-thread scratch) is written as the bias rh[i, .] + rw[i, .]
// broadcast over the key grid plus sum_d q_di k_d. (one FMA per key vector and depth), then its max, exp and sum, and
// out_.i = sum_j p_ij v_.j / l_i. Two passes over a row that stays in L1/L2; nothing (HW)^2-sized.
// Backward (FlashAttention-2 style, from the saved lse), per pair, per block of queries: recompute p_ij,
// dp_ij = dO_.i . v_.j, ds_ij = scale * p_ij (dp_ij - delta_i) with delta_i = dO_.i . out_.i; then dq_.i = ds_i. K^T,
// d rh[i, x'] = sum_y' ds_i(x',y'), d rw[i, y'] = sum_x' ds_i(x',y'), and per block dV += dO P^T, dK += Q dS^T.
// The relative terms then add sum_x' d rh[i, x'] r^H_(x'-x) (and the same for W) to dq_.i; the pair's d rh (N, H)
// and d rw (N, W) are kept, and after the pair the embeddings' gradients gain d rh[i, x'] q_.i at offset x'-x, as
// one small GEMM per key row (per key column for W). Pairs are split into a fixed number of groups (kGroups,
// independent of the thread count), each group's embedding gradients are summed in its own buffer and the buffers
// are added in group order, and a pair's dK/dV rows are written by one thread only: no atomics, deterministic for
// any thread count.
//
// float and double only (the Python side converts bf16/fp16 to float); exp2 is a ~2 ulp polynomial for float
// on AVX-512/AVX2 and SLEEF's 1-ulp exp2 otherwise (double: always SLEEF or std::exp2).

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

using at::vec::Vectorized;

template <typename T>
inline Vectorized<T> vexp2(const Vectorized<T>& x) {
  return x.exp2();
}

constexpr double kLog2e = 1.4426950408889634, kLn2 = 0.6931471805599453;

// 2^x for float vectors, after Cephes exp2f: n = round(x), f = x - n in [-1/2, 1/2], 2^f = 1 + f P(f) with a
// degree-5 P (relative error about 2 ulp), times 2^n. Arguments below -125 (and -inf) give exactly 0 (clamped
// first, so no subnormal is ever formed), NaN propagates. The kernel evaluates it only at arguments <= 0 up to
// rounding (a base-2 logit minus its row max or log-sum-exp). Working in base 2 (log2(e) folded into the logits'
// scale) saves the range reduction's multiply and its two-part ln 2; AVX-512's vscalefps applies 2^n in one step.
constexpr float kExp2Lo = -125.0f;

// 2^f for f in [-1/2, 1/2] (the polynomial shared by the instruction sets below).
inline Vectorized<float> exp2_fraction(const Vectorized<float>& f) {
  using V = Vectorized<float>;
  V y = at::vec::fmadd(V(1.535336188319500e-4f), f, V(1.339887440266574e-3f));
  y = at::vec::fmadd(y, f, V(9.618437357674640e-3f));
  y = at::vec::fmadd(y, f, V(5.550332471162809e-2f));
  y = at::vec::fmadd(y, f, V(2.402264791363012e-1f));
  y = at::vec::fmadd(y, f, V(6.931472028550421e-1f));
  return at::vec::fmadd(y, f, V(1.0f));
}

#if defined(CPU_CAPABILITY_AVX512)
template <>
inline Vectorized<float> vexp2(const Vectorized<float>& xv) {
  const __m512 x = xv;
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExp2Lo), _CMP_NLT_UQ);  // x >= kExp2Lo or NaN
  const __m512 xc = _mm512_max_ps(_mm512_set1_ps(kExp2Lo), x);                          // NaN stays NaN
  const __m512 n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_maskz_scalef_ps(keep, exp2_fraction(_mm512_sub_ps(xc, n)), n);
}
#elif defined(CPU_CAPABILITY_AVX2)
template <>
inline Vectorized<float> vexp2(const Vectorized<float>& xv) {
  const __m256 x = xv;
  const __m256 xc = _mm256_max_ps(_mm256_set1_ps(kExp2Lo), x);  // NaN stays NaN
  const __m256 n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 y = _mm256_mul_ps(exp2_fraction(_mm256_sub_ps(xc, n)), _mm256_castsi256_ps(e));
  return _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(kExp2Lo), _CMP_LT_OQ));
}
#endif

// sums[r] = the horizontal sum of acc[r], r < 16. With 512-bit float vectors, one transpose-and-add tree
// (45 instructions for the 16 sums, against 8 per sum one at a time); otherwise one reduction per vector.
template <typename T>
inline void hsum16(const Vectorized<T>* acc, T* sums) {
  for (int r = 0; r < 16; ++r) {
    sums[r] = at::vec::vec_reduce_all<T>([](Vectorized<T>& a, Vectorized<T>& b) { return a + b; }, acc[r]);
  }
}

#if defined(CPU_CAPABILITY_AVX512)
template <>
inline void hsum16(const Vectorized<float>* acc, float* sums) {
  __m512 t[8];  // per 128-bit block k: [a0+a2, b0+b2, a1+a3, b1+b3] of a = acc[2i], b = acc[2i+1]
  for (int i = 0; i < 8; ++i) {
    const __m512 a = acc[2 * i], b = acc[2 * i + 1];
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  }
  __m512 u[4];  // per block k: block k's sums of acc[4i], ..., acc[4i + 3]
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[2 * i]), b = _mm512_castps_pd(t[2 * i + 1]);
    u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  __m512 w[2];  // blocks: [u_2i blocks 0+1, u_2i blocks 2+3, u_2i+1 blocks 0+1, u_2i+1 blocks 2+3]
  for (int i = 0; i < 2; ++i) {
    const __m512 a = u[2 * i], b = u[2 * i + 1];
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
  }
  _mm512_storeu_ps(sums, _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88), _mm512_shuffle_f32x4(w[0], w[1], 0xDD)));
}
#endif

template <typename T>
struct Kernel {
  using Vec = Vectorized<T>;
  static constexpr int64_t VL = Vec::size();
  static constexpr int64_t R = 4;  // rows (queries or channels) blocked in registers
  // 512-bit vectors (32 registers): 16 accumulators per pass and one hsum16 for them
  static constexpr bool kWide = VL * sizeof(T) == 64;

  const T* q;
  const T* k;
  const T* v;
  const T* rel_h;   // (2H-1, D) embeddings, nullptr when absent
  const T* rel_w;   // (2W-1, D)
  const T* rel_ht;  // (D, 2H-1): rel_h transposed, for the forward's rows of rh
  const T* rel_wt;  // (D, 2W-1)
  int64_t P, N, D, DV, H, W, Npad;  // Npad: N rounded up to 2 vectors (length of scratch rows)
  T scale;   // softmax scale (the gradient of a natural-units logit)
  T scale2;  // scale * log2(e): logits are kept in base 2, p = 2^(s2 - max) = e^(s - max)

  static inline Vec load(const T* p, int64_t n) {
    return n >= VL ? Vec::loadu(p) : (n > 0 ? Vec::loadu(p, n) : Vec(T(0)));
  }
  static inline void store(T* p, const Vec& x, int64_t n) {
    if (n >= VL) {
      x.store(p);
    } else if (n > 0) {
      x.store(p, n);
    }
  }
  static inline T hsum(const Vec& x) {
    return at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return a + b; }, x);
  }
  static inline T hmax(const Vec& x) {
    return at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, x);
  }

  // One 2-vector column chunk [j, j + 2 VL) of gemm_rows; TAIL: partial (n - j < 2 VL).
  template <int NR, bool TAIL>
  static inline void gemm_chunk(T* Y, int64_t ldy, bool init, bool full, const T* coef, int64_t crs, int64_t ccs,
                                const T* M, int64_t ldm, int64_t C, int64_t n, int64_t j) {
    const int64_t c0 = TAIL ? n - j : VL, c1 = TAIL ? n - j - VL : VL;
    const int64_t s0 = full ? VL : c0, s1 = full ? VL : c1;
    Vec acc[NR][2];
    for (int r = 0; r < NR; ++r) {
      if (init) {
        acc[r][0] = TAIL ? load(Y + r * ldy + j, s0) : Vec::loadu(Y + r * ldy + j);
        acc[r][1] = TAIL ? load(Y + r * ldy + j + VL, s1) : Vec::loadu(Y + r * ldy + j + VL);
      } else {
        acc[r][0] = acc[r][1] = Vec(T(0));
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      const T* m = M + c * ldm + j;
      const Vec m0 = TAIL ? load(m, c0) : Vec::loadu(m);
      const Vec m1 = TAIL ? load(m + VL, c1) : Vec::loadu(m + VL);
      for (int r = 0; r < NR; ++r) {
        const Vec cf(coef[r * crs + c * ccs]);
        acc[r][0] = at::vec::fmadd(cf, m0, acc[r][0]);
        acc[r][1] = at::vec::fmadd(cf, m1, acc[r][1]);
      }
    }
    for (int r = 0; r < NR; ++r) {
      if (TAIL) {
        store(Y + r * ldy + j, acc[r][0], s0);
        store(Y + r * ldy + j + VL, acc[r][1], s1);
      } else {
        acc[r][0].store(Y + r * ldy + j);
        acc[r][1].store(Y + r * ldy + j + VL);
      }
    }
  }

  // Y[r, 0:n) = (init ? Y[r, 0:n) : 0) + sum_c coef[r*crs + c*ccs] * M[c*ldm + 0:n) for r < NR: NR rows share
  // every load of M. Rows of M are read only up to n; with `full`, Y rows are scratch rows padded to Npad and
  // whole vectors are written, else exactly n values.
  template <int NR>
  static void gemm_rows(T* Y, int64_t ldy, bool init, bool full, const T* coef, int64_t crs, int64_t ccs, const T* M,
                        int64_t ldm, int64_t C, int64_t n) {
    int64_t j = 0;
    for (; j + 2 * VL <= n; j += 2 * VL) gemm_chunk<NR, false>(Y, ldy, init, full, coef, crs, ccs, M, ldm, C, n, j);
    if (j < n) gemm_chunk<NR, true>(Y, ldy, init, full, coef, crs, ccs, M, ldm, C, n, j);
  }

  // gemm_rows for any number of rows (blocks of R).
  static void gemm(T* Y, int64_t ldy, bool init, bool full, const T* coef, int64_t crs, int64_t ccs, const T* M,
                   int64_t ldm, int64_t C, int64_t rows, int64_t n) {
    int64_t r = 0;
    for (; r + R <= rows; r += R) gemm_rows<R>(Y + r * ldy, ldy, init, full, coef + r * crs, crs, ccs, M, ldm, C, n);
    switch (rows - r) {
      case 3: gemm_rows<3>(Y + r * ldy, ldy, init, full, coef + r * crs, crs, ccs, M, ldm, C, n); break;
      case 2: gemm_rows<2>(Y + r * ldy, ldy, init, full, coef + r * crs, crs, ccs, M, ldm, C, n); break;
      case 1: gemm_rows<1>(Y + r * ldy, ldy, init, full, coef + r * crs, crs, ccs, M, ldm, C, n); break;
      default: break;
    }
  }

  // out[r*ors + c*ocs] = mult[r] * sum_j A[r*lda + j] * M[c*ldm + j] for r < NR, c < C, j < n. A rows are
  // scratch rows (whole vectors readable, finite beyond n); M is read as 0 beyond n. Two channels per pass, or
  // four for four rows with 512-bit vectors (16 accumulators reduced together by hsum16).
  template <int NR>
  static void dots_rows(const T* A, int64_t lda, const T* M, int64_t ldm, int64_t C, int64_t n, const T* mult, T* out,
                        int64_t ors, int64_t ocs) {
    int64_t c = 0;
    if constexpr (kWide && NR == 4) {
      for (; c + 4 <= C; c += 4) {
        const T* mp = M + c * ldm;
        Vec acc[16];  // acc[4 r + cc]: row r, channel c + cc
        for (auto& a : acc) a = Vec(T(0));
        for (int64_t j = 0; j < n; j += VL) {
          const int64_t cnt = n - j;
          const Vec m0 = load(mp + j, cnt), m1 = load(mp + ldm + j, cnt);
          const Vec m2 = load(mp + 2 * ldm + j, cnt), m3 = load(mp + 3 * ldm + j, cnt);
          for (int r = 0; r < 4; ++r) {
            const Vec a = Vec::loadu(A + r * lda + j);
            acc[4 * r] = at::vec::fmadd(a, m0, acc[4 * r]);
            acc[4 * r + 1] = at::vec::fmadd(a, m1, acc[4 * r + 1]);
            acc[4 * r + 2] = at::vec::fmadd(a, m2, acc[4 * r + 2]);
            acc[4 * r + 3] = at::vec::fmadd(a, m3, acc[4 * r + 3]);
          }
        }
        T sums[16];
        hsum16<T>(acc, sums);
        for (int r = 0; r < 4; ++r) {
          for (int cc = 0; cc < 4; ++cc) out[r * ors + (c + cc) * ocs] = mult[r] * sums[4 * r + cc];
        }
      }
    }
    for (; c < C; c += 2) {
      const bool two = c + 1 < C;
      const T* m0p = M + c * ldm;
      const T* m1p = two ? m0p + ldm : m0p;
      Vec acc[NR][2];
      for (int r = 0; r < NR; ++r) acc[r][0] = acc[r][1] = Vec(T(0));
      for (int64_t j = 0; j < n; j += VL) {
        const int64_t cnt = n - j;
        const Vec m0 = load(m0p + j, cnt), m1 = load(m1p + j, cnt);
        for (int r = 0; r < NR; ++r) {
          const Vec a = Vec::loadu(A + r * lda + j);
          acc[r][0] = at::vec::fmadd(a, m0, acc[r][0]);
          acc[r][1] = at::vec::fmadd(a, m1, acc[r][1]);
        }
      }
      for (int r = 0; r < NR; ++r) {
        out[r * ors + c * ocs] = mult[r] * hsum(acc[r][0]);
        if (two) out[r * ors + (c + 1) * ocs] = mult[r] * hsum(acc[r][1]);
      }
    }
  }

  static void dots(const T* A, int64_t lda, const T* M, int64_t ldm, int64_t C, int64_t rows, int64_t n, const T* mult,
                   T* out, int64_t ors, int64_t ocs) {
    int64_t r = 0;
    for (; r + R <= rows; r += R) dots_rows<R>(A + r * lda, lda, M, ldm, C, n, mult + r, out + r * ors, ors, ocs);
    switch (rows - r) {
      case 3: dots_rows<3>(A + r * lda, lda, M, ldm, C, n, mult + r, out + r * ors, ors, ocs); break;
      case 2: dots_rows<2>(A + r * lda, lda, M, ldm, C, n, mult + r, out + r * ors, ors, ocs); break;
      case 1: dots_rows<1>(A + r * lda, lda, M, ldm, C, n, mult + r, out + r * ors, ors, ocs); break;
      default: break;
    }
  }

  // sum_k c[k] * M[k * ldm + 0:cnt) for k < K, as one vector: four independent FMA chains (a single chain would
  // wait on each FMA's latency).
  static inline Vec combine(const T* c, const T* M, int64_t ldm, int64_t K, int64_t cnt) {
    Vec a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
    int64_t kk = 0;
    for (; kk + 4 <= K; kk += 4) {
      a0 = at::vec::fmadd(Vec(c[kk]), load(M + kk * ldm, cnt), a0);
      a1 = at::vec::fmadd(Vec(c[kk + 1]), load(M + (kk + 1) * ldm, cnt), a1);
      a2 = at::vec::fmadd(Vec(c[kk + 2]), load(M + (kk + 2) * ldm, cnt), a2);
      a3 = at::vec::fmadd(Vec(c[kk + 3]), load(M + (kk + 3) * ldm, cnt), a3);
    }
    for (; kk < K; ++kk) a0 = at::vec::fmadd(Vec(c[kk]), load(M + kk * ldm, cnt), a0);
    return (a0 + a1) + (a2 + a3);
  }

  // out[0:L) = sum_d c[d] * tt[d * ld + 0:L): one query's compact relative logits from the transposed
  // embeddings (tt already offset to the query's first column), vectorised over the L outputs.
  static inline void relative_row(T* out, const T* c, const T* tt, int64_t ld, int64_t D, int64_t L) {
    for (int64_t l = 0; l < L; l += VL) {
      const int64_t cnt = std::min<int64_t>(VL, L - l);
      store(out + l, combine(c, tt + l, ld, D, cnt), cnt);
    }
  }

  // Rows s[iq] (iq < nq, stride Npad) = scaled logits of queries i0 + iq of pair p; lanes >= N are -inf.
  // coef: scratch of nq * D values; rh_row, rw_row: scratch of H + VL and W + VL values.
  void logits(int64_t p, int64_t i0, int64_t nq, T* s, T* coef, T* rh_row, T* rw_row) const {
    const T* qp = q + p * D * N;
    const bool bias = rel_h != nullptr || rel_w != nullptr;
    for (int64_t iq = 0; iq < nq; ++iq) {
      const int64_t i = i0 + iq, x = i / W, y = i % W;
      T* c = coef + iq * D;
      for (int64_t d = 0; d < D; ++d) c[d] = scale2 * qp[d * N + i];
      if (!bias) continue;
      // base-2 scaled compact relative logits of this query: rh_row[x'] for key rows, rw_row[y'] for key columns
      if (rel_h != nullptr) relative_row(rh_row, c, rel_ht + (H - 1 - x), 2 * H - 1, D, H);
      if (rel_w != nullptr) relative_row(rw_row, c, rel_wt + (W - 1 - y), 2 * W - 1, D, W);
      T* row = s + iq * Npad;
      for (int64_t xk = 0; xk < H; ++xk) {
        const Vec bh(rel_h != nullptr ? rh_row[xk] : T(0));
        for (int64_t yk = 0; yk < W; yk += VL) {
          const int64_t cnt = std::min<int64_t>(VL, W - yk);
          store(row + xk * W + yk, rel_w != nullptr ? bh + load(rw_row + yk, cnt) : bh, cnt);
        }
      }
    }
    gemm(s, Npad, bias, true, coef, D, 1, k + p * D * N, N, D, nq, N);
    for (int64_t iq = 0; iq < nq; ++iq) {
      std::fill(s + iq * Npad + N, s + (iq + 1) * Npad, -std::numeric_limits<T>::infinity());
    }
  }

  void forward(T* out, T* lse) const {
    constexpr int64_t kBlock = 16;  // queries per parallel task and per logits() call
    const int64_t blocks = (N + kBlock - 1) / kBlock;
    at::parallel_for(0, P * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(kBlock * Npad + kBlock * D + kBlock + H + W + 2 * VL);
      T* s = scratch.data();
      T* coef = s + kBlock * Npad;
      T* inv = coef + kBlock * D;
      T* rh_row = inv + kBlock;
      T* rw_row = rh_row + H + VL;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t p = task / blocks, i0 = (task % blocks) * kBlock, nq = std::min(kBlock, N - i0);
        logits(p, i0, nq, s, coef, rh_row, rw_row);
        for (int64_t iq = 0; iq < nq; ++iq) {
          T* row = s + iq * Npad;
          Vec mv(-std::numeric_limits<T>::infinity());
          for (int64_t j = 0; j < Npad; j += VL) mv = at::vec::maximum(mv, Vec::loadu(row + j));
          const T m = hmax(mv);
          const Vec mb(m);
          Vec lv(T(0));
          for (int64_t j = 0; j < Npad; j += VL) {
            const Vec e = vexp2<T>(Vec::loadu(row + j) - mb);
            e.store(row + j);
            lv = lv + e;
          }
          const T l = hsum(lv);
          inv[iq] = T(1) / l;
          lse[p * N + i0 + iq] = (m + std::log2(l)) * T(kLn2);  // natural units
        }
        dots(s, Npad, v + p * DV * N, N, DV, nq, N, inv, out + p * DV * N + i0, 1, N);
      }
    });
  }

  // The relative terms' share of query i's dq: dqr[0:D) = sum_x' drh[x'] r^H_(x'-x) + sum_y' drw[y'] r^W_(y'-y),
  // from d rh[i, .] (drh, H values) and d rw[i, .] (drw, W values).
  void relative_dq(int64_t i, const T* drh, const T* drw, T* dqr) const {
    const int64_t x = i / W, y = i % W;
    const T* hrow = rel_h != nullptr ? rel_h + (H - 1 - x) * D : nullptr;  // r^H_(x'-x) for x' = 0
    const T* wrow = rel_w != nullptr ? rel_w + (W - 1 - y) * D : nullptr;
    for (int64_t c = 0; c < D; c += VL) {
      const int64_t cnt = std::min<int64_t>(VL, D - c);
      Vec acc(T(0));
      if (hrow != nullptr) acc = acc + combine(drh, hrow + c, D, H, cnt);
      if (wrow != nullptr) acc = acc + combine(drw, wrow + c, D, W, cnt);
      store(dqr + c, acc, cnt);
    }
  }

  // The embeddings' gradients from one pair, added to the transposed group buffers gh (D, 2H-1) and gw
  // (D, 2W-1): column x'-x+H-1 of gh gains sum_y q_.(x,y) d rh[(x,y), x'] -- per key row x one small GEMM of
  // q's (D, W) block with the (W, H) block of d rh -- and likewise gw per key column y. drh: (N, H), drw: (N, W).
  void relative_table_grads(int64_t p, const T* drh, const T* drw, T* gh, T* gw) const {
    const T* qp = q + p * D * N;
    if (gh != nullptr) {
      for (int64_t x = 0; x < H; ++x) {
        gemm(gh + (H - 1 - x), 2 * H - 1, true, false, qp + x * W, N, 1, drh + x * W * H, H, W, D, H);
      }
    }
    if (gw != nullptr) {
      for (int64_t y = 0; y < W; ++y) {
        gemm(gw + (W - 1 - y), 2 * W - 1, true, false, qp + y, N, W, drw + y * W, W * W, H, D, W);
      }
    }
  }

  // out (L, D) = the sum over g < G of the transposed group buffers parts[g] (D, L), added in group order.
  static void sum_groups(const std::vector<T>& parts, int64_t G, int64_t L, int64_t D, T* out) {
    std::fill(out, out + L * D, T(0));
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t d = 0; d < D; ++d) {
        for (int64_t m = 0; m < L; ++m) out[m * D + d] += parts[(g * D + d) * L + m];
      }
    }
  }

  // Pairs are processed in kGroups fixed groups (fewer when P is smaller): each group sums its embedding
  // gradients in its own buffer and the buffers are added in group order, so the result does not depend on how
  // groups are spread over threads.
  static constexpr int64_t kGroups = 64;

  // drel_h (2H-1, D), drel_w (2W-1, D): the embeddings' gradients (nullptr for an absent table).
  void backward(const T* dout, const T* out, const T* lse, T* dq, T* dk, T* dv, T* drel_h, T* drel_w) const {
    constexpr int64_t kBlock = 16;  // queries whose rows are kept for the dK/dV updates
    const int64_t G = std::min<int64_t>(P, kGroups);
    const bool rel = rel_h != nullptr || rel_w != nullptr;
    // per group, transposed: (D, 2H-1) and (D, 2W-1)
    std::vector<T> gh_parts(rel_h != nullptr ? G * D * (2 * H - 1) : 0);
    std::vector<T> gw_parts(rel_w != nullptr ? G * D * (2 * W - 1) : 0);
    at::parallel_for(0, G, 1, [&](int64_t gbegin, int64_t gend) {
      std::vector<T> scratch(2 * kBlock * Npad + kBlock * (2 * D + DV + 1) + (N + 1) * (H + W) + 4 * VL);
      T* pbuf = scratch.data();
      T* dsbuf = pbuf + kBlock * Npad;
      T* coef = dsbuf + kBlock * Npad;
      T* dqrel = coef + kBlock * D;    // (kBlock, D): the relative part of dq
      T* go = dqrel + kBlock * D;      // (kBlock, DV): dO of the block's queries
      T* ones = go + kBlock * DV;
      T* rh_row = ones + kBlock;
      T* rw_row = rh_row + H + VL;
      T* drh = rw_row + W + VL;  // (N, H): d rh of every query of the pair
      T* drw = drh + N * H;      // (N, W)
      std::fill(ones, ones + kBlock, T(1));
      for (int64_t g = gbegin; g < gend; ++g) {
        T* gh = rel_h != nullptr ? gh_parts.data() + g * D * (2 * H - 1) : nullptr;
        T* gw = rel_w != nullptr ? gw_parts.data() + g * D * (2 * W - 1) : nullptr;
        for (int64_t p = g * P / G; p < (g + 1) * P / G; ++p) {
          const T* qp = q + p * D * N;
          const T* vp = v + p * DV * N;
          const T* gp = dout + p * DV * N;
          const T* op = out + p * DV * N;
          for (int64_t i0 = 0; i0 < N; i0 += kBlock) {
            const int64_t nq = std::min(kBlock, N - i0);
            logits(p, i0, nq, pbuf, coef, rh_row, rw_row);
            for (int64_t iq = 0; iq < nq; ++iq) {
              const Vec lb(lse[p * N + i0 + iq] * T(kLog2e));
              T* row = pbuf + iq * Npad;
              for (int64_t j = 0; j < Npad; j += VL) vexp2<T>(Vec::loadu(row + j) - lb).store(row + j);
              for (int64_t c = 0; c < DV; ++c) go[iq * DV + c] = gp[c * N + i0 + iq];
            }
            gemm(dsbuf, Npad, false, true, go, DV, 1, vp, N, DV, nq, N);  // dP (zero at lanes >= N)
            const Vec sb(scale);
            for (int64_t iq = 0; iq < nq; ++iq) {
              const int64_t i = i0 + iq;
              T delta = 0;
              for (int64_t c = 0; c < DV; ++c) delta += go[iq * DV + c] * op[c * N + i];
              const Vec db(delta);
              T* ds = dsbuf + iq * Npad;
              const T* pr = pbuf + iq * Npad;
              for (int64_t j = 0; j < Npad; j += VL) {
                (sb * Vec::loadu(pr + j) * (Vec::loadu(ds + j) - db)).store(ds + j);
              }
              if (!rel) continue;
              // d rh[i, x'] = sums over each key row x' (16 rows reduced together with 512-bit vectors);
              // d rw[i, y'] = sums over the key rows
              T* drw_row = drw + i * W;
              T* drh_row = drh + i * H;
              if (rel_w != nullptr) std::fill(drw_row, drw_row + W, T(0));
              for (int64_t x0 = 0; x0 < H; x0 += 16) {
                const int64_t nx = std::min<int64_t>(16, H - x0);
                Vec acc[16];
                for (int64_t xx = 0; xx < 16; ++xx) acc[xx] = Vec(T(0));
                for (int64_t xx = 0; xx < nx; ++xx) {
                  const T* dsx = ds + (x0 + xx) * W;
                  for (int64_t y = 0; y < W; y += VL) {
                    const int64_t cnt = std::min<int64_t>(VL, W - y);
                    const Vec r = load(dsx + y, cnt);
                    acc[xx] = acc[xx] + r;
                    if (rel_w != nullptr) store(drw_row + y, load(drw_row + y, cnt) + r, cnt);
                  }
                }
                if (rel_h == nullptr) continue;
                if constexpr (kWide) {
                  T sums[16];
                  hsum16<T>(acc, sums);
                  std::copy(sums, sums + nx, drh_row + x0);
                } else {
                  for (int64_t xx = 0; xx < nx; ++xx) drh_row[x0 + xx] = hsum(acc[xx]);
                }
              }
              relative_dq(i, drh_row, drw_row, dqrel + iq * D);
            }
            T* dqp = dq + p * D * N + i0;
            dots(dsbuf, Npad, k + p * D * N, N, D, nq, N, ones, dqp, 1, N);
            if (rel) {
              for (int64_t d = 0; d < D; ++d) {
                for (int64_t iq = 0; iq < nq; ++iq) dqp[d * N + iq] += dqrel[iq * D + d];
              }
            }
            // dV[c, :] += sum_iq P[iq, :] dO[c, i0 + iq];  dK[d, :] += sum_iq dS[iq, :] q[d, i0 + iq]
            gemm(dv + p * DV * N, N, true, false, gp + i0, N, 1, pbuf, Npad, nq, DV, N);
            gemm(dk + p * D * N, N, true, false, qp + i0, N, 1, dsbuf, Npad, nq, D, N);
          }
          if (rel) relative_table_grads(p, drh, drw, gh, gw);
        }
      }
    });
    if (rel_h != nullptr) sum_groups(gh_parts, G, 2 * H - 1, D, drel_h);
    if (rel_w != nullptr) sum_groups(gw_parts, G, 2 * W - 1, D, drel_w);
  }
};

void check(const at::Tensor& t, const at::Tensor& q, const char* name, int64_t rows, int64_t cols) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == q.scalar_type() && t.is_contiguous(), name,
              ": expected a contiguous CPU tensor of q's dtype");
  TORCH_CHECK(t.dim() == 3 && t.size(0) == q.size(0) && t.size(1) == rows && t.size(2) == cols, name,
              ": expected shape (", q.size(0), ", ", rows, ", ", cols, "), got ", t.sizes());
}

void check_table(const c10::optional<at::Tensor>& t, const at::Tensor& q, const char* name, int64_t n) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == q.scalar_type() && t->is_contiguous(), name,
              ": expected a contiguous CPU tensor of q's dtype");
  TORCH_CHECK(t->dim() == 2 && t->size(0) == 2 * n - 1 && t->size(1) == q.size(1), name, ": expected shape (",
              2 * n - 1, ", ", q.size(1), "), got ", t->sizes());
}

// The embeddings and their transposed copies (kept alive by the caller while the kernel runs).
struct Tables {
  c10::optional<at::Tensor> rel_h, rel_w, rel_ht, rel_wt;
  Tables(const c10::optional<at::Tensor>& h, const c10::optional<at::Tensor>& w) : rel_h(h), rel_w(w) {
    if (h.has_value()) rel_ht = h->t().contiguous();
    if (w.has_value()) rel_wt = w->t().contiguous();
  }
};

template <typename T>
const T* data_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

template <typename T>
Kernel<T> make_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Tables& tables,
                      double scale, int64_t h, int64_t w) {
  Kernel<T> kern;
  kern.P = q.size(0);
  kern.D = q.size(1);
  kern.N = q.size(2);
  kern.DV = v.size(1);
  kern.H = h;
  kern.W = w;
  TORCH_CHECK(h >= 1 && w >= 1 && h * w == kern.N, "h * w must equal the number of positions");
  check(q, q, "q", kern.D, kern.N);
  check(k, q, "k", kern.D, kern.N);
  check(v, q, "v", kern.DV, kern.N);
  check_table(tables.rel_h, q, "rel_h", h);
  check_table(tables.rel_w, q, "rel_w", w);
  kern.Npad = (kern.N + 2 * Kernel<T>::VL - 1) / (2 * Kernel<T>::VL) * (2 * Kernel<T>::VL);
  kern.q = q.data_ptr<T>();
  kern.k = k.data_ptr<T>();
  kern.v = v.data_ptr<T>();
  kern.rel_h = data_or_null<T>(tables.rel_h);
  kern.rel_w = data_or_null<T>(tables.rel_w);
  kern.rel_ht = data_or_null<T>(tables.rel_ht);
  kern.rel_wt = data_or_null<T>(tables.rel_wt);
  kern.scale = static_cast<T>(scale);
  kern.scale2 = static_cast<T>(scale * kLog2e);
  return kern;
}

std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const c10::optional<at::Tensor>& rel_h, const c10::optional<at::Tensor>& rel_w,
                                double scale, int64_t h, int64_t w) {
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble, "expected float32 or float64");
  TORCH_CHECK(q.dim() == 3 && v.dim() == 3, "expected (pairs, depth, positions) tensors");
  at::Tensor out = at::empty({q.size(0), v.size(1), q.size(2)}, q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(2)}, q.options());
  const Tables tables(rel_h, rel_w);
  pybind11::gil_scoped_release no_gil;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "aacn_cpu_attention_forward", [&] {
    make_kernel<scalar_t>(q, k, v, tables, scale, h, w).forward(out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
  });
  return {out, lse};
}

std::vector<at::Tensor> backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const c10::optional<at::Tensor>& rel_h, const c10::optional<at::Tensor>& rel_w,
                                 const at::Tensor& out, const at::Tensor& lse, double scale, int64_t h, int64_t w) {
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble, "expected float32 or float64");
  TORCH_CHECK(q.dim() == 3 && v.dim() == 3, "expected (pairs, depth, positions) tensors");
  check(dout, q, "grad_out", v.size(1), q.size(2));
  check(out, q, "out", v.size(1), q.size(2));
  TORCH_CHECK(lse.is_contiguous() && lse.scalar_type() == q.scalar_type() && lse.numel() == q.size(0) * q.size(2),
              "lse: expected a contiguous (pairs, positions) tensor of q's dtype");
  at::Tensor dq = at::empty_like(q);
  at::Tensor dk = at::zeros_like(q);
  at::Tensor dv = at::zeros_like(v);
  const Tables tables(rel_h, rel_w);
  at::Tensor drel_h = rel_h.has_value() ? at::empty_like(*rel_h) : at::empty({0}, q.options());
  at::Tensor drel_w = rel_w.has_value() ? at::empty_like(*rel_w) : at::empty({0}, q.options());
  pybind11::gil_scoped_release no_gil;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "aacn_cpu_attention_backward", [&] {
    make_kernel<scalar_t>(q, k, v, tables, scale, h, w)
        .backward(dout.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                  dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(),
                  rel_h.has_value() ? drel_h.data_ptr<scalar_t>() : nullptr,
                  rel_w.has_value() ? drel_w.data_ptr<scalar_t>() : nullptr);
  });
  return {dq, dk, dv, drel_h, drel_w};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "aacn: exact 2D relative attention on the CPU (see aacn/nn/cpu_kernel.py)";
  m.def("forward", &forward, "out (P, DV, N), lse (P, N)");
  m.def("backward", &backward, "dq, dk, dv, drel_h, drel_w");
}
