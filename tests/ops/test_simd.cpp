// moe::simd helpers: partial loads/stores (checked against guard pages), reductions, lane
// shuffles and the vector maths (exp, tanh, Phi) against double-precision std:: functions.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include <moe/simd/simd.hpp>

#include "ops/ops_test_util.hpp"

namespace {

using moe::simd::fbatch;
using moe::simd::kLanes;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> lanes(const fbatch& v) {
  std::vector<float> out(kLanes);
  v.store_unaligned(out.data());
  return out;
}

/// Max error in ulps of f over n points evenly spread over [lo, hi] (plus the end points).
template <class F, class R>
double max_ulp_error(F f, R ref, float lo, float hi, std::size_t n, float* worst_x = nullptr) {
  std::vector<float> x(n), y(n);
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = lo + (hi - lo) * static_cast<float>(static_cast<double>(i) / static_cast<double>(n - 1));
  }
  moe::simd::map(x.data(), y.data(), n, f);
  double worst = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double r = ref(static_cast<double>(x[i]));
    const double e = std::fabs(y[i] - r) / ops_test::ulp_of(r);
    if (e > worst) {
      worst = e;
      if (worst_x) *worst_x = x[i];
    }
  }
  return worst;
}

}  // namespace

TEST_CASE("simd: load_partial/store_partial touch exactly n elements", "[ops][simd]") {
  for (std::size_t n = 0; n <= kLanes; ++n) {
    INFO("n = " << n);
    ops_test::GuardedFloats src(n), dst(n);  // both end at a guard page
    for (std::size_t i = 0; i < n; ++i) src[i] = 1.5f + static_cast<float>(i);
    const auto v = lanes(moe::simd::load_partial(src.data(), n, -7.0f));
    for (std::size_t i = 0; i < kLanes; ++i) CHECK(v[i] == (i < n ? 1.5f + i : -7.0f));
    moe::simd::store_partial(dst.data(), fbatch(3.0f), n);
    for (std::size_t i = 0; i < n; ++i) CHECK(dst[i] == 3.0f);

    // store_partial leaves the elements after n alone.
    std::vector<float> buf(2 * kLanes, -1.0f);
    moe::simd::store_partial(buf.data() + 1, fbatch(2.0f), n);
    CHECK(buf[0] == -1.0f);
    for (std::size_t i = 0; i < 2 * kLanes - 1; ++i) CHECK(buf[1 + i] == (i < n ? 2.0f : -1.0f));

    const auto m = moe::simd::first_n(n);
    const auto sel = lanes(xsimd::select(m, fbatch(1.0f), fbatch(0.0f)));
    for (std::size_t i = 0; i < kLanes; ++i) CHECK(sel[i] == (i < n ? 1.0f : 0.0f));
  }
}

TEST_CASE("simd: reductions and lane shuffles", "[ops][simd]") {
  std::vector<float> v(kLanes);
  for (std::size_t i = 0; i < kLanes; ++i) v[i] = static_cast<float>((i * 7) % kLanes) - 3.0f;
  const fbatch b = moe::simd::load(v.data());
  float sum = 0;
  for (float f : v) sum += f;  // small integers: exact in any order
  CHECK(moe::simd::reduce_add(b) == sum);
  CHECK(moe::simd::reduce_max(b) == *std::max_element(v.begin(), v.end()));
  CHECK(moe::simd::reduce_max(fbatch(-kInf)) == -kInf);

  const auto s = lanes(moe::simd::swap_pairs(b));
  for (std::size_t i = 0; i < kLanes; ++i) CHECK(s[i] == v[i ^ 1]);

  const auto mx = lanes(moe::simd::max(fbatch(1.0f), b));
  for (std::size_t i = 0; i < kLanes; ++i) CHECK(mx[i] == std::max(1.0f, v[i]));
  const auto ab = lanes(moe::simd::abs(fbatch(-2.5f)));
  CHECK(ab[0] == 2.5f);

  // is_nan must be an unordered compare (xsimd 8.1's float != is ordered on AVX/AVX-512).
  std::vector<float> nn(kLanes, 1.0f);
  nn[kLanes - 1] = kNaN;
  nn[0] = kInf;
  const auto isn = lanes(
      xsimd::select(moe::simd::is_nan(moe::simd::load(nn.data())), fbatch(1.0f), fbatch(0.0f)));
  for (std::size_t i = 0; i < kLanes; ++i) CHECK(isn[i] == (i == kLanes - 1 ? 1.0f : 0.0f));
}

TEST_CASE("simd: fma is fused where the hardware has FMA, square_residual is exact",
          "[ops][simd]") {
  // x = 1 + 2^-12: x^2 = 1 + 2^-11 + 2^-24 needs 25 bits, so round(x^2) = 1 + 2^-11 (ties to
  // even) and the residual is exactly 2^-24.
  const float x = 1.0f + std::ldexp(1.0f, -12);
  const fbatch xb(x), xx = xb * xb;
  CHECK(lanes(xx)[0] == 1.0f + std::ldexp(1.0f, -11));
  CHECK(lanes(moe::simd::square_residual(xb, xx))[0] == std::ldexp(1.0f, -24));
  if (moe::simd::kHasFma) {
    CHECK(lanes(moe::simd::fms(xb, xb, xx))[0] == std::ldexp(1.0f, -24));
  }
  CHECK(lanes(moe::simd::fma(fbatch(2.0f), fbatch(3.0f), fbatch(1.0f)))[0] == 7.0f);
  CHECK(lanes(moe::simd::fnma(fbatch(2.0f), fbatch(3.0f), fbatch(1.0f)))[0] == -5.0f);
}

