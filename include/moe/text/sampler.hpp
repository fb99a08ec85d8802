// moe/text/sampler.hpp: choosing the next token from a row of logits.
//
//   temperature <= 0         greedy: the largest logit, the LOWEST id on ties (NaN never wins)
//   temperature > 0          z = logits / temperature, then the nucleus filter, then a draw from
//                            softmax(z) over the kept tokens
//
// The nucleus (top-p) filter follows xai-org/grok-1 runners.py `top_p_filter` exactly: sort z
// ascending, p = softmax(sorted z), find the FIRST index i where the cumulative sum of p from the
// least likely end reaches 1 - top_p, and keep every token whose z is >= sorted_z[i] (ties with
// the threshold are kept). top_p = 1 keeps everything. When rounding
// keeps the cumulative sum below 1 - top_p everywhere (tiny top_p), the threshold is the largest
// logit, i.e. only the argmax (and its ties) survive; this is what the formula means (JAX's argmax
// over an all-false mask would return 0 and keep everything instead). Sums are in double.
//
// The draw is our own: a SplitMix64 stream seeded by SamplerConfig::seed gives u in [0, 1), and
// the token is the first (in id order) whose cumulative kept probability exceeds u. Same seed,
// same logits -> same tokens, on every machine and thread count. (run.py's JAX threefry stream
// cannot be reproduced bit-for-bit; its demo uses temperature 0.01, practically greedy.)
//
// The sampler owns its scratch (allocated at construction): sample() does not allocate.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include <moe/config.hpp>
#include <moe/core/error.hpp>

namespace moe {

struct SamplerConfig {
  double temperature = 0.0;  ///< <= 0: greedy
  double top_p = 1.0;        ///< nucleus mass in (0, 1]; 1 = no filtering
  std::uint64_t seed = 0;

  void validate() const {
    check_config(std::isfinite(temperature), "sampler", "temperature must be finite");
    check_config(top_p > 0.0 && top_p <= 1.0, "sampler",
                 "top_p must be in (0, 1], got " + std::to_string(top_p));
  }
  [[nodiscard]] bool greedy() const noexcept { return temperature <= 0.0; }
};

/// SplitMix64 (Steele, Lea, Flood 2014): small, fast, and the same on every platform.
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed = 0) noexcept : state_(seed) {}
  std::uint64_t next() noexcept {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, 1) with 53 random bits.
  double uniform() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

 private:
  std::uint64_t state_;
};

/// Index of the largest value, the lowest index on ties; NaNs are skipped (0 if all are NaN).
inline std::int32_t argmax(std::span<const float> x) noexcept {
  std::size_t best = 0;
  float bv = -std::numeric_limits<float>::infinity();
  bool found = false;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (x[i] != x[i]) continue;
    if (!found || x[i] > bv) {
      bv = x[i];
      best = i;
      found = true;
    }
  }
  return static_cast<std::int32_t>(best);
}

}  // namespace moe

MOE_SIMD_NAMESPACE_BEGIN

class Sampler {
 public:
  Sampler(const SamplerConfig& config, std::size_t vocab_size)
      : cfg_(config), vocab_(vocab_size), rng_(config.seed) {
    cfg_.validate();
    check_config(vocab_size > 0, "sampler", "vocab_size must be > 0");
    z_.resize(vocab_size);
    order_.resize(vocab_size);
  }

  [[nodiscard]] const SamplerConfig& config() const noexcept { return cfg_; }
  [[nodiscard]] std::size_t vocab_size() const noexcept { return vocab_; }
  /// Restarts the random stream.
  void reseed(std::uint64_t seed) noexcept { rng_ = SplitMix64(seed); }

  /// The next token for `logits` [vocab_size].
  std::int32_t sample(std::span<const float> logits) {
    check_size(logits);
    if (cfg_.greedy()) return argmax(logits);
    const double threshold = prepare(logits);
    // Draw from softmax(z) restricted to z >= threshold.
    double zmax = -std::numeric_limits<double>::infinity();
    for (double z : z_) zmax = z >= threshold && z > zmax ? z : zmax;
    double total = 0.0;
    for (double z : z_) total += z >= threshold ? std::exp(z - zmax) : 0.0;
    const double u = rng_.uniform() * total;
    double cum = 0.0;
    std::size_t last = 0;
    for (std::size_t i = 0; i < vocab_; ++i) {
      if (!(z_[i] >= threshold)) continue;
      cum += std::exp(z_[i] - zmax);
      last = i;
      if (cum > u) return static_cast<std::int32_t>(i);
    }
    return static_cast<std::int32_t>(last);  // u rounded to the very top of the mass
  }

  /// The tokens the nucleus filter keeps for `logits` (ascending ids), for tests and tooling.
  /// Greedy samplers keep only the argmax.
  std::vector<std::int32_t> kept(std::span<const float> logits) {
    check_size(logits);
    std::vector<std::int32_t> out;
    if (cfg_.greedy()) {
      out.push_back(argmax(logits));
      return out;
    }
    const double threshold = prepare(logits);
    for (std::size_t i = 0; i < vocab_; ++i) {
      if (z_[i] >= threshold) out.push_back(static_cast<std::int32_t>(i));
    }
    return out;
  }

 private:
  void check_size(std::span<const float> logits) const {
    if (logits.size() != vocab_) {
      throw ShapeError("[sampler] logits have " + std::to_string(logits.size()) +
                       " entries, expected " + std::to_string(vocab_));
    }
  }

  /// z = logits / temperature (NaN -> -inf); returns the nucleus threshold on z.
  double prepare(std::span<const float> logits) {
    const double inv_t = 1.0 / cfg_.temperature;
    for (std::size_t i = 0; i < vocab_; ++i) {
      const double z = static_cast<double>(logits[i]) * inv_t;
      z_[i] = z == z ? z : -std::numeric_limits<double>::infinity();
    }
    if (cfg_.top_p >= 1.0) return -std::numeric_limits<double>::infinity();
    // runners.py top_p_filter: ascending sort, softmax, cumulative sum from the low end.
    std::iota(order_.begin(), order_.end(), std::uint32_t{0});
    std::sort(order_.begin(), order_.end(),
              [&](std::uint32_t a, std::uint32_t b) { return z_[a] < z_[b]; });
    const double zmax = z_[order_.back()];
    double total = 0.0;
    for (double z : z_) total += std::exp(z - zmax);
    const double target = (1.0 - cfg_.top_p) * total;  // cumsum(p) >= 1 - p, unnormalised
    double cum = 0.0;
    for (std::size_t i = 0; i < vocab_; ++i) {
      cum += std::exp(z_[order_[i]] - zmax);
      if (cum >= target) return z_[order_[i]];
    }
    return zmax;  // rounding kept the sum below the target: keep the argmax only
  }

  SamplerConfig cfg_;
  std::size_t vocab_;
  SplitMix64 rng_;
  std::vector<double> z_;
  std::vector<std::uint32_t> order_;
};

MOE_SIMD_NAMESPACE_END
