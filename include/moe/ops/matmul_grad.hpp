// moe/ops/matmul_grad.hpp: the two products of a linear layer's backward pass.
//
// For the forward y[T, out] = x[T, in] . W (moe::matmul), given dy = dL/dy:
//
//   matmul_backward_input(pool, dy, w, dx)    dx[T, in]  += dy . W^T   any weight type and layout
//   matmul_backward_weight(pool, x, dy, g)    g[in, out] += x^T . dy   g: a WeightGrad (f32, the
//                                                                      weight's own layout)
//   bias_backward(pool, dy, db)               db[out] += sum over rows of dy (y = x . W + b)
//
// Both ACCUMULATE (llm.c style): several paths into the same input (a residual fan-out, the
// router and the experts reading the same x) and several token blocks into the same weight add
// up without extra code; the caller zeroes gradients once per step. A frozen gradient
// (g.data == nullptr) makes matmul_backward_weight a no-op. bf16 and int8 weights are widened /
// dequantised exactly as in the forward pass (float(int8) * float(scale)).
//
// Both run on matmul's kernels (detail::gemm): dx += dy . W^T is a matmul with the transposed
// weight (an [in, out] weight read as [out, in] and the reverse; int8 through Int8WeightT), and
// g += x^T . dy one whose activations are x transposed (packed per task) and whose "weight" is dy
// (F32Rows). So they have matmul's properties: one sequential FMA chain per output element (or
// chunk sums added in chunk order), a decomposition that depends on the shapes and the host's
// blocking only, results bit-identical for every pool size. Int8ActWeight is treated as the
// exact Int8Weight here. Scratch: the pool's per-thread blocks (do not call from inside a pool
// task that keeps live data in its own scratch). No allocation. With a pool scratch too small
// for a packed strip (< 40 KiB) the simple row-by-row implementations below are used instead.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

#include <moe/config.hpp>
#include <moe/core/bf16.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/ops/matmul.hpp>
#include <moe/ops/vector.hpp>
#include <moe/ops/weights.hpp>

MOE_SIMD_DETAIL_BEGIN

/// Rows of W^T (= columns of the logical W) one task of the backward products handles together.
inline constexpr std::size_t kGradRows = 8;
/// Width of a column slab of dx when W is stored [out, in] (dx[t, slab] += dy[t, o] W[o, slab]).
inline constexpr std::size_t kGradSlab = 256;

/// dst[o] = W[i, o] as f32 for a weight whose logical row i is contiguous ([in, out] storage).
template <class W>
void widen_weight_row(const W& w, std::size_t i, float* dst) noexcept {
  if constexpr (is_int8_weight_v<W>) {
    const std::int8_t* q = w.data + i * w.out;
    const bf16* s = w.scales + (i / w.block_rows()) * w.out;
    for (std::size_t o = 0; o < w.out; ++o) dst[o] = static_cast<float>(q[o]) * load_bf16(s + o);
  } else if constexpr (std::is_same_v<typename W::element_type, bf16>) {
    bf16_to_f32(w.data + i * w.out, dst, w.out);
  } else {
    copy(w.data + i * w.out, dst, w.out);
  }
}

/// dx[:, i0 .. i0+n) += dy . W[i0 .. i0+n, :]^T for a weight with contiguous logical rows.
/// `rows` is scratch for n widened rows of W (n <= kGradRows).
template <class W>
void backward_input_rows(MatrixView<const float> dy, const W& w, std::size_t i0, std::size_t n,
                         MatrixView<float> dx, float* rows) noexcept {
  const float* r[kGradRows];
  for (std::size_t j = 0; j < n; ++j) {
    if constexpr (std::is_same_v<W, DenseWeight<float>>) {
      r[j] = w.data + (i0 + j) * w.out;
    } else {
      widen_weight_row(w, i0 + j, rows + j * w.out);
      r[j] = rows + j * w.out;
    }
  }
  for (std::size_t t = 0; t < dy.rows; ++t) {
    const float* d = dy.row(t);
    float* out = dx.row(t) + i0;
    for (std::size_t j = 0; j < n; ++j) out[j] += dot(d, r[j], w.out);
  }
}

