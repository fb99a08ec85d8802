// moe/ops/detail/matmul_int8act.hpp: matmul for Int8ActWeight, the opt-in int8-activation path.
//
// Y[t, n] = sum over scale blocks b of  sx[t, b] * sw[b, n] * sum_{k in b} xq[t, k] * q[k, n]
//
//  * q, sw: the int8 weight and its bf16 scales, read in place as for Int8Weight.
//  * xq, sx: each token's activations quantised per scale block of the weight ("per token per
//    block"): sx = max|x| / 127 over the block, xq = round(x / sx) in [-127, 127] (round to
//    nearest even; a zero block gives sx = 0; a NaN or infinity makes that token's outputs NaN).
//  * The inner sums are exact int32 dot products, by one of three kernels (kInt8ActKernels):
//     - "avx512vnni": vpdpbusd, 64 byte products per instruction, 4x the f32 FMA rate. It
//       multiplies unsigned by signed bytes, so the weights enter as q + 128 (a sign-bit flip)
//       and the kernel subtracts 128 * sum_k xq[t, k].
//     - "avx2" (AVX2 + FMA hosts without VNNI, e.g. Zen 3): vpmaddwd over int16, two rows per
//       32-bit lane (16 MACs per instruction, 2x the f32 FMA's 8), no bias. (vpmaddubsw with
//       |q| and sign(xq, q) would not saturate either, but needs a sign and a second multiply
//       per 32 MACs: measured no faster.)
//     - "scalar" (every other build; also compiled next to the AVX2 kernel as the tests' twin).
//  * Each K step of the decomposition (kc rows within one scale block) adds
//    float(S) * (sx * sw[n]) to y with one f32 FMA, steps in ascending k. The steps depend on
//    the shapes and the host's blocking, never on the thread count or the kernel: results are
//    bit-identical for every pool size, and identical between the three kernels (exact integer
//    sums, the same f32 operations in the same order).
//
// Layout: vpdpbusd sums 4 consecutive bytes of a 32-bit lane, so the VNNI kernel uses weights
// [k, n] in groups of 4 rows interleaved per column ([k/4][n][4]); the AVX2 kernel in pairs of
// rows sign-extended to int16 ([k/2][n][2]). Done on the way (T <= kMR, read in place like the
// exact GEMV; AVX2: int8act_direct_avx2, in registers, a K step of kInt8ActDirectRows rows per
// call) or once per strip into the thread's scratch, by the first token block of the strip
// (T > kMR, like the f32 packed path; AVX2 strips are kQR2 = 16 columns wide, so that kc rows of
// int16 stay in L1).
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#include <moe/config.hpp>
#include <moe/core/bf16.hpp>
#include <moe/core/dispatch.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/ops/detail/matmul_kernels.hpp>
#include <moe/ops/detail/matmul_plan.hpp>
#include <moe/ops/weights.hpp>

#if MOE_MATMUL_AVX512 && defined(__AVX512VNNI__)
#define MOE_MATMUL_VNNI 1
#else
#define MOE_MATMUL_VNNI 0
#endif

// The AVX2 kernel needs FMA too: its store must round like std::fma (xsimd's fma without FMA3
// would be a multiply and an add).
#if !MOE_MATMUL_VNNI && defined(__AVX2__) && defined(__FMA__)
#define MOE_MATMUL_INT8ACT_AVX2 1
#include <immintrin.h>
#else
#define MOE_MATMUL_INT8ACT_AVX2 0
#endif

MOE_SIMD_DETAIL_BEGIN

/// The int8-activation kernels. A TU compiles the best one its flags allow (kInt8ActKernel); an
/// AVX2 TU also keeps the scalar one, which the tests run next to it (run_int8act<kScalar>).
enum class Int8ActKernel { kScalar, kAvx2, kVnni };
inline constexpr Int8ActKernel kInt8ActKernel = MOE_MATMUL_VNNI           ? Int8ActKernel::kVnni
                                                : MOE_MATMUL_INT8ACT_AVX2 ? Int8ActKernel::kAvx2
                                                                          : Int8ActKernel::kScalar;

/// Name of the int8-activation kernel compiled into this TU: "avx512vnni", "avx2" or "scalar".
inline constexpr const char* kInt8ActKernels = MOE_MATMUL_VNNI           ? "avx512vnni"
                                               : MOE_MATMUL_INT8ACT_AVX2 ? "avx2"
                                                                         : "scalar";

/// Columns per int8 strip (64 bytes: one zmm of weight bytes per row).
inline constexpr std::size_t kQR = 64;
/// Columns per packed strip of the AVX2 kernel (its register block's width): kc rows of int16
/// pairs, 32 bytes per row (20 KiB at kc = 640), stay in L1 while the task's token blocks read it.
inline constexpr std::size_t kQR2 = 16;

/// Rows of a direct-path K step (T <= kMR: weights read in place). 16, 32 and 64 measured alike
/// with the AVX2 kernel on Zen 1 (T = 1-6, 2 threads).
inline constexpr std::size_t kInt8ActDirectRows = 16;

/// Quantisation scale of one token over a block: max|x| / 127 (0 for an all-zero block, NaN if
/// the block holds a NaN or an infinity).
inline float act_scale(const float* x, std::size_t n) noexcept {
  fbatch m(0.0f), bad(0.0f);
  std::size_t i = 0;
  for (; i + simd::kLanes <= n; i += simd::kLanes) {
    const fbatch v = simd::load(x + i);
    m = simd::max(m, simd::abs(v));
    bad = bad + v * fbatch(0.0f);  // NaN for NaN or +-inf
  }
  if (i < n) {
    const fbatch v = simd::load_partial(x + i, n - i);
    m = simd::max(m, simd::abs(v));
    bad = bad + v * fbatch(0.0f);
  }
  const float amax = simd::reduce_max(m);
  if (std::isnan(simd::reduce_add(bad))) return std::numeric_limits<float>::quiet_NaN();
  return amax / 127.0f;
}

