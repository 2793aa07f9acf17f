// Bit-packed binary inference kernels for lowbit.deploy (built by torch.utils.cpp_extension).
//
// Bits: bit b of word w of a channel group holds channel 64 w + b; 1 means +1, 0 means -1.
// The XNOR-popcount identity: for x, w in {-1, +1}^K packed as bits,
//     sum_k x_k w_k = K - 2 popcount(bits(x) XOR bits(w)),
// so the GEMM computes popcount(A_i XOR B_j), and an epilogue ("sink") turns each tile of
// popcounts into the dot product (plus the zero-padding correction computed in Python) and
// then either into the float output alpha * dot + bias (two float32 roundings, as the
// simulated layer) or into output bits (sign * dot >= threshold, packed 64 per word).
// Channel padding bits are 0 in both operands, so they add nothing to the popcount.
//
// Three GEMM kernels, chosen at run time from the CPU's features (GCC/Clang function
// targets, so one build holds all three): AVX-512 with VPOPCNTDQ, AVX2 (nibble-table
// popcount, Mula's method) and portable C++ (__builtin_popcountll, compiled for the POPCNT
// instruction where an x86 CPU has it). The SIMD kernels vectorise over output columns:
// the packed weights are stored transposed, Bt (Kw, Np), so one vector load holds word k
// of 8 (AVX-512) or 4 (AVX2) output channels, XORed with a broadcast input word; no
// horizontal sums. Np is a multiple of 32 (zero columns).
//
// binary_layer() is a whole packed layer: for each block of 48 output positions it gathers
// the convolution windows' words (im2col on bits, into a small per-thread buffer), runs the
// GEMM on the block into a per-thread popcount buffer and writes the block's output from
// it, so neither the im2col matrix nor the popcounts of the whole layer reach memory.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LOWBIT_X86 1
#else
#define LOWBIT_X86 0
#endif

