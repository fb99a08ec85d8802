// moe/ops/rope.hpp: rotary position embedding (RoPE).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <moe/config.hpp>
#include <moe/core/error.hpp>

namespace moe {
/// How RoPE pairs the dimensions of a head. Always explicit: the two are different models.
enum class RopeLayout : std::uint8_t {
  kHalfSplit,    ///< pairs (j, j + d/2): GPT-NeoX / HF rotate_half / Grok-1 / llama.cpp NEOX
  kInterleaved,  ///< pairs (2j, 2j + 1): GPT-J / original RoFormer / llama.cpp NORM
};
}  // namespace moe

MOE_SIMD_NAMESPACE_BEGIN

/// RoPE over the first `rotary_dims` dims of each head (default: all), theta_j = pos *
/// base^(-2j / rotary_dims). Frequencies are precomputed in double at construction.
/// PLACEHOLDER scalar implementation.
class Rope {
 public:
  Rope() = default;
  Rope(std::size_t head_dim, double base, RopeLayout layout, std::size_t rotary_dims = 0)
      : head_dim_(head_dim), rotary_dims_(rotary_dims ? rotary_dims : head_dim), layout_(layout) {
    check_config(head_dim_ > 0 && rotary_dims_ % 2 == 0 && rotary_dims_ <= head_dim_, "rope",
                 "rotary_dims must be even and <= head_dim");
    check_config(base > 0, "rope", "base must be > 0");
    inv_freq_.resize(rotary_dims_ / 2);
    for (std::size_t j = 0; j < inv_freq_.size(); ++j) {
      inv_freq_[j] = std::pow(base, -2.0 * static_cast<double>(j) / static_cast<double>(rotary_dims_));
    }
  }

  /// Rotates x = [n_heads, head_dim] (heads contiguous) in place for position `pos`.
  void apply(float* x, std::size_t n_heads, std::size_t pos) const noexcept {
    const std::size_t half = rotary_dims_ / 2;
    for (std::size_t j = 0; j < half; ++j) {
      const double theta = static_cast<double>(pos) * inv_freq_[j];
      const float c = static_cast<float>(std::cos(theta)), s = static_cast<float>(std::sin(theta));
      for (std::size_t h = 0; h < n_heads; ++h) {
        float* v = x + h * head_dim_;
        const std::size_t a = layout_ == RopeLayout::kHalfSplit ? j : 2 * j;
        const std::size_t b = layout_ == RopeLayout::kHalfSplit ? j + half : 2 * j + 1;
        const float x0 = v[a], x1 = v[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x1 * c + x0 * s;
      }
    }
  }

  std::size_t head_dim() const noexcept { return head_dim_; }
  std::size_t rotary_dims() const noexcept { return rotary_dims_; }
  RopeLayout layout() const noexcept { return layout_; }

 private:
  std::size_t head_dim_ = 0;
  std::size_t rotary_dims_ = 0;
  RopeLayout layout_ = RopeLayout::kHalfSplit;
  std::vector<double> inv_freq_;
};

MOE_SIMD_NAMESPACE_END