TEST_CASE("simd: exp is within 2 ulp of exp in double", "[ops][simd][math]") {
  // Reduction + degree-7 minimax polynomial; measured <= 0.9 ulp with FMA, <= 1.2 ulp without.
  auto f = [](const fbatch& v) { return moe::simd::exp(v); };
  auto r = [](double v) { return std::exp(v); };
  float wx = 0;
  CHECK(max_ulp_error(f, r, -87.33f, 88.72f, 1000001, &wx) <= 2.0);
  CHECK(max_ulp_error(f, r, -1.0f, 1.0f, 200001, &wx) <= 2.0);
  CHECK(max_ulp_error(f, r, -1e-6f, 1e-6f, 2001, &wx) <= 1.0);
  INFO("worst at " << wx);

  const auto sp = [](float v) { return lanes(moe::simd::exp(fbatch(v)))[0]; };
  CHECK(sp(0.0f) == 1.0f);
  CHECK(sp(-0.0f) == 1.0f);
  CHECK(sp(-kInf) == 0.0f);
  CHECK(sp(kInf) == kInf);
  CHECK(std::isnan(sp(kNaN)));
  CHECK(sp(-100.0f) == 0.0f);  // below the normal range: flushed to 0
  CHECK(sp(-87.4f) == 0.0f);
  CHECK(sp(88.8f) == kInf);
  CHECK(sp(88.72f) < kInf);  // e^88.72 = 3.39e38 < FLT_MAX
  CHECK(sp(88.72f) == Approx(std::exp(static_cast<double>(88.72f))).epsilon(2.4e-7));
  CHECK(sp(1.0f) == Approx(2.718281828459045).epsilon(1.2e-7));
}

TEST_CASE("simd: tanh is within 3 ulp of tanh in double, odd and saturating", "[ops][simd][math]") {
  // Measured <= 1.6 ulp (polynomial below 0.55, 1 - 2/(e^2a + 1) above).
  auto f = [](const fbatch& v) { return moe::simd::tanh(v); };
  auto r = [](double v) { return std::tanh(v); };
  CHECK(max_ulp_error(f, r, -12.0f, 12.0f, 1000001) <= 3.0);
  CHECK(max_ulp_error(f, r, -0.6f, 0.6f, 200001) <= 3.0);
  CHECK(max_ulp_error(f, r, -1e-5f, 1e-5f, 2001) <= 1.0);  // ~identity near 0

  const auto sp = [](float v) { return lanes(moe::simd::tanh(fbatch(v)))[0]; };
  CHECK(sp(0.0f) == 0.0f);
  CHECK(!std::signbit(sp(0.0f)));
  CHECK(std::signbit(sp(-0.0f)));
  CHECK(sp(kInf) == 1.0f);
  CHECK(sp(-kInf) == -1.0f);
  CHECK(sp(9.1f) == 1.0f);
  CHECK(sp(-1e30f) == -1.0f);
  CHECK(std::isnan(sp(kNaN)));
  CHECK(sp(1e-30f) == 1e-30f);
  for (float v : {0.1f, 0.54f, 0.56f, 3.0f}) CHECK(sp(-v) == -sp(v));
}

TEST_CASE("simd: phi_neg_abs = erfc(|x|/sqrt2)/2 has small relative error into the tail",
          "[ops][simd][math]") {
  // Minimax t-polynomial times e^{-x^2/2} with x^2/2 formed exactly; measured <= 7 ulp, 4.3e-7
  // relative, up to |x| = 13 (Phi(-13) = 6e-39, the edge of the normal range).
  auto f = [](const fbatch& v) { return moe::simd::phi_neg_abs(v); };
  std::vector<float> x;
  for (int i = 0; i <= 520000; ++i) x.push_back(-13.0f + 26.0f * static_cast<float>(i) / 520000.0f);
  std::vector<float> y(x.size());
  moe::simd::map(x.data(), y.data(), x.size(), f);
  double worst = 0;
  float wx = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double r = 0.5 * std::erfc(std::fabs(static_cast<double>(x[i])) / std::sqrt(2.0));
    const double e = std::fabs(y[i] - r) / r;
    if (e > worst) {
      worst = e;
      wx = x[i];
    }
  }
  INFO("worst relative error " << worst << " at x = " << wx);
  CHECK(worst <= 1e-6);

  const auto sp = [](float v) { return lanes(moe::simd::phi_neg_abs(fbatch(v)))[0]; };
  CHECK(sp(0.0f) == Approx(0.5).epsilon(4e-7));
  CHECK(sp(kInf) == 0.0f);
  CHECK(sp(-kInf) == 0.0f);
  CHECK(sp(40.0f) == 0.0f);
  CHECK(std::isnan(sp(kNaN)));
}
