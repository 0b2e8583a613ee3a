// Exact 2D relative self-attention on the CPU with the relative logits added inside the attention loop.
//
// Built at first use by aacn/nn/cpu_kernel.py (torch.utils.cpp_extension.load), which documents the layout and
// the guarantees. Per (batch x head) pair with N = H*W positions, the tensors are
//   q, k (D, N), v (DV, N), out (DV, N)  -- channel-major: the key index is the contiguous one, so every inner
//                                           loop runs over keys with full SIMD vectors whatever D and DV are;
//   rh (N, H), rw (N, W)                 -- compact relative logits rh[i, x'] = q_i . r^H_(x'-x), likewise rw;
//   lse (N)                              -- log-sum-exp of each query's scaled logits.
// The scaled logit of query i and key j = (x', y') is  s_ij = scale * (q_i . k_j + rh[i, x'] + rw[i, y']).
//
// Forward, per query: the row s_i. (N values, per-thread scratch) is written as the bias rh + rw broadcast over
// the key grid plus sum_d q_di k_d. (one FMA per key vector and depth), then its max, exp and sum, and
// out_.i = sum_j p_ij v_.j / l_i. Two passes over a row that stays in L1/L2; nothing (HW)^2-sized.
// Backward (FlashAttention-2 style, from the saved lse), per pair, per block of queries: recompute p_ij,
// dp_ij = dO_.i . v_.j, ds_ij = scale * p_ij (dp_ij - delta_i) with delta_i = dO_.i . out_.i; then dq_.i = ds_i. K^T,
// d rh[i, x'] = sum_y' ds_i(x',y'), d rw[i, y'] = sum_x' ds_i(x',y'), and per block dV += dO P^T, dK += Q dS^T.
// A pair's dK/dV rows are written by one thread only: no atomics, deterministic for any thread count.
//
// float and double only (the Python side converts bf16/fp16 to float); exp is a ~1 ulp polynomial for float
// on AVX-512/AVX2 and SLEEF's 1-ulp exp otherwise (double: always SLEEF or std::exp).

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
inline Vectorized<T> vexp(const Vectorized<T>& x) {
  return x.exp();
}

// exp(x) for float vectors, after Cephes expf: n = round(x log2 e), r = x - n ln 2 (ln 2 in two parts),
// exp(r) = 1 + r + r^2 P(r) with a degree-5 P (relative error about 1 ulp), times 2^n built in the exponent bits.
// Arguments are clamped to [-87.34, 88]; below -87.34 (and -inf) the result is 0, NaN propagates. The kernel only
// evaluates exp at arguments <= 0 up to rounding (logit minus row max or minus log-sum-exp).
#define AACN_EXP_CONSTANTS                                   \
  constexpr float kHi = 88.0f, kLo = -87.3365447504019f;     \
  constexpr float kLog2e = 1.44269504088896341f;             \
  constexpr float kC1 = 0.693359375f, kC2 = -2.12194440e-4f; \
  constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f; \
  constexpr float kP3 = 4.1665795894e-2f, kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;

#if defined(CPU_CAPABILITY_AVX512)
template <>
inline Vectorized<float> vexp(const Vectorized<float>& xv) {
  AACN_EXP_CONSTANTS
  const __m512 x = xv;
  __m512 xc = _mm512_max_ps(_mm512_set1_ps(kLo), _mm512_min_ps(_mm512_set1_ps(kHi), x));  // NaN stays NaN
  __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(kC1), xc);
  r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(kC2), r);
  __m512 y = _mm512_fmadd_ps(_mm512_set1_ps(kP0), r, _mm512_set1_ps(kP1));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kP2));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kP3));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kP4));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kP5));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r);
  y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
  __m512i n = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127)), 23);
  y = _mm512_mul_ps(y, _mm512_castsi512_ps(n));
  __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kLo), _CMP_LT_OQ);
  return _mm512_mask_blend_ps(under, y, _mm512_setzero_ps());
}
#elif defined(CPU_CAPABILITY_AVX2)
template <>
inline Vectorized<float> vexp(const Vectorized<float>& xv) {
  AACN_EXP_CONSTANTS
  const __m256 x = xv;
  __m256 xc = _mm256_max_ps(_mm256_set1_ps(kLo), _mm256_min_ps(_mm256_set1_ps(kHi), x));
  __m256 fx = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(kLog2e)),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(kC1), xc);
  r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(kC2), r);
  __m256 y = _mm256_fmadd_ps(_mm256_set1_ps(kP0), r, _mm256_set1_ps(kP1));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP2));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP3));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP4));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP5));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  __m256i n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(n));
  __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(kLo), _CMP_LT_OQ);
  return _mm256_blendv_ps(y, _mm256_setzero_ps(), under);
}
#endif

template <typename T>
struct Kernel {
  using Vec = Vectorized<T>;
  static constexpr int64_t VL = Vec::size();

