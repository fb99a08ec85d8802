// moe/ops/matmul.hpp: Y[T, out] = X[T, in] . W for every weight type and layout.
//
// PLACEHOLDER implementation (correct, threaded by output columns, not tuned). The tuned kernels
// replace the bodies below without changing the signatures.
#pragma once

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include <moe/config.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/ops/weights.hpp>

MOE_SIMD_NAMESPACE_BEGIN

/// Y[T, out] = X[T, in] . W. Accumulates in f32. x.cols == w.in, y.cols == w.out,
/// x.rows == y.rows (checked with MOE_ASSERT only: callers validate shapes at construction).
/// Results are bit-identical for every pool size. No allocation.
template <class W>
void matmul(ThreadPool& pool, MatrixView<const float> x, const W& w, MatrixView<float> y) {
  MOE_ASSERT(x.cols == w.in && y.cols == w.out && x.rows == y.rows);
  constexpr std::size_t kChunk = 256;
  const std::size_t n_chunks = (w.out + kChunk - 1) / kChunk;
  pool.parallel_for(n_chunks, [&](std::size_t c, std::size_t) {
    const std::size_t o0 = c * kChunk, o1 = std::min(w.out, o0 + kChunk);
    for (std::size_t t = 0; t < x.rows; ++t) {
      const float* xr = x.row(t);
      float* yr = y.row(t);
      for (std::size_t o = o0; o < o1; ++o) {
        float acc = 0.0f;
        for (std::size_t i = 0; i < w.in; ++i) acc += xr[i] * w.at(i, o);
        yr[o] = acc;
      }
    }
  });
}

/// y[out] = x[in] . W (one token).
template <class W>
void matvec(ThreadPool& pool, const float* x, const W& w, float* y) {
  matmul(pool, MatrixView<const float>(x, 1, w.in), w, MatrixView<float>(y, 1, w.out));
}

MOE_SIMD_NAMESPACE_END
