// moe/simd/simd.hpp: the SIMD vocabulary shared by moe's element-wise kernels (xsimd 8.1).
//
// Everything here works on xsimd::batch<float> for the translation unit's default architecture
// (AVX-512 with -march=native on the reference machine, SSE2 with no flags), so the same source
// compiles with and without -march=native. It lives in moe::<isa>::simd (see config.hpp).
//
//   fbatch / fmask / kLanes        float batch, its mask, and its lane count (16, 8 or 4)
//   kVectorRegisters               architectural vector registers (32 or 16): register blocks
//   load / store                   unaligned full-width access (no pointer ever needs alignment)
//   load_partial / store_partial   the first n < kLanes elements; never touch p[n..) (masked
//                                  AVX-512/AVX instructions, or a stack bounce buffer)
//   first_n(n)                     mask of lanes [0, n)
//   swap_pairs                     [v0, v1, v2, v3, ...] -> [v1, v0, v3, v2, ...]
//   reduce_add / reduce_max        horizontal sum / max (xsimd 8.1 has only hadd, no max)
//   abs / max / exp / tanh / phi_neg_abs   vector maths (own, accuracy stated below)
//   map / map2 / blocked_sum       loop skeletons with the tail handled
//   widen / widen_partial          bf16 or int8 -> float batch (exact), full or first n lanes
//   widen(src, dst, n)             bf16 -> float arrays: the library's one bf16 widening
//   prefetch_l1 / prefetch_l2      software prefetch hints (any address, never faults)
//
// Determinism: the loop skeletons always start at element 0 (no peeling to an alignment
// boundary), so the blocking -- and with it every summation order -- depends only on n, never on
// the address of the data. Results are therefore a function of the inputs alone (for a given
// instruction set).
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>

#include <xsimd/xsimd.hpp>

#include <moe/config.hpp>
#include <moe/core/bf16.hpp>

#if XSIMD_WITH_AVX512F || XSIMD_WITH_AVX
#include <immintrin.h>
#endif

// GCC 12.2 (Debian 12) reports -Wuninitialized / -Wmaybe-uninitialized for AVX-512 intrinsics
// that pass _mm512_undefined_*() as their merge source (_mm512_reduce_add_ps, _mm512_permute_ps,
// ...; GCC bug 105593), at the function they are inlined into. The intrinsics called directly
// below are covered by this push/pop; nothing here calls an xsimd function that uses them.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

MOE_SIMD_NAMESPACE_BEGIN

