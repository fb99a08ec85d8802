// moe/ops/vector.hpp: small vector primitives (dot, axpy, add, copy) used by the layers.
#pragma once

#include <cstddef>

#include <moe/config.hpp>

MOE_SIMD_NAMESPACE_BEGIN

/// PLACEHOLDER scalar implementations (fixed summation order, deterministic).
/// sum_i a[i] * b[i], accumulated in f32.
inline float dot(const float* a, const float* b, std::size_t n) noexcept {
  float s = 0.0f;
  for (std::size_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
/// y[i] += alpha * x[i].
inline void axpy(float alpha, const float* x, float* y, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}
/// y[i] = a[i] + b[i] (y may alias a or b).
inline void add(const float* a, const float* b, float* y, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

MOE_SIMD_NAMESPACE_END
