// moe/ops/softmax.hpp: numerically stable softmax, log-sum-exp and the logit soft-cap.
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>

#include <moe/config.hpp>

MOE_SIMD_NAMESPACE_BEGIN

/// PLACEHOLDER scalar implementations.
/// log(sum(exp(x))) computed stably (max subtracted). n >= 1.
inline float logsumexp(const float* x, std::size_t n) noexcept {
  float m = -std::numeric_limits<float>::infinity();
  for (std::size_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  if (!std::isfinite(m)) return m;
  float s = 0.0f;
  for (std::size_t i = 0; i < n; ++i) s += std::exp(x[i] - m);
  return m + std::log(s);
}
/// In-place softmax: x[i] = exp(x[i] - max) / sum. n >= 1.
inline void softmax(float* x, std::size_t n) noexcept {
  float m = -std::numeric_limits<float>::infinity();
  for (std::size_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  float s = 0.0f;
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    s += x[i];
  }
  const float inv = 1.0f / s;
  for (std::size_t i = 0; i < n; ++i) x[i] *= inv;
}
/// In-place soft-cap: x[i] = cap * tanh(x[i] / cap). cap > 0.
inline void softcap(float* x, std::size_t n, float cap) noexcept {
  const float inv = 1.0f / cap;
  for (std::size_t i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] * inv);
}
/// In-place x[i] *= s.
inline void scale(float* x, std::size_t n, float s) noexcept {
  for (std::size_t i = 0; i < n; ++i) x[i] *= s;
}

MOE_SIMD_NAMESPACE_END
