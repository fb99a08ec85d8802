// moe/ops/rope.hpp: rotary position embedding (RoPE).
//
// For pair j = 0 .. r/2 - 1 of a head (r = rotary_dims <= head_dim, even) at position p:
//   theta_j = p * base^(-2j / r)
//   (a, b) -> (a cos theta_j - b sin theta_j,  b cos theta_j + a sin theta_j)
// where the pair (a, b) is, by layout,
//   kHalfSplit   : dims (j, j + r/2)   GPT-NeoX / HF rotate_half / Grok-1 / llama.cpp NEOX
//   kInterleaved : dims (2j, 2j + 1)   GPT-J / RoFormer / llama.cpp NORM
// Dims r .. head_dim - 1 are left unchanged (partial rotary, as GPT-NeoX's rotary_pct and GPT-J's
// rotary_dim).
//
// Accuracy: inv_freq_j = base^(-2j/r), theta_j = p * inv_freq_j, cos and sin are all evaluated in
// double and rounded once to float, so the angles are exact to float precision at any position
// (8192 and far beyond). (JAX's Grok-1 code computes theta in f32, whose absolute phase error grows
// like p * 2^-24; at p = 8192 it is ~5e-4 rad.) The rotation is one product and one fused
// multiply-add per output, ~1 ulp of max(|a|, |b|).
//
// cos/sin tables: apply() either reads a table precomputed for positions [0, P) by precompute(P)
// (setup time; P * r floats, e.g. 4 MiB for Grok-1's 8192 x 128) or, for positions outside it,
// computes the values on the fly into a stack buffer (32 pairs at a time; no allocation). Both
// paths produce bit-identical results.
//
// Backward (training): RoPE is a rotation per pair, so its transpose is the rotation by -theta:
// apply_inverse() computes (a', b') -> (a' cos + b' sin, b' cos - a' sin) with the same tables,
// which maps dL/d(rotated) to dL/d(input) (and undoes apply() up to rounding).
//
// Thread safety: apply* are const and may run concurrently; precompute() must not run concurrently
// with them (call it during setup).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <moe/config.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/simd/simd.hpp>

namespace moe {
/// How RoPE pairs the dimensions of a head. Always explicit: the two are different models.
enum class RopeLayout : std::uint8_t {
  kHalfSplit,    ///< pairs (j, j + d/2): GPT-NeoX / HF rotate_half / Grok-1 / llama.cpp NEOX
  kInterleaved,  ///< pairs (2j, 2j + 1): GPT-J / original RoFormer / llama.cpp NORM
};
}  // namespace moe

MOE_SIMD_NAMESPACE_BEGIN

/// RoPE over the first `rotary_dims` dims of each head (default 0 = all), any base > 0, either
/// layout. Frequencies are precomputed in double at construction.
class Rope {
 public:
  Rope() = default;
  /// Throws ConfigError("[rope] ...") unless 0 < rotary_dims <= head_dim, rotary_dims even, and
  /// base > 0.
  Rope(std::size_t head_dim, double base, RopeLayout layout, std::size_t rotary_dims = 0)
      : head_dim_(head_dim), rotary_dims_(rotary_dims ? rotary_dims : head_dim), layout_(layout) {
    check_config(head_dim_ > 0 && rotary_dims_ % 2 == 0 && rotary_dims_ <= head_dim_, "rope",
                 "rotary_dims (" + std::to_string(rotary_dims_) +
                     ") must be even, > 0 and <= head_dim (" + std::to_string(head_dim_) + ")");
    check_config(base > 0, "rope", "base must be > 0, got " + std::to_string(base));
    inv_freq_.resize(rotary_dims_ / 2);
    for (std::size_t j = 0; j < inv_freq_.size(); ++j) {
      inv_freq_[j] =
          std::pow(base, -2.0 * static_cast<double>(j) / static_cast<double>(rotary_dims_));
    }
  }

  /// Precomputes the cos/sin table for positions [0, positions) (replacing any previous table;
  /// 0 frees it). Allocates positions * rotary_dims floats (twice that for kInterleaved).
  void precompute(std::size_t positions) {
    const std::size_t row = 2 * table_width();
    table_.assign(positions * row, 0.0f);
    table_.shrink_to_fit();
    for (std::size_t p = 0; p < positions; ++p) {
      float* r = table_.data() + p * row;
      fill_cos_sin(p, 0, pairs(), r, r + table_width());
    }
    table_positions_ = positions;
  }
  /// Number of positions with precomputed cos/sin (apply works for every position regardless).
  std::size_t precomputed_positions() const noexcept { return table_positions_; }

  /// Rotates x = [n_heads, head_dim] (heads contiguous) in place for position `pos`.
  void apply(float* x, std::size_t n_heads, std::size_t pos) const noexcept {
    apply_impl<false>(x, n_heads, pos);
  }
  /// The transpose of apply() (rotation by -theta), in place: the backward pass of RoPE.
  void apply_inverse(float* x, std::size_t n_heads, std::size_t pos) const noexcept {
    apply_impl<true>(x, n_heads, pos);
  }

  /// Rotates every row of x = [T, >= n_heads * head_dim] (row stride x.stride): row t is the token
  /// at position pos0 + t (a prefill block, or a decode step with the KV-cache offset as pos0).
  void apply_rows(MatrixView<float> x, std::size_t n_heads, std::size_t pos0) const noexcept {
    MOE_ASSERT(x.cols >= n_heads * head_dim_);
    for (std::size_t t = 0; t < x.rows; ++t) apply(x.row(t), n_heads, pos0 + t);
  }
  /// Rotates row t of x at position positions[t] (positions.size() == x.rows), e.g. a batch of
  /// sequences each at its own cache offset.
  void apply_rows(MatrixView<float> x, std::size_t n_heads,
                  std::span<const std::size_t> positions) const noexcept {
    MOE_ASSERT(x.cols >= n_heads * head_dim_ && positions.size() == x.rows);
    for (std::size_t t = 0; t < x.rows; ++t) apply(x.row(t), n_heads, positions[t]);
  }