/// dx[:, c0 .. c1) += sum_o dy[:, o] W[o, c0 .. c1) for a dense weight stored [out, in].
template <class T>
void backward_input_slab(MatrixView<const float> dy, const DenseWeight<T>& w, std::size_t c0,
                         std::size_t c1, MatrixView<float> dx, float* row) noexcept {
  const std::size_t n = c1 - c0;
  for (std::size_t t = 0; t < dy.rows; ++t) {
    const float* d = dy.row(t);
    float* out = dx.row(t) + c0;
    for (std::size_t o = 0; o < w.out; ++o) {
      if constexpr (std::is_same_v<T, float>) {
        axpy(d[o], w.data + o * w.in + c0, out, n);
      } else {
        bf16_to_f32(w.data + o * w.in + c0, row, n);
        axpy(d[o], row, out, n);
      }
    }
  }
}

/// matmul_backward_input, one widened weight row (or slab) at a time (small scratch).
template <class W>
void backward_input_simple(ThreadPool& pool, MatrixView<const float> dy, const W& w,
                           MatrixView<float> dx) {
  bool rows_contiguous = true;
  if constexpr (!is_int8_weight_v<W>) rows_contiguous = w.layout == Layout::kInOut;
  if (rows_contiguous) {
    // Rows per task: as many widened rows as the per-thread scratch holds, at most kGradRows.
    const std::size_t fit = pool.scratch_bytes() / (w.out * sizeof(float));
    const std::size_t per = std::max<std::size_t>(1, std::min(detail::kGradRows, fit));
    MOE_ASSERT((fit >= 1 || std::is_same_v<W, DenseWeight<float>>));
    (void)fit;
    pool.parallel_for((w.in + per - 1) / per, [&](std::size_t task, std::size_t thread) {
      const std::size_t i0 = task * per, n = std::min(per, w.in - i0);
      auto* rows = reinterpret_cast<float*>(pool.scratch(thread));
      detail::backward_input_rows(dy, w, i0, n, dx, rows);
    });
    return;
  }
  if constexpr (!is_int8_weight_v<W>) {
    const std::size_t tasks = (w.in + detail::kGradSlab - 1) / detail::kGradSlab;
    pool.parallel_for(tasks, [&](std::size_t task, std::size_t thread) {
      const std::size_t c0 = task * detail::kGradSlab, c1 = std::min(w.in, c0 + detail::kGradSlab);
      auto* row = reinterpret_cast<float*>(pool.scratch(thread));
      detail::backward_input_slab(dy, w, c0, c1, dx, row);
    });
  }
}

/// matmul_backward_weight, kGradRows rows of g per task, axpy over tokens (small scratch).
inline void backward_weight_simple(ThreadPool& pool, MatrixView<const float> x,
                                   MatrixView<const float> dy, const WeightGrad& g) {
  constexpr std::size_t R = kGradRows;
  if (g.layout == Layout::kInOut) {
    // g[i, :] += sum_t x[t, i] dy[t, :]
    pool.parallel_for((g.in + R - 1) / R, [&](std::size_t task, std::size_t) {
      const std::size_t i0 = task * R, n = std::min(R, g.in - i0);
      for (std::size_t t = 0; t < x.rows; ++t) {
        const float* xt = x.row(t) + i0;
        const float* d = dy.row(t);
        for (std::size_t j = 0; j < n; ++j) axpy(xt[j], d, g.data + (i0 + j) * g.out, g.out);
      }
    });
  } else {
    // g[o, :] += sum_t dy[t, o] x[t, :]
    pool.parallel_for((g.out + R - 1) / R, [&](std::size_t task, std::size_t) {
      const std::size_t o0 = task * R, n = std::min(R, g.out - o0);
      for (std::size_t t = 0; t < x.rows; ++t) {
        const float* xt = x.row(t);
        const float* d = dy.row(t) + o0;
        for (std::size_t j = 0; j < n; ++j) axpy(d[j], xt, g.data + (o0 + j) * g.in, g.in);
      }
    });
  }
}

