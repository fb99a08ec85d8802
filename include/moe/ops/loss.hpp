// moe/ops/loss.hpp: softmax cross-entropy over logits rows with an ignore id, and its backward
// fused with the softmax.
//
//   loss_t = logsumexp(z_t) - z_t[target_t]               (rows whose target is ignore_id: none)
//   L      = (1 / N) sum_t loss_t,  N = the number of counted rows
//   dL/dz_t = (softmax(z_t) - onehot(target_t)) / N       (0 for ignored rows)
//
// as llm.c's crossentropy_forward / crossentropy_softmax_backward, with the mean over the counted
// tokens only (PyTorch's cross_entropy(..., ignore_index, reduction="mean")). The sum over rows is
// accumulated in double in row order, so the loss is the same for every pool size.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>

#include <moe/config.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/ops/softmax.hpp>
#include <moe/ops/vector.hpp>
#include <moe/simd/simd.hpp>

namespace moe {
/// Sum of the per-row losses of the counted rows, and their number.
struct CrossEntropySum {
  double sum = 0.0;
  std::size_t counted = 0;
  [[nodiscard]] double mean() const noexcept {
    return counted ? sum / static_cast<double>(counted) : 0.0;
  }
};
}  // namespace moe

MOE_SIMD_NAMESPACE_BEGIN

/// logsumexp(z) - z[target] for one row of n logits.
inline float cross_entropy(const float* z, std::size_t n, std::size_t target) noexcept {
  return logsumexp(z, n) - z[target];
}

/// In place: z <- scale * (softmax(z) - onehot(target)), one row.
inline void cross_entropy_backward(float* z, std::size_t n, std::size_t target,
                                   float scale) noexcept {
  softmax(z, n);
  z[target] -= 1.0f;
  moe::scale(z, n, scale);
}

/// Cross-entropy of every row of `logits` against `targets` (one per row; rows whose target is
/// `ignore_id` are skipped). `row_loss` (scratch, logits.rows floats) receives each row's loss
/// (0 for skipped rows). Targets must be ignore_id or in [0, logits.cols) (the caller checks).
inline CrossEntropySum softmax_cross_entropy(ThreadPool& pool, MatrixView<const float> logits,
                                             std::span<const std::int32_t> targets,
                                             std::int32_t ignore_id, float* row_loss) {
  MOE_ASSERT(targets.size() == logits.rows);
  constexpr std::size_t kRows = 8;
  const std::size_t n = logits.rows;
  pool.parallel_for((n + kRows - 1) / kRows, [&](std::size_t task, std::size_t) {
    const std::size_t t1 = std::min(n, (task + 1) * kRows);
    for (std::size_t t = task * kRows; t < t1; ++t) {
      row_loss[t] = targets[t] == ignore_id ? 0.0f
                                            : cross_entropy(logits.row(t), logits.cols,
                                                            static_cast<std::size_t>(targets[t]));
    }
  });
  CrossEntropySum r;
  for (std::size_t t = 0; t < n; ++t) {
    if (targets[t] == ignore_id) continue;
    r.sum += row_loss[t];
    ++r.counted;
  }
  return r;
}

/// In place: logits <- scale * dL/dz for L = sum over counted rows of loss_t (pass scale = 1 / N
/// for the mean); skipped rows become 0.
inline void softmax_cross_entropy_backward(ThreadPool& pool, MatrixView<float> logits,
                                           std::span<const std::int32_t> targets,
                                           std::int32_t ignore_id, float scale) {
  MOE_ASSERT(targets.size() == logits.rows);
  constexpr std::size_t kRows = 8;
  const std::size_t n = logits.rows;
  pool.parallel_for((n + kRows - 1) / kRows, [&](std::size_t task, std::size_t) {
    const std::size_t t1 = std::min(n, (task + 1) * kRows);
    for (std::size_t t = task * kRows; t < t1; ++t) {
      if (targets[t] == ignore_id) {
        fill(logits.row(t), logits.cols, 0.0f);
      } else {
        cross_entropy_backward(logits.row(t), logits.cols, static_cast<std::size_t>(targets[t]),
                               scale);
      }
    }
  });
}

MOE_SIMD_NAMESPACE_END
