// Rope against the double twin (tests/reference/ops_ref.hpp) and its defining properties: norm
// preservation, relativity, layout equivalence under the pair permutation, base dependence.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/ops/rope.hpp>
#include <moe/ops/vector.hpp>

#include "common/test_util.hpp"
#include "ops/ops_test_util.hpp"
#include "reference/ops_ref.hpp"

using moe::RopeLayout;
using ops_test::kU;

namespace {

struct Shape {
  std::size_t head_dim, rotary;
};
// Grok-1 (128), tiny/demo heads, odd partial rotary widths, heads smaller than a vector.
const Shape kShapes[] = {{128, 128}, {128, 64}, {8, 8}, {32, 32}, {6, 6},   {10, 4},
                         {96, 96},   {64, 40},  {2, 2}, {34, 34}, {48, 30}, {256, 256}};
const std::size_t kPositions[] = {0, 1, 2, 7, 100, 511, 4095, 8191, 100000};

/// Every element within 4 u (|a| + |b|) of the exact rotation: cos and sin are rounded once
/// (0.5 ulp each), then one product and one fused multiply-add (or two roundings without FMA).
void check_against_twin(const moe::Rope& rope, const std::vector<float>& x, const float* y,
                        std::size_t n_heads, double base, std::size_t pos) {
  const std::size_t d = rope.head_dim();
  const bool il = rope.layout() == RopeLayout::kInterleaved;
  for (std::size_t h = 0; h < n_heads; ++h) {
    const float* xh = x.data() + h * d;
    const auto ref = moe_ref::rope_head(xh, d, rope.rotary_dims(), base, il, pos);
    double scale = 0;
    for (std::size_t i = 0; i < d; ++i)
      scale = std::max(scale, std::fabs(static_cast<double>(xh[i])));
    for (std::size_t i = 0; i < d; ++i) {
      INFO("head " << h << " dim " << i << " pos " << pos);
      if (i >= rope.rotary_dims()) {
        REQUIRE(y[h * d + i] == xh[i]);  // partial rotary: untouched
      } else {
        REQUIRE(std::fabs(y[h * d + i] - ref[i]) <= 8.0 * kU * scale);
      }
    }
  }
}

}  // namespace

TEST_CASE("rope: matches the double twin, both layouts, table and on-the-fly paths identical",
          "[ops][rope]") {
  for (const Shape& s : kShapes) {
    for (RopeLayout layout : {RopeLayout::kHalfSplit, RopeLayout::kInterleaved}) {
      for (double base : {10000.0, 500000.0, 10.0}) {
        INFO("head_dim " << s.head_dim << " rotary " << s.rotary << " layout "
                         << static_cast<int>(layout) << " base " << base);
        moe::Rope rope(s.head_dim, base, layout, s.rotary);
        moe::Rope cached = rope;
        cached.precompute(8192);
        CHECK(cached.precomputed_positions() == 8192);
        const std::size_t n_heads = 3;
        for (std::size_t pos : kPositions) {
          const auto x = moe_test::randn(n_heads * s.head_dim, 17 * pos + s.head_dim);
          ops_test::GuardedFloats a(x.size());
          a.assign(x);
          rope.apply(a.data(), n_heads, pos);
          check_against_twin(rope, x, a.data(), n_heads, base, pos);
          auto b = x;
          cached.apply(b.data(), n_heads, pos);
          for (std::size_t i = 0; i < x.size(); ++i)
            REQUIRE(ops_test::bits(b[i]) == ops_test::bits(a[i]));
        }
      }
    }
  }
}

TEST_CASE("rope: preserves norms and is relative", "[ops][rope]") {
  for (RopeLayout layout : {RopeLayout::kHalfSplit, RopeLayout::kInterleaved}) {
    const std::size_t d = 128;
    moe::Rope rope(d, 10000.0, layout);
    const auto q = moe_test::randn(d, 1), k = moe_test::randn(d, 2);
    const double qn = moe_ref::dot(q.data(), q.data(), d);
    // <R(p) q, R(s) k> depends only on p - s. Each rotated vector carries ~2e-7 relative error
    // per element, so the dot products agree to ~1e-6 of |q| |k|.
    const double qk_scale = std::sqrt(qn * moe_ref::dot(k.data(), k.data(), d));
    for (std::size_t delta : {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{250}}) {
      std::vector<double> dots;
      for (std::size_t s : {std::size_t{0}, std::size_t{5}, std::size_t{1000}, std::size_t{8000}}) {
        auto rq = q, rk = k;
        rope.apply(rq.data(), 1, s + delta);
        rope.apply(rk.data(), 1, s);
        dots.push_back(moe_ref::dot(rq.data(), rk.data(), d));
        CHECK(moe_ref::dot(rq.data(), rq.data(), d) == Approx(qn).epsilon(2e-6));
      }
      for (double v : dots) CHECK(std::fabs(v - dots[0]) <= 2e-6 * qk_scale);
    }
    // Position 0 is the identity.
    auto z = q;
    rope.apply(z.data(), 1, 0);
    CHECK(z == q);
  }
}