  const T* q;
  const T* k;
  const T* v;
  const T* rh;  // nullptr when absent
  const T* rw;
  int64_t P, N, D, DV, H, W, Npad;
  T scale;

  static inline Vec load(const T* p, int64_t n) {
    return n >= VL ? Vec::loadu(p) : Vec::loadu(p, n);
  }
  static inline void store(T* p, const Vec& x, int64_t n) {
    if (n >= VL) {
      x.store(p);
    } else {
      x.store(p, n);
    }
  }
  static inline T hsum(const Vec& x) {
    return at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return a + b; }, x);
  }
  static inline T hmax(const Vec& x) {
    return at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, x);
  }

  // y[0:n) = (init ? y[0:n) : 0) + sum_c coef[c] * M[c*ldm + 0:n); rows of M are read only up to n.
  // Full vectors are written when `full` (scratch rows of length Npad), else exactly n values.
  static void combine(T* y, bool init, const T* coef, const T* M, int64_t ldm, int64_t C, int64_t n, bool full) {
    for (int64_t j = 0; j < n; j += VL) {
      const int64_t cnt = std::min<int64_t>(VL, n - j);
      Vec acc = init ? load(y + j, full ? VL : cnt) : Vec(T(0));
      int64_t c = 0;
      for (; c + 1 < C; c += 2) {  // two independent FMA chains
        acc = at::vec::fmadd(Vec(coef[c]), load(M + c * ldm + j, cnt), acc);
        acc = at::vec::fmadd(Vec(coef[c + 1]), load(M + (c + 1) * ldm + j, cnt), acc);
      }
      if (c < C) acc = at::vec::fmadd(Vec(coef[c]), load(M + c * ldm + j, cnt), acc);
      store(y + j, acc, full ? VL : cnt);
    }
  }

  // out[c] = mult * sum_j a[j] * M[c*ldm + j] for c < C, j < n (a is a scratch row of length Npad whose lanes
  // >= n are finite; M's are read as 0 there).
  static void rowdots(const T* a, const T* M, int64_t ldm, int64_t C, int64_t n, T mult, T* out, int64_t out_stride) {
    int64_t c = 0;
    for (; c + 4 <= C; c += 4) {
      const T* m0 = M + c * ldm;
      Vec a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
      for (int64_t j = 0; j < n; j += VL) {
        const int64_t cnt = std::min<int64_t>(VL, n - j);
        const Vec av = Vec::loadu(a + j);
        a0 = at::vec::fmadd(av, load(m0 + j, cnt), a0);
        a1 = at::vec::fmadd(av, load(m0 + ldm + j, cnt), a1);
        a2 = at::vec::fmadd(av, load(m0 + 2 * ldm + j, cnt), a2);
        a3 = at::vec::fmadd(av, load(m0 + 3 * ldm + j, cnt), a3);
      }
      out[c * out_stride] = mult * hsum(a0);
      out[(c + 1) * out_stride] = mult * hsum(a1);
      out[(c + 2) * out_stride] = mult * hsum(a2);
      out[(c + 3) * out_stride] = mult * hsum(a3);
    }
    for (; c < C; ++c) {
      const T* m0 = M + c * ldm;
      Vec a0(T(0));
      for (int64_t j = 0; j < n; j += VL) {
        const int64_t cnt = std::min<int64_t>(VL, n - j);
        a0 = at::vec::fmadd(Vec::loadu(a + j), load(m0 + j, cnt), a0);
      }
      out[c * out_stride] = mult * hsum(a0);
    }
  }

  // s[0:Npad) = scaled logits of query i of pair p (lanes >= N: -inf). coef: scratch of D values.
  void logits(int64_t p, int64_t i, T* s, T* coef, T* rw_row) const {
    const T* qp = q + p * D * N;
    if (rh != nullptr || rw != nullptr) {
      const T* rhi = rh != nullptr ? rh + (p * N + i) * H : nullptr;
      if (rw != nullptr) {
        const T* rwi = rw + (p * N + i) * W;
        for (int64_t y = 0; y < W; ++y) rw_row[y] = scale * rwi[y];
      }
      for (int64_t x = 0; x < H; ++x) {
        const Vec bh(rhi != nullptr ? scale * rhi[x] : T(0));
        for (int64_t y = 0; y < W; y += VL) {
          const int64_t cnt = std::min<int64_t>(VL, W - y);
          store(s + x * W + y, rw != nullptr ? bh + load(rw_row + y, cnt) : bh, cnt);
        }
      }
    }
    for (int64_t d = 0; d < D; ++d) coef[d] = scale * qp[d * N + i];
    combine(s, rh != nullptr || rw != nullptr, coef, k + p * D * N, N, D, N, true);
    for (int64_t j = N; j < Npad; ++j) s[j] = -std::numeric_limits<T>::infinity();
  }

  void forward(T* out, T* lse) const {
    constexpr int64_t kBlock = 32;  // queries per parallel task
    const int64_t blocks = (N + kBlock - 1) / kBlock;
    at::parallel_for(0, P * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(Npad + D + DV + W + VL);
      T* s = scratch.data();
      T* coef = s + Npad;
      T* o = coef + D;
      T* rw_row = o + DV;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t p = task / blocks, i0 = (task % blocks) * kBlock, i1 = std::min(N, i0 + kBlock);
        for (int64_t i = i0; i < i1; ++i) {
          logits(p, i, s, coef, rw_row);
          Vec mv(-std::numeric_limits<T>::infinity());
          for (int64_t j = 0; j < Npad; j += VL) mv = at::vec::maximum(mv, Vec::loadu(s + j));
          const T m = hmax(mv);
          const Vec mb(m);
          Vec lv(T(0));
          for (int64_t j = 0; j < Npad; j += VL) {
            const Vec e = vexp<T>(Vec::loadu(s + j) - mb);
            e.store(s + j);
            lv = lv + e;
          }
          const T l = hsum(lv);
          rowdots(s, v + p * DV * N, N, DV, N, T(1) / l, out + p * DV * N + i, N);
          lse[p * N + i] = m + std::log(l);
        }
      }
    });
  }

  void backward(const T* dout, const T* out, const T* lse, T* dq, T* dk, T* dv, T* drh, T* drw) const {
    constexpr int64_t kBlock = 16;  // queries whose rows are kept for the dK/dV updates
    at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(2 * kBlock * Npad + D + DV + 2 * W + 2 * VL);
      T* pbuf = scratch.data();
      T* dsbuf = pbuf + kBlock * Npad;
      T* coef = dsbuf + kBlock * Npad;
      T* go = coef + D;
      T* rw_row = go + DV;
      T* drw_row = rw_row + W + VL;
      for (int64_t p = begin; p < end; ++p) {
        const T* qp = q + p * D * N;
        const T* vp = v + p * DV * N;
        const T* gp = dout + p * DV * N;
        const T* op = out + p * DV * N;
        for (int64_t i0 = 0; i0 < N; i0 += kBlock) {
          const int64_t nq = std::min(kBlock, N - i0);
          for (int64_t iq = 0; iq < nq; ++iq) {
            const int64_t i = i0 + iq;
            T* s = pbuf + iq * Npad;
            T* ds = dsbuf + iq * Npad;
            logits(p, i, s, coef, rw_row);
            const Vec lb(lse[p * N + i]);
            for (int64_t j = 0; j < Npad; j += VL) vexp<T>(Vec::loadu(s + j) - lb).store(s + j);
            T delta = 0;
            for (int64_t c = 0; c < DV; ++c) {
              go[c] = gp[c * N + i];
              delta += go[c] * op[c * N + i];
            }
            combine(ds, false, go, vp, N, DV, N, true);  // dp (zero at lanes >= N)
            const Vec db(delta), sb(scale);
            for (int64_t j = 0; j < Npad; j += VL) {
              const Vec pv = Vec::loadu(s + j);
              (sb * pv * (Vec::loadu(ds + j) - db)).store(ds + j);
            }
            rowdots(ds, k + p * D * N, N, D, N, T(1), dq + p * D * N + i, N);
            if (drh != nullptr || drw != nullptr) {
              if (drw != nullptr) std::fill(drw_row, drw_row + W, T(0));
              for (int64_t x = 0; x < H; ++x) {
                Vec acc(T(0));
                for (int64_t y = 0; y < W; y += VL) {
                  const int64_t cnt = std::min<int64_t>(VL, W - y);
                  const Vec row = load(ds + x * W + y, cnt);
                  acc = acc + row;
                  if (drw != nullptr) store(drw_row + y, load(drw_row + y, cnt) + row, cnt);
                }
                if (drh != nullptr) drh[(p * N + i) * H + x] = hsum(acc);
              }
              if (drw != nullptr) std::copy(drw_row, drw_row + W, drw + (p * N + i) * W);
            }
          }
          // dV[c, :] += sum_iq P[iq, :] dO[c, i0 + iq];  dK[d, :] += sum_iq dS[iq, :] q[d, i0 + iq]
          for (int64_t c = 0; c < DV; ++c) combine(dv + (p * DV + c) * N, true, gp + c * N + i0, pbuf, Npad, nq, N, false);
          for (int64_t d = 0; d < D; ++d) combine(dk + (p * D + d) * N, true, qp + d * N + i0, dsbuf, Npad, nq, N, false);
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
  kern.Npad = (kern.N + Kernel<T>::VL - 1) / Kernel<T>::VL * Kernel<T>::VL;
  kern.q = q.data_ptr<T>();
  kern.k = k.data_ptr<T>();
  kern.v = v.data_ptr<T>();
  kern.rh = rh.has_value() ? rh->data_ptr<T>() : nullptr;
  kern.rw = rw.has_value() ? rw->data_ptr<T>() : nullptr;
  kern.scale = static_cast<T>(scale);
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