namespace simd {

using arch = xsimd::default_arch;
using fbatch = xsimd::batch<float, arch>;
using fmask = xsimd::batch_bool<float, arch>;
/// Floats per batch: 16 (AVX-512), 8 (AVX), 4 (SSE2 / NEON).
inline constexpr std::size_t kLanes = fbatch::size;

static_assert(kLanes >= 1 && kLanes <= 16, "moe::simd assumes at most 16 float lanes");
/// Vector registers of the instruction set: 32 with AVX-512 (and on AArch64), 16 with AVX2 / AVX
/// / SSE. Register-blocked loops (the matmul micro-kernels, the benchmarks' FMA peak loop) size
/// their blocks to fit without spilling.
inline constexpr std::size_t kVectorRegisters = (XSIMD_WITH_AVX512F || XSIMD_WITH_NEON64) ? 32 : 16;

namespace detail {
alignas(64) inline constexpr float kIota[16] = {0, 1, 2,  3,  4,  5,  6,  7,
                                                8, 9, 10, 11, 12, 13, 14, 15};
#if XSIMD_WITH_AVX512F
inline __mmask16 low_bits(std::size_t n) noexcept {
  return static_cast<__mmask16>((1u << n) - 1u);
}
#endif
}  // namespace detail

/// Unaligned full-width load of p[0..kLanes).
inline fbatch load(const float* p) noexcept {
  return fbatch::load_unaligned(p);
}
/// Unaligned full-width store to p[0..kLanes).
inline void store(float* p, const fbatch& v) noexcept {
  v.store_unaligned(p);
}

/// Mask whose lanes [0, n) are true (n <= kLanes).
inline fmask first_n(std::size_t n) noexcept {
#if XSIMD_WITH_AVX512F
  return fmask(typename fmask::register_type(detail::low_bits(n)));
#else
  return fbatch::load_aligned(detail::kIota) < fbatch(static_cast<float>(n));
#endif
}

/// Loads p[0..n) (n <= kLanes) into lanes [0, n); the other lanes are `fill`. Never reads p[n..),
/// so it is safe at the very end of a mapping.
inline fbatch load_partial(const float* p, std::size_t n, float fill = 0.0f) noexcept {
#if XSIMD_WITH_AVX512F
  return fbatch(_mm512_mask_loadu_ps(_mm512_set1_ps(fill), detail::low_bits(n), p));
#elif XSIMD_WITH_AVX
  const fmask m = first_n(n);
  const fbatch v(_mm256_maskload_ps(p, _mm256_castps_si256(m)));  // masked-off lanes read as 0
  return xsimd::select(m, v, fbatch(fill));
#else
  alignas(64) float buf[kLanes];
  for (std::size_t i = 0; i < kLanes; ++i) buf[i] = fill;
  if (n) std::memcpy(buf, p, n * sizeof(float));
  return fbatch::load_aligned(buf);
#endif
}

/// Stores lanes [0, n) of v to p[0..n) (n <= kLanes). Never writes p[n..).
inline void store_partial(float* p, const fbatch& v, std::size_t n) noexcept {
#if XSIMD_WITH_AVX512F
  _mm512_mask_storeu_ps(p, detail::low_bits(n), v);
#elif XSIMD_WITH_AVX
  _mm256_maskstore_ps(p, _mm256_castps_si256(first_n(n)), v);
#else
  alignas(64) float buf[kLanes];
  v.store_aligned(buf);
  if (n) std::memcpy(p, buf, n * sizeof(float));
#endif
}

/// Loads count elements: a full load when count == kLanes, else load_partial (fill for the rest).
inline fbatch load_n(const float* p, std::size_t count, float fill = 0.0f) noexcept {
  return count == kLanes ? load(p) : load_partial(p, count, fill);
}
/// Stores count elements: a full store when count == kLanes, else store_partial.
inline void store_n(float* p, const fbatch& v, std::size_t count) noexcept {
  if (count == kLanes) {
    store(p, v);
  } else {
    store_partial(p, v, count);
  }
}

// ---- widening loads ---------------------------------------------------------------------------
// bf16 -> float is exact (a bf16 is the top half of a float's bits), and so is int8 -> float.
// These are the library's one widening: kernels call the batch forms, everything else the array
// form. The AVX-512 forms use the all-lanes maskz variants of the conversion intrinsics: the same
// instructions, without GCC 12's bogus -Wuninitialized on the unmasked ones (bug 105593).

namespace detail {
/// Batch of floats from a stack buffer of kLanes values computed by f(i) (portable fallback).
template <class F>
inline fbatch from_lanes(F&& f) noexcept {
  alignas(64) float buf[kLanes];
  for (std::size_t i = 0; i < kLanes; ++i) buf[i] = f(i);
  return fbatch::load_aligned(buf);
}
inline float widen_one(bf16 v) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(v.bits) << 16);
}
#if XSIMD_WITH_AVX512F
inline constexpr __mmask16 kAll16 = 0xffff;
inline __m512 widen_bf16_bits(__m256i h) noexcept {
  return _mm512_castsi512_ps(
      _mm512_maskz_slli_epi32(kAll16, _mm512_maskz_cvtepu16_epi32(kAll16, h), 16));
}
inline __m512 widen_i8_bits(__m128i b) noexcept {
  return _mm512_maskz_cvtepi32_ps(kAll16, _mm512_maskz_cvtepi8_epi32(kAll16, b));
}
#endif
}  // namespace detail