/// q[k] = round(x[k] * inv) as int8 for k < n, zeros up to round_up(n, 4); returns sum q[k].
/// inv = 1 / scale (0 for an all-zero block or a NaN scale: then q = 0).
inline std::int32_t quantize_row(const float* x, std::size_t n, float inv,
                                 std::int8_t* q) noexcept {
  std::int32_t sum = 0;
  std::size_t k = 0;
  if (!(inv > 0.0f)) {  // all-zero block, or a NaN / infinite one (whose outputs are NaN anyway)
    std::memset(q, 0, round_up(n, 4));
    return 0;
  }
#if MOE_MATMUL_AVX512
  constexpr __mmask16 kAll = 0xffff;  // maskz forms: GCC bug 105593, as above
  const __m512 vi = _mm512_set1_ps(inv);
  __m512i s = _mm512_setzero_si512();
  for (; k + 16 <= n; k += 16) {
    const __m512i r = _mm512_maskz_cvtps_epi32(kAll, _mm512_mul_ps(_mm512_loadu_ps(x + k), vi));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k), _mm512_maskz_cvtsepi32_epi8(kAll, r));
    s = _mm512_add_epi32(s, r);  // cvtps2dq rounds to nearest even (MXCSR default)
  }
  alignas(64) std::int32_t lanes[16];
  _mm512_store_si512(lanes, s);
  for (std::int32_t v : lanes) sum += v;
#elif MOE_MATMUL_INT8ACT_AVX2
  // cvtps2dq rounds to nearest even like std::nearbyint (MXCSR default); |x * inv| <= 127 up to
  // rounding, and the clamp makes sure.
  const __m256 vi = _mm256_set1_ps(inv);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  __m256i s = _mm256_setzero_si256();
  for (; k + 8 <= n; k += 8) {
    __m256i r = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), vi));
    r = _mm256_max_epi32(_mm256_min_epi32(r, hi), lo);
    s = _mm256_add_epi32(s, r);
    const __m128i r16 = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_packs_epi16(r16, r16));
  }
  alignas(32) std::int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), s);
  for (std::int32_t v : lanes) sum += v;
#endif
  for (; k < n; ++k) {
    const float r = std::nearbyint(x[k] * inv);  // round to nearest even, like cvtps2dq
    const auto v = static_cast<std::int32_t>(std::clamp(r, -127.0f, 127.0f));
    q[k] = static_cast<std::int8_t>(v);
    sum += v;
  }
  for (; k % 4 != 0; ++k) q[k] = 0;
  return sum;
}

/// Int32 accumulators of an MR x kQR block.
template <std::size_t MR>
struct Acc32 {
#if MOE_MATMUL_VNNI
  __m512i v[MR][4];
  void zero() noexcept {
    for (auto& r : v) {
      for (auto& x : r) x = _mm512_setzero_si512();
    }
  }
  std::int32_t at(std::size_t t, std::size_t c) const noexcept {
    alignas(64) std::int32_t b[16];
    _mm512_store_si512(b, v[t][c / 16]);
    return b[c % 16];
  }
#else
  alignas(32) std::int32_t v[MR][kQR];
  void zero() noexcept {
    std::memset(v, 0, sizeof v);
  }
  std::int32_t at(std::size_t t, std::size_t c) const noexcept {
    return v[t][c];
  }
#endif
};

#if MOE_MATMUL_VNNI
/// Rows r[0..3] (64 bytes each) -> the 4 zmm of the group in [n][4] order, sign bits flipped
/// (q + 128 as unsigned). Raw intrinsics: byte interleaves and 128-bit lane shuffles have no
/// counterpart in the vocabulary.
inline void interleave4(const __m512i r[4], __m512i v[4]) noexcept {
  // All-lanes maskz forms: the unmasked intrinsics trip GCC 12's bogus -Wmaybe-uninitialized
  // (bug 105593).
  constexpr __mmask64 kAll64 = ~__mmask64{0};
  constexpr __mmask32 kAll32 = ~__mmask32{0};
  constexpr __mmask16 kAll16 = 0xffff;
  const __m512i a = _mm512_maskz_unpacklo_epi8(kAll64, r[0], r[1]),
                b = _mm512_maskz_unpackhi_epi8(kAll64, r[0], r[1]);
  const __m512i c = _mm512_maskz_unpacklo_epi8(kAll64, r[2], r[3]),
                d = _mm512_maskz_unpackhi_epi8(kAll64, r[2], r[3]);
  // o_i, 128-bit lane L: columns 16 L + 4 i .. 16 L + 4 i + 3
  const __m512i o0 = _mm512_maskz_unpacklo_epi16(kAll32, a, c),
                o1 = _mm512_maskz_unpackhi_epi16(kAll32, a, c);
  const __m512i o2 = _mm512_maskz_unpacklo_epi16(kAll32, b, d),
                o3 = _mm512_maskz_unpackhi_epi16(kAll32, b, d);
  const __m512i t0 = _mm512_maskz_shuffle_i32x4(kAll16, o0, o1, 0x44),
                t1 = _mm512_maskz_shuffle_i32x4(kAll16, o0, o1, 0xee);
  const __m512i t2 = _mm512_maskz_shuffle_i32x4(kAll16, o2, o3, 0x44),
                t3 = _mm512_maskz_shuffle_i32x4(kAll16, o2, o3, 0xee);
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  v[0] = _mm512_xor_si512(_mm512_maskz_shuffle_i32x4(kAll16, t0, t2, 0x88), flip);
  v[1] = _mm512_xor_si512(_mm512_maskz_shuffle_i32x4(kAll16, t0, t2, 0xdd), flip);
  v[2] = _mm512_xor_si512(_mm512_maskz_shuffle_i32x4(kAll16, t1, t3, 0x88), flip);
  v[3] = _mm512_xor_si512(_mm512_maskz_shuffle_i32x4(kAll16, t1, t3, 0xdd), flip);
}
#endif

