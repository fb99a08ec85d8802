// moe/ops/vector.hpp: small vector primitives used by the layers (dot, axpy, add, copy, fill, sum,
// max, bf16 conversions).
//
// All functions take raw float pointers of any alignment and any length n (n = 0 is a no-op), work
// on the TU's SIMD width with the tail handled by masked loads/stores (nothing outside [0, n) is
// read or written), never allocate and never throw. Reductions (dot, sum, sum_squares) use the
// fixed blocked order of simd::blocked_sum: the result depends only on the inputs and n, never on
// the pointers' alignment or on the thread that runs them.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#include <moe/config.hpp>
#include <moe/core/bf16.hpp>
#include <moe/simd/simd.hpp>

MOE_SIMD_NAMESPACE_BEGIN

/// sum_i a[i] * b[i], accumulated in f32 with fused multiply-adds in a fixed blocked order.
inline float dot(const float* a, const float* b, std::size_t n) noexcept {
  using simd::fbatch;
  return simd::blocked_sum(n, [&](fbatch acc, std::size_t i, std::size_t c) {
    return simd::fma(simd::load_n(a + i, c), simd::load_n(b + i, c), acc);
  });
}

/// sum_i x[i], f32, fixed blocked order.
inline float sum(const float* x, std::size_t n) noexcept {
  using simd::fbatch;
  return simd::blocked_sum(
      n, [&](fbatch acc, std::size_t i, std::size_t c) { return acc + simd::load_n(x + i, c); });
}

/// sum_i x[i]^2, f32, fixed blocked order (the RMSNorm statistic).
inline float sum_squares(const float* x, std::size_t n) noexcept {
  using simd::fbatch;
  return simd::blocked_sum(n, [&](fbatch acc, std::size_t i, std::size_t c) {
    const fbatch v = simd::load_n(x + i, c);
    return simd::fma(v, v, acc);
  });
}

/// Largest element of x[0..n). NaN if any element is NaN; -inf when n == 0.
inline float max_value(const float* x, std::size_t n) noexcept {
  using simd::fbatch;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  fbatch m(kNegInf);
  simd::fmask nan(false);
  std::size_t i = 0;
  for (; i + simd::kLanes <= n; i += simd::kLanes) {
    const fbatch v = simd::load(x + i);
    nan = nan || simd::is_nan(v);
    m = simd::max(m, v);
  }
  if (i < n) {
    const fbatch v = simd::load_partial(x + i, n - i, kNegInf);
    nan = nan || simd::is_nan(v);
    m = simd::max(m, v);
  }
  if (xsimd::any(nan)) return std::numeric_limits<float>::quiet_NaN();
  return simd::reduce_max(m);
}

/// y[i] += alpha * x[i] (one fused multiply-add per element). x and y may be the same array.
inline void axpy(float alpha, const float* x, float* y, std::size_t n) noexcept {
  const simd::fbatch a(alpha);
  simd::map2(x, y, y, n,
             [&](const simd::fbatch& xv, const simd::fbatch& yv) { return simd::fma(a, xv, yv); });
}

/// y[i] = a[i] + b[i] (y may alias a or b).
inline void add(const float* a, const float* b, float* y, std::size_t n) noexcept {
  simd::map2(a, b, y, n, [](const simd::fbatch& u, const simd::fbatch& v) { return u + v; });
}

/// y[i] = x[i] (the ranges may overlap).
inline void copy(const float* x, float* y, std::size_t n) noexcept {
  if (n) std::memmove(y, x, n * sizeof(float));
}

/// x[i] = value.
inline void fill(float* x, std::size_t n, float value) noexcept {
  const simd::fbatch v(value);
  std::size_t i = 0;
  for (; i + simd::kLanes <= n; i += simd::kLanes) simd::store(x + i, v);
  if (i < n) simd::store_partial(x + i, v, n - i);
}

/// dst[i] = float(src[i]) (exact).
inline void bf16_to_f32(const bf16* src, float* dst, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    dst[i] = std::bit_cast<float>(static_cast<std::uint32_t>(src[i].bits) << 16);
  }
}

MOE_SIMD_NAMESPACE_END

MOE_SIMD_DETAIL_BEGIN
/// Round-to-nearest-even float -> bf16 bits, NaN kept quiet (same rule as moe::bf16). Written
/// branch-free so that GCC vectorises the loops below.
inline std::uint16_t f32_to_bf16_bits(float f) noexcept {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const std::uint32_t quiet = (u >> 16) | 0x0040u;
  return static_cast<std::uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
}
MOE_SIMD_DETAIL_END

MOE_SIMD_NAMESPACE_BEGIN

/// dst[i] = bf16(src[i]), round to nearest even (identical to moe::bf16's constructor).
inline void f32_to_bf16(const float* src, bf16* dst, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) dst[i].bits = detail::f32_to_bf16_bits(src[i]);
}

/// x[i] = float(bf16(x[i])): emulates a cast to bf16 and back (e.g. Grok-1's bf16 activations).
inline void round_bf16_inplace(float* x, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = std::bit_cast<float>(static_cast<std::uint32_t>(detail::f32_to_bf16_bits(x[i])) << 16);
  }
}

MOE_SIMD_NAMESPACE_END
