// gelu_tanh, gelu_erf, silu, activate, gated_activation and multiply against the double twins.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include <moe/ops/activation.hpp>

#include "common/test_util.hpp"
#include "ops/ops_test_util.hpp"
#include "reference/ops_ref.hpp"

using moe::Activation;
using ops_test::kSizes;
using ops_test::kU;

namespace {
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

double ref_of(Activation a, float x) {
  switch (a) {
    case Activation::kGeluTanh:
      return moe_ref::gelu_tanh_tail(x);
    case Activation::kGeluErf:
      return moe_ref::gelu_erf(x);
    case Activation::kSilu:
      return moe_ref::silu(x);
  }
  return 0;
}

/// Relative error bound of act(x) (see the accuracy notes in activation.hpp):
///  silu: exp (2 ulp) + add + division (0.5 ulp each) -> 4 ulp;
///  gelu_tanh: the f32 argument -2u carries ~3 roundings (relative), which exp turns into
///    |2u| * 3 u of relative error, plus exp, add, division;
///  gelu_erf: Phi(-|x|) <= 1e-6 relative (7 ulp near 0.5), 1 - Phi and the product.
double rel_tol(Activation a, float x) {
  switch (a) {
    case Activation::kSilu:
      return 2.0 * 4.0 * kU;
    case Activation::kGeluTanh:
      return (8.0 + 3.0 * std::fabs(moe_ref::gelu_tanh_2u(x))) * 2.0 * kU;
    case Activation::kGeluErf:
      return 1.2e-6;
  }
  return 0;
}

void run(Activation a, const float* x, float* y, std::size_t n) {
  switch (a) {
    case Activation::kGeluTanh:
      moe::gelu_tanh(x, y, n);
      break;
    case Activation::kGeluErf:
      moe::gelu_erf(x, y, n);
      break;
    case Activation::kSilu:
      moe::silu(x, y, n);
      break;
  }
}

const Activation kAll[] = {Activation::kGeluTanh, Activation::kGeluErf, Activation::kSilu};
}  // namespace

TEST_CASE("activations: the double references agree with the textbook formulas", "[ops][act]") {
  // gelu_tanh_tail (x / (1 + e^{-2u})) is the tanh form rewritten; check where both are accurate.
  for (float x = -3.0f; x <= 10.0f; x += 0.01f) {
    REQUIRE(moe_ref::gelu_tanh_tail(x) ==
            Approx(moe_ref::gelu_tanh(x)).epsilon(1e-12).margin(1e-15));
  }
  // gelu_erf: 0.5 x (1 + erf(x / sqrt2)) for moderate x.
  for (float x = -3.0f; x <= 10.0f; x += 0.01f) {
    const double textbook = 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    REQUIRE(moe_ref::gelu_erf(x) == Approx(textbook).epsilon(1e-12).margin(1e-15));
  }
}

TEST_CASE("activations: every kernel matches its double twin (relative error, whole range)",
          "[ops][act]") {
  // A dense sweep over [-20, 20] (the deep negative tail included) plus random sizes.
  std::vector<float> sweep;
  for (int i = -200000; i <= 200000; ++i) sweep.push_back(static_cast<float>(i) * 1e-4f);
  for (Activation a : kAll) {
    INFO(moe::activation_name(a));
    std::vector<float> y(sweep.size());
    run(a, sweep.data(), y.data(), sweep.size());
    double worst = 0;
    float wx = 0;
    for (std::size_t i = 0; i < sweep.size(); ++i) {
      const double r = ref_of(a, sweep[i]);
      if (std::fabs(r) < 1e-36) {  // at and below FLT_MIN: absolute error only
        REQUIRE(std::fabs(y[i] - r) <= 1e-36);
        continue;
      }
      const double e = std::fabs(y[i] - r) / std::fabs(r) / rel_tol(a, sweep[i]);
      if (e > worst) {
        worst = e;
        wx = sweep[i];
      }
    }
    INFO("worst error / tolerance = " << worst << " at x = " << wx);
    CHECK(worst <= 1.0);
  }
}