namespace {

constexpr int64_t kPanel = 32;        // Np is padded to a multiple of this; also the widest tile
constexpr int64_t kRowsPerTask = 48;  // rows per parallel task: a multiple of every tile height

enum Isa : int64_t { kAuto = 0, kPortable = 1, kAvx2 = 2, kAvx512 = 3 };

bool cpu_has_avx2() {
#if LOWBIT_X86
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

bool cpu_has_avx512_vpopcntdq() {
#if LOWBIT_X86
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
#else
  return false;
#endif
}

int64_t resolve_isa(int64_t isa) {
  if (isa == kAuto) return cpu_has_avx512_vpopcntdq() ? kAvx512 : (cpu_has_avx2() ? kAvx2 : kPortable);
  TORCH_CHECK(isa == kPortable || isa == kAvx2 || isa == kAvx512, "unknown kernel code ", isa);
  TORCH_CHECK(isa != kAvx512 || cpu_has_avx512_vpopcntdq(), "this CPU has no AVX-512 VPOPCNTDQ");
  TORCH_CHECK(isa != kAvx2 || cpu_has_avx2(), "this CPU has no AVX2");
  return isa;
}

// ---- the sink: where a tile of popcounts goes ------------------------------------------
// apply(row0, rows, j0, width, tile, ld): tile[r * ld + c] = popcount of row row0 + r and
// column j0 + c of the current group (c < width).

struct StoreSink {  // popcounts into C (rows, ldc), group offset col0
  int32_t* c;
  int64_t ldc, col0;
  int32_t* direct(int64_t row0, int64_t j0) const { return c + row0 * ldc + col0 + j0; }
  void apply(int64_t row0, int64_t rows, int64_t j0, int64_t width, const int32_t* tile, int64_t ld) const {
    for (int64_t r = 0; r < rows; ++r) {
      int32_t* dst = c + (row0 + r) * ldc + col0 + j0;
      const int32_t* src = tile + r * ld;
      for (int64_t q = 0; q < width; ++q) dst[q] = src[q];  // short rows: a loop beats a memcpy call
    }
  }
};

// ---- micro-kernels: a tile of MR rows x (32 | 8 | np) columns of popcounts ---------------

// Plain C++; the same body is also compiled for x86's POPCNT instruction (rows_portable_popcnt),
// which "portable" uses where the CPU has it (without it __builtin_popcountll is a table lookup).
template <class Sink>
__attribute__((always_inline)) inline void rows_portable_body(const uint64_t* a, const uint64_t* bt, int64_t row0,
                                                              int64_t rows, int64_t kw, int64_t np, int64_t n,
                                                              int64_t lda, const Sink& sink) {
  std::vector<int32_t> acc(static_cast<size_t>(np));
  for (int64_t i = 0; i < rows; ++i) {
    std::fill(acc.begin(), acc.end(), 0);
    const uint64_t* ai = a + i * lda;
    for (int64_t k = 0; k < kw; ++k) {
      const uint64_t x = ai[k];
      const uint64_t* row = bt + k * np;
      for (int64_t j = 0; j < np; ++j) acc[j] += __builtin_popcountll(x ^ row[j]);
    }
    sink.apply(row0 + i, 1, 0, n, acc.data(), np);
  }
}

template <class Sink>
void rows_portable(const uint64_t* a, const uint64_t* bt, int64_t row0, int64_t rows, int64_t kw, int64_t np,
                   int64_t n, int64_t lda, const Sink& sink) {
  rows_portable_body(a, bt, row0, rows, kw, np, n, lda, sink);
}

#if LOWBIT_X86
bool cpu_has_popcnt() { return __builtin_cpu_supports("popcnt"); }

template <class Sink>
__attribute__((target("popcnt"))) void rows_portable_popcnt(const uint64_t* a, const uint64_t* bt, int64_t row0,
                                                            int64_t rows, int64_t kw, int64_t np, int64_t n,
                                                            int64_t lda, const Sink& sink) {
  rows_portable_body(a, bt, row0, rows, kw, np, n, lda, sink);
}

__attribute__((target("avx2"))) inline __m256i popcount_epi64_avx2(__m256i v, __m256i table, __m256i low) {
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  const __m256i bytes = _mm256_add_epi8(_mm256_shuffle_epi8(table, lo), _mm256_shuffle_epi8(table, hi));
  return _mm256_sad_epu8(bytes, _mm256_setzero_si256());  // 4 x 64-bit sums of the byte counts
}

// AVX2: 3 rows x 8 columns (6 accumulators of 4 x 64 bits; 16 ymm registers in all).
template <int MR>
__attribute__((target("avx2"))) void tile_avx2(const uint64_t* a, const uint64_t* bt, int64_t kw, int64_t np,
                                               int64_t lda, int32_t* out /* [MR][8] */) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1,
                                         2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  __m256i acc[MR][2];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  for (int64_t k = 0; k < kw; ++k) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bt + k * np));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bt + k * np + 4));
    for (int r = 0; r < MR; ++r) {
      const __m256i x = _mm256_set1_epi64x(static_cast<long long>(a[r * lda + k]));
      acc[r][0] = _mm256_add_epi64(acc[r][0], popcount_epi64_avx2(_mm256_xor_si256(x, b0), table, low));
      acc[r][1] = _mm256_add_epi64(acc[r][1], popcount_epi64_avx2(_mm256_xor_si256(x, b1), table, low));
    }
  }
  for (int r = 0; r < MR; ++r) {
    alignas(32) int64_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[r][0]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes + 4), acc[r][1]);
    for (int j = 0; j < 8; ++j) out[r * 8 + j] = static_cast<int32_t>(lanes[j]);
  }
}

template <int MR, class Sink>
__attribute__((target("avx2"))) void block_avx2(const uint64_t* a, const uint64_t* bt, int64_t row0, int64_t kw,
                                                int64_t np, int64_t n, int64_t lda, const Sink& sink) {
  int32_t out[MR * 8];
  for (int64_t j0 = 0; j0 < n; j0 += 8) {
    tile_avx2<MR>(a, bt + j0, kw, np, lda, out);
    sink.apply(row0, MR, j0, std::min<int64_t>(8, n - j0), out, 8);
  }
}

