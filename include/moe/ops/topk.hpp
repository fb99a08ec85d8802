// moe/ops/topk.hpp: small top-k (k <= 8 of n <= 256 in the MoE router; any sizes work, e.g. a
// sampler's top-40 of a 131072-entry vocabulary).
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

#include <moe/config.hpp>
#include <moe/simd/simd.hpp>

MOE_SIMD_NAMESPACE_BEGIN

/// Writes the k largest values of x[0..n) in descending order to val[0..k) and their indices to
/// idx[0..k). Requires k <= n (debug assertion; release builds write only min(k, n) entries).
///
/// Order (a strict weak order, so the result is unique and deterministic):
///   * larger value first; equal values (including -0 == +0) in increasing index order, i.e. ties
///     go to the LOWER index (jax.lax.top_k, and the "lowest expert wins" routing rule);
///   * NaN compares below every number, -inf included: NaNs are returned only when fewer than k
///     numbers exist, after all numbers, in increasing index order.
///
/// Method: insertion into the sorted list of the best k so far. Once k numbers are held, whole
/// SIMD batches are skipped unless one lane beats the current k-th value (x > kth is false for
/// NaN and for ties, which never displace an earlier index), so large n costs about one compare
/// per element. O(n + k * (number of insertions)); no allocation.
inline void top_k(const float* x, std::size_t n, std::size_t k, std::uint32_t* idx,
                  float* val) noexcept {
  MOE_ASSERT(k <= n);
  if (k > n) k = n;
  if (k == 0) return;
  std::size_t filled = 0;
  // Inserts x[i] if it belongs to the best k so far (NaNs are left for the final pass).
  auto insert = [&](std::size_t i) {
    const float v = x[i];
    if (v != v) return;
    if (filled == k && !(v > val[k - 1])) return;
    std::size_t p = filled < k ? filled : k - 1;  // slot freed at the end of the list
    while (p > 0 && val[p - 1] < v) {             // strictly smaller only: ties keep their place
      val[p] = val[p - 1];
      idx[p] = idx[p - 1];
      --p;
    }
    val[p] = v;
    idx[p] = static_cast<std::uint32_t>(i);
    if (filled < k) ++filled;
  };
  std::size_t i = 0;
  for (; i < n && filled < k; ++i) insert(i);
  if (filled == k) {
    constexpr std::size_t W = simd::kLanes;
    for (; i + W <= n; i += W) {
      if (xsimd::any(simd::load(x + i) > simd::fbatch(val[k - 1]))) {
        for (std::size_t j = 0; j < W; ++j) insert(i + j);
      }
    }
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    if (i < n && xsimd::any(simd::load_partial(x + i, n - i, kNegInf) > simd::fbatch(val[k - 1]))) {
      for (; i < n; ++i) insert(i);
    }
  }
  for (std::size_t j = 0; j < n && filled < k; ++j) {  // pad with NaNs, in index order
    if (x[j] != x[j]) {
      val[filled] = x[j];
      idx[filled] = static_cast<std::uint32_t>(j);
      ++filled;
    }
  }
}

MOE_SIMD_NAMESPACE_END
