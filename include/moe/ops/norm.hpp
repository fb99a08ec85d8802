// moe/ops/norm.hpp: RMSNorm.
#pragma once

#include <cmath>
#include <cstddef>

#include <moe/config.hpp>
#include <moe/core/tensor.hpp>

MOE_SIMD_NAMESPACE_BEGIN

/// y[i] = scale[i] * x[i] / sqrt(mean(x^2) + eps), f32 math (the mean accumulated in f32 with a
/// fixed order). `scale` may be null (plain normalisation). x and y may alias.
/// PLACEHOLDER scalar implementation.
inline void rms_norm(const float* x, const float* scale, float* y, std::size_t n,
                     float eps) noexcept {
  double ss = 0.0;
  for (std::size_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float inv = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(n)) + eps);
  for (std::size_t i = 0; i < n; ++i) y[i] = (scale ? scale[i] : 1.0f) * (x[i] * inv);
}

/// RMSNorm of every row of x into y (same shape; may alias).
inline void rms_norm_rows(MatrixView<const float> x, const float* scale, MatrixView<float> y,
                          float eps) noexcept {
  for (std::size_t r = 0; r < x.rows; ++r) rms_norm(x.row(r), scale, y.row(r), x.cols, eps);
}

MOE_SIMD_NAMESPACE_END