template <class Sink>
__attribute__((target("avx2"))) void rows_avx2(const uint64_t* a, const uint64_t* bt, int64_t row0, int64_t rows,
                                               int64_t kw, int64_t np, int64_t n, int64_t lda, const Sink& sink) {
  int64_t i = 0;
  for (; i + 3 <= rows; i += 3) block_avx2<3>(a + i * lda, bt, row0 + i, kw, np, n, lda, sink);
  for (; i < rows; ++i) block_avx2<1>(a + i * lda, bt, row0 + i, kw, np, n, lda, sink);
}

// AVX-512 VPOPCNTDQ: 6 rows x 32 columns (24 accumulators of 8 x 64 bits; 32 zmm registers in all).
template <int MR>
__attribute__((target("avx512f,avx512vpopcntdq"))) void tile_avx512(const uint64_t* a, const uint64_t* bt,
                                                                     int64_t kw, int64_t np, int64_t lda,
                                                                     int32_t* out, int64_t ld /* out[r * ld + c] */) {
  __m512i acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_si512();
  for (int64_t k = 0; k < kw; ++k) {
    const uint64_t* row = bt + k * np;
    const __m512i b0 = _mm512_loadu_si512(row);
    const __m512i b1 = _mm512_loadu_si512(row + 8);
    const __m512i b2 = _mm512_loadu_si512(row + 16);
    const __m512i b3 = _mm512_loadu_si512(row + 24);
    for (int r = 0; r < MR; ++r) {
      const __m512i x = _mm512_set1_epi64(static_cast<long long>(a[r * lda + k]));
      acc[r][0] = _mm512_add_epi64(acc[r][0], _mm512_popcnt_epi64(_mm512_xor_si512(x, b0)));
      acc[r][1] = _mm512_add_epi64(acc[r][1], _mm512_popcnt_epi64(_mm512_xor_si512(x, b1)));
      acc[r][2] = _mm512_add_epi64(acc[r][2], _mm512_popcnt_epi64(_mm512_xor_si512(x, b2)));
      acc[r][3] = _mm512_add_epi64(acc[r][3], _mm512_popcnt_epi64(_mm512_xor_si512(x, b3)));
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 4; ++v)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * ld + 8 * v), _mm512_cvtepi64_epi32(acc[r][v]));
}

template <int MR, class Sink>
__attribute__((target("avx512f,avx512vpopcntdq"))) void block_avx512(const uint64_t* a, const uint64_t* bt,
                                                                      int64_t row0, int64_t kw, int64_t np, int64_t n,
                                                                      int64_t lda, const Sink& sink) {
  int32_t out[MR * 32];
  for (int64_t j0 = 0; j0 < n; j0 += 32) {
    int32_t* direct = sink.direct(row0, j0);
    if (n - j0 >= 32 && direct) {  // a full tile straight into the destination
      tile_avx512<MR>(a, bt + j0, kw, np, lda, direct, sink.ldc);
    } else {
      tile_avx512<MR>(a, bt + j0, kw, np, lda, out, 32);
      sink.apply(row0, MR, j0, std::min<int64_t>(32, n - j0), out, 32);
    }
  }
}

template <class Sink>
__attribute__((target("avx512f,avx512vpopcntdq"))) void rows_avx512(const uint64_t* a, const uint64_t* bt,
                                                                     int64_t row0, int64_t rows, int64_t kw,
                                                                     int64_t np, int64_t n, int64_t lda,
                                                                     const Sink& sink) {
  int64_t i = 0;
  for (; i + 6 <= rows; i += 6) block_avx512<6>(a + i * lda, bt, row0 + i, kw, np, n, lda, sink);
  for (; i + 2 <= rows; i += 2) block_avx512<2>(a + i * lda, bt, row0 + i, kw, np, n, lda, sink);
  for (; i < rows; ++i) block_avx512<1>(a + i * lda, bt, row0 + i, kw, np, n, lda, sink);
}
#endif  // LOWBIT_X86