TEST_CASE("activations: awkward sizes, guard pages, in place", "[ops][act]") {
  for (Activation a : kAll) {
    for (std::size_t n : kSizes) {
      INFO(moe::activation_name(a) << " n = " << n);
      const auto x = moe_test::randn(n, 8000 + n, 3.0f);
      ops_test::GuardedFloats gx(n), gy(n);
      gx.assign(x);
      moe::activate(a, gx.data(), gy.data(), n);
      for (std::size_t i = 0; i < n; ++i) {
        const double r = ref_of(a, x[i]);
        REQUIRE(std::fabs(gy[i] - r) <= rel_tol(a, x[i]) * std::fabs(r) + 1e-36);
      }
      ops_test::OffsetFloats ox(n, 1);
      ox.assign(x);
      run(a, ox.data(), ox.data(), n);  // in place, misaligned
      const auto in_place = ox.vec(n);
      for (std::size_t i = 0; i < n; ++i)
        REQUIRE(ops_test::bits(in_place[i]) == ops_test::bits(gy[i]));
    }
  }
}

TEST_CASE("activations: known values and special inputs", "[ops][act]") {
  float one = 1.0f, y = 0.0f;
  moe::gelu_tanh(&one, &y, 1);
  CHECK(y == Approx(0.841192).margin(1e-6));  // jax.nn.gelu(1.0) (approximate=True)
  const float tanh_at_1 = y;
  moe::gelu_erf(&one, &y, 1);
  CHECK(y == Approx(0.841345).margin(1e-6));  // torch.nn.GELU()(1.0)
  CHECK(y - tanh_at_1 == Approx(1.53e-4).margin(2e-6));
  moe::silu(&one, &y, 1);
  CHECK(y == Approx(0.7310585786).epsilon(2e-7));

  const std::vector<float> sp = {kInf, -kInf, kNaN, 0.0f, -1e30f, 1e30f};
  for (Activation a : kAll) {
    INFO(moe::activation_name(a));
    std::vector<float> out(sp.size());
    moe::activate(a, sp.data(), out.data(), sp.size());
    CHECK(out[0] == kInf);
    CHECK(out[1] == 0.0f);
    CHECK(std::isnan(out[2]));
    CHECK(out[3] == 0.0f);
    CHECK(out[4] == 0.0f);
    CHECK(out[5] == 1e30f);
  }
}

TEST_CASE("activations: gated_activation = act(gate) * up in one pass, out may alias gate or up",
          "[ops][act]") {
  for (Activation a : kAll) {
    for (std::size_t n : {std::size_t{1}, std::size_t{9}, std::size_t{33}, std::size_t{6144}}) {
      INFO(moe::activation_name(a) << " n = " << n);
      const auto g = moe_test::randn(n, 9000 + n, 2.0f), u = moe_test::randn(n, 9100 + n);
      std::vector<float> act(n), expect(n), out(n);
      moe::activate(a, g.data(), act.data(), n);
      moe::multiply(act.data(), u.data(), expect.data(), n);
      for (std::size_t i = 0; i < n; ++i) REQUIRE(expect[i] == act[i] * u[i]);

      ops_test::GuardedFloats gg(n), gu(n), go(n);
      gg.assign(g);
      gu.assign(u);
      moe::gated_activation(a, gg.data(), gu.data(), go.data(), n);
      CHECK(go.vec() == expect);
      auto g2 = g;
      moe::gated_activation(a, g2.data(), u.data(), g2.data(), n);  // out aliases gate
      CHECK(g2 == expect);
      auto u2 = u;
      moe::gated_activation(a, g.data(), u2.data(), u2.data(), n);  // out aliases up
      CHECK(u2 == expect);
    }
  }
}
