// Backward of the embedding lookup (with its multiplier, repeated tokens) and of the tied head
// over f32, bf16 and int8 tables, against central differences of float64 formulations.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <moe/core/thread_pool.hpp>
#include <moe/ops/embedding.hpp>

#include "common/gradcheck.hpp"
#include "common/test_util.hpp"

TEST_CASE("embedding lookup backward: repeated tokens accumulate, times the multiplier",
          "[train][embedding]") {
  const std::size_t V = 9, D = 300, T = 12;  // D > one column slab
  const std::vector<std::int32_t> tok = {3, 0, 3, 8, 8, 8, 1, 3, 2, 0, 7, 3};
  const float mult = 2.5f;
  const auto e = moe_test::randn(V * D, 1), r = moe_test::randn(T * D, 2);
  for (std::size_t threads : {1, 2}) {
    moe::ThreadPool pool(threads);
    std::vector<float> h(T * D), g(V * D, 0.0f);
    moe::embed_rows(pool, moe::EmbeddingTable(e.data(), V, D), tok, mult, {h.data(), T, D});
    for (std::size_t t = 0; t < T; ++t) CHECK(h[t * D + 5] == e[tok[t] * D + 5] * mult);
    moe::embed_backward(pool, tok, {r.data(), T, D}, mult, {g.data(), V, D});
    std::vector<double> theta(e.begin(), e.end());
    const auto loss = [&]() {
      double l = 0;
      for (std::size_t t = 0; t < T; ++t)
        for (std::size_t i = 0; i < D; ++i) l += r[t * D + i] * theta[tok[t] * D + i] * mult;
      return l;
    };
    const auto c =
        moe_test::compare_gradient(g.data(), moe_test::numeric_gradient(loss, theta).data(), V * D);
    INFO(c.str("embedding"));
    REQUIRE(c.scale > 0);
    CHECK(c.max_err < 1e-5);
  }
}

TEST_CASE("tied head backward over f32, bf16 and int8 tables", "[train][embedding]") {
  const std::size_t V = 70, D = 13, T = 5;
  const auto e = moe_test::randn(V * D, 3), hv = moe_test::randn(T * D, 4),
             r = moe_test::randn(T * V, 5);
  std::vector<moe::bf16> eb(V * D);
  std::vector<float> eb_wide(V * D);
  for (std::size_t i = 0; i < eb.size(); ++i) {
    eb[i] = moe::bf16(e[i]);
    eb_wide[i] = eb[i].to_float();
  }
  std::vector<std::int8_t> q(V * D);
  std::vector<moe::bf16> s(2 * D);
  std::vector<float> q_wide(V * D);
  for (std::size_t i = 0; i < s.size(); ++i)
    s[i] = moe::bf16(0.01f + 0.001f * static_cast<float>(i));
  for (std::size_t v = 0; v < V; ++v) {
    for (std::size_t i = 0; i < D; ++i) {
      q[v * D + i] = static_cast<std::int8_t>(static_cast<int>(v * 7 + i * 13) % 255 - 127);
      q_wide[v * D + i] = static_cast<float>(q[v * D + i]) * s[(v / (V / 2)) * D + i].to_float();
    }
  }
  struct Case {
    const char* name;
    moe::EmbeddingTable table;
    const std::vector<float>* wide;
  } cases[] = {{"f32", moe::EmbeddingTable(e.data(), V, D), &e},
               {"bf16", moe::EmbeddingTable::bf16_table(eb.data(), V, D), &eb_wide},
               {"int8", moe::EmbeddingTable::int8(q.data(), s.data(), V, D, 2), &q_wide}};
  moe::ThreadPool pool(2);
  for (const Case& c : cases) {
    INFO(c.name);
    std::vector<float> z(T * V), dh(T * D, 0.0f), g(V * D, 0.0f);
    moe::tied_logits(pool, {hv.data(), T, D}, c.table, {z.data(), T, V});
    moe::tied_logits_backward_input(pool, {r.data(), T, V}, c.table, {dh.data(), T, D});
    moe::tied_logits_backward_weight(pool, {hv.data(), T, D}, {r.data(), T, V}, {g.data(), V, D});
    std::vector<double> theta(hv.begin(), hv.end());
    theta.insert(theta.end(), c.wide->begin(), c.wide->end());
    const auto loss = [&]() {
      double l = 0;
      for (std::size_t t = 0; t < T; ++t) {
        for (std::size_t v = 0; v < V; ++v) {
          double zz = 0;
          for (std::size_t i = 0; i < D; ++i) zz += theta[t * D + i] * theta[T * D + v * D + i];
          l += r[t * V + v] * zz;
        }
      }
      return l;
    };
    double zmax = 0, zerr = 0;
    for (std::size_t t = 0; t < T; ++t) {
      for (std::size_t v = 0; v < V; ++v) {
        double zz = 0;
        for (std::size_t i = 0; i < D; ++i) zz += theta[t * D + i] * theta[T * D + v * D + i];
        zmax = std::max(zmax, std::abs(zz));
        zerr = std::max(zerr, std::abs(zz - z[t * V + v]));
      }
    }
    CHECK(zerr <= 1e-5 * zmax);
    const auto num = moe_test::numeric_gradient(loss, theta);
    const auto ch = moe_test::compare_gradient(dh.data(), num.data(), T * D);
    INFO(ch.str("h"));
    REQUIRE(ch.scale > 0);
    CHECK(ch.max_err < 1e-5);
    const auto cw = moe_test::compare_gradient(g.data(), num.data() + T * D, V * D);
    INFO(cw.str("table"));
    REQUIRE(cw.scale > 0);
    CHECK(cw.max_err < 1e-5);
  }
}