// rows [row0, row0 + rows) of A (row stride lda) against Bt, each tile to the sink.
template <class Sink>
void run_rows(int64_t kernel, const uint64_t* a, const uint64_t* bt, int64_t row0, int64_t rows, int64_t kw,
              int64_t np, int64_t n, int64_t lda, const Sink& sink) {
#if LOWBIT_X86
  if (kernel == kAvx512) return rows_avx512(a, bt, row0, rows, kw, np, n, lda, sink);
  if (kernel == kAvx2) return rows_avx2(a, bt, row0, rows, kw, np, n, lda, sink);
  if (cpu_has_popcnt()) return rows_portable_popcnt(a, bt, row0, rows, kw, np, n, lda, sink);
#endif
  rows_portable(a, bt, row0, rows, kw, np, n, lda, sink);
}

// ---- im2col on bits: the windows of output rows [row0, row0 + rows) of group g -------------

struct Window {
  const uint64_t* x;  // (N, H, W, G, Wg)
  int64_t h, w, groups, words, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo;
  // dst (rows, kh kw Wg): tap (i, j) of output (n, y, x) = the words of pixel (y sh - ph + i dh, x sw - pw + j dw), 0 outside
  void gather(int64_t row0, int64_t rows, int64_t g, uint64_t* dst) const {
    const int64_t row_words = kh * kw * words, pixel = groups * words;  // words between neighbouring pixels
    int64_t n = row0 / (ho * wo), yo = (row0 / wo) % ho, xo = row0 % wo;
    for (int64_t r = 0; r < rows; ++r) {
      uint64_t* out = dst + r * row_words;
      const int64_t x0 = xo * sw - pw;
      const bool inside_x = x0 >= 0 && x0 + (kw - 1) * dw < w;
      for (int64_t i = 0; i < kh; ++i) {
        const int64_t yi = yo * sh - ph + i * dh;
        if (yi < 0 || yi >= h) {
          for (int64_t q = 0; q < kw * words; ++q) out[q] = 0;
          out += kw * words;
          continue;
        }
        const uint64_t* line = x + ((n * h + yi) * w) * pixel + g * words;
        if (inside_x && dw == 1 && groups == 1) {  // the kw taps are kw consecutive pixels: one run of words
          const uint64_t* src = line + x0 * pixel;
          for (int64_t q = 0; q < kw * words; ++q) out[q] = src[q];
          out += kw * words;
          continue;
        }
        for (int64_t j = 0; j < kw; ++j, out += words) {
          const int64_t xi = x0 + j * dw;
          if (xi < 0 || xi >= w) {
            for (int64_t q = 0; q < words; ++q) out[q] = 0;
          } else {
            const uint64_t* src = line + xi * pixel;
            for (int64_t q = 0; q < words; ++q) out[q] = src[q];
          }
        }
      }
      if (++xo == wo) {  // next output position, row-major within each image
        xo = 0;
        if (++yo == ho) yo = 0, ++n;
      }
    }
  }
};

// ---- output stages of binary_layer, on one task's popcounts (rows x C, in cache) ----------