TEST_CASE("rope: half-split and interleaved agree after the pair permutation (bit for bit)",
          "[ops][rope]") {
  // Interleaved pair j = dims (2j, 2j+1); half-split pair j = dims (j, j + r/2). Permuting the
  // input into half-split order, rotating, and permuting back gives the interleaved result.
  for (const Shape& s : kShapes) {
    const std::size_t d = s.head_dim, r = s.rotary, half = r / 2, n_heads = 2;
    moe::Rope hs(d, 10000.0, RopeLayout::kHalfSplit, r);
    moe::Rope il(d, 10000.0, RopeLayout::kInterleaved, r);
    const auto x = moe_test::randn(n_heads * d, 99 + d);
    std::vector<float> perm(x.size());
    for (std::size_t h = 0; h < n_heads; ++h) {
      for (std::size_t j = 0; j < half; ++j) {
        perm[h * d + j] = x[h * d + 2 * j];
        perm[h * d + j + half] = x[h * d + 2 * j + 1];
      }
      for (std::size_t i = r; i < d; ++i) perm[h * d + i] = x[h * d + i];
    }
    for (std::size_t pos : kPositions) {
      auto a = x, b = perm;
      il.apply(a.data(), n_heads, pos);
      hs.apply(b.data(), n_heads, pos);
      for (std::size_t h = 0; h < n_heads; ++h) {
        for (std::size_t j = 0; j < half; ++j) {
          REQUIRE(ops_test::bits(a[h * d + 2 * j]) == ops_test::bits(b[h * d + j]));
          REQUIRE(ops_test::bits(a[h * d + 2 * j + 1]) == ops_test::bits(b[h * d + j + half]));
        }
      }
    }
  }
}

TEST_CASE("rope: the base changes the result, Grok-1 numbers", "[ops][rope]") {
  const auto x = moe_test::randn(128, 5);
  auto a = x, b = x;
  moe::Rope(128, 10000.0, RopeLayout::kHalfSplit).apply(a.data(), 1, 100);
  moe::Rope(128, 100000.0, RopeLayout::kHalfSplit).apply(b.data(), 1, 100);
  CHECK(moe_test::diff(a.data(), b.data(), 128).max_abs > 0.1);
  // Pair 0 always rotates by theta = pos (inv_freq 1); the last pair by pos * base^(-126/128).
  moe::Rope g(128, 10000.0, RopeLayout::kHalfSplit);
  CHECK(g.inv_freq(0) == 1.0);
  CHECK(g.inv_freq(63) == Approx(std::pow(10000.0, -126.0 / 128.0)).epsilon(1e-15));
  std::vector<float> e(128, 0.0f);
  e[0] = 1.0f;  // unit vector on dim 0 -> (cos p, ..., sin p at dim 64)
  g.apply(e.data(), 1, 8191);
  CHECK(e[0] == Approx(std::cos(8191.0)).margin(1e-7));
  CHECK(e[64] == Approx(std::sin(8191.0)).margin(1e-7));
}

TEST_CASE("rope: apply_rows for a [T, heads * dim] block with a row stride", "[ops][rope]") {
  const std::size_t T = 5, heads = 4, d = 32, stride = heads * d + 3;
  moe::Rope rope(d, 10000.0, RopeLayout::kHalfSplit);
  const auto x = moe_test::randn(T * stride, 21);
  auto a = x, b = x, c = x;
  rope.apply_rows(moe::MatrixView<float>(a.data(), T, heads * d, stride), heads, 40);
  for (std::size_t t = 0; t < T; ++t) rope.apply(b.data() + t * stride, heads, 40 + t);
  CHECK(a == b);
  const std::vector<std::size_t> pos = {7, 0, 8000, 3, 3};
  rope.apply_rows(moe::MatrixView<float>(c.data(), T, heads * d, stride), heads,
                  std::span<const std::size_t>(pos));
  auto e = x;
  for (std::size_t t = 0; t < T; ++t) rope.apply(e.data() + t * stride, heads, pos[t]);
  CHECK(c == e);
  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t i = heads * d; i < stride; ++i) CHECK(a[t * stride + i] == x[t * stride + i]);
  }
}

TEST_CASE("rope: invalid configurations throw ConfigError at construction", "[ops][rope]") {
  CHECK_THROWS_AS(moe::Rope(7, 10000.0, RopeLayout::kHalfSplit), moe::ConfigError);
  CHECK_THROWS_AS(moe::Rope(8, 10000.0, RopeLayout::kHalfSplit, 10), moe::ConfigError);
  CHECK_THROWS_AS(moe::Rope(8, 10000.0, RopeLayout::kHalfSplit, 3), moe::ConfigError);
  CHECK_THROWS_AS(moe::Rope(8, 0.0, RopeLayout::kHalfSplit), moe::ConfigError);
  CHECK_THROWS_AS(moe::Rope(0, 10000.0, RopeLayout::kHalfSplit), moe::ConfigError);
  CHECK_THROWS_WITH(moe::Rope(8, -1.0, RopeLayout::kInterleaved),
                    Catch::Matchers::StartsWith("[rope]"));
  moe::Rope empty;
  float v = 1.0f;
  empty.apply(&v, 1, 5);  // default-constructed: no-op
  CHECK(v == 1.0f);
}
