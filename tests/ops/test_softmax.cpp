// softmax, logsumexp, softcap, scale_softcap and scale against the double twins, plus the special
// values (+-1e30, +-inf, NaN, all equal) the attention mask and the router produce.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include <moe/ops/softmax.hpp>
#include <moe/ops/vector.hpp>

#include "common/test_util.hpp"
#include "ops/ops_test_util.hpp"
#include "reference/ops_ref.hpp"

using ops_test::kSizes;
using ops_test::kU;

namespace {
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
}  // namespace

TEST_CASE("softmax: matches the double twin element-wise, sums to 1", "[ops][softmax]") {
  for (std::size_t n : kSizes) {
    INFO("n = " << n);
    auto x = moe_test::randn(n, 3000 + n, 4.0f);
    if (n > 3) x[n / 3] = -kInf;  // a masked entry
    const auto ref = moe_ref::softmax(x.data(), n);
    const float m = *std::max_element(x.begin(), x.end());

    ops_test::GuardedFloats gx(n), gy(n);
    gx.assign(x);
    moe::softmax(gx.data(), gy.data(), n);
    // Per element: exp's <= 2 ulp, the rounding of x - max (relative error |x - max| u in the
    // result), the blocked f32 sum and the final product.
    const double sum_bound = ops_test::blocked_sum_bound(n);
    double total = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (x[i] == -kInf) {
        REQUIRE(gy[i] == 0.0f);
        continue;
      }
      const double tol = (4.0 + std::fabs(static_cast<double>(x[i]) - m) + sum_bound + 2.0) * kU;
      INFO("i = " << i << " x = " << x[i] << " got " << gy[i] << " want " << ref[i]);
      REQUIRE(std::fabs(gy[i] - ref[i]) <= tol * ref[i] + 1e-37);
      total += gy[i];
    }
    CHECK(std::fabs(total - 1.0) <= (sum_bound + 8.0) * kU);
    if (n > 3) CHECK(gy[n / 3] == 0.0f);

    // In place, misaligned: identical bits (the result depends only on the inputs).
    ops_test::OffsetFloats ox(n, 1);
    ox.assign(x);
    moe::softmax(ox.data(), n);
    const auto in_place = ox.vec(n);
    for (std::size_t i = 0; i < n; ++i)
      REQUIRE(ops_test::bits(in_place[i]) == ops_test::bits(gy[i]));
  }
}

TEST_CASE("softmax: survives +-1e30, -inf, all-equal and non-finite inputs", "[ops][softmax]") {
  SECTION("+-1e30 (Grok-1's mask value) and -inf") {
    std::vector<float> x = {1e30f, -1e30f, 0.0f, -kInf, 1e30f};
    moe::softmax(x.data(), x.size());
    CHECK(x == std::vector<float>{0.5f, 0.0f, 0.0f, 0.0f, 0.5f});
    std::vector<float> y = {3.0f, -1e30f, -1e30f, -kInf};
    moe::softmax(y.data(), y.size());
    CHECK(y == std::vector<float>{1.0f, 0.0f, 0.0f, 0.0f});
  }
  SECTION("all equal -> uniform, at every size") {
    for (std::size_t n : kSizes) {
      for (float v : {0.0f, -1e30f, 1e30f, 17.0f, -kInf}) {
        std::vector<float> x(n, v);
        moe::softmax(x.data(), n);
        for (float p : x) REQUIRE(p == Approx(1.0 / static_cast<double>(n)).epsilon(2e-7));
      }
    }
  }
  SECTION("+inf entries share the mass") {
    std::vector<float> x = {1.0f, kInf, -kInf, kInf, 1e30f};
    moe::softmax(x.data(), x.size());
    CHECK(x == std::vector<float>{0.0f, 0.5f, 0.0f, 0.5f, 0.0f});
  }
  SECTION("NaN anywhere -> all NaN") {
    for (std::size_t n : {std::size_t{1}, std::size_t{5}, std::size_t{33}}) {
      for (std::size_t at = 0; at < n; at += 4) {
        for (float other : {1.0f, -kInf, kInf}) {
          std::vector<float> x(n, other);
          x[at] = kNaN;
          moe::softmax(x.data(), n);
          for (float p : x) REQUIRE(std::isnan(p));
        }
      }
    }
  }
  SECTION("n = 0 is a no-op") {
    moe::softmax(nullptr, 0);
  }
}