/// acc[t][c] += sum_{k < rows} (q[k][c] + 128) * xq[t][k] for t < MR, c < cols (<= kQR).
/// kRaw: w points at int8 weight rows (row stride ldw), read in place; rows past `rows` read as
/// zero, and xq must be zero there (quantize_row pads). kPackOut: the interleaved groups are also
/// stored to pk (256 bytes per group of 4 rows). !kRaw: w is such a packed strip. pf_rows > 0:
/// prefetch the rows that far ahead (raw only; they must exist).
template <std::size_t MR, bool kRaw, bool kPackOut>
inline void int8act_kernel(
    std::size_t rows, const std::int8_t* xq, std::size_t ldxq, const std::int8_t* w,
    std::size_t ldw, std::size_t cols, std::size_t pf_rows,
    std::int8_t* pk,  // NOLINT(readability-non-const-parameter): the VNNI branch writes it
    Acc32<MR>& acc) noexcept {
  const std::size_t groups = (rows + 3) / 4;
#if MOE_MATMUL_VNNI
  const __mmask64 cm = cols >= kQR ? ~__mmask64{0} : ((__mmask64{1} << cols) - 1);
  for (std::size_t g = 0; g < groups; ++g) {
    __m512i v[4];
    if constexpr (kRaw) {
      __m512i r[4];
      for (std::size_t i = 0; i < 4; ++i) {
        const std::size_t k = 4 * g + i;
        r[i] = k < rows ? _mm512_maskz_loadu_epi8(cm, w + k * ldw) : _mm512_setzero_si512();
        if (pf_rows != 0) {
          simd::prefetch_l1(reinterpret_cast<std::uintptr_t>(w + (k + pf_rows) * ldw));
        }
      }
      interleave4(r, v);
      if constexpr (kPackOut) {
        for (std::size_t j = 0; j < 4; ++j) _mm512_storeu_si512(pk + 256 * g + 64 * j, v[j]);
      }
    } else {
      for (std::size_t j = 0; j < 4; ++j) v[j] = _mm512_loadu_si512(w + 256 * g + 64 * j);
    }
    for (std::size_t t = 0; t < MR; ++t) {
      std::int32_t x4 = 0;
      std::memcpy(&x4, xq + t * ldxq + 4 * g, 4);
      const __m512i xb = _mm512_set1_epi32(x4);
      for (std::size_t j = 0; j < 4; ++j) acc.v[t][j] = _mm512_dpbusd_epi32(acc.v[t][j], v[j], xb);
    }
  }
#else
  // Portable: the same exact integer sums, straight from the rows (no packing).
  (void)pf_rows;
  (void)pk;
  static_assert(kRaw || !kPackOut, "only raw weights are packed on the way");
  if constexpr (kRaw) {
    for (std::size_t k = 0; k < rows; ++k) {
      const std::int8_t* wr = w + k * ldw;
      for (std::size_t t = 0; t < MR; ++t) {
        const auto xv = static_cast<std::int32_t>(xq[t * ldxq + k]);
        for (std::size_t c = 0; c < cols; ++c) acc.v[t][c] += (wr[c] + 128) * xv;
      }
    }
  }
  (void)groups;
#endif
}

/// y[t][c] (+)= float(acc[t][c] - 128 * xsum[t]) * (sx[t] * sw[c]) for t < mr, c < cols.
template <std::size_t MR>
inline void int8act_store(const Acc32<MR>& acc, std::size_t mr, const std::int32_t* xsum,
                          const float* sx, const bf16* sw, std::size_t cols, float* y,
                          std::size_t ldy, bool load_y) noexcept {
#if MOE_MATMUL_VNNI
  for (std::size_t t = 0; t < mr; ++t) {
    const __m512i corr = _mm512_set1_epi32(128 * xsum[t]);
    const fbatch s(sx[t]);
    for (std::size_t j = 0; j < 4 && j * 16 < cols; ++j) {
      const std::size_t n = std::min<std::size_t>(16, cols - j * 16);
      const fbatch v(_mm512_maskz_cvtepi32_ps(0xffff, _mm512_sub_epi32(acc.v[t][j], corr)));
      const fbatch f =
          s * (n == 16 ? simd::widen(sw + 16 * j) : simd::widen_partial(sw + 16 * j, n));
      float* yp = y + t * ldy + 16 * j;
      const fbatch r = load_y ? simd::fma(v, f, simd::load_n(yp, n)) : v * f;
      simd::store_n(yp, r, n);
    }
  }
#else
  for (std::size_t t = 0; t < mr; ++t) {
    for (std::size_t c = 0; c < cols; ++c) {
      const float v = static_cast<float>(acc.v[t][c] - 128 * xsum[t]);
      const float f = sx[t] * load_bf16(sw + c);
      y[t * ldy + c] = load_y ? std::fma(v, f, y[t * ldy + c]) : v * f;
    }
  }
#endif
}

#if MOE_MATMUL_INT8ACT_AVX2
/// 16 int8 weights at p (n < 16: the first n, then zeros; AVX2 has no byte-masked load, so a
/// short tail goes through a zeroed 16-byte copy).
[[gnu::always_inline]] inline __m128i load_i8x16(const std::int8_t* p, std::size_t n) noexcept {
  if (n >= 16) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  alignas(16) std::int8_t b[16] = {};
  std::memcpy(b, p, n);
  return _mm_load_si128(reinterpret_cast<const __m128i*>(b));
}

