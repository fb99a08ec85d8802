// RoPE backward: apply_inverse is the transpose of apply (<R x, y> = <x, R^T y>) for both layouts,
// partial rotary dims, positions inside and beyond the precomputed table; and it inverts apply.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <vector>

#include <moe/ops/rope.hpp>

#include "common/test_util.hpp"

TEST_CASE("rope: apply_inverse is the transpose of apply", "[train][rope]") {
  for (moe::RopeLayout layout : {moe::RopeLayout::kHalfSplit, moe::RopeLayout::kInterleaved}) {
    for (std::size_t dh : {4, 10, 32, 128}) {
      for (std::size_t rotary : {std::size_t{0}, dh / 2 + (dh / 2) % 2}) {
        moe::Rope rope(dh, 500.0, layout, rotary);
        rope.precompute(40);
        const std::size_t heads = 3;
        for (std::size_t pos : {0, 1, 17, 39, 40, 1000, 77777}) {
          const auto x = moe_test::randn(heads * dh, pos + 1);
          const auto y = moe_test::randn(heads * dh, pos + 2);
          std::vector<float> rx = x, ry = y;
          rope.apply(rx.data(), heads, pos);
          rope.apply_inverse(ry.data(), heads, pos);
          double a = 0, b = 0, scale = 0;
          for (std::size_t i = 0; i < x.size(); ++i) {
            a += static_cast<double>(rx[i]) * y[i];
            b += static_cast<double>(x[i]) * ry[i];
            scale += std::abs(static_cast<double>(x[i]) * y[i]);
          }
          INFO("layout " << static_cast<int>(layout) << " dh " << dh << " rotary " << rotary
                         << " pos " << pos);
          CHECK(std::abs(a - b) <= 1e-6 * scale);
          // R^T R x = x
          std::vector<float> back = rx;
          rope.apply_inverse(back.data(), heads, pos);
          CHECK(moe_test::diff(back.data(), x.data(), x.size()).max_abs <= 1e-5);
        }
      }
    }
  }
}
