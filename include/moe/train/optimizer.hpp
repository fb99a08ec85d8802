// moe/train/optimizer.hpp: AdamW, global-norm gradient clipping and a warmup + cosine schedule.
//
//   AdamW opt(store.n_elements(), {.weight_decay = 0.1f});
//   for (step = 1 ..) {
//     store.zero_grads();
//     ... forward_train / backward (accumulate several micro-batches with loss_scale = 1 / n) ...
//     const double norm = clip_grad_norm(pool, store, 1.0);  // returns the norm before clipping
//     opt.step(pool, store, schedule(step));
//   }
//
// AdamW is torch.optim.AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"),
// with the same order of operations so that both give the same numbers:
//
//   theta <- theta * (1 - lr * wd)                          (only tensors flagged `decay`)
//   (tensors flagged `frozen` are skipped altogether: no update, no decay, moments unchanged)
//   m <- b1 m + (1 - b1) g,      v <- b2 v + (1 - b2) g^2
//   theta <- theta - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//
// The state (m, v, t) is two f32 buffers of the store's layout plus the step count; it is saved
// and restored with the training checkpoint (moe/train/checkpoint.hpp). Updates are element-wise
// over fixed chunks, so they are bit-identical for every thread count; the clipping norm is a
// float64 sum in a fixed chunk order.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <moe/config.hpp>
#include <moe/core/buffer.hpp>
#include <moe/core/error.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/train/parameters.hpp>

namespace moe {

/// AdamW hyper-parameters (torch.optim.AdamW defaults, except weight_decay: torch uses 1e-2).
struct AdamWConfig {
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  ///< decoupled; applied to the tensors whose `decay` flag is set

  void validate() const {
    check_config(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, "adamw",
                 "beta1 and beta2 must be in [0, 1)");
    check_config(eps > 0 && std::isfinite(eps), "adamw", "eps must be finite and > 0");
    check_config(weight_decay >= 0 && std::isfinite(weight_decay), "adamw",
                 "weight_decay must be finite and >= 0");
  }
};

/// Learning rate of a step: linear warmup from 0, then cosine decay to min_lr at total_steps
/// (constant min_lr after). Steps count from 1, as the optimizer's.
struct LrSchedule {
  float lr = 1e-3f;
  float min_lr = 1e-4f;
  std::size_t warmup_steps = 0;
  std::size_t total_steps = 0;  ///< 0: constant lr after the warmup

  [[nodiscard]] float operator()(std::size_t step) const noexcept {
    if (warmup_steps > 0 && step <= warmup_steps) {
      return lr * static_cast<float>(step) / static_cast<float>(warmup_steps);
    }
    if (total_steps == 0) return lr;
    if (step >= total_steps) return min_lr;
    const double span = static_cast<double>(total_steps - warmup_steps);
    const double progress = static_cast<double>(step - warmup_steps) / span;
    const double c = 0.5 * (1.0 + std::cos(3.141592653589793 * progress));
    return static_cast<float>(min_lr + (lr - min_lr) * c);
  }
  void validate() const {
    check_config(lr > 0 && std::isfinite(lr) && min_lr >= 0 && min_lr <= lr, "schedule",
                 "need 0 <= min_lr <= lr and lr > 0");
    check_config(total_steps == 0 || total_steps > warmup_steps, "schedule",
                 "total_steps must exceed warmup_steps (or be 0 for a constant rate)");
  }
};

namespace detail {
/// Elements per task of the element-wise optimizer loops (fixed: independent of threads).
inline constexpr std::size_t kOptimChunk = std::size_t{1} << 16;
}  // namespace detail

}  // namespace moe

MOE_SIMD_DETAIL_BEGIN

/// The per-step constants of AdamW's element-wise update (AdamW::step).
struct AdamWStep {
  float keep, b1, b2, eps, step_size, inv_sqrt_bc2;
};

/// AdamW's update of the elements [i0, i1) (AdamW::step has the equations), in SIMD batches
/// with a scalar tail: the same operations in the same order in both.
inline void adamw_update(float* p, const float* g, float* m, float* v, std::size_t i0,
                         std::size_t i1, const AdamWStep& c) noexcept {
  using B = xsimd::batch<float>;
  const B keep(c.keep), b1(c.b1), b2(c.b2), a1(1.0f - c.b1), a2(1.0f - c.b2), eps(c.eps),
      step(c.step_size), isb(c.inv_sqrt_bc2);
  std::size_t i = i0;
  for (; i + B::size <= i1; i += B::size) {
    const B gi = B::load_unaligned(g + i);
    const B mi = b1 * B::load_unaligned(m + i) + a1 * gi;
    const B vi = b2 * B::load_unaligned(v + i) + a2 * gi * gi;
    const B pi = B::load_unaligned(p + i) * keep;
    (pi - step * mi / (xsimd::sqrt(vi) * isb + eps)).store_unaligned(p + i);
    mi.store_unaligned(m + i);
    vi.store_unaligned(v + i);
  }
  for (; i < i1; ++i) {
    const float gi = g[i];
    p[i] *= c.keep;
    m[i] = c.b1 * m[i] + (1.0f - c.b1) * gi;
    v[i] = c.b2 * v[i] + (1.0f - c.b2) * gi * gi;
    p[i] -= c.step_size * m[i] / (std::sqrt(v[i]) * c.inv_sqrt_bc2 + c.eps);
  }
}