// Float: y[n, j, p] = float(K - 2 pc + corr) * alpha[j] (+ bias[j]); -ffp-contract=off keeps the
// product rounded before the bias is added (no FMA), as the simulated layer's two operations.
// First row-major into ``scratch`` (rows x cols, contiguous: vectorises), then transposed into NCHW.
void store_float(const int32_t* pc, int64_t row0, int64_t rows, int64_t cols, int64_t positions, int32_t k,
                 const int32_t* corr, const float* alpha, const float* bias, float* scratch, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t p = (row0 + r) % positions;
    const int32_t* row = pc + r * cols;
    const int32_t* crow = corr ? corr + p * cols : nullptr;
    float* out = scratch + r * cols;
    if (crow) {
      for (int64_t j = 0; j < cols; ++j) out[j] = static_cast<float>(k - 2 * row[j] + crow[j]) * alpha[j];
    } else {
      for (int64_t j = 0; j < cols; ++j) out[j] = static_cast<float>(k - 2 * row[j]) * alpha[j];
    }
    if (bias) {
      for (int64_t j = 0; j < cols; ++j) out[j] = out[j] + bias[j];
    }
  }
  for (int64_t r = 0; r < rows;) {  // runs of consecutive positions within one image
    const int64_t m = row0 + r, n = m / positions, p = m % positions;
    const int64_t run = std::min(rows - r, positions - p);
    for (int64_t j = 0; j < cols; ++j) {
      float* dst = y + (n * cols + j) * positions + p;
      const float* src = scratch + r * cols + j;
      for (int64_t q = 0; q < run; ++q) dst[q] = src[q * cols];
    }
    r += run;
  }
}

// Bits: one output word = up to 64 channels' (sign * (K - 2 pc + corr) >= threshold).
uint64_t word_portable(const int32_t* pc, const int32_t* corr, const int32_t* sign, const int32_t* threshold,
                       int32_t k, int64_t bits) {
  uint64_t word = 0;
  for (int64_t b = 0; b < bits; ++b) {
    const int32_t d = k - 2 * pc[b] + (corr ? corr[b] : 0);
    word |= static_cast<uint64_t>(sign[b] * d >= threshold[b]) << b;
  }
  return word;
}

#if LOWBIT_X86
__attribute__((target("avx2"))) uint64_t word_avx2(const int32_t* pc, const int32_t* corr, const int32_t* sign,
                                                   const int32_t* threshold, int32_t k, int64_t bits) {
  uint64_t word = 0;
  int64_t b0 = 0;
  const __m256i kv = _mm256_set1_epi32(k), one = _mm256_set1_epi32(1);
  for (; b0 + 8 <= bits; b0 += 8) {
    __m256i d = _mm256_sub_epi32(kv, _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pc + b0)), 1));
    if (corr) d = _mm256_add_epi32(d, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(corr + b0)));
    d = _mm256_mullo_epi32(d, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sign + b0)));
    const __m256i t = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(threshold + b0));
    const __m256i ge = _mm256_cmpgt_epi32(d, _mm256_sub_epi32(t, one));  // d >= t  <=>  d > t - 1
    word |= static_cast<uint64_t>(static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(ge)))) << b0;
  }
  if (b0 < bits) {
    word |= word_portable(pc + b0, corr ? corr + b0 : nullptr, sign + b0, threshold + b0, k, bits - b0) << b0;
  }
  return word;
}

__attribute__((target("avx512f"))) uint64_t word_avx512(const int32_t* pc, const int32_t* corr, const int32_t* sign,
                                                        const int32_t* threshold, int32_t k, int64_t bits) {
  uint64_t word = 0;
  const __m512i kv = _mm512_set1_epi32(k);
  for (int64_t b0 = 0; b0 < bits; b0 += 16) {
    const __mmask16 lanes = bits - b0 >= 16 ? static_cast<__mmask16>(0xFFFF)
                                            : static_cast<__mmask16>((1u << (bits - b0)) - 1);
    __m512i d = _mm512_sub_epi32(kv, _mm512_slli_epi32(_mm512_maskz_loadu_epi32(lanes, pc + b0), 1));
    if (corr) d = _mm512_add_epi32(d, _mm512_maskz_loadu_epi32(lanes, corr + b0));
    d = _mm512_mullo_epi32(d, _mm512_maskz_loadu_epi32(lanes, sign + b0));
    const __mmask16 ge = _mm512_mask_cmpge_epi32_mask(lanes, d, _mm512_maskz_loadu_epi32(lanes, threshold + b0));
    word |= static_cast<uint64_t>(ge) << b0;
  }
  return word;
}
#endif

