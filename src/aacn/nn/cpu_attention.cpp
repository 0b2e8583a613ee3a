// Exact 2D relative self-attention on the CPU with the relative logits added inside the attention loop.
//
// Built at first use by aacn/nn/cpu_kernel.py (torch.utils.cpp_extension.load), which documents the layout and
// the guarantees. Per (batch x head) pair with N = H*W positions, the tensors are
//   q, k (D, N), v (DV, N), out (DV, N)  -- channel-major: the key index is the contiguous one, so every inner
//                                           loop runs over keys with full SIMD vectors whatever D and DV are;
//   rh (N, H), rw (N, W)                 -- compact relative logits rh[i, x'] = q_i . r^H_(x'-x), likewise rw;
//   lse (N)                              -- log-sum-exp of each query's scaled logits.
// The scaled logit of query i and key j = (x', y') is  s_ij = scale * (q_i . k_j + rh[i, x'] + rw[i, y']).
// The kernel keeps it in base 2, s2_ij = log2(e) s_ij (log2(e) folded into the scale), so every probability is
// one exp2: p_ij = 2^(s2_ij - max_j s2_ij) = e^(s_ij - max_j s_ij); lse is saved in natural units.
//
// Forward, per query: the row s_i. (N values, per-thread scratch) is written as the bias rh + rw broadcast over
// the key grid plus sum_d q_di k_d. (one FMA per key vector and depth), then its max, exp and sum, and
// out_.i = sum_j p_ij v_.j / l_i. Two passes over a row that stays in L1/L2; nothing (HW)^2-sized.
// Backward (FlashAttention-2 style, from the saved lse), per pair, per block of queries: recompute p_ij,
// dp_ij = dO_.i . v_.j, ds_ij = scale * p_ij (dp_ij - delta_i) with delta_i = dO_.i . out_.i; then dq_.i = ds_i. K^T,
// d rh[i, x'] = sum_y' ds_i(x',y'), d rw[i, y'] = sum_x' ds_i(x',y'), and per block dV += dO P^T, dK += Q dS^T.
// A pair's dK/dV rows are written by one thread only: no atomics, deterministic for any thread count.
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
  const T* rh;  // nullptr when absent
  const T* rw;
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

  // Rows s[iq] (iq < nq, stride Npad) = scaled logits of queries i0 + iq of pair p; lanes >= N are -inf.
  // coef: scratch of nq * D values; rw_row: scratch of W values.
  void logits(int64_t p, int64_t i0, int64_t nq, T* s, T* coef, T* rw_row) const {
    const T* qp = q + p * D * N;
    const bool bias = rh != nullptr || rw != nullptr;
    for (int64_t iq = 0; iq < nq; ++iq) {
      const int64_t i = i0 + iq;
      for (int64_t d = 0; d < D; ++d) coef[iq * D + d] = scale2 * qp[d * N + i];
      if (!bias) continue;
      T* row = s + iq * Npad;
      const T* rhi = rh != nullptr ? rh + (p * N + i) * H : nullptr;
      if (rw != nullptr) {
        const T* rwi = rw + (p * N + i) * W;
        for (int64_t y = 0; y < W; ++y) rw_row[y] = scale2 * rwi[y];
      }
      for (int64_t x = 0; x < H; ++x) {
        const Vec bh(rhi != nullptr ? scale2 * rhi[x] : T(0));
        for (int64_t y = 0; y < W; y += VL) {
          const int64_t cnt = std::min<int64_t>(VL, W - y);
          store(row + x * W + y, rw != nullptr ? bh + load(rw_row + y, cnt) : bh, cnt);
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
      std::vector<T> scratch(kBlock * Npad + kBlock * D + 2 * kBlock + W + VL);
      T* s = scratch.data();
      T* coef = s + kBlock * Npad;
      T* inv = coef + kBlock * D;
      T* rw_row = inv + kBlock;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t p = task / blocks, i0 = (task % blocks) * kBlock, nq = std::min(kBlock, N - i0);
        logits(p, i0, nq, s, coef, rw_row);
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

  void backward(const T* dout, const T* out, const T* lse, T* dq, T* dk, T* dv, T* drh, T* drw) const {
    constexpr int64_t kBlock = 16;  // queries whose rows are kept for the dK/dV updates
    at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(2 * kBlock * Npad + kBlock * (D + DV + 2) + 2 * W + 2 * VL);
      T* pbuf = scratch.data();
      T* dsbuf = pbuf + kBlock * Npad;
      T* coef = dsbuf + kBlock * Npad;
      T* go = coef + kBlock * D;       // (kBlock, DV): dO of the block's queries
      T* ones = go + kBlock * DV;
      T* rw_row = ones + kBlock;
      T* drw_row = rw_row + W + VL;
      std::fill(ones, ones + kBlock, T(1));
      for (int64_t p = begin; p < end; ++p) {
        const T* qp = q + p * D * N;
        const T* vp = v + p * DV * N;
        const T* gp = dout + p * DV * N;
        const T* op = out + p * DV * N;
        for (int64_t i0 = 0; i0 < N; i0 += kBlock) {
          const int64_t nq = std::min(kBlock, N - i0);
          logits(p, i0, nq, pbuf, coef, rw_row);
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
            if (drh != nullptr || drw != nullptr) {
              if (drw != nullptr) std::fill(drw_row, drw_row + W, T(0));
              // drh: sums over each key row x (16 rows reduced together with 512-bit vectors); drw: over rows
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
                    if (drw != nullptr) store(drw_row + y, load(drw_row + y, cnt) + r, cnt);
                  }
                }
                if (drh == nullptr) continue;
                T* drhi = drh + (p * N + i) * H + x0;
                if constexpr (kWide) {
                  T sums[16];
                  hsum16<T>(acc, sums);
                  std::copy(sums, sums + nx, drhi);
                } else {
                  for (int64_t xx = 0; xx < nx; ++xx) drhi[xx] = hsum(acc[xx]);
                }
              }
              if (drw != nullptr) std::copy(drw_row, drw_row + W, drw + (p * N + i) * W);
            }
          }
          dots(dsbuf, Npad, k + p * D * N, N, D, nq, N, ones, dq + p * D * N + i0, 1, N);
          // dV[c, :] += sum_iq P[iq, :] dO[c, i0 + iq];  dK[d, :] += sum_iq dS[iq, :] q[d, i0 + iq]
          gemm(dv + p * DV * N, N, true, false, gp + i0, N, 1, pbuf, Npad, nq, DV, N);
          gemm(dk + p * D * N, N, true, false, qp + i0, N, 1, dsbuf, Npad, nq, D, N);
        }
      }
    });
  }
};