/// The same, sign-extended to int16.
[[gnu::always_inline]] inline __m256i load_i16(const std::int8_t* p, std::size_t n) noexcept {
  return _mm256_cvtepi8_epi16(load_i8x16(p, n));
}

/// xq[t][i] for t < MR, i < n, sign-extended to int16 into xs[t * ldx + i], 16 at a time. xq
/// rows (stride ldxq) are padded to a multiple of 64 bytes (Int8ActScratch), so the 16-byte
/// loads stay inside; what lies past round_up(n, 4) is never used.
template <std::size_t MR>
[[gnu::always_inline]] inline void widen_rows(const std::int8_t* xq, std::size_t ldxq,
                                              std::size_t n, std::int16_t* xs,
                                              std::size_t ldx) noexcept {
  for (std::size_t t = 0; t < MR; ++t) {
    for (std::size_t i = 0; i < n; i += 16) {
      const auto* src = reinterpret_cast<const __m128i*>(xq + t * ldxq + i);
      _mm256_store_si256(reinterpret_cast<__m256i*>(xs + t * ldx + i),
                         _mm256_cvtepi8_epi16(_mm_loadu_si128(src)));
    }
  }
}

/// 2 x 2 transpose of 128-bit lanes: the AVX2 kernel's column order in a pair of accumulators
/// (u0 = columns 0-3, 8-11; u1 = 4-7, 12-15: what vpunpck{l,h}wd leave) <-> natural (0-7,
/// 8-15). Its own inverse.
[[gnu::always_inline]] inline void swap_lanes(__m256i& u0, __m256i& u1) noexcept {
  const __m256i a = _mm256_permute2x128_si256(u0, u1, 0x20);
  u1 = _mm256_permute2x128_si256(u0, u1, 0x31);
  u0 = a;
}

/// 16 int32 sums at p (natural column order) into a pair of accumulators in the kernel's order.
[[gnu::always_inline]] inline void load_acc16(const std::int32_t* p, __m256i& u0,
                                              __m256i& u1) noexcept {
  u0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
  u1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 8));
  swap_lanes(u0, u1);
}

/// The inverse of load_acc16.
[[gnu::always_inline]] inline void store_acc16(std::int32_t* p, __m256i u0, __m256i u1) noexcept {
  swap_lanes(u0, u1);
  _mm256_store_si256(reinterpret_cast<__m256i*>(p), u0);
  _mm256_store_si256(reinterpret_cast<__m256i*>(p + 8), u1);
}

/// The int16 pair (x[0], x[1]) in every 32-bit lane: a token's two rows' activations.
[[gnu::always_inline]] inline __m256i broadcast_pair(const std::int16_t* x) noexcept {
  std::int32_t x2 = 0;
  std::memcpy(&x2, x, 4);
  return _mm256_set1_epi32(x2);
}

/// n (<= 16) columns of rows wr and wr + ldw (read as zero when !second) as row pairs: 32-bit
/// lane c holds (q[k][c], q[k + 1][c]) as int16; v0 = columns 0-3 and 8-11, v1 = 4-7 and 12-15
/// (vpunpck{l,h}wd order).
struct RowPair {
  __m256i v0, v1;
};
[[gnu::always_inline]] inline RowPair load_row_pair(const std::int8_t* wr, std::size_t ldw,
                                                    bool second, std::size_t n) noexcept {
  const __m256i lo = load_i16(wr, n);
  const __m256i hi = second ? load_i16(wr + ldw, n) : _mm256_setzero_si256();
  return {_mm256_unpacklo_epi16(lo, hi), _mm256_unpackhi_epi16(lo, hi)};
}

/// acc[t][c] += sum_{p < pairs} (w[p][c][0] * x[t][2p] + w[p][c][1] * x[t][2p + 1]) for G
/// tokens (xs rows, stride ldx int16) and 16 columns (acc rows: 16 int32 at acc[t * lda]): w is
/// a strip of row pairs, 64 bytes each, as int8act_kernel_avx2 packs them. At most 4 tokens: 2 G
/// accumulators + 2 weights + the broadcast and a product fit in 16 ymm with room to spare (at
/// G = 6, exactly 16, GCC spills the accumulators to the stack).
template <std::size_t G>
inline void int8act_pairs_avx2(std::size_t pairs, const std::int8_t* w, const std::int16_t* xs,
                               std::size_t ldx, std::int32_t* acc, std::size_t lda) noexcept {
  static_assert(G >= 1 && G <= 4, "1 to 4 column groups per call");
  __m256i a[G][2];
  for (std::size_t t = 0; t < G; ++t) load_acc16(acc + t * lda, a[t][0], a[t][1]);
  for (std::size_t p = 0; p < pairs; ++p) {
    const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 64 * p));
    const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 64 * p + 32));
    for (std::size_t t = 0; t < G; ++t) {
      const __m256i xb = broadcast_pair(xs + t * ldx + 2 * p);
      a[t][0] = _mm256_add_epi32(a[t][0], _mm256_madd_epi16(v0, xb));
      a[t][1] = _mm256_add_epi32(a[t][1], _mm256_madd_epi16(v1, xb));
    }
  }
  for (std::size_t t = 0; t < G; ++t) store_acc16(acc + t * lda, a[t][0], a[t][1]);
}

/// Prefetches row wr (and the next row, when `second`) pf_bytes ahead along the row, into L1.
[[gnu::always_inline]] inline void prefetch_pair(const std::int8_t* wr, std::size_t ldw,
                                                 bool second, std::size_t pf_bytes) noexcept {
  simd::prefetch_l1(reinterpret_cast<std::uintptr_t>(wr + pf_bytes));
  if (second) simd::prefetch_l1(reinterpret_cast<std::uintptr_t>(wr + ldw + pf_bytes));
}

