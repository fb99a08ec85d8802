// moe/ops/topk.hpp: small top-k (k <= 8 of n <= 256 in the MoE router; any sizes work).
#pragma once

#include <cstddef>
#include <cstdint>

#include <moe/config.hpp>

MOE_SIMD_NAMESPACE_BEGIN

/// Writes the k largest values of x[0..n) in descending order to val[0..k) and their indices to
/// idx[0..k). Ties go to the lower index. NaN compares below every number. k <= n.
/// PLACEHOLDER scalar implementation (insertion into a sorted list of k).
inline void top_k(const float* x, std::size_t n, std::size_t k, std::uint32_t* idx,
                  float* val) noexcept {
  std::size_t filled = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const float v = x[i];
    if (v != v) continue;  // NaN: handled below if fewer than k numbers exist
    // position p: first slot whose value is strictly smaller (earlier index wins ties)
    std::size_t p = filled;
    while (p > 0 && val[p - 1] < v) --p;
    if (p >= k) continue;
    const std::size_t last = filled < k ? filled : k - 1;
    for (std::size_t q = last; q > p; --q) {
      val[q] = val[q - 1];
      idx[q] = idx[q - 1];
    }
    val[p] = v;
    idx[p] = static_cast<std::uint32_t>(i);
    if (filled < k) ++filled;
  }
  for (std::size_t i = 0; i < n && filled < k; ++i) {  // pad with NaNs in index order
    if (x[i] != x[i]) {
      val[filled] = x[i];
      idx[filled] = static_cast<std::uint32_t>(i);
      ++filled;
    }
  }
}

MOE_SIMD_NAMESPACE_END