void store_bits(int64_t kernel, const int32_t* pc, int64_t row0, int64_t rows, int64_t cols, int64_t positions,
                int32_t k, const int32_t* corr, const int32_t* sign, const int32_t* threshold, int64_t out_groups,
                uint64_t* out) {
  const int64_t per = cols / out_groups, words = (per + 63) / 64;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t m = row0 + r;
    const int32_t* row = pc + r * cols;
    const int32_t* crow = corr ? corr + (m % positions) * cols : nullptr;
    for (int64_t g = 0; g < out_groups; ++g) {
      for (int64_t w = 0; w < words; ++w) {
        const int64_t j0 = g * per + 64 * w, bits = std::min<int64_t>(64, per - 64 * w);
        const int32_t* c0 = crow ? crow + j0 : nullptr;
        uint64_t word;
#if LOWBIT_X86
        if (kernel == kAvx512) word = word_avx512(row + j0, c0, sign + j0, threshold + j0, k, bits);
        else if (kernel == kAvx2) word = word_avx2(row + j0, c0, sign + j0, threshold + j0, k, bits);
        else
#endif
          word = word_portable(row + j0, c0, sign + j0, threshold + j0, k, bits);
        out[(m * out_groups + g) * words + w] = word;
      }
    }
  }
}

}  // namespace

// Bitmask of the kernels this CPU can run: 1 portable, 2 AVX2, 4 AVX-512 VPOPCNTDQ.
int64_t cpu_kernels() { return 1 | (cpu_has_avx2() ? 2 : 0) | (cpu_has_avx512_vpopcntdq() ? 4 : 0); }

// The kernel code "auto" resolves to on this CPU.
int64_t best_kernel() { return resolve_isa(kAuto); }

// popcount(A[g, i, :] XOR Bt[g, :, j]) for every group g, row i < M, column j < n:
// a (G, M, Kw) int64, bt (G, Kw, Np) int64 with Np % 32 == 0, result (M, G n) int32
// (group g in columns g n .. g n + n - 1). The GEMM alone, for tests and benchmarks.
torch::Tensor xnor_popcount_gemm(torch::Tensor a, torch::Tensor bt, int64_t n, int64_t isa) {
  TORCH_CHECK(a.dtype() == torch::kInt64 && bt.dtype() == torch::kInt64, "packed operands must be int64");
  TORCH_CHECK(a.dim() == 3 && bt.dim() == 3 && a.size(0) == bt.size(0) && a.size(2) == bt.size(1),
              "shapes: a (G, M, Kw), bt (G, Kw, Np)");
  TORCH_CHECK(a.is_contiguous() && bt.is_contiguous(), "packed operands must be contiguous");
  const int64_t groups = a.size(0), m = a.size(1), kw = a.size(2), np = bt.size(2);
  TORCH_CHECK(np % kPanel == 0 && n <= np, "Np must be a multiple of 32 and >= n");
  const int64_t kernel = resolve_isa(isa);
  auto c = torch::empty({m, groups * n}, a.options().dtype(torch::kInt32));
  const auto* ap = reinterpret_cast<const uint64_t*>(a.data_ptr<int64_t>());
  const auto* bp = reinterpret_cast<const uint64_t*>(bt.data_ptr<int64_t>());
  const int64_t tasks = (m + kRowsPerTask - 1) / kRowsPerTask;
  for (int64_t g = 0; g < groups; ++g) {
    const StoreSink sink{c.data_ptr<int32_t>(), groups * n, g * n};
    const uint64_t* ag = ap + g * m * kw;
    const uint64_t* bg = bp + g * kw * np;
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      const int64_t r0 = begin * kRowsPerTask, r1 = std::min(m, end * kRowsPerTask);
      run_rows(kernel, ag + r0 * kw, bg, r0, r1 - r0, kw, np, n, kw, sink);
    });
  }
  return c;
}