/// kLanes bf16 values as floats.
inline fbatch widen(const bf16* p) noexcept {
#if XSIMD_WITH_AVX512F
  return fbatch(detail::widen_bf16_bits(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#elif XSIMD_WITH_AVX2
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return fbatch(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
#elif XSIMD_WITH_SSE2
  if constexpr (kLanes == 4) {  // [0, h0, 0, h1, ...] as 16-bit words = h << 16 per 32-bit lane
    const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return fbatch(_mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h)));
  } else {
    return detail::from_lanes([p](std::size_t i) { return load_bf16(p + i); });
  }
#else
  return detail::from_lanes([p](std::size_t i) { return load_bf16(p + i); });
#endif
}

/// The first n <= kLanes bf16 values as floats, other lanes 0. Never reads p[n..).
inline fbatch widen_partial(const bf16* p, std::size_t n) noexcept {
#if XSIMD_WITH_AVX512BW
  return fbatch(detail::widen_bf16_bits(_mm256_maskz_loadu_epi16(detail::low_bits(n), p)));
#else
  return detail::from_lanes([p, n](std::size_t i) { return i < n ? load_bf16(p + i) : 0.0f; });
#endif
}

/// kLanes int8 values as floats.
inline fbatch widen(const std::int8_t* p) noexcept {
#if XSIMD_WITH_AVX512F
  return fbatch(detail::widen_i8_bits(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif XSIMD_WITH_AVX2
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return fbatch(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)));
#else
  return detail::from_lanes([p](std::size_t i) { return static_cast<float>(p[i]); });
#endif
}

/// The first n <= kLanes int8 values as floats, other lanes 0. Never reads p[n..).
inline fbatch widen_partial(const std::int8_t* p, std::size_t n) noexcept {
#if XSIMD_WITH_AVX512BW
  return fbatch(detail::widen_i8_bits(_mm_maskz_loadu_epi8(detail::low_bits(n), p)));
#else
  return detail::from_lanes(
      [p, n](std::size_t i) { return i < n ? static_cast<float>(p[i]) : 0.0f; });
#endif
}

/// dst[i] = float(src[i]) for i < n (exact).
inline void widen(const bf16* src, float* dst, std::size_t n) noexcept {
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store(dst + i, widen(src + i));
  if (i < n) store_partial(dst + i, widen_partial(src + i, n - i), n - i);
}

// ---- prefetch ----------------------------------------------------------------------------------
// Hints for data needed soon (L1) or a while later (L2). The address is formed from an integer,
// so prefetching past the end of a buffer (harmless in hardware) is not pointer arithmetic UB.
// Always inlined: GCC 12 deletes a call to a function that only prefetches when it does not inline
// it first (the function counts as one without effects), and so would drop the hint.

[[gnu::always_inline]] inline void prefetch_l1(std::uintptr_t addr) noexcept {
#if defined(__GNUC__)
  // NOLINTNEXTLINE(performance-no-int-to-ptr): an address, not a pointer (see above)
  __builtin_prefetch(reinterpret_cast<const void*>(addr), 0, 3);
#else
  (void)addr;
#endif
}
[[gnu::always_inline]] inline void prefetch_l2(std::uintptr_t addr) noexcept {
#if defined(__GNUC__)
  // NOLINTNEXTLINE(performance-no-int-to-ptr): an address, not a pointer (see above)
  __builtin_prefetch(reinterpret_cast<const void*>(addr), 0, 2);
#else
  (void)addr;
#endif
}

// ---- fused multiply-add ------------------------------------------------------------------------
// xsimd 8.1 has no AVX-512 fma kernels: xsimd::fma falls back to x * y + z there, which GCC may or
// may not contract. These wrappers guarantee ONE rounding wherever the hardware has FMA (AVX-512,
// FMA3); kHasFma says whether they are fused in this TU.

#if XSIMD_WITH_AVX512F
inline constexpr bool kHasFma = true;
/// x * y + z, one rounding.
inline fbatch fma(const fbatch& x, const fbatch& y, const fbatch& z) noexcept {
  return fbatch(_mm512_fmadd_ps(x, y, z));
}
/// x * y - z, one rounding.
inline fbatch fms(const fbatch& x, const fbatch& y, const fbatch& z) noexcept {
  return fbatch(_mm512_fmsub_ps(x, y, z));
}
/// z - x * y, one rounding.
inline fbatch fnma(const fbatch& x, const fbatch& y, const fbatch& z) noexcept {
  return fbatch(_mm512_fnmadd_ps(x, y, z));
}
#else
#if XSIMD_WITH_FMA3_SSE || XSIMD_WITH_FMA3_AVX || XSIMD_WITH_NEON64
inline constexpr bool kHasFma = true;
#else
inline constexpr bool kHasFma = false;
#endif
inline fbatch fma(const fbatch& x, const fbatch& y, const fbatch& z) noexcept {
  return xsimd::fma(x, y, z);
}
inline fbatch fms(const fbatch& x, const fbatch& y, const fbatch& z) noexcept {
  return xsimd::fms(x, y, z);
}
inline fbatch fnma(const fbatch& x, const fbatch& y, const fbatch& z) noexcept {
  return xsimd::fnma(x, y, z);
}
#endif

/// The exact rounding error of x * x: returns e with x * x = round(x * x) + e exactly (one fms
/// with FMA; Dekker's splitting otherwise).
inline fbatch square_residual(const fbatch& x, const fbatch& xx) noexcept {
  if constexpr (kHasFma) {
    return fms(x, x, xx);
  } else {
    const fbatch c = x * fbatch(4097.0f);  // 2^12 + 1: splits the 24-bit significand in halves
    const fbatch hi = c - (c - x);
    const fbatch lo = x - hi;
    return ((hi * hi - xx) + fbatch(2.0f) * hi * lo) + lo * lo;
  }
}

/// Sum of the lanes, in a fixed order for a given instruction set.
inline float reduce_add(const fbatch& v) noexcept {
#if XSIMD_VERSION_MAJOR >= 9
  return xsimd::reduce_add(v);
#elif XSIMD_WITH_AVX512F
  // xsimd 8.1's hadd for avx512f uses an AVX512DQ intrinsic; this one needs AVX512F only.
  return _mm512_reduce_add_ps(v);
#else
  return xsimd::hadd(v);
#endif
}

/// Largest lane. If a lane is NaN the result is unspecified (NaN or one of the numbers): callers
/// that must see NaNs test for them separately (see is_nan).
inline float reduce_max(const fbatch& v) noexcept {
#if XSIMD_WITH_AVX512F
  return _mm512_reduce_max_ps(v);
#else
  alignas(64) float buf[kLanes];
  v.store_aligned(buf);
  float m = buf[0];
  for (std::size_t i = 1; i < kLanes; ++i) m = buf[i] > m ? buf[i] : m;
  return m;
#endif
}

/// True where v is NaN. (Not `v != v`: xsimd 8.1 implements float != as an ORDERED compare on
/// AVX and AVX-512 (_CMP_NEQ_OQ), so NaN != NaN is false there.)
inline fmask is_nan(const fbatch& v) noexcept {
#if XSIMD_WITH_AVX512F
  return fmask(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q));
#elif XSIMD_WITH_AVX
  return fmask(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
#elif XSIMD_WITH_SSE2
  return fmask(_mm_cmpunord_ps(v, v));
#else
  return !(v == v);
#endif
}

/// Exchanges adjacent lanes: [v0, v1, v2, v3, ...] -> [v1, v0, v3, v2, ...] (interleaved RoPE).
inline fbatch swap_pairs(const fbatch& v) noexcept {
  static_assert(kLanes % 2 == 0, "swap_pairs needs an even lane count");
#if XSIMD_WITH_AVX512F
  return fbatch(_mm512_permute_ps(v, 0xB1));
#elif XSIMD_WITH_AVX
  return fbatch(_mm256_permute_ps(v, 0xB1));
#elif XSIMD_WITH_SSE2
  return fbatch(_mm_shuffle_ps(v, v, 0xB1));
#else
  alignas(64) float buf[kLanes];
  v.store_aligned(buf);
  for (std::size_t i = 0; i < kLanes; i += 2) std::swap(buf[i], buf[i + 1]);
  return fbatch::load_aligned(buf);
#endif
}

// ---- vector maths ------------------------------------------------------------------------------
// Own implementations rather than xsimd 8.1's: (1) xsimd's exp/erf/tanh go through AVX-512
// intrinsics that GCC 12.2 flags with -Wuninitialized inside xsimd's own functions when they are
// not inlined (sanitizer builds), out of reach of any pragma here; (2) xsimd 8.1's float exp
// returns inf for x in [88.38, 88.72] (measured); (3) a fixed implementation keeps results
// independent of the xsimd version. Coefficients: tests/ops/fit_simd_math.py (minimax relative
// error, rounded to float). Only arithmetic, fma, compares, selects, bit operations and the
// intrinsics above are used. Accuracy, checked by tests/ops/test_simd.cpp against double:
//   exp   <= 2 ulp on [-87.33, 88.72] (measured 0.84 with FMA, 1.13 without); exp(0) = 1 exactly;
//         exp(x < -87.336) = 0 (no denormals), exp(x > 88.7228) = inf, exp(-inf) = 0,
//         exp(+inf) = inf, exp(NaN) = NaN;
//   tanh  <= 3 ulp everywhere (measured 1.6), odd (tanh(-0) = -0), exactly +-1 for |x| >= 9.1;
//   phi_neg_abs(x) = Phi(-|x|) = erfc(|x| / sqrt2) / 2, <= 1e-6 relative for |x| <= 13 (measured
//         4.3e-7; Phi(-13) = 6e-39), 0 beyond ~13.2 where the true value is denormal.

namespace detail {
inline fbatch as_float(const xsimd::batch<std::int32_t, arch>& v) noexcept {
  return xsimd::bitwise_cast<fbatch>(v);
}
inline xsimd::batch<std::int32_t, arch> as_int(const fbatch& v) noexcept {
  return xsimd::bitwise_cast<xsimd::batch<std::int32_t, arch>>(v);
}
/// Horner evaluation c[0] + t (c[1] + t (c[2] + ...)) with fused multiply-adds.
template <std::size_t N>
inline fbatch horner(const fbatch& t, const float (&c)[N]) noexcept {
  fbatch acc(c[N - 1]);
  for (std::size_t i = N - 1; i-- > 0;) acc = fma(acc, t, fbatch(c[i]));
  return acc;
}
/// v << 23 (moves an integer into a float's exponent field).
inline xsimd::batch<std::int32_t, arch> shift_to_exponent(
    const xsimd::batch<std::int32_t, arch>& v) noexcept {
#if XSIMD_WITH_AVX512F
  return xsimd::batch<std::int32_t, arch>(_mm512_slli_epi32(v, 23));
#else
  return v << 23;
#endif
}
}  // namespace detail

/// |x| (clears the sign bit; NaN stays NaN).
inline fbatch abs(const fbatch& x) noexcept {
  using ib = xsimd::batch<std::int32_t, arch>;
  return detail::as_float(detail::as_int(x) & ib(0x7fffffff));
}
/// Sign bit of x (as a float batch holding -0.0f or +0.0f).
inline fbatch sign_bit(const fbatch& x) noexcept {
  using ib = xsimd::batch<std::int32_t, arch>;
  return detail::as_float(detail::as_int(x) & ib(static_cast<std::int32_t>(0x80000000u)));
}
/// b > a ? b : a per lane: the larger number; a where either is NaN or they compare equal. (The
/// x86 max instructions return their second operand in those cases, hence the swapped order.)
inline fbatch max(const fbatch& a, const fbatch& b) noexcept {
#if XSIMD_WITH_AVX512F
  return fbatch(_mm512_max_ps(b, a));
#elif XSIMD_WITH_AVX
  return fbatch(_mm256_max_ps(b, a));
#elif XSIMD_WITH_SSE2
  return fbatch(_mm_max_ps(b, a));
#else
  return xsimd::select(b > a, b, a);
#endif
}

/// e^x. Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, e^r = 1 + r (1 + r P(r)), then n is
/// added to the exponent field (no float->int conversion or shift instructions).
inline fbatch exp(const fbatch& x) noexcept {
  using ib = xsimd::batch<std::int32_t, arch>;
  static constexpr float kP[] = {0.5f,           0.166666672f,   0.0416664667f,
                                 0.00833336078f, 0.00139335974f, 0.000198577996f};
  constexpr float kLo = -87.336f;        // just above -126 ln2 (smallest normal result)
  constexpr float kHi = 88.7228f;        // just below 128 ln2 (largest finite result)
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  // Lanes outside [kLo, kHi] (and NaN) compute garbage below and are replaced at the end; the
  // integer ops wrap harmlessly (vector instructions, no C++ signed arithmetic).
  const fbatch t = fma(x, fbatch(1.44269504f), fbatch(kMagic));  // magic + round(x/ln2)
  const fbatch n = t - fbatch(kMagic);
  fbatch r = fma(n, fbatch(-0.693359375f), x);  // ln2 split: hi part has 9 bits
  r = fma(n, fbatch(2.12194440e-4f), r);        // -lo part (lo = ln2 - hi < 0)
  const fbatch one(1.0f);
  const fbatch p = fma(r, fma(r, detail::horner(r, kP), one), one);
  const ib ni = detail::as_int(t) - detail::as_int(fbatch(kMagic));  // round(x / ln2) as int
  const fbatch y = detail::as_float(detail::as_int(p) + detail::shift_to_exponent(ni));
  const fbatch inf(std::numeric_limits<float>::infinity());
  fbatch res = xsimd::select(x > fbatch(kHi), inf, y);
  res = xsimd::select(x < fbatch(kLo), fbatch(0.0f), res);
  return xsimd::select(is_nan(x), x, res);
}

/// tanh(x): a + a^3 P(a^2) for a = |x| < 0.55, else 1 - 2 / (e^{2a} + 1); sign restored.
inline fbatch tanh(const fbatch& x) noexcept {
  static constexpr float kP[] = {-0.333333313f, 0.133331209f, -0.0539103076f, 0.0213132706f,
                                 -0.00661593629f};
  const fbatch a = abs(x);
  const auto small = a < fbatch(0.55f);
  fbatch r;
  if (xsimd::all(small)) {  // common for soft-capped logits: skip the exp
    const fbatch a2 = a * a;
    r = fma(a * a2, detail::horner(a2, kP), a);
  } else {
    const fbatch one(1.0f);
    const fbatch large = one - fbatch(2.0f) / (exp(a + a) + one);
    if (xsimd::any(small)) {
      const fbatch a2 = a * a;
      r = xsimd::select(small, fma(a * a2, detail::horner(a2, kP), a), large);
    } else {
      r = large;
    }
  }
  return r | sign_bit(x);
}

/// Phi(-|x|) = erfc(|x| / sqrt2) / 2, the standard normal tail, with small RELATIVE error (used by
/// the exact GELU). t e^{-x^2/2} P(t), t = 1 / (1 + 0.3 |x|); x^2/2 is formed exactly (x * x plus
/// its fma residual) so that the tail keeps its digits. NaN in, NaN out.
inline fbatch phi_neg_abs(const fbatch& x) noexcept {
  static constexpr float kP[] = {0.119686536f,  0.119574636f,   0.110213205f, 0.0784880817f,
                                 0.0958858579f, -0.0789417103f, 0.191230044f, -0.227814406f,
                                 0.112272143f,  -0.020594405f};
  const fbatch a = xsimd::select(abs(x) > fbatch(20.0f), fbatch(20.0f), abs(x));  // keeps NaN
  const fbatch one(1.0f), half(0.5f);
  const fbatch t = one / fma(a, fbatch(0.3f), one);
  const fbatch s = a * a;
  const fbatch e = square_residual(a, s);                        // a^2 - s exactly
  const fbatch g = exp(fbatch(-0.5f) * s) * fnma(half, e, one);  // e^{-s/2} e^{-e/2}
  return t * detail::horner(t, kP) * g;
}

// ---- loop skeletons ----------------------------------------------------------------------------

/// y[i] = op(x[i]) batch by batch; the tail goes through load_partial/store_partial (padding lanes
/// hold 0, their results are discarded). y may alias x.
template <class Op>
inline void map(const float* x, float* y, std::size_t n, Op op) noexcept {
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store(y + i, op(load(x + i)));
  if (i < n) store_partial(y + i, op(load_partial(x + i, n - i)), n - i);
}

/// y[i] = op(a[i], b[i]). y may alias a or b.
template <class Op>
inline void map2(const float* a, const float* b, float* y, std::size_t n, Op op) noexcept {
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store(y + i, op(load(a + i), load(b + i)));
  if (i < n) {
    const std::size_t r = n - i;
    store_partial(y + i, op(load_partial(a + i, r), load_partial(b + i, r)), r);
  }
}

/// Deterministic blocked reduction over [0, n). `step(acc, i, count)` returns acc updated with
/// elements [i, i + count) (count == kLanes, or the tail count < kLanes, whose padding lanes must
/// contribute 0). Element i always lands in accumulator (i / kLanes) % 4 of the main loop, the
/// remaining full batches in accumulator 0 and the tail in accumulator 1; the accumulators are
/// combined as (a0 + a1) + (a2 + a3) and then reduce_add. The order depends only on n.
template <class Step>
inline float blocked_sum(std::size_t n, Step step) noexcept {
  fbatch a0(0.0f), a1(0.0f), a2(0.0f), a3(0.0f);
  std::size_t i = 0;
  for (; i + 4 * kLanes <= n; i += 4 * kLanes) {
    a0 = step(a0, i, kLanes);
    a1 = step(a1, i + kLanes, kLanes);
    a2 = step(a2, i + 2 * kLanes, kLanes);
    a3 = step(a3, i + 3 * kLanes, kLanes);
  }
  for (; i + kLanes <= n; i += kLanes) a0 = step(a0, i, kLanes);
  if (i < n) a1 = step(a1, i, n - i);
  return reduce_add((a0 + a1) + (a2 + a3));
}

}  // namespace simd

MOE_SIMD_NAMESPACE_END

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