/// The AVX2 twin of int8act_kernel for the packed path: acc[t][c] += sum_{k < rows} q[k][c] *
/// xq[t][k] for t < MR, c < cols (<= kQR2), WITHOUT the +128 bias (int8act_store_avx2 subtracts
/// nothing). AVX2 has no vpdpbusd; vpmaddwd multiplies 16 signed int16 pairs and adds each pair
/// into an int32, so two rows go together: 32-bit lane c of a weight vector holds (q[k][c],
/// q[k + 1][c]) sign-extended to int16, the token's broadcast holds (xq[k], xq[k + 1]). Every
/// pair sum is exact (|.| <= 2 * 128 * 127) and so is the int32 accumulation (|S| <= rows * 128 *
/// 127 < 2^31). Rows go 64 at a time (the tokens' int16 copies of xq, on the stack); then
/// int8act_pairs_avx2 runs over the strip once per 3 or 4 tokens. kRaw (the first token block of
/// a strip): w points at int8 rows (row stride ldw), read in place and stored to pk as row pairs
/// (64 bytes per pair) on the way; rows past `rows` read as zero, and xq must be zero there
/// (quantize_row pads). !kRaw: w is such a strip. (The direct path has its own kernel,
/// int8act_direct_avx2.) Always inlined, as GCC chose before that kernel came: out of line the
/// T = 256 calls measured 0.94-1.00x (Zen 1).
template <std::size_t MR, bool kRaw>
[[gnu::always_inline]] inline void int8act_kernel_avx2(std::size_t rows, const std::int8_t* xq,
                                                       std::size_t ldxq, const std::int8_t* w,
                                                       std::size_t ldw, std::size_t cols,
                                                       std::int8_t* pk, Acc32<MR>& acc) noexcept {
  MOE_ASSERT(cols <= kQR2);
  constexpr std::size_t kChunk = 64;
  // Tokens per pass: 1-4, 3 + 2, 3 + 3 (4 + 2 measured 7 % slower at T = 256: one more pass
  // over the 2 tokens' weights does not pay for the 4-token pass's register pressure).
  constexpr std::size_t G1 = MR <= 4 ? MR : (MR + 1) / 2;
  constexpr std::size_t G2 = MR - G1;
  alignas(32) std::int16_t xs[MR][kChunk];
  const std::size_t group_bytes = 32 * round_up(rows, 2);  // one 16-column group, packed
  for (std::size_t r0 = 0; r0 < rows; r0 += kChunk) {
    const std::size_t pairs = (std::min(kChunk, rows - r0) + 1) / 2;
    widen_rows<MR>(xq + r0, ldxq, 2 * pairs, &xs[0][0], kChunk);
    if constexpr (kRaw) {
      // Both rows of a pair, all their columns, converted at once (so each row's line is read
      // once per call, even when the rows share one L1 set: a row stride that is a multiple of
      // 4 KiB, as in Grok's 6144 x 32768 weights).
      for (std::size_t p = 0; p < pairs; ++p) {
        const std::size_t k = r0 + 2 * p;
        const std::int8_t* wr = w + k * ldw;
        for (std::size_t c0 = 0; c0 < cols; c0 += 16) {
          const auto [v0, v1] =
              load_row_pair(wr + c0, ldw, k + 1 < rows, std::min<std::size_t>(16, cols - c0));
          std::int8_t* d = pk + (c0 / 16) * group_bytes + 32 * r0 + 64 * p;
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), v0);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 32), v1);
        }
      }
    }
    const std::int8_t* strip = kRaw ? pk : w;
    for (std::size_t c0 = 0; c0 < cols; c0 += 16) {
      const std::int8_t* src = strip + (c0 / 16) * group_bytes + 32 * r0;
      int8act_pairs_avx2<G1>(pairs, src, &xs[0][0], kChunk, &acc.v[0][c0], kQR);
      if constexpr (G2 > 0) {
        int8act_pairs_avx2<G2>(pairs, src, &xs[G1][0], kChunk, &acc.v[G1][c0], kQR);
      }
    }
  }
}

/// y[t][c] (+)= float(a[t][c]) * (sx[t] * sw[c]) for t < G, c < n (<= 16): int8act_store's f32
/// operations (the same conversion, product and FMA, so the same bits) on the AVX2 kernels'
/// unbiased sums, held in column order (a[t][0]: columns 0-7, a[t][1]: 8-15).
template <std::size_t G>
[[gnu::always_inline]] inline void store_sums16(const __m256i (*a)[2], std::size_t n,
                                                const float* sx, const bf16* sw, float* y,
                                                std::size_t ldy, bool load_y) noexcept {
  static_assert(simd::kLanes == 8, "the AVX2 store works on 8-float vectors");
  for (std::size_t h = 0; h < 2 && 8 * h < n; ++h) {
    const std::size_t m = std::min<std::size_t>(8, n - 8 * h);
    const fbatch s = m == 8 ? simd::widen(sw + 8 * h) : simd::widen_partial(sw + 8 * h, m);
    for (std::size_t t = 0; t < G; ++t) {
      const fbatch v(_mm256_cvtepi32_ps(a[t][h]));
      const fbatch f = fbatch(sx[t]) * s;
      float* yp = y + t * ldy + 8 * h;
      const fbatch r = load_y ? simd::fma(v, f, simd::load_n(yp, m)) : v * f;
      simd::store_n(yp, r, m);
    }
  }
}

