// vector.hpp (dot, sum, sum_squares, max_value, axpy, add, copy, fill, bf16 conversions) against
// the double twins in tests/reference/ops_ref.hpp, over awkward sizes, at guard-page ends and at
// misaligned addresses.
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include <moe/core/bf16.hpp>
#include <moe/ops/vector.hpp>

#include "common/test_util.hpp"
#include "ops/ops_test_util.hpp"
#include "reference/ops_ref.hpp"

using ops_test::kSizes;
using ops_test::kU;

TEST_CASE("vector: dot, sum and sum_squares match double within the blocked-sum bound",
          "[ops][vector]") {
  for (std::size_t n : kSizes) {
    INFO("n = " << n);
    const auto a = moe_test::randn(n, 100 + n), b = moe_test::randn(n, 200 + n);
    ops_test::GuardedFloats ga(n), gb(n);
    ga.assign(a);
    gb.assign(b);
    ops_test::OffsetFloats oa(n, 1), ob(n, 3);
    oa.assign(a);
    ob.assign(b);

    // |f32 blocked sum - exact| <= bound * u * sum|terms| (each term's rounding path is short).
    double abs_ab = 0, abs_a = 0;
    for (std::size_t i = 0; i < n; ++i) {
      abs_ab += std::fabs(static_cast<double>(a[i]) * b[i]);
      abs_a += std::fabs(a[i]);
    }
    const double bound = ops_test::blocked_sum_bound(n) * kU;
    const double d = moe::dot(ga.data(), gb.data(), n);
    CHECK(std::fabs(d - moe_ref::dot(a.data(), b.data(), n)) <= bound * abs_ab);
    CHECK(std::fabs(moe::sum(ga.data(), n) - moe_ref::sum(a.data(), n)) <= bound * abs_a);
    CHECK(std::fabs(moe::sum_squares(ga.data(), n) - moe_ref::dot(a.data(), a.data(), n)) <=
          bound * moe_ref::dot(a.data(), a.data(), n));
    // Determinism: same inputs at another address give the same bits.
    CHECK(ops_test::bits(moe::dot(oa.data(), ob.data(), n)) == ops_test::bits(d));
    CHECK(ops_test::bits(moe::sum(oa.data(), n)) == ops_test::bits(moe::sum(ga.data(), n)));
  }
  CHECK(moe::dot(nullptr, nullptr, 0) == 0.0f);
  CHECK(moe::sum(nullptr, 0) == 0.0f);
}

TEST_CASE("vector: dot is bit-identical at every alignment", "[ops][vector]") {
  const std::size_t n = 1001;
  const auto a = moe_test::randn(n, 7), b = moe_test::randn(n, 8);
  const float ref = moe::dot(a.data(), b.data(), n);
  for (std::size_t off = 0; off < 16; ++off) {
    ops_test::OffsetFloats oa(n, off), ob(n, 15 - off);
    oa.assign(a);
    ob.assign(b);
    CHECK(ops_test::bits(moe::dot(oa.data(), ob.data(), n)) == ops_test::bits(ref));
  }
}

TEST_CASE("vector: max_value finds the maximum, propagates NaN", "[ops][vector]") {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  for (std::size_t n : kSizes) {
    INFO("n = " << n);
    auto a = moe_test::randn(n, 300 + n);
    ops_test::GuardedFloats g(n);
    for (std::size_t at : {std::size_t{0}, n / 2, n - 1}) {
      auto v = a;
      v[at] = 100.0f;
      g.assign(v);
      CHECK(moe::max_value(g.data(), n) == 100.0f);
      v[at] = std::numeric_limits<float>::quiet_NaN();
      g.assign(v);
      CHECK(std::isnan(moe::max_value(g.data(), n)));
    }
    std::vector<float> all_neg_inf(n, -kInf);
    g.assign(all_neg_inf);
    CHECK(moe::max_value(g.data(), n) == -kInf);
  }
  CHECK(moe::max_value(nullptr, 0) == -kInf);
}

TEST_CASE("vector: axpy, add, copy and fill, also in place", "[ops][vector]") {
  for (std::size_t n : kSizes) {
    INFO("n = " << n);
    const auto x = moe_test::randn(n, 400 + n), y0 = moe_test::randn(n, 500 + n);
    ops_test::GuardedFloats gx(n), gy(n), gz(n);
    gx.assign(x);
    gy.assign(y0);
    // axpy: one fused multiply-add per element, so one rounding (0.5 ulp of the result); without
    // FMA hardware the product is rounded too (another 0.5 ulp of the product).
    moe::axpy(0.75f, gx.data(), gy.data(), n);
    for (std::size_t i = 0; i < n; ++i) {
      const double prod = 0.75 * static_cast<double>(x[i]), exact = y0[i] + prod;
      const double tol =
          0.5 * ops_test::ulp_of(exact) + (moe::simd::kHasFma ? 0.0 : 0.5 * ops_test::ulp_of(prod));
      REQUIRE(std::fabs(gy[i] - exact) <= tol);
    }
    // add: exact to one rounding; in place (y aliases a).
    gy.assign(y0);
    moe::add(gy.data(), gx.data(), gy.data(), n);
    for (std::size_t i = 0; i < n; ++i) REQUIRE(gy[i] == y0[i] + x[i]);
    // axpy with x == y: y = y + a y.
    gy.assign(y0);
    moe::axpy(1.0f, gy.data(), gy.data(), n);
    for (std::size_t i = 0; i < n; ++i) REQUIRE(gy[i] == 2.0f * y0[i]);
    moe::copy(gx.data(), gz.data(), n);
    CHECK(gz.vec() == x);
    moe::fill(gz.data(), n, -2.5f);
    for (std::size_t i = 0; i < n; ++i) REQUIRE(gz[i] == -2.5f);
  }
}

TEST_CASE("vector: bf16 conversions match moe::bf16 bit for bit", "[ops][vector][bf16]") {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  std::vector<float> x = moe_test::randn(1000, 77, 100.0f);
  // Specials and rounding edge cases: ties to even (both directions), denormals, NaN payloads.
  const std::vector<float> special = {0.0f,
                                      -0.0f,
                                      1.0f,
                                      -1.0f,
                                      kInf,
                                      -kInf,
                                      std::numeric_limits<float>::quiet_NaN(),
                                      std::bit_cast<float>(0x7f800001u),  // signalling NaN
                                      std::bit_cast<float>(0x3f808000u),  // tie, rounds down
                                      std::bit_cast<float>(0x3f818000u),  // tie, rounds up
                                      std::bit_cast<float>(0x3f80ffffu),
                                      std::bit_cast<float>(0x00000001u),
                                      std::numeric_limits<float>::max(),
                                      -3.0e38f};
  x.insert(x.end(), special.begin(), special.end());
  const std::size_t n = x.size();
  std::vector<moe::bf16> b(n);
  moe::f32_to_bf16(x.data(), b.data(), n);
  std::vector<float> back(n), rounded = x;
  moe::bf16_to_f32(b.data(), back.data(), n);
  moe::round_bf16_inplace(rounded.data(), n);
  for (std::size_t i = 0; i < n; ++i) {
    INFO("i = " << i << " x = " << x[i]);
    REQUIRE(b[i].bits == moe::bf16(x[i]).bits);
    REQUIRE(ops_test::bits(back[i]) == ops_test::bits(moe::bf16(x[i]).to_float()));
    REQUIRE(ops_test::bits(rounded[i]) == ops_test::bits(back[i]));
  }
}
