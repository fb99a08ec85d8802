// RMSNorm backward (input and scale) against central differences of a float64 RMSNorm, over
// awkward widths, rows with very different magnitudes, with and without a scale, on the pool.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <vector>

#include <moe/core/thread_pool.hpp>
#include <moe/layers/transformer_block.hpp>
#include <moe/ops/norm.hpp>

#include "common/gradcheck.hpp"
#include "common/test_util.hpp"

TEST_CASE("rms_norm backward matches float64 central differences", "[train][norm]") {
  moe::ThreadPool pool(2);
  const float eps = 1e-5f;
  for (std::size_t d : {1, 7, 16, 33, 100}) {
    for (bool with_scale : {true, false}) {
      const std::size_t n = 11;
      std::vector<float> x = moe_test::randn(n * d, 1 + d);
      for (std::size_t i = 0; i < d; ++i) x[3 * d + i] *= 40.0f;  // a large row
      for (std::size_t i = 0; i < d; ++i) x[5 * d + i] *= 0.01f;  // a small one (eps matters)
      const std::vector<float> s = moe_test::randu(d, 2, 0.5f, 1.5f);
      const std::vector<float> r = moe_test::randn(n * d, 3);   // L = sum r * y
      std::vector<float> dx(n * d, 0.25f), ds(d, 0.5f), rs(n);  // accumulates onto these
      moe::detail::rms_norm_backward_rows(pool, {x.data(), n, d}, with_scale ? s.data() : nullptr,
                                          {r.data(), n, d}, {dx.data(), n, d},
                                          with_scale ? ds.data() : nullptr, eps, rs.data());
      for (float& v : dx) v -= 0.25f;
      for (float& v : ds) v -= 0.5f;
      std::vector<double> theta(x.begin(), x.end());
      theta.insert(theta.end(), s.begin(), s.end());
      const auto loss = [&]() {
        double l = 0;
        for (std::size_t t = 0; t < n; ++t) {
          double ss = 0;
          for (std::size_t i = 0; i < d; ++i) ss += theta[t * d + i] * theta[t * d + i];
          const double inv = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
          for (std::size_t i = 0; i < d; ++i) {
            l += r[t * d + i] * theta[t * d + i] * inv * (with_scale ? theta[n * d + i] : 1.0);
          }
        }
        return l;
      };
      const auto num = moe_test::numeric_gradient(loss, theta);
      INFO("d = " << d << (with_scale ? ", scaled" : ", plain"));
      const auto cx = moe_test::compare_gradient(dx.data(), num.data(), n * d);
      INFO(cx.str("x"));
      REQUIRE(cx.scale > 0);
      CHECK(cx.max_err < 1e-4);
      if (with_scale) {
        const auto cs = moe_test::compare_gradient(ds.data(), num.data() + n * d, d);
        INFO(cs.str("scale"));
        REQUIRE(cs.scale > 0);
        CHECK(cs.max_err < 1e-4);
      }
    }
  }
}
