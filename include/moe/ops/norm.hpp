// moe/ops/norm.hpp: RMSNorm and its backward pass.
//
//   y = s * x * r,   r = 1 / sqrt(mean(x^2) + eps)      (per row; Zhang & Sennrich 2019)
//
// Backward, given dy (the same derivation as llm.c's layernorm_backward without the mean):
//   dx = r (s * dy) - x r^3 mean(x * s * dy)          ds += dy * x * r   (summed over rows)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>

#include <moe/config.hpp>
#include <moe/core/tensor.hpp>
#include <moe/ops/vector.hpp>
#include <moe/simd/simd.hpp>

MOE_SIMD_NAMESPACE_BEGIN

/// r = 1 / sqrt(mean(x^2) + eps), exactly as rms_norm computes it (n > 0).
inline float rms_inv(const float* x, std::size_t n, float eps) noexcept {
  const float mean = sum_squares(x, n) / static_cast<float>(n);
  return 1.0f / std::sqrt(mean + eps);
}

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
  const simd::fbatch r(rms_inv(x, n, eps));
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

/// Backward of y = rms_norm(x, scale): dx[i] += r s[i] dy[i] - x[i] r^3 mean_j(x[j] s[j] dy[j])
/// (scale null: s = 1). Returns r (for the scale gradient). dx must not alias x or dy.
inline float rms_norm_backward(const float* x, const float* scale, const float* dy, float* dx,
                               std::size_t n, float eps) noexcept {
  if (n == 0) return 0.0f;
  using simd::fbatch;
  const float r = rms_inv(x, n, eps);
  const float xsd = simd::blocked_sum(n, [&](fbatch acc, std::size_t i, std::size_t c) {
    const fbatch sd =
        scale ? simd::load_n(scale + i, c) * simd::load_n(dy + i, c) : simd::load_n(dy + i, c);
    return simd::fma(simd::load_n(x + i, c), sd, acc);
  });
  const fbatch rb(r), c(r * r * r * (xsd / static_cast<float>(n)));
  for (std::size_t i = 0; i < n; i += simd::kLanes) {
    const std::size_t k = std::min(simd::kLanes, n - i);
    const fbatch sd =
        scale ? simd::load_n(scale + i, k) * simd::load_n(dy + i, k) : simd::load_n(dy + i, k);
    const fbatch d = simd::fnma(simd::load_n(x + i, k), c, rb * sd);
    simd::store_n(dx + i, simd::load_n(dx + i, k) + d, k);
  }
  return r;
}

/// The scale gradient of one row: dscale[i] += dy[i] * x[i] * r (r from rms_norm_backward).
inline void rms_norm_scale_backward(const float* x, const float* dy, float r, float* dscale,
                                    std::size_t n) noexcept {
  const simd::fbatch rb(r);
  for (std::size_t i = 0; i < n; i += simd::kLanes) {
    const std::size_t k = std::min(simd::kLanes, n - i);
    const simd::fbatch xr = simd::load_n(x + i, k) * rb;
    simd::store_n(dscale + i, simd::fma(simd::load_n(dy + i, k), xr, simd::load_n(dscale + i, k)),
                  k);
  }
}

MOE_SIMD_NAMESPACE_END
