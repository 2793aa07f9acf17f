// Fused elementwise kernels for the sign quantizers of lowbit.quant (built by torch.utils.cpp_extension).
//
// Each kernel is one pass over memory where ATen needs two or three (see lowbit/quant/fused.py):
//
//   sign_forward(x, bound)       y = x >= 0 ? +1 : -1 (NaN -> -1, -0 -> +1), and, for bound >= 0,
//                                the surrogate mask m = |x| <= bound (bool; NaN -> false) in the same pass
//   masked_grad(g, m, s, c)      grad_x = m ? clamp(s g, -c, c) : 0   (c < 0: no clamp)
//   approx_sign_grad(g, x)       grad_x = |x| <= 1 ? g (2 - 2|x|) : 0  (Bi-Real Net's surrogate)
//   scaled_sign(w, a)            q = w >= 0 ? a_c : -a_c              (sign(W) * alpha, per channel c)
//   signed_grad(g, w)            g * sign(w) = w >= 0 ? g : -g         (xnor_weight's d/d alpha, before the sum)
//   xnor_weight_grad(g, w, a, q) g a_c + sgn(w) q_c, sgn(0) = sgn(NaN) = 0 (autograd's order of operations)
//   clipped_scaled_grad(g, w, a, b)  |w| <= b ? g a_c : 0              (magnitude_aware_sign)
//
// The arithmetic is the same float operations, in the same order, as the ATen expressions
// they replace (no FMA: -ffp-contract=off), so the results are bit for bit the same.
// Elementwise tensors must be non-overlapping and dense, with the same strides where two
// are read together (checked): the loops then walk memory in storage order. Weight tensors
// are contiguous (C, K) with one scale per row (or a single scale). float32 and float64.
// The loops are compiled for AVX-512, AVX2 and the baseline, chosen at load time (GCC's
// target_clones on x86-64 Linux; -DLOWBIT_NO_CLONES builds the baseline alone, which the tests
// compare), and run in parallel with ATen's thread pool.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && !defined(LOWBIT_NO_CLONES)
#define LOWBIT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LOWBIT_CLONES
#endif

namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per parallel task

// keep ? v : 0 without a branch (the mask is data, ~random: a branch would mispredict):
// the bits of v ANDed with all-ones or all-zeros, which GCC vectorises.
template <typename T>
struct UInt;
template <>
struct UInt<float> { using type = uint32_t; };
template <>
struct UInt<double> { using type = uint64_t; };

template <typename T>
inline T keep_or_zero(bool keep, T v) {
  using U = typename UInt<T>::type;
  U bits;
  std::memcpy(&bits, &v, sizeof(T));
  bits &= U(0) - U(keep);
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

template <typename T>
inline void sign_range(const T* x, T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] >= T(0) ? T(1) : T(-1);
}

template <typename T>
inline void sign_mask_range(const T* x, T* y, uint8_t* m, int64_t n, T bound) {
  for (int64_t i = 0; i < n; ++i) {
    y[i] = x[i] >= T(0) ? T(1) : T(-1);
    m[i] = std::abs(x[i]) <= bound;
  }
}

template <typename T>
inline void masked_grad_range(const T* g, const uint8_t* m, T* out, int64_t n, T scale, T clip) {
  if (clip >= T(0)) {
    for (int64_t i = 0; i < n; ++i) {
      T v = g[i] * scale;
      v = v < -clip ? -clip : (v > clip ? clip : v);  // NaN stays NaN, as torch.clamp
      out[i] = keep_or_zero(m[i] != 0, v);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = keep_or_zero(m[i] != 0, g[i] * scale);
  }
}

template <typename T>
inline void approx_range(const T* g, const T* x, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T a = std::abs(x[i]);
    out[i] = keep_or_zero(a <= T(1), g[i] * (T(2) - T(2) * a));
  }
}

template <typename T>
inline void scaled_sign_range(const T* w, T* q, int64_t n, T a) {
  for (int64_t i = 0; i < n; ++i) q[i] = w[i] >= T(0) ? a : -a;
}

template <typename T>
inline void signed_grad_range(const T* g, const T* w, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] >= T(0) ? g[i] : -g[i];
}

template <typename T>
inline void xnor_grad_range(const T* g, const T* w, T* out, int64_t n, T a, T q) {
  for (int64_t i = 0; i < n; ++i) {
    const T sgn = T((w[i] > T(0)) - (w[i] < T(0)));
    out[i] = g[i] * a + sgn * q;
  }
}

template <typename T>
inline void clipped_scaled_range(const T* g, const T* w, T* out, int64_t n, T a, T bound) {
  for (int64_t i = 0; i < n; ++i) out[i] = keep_or_zero(std::abs(w[i]) <= bound, g[i] * a);
}