  std::size_t head_dim() const noexcept { return head_dim_; }
  std::size_t rotary_dims() const noexcept { return rotary_dims_; }
  RopeLayout layout() const noexcept { return layout_; }
  /// base^(-2j / rotary_dims), j < rotary_dims / 2.
  double inv_freq(std::size_t j) const noexcept { return inv_freq_[j]; }

 private:
  static constexpr std::size_t kChunk = 32;  // pairs per on-the-fly cos/sin chunk

  template <bool Inverse>
  void apply_impl(float* x, std::size_t n_heads, std::size_t pos) const noexcept {
    if (pos < table_positions_) {
      const float* r = table_.data() + pos * 2 * table_width();
      rotate<Inverse>(x, n_heads, r, r + table_width(), 0, pairs());
      return;
    }
    alignas(64) float c[2 * kChunk];
    alignas(64) float s[2 * kChunk];
    for (std::size_t j0 = 0; j0 < pairs(); j0 += kChunk) {
      const std::size_t j1 = std::min(pairs(), j0 + kChunk);
      fill_cos_sin(pos, j0, j1, c, s);
      rotate<Inverse>(x, n_heads, c, s, j0, j1);
    }
  }

  std::size_t pairs() const noexcept { return rotary_dims_ / 2; }
  /// Floats per cos (or sin) table row: one per pair (half-split) or one per dim (interleaved).
  std::size_t table_width() const noexcept {
    return layout_ == RopeLayout::kHalfSplit ? pairs() : rotary_dims_;
  }

  /// cos/sin of pairs [j0, j1) at position pos, in table layout starting at pair j0:
  /// half-split c[j] = cos, s[j] = sin; interleaved c[2j] = c[2j+1] = cos, s[2j] = -sin,
  /// s[2j+1] = +sin (so that one fma against the pair-swapped vector rotates).
  void fill_cos_sin(std::size_t pos, std::size_t j0, std::size_t j1, float* c,
                    float* s) const noexcept {
    for (std::size_t j = j0; j < j1; ++j) {
      const double theta = static_cast<double>(pos) * inv_freq_[j];
      const float cj = static_cast<float>(std::cos(theta));
      const float sj = static_cast<float>(std::sin(theta));
      const std::size_t q = j - j0;
      if (layout_ == RopeLayout::kHalfSplit) {
        c[q] = cj;
        s[q] = sj;
      } else {
        c[2 * q] = cj;
        c[2 * q + 1] = cj;
        s[2 * q] = -sj;
        s[2 * q + 1] = sj;
      }
    }
  }

  /// Rotates pairs [j0, j1) of every head with cos/sin c, s (table layout, starting at pair j0).
  /// Both layouts compute a' = a c - round(b s) and b' = b c + round(a s) with one fma each, so
  /// they are bit-identical up to the dimension permutation. Inverse: a' = a c + round(b s),
  /// b' = b c - round(a s).
  template <bool Inverse>
  void rotate(float* x, std::size_t n_heads, const float* c, const float* s, std::size_t j0,
              std::size_t j1) const noexcept {
    using simd::fbatch;
    constexpr std::size_t W = simd::kLanes;
    if (layout_ == RopeLayout::kHalfSplit) {
      const std::size_t len = j1 - j0, half = pairs();
      for (std::size_t h = 0; h < n_heads; ++h) {
        float* va = x + h * head_dim_ + j0;
        float* vb = va + half;
        for (std::size_t j = 0; j < len; j += W) {
          const std::size_t cnt = std::min(W, len - j);
          const fbatch cb = simd::load_n(c + j, cnt), sb = simd::load_n(s + j, cnt);
          const fbatch a = simd::load_n(va + j, cnt), b = simd::load_n(vb + j, cnt);
          if constexpr (Inverse) {
            simd::store_n(va + j, simd::fma(a, cb, b * sb), cnt);
            simd::store_n(vb + j, simd::fms(b, cb, a * sb), cnt);
          } else {
            simd::store_n(va + j, simd::fms(a, cb, b * sb), cnt);
            simd::store_n(vb + j, simd::fma(b, cb, a * sb), cnt);
          }
        }
      }
    } else {
      const std::size_t len = 2 * (j1 - j0);  // dims; always even, and so is every chunk
      for (std::size_t h = 0; h < n_heads; ++h) {
        float* v = x + h * head_dim_ + 2 * j0;
        for (std::size_t d = 0; d < len; d += W) {
          const std::size_t cnt = std::min(W, len - d);
          const fbatch xv = simd::load_n(v + d, cnt);
          const fbatch cb = simd::load_n(c + d, cnt), sb = simd::load_n(s + d, cnt);
          if constexpr (Inverse) {
            simd::store_n(v + d, simd::fms(xv, cb, simd::swap_pairs(xv) * sb), cnt);
          } else {
            simd::store_n(v + d, simd::fma(xv, cb, simd::swap_pairs(xv) * sb), cnt);
          }
        }
      }
    }
  }

  std::size_t head_dim_ = 0;
  std::size_t rotary_dims_ = 0;
  RopeLayout layout_ = RopeLayout::kHalfSplit;
  std::vector<double> inv_freq_;
  std::vector<float> table_;  // [table_positions_, 2 * table_width()]: cos row part, sin row part
  std::size_t table_positions_ = 0;
};

MOE_SIMD_NAMESPACE_END