/// y[t][c] (+)= float(acc[t][c]) * (sx[t] * sw[c]) for t < mr, c < cols: the packed path's
/// store, 16 columns of a token at a time through store_sums16. Always inlined, as GCC chose
/// while it had a loop of its own (out of line, the 4-token calls ran slower).
template <std::size_t MR>
[[gnu::always_inline]] inline void int8act_store_avx2(const Acc32<MR>& acc, std::size_t mr,
                                                      const float* sx, const bf16* sw,
                                                      std::size_t cols, float* y, std::size_t ldy,
                                                      bool load_y) noexcept {
  for (std::size_t t = 0; t < mr; ++t) {
    for (std::size_t c = 0; c < cols; c += 16) {
      const auto* p = reinterpret_cast<const __m256i*>(&acc.v[t][c]);
      const __m256i a[1][2] = {{_mm256_load_si256(p), _mm256_load_si256(p + 1)}};
      store_sums16<1>(a, std::min<std::size_t>(16, cols - c), sx + t, sw + c, y + t * ldy + c, ldy,
                      load_y);
    }
  }
}

/// n (<= 16) columns of rows wr and wr + ldw (read as zero when !second) as row pairs in column
/// order: 32-bit lane c of v0 holds (q[k][c], q[k + 1][c]) as int16 for c < 8, of v1 for
/// c = 8..15. The bytes are interleaved before the sign extension, so no lane shuffle follows.
[[gnu::always_inline]] inline RowPair load_row_pair_ordered(const std::int8_t* wr, std::size_t ldw,
                                                            bool second, std::size_t n) noexcept {
  const __m128i a = load_i8x16(wr, n);
  const __m128i b = second ? load_i8x16(wr + ldw, n) : _mm_setzero_si128();
  return {_mm256_cvtepi8_epi16(_mm_unpacklo_epi8(a, b)),
          _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(a, b))};
}

/// One pass of int8act_direct_avx2: G tokens (xs rows, stride ldx int16) over NG groups of 16
/// columns of `rows` raw weight rows from w (n columns in the last group when !kFull), the sums
/// in registers from the first row pair to the store: 2 G NG accumulators, 2 weights, the
/// broadcast and a product (at most 14 ymm).
template <std::size_t G, std::size_t NG, bool kFull>
inline void int8act_direct_pass(std::size_t rows, const std::int16_t* xs, std::size_t ldx,
                                const std::int8_t* w, std::size_t ldw, std::size_t n,
                                std::size_t pf_bytes, const float* sx, const bf16* sw, float* y,
                                std::size_t ldy, bool load_y) noexcept {
  static_assert(2 * G * NG + 4 <= 16, "the sums must stay in the 16 ymm registers");
  const std::size_t last = kFull ? 16 : n;  // columns of the last group
  __m256i a[NG][G][2];
  for (auto& r : a) {
    for (auto& x : r) x[0] = x[1] = _mm256_setzero_si256();
  }
  for (std::size_t k = 0; k < rows; k += 2) {
    const std::int8_t* wr = w + k * ldw;
    const bool second = k + 1 < rows;
    if (pf_bytes != 0) prefetch_pair(wr, ldw, second, pf_bytes);
    for (std::size_t j = 0; j < NG; ++j) {
      const auto [v0, v1] = load_row_pair_ordered(wr + 16 * j, ldw, second, j + 1 < NG ? 16 : last);
      for (std::size_t t = 0; t < G; ++t) {
        const __m256i xb = broadcast_pair(xs + t * ldx + k);
        a[j][t][0] = _mm256_add_epi32(a[j][t][0], _mm256_madd_epi16(v0, xb));
        a[j][t][1] = _mm256_add_epi32(a[j][t][1], _mm256_madd_epi16(v1, xb));
      }
    }
  }
  for (std::size_t j = 0; j < NG; ++j) {
    store_sums16<G>(a[j], j + 1 < NG ? 16 : last, sx, sw + 16 * j, y + 16 * j, ldy, load_y);
  }
}

/// The AVX2 direct path (weights read in place, T <= kMR): for t < MR and c < cols (<= kQR),
/// y[t][c] (+)= float(S[t][c]) * (sx[t] * sw[c]) with S[t][c] = sum_{k < rows} q[k][c] * xq[t][k]:
/// int8act_kernel_avx2 and int8act_store_avx2 in one, the sums in registers from the first row
/// to the store (no Acc32 round trip, no lane shuffles), the weights extended as they are read.
///  * One token: all 64 columns of a row pair at once (8 accumulators), so each weight line is
///    read by one pass. The rows of a call are often a multiple of 4 KiB apart, in one L1 set,
///    where a line does not last until a second pass over the rows comes back for it.
///  * 2-5 tokens: 16 columns per pass, all tokens in it; 6 tokens as two passes of 3. (A stack
///    buffer of extended row pairs that the passes share measured 0.83-0.94x of this at 3 and 4
///    tokens and 1.00-1.04x at 6; 32 columns per pass at 2 tokens 0.96-1.04x: Zen 1.)
/// rows <= kInt8ActDirectRows; rows past `rows` read as zero and xq must be zero there
/// (quantize_row pads). pf_bytes > 0: prefetch the line that many bytes past the start of each
/// row's columns (once per row pair).
template <std::size_t MR>
inline void int8act_direct_avx2(std::size_t rows, const std::int8_t* xq, std::size_t ldxq,
                                const std::int8_t* w, std::size_t ldw, std::size_t cols,
                                std::size_t pf_bytes, const float* sx, const bf16* sw, float* y,
                                std::size_t ldy, bool load_y) noexcept {
  MOE_ASSERT(rows <= kInt8ActDirectRows && cols <= kQR);
  constexpr std::size_t kRows = kInt8ActDirectRows;
  constexpr std::size_t NG = MR == 1 ? kQR / 16 : 1;  // column groups per pass
  constexpr std::size_t G1 = MR <= 5 ? MR : MR / 2;   // tokens in the first pass
  alignas(32) std::int16_t xs[MR][kRows];
  widen_rows<MR>(xq, ldxq, rows, &xs[0][0], kRows);
  // The passes over NGp groups from group g; the first one prefetches. Always inlined: once
  // widen_rows took the loop above, GCC left it out of line for 4 and 5 tokens, and those calls
  // ran 0.84-0.93x (AVX2 build on the Intel host).
  const auto passes = [&]<std::size_t NGp, bool kFull>(std::size_t g)
      __attribute__((always_inline)) {
    const std::size_t n = cols - 16 * (g + NGp - 1);
    int8act_direct_pass<G1, NGp, kFull>(rows, &xs[0][0], kRows, w + 16 * g, ldw, n,
                                        g == 0 ? pf_bytes : 0, sx, sw + 16 * g, y + 16 * g, ldy,
                                        load_y);
    if constexpr (MR > G1) {
      int8act_direct_pass<MR - G1, NGp, kFull>(rows, &xs[G1][0], kRows, w + 16 * g, ldw, n, 0,
                                               sx + G1, sw + 16 * g, y + G1 * ldy + 16 * g, ldy,
                                               load_y);
    }
  };
  const std::size_t full = cols / 16;
  std::size_t g = 0;
  for (; g + NG <= full; g += NG) passes.template operator()<NG, true>(g);
  for (; g < full; ++g) passes.template operator()<1, true>(g);
  if (16 * g < cols) passes.template operator()<1, false>(g);
}
#endif