void check(const at::Tensor& t, const at::Tensor& q, const char* name, int64_t rows, int64_t cols) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == q.scalar_type() && t.is_contiguous(), name,
              ": expected a contiguous CPU tensor of q's dtype");
  TORCH_CHECK(t.dim() == 3 && t.size(0) == q.size(0) && t.size(1) == rows && t.size(2) == cols, name,
              ": expected shape (", q.size(0), ", ", rows, ", ", cols, "), got ", t.sizes());
}

template <typename T>
Kernel<T> make_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const c10::optional<at::Tensor>& rh, const c10::optional<at::Tensor>& rw, double scale,
                      int64_t h, int64_t w) {
  Kernel<T> kern;
  kern.P = q.size(0);
  kern.D = q.size(1);
  kern.N = q.size(2);
  kern.DV = v.size(1);
  kern.H = h;
  kern.W = w;
  TORCH_CHECK(h * w == kern.N, "h * w must equal the number of positions");
  check(q, q, "q", kern.D, kern.N);
  check(k, q, "k", kern.D, kern.N);
  check(v, q, "v", kern.DV, kern.N);
  if (rh.has_value()) check(*rh, q, "rh", kern.N, h);
  if (rw.has_value()) check(*rw, q, "rw", kern.N, w);
  kern.Npad = (kern.N + 2 * Kernel<T>::VL - 1) / (2 * Kernel<T>::VL) * (2 * Kernel<T>::VL);
  kern.q = q.data_ptr<T>();
  kern.k = k.data_ptr<T>();
  kern.v = v.data_ptr<T>();
  kern.rh = rh.has_value() ? rh->data_ptr<T>() : nullptr;
  kern.rw = rw.has_value() ? rw->data_ptr<T>() : nullptr;
  kern.scale = static_cast<T>(scale);
  kern.scale2 = static_cast<T>(scale * kLog2e);
  return kern;
}

std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const c10::optional<at::Tensor>& rh, const c10::optional<at::Tensor>& rw, double scale,
                                int64_t h, int64_t w) {
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble, "expected float32 or float64");
  TORCH_CHECK(q.dim() == 3 && v.dim() == 3, "expected (pairs, depth, positions) tensors");
  at::Tensor out = at::empty({q.size(0), v.size(1), q.size(2)}, q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(2)}, q.options());
  pybind11::gil_scoped_release no_gil;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "aacn_cpu_attention_forward", [&] {
    make_kernel<scalar_t>(q, k, v, rh, rw, scale, h, w).forward(out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
  });
  return {out, lse};
}

std::vector<at::Tensor> backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const c10::optional<at::Tensor>& rh, const c10::optional<at::Tensor>& rw,
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
  at::Tensor drh = rh.has_value() ? at::empty_like(*rh) : at::empty({0}, q.options());
  at::Tensor drw = rw.has_value() ? at::empty_like(*rw) : at::empty({0}, q.options());
  pybind11::gil_scoped_release no_gil;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "aacn_cpu_attention_backward", [&] {
    make_kernel<scalar_t>(q, k, v, rh, rw, scale, h, w)
        .backward(dout.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                  dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(),
                  rh.has_value() ? drh.data_ptr<scalar_t>() : nullptr,
                  rw.has_value() ? drw.data_ptr<scalar_t>() : nullptr);
  });
  return {dq, dk, dv, drh, drw};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "aacn: exact 2D relative attention on the CPU (see aacn/nn/cpu_kernel.py)";
  m.def("forward", &forward, "out (P, DV, N), lse (P, N)");
  m.def("backward", &backward, "dq, dk, dv, drh, drw");
}