// A whole packed binary conv (a linear is a 1x1 conv on a 1x1 image):
// x (N, H, W, G, Wg) int64 bits, panel (G, Kw, Np) int64 with Kw = kh kw Wg, n = C_out / G;
// k = C_in/G kh kw, the number of +-1 products of a full window; correction (H' W', C_out) int32 or None.
// Float output (alpha given): (N, C_out, H', W') float32, alpha * dot (+ bias).
// Bits output (sign and threshold given): (N, H', W', out_groups, Wg') int64.
torch::Tensor binary_layer(torch::Tensor x, torch::Tensor panel, int64_t n, std::vector<int64_t> geometry, int64_t k,
                           torch::optional<torch::Tensor> correction, torch::optional<torch::Tensor> alpha,
                           torch::optional<torch::Tensor> bias, torch::optional<torch::Tensor> sign,
                           torch::optional<torch::Tensor> threshold, int64_t out_groups, int64_t isa) {
  TORCH_CHECK(x.dtype() == torch::kInt64 && x.dim() == 5 && x.is_contiguous(), "x must be contiguous (N, H, W, G, Wg) int64");
  TORCH_CHECK(panel.dtype() == torch::kInt64 && panel.dim() == 3 && panel.is_contiguous(), "panel (G, Kw, Np) int64");
  TORCH_CHECK(geometry.size() == 8, "geometry: kh, kw, sh, sw, ph, pw, dh, dw");
  const int64_t batch = x.size(0), h = x.size(1), w = x.size(2), groups = x.size(3), words = x.size(4);
  const int64_t kh = geometry[0], kw = geometry[1];
  Window win{reinterpret_cast<const uint64_t*>(x.data_ptr<int64_t>()), h, w, groups, words, kh, kw,
             geometry[2], geometry[3], geometry[4], geometry[5], geometry[6], geometry[7], 0, 0};
  win.ho = (h + 2 * win.ph - win.dh * (kh - 1) - 1) / win.sh + 1;
  win.wo = (w + 2 * win.pw - win.dw * (kw - 1) - 1) / win.sw + 1;
  TORCH_CHECK(win.ho > 0 && win.wo > 0, "the input is smaller than the conv window");
  const int64_t row_words = kh * kw * words, np = panel.size(2), cols = groups * n, positions = win.ho * win.wo;
  const int64_t m = batch * positions;
  TORCH_CHECK(panel.size(0) == groups && panel.size(1) == row_words && np % kPanel == 0 && n <= np,
              "panel shape does not match the input's groups and words");
  TORCH_CHECK(!correction || (correction->dtype() == torch::kInt32 && correction->is_contiguous() &&
                              correction->numel() == positions * cols),
              "correction (H' W', C_out) int32");
  const int64_t kernel = resolve_isa(isa);
  const int32_t* corr = correction ? correction->data_ptr<int32_t>() : nullptr;
  const auto* pp = reinterpret_cast<const uint64_t*>(panel.data_ptr<int64_t>());
  const int64_t tasks = (m + kRowsPerTask - 1) / kRowsPerTask;
  const bool bits_out = sign.has_value();
  torch::Tensor out;
  if (bits_out) {
    TORCH_CHECK(threshold && sign->dtype() == torch::kInt32 && threshold->dtype() == torch::kInt32 &&
                    sign->numel() == cols && threshold->numel() == cols,
                "sign, threshold: (C_out,) int32");
    TORCH_CHECK(out_groups >= 1 && cols % out_groups == 0, "out_groups must divide C_out");
    const int64_t per = cols / out_groups, out_words = (per + 63) / 64;
    out = torch::empty({batch, win.ho, win.wo, out_groups, out_words}, x.options());
  } else {
    TORCH_CHECK(alpha && alpha->dtype() == torch::kFloat32 && alpha->numel() == cols, "alpha (C_out,) float32");
    TORCH_CHECK(!bias || (bias->dtype() == torch::kFloat32 && bias->numel() == cols), "bias (C_out,) float32");
    out = torch::empty({batch, cols, win.ho, win.wo}, alpha->options());
  }
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> windows(static_cast<size_t>(kRowsPerTask * row_words));
    std::vector<int32_t> counts(static_cast<size_t>(kRowsPerTask * cols));
    std::vector<float> scratch(bits_out ? 0 : static_cast<size_t>(kRowsPerTask * cols));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r0 = task * kRowsPerTask, count = std::min(m - r0, kRowsPerTask);
      for (int64_t g = 0; g < groups; ++g) {
        win.gather(r0, count, g, windows.data());
        const StoreSink sink{counts.data(), cols, g * n};
        run_rows(kernel, windows.data(), pp + g * row_words * np, 0, count, row_words, np, n, row_words, sink);
      }
      if (bits_out) {
        store_bits(kernel, counts.data(), r0, count, cols, positions, static_cast<int32_t>(k), corr,
                   sign->data_ptr<int32_t>(), threshold->data_ptr<int32_t>(), out_groups,
                   reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>()));
      } else {
        store_float(counts.data(), r0, count, cols, positions, static_cast<int32_t>(k), corr, alpha->data_ptr<float>(),
                    bias ? bias->data_ptr<float>() : nullptr, scratch.data(), out.data_ptr<float>());
      }
    }
  });
  return out;
}

