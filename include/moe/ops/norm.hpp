// moe/ops/norm.hpp: RMSNorm and its backward pass.
//
//   y = s * x * r,   r = 1 / sqrt(mean(x^2) + eps)      (per row; Zhang & Sennrich 2019)
//
// Backward, given dy (the same derivation as llm.c's layernorm_backward without the mean):
//   dx = r (s * dy) - x r^3 mean(x * s * dy)          ds += dy * x * r   (summed over rows)
//
// Per row: rms_norm, rms_norm_backward, rms_norm_scale_backward. Over the rows of a matrix, split
// over a pool in fixed chunks (deterministic): detail::rms_norm_rows_parallel and
// detail::rms_norm_backward_rows.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>

#include <moe/config.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
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

MOE_SIMD_DETAIL_BEGIN

/// y = RMSNorm(x) row by row (x and y may alias), rows split over the pool in fixed chunks.
inline void rms_norm_rows_parallel(ThreadPool& pool, MatrixView<const float> x, const float* scale,
                                   MatrixView<float> y, float eps) {
  constexpr std::size_t kRows = 8;
  const std::size_t n = (x.rows + kRows - 1) / kRows;
  if (n <= 1) {
    rms_norm_rows(x, scale, y, eps);
    return;
  }
  pool.parallel_for(n, [&](std::size_t c, std::size_t) {
    const std::size_t r0 = c * kRows, r1 = std::min(x.rows, r0 + kRows);
    for (std::size_t r = r0; r < r1; ++r) rms_norm(x.row(r), scale, y.row(r), x.cols, eps);
  });
}

/// Backward of y = RMSNorm(x, scale) over rows: dx += dL/dx (rows split over the pool) and, when
/// dscale is not null, dscale += sum over rows of dy * x * r (column slabs over the pool, rows in
/// order: deterministic). r_scratch holds x.rows floats.
inline void rms_norm_backward_rows(ThreadPool& pool, MatrixView<const float> x, const float* scale,
                                   MatrixView<const float> dy, MatrixView<float> dx, float* dscale,
                                   float eps, float* r_scratch) {
  constexpr std::size_t kRows = 8, kSlab = 256;
  const std::size_t n = x.rows, d = x.cols;
  pool.parallel_for((n + kRows - 1) / kRows, [&](std::size_t c, std::size_t) {
    const std::size_t r1 = std::min(n, (c + 1) * kRows);
    for (std::size_t r = c * kRows; r < r1; ++r) {
      r_scratch[r] = rms_norm_backward(x.row(r), scale, dy.row(r), dx.row(r), d, eps);
    }
  });
  if (dscale == nullptr) return;
  pool.parallel_for((d + kSlab - 1) / kSlab, [&](std::size_t c, std::size_t) {
    const std::size_t c0 = c * kSlab, m = std::min(kSlab, d - c0);
    for (std::size_t r = 0; r < n; ++r) {
      rms_norm_scale_backward(x.row(r) + c0, dy.row(r) + c0, r_scratch[r], dscale + c0, m);
    }
  });
}

MOE_SIMD_DETAIL_END