TEST_CASE("logsumexp: stable, matches the double twin", "[ops][softmax]") {
  const std::vector<float> big = {1000.0f, 1000.0f};
  CHECK(moe::logsumexp(big.data(), 2) == Approx(1000.0 + std::log(2.0)).epsilon(1e-7));
  CHECK(moe::logsumexp(big.data(), 2) == static_cast<float>(1000.0 + std::log(2.0)));
  const std::vector<float> tiny = {-1000.0f, -1000.0f, -1000.0f};
  CHECK(moe::logsumexp(tiny.data(), 3) == Approx(-1000.0 + std::log(3.0)).epsilon(1e-7));
  const std::vector<float> masked = {-kInf, 2.0f, -kInf};
  CHECK(moe::logsumexp(masked.data(), 3) == 2.0f);
  const std::vector<float> all_masked = {-kInf, -kInf};
  CHECK(moe::logsumexp(all_masked.data(), 2) == -kInf);
  const std::vector<float> pinf = {1.0f, kInf};
  CHECK(moe::logsumexp(pinf.data(), 2) == kInf);
  const std::vector<float> nan = {1.0f, kNaN, 2.0f};
  CHECK(std::isnan(moe::logsumexp(nan.data(), 3)));
  CHECK(moe::logsumexp(nullptr, 0) == -kInf);

  for (std::size_t n : kSizes) {
    INFO("n = " << n);
    const auto x = moe_test::randn(n, 4000 + n, 5.0f);
    ops_test::GuardedFloats gx(n);
    gx.assign(x);
    const double ref = moe_ref::logsumexp(x.data(), n);
    const float got = moe::logsumexp(gx.data(), n);
    // log(s) has absolute error ~ the relative error of s (exp, argument rounding up to
    // (max - min) u / 2, the blocked sum), plus the final rounding of m + log(s).
    const double range =
        *std::max_element(x.begin(), x.end()) - *std::min_element(x.begin(), x.end());
    const double tol = ops_test::ulp_of(ref) + (4.0 + range + ops_test::blocked_sum_bound(n)) * kU;
    CHECK(std::fabs(got - ref) <= tol);
    ops_test::OffsetFloats ox(n, 3);
    ox.assign(x);
    CHECK(ops_test::bits(moe::logsumexp(ox.data(), n)) == ops_test::bits(got));
  }
}

TEST_CASE("softcap: cap * tanh(x / cap), saturating, ~identity near 0", "[ops][softmax]") {
  const float cap = 30.0f;
  for (std::size_t n : kSizes) {
    INFO("n = " << n);
    const auto x = moe_test::randn(n, 5000 + n, 40.0f);
    ops_test::GuardedFloats g(n);
    g.assign(x);
    moe::softcap(g.data(), n, cap);
    for (std::size_t i = 0; i < n; ++i) {
      const double ref = moe_ref::softcap(x[i], cap);
      // tanh <= 3 ulp; x * (1/cap) and the final product add ~2 roundings, and the argument's
      // rounding is damped by tanh' <= 1.
      REQUIRE(std::fabs(g[i] - ref) <= 6.0 * kU * std::fabs(ref) + 1e-37);
      REQUIRE(std::fabs(g[i]) <= cap);
    }
  }
  std::vector<float> s = {1e4f, -1e4f, kInf, -kInf, 300.0f, -300.0f, kNaN, 0.0f, -0.0f};
  moe::softcap(s.data(), s.size(), cap);
  CHECK(s[0] == cap);
  CHECK(s[1] == -cap);
  CHECK(s[2] == cap);
  CHECK(s[3] == -cap);
  CHECK(s[4] == cap);  // tanh(10) rounds to 1 in f32
  CHECK(s[5] == -cap);
  CHECK(std::isnan(s[6]));
  CHECK(s[7] == 0.0f);
  CHECK(std::signbit(s[8]));
  // Near 0: softcap(x) = x - x^3 / (3 cap^2) + ...: identity within that and 2 ulp.
  auto small = moe_test::randu(1000, 6, -0.5f, 0.5f);
  auto capped = small;
  moe::softcap(capped.data(), capped.size(), cap);
  for (std::size_t i = 0; i < small.size(); ++i) {
    const double x = small[i];
    REQUIRE(std::fabs(capped[i] - x) <=
            std::fabs(x * x * x) / (3.0 * cap * cap) + 2.0 * ops_test::ulp_of(x));
  }
  // cap <= 0 means off.
  auto off = moe_test::randn(17, 11, 100.0f), off0 = off;
  moe::softcap(off.data(), off.size(), 0.0f);
  CHECK(off == off0);
}

TEST_CASE("softmax: scale_softcap equals scale then softcap, scale is exact", "[ops][softmax]") {
  for (std::size_t n : {std::size_t{1}, std::size_t{17}, std::size_t{1000}}) {
    const auto x = moe_test::randn(n, 7000 + n, 300.0f);
    auto a = x, b = x;
    moe::scale(a.data(), n, 0.08838834764831845f);
    for (std::size_t i = 0; i < n; ++i) REQUIRE(a[i] == x[i] * 0.08838834764831845f);
    moe::softcap(a.data(), n, 30.0f);
    moe::scale_softcap(b.data(), n, 0.08838834764831845f, 30.0f);
    for (std::size_t i = 0; i < n; ++i) REQUIRE(ops_test::bits(a[i]) == ops_test::bits(b[i]));
    auto c = x;
    moe::scale_softcap(c.data(), n, 0.5f, 0.0f);  // no cap: just the multiplier
    for (std::size_t i = 0; i < n; ++i) REQUIRE(c[i] == x[i] * 0.5f);
  }
}