/// sum of g[i]^2 over [i0, i1) in float64: 8 interleaved partial sums (element i into sum
/// i % 8, counted from i0), added in a fixed order, so the result depends only on the range.
inline double sum_squares(const float* g, std::size_t i0, std::size_t i1) noexcept {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::size_t i = i0;
  for (; i + 8 <= i1; i += 8) {
    for (std::size_t j = 0; j < 8; ++j) {
      acc[j] += static_cast<double>(g[i + j]) * static_cast<double>(g[i + j]);
    }
  }
  for (std::size_t j = 0; i < i1; ++i, ++j) {
    acc[j] += static_cast<double>(g[i]) * static_cast<double>(g[i]);
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

MOE_SIMD_DETAIL_END

MOE_SIMD_NAMESPACE_BEGIN

class AdamW {
 public:
  AdamW() = default;
  /// State for a store of `n_elements` (ParameterStore::n_elements()).
  AdamW(std::size_t n_elements, const AdamWConfig& config)
      : cfg_(config), m_(n_elements, 0.0f), v_(n_elements, 0.0f) {
    cfg_.validate();
  }

  [[nodiscard]] const AdamWConfig& config() const noexcept { return cfg_; }
  /// Steps taken so far (t of the bias corrections).
  [[nodiscard]] std::uint64_t steps() const noexcept { return t_; }
  [[nodiscard]] std::span<float> first_moment() noexcept { return m_.span(); }
  [[nodiscard]] std::span<float> second_moment() noexcept { return v_.span(); }
  [[nodiscard]] std::span<const float> first_moment() const noexcept { return m_.span(); }
  [[nodiscard]] std::span<const float> second_moment() const noexcept { return v_.span(); }
  /// Restores the step count (with the moments, from a checkpoint).
  void set_steps(std::uint64_t t) noexcept { t_ = t; }

  /// One update of every tensor of `store` from its gradients, at learning rate lr.
  void step(ThreadPool& pool, ParameterStore& store, float lr) {
    if (store.n_elements() != m_.size()) {
      throw ShapeError("[adamw] optimizer state has " + std::to_string(m_.size()) +
                       " elements, the parameter store " + std::to_string(store.n_elements()));
    }
    ++t_;
    const double bc1 = 1.0 - std::pow(static_cast<double>(cfg_.beta1), static_cast<double>(t_));
    const double bc2 = 1.0 - std::pow(static_cast<double>(cfg_.beta2), static_cast<double>(t_));
    const float step_size = static_cast<float>(lr / bc1);
    const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
    const float b1 = cfg_.beta1, b2 = cfg_.beta2, eps = cfg_.eps;
    float* p = store.params().data();
    const float* g = store.grads().data();
    for (const ParameterInfo& info : store.infos()) {
      if (info.frozen) continue;
      const float keep = info.decay ? 1.0f - lr * cfg_.weight_decay : 1.0f;
      const std::size_t n_tasks = (info.size + detail::kOptimChunk - 1) / detail::kOptimChunk;
      pool.parallel_for(n_tasks, [&](std::size_t task, std::size_t) {
        const std::size_t i0 = info.offset + task * detail::kOptimChunk;
        const std::size_t i1 = std::min(info.offset + info.size, i0 + detail::kOptimChunk);
        detail::adamw_update(p, g, m_.data(), v_.data(), i0, i1,
                             {keep, b1, b2, eps, step_size, inv_sqrt_bc2});
      });
    }
  }

 private:
  AdamWConfig cfg_;
  Buffer<float> m_, v_;
  std::uint64_t t_ = 0;
};

/// L2 norm of all gradients of `store` (float64, fixed order).
inline double grad_norm(ThreadPool& pool, const ParameterStore& store) {
  const std::span<const float> g = store.grads();
  const std::size_t n_tasks = (g.size() + detail::kOptimChunk - 1) / detail::kOptimChunk;
  std::vector<double> partial(n_tasks, 0.0);
  pool.parallel_for(n_tasks, [&](std::size_t task, std::size_t) {
    const std::size_t i0 = task * detail::kOptimChunk;
    const std::size_t i1 = std::min(g.size(), i0 + detail::kOptimChunk);
    partial[task] = detail::sum_squares(g.data(), i0, i1);
  });
  double s = 0.0;
  for (double x : partial) s += x;
  return std::sqrt(s);
}

/// Scales all gradients by min(1, max_norm / (norm + 1e-6)) (torch.nn.utils.clip_grad_norm_).
/// Returns the norm before clipping. max_norm <= 0 only measures.
inline double clip_grad_norm(ThreadPool& pool, ParameterStore& store, double max_norm) {
  const double norm = grad_norm(pool, store);
  if (max_norm <= 0.0) return norm;
  const double coef = max_norm / (norm + 1e-6);
  if (coef >= 1.0) return norm;
  const auto c = static_cast<float>(coef);
  const std::span<float> g = store.grads();
  const std::size_t n_tasks = (g.size() + detail::kOptimChunk - 1) / detail::kOptimChunk;
  pool.parallel_for(n_tasks, [&](std::size_t task, std::size_t) {
    const std::size_t i0 = task * detail::kOptimChunk;
    const std::size_t i1 = std::min(g.size(), i0 + detail::kOptimChunk);
    for (std::size_t i = i0; i < i1; ++i) g[i] *= c;
  });
  return norm;
}

MOE_SIMD_NAMESPACE_END