// Signs of a float NCHW tensor packed per channel group: x (N, C, H, W) float32 contiguous ->
// (N, H, W, G, Wg) int64 with bit b of word w of group g = (x[n, g C/G + 64 w + b, h, w] >= 0)
// (NaN -> 0, i.e. -1, as lowbit.quant.hard_sign). Wg = ceil((C / G) / 64).
torch::Tensor pack_signs_nchw(torch::Tensor x, int64_t groups) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 4 && x.is_contiguous(), "x must be float32 NCHW contiguous");
  const int64_t batch = x.size(0), channels = x.size(1), hw = x.size(2) * x.size(3);
  TORCH_CHECK(groups >= 1 && channels % groups == 0, "channels must divide into groups");
  const int64_t per_group = channels / groups, words = (per_group + 63) / 64;
  auto out = torch::empty({batch, x.size(2), x.size(3), groups, words}, x.options().dtype(torch::kInt64));
  const float* xp = x.data_ptr<float>();
  auto* op = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  const int64_t stride = groups * words;  // words between neighbouring pixels
  at::parallel_for(0, batch * groups * words, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> plane(static_cast<size_t>(hw));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (groups * words), g = (task / words) % groups, w = task % words;
      std::fill(plane.begin(), plane.end(), 0);
      const int64_t c0 = g * per_group + 64 * w, bits = std::min<int64_t>(64, per_group - 64 * w);
      for (int64_t b = 0; b < bits; ++b) {
        const float* src = xp + (n * channels + c0 + b) * hw;
        for (int64_t p = 0; p < hw; ++p) plane[p] |= static_cast<uint64_t>(src[p] >= 0.0f) << b;
      }
      uint64_t* dst = op + n * hw * stride + g * words + w;
      for (int64_t p = 0; p < hw; ++p) dst[p * stride] = plane[p];
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cpu_kernels", &cpu_kernels, "bitmask of usable kernels: 1 portable, 2 AVX2, 4 AVX-512 VPOPCNTDQ");
  m.def("best_kernel", &best_kernel, "kernel code chosen by 'auto' on this CPU");
  m.def("xnor_popcount_gemm", &xnor_popcount_gemm, "popcount(A XOR B) GEMM on packed bits");
  m.def("binary_layer", &binary_layer, "a packed binary conv/linear: bits in, float or bits out");
  m.def("pack_signs_nchw", &pack_signs_nchw, "pack x >= 0 of a float NCHW tensor into NHWC words");
}
