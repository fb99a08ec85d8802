// Random int8 weight data for the kernel tests, in Grok-1's format: int8 values uniform over
// [-128, 127] and `blocks` rows of bf16 scales of either sign (magnitudes 0.0025-0.02).
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include <moe/core/bf16.hpp>

#include "common/test_util.hpp"

namespace moe_test {

struct Int8Data {
  std::vector<std::int8_t> q;  ///< [rows, cols]
  std::vector<moe::bf16> s;    ///< [blocks, cols]
};

inline Int8Data random_int8(std::size_t rows, std::size_t cols, std::size_t blocks,
                            std::uint64_t seed) {
  Int8Data w;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> d(-128, 127);
  w.q.resize(rows * cols);
  for (auto& v : w.q) v = static_cast<std::int8_t>(d(rng));
  const auto mag = randu(blocks * cols, seed + 1, 0.25f, 2.0f);
  w.s.resize(blocks * cols);
  for (std::size_t i = 0; i < w.s.size(); ++i) {
    w.s[i] = moe::bf16((i % 3 ? 1.0f : -1.0f) * mag[i] * 0.01f);
  }
  return w;
}

}  // namespace moe_test