MOE_SIMD_DETAIL_END

MOE_SIMD_NAMESPACE_BEGIN

/// dx[T, in] += dy[T, out] . W^T. dy.cols == w.out, dx.cols == w.in, equal rows; dx must not
/// overlap dy. Works for every weight type (frozen weights pass their gradient to the input too).
template <class W>
void matmul_backward_input(ThreadPool& pool, MatrixView<const float> dy, const W& w,
                           MatrixView<float> dx) {
  static_assert(is_weight_v<W>, "matmul_backward_input: W must be a weight view type");
  MOE_ASSERT(dy.cols == w.out && dx.cols == w.in && dy.rows == dx.rows);
  if (dy.rows == 0 || w.in == 0 || w.out == 0) return;
  const detail::Blocking& b = detail::host_blocking();
  if constexpr (is_int8_weight_v<W>) {
    const detail::Int8WeightT wt{w.data, w.scales, w.out, w.in, w.block_rows()};
    if (detail::gemm(pool, detail::Activations(dy), wt, dx, true, b)) return;
  } else {
    const Layout tl = w.layout == Layout::kInOut ? Layout::kOutIn : Layout::kInOut;
    const W wt{w.data, w.out, w.in, tl};
    if (detail::gemm(pool, detail::Activations(dy), wt, dx, true, b)) return;
  }
  detail::backward_input_simple(pool, dy, w, dx);
}

/// g[in, out] += x[T, in]^T . dy[T, out] (in g's own layout). No-op when g is frozen.
inline void matmul_backward_weight(ThreadPool& pool, MatrixView<const float> x,
                                   MatrixView<const float> dy, const WeightGrad& g) {
  MOE_ASSERT(x.cols == g.in && dy.cols == g.out && x.rows == dy.rows);
  if (g.frozen() || x.rows == 0 || g.in == 0 || g.out == 0) return;
  const detail::Blocking& b = detail::host_blocking();
  if (g.layout == Layout::kInOut) {  // g[i, :] += sum_t x[t, i] dy[t, :]
    const detail::F32Rows w{dy.data, dy.rows, dy.cols, dy.stride};
    if (detail::gemm(pool, detail::Activations::transposed(x), w,
                     MatrixView<float>(g.data, g.in, g.out), true, b)) {
      return;
    }
  } else {  // g[o, :] += sum_t dy[t, o] x[t, :]
    const detail::F32Rows w{x.data, x.rows, x.cols, x.stride};
    if (detail::gemm(pool, detail::Activations::transposed(dy), w,
                     MatrixView<float>(g.data, g.out, g.in), true, b)) {
      return;
    }
  }
  detail::backward_weight_simple(pool, x, dy, g);
}

/// db[c] += sum over the rows of dy[:, c]: the gradient of a bias added to every row. Column
/// slabs over the pool, rows in order within each (deterministic). Nothing when db is empty
/// (frozen).
inline void bias_backward(ThreadPool& pool, MatrixView<const float> dy, std::span<float> db) {
  if (db.empty()) return;
  MOE_ASSERT(db.size() == dy.cols);
  constexpr std::size_t kSlab = 256;
  pool.parallel_for((dy.cols + kSlab - 1) / kSlab, [&](std::size_t c, std::size_t) {
    const std::size_t c0 = c * kSlab, m = std::min(kSlab, dy.cols - c0);
    for (std::size_t t = 0; t < dy.rows; ++t)
      add(db.data() + c0, dy.row(t) + c0, db.data() + c0, m);
  });
}

MOE_SIMD_NAMESPACE_END
