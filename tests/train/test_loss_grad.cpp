// Softmax cross-entropy with an ignore id: value and fused backward against float64 central
// differences (mean over the counted rows), extreme logits, every row ignored, pool sizes.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <moe/core/thread_pool.hpp>
#include <moe/ops/loss.hpp>

#include "common/gradcheck.hpp"
#include "common/test_util.hpp"

namespace {
double ce64(const std::vector<double>& z, std::size_t v, const std::vector<std::int32_t>& tg,
            std::int32_t ignore) {
  double sum = 0;
  std::size_t n = 0;
  for (std::size_t t = 0; t < tg.size(); ++t) {
    if (tg[t] == ignore) continue;
    double m = -1e300, se = 0;
    for (std::size_t i = 0; i < v; ++i) m = std::max(m, z[t * v + i]);
    for (std::size_t i = 0; i < v; ++i) se += std::exp(z[t * v + i] - m);
    sum += m + std::log(se) - z[t * v + static_cast<std::size_t>(tg[t])];
    ++n;
  }
  return n ? sum / static_cast<double>(n) : 0.0;
}
}  // namespace

TEST_CASE("softmax cross-entropy: loss and gradient against float64", "[train][loss]") {
  for (std::size_t v : {2, 17, 130}) {
    const std::size_t n = 13;
    const std::int32_t ignore = 7;
    std::vector<float> z = moe_test::randn(n * v, v, 3.0f);
    for (std::size_t i = 0; i < v; ++i) z[2 * v + i] += 80.0f * static_cast<float>(i % 3);  // wide
    std::vector<std::int32_t> tg(n);
    for (std::size_t t = 0; t < n; ++t) tg[t] = static_cast<std::int32_t>((t * 5 + 1) % v);
    tg[4] = ignore;
    tg[9] = ignore;
    for (std::size_t threads : {1, 3}) {
      moe::ThreadPool pool(threads);
      std::vector<float> rows(n);
      const moe::CrossEntropySum s =
          moe::softmax_cross_entropy(pool, {z.data(), n, v}, tg, ignore, rows.data());
      std::size_t counted = 0;
      for (auto t : tg) counted += t != ignore;
      CHECK(s.counted == counted);
      std::vector<double> theta(z.begin(), z.end());
      const double ref = ce64(theta, v, tg, ignore);
      CHECK(s.mean() == Approx(ref).epsilon(1e-6));
      std::vector<float> dz = z;
      moe::softmax_cross_entropy_backward(pool, {dz.data(), n, v}, tg, ignore,
                                          1.0f / static_cast<float>(counted));
      const auto num =
          moe_test::numeric_gradient([&] { return ce64(theta, v, tg, ignore); }, theta);
      const auto c = moe_test::compare_gradient(dz.data(), num.data(), n * v);
      INFO("V = " << v << " threads " << threads << ": " << c.str("logits"));
      REQUIRE(c.scale > 0);
      CHECK(c.max_err < 1e-5);
      for (std::size_t i = 0; i < v; ++i) CHECK(dz[4 * v + i] == 0.0f);  // ignored row
    }
  }
  SECTION("every target ignored: no rows counted, zero loss") {
    moe::ThreadPool pool(1);
    std::vector<float> z(3 * 4, 1.0f), rows(3);
    const std::vector<std::int32_t> tg(3, -1);
    const auto s = moe::softmax_cross_entropy(pool, {z.data(), 3, 4}, tg, -1, rows.data());
    CHECK(s.counted == 0);
    CHECK(s.mean() == 0.0);
  }
}
