// rms_norm / rms_norm_rows against the double twin (tests/reference/ops_ref.hpp).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <vector>

#include <moe/core/tensor.hpp>
#include <moe/ops/norm.hpp>

#include "common/test_util.hpp"
#include "ops/ops_test_util.hpp"
#include "reference/ops_ref.hpp"

using ops_test::kSizes;
using ops_test::kU;

namespace {
/// Relative error bound of y[i], in f32 units: the mean of squares is a sum of positive terms
/// (relative error <= blocked_sum_bound(n) u, plus the square's own rounding and the division by
/// n); the sqrt halves that, then the add of eps, the sqrt, the division and the two products each
/// add at most one rounding.
double rms_tol(std::size_t n) {
  return (0.5 * (ops_test::blocked_sum_bound(n) + 2.0) + 6.0) * kU;
}
}  // namespace

TEST_CASE("rms_norm: matches the double twin with and without scale, any size and placement",
          "[ops][norm]") {
  for (std::size_t n : kSizes) {
    for (bool with_scale : {true, false}) {
      INFO("n = " << n << " scale = " << with_scale);
      const auto x = moe_test::randn(n, 1000 + n, 3.0f);
      const auto s = moe_test::randu(n, 2000 + n, 0.5f, 2.0f);
      const auto ref = moe_ref::rms_norm(x.data(), with_scale ? s.data() : nullptr, n, 1e-5);

      ops_test::GuardedFloats gx(n), gs(n), gy(n);
      gx.assign(x);
      gs.assign(s);
      moe::rms_norm(gx.data(), with_scale ? gs.data() : nullptr, gy.data(), n, 1e-5f);
      const auto d = moe_test::diff(gy.data(), ref.data(), n, 1e-30);
      INFO(d.str());
      CHECK(d.max_rel <= rms_tol(n));

      // In place at a misaligned address gives the same bits.
      ops_test::OffsetFloats ox(n, 1);
      ox.assign(x);
      moe::rms_norm(ox.data(), with_scale ? s.data() : nullptr, ox.data(), n, 1e-5f);
      const auto in_place = ox.vec(n);
      for (std::size_t i = 0; i < n; ++i)
        REQUIRE(ops_test::bits(in_place[i]) == ops_test::bits(gy[i]));
    }
  }
}

TEST_CASE("rms_norm: eps matters for tiny inputs, zeros stay zero, scale is plain (no 1 + s)",
          "[ops][norm]") {
  std::vector<float> x(33, 0.0f), y(33, 1.0f);
  moe::rms_norm(x.data(), nullptr, y.data(), 33, 1e-5f);
  for (float v : y) CHECK(v == 0.0f);

  // x = 1e-3 everywhere: mean(x^2) = 1e-6, so y = 1e-3 / sqrt(1e-6 + 1e-5) = 0.30151...
  std::fill(x.begin(), x.end(), 1e-3f);
  moe::rms_norm(x.data(), nullptr, y.data(), 33, 1e-5f);
  for (float v : y) CHECK(v == Approx(1e-3 / std::sqrt(1.1e-5)).epsilon(1e-6));

  // Grok-1 convention: the stored scale multiplies as is; scale 0 zeroes the output.
  std::vector<float> s(33, 0.0f);
  std::fill(x.begin(), x.end(), 2.0f);
  moe::rms_norm(x.data(), s.data(), y.data(), 33, 1e-5f);
  for (float v : y) CHECK(v == 0.0f);
  std::fill(s.begin(), s.end(), 3.0f);
  moe::rms_norm(x.data(), s.data(), y.data(), 33, 0.0f);
  for (float v : y) CHECK(v == 3.0f);
}

TEST_CASE("rms_norm_rows: strided rows, each row normalised independently", "[ops][norm]") {
  const std::size_t rows = 5, cols = 37, stride = 41;
  auto x = moe_test::randn(rows * stride, 9, 2.0f);
  const auto s = moe_test::randu(cols, 10, 0.5f, 1.5f);
  std::vector<float> y(rows * stride, -1.0f);
  moe::rms_norm_rows(moe::MatrixView<const float>(x.data(), rows, cols, stride), s.data(),
                     moe::MatrixView<float>(y.data(), rows, cols, stride), 1e-5f);
  for (std::size_t r = 0; r < rows; ++r) {
    const auto ref = moe_ref::rms_norm(x.data() + r * stride, s.data(), cols, 1e-5);
    const auto d = moe_test::diff(y.data() + r * stride, ref.data(), cols, 1e-30);
    CHECK(d.max_rel <= rms_tol(cols));
    for (std::size_t c = cols; c < stride; ++c) CHECK(y[r * stride + c] == -1.0f);  // padding
  }
  // In place over the same view.
  auto x2 = x;
  moe::MatrixView<float> v(x2.data(), rows, cols, stride);
  moe::rms_norm_rows(v, s.data(), v, 1e-5f);
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = 0; c < cols; ++c) CHECK(x2[r * stride + c] == y[r * stride + c]);
  }
}