// One compiled (and cloned) entry per loop and dtype, gathered in Loops_f32 / Loops_f64.
#define LOWBIT_LOOPS(T, S)                                                                                      \
  LOWBIT_CLONES void sign_##S(const T* x, T* y, int64_t n) { sign_range(x, y, n); }                            \
  LOWBIT_CLONES void sign_mask_##S(const T* x, T* y, uint8_t* m, int64_t n, T b) { sign_mask_range(x, y, m, n, b); } \
  LOWBIT_CLONES void masked_grad_##S(const T* g, const uint8_t* m, T* o, int64_t n, T s, T c) {              \
    masked_grad_range(g, m, o, n, s, c);                                                                       \
  }                                                                                                            \
  LOWBIT_CLONES void approx_##S(const T* g, const T* x, T* o, int64_t n) { approx_range(g, x, o, n); }         \
  LOWBIT_CLONES void scaled_sign_##S(const T* w, T* q, int64_t n, T a) { scaled_sign_range(w, q, n, a); }      \
  LOWBIT_CLONES void signed_grad_##S(const T* g, const T* w, T* o, int64_t n) { signed_grad_range(g, w, o, n); } \
  LOWBIT_CLONES void xnor_grad_##S(const T* g, const T* w, T* o, int64_t n, T a, T q) { xnor_grad_range(g, w, o, n, a, q); } \
  LOWBIT_CLONES void clipped_scaled_##S(const T* g, const T* w, T* o, int64_t n, T a, T b) {                  \
    clipped_scaled_range(g, w, o, n, a, b);                                                                    \
  }                                                                                                            \
  struct Loops_##S {                                                                                           \
    static constexpr auto sign = sign_##S;                                                                     \
    static constexpr auto sign_mask = sign_mask_##S;                                                           \
    static constexpr auto masked_grad = masked_grad_##S;                                                       \
    static constexpr auto approx = approx_##S;                                                                 \
    static constexpr auto scaled_sign = scaled_sign_##S;                                                       \
    static constexpr auto signed_grad = signed_grad_##S;                                                       \
    static constexpr auto xnor_grad = xnor_grad_##S;                                                           \
    static constexpr auto clipped_scaled = clipped_scaled_##S;                                                 \
  };

LOWBIT_LOOPS(float, f32)
LOWBIT_LOOPS(double, f64)

template <typename T>
struct LoopsFor;
template <>
struct LoopsFor<float> : Loops_f32 {};
template <>
struct LoopsFor<double> : Loops_f64 {};

void check_dense(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_non_overlapping_and_dense(), name, " must be non-overlapping and dense");
}

void check_float(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kDouble, name, " must be float32 or float64");
}

void check_same_layout(const torch::Tensor& a, const torch::Tensor& b, const char* what) {
  TORCH_CHECK(a.sizes() == b.sizes() && a.strides() == b.strides(), what, ": shapes and strides must match");
}

// Run body(begin, end) over [0, n) in parallel chunks.
template <typename F>
void parallel(int64_t n, const F& body) {
  at::parallel_for(0, n, kGrain, body);
}

std::vector<torch::Tensor> sign_forward(const torch::Tensor& x, double bound) {
  check_dense(x, "x");
  check_float(x, "x");
  auto y = torch::empty_like(x);  // preserve_format: the same strides as x (dense)
  const int64_t n = x.numel();
  if (bound < 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sign_forward", [&] {
      const scalar_t* xp = x.data_ptr<scalar_t>();
      scalar_t* yp = y.data_ptr<scalar_t>();
      parallel(n, [&](int64_t b, int64_t e) { LoopsFor<scalar_t>::sign(xp + b, yp + b, e - b); });
    });
    return {y};
  }
  auto m = torch::empty_like(x, x.options().dtype(torch::kBool));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sign_forward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    uint8_t* mp = reinterpret_cast<uint8_t*>(m.data_ptr<bool>());
    const scalar_t b_ = static_cast<scalar_t>(bound);
    parallel(n, [&](int64_t b, int64_t e) { LoopsFor<scalar_t>::sign_mask(xp + b, yp + b, mp + b, e - b, b_); });
  });
  return {y, m};
}

torch::Tensor masked_grad(const torch::Tensor& g, const torch::Tensor& m, double scale, double clip) {
  check_dense(g, "grad");
  check_float(g, "grad");
  TORCH_CHECK(m.scalar_type() == torch::kBool, "mask must be bool");
  check_same_layout(g, m, "masked_grad");
  auto out = torch::empty_like(g);
  const int64_t n = g.numel();
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "masked_grad", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const uint8_t* mp = reinterpret_cast<const uint8_t*>(m.data_ptr<bool>());
    scalar_t* op = out.data_ptr<scalar_t>();
    const scalar_t s = static_cast<scalar_t>(scale), c = static_cast<scalar_t>(clip);
    parallel(n, [&](int64_t b, int64_t e) { LoopsFor<scalar_t>::masked_grad(gp + b, mp + b, op + b, e - b, s, c); });
  });
  return out;
}

torch::Tensor approx_sign_grad(const torch::Tensor& g, const torch::Tensor& x) {
  check_dense(g, "grad");
  check_float(g, "grad");
  TORCH_CHECK(x.scalar_type() == g.scalar_type(), "x and grad must have one dtype");
  check_same_layout(g, x, "approx_sign_grad");
  auto out = torch::empty_like(g);
  const int64_t n = g.numel();
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "approx_sign_grad", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    parallel(n, [&](int64_t b, int64_t e) { LoopsFor<scalar_t>::approx(gp + b, xp + b, op + b, e - b); });
  });
  return out;
}