/// Scratch of one int8-activation task (bytes): packed strip, quantised rows, scales, sums.
struct Int8ActScratch {
  std::int8_t* strip;
  std::int8_t* xq;
  float* sx;
  std::int32_t* xsum;
  static std::size_t bytes(std::size_t kc, std::size_t tb) noexcept {
    return kc * kQR + tb * round_up(kc, 64) + tb * (sizeof(float) + sizeof(std::int32_t)) + 256;
  }
  Int8ActScratch(void* base, std::size_t kc, std::size_t tb) noexcept {
    auto* p = static_cast<std::int8_t*>(base);
    strip = p;
    xq = strip + kc * kQR;
    sx = reinterpret_cast<float*>(xq + tb * round_up(kc, 64));
    xsum = reinterpret_cast<std::int32_t*>(sx + tb);
  }
};

/// The plan of an int8-activation call: kDirect (T <= kMR: weights read in place, 16 rows per
/// step) or kPacked (kc = 4 x the f32 strip depth: the same bytes per strip). work_floats()
/// covers Int8ActScratch.
inline Plan make_int8act_plan(std::size_t T, std::size_t in, std::size_t out, const Blocking& b,
                              std::size_t scratch_bytes) noexcept {
  Plan p;
  const bool direct = T <= kMR;
  p.path = direct ? Path::kDirect : Path::kPacked;
  p.kc = std::min(round_up(in, 4), direct ? kInt8ActDirectRows : 4 * b.kc);
  // Rows of prefetch distance: at T = 1 that of Zen 5's bf16 GEMV, with which it was tuned.
  p.pf = direct ? (T == 1 ? std::size_t{8} : 16) : 0;
  if (direct) {
    const std::size_t slab = round_up(std::max(b.direct_slab_bytes, kQR), kQR);
    p.nc = slab >= out ? out : slab;
    p.tb = T;
  } else {
    p.nc = std::min(b.nc, out);
    p.n_tblocks = ceil_div(T, b.max_tb);
    p.tb = round_up(ceil_div(T, p.n_tblocks), kMR);
  }
  p.n_slabs = ceil_div(out, p.nc);
  p.n_tblocks = ceil_div(T, p.tb);
  p.strip_floats = ceil_div(Int8ActScratch::bytes(p.kc, p.tb), sizeof(float));
  split_k(p, p.tb, in, p.kc, p.work_floats(), scratch_bytes);
  return p;
}

#if MOE_MATMUL_INT8ACT_AVX2
/// One call of the AVX2 direct path (T <= kMR): MR tokens from t over columns [n, n + cols) of
/// the K step [k0, k0 + kc), into y (kept apart from run_int8act_tblock, whose packed path it
/// would otherwise share a function with).
template <std::size_t MR>
void run_int8act_direct_avx2(const Plan& plan, const Int8Weight& w, const Block& blk, std::size_t t,
                             std::size_t k0, std::size_t kc, std::size_t n, std::size_t cols,
                             const Int8ActScratch& s, bool load_y) noexcept {
  const std::size_t ldq = round_up(plan.kc, 64);
  const std::size_t ldw = w.row_stride();
  // Prefetch the same rows kAhead columns on (a task reads a K step strip after strip, all rows
  // at once), or past the slab's end the next K step's rows from the slab's start. The direct
  // plan's distance (pf rows ahead) would land in this step's 16 rows, or a whole step later:
  // 128 KiB on at the 8192-column slabs, long evicted from L1 by then.
  constexpr std::size_t kAhead = 256;
  std::size_t pfb = 0;
  if (plan.pf != 0) {
    if (n + kAhead < blk.n1) {
      pfb = kAhead;
    } else if (k0 + 2 * kc <= w.in) {
      pfb = kc * ldw + kAhead - (blk.n1 - blk.n0);
    }
  }
  int8act_direct_avx2<MR>(kc, s.xq + (t - blk.t0) * ldq, ldq, w.data + k0 * ldw + n, ldw, cols, pfb,
                          s.sx + (t - blk.t0), w.scales + (k0 / w.block_rows()) * ldw + n,
                          blk.d.p + (t - blk.t0) * blk.d.ld + (n - blk.n0), blk.d.ld, load_y);
}
#endif

