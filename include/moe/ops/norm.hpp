// moe/ops/norm.hpp: RMSNorm.
#pragma once

#include <cmath>
#include <cstddef>

#include <moe/config.hpp>
#include <moe/core/tensor.hpp>
#include <moe/ops/vector.hpp>
#include <moe/simd/simd.hpp>

MOE_SIMD_NAMESPACE_BEGIN

/// y[i] = (x[i] * r) * scale[i] with r = 1 / sqrt(mean(x^2) + eps), all in f32 (Grok-1 / T5 /
/// LLaMA RMSNorm: plain scale, no "1 + scale", no mean subtraction). `scale` may be null (plain
/// normalisation). x and y may alias (in-place). n may be anything (n = 0 is a no-op).
///
/// mean(x^2) is sum_squares(x, n) / n: f32 fused multiply-adds in the fixed blocked order of
/// simd::blocked_sum, so the result depends only on the inputs. r is computed as 1.0f /
/// std::sqrt(mean + eps) (correctly rounded sqrt and division, like the f32 reference). Note that
/// f32 squares overflow for |x| > ~1.8e19 (then y = 0), exactly like an f32 reference.
inline void rms_norm(const float* x, const float* scale, float* y, std::size_t n,
                     float eps) noexcept {
  if (n == 0) return;
  const float mean = sum_squares(x, n) / static_cast<float>(n);
  const simd::fbatch r(1.0f / std::sqrt(mean + eps));
  if (scale) {
    simd::map2(x, scale, y, n,
               [&](const simd::fbatch& xv, const simd::fbatch& sv) { return (xv * r) * sv; });
  } else {
    simd::map(x, y, n, [&](const simd::fbatch& xv) { return xv * r; });
  }
}

/// RMSNorm of every row of x into y (same shape, either may have a row stride; may alias).
/// `scale` has x.cols elements (or is null).
inline void rms_norm_rows(MatrixView<const float> x, const float* scale, MatrixView<float> y,
                          float eps) noexcept {
  MOE_ASSERT(x.rows == y.rows && x.cols == y.cols);
  for (std::size_t r = 0; r < x.rows; ++r) rms_norm(x.row(r), scale, y.row(r), x.cols, eps);
}

MOE_SIMD_NAMESPACE_END
