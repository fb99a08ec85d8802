// moe/ops/detail/matmul_simd.hpp: the small vector vocabulary the matmul kernels are written in.
//
// `Vec` has one f32 register type and static functions: loads that widen f32 / bf16 / int8 to
// f32 (exactly), FMA, masked ("partial") loads and stores for row and column tails, and a
// horizontal sum. Two implementations:
//
//  * MOE_MATMUL_AVX512 (the TU has AVX-512 F+BW+VL+DQ): raw intrinsics. int8 widens with
//    vpmovsxbd + vcvtdq2ps, bf16 with vpmovzxwd + a 16-bit shift; tails use mask registers, so a
//    partial load costs the same as a full one.
//  * otherwise: xsimd 8.1's default batch<float> (SSE2 / AVX2 / NEON ...). The widening loads and
//    the tails go through a small stack buffer; this path exists for portability, not speed.
//
// Every load is unaligned (weights come from mmap'd files at arbitrary offsets, activations from
// views with arbitrary strides). Nothing here allocates.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include <moe/config.hpp>
#include <moe/core/bf16.hpp>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define MOE_MATMUL_AVX512 1
#include <immintrin.h>
#else
#define MOE_MATMUL_AVX512 0
#endif

#if defined(MOE_MM_PREFETCH)
// defined by the includer (tuning experiments)
#elif defined(__GNUC__)
/// Read prefetch into all cache levels. The address is formed from an integer so that prefetching
/// past the end of a buffer (harmless in hardware) is not pointer arithmetic UB.
#define MOE_MM_PREFETCH(addr) __builtin_prefetch(reinterpret_cast<const void*>(addr), 0, 3)
#else
#define MOE_MM_PREFETCH(addr) ((void)(addr))
#endif
#if !defined(MOE_MM_PREFETCH_L2)
#if defined(__GNUC__)
/// Read prefetch into L2 (not L1): for data needed a while later.
#define MOE_MM_PREFETCH_L2(addr) __builtin_prefetch(reinterpret_cast<const void*>(addr), 0, 2)
#else
#define MOE_MM_PREFETCH_L2(addr) ((void)(addr))
#endif
#endif


MOE_SIMD_DETAIL_BEGIN

#if MOE_MATMUL_AVX512

struct Vec {
  using V = __m512;
  using Mask = __mmask16;
  static constexpr std::size_t kLanes = 16;
  static constexpr const char* kName = "avx512";

  /// Mask of the first n lanes (n >= 16: all lanes).
  static Mask mask(std::size_t n) noexcept {
    return n >= 16 ? static_cast<Mask>(0xffff) : static_cast<Mask>((1u << n) - 1u);
  }
  static V zero() noexcept { return _mm512_setzero_ps(); }
  static V set1(float a) noexcept { return _mm512_set1_ps(a); }
  static V fma(V a, V b, V c) noexcept { return _mm512_fmadd_ps(a, b, c); }
  static V mul(V a, V b) noexcept { return _mm512_mul_ps(a, b); }
  static V add(V a, V b) noexcept { return _mm512_add_ps(a, b); }
  /// Fixed-order horizontal sum (written out: _mm512_reduce_add_ps trips GCC bug 105593 too).
  static float hsum(V v) noexcept {
    const __m512d d = _mm512_castps_pd(v);
    const __m256 lo = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xff, d, 0));
    const __m256 hi = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xff, d, 1));
    const __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    return _mm_cvtss_f32(s4);
  }

  static V load(const float* p) noexcept { return _mm512_loadu_ps(p); }
  static V load(const float* p, Mask m) noexcept { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, V v) noexcept { _mm512_storeu_ps(p, v); }
  static void store(float* p, V v, Mask m) noexcept { _mm512_mask_storeu_ps(p, m, v); }

  // The widening conversions use the all-lanes maskz forms: same instructions, but they avoid
  // GCC 12's bogus -Wuninitialized on the unmasked intrinsics (GCC bug 105593).
  static constexpr __mmask16 kAll = 0xffff;
  static V widen_bf16(__m256i h) noexcept {
    return _mm512_castsi512_ps(
        _mm512_maskz_slli_epi32(kAll, _mm512_maskz_cvtepu16_epi32(kAll, h), 16));
  }
  static V load(const bf16* p) noexcept {
    return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static V load(const bf16* p, Mask m) noexcept {
    return widen_bf16(_mm256_maskz_loadu_epi16(m, p));
  }

  static V widen_i8(__m128i b) noexcept {
    return _mm512_maskz_cvtepi32_ps(kAll, _mm512_maskz_cvtepi8_epi32(kAll, b));
  }
  static V load(const std::int8_t* p) noexcept {
    return widen_i8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static V load(const std::int8_t* p, Mask m) noexcept {
    return widen_i8(_mm_maskz_loadu_epi8(m, p));
  }
};

#else  // portable xsimd path

struct Vec {
  using B = xsimd::batch<float>;
  using V = B;
  using Mask = std::size_t;  ///< number of valid lanes
  static constexpr std::size_t kLanes = B::size;
  static constexpr const char* kName = "xsimd";

  static Mask mask(std::size_t n) noexcept { return n >= kLanes ? kLanes : n; }
  static V zero() noexcept { return B(0.0f); }
  static V set1(float a) noexcept { return B(a); }
  static V fma(V a, V b, V c) noexcept { return xsimd::fma(a, b, c); }
  static V mul(V a, V b) noexcept { return a * b; }
  static V add(V a, V b) noexcept { return a + b; }
  static float hsum(V v) noexcept { return xsimd::hadd(v); }

  static V load(const float* p) noexcept { return B::load_unaligned(p); }
  static V load(const float* p, Mask m) noexcept {
    alignas(64) float buf[kLanes] = {};
    std::memcpy(buf, p, m * sizeof(float));
    return B::load_aligned(buf);
  }
  static void store(float* p, V v) noexcept { v.store_unaligned(p); }
  static void store(float* p, V v, Mask m) noexcept {
    alignas(64) float buf[kLanes];
    v.store_aligned(buf);
    std::memcpy(p, buf, m * sizeof(float));
  }
  static V load(const bf16* p) noexcept { return load(p, kLanes); }
  static V load(const bf16* p, Mask m) noexcept {
    alignas(64) float buf[kLanes] = {};
    for (std::size_t i = 0; i < m; ++i) buf[i] = p[i].to_float();
    return B::load_aligned(buf);
  }
  static V load(const std::int8_t* p) noexcept { return load(p, kLanes); }
  static V load(const std::int8_t* p, Mask m) noexcept {
    alignas(64) float buf[kLanes] = {};
    for (std::size_t i = 0; i < m; ++i) buf[i] = static_cast<float>(p[i]);
    return B::load_aligned(buf);
  }
};

#endif

/// Bytes of one cache line (prefetch granularity).
inline constexpr std::size_t kCacheLine = 64;

MOE_SIMD_DETAIL_END