/// One task of an int8-activation call (see gemm() in matmul.hpp for the Block fields).
template <std::size_t MR, Int8ActKernel K>
void run_int8act_tblock(const Plan& plan, const Int8Weight& w, const Block& blk, std::size_t t,
                        std::size_t k0, std::size_t kc, std::size_t n, std::size_t cols,
                        const Int8ActScratch& s, bool raw, bool pack_out, bool load_y) noexcept {
  const std::size_t ldq = round_up(plan.kc, 64);
  const std::int8_t* xq = s.xq + (t - blk.t0) * ldq;
  const std::size_t ldw = w.row_stride();
  const bf16* sw = w.scales + (k0 / w.block_rows()) * ldw + n;
  float* y = blk.d.p + (t - blk.t0) * blk.d.ld + (n - blk.n0);
#if MOE_MATMUL_INT8ACT_AVX2
  if constexpr (K == Int8ActKernel::kAvx2) {
    Acc32<MR> acc;
    acc.zero();
    if (raw) {  // the first token block of a packed strip packs it
      int8act_kernel_avx2<MR, true>(kc, xq, ldq, w.data + k0 * ldw + n, ldw, cols, s.strip, acc);
    } else {
      int8act_kernel_avx2<MR, false>(kc, xq, ldq, s.strip, 0, cols, nullptr, acc);
    }
    int8act_store_avx2(acc, std::min(MR, blk.t1 - t), s.sx + (t - blk.t0), sw, cols, y, blk.d.ld,
                       load_y);
    return;
  }
#endif
  Acc32<MR> acc;
  acc.zero();
  const std::size_t pf = k0 + kc + plan.pf <= w.in ? plan.pf : 0;  // rows ahead, within K
  if (!raw) {
    int8act_kernel<MR, false, false>(kc, xq, ldq, s.strip, 0, cols, 0, nullptr, acc);
  } else if (pack_out) {
    int8act_kernel<MR, true, true>(kc, xq, ldq, w.data + k0 * ldw + n, ldw, cols, 0, s.strip, acc);
  } else {
    int8act_kernel<MR, true, false>(kc, xq, ldq, w.data + k0 * ldw + n, ldw, cols, pf, nullptr,
                                    acc);
  }
  int8act_store(acc, std::min(MR, blk.t1 - t), s.xsum + (t - blk.t0), s.sx + (t - blk.t0), sw, cols,
                y, blk.d.ld, load_y);
}

/// One task of an int8-activation call with kernel K: this TU's best (kInt8ActKernel), or
/// kScalar in an AVX2 TU (the tests' twin).
template <Int8ActKernel K = kInt8ActKernel>
void run_int8act(const Plan& plan, MatrixView<const float> x, const Int8Weight& w, const Block& blk,
                 void* scratch) noexcept {
  static_assert(K == kInt8ActKernel || K == Int8ActKernel::kScalar, "not compiled in this TU");
  static_assert(!MOE_MATMUL_VNNI || K == Int8ActKernel::kVnni, "VNNI builds run the VNNI kernel");
  const Int8ActScratch s(scratch, plan.kc, plan.tb);
  const std::size_t br = w.block_rows();
  const std::size_t ldq = round_up(plan.kc, 64);
  // The scalar kernel reads the rows in place for every token block (no strip to pack).
  const bool packed = plan.path == Path::kPacked && K != Int8ActKernel::kScalar;
  // AVX2 packed strips are kQR2 columns wide (L1-sized as int16); the rest walk kQR.
  const std::size_t step = packed && K == Int8ActKernel::kAvx2 ? kQR2 : kQR;
  std::size_t block = static_cast<std::size_t>(-1);
  for (std::size_t k0 = blk.r0; k0 < blk.r1;) {
    const std::size_t k1 = std::min({k0 + plan.kc, blk.r1, (k0 / br + 1) * br});
    const std::size_t kc = k1 - k0;
    const bool load_y = blk.load_y || k0 != blk.r0;
    if (k0 / br != block) {  // a new scale block: the tokens' scales over the whole block
      block = k0 / br;
      for (std::size_t t = blk.t0; t < blk.t1; ++t) {
        s.sx[t - blk.t0] = act_scale(x.row(t) + block * br, br);
      }
    }
    for (std::size_t t = blk.t0; t < blk.t1; ++t) {
      const float sx = s.sx[t - blk.t0];
      const float inv = sx > 0.0f ? 1.0f / sx : 0.0f;  // NaN scale: NaN comparisons fail -> 0
      s.xsum[t - blk.t0] = quantize_row(x.row(t) + k0, kc, inv, s.xq + (t - blk.t0) * ldq);
    }
    for (std::size_t n = blk.n0; n < blk.n1; n += step) {
      const std::size_t cols = std::min(step, blk.n1 - n);
      for (std::size_t t = blk.t0; t < blk.t1; t += kMR) {
        const bool first = t == blk.t0;
        const bool raw = !packed || first;
        const bool pack_out = packed && first;
        dispatch_count<kMR>(blk.t1 - t, [&](auto m) {
#if MOE_MATMUL_INT8ACT_AVX2
          if constexpr (K == Int8ActKernel::kAvx2) {
            if (!packed) {
              run_int8act_direct_avx2<decltype(m)::value>(plan, w, blk, t, k0, kc, n, cols, s,
                                                          load_y);
              return;
            }
          }
#endif
          run_int8act_tblock<decltype(m)::value, K>(plan, w, blk, t, k0, kc, n, cols, s, raw,
                                                    pack_out, load_y);
        });
      }
    }
    k0 = k1;
  }
}

MOE_SIMD_DETAIL_END
