// A weight view of every type (f32 / bf16 in either layout, int8 with per-block bf16 scales,
// Int8ActWeight) over random values the test owns: the backward-product tests' shared helper.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <moe/core/bf16.hpp>
#include <moe/ops/weights.hpp>

#include "test_util.hpp"

namespace moe_test {

/// The storage behind a weight made by make_weight.
struct OwnedWeight {
  std::vector<float> f32;
  std::vector<moe::bf16> b16;
  std::vector<std::int8_t> q;
  std::vector<moe::bf16> scales;
};

/// W over N(0, 1) values (int8: those values times 40, rounded and clamped to +-127, with scales
/// in [0.005, 0.02] that alternate x1 / x16 from one K block to the next, so that a product
/// using the wrong block's scales is far off). `layout` is ignored for int8 ([in, out] only).
template <class W>
W make_weight(OwnedWeight& o, std::size_t in, std::size_t out, moe::Layout layout,
              std::size_t blocks, std::uint64_t seed) {
  const std::vector<float> v = randn(in * out, seed);
  if constexpr (moe::is_int8_weight_v<W>) {
    o.q.resize(in * out);
    for (std::size_t i = 0; i < in * out; ++i) {
      o.q[i] = static_cast<std::int8_t>(std::lround(std::clamp(v[i] * 40.0f, -127.0f, 127.0f)));
    }
    const std::vector<float> s = randu(blocks * out, seed + 1, 0.005f, 0.02f);
    for (std::size_t i = 0; i < s.size(); ++i) {
      o.scales.push_back(moe::bf16(s[i] * ((i / out) % 2 ? 16.0f : 1.0f)));
    }
    return W(moe::Int8Weight{o.q.data(), o.scales.data(), in, out, blocks});
  } else if constexpr (std::is_same_v<typename W::element_type, float>) {
    o.f32 = v;
    return W{o.f32.data(), in, out, layout};
  } else {
    for (float f : v) o.b16.push_back(moe::bf16(f));
    return W{o.b16.data(), in, out, layout};
  }
}

}  // namespace moe_test