// Weight kernels: w contiguous, viewed as (C, K) with C = alpha.numel() (1 for a single scale).
int64_t rows_of(const torch::Tensor& w, const torch::Tensor& alpha) {
  TORCH_CHECK(w.device().is_cpu() && w.is_contiguous(), "weight must be a contiguous CPU tensor");
  check_float(w, "weight");
  TORCH_CHECK(alpha.scalar_type() == w.scalar_type() && alpha.is_contiguous(), "alpha must be contiguous, of the weight's dtype");
  const int64_t c = alpha.numel();
  TORCH_CHECK(c >= 1 && w.numel() % c == 0, "weight entries must be a multiple of the scales");
  return c;
}

// Parallel over rows; body(row, offset, count).
template <typename F>
void per_row(int64_t rows, int64_t k, const F& body) {
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, k));
  at::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) body(r, r * k, k);
  });
}

torch::Tensor scaled_sign(const torch::Tensor& w, const torch::Tensor& alpha) {
  const int64_t rows = rows_of(w, alpha), k = w.numel() / rows;
  auto q = torch::empty_like(w);
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "scaled_sign", [&] {
    const scalar_t *wp = w.data_ptr<scalar_t>(), *ap = alpha.data_ptr<scalar_t>();
    scalar_t* qp = q.data_ptr<scalar_t>();
    per_row(rows, k, [&](int64_t r, int64_t o, int64_t n) { LoopsFor<scalar_t>::scaled_sign(wp + o, qp + o, n, ap[r]); });
  });
  return q;
}

torch::Tensor signed_grad(const torch::Tensor& g, const torch::Tensor& w) {
  check_dense(g, "grad");
  check_float(g, "grad");
  check_same_layout(g, w, "signed_grad");
  auto out = torch::empty_like(g);
  const int64_t n = g.numel();
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "signed_grad", [&] {
    const scalar_t *gp = g.data_ptr<scalar_t>(), *wp = w.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    parallel(n, [&](int64_t b, int64_t e) { LoopsFor<scalar_t>::signed_grad(gp + b, wp + b, op + b, e - b); });
  });
  return out;
}

torch::Tensor xnor_weight_grad(const torch::Tensor& g, const torch::Tensor& w, const torch::Tensor& alpha,
                               const torch::Tensor& q) {
  const int64_t rows = rows_of(w, alpha), k = w.numel() / rows;
  TORCH_CHECK(g.is_contiguous() && g.sizes() == w.sizes(), "grad must be contiguous, shaped like the weight");
  TORCH_CHECK(q.is_contiguous() && q.numel() == rows && q.scalar_type() == w.scalar_type(), "q must hold one value per scale");
  auto out = torch::empty_like(w);
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "xnor_weight_grad", [&] {
    const scalar_t *gp = g.data_ptr<scalar_t>(), *wp = w.data_ptr<scalar_t>();
    const scalar_t *ap = alpha.data_ptr<scalar_t>(), *qp = q.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    per_row(rows, k, [&](int64_t r, int64_t o, int64_t n) {
      LoopsFor<scalar_t>::xnor_grad(gp + o, wp + o, op + o, n, ap[r], qp[r]);
    });
  });
  return out;
}

torch::Tensor clipped_scaled_grad(const torch::Tensor& g, const torch::Tensor& w, const torch::Tensor& alpha, double bound) {
  const int64_t rows = rows_of(w, alpha), k = w.numel() / rows;
  TORCH_CHECK(g.is_contiguous() && g.sizes() == w.sizes(), "grad must be contiguous, shaped like the weight");
  auto out = torch::empty_like(w);
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "clipped_scaled_grad", [&] {
    const scalar_t *gp = g.data_ptr<scalar_t>(), *wp = w.data_ptr<scalar_t>(), *ap = alpha.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const scalar_t b_ = static_cast<scalar_t>(bound);
    per_row(rows, k, [&](int64_t r, int64_t o, int64_t n) {
      LoopsFor<scalar_t>::clipped_scaled(gp + o, wp + o, op + o, n, ap[r], b_);
    });
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sign_forward", &sign_forward, "[sign(x)] or [sign(x), |x| <= bound] in one pass");
  m.def("masked_grad", &masked_grad, "mask ? clamp(scale * grad, -clip, clip) : 0");
  m.def("approx_sign_grad", &approx_sign_grad, "|x| <= 1 ? grad (2 - 2|x|) : 0");
  m.def("scaled_sign", &scaled_sign, "w >= 0 ? alpha : -alpha, one scale per row");
  m.def("signed_grad", &signed_grad, "w >= 0 ? grad : -grad");
  m.def("xnor_weight_grad", &xnor_weight_grad, "grad * alpha + sgn(w) * q, per row");
  m.def("clipped_scaled_grad", &clipped_scaled_grad, "|w| <= bound ? grad * alpha : 0, per row");
}
