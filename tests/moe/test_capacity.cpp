// Capacity policy: formula, limits, drop priority, renormalisation timing, dropped outputs,
// padding.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include <moe/layers/moe_layer.hpp>

#include "moe/moe_test_util.hpp"

using moe_test::DenseStack;
using moe_test::RefPriority;
using moe_test::Routed;

namespace {

constexpr std::size_t kD = 16, kF = 24;

struct Weights {
  std::size_t e;
  DenseStack<float> router, gate, up, down;
  Weights(std::size_t experts, std::uint64_t seed, float router_sd = 0.6f)
      : e(experts),
        router(1, kD, experts, seed, router_sd),
        gate(experts, kD, kF, seed + 1, 0.25f),
        up(experts, kD, kF, seed + 2, 0.25f),
        down(experts, kF, kD, seed + 3, 0.2f) {}
};

using R = moe::Router<moe::F32Weight>;
using Ex = moe::Expert<moe::F32Weight, moe::Activation::kSilu>;
using CapLayer = moe::MoELayer<R, Ex, moe::CapacityFactor>;

struct Run {
  moe::MoEResult res;
  std::vector<float> y;
};

template <class Layer>
Run run(const Layer& layer, const std::vector<float>& x, std::size_t t_count,
        const moe::ForwardOptions& opts = {}, std::size_t threads = 2) {
  moe::ThreadPool pool(threads);
  moe::Arena arena(layer.workspace_bytes(t_count));
  Run r;
  r.y.assign(t_count * kD, 123.0f);
  r.res = layer.forward(pool, moe::MatrixView<const float>(x.data(), t_count, kD),
                        moe::MatrixView<float>(r.y.data(), t_count, kD), arena, opts);
  return r;
}

RefPriority ref_prio(moe::DropPriority p) {
  switch (p) {
    case moe::DropPriority::kPosition:
      return RefPriority::kPosition;
    case moe::DropPriority::kProbability:
      return RefPriority::kProbability;
    case moe::DropPriority::kBatchPrioritized:
      return RefPriority::kBatchPrioritized;
  }
  return RefPriority::kPosition;
}

}  // namespace

TEST_CASE("capacity: C = ceil(k T cf / E), minimum, clamp to T", "[moe][capacity]") {
  moe::CapacityFactor c{.train = 1.25, .eval = 2.0, .multiply_by_k = true, .min_capacity = 4};
  CHECK(c.capacity(64, 2, 8, true) == 20);   // 2*64*1.25/8 = 20
  CHECK(c.capacity(64, 2, 8, false) == 32);  // eval factor
  CHECK(c.capacity(10, 2, 8, true) == 4);    // ceil(3.125) = 4
  CHECK(c.capacity(3, 2, 8, true) == 3);     // min 4 clamped to T = 3
  CHECK(c.capacity(0, 2, 8, true) == 0);
  c.multiply_by_k = false;
  CHECK(c.capacity(64, 2, 8, true) == 10);
  c.min_capacity = 0;
  c.train = 1.1;
  CHECK(c.capacity(100, 1, 10, true) == 11);  // 11.000000000000002 is forgiven
  c.train = 1.11;
  CHECK(c.capacity(100, 1, 10, true) == 12);
  c.train = 0.0;
  CHECK(c.capacity(100, 2, 10, true) == 0);
  c.train = 100.0;
  CHECK(c.capacity(100, 2, 10, true) == 100);  // k cf > E: clamped to T
  CHECK_THROWS_AS(moe::CapacityFactor{.train = -1.0}.validate(), moe::ConfigError);
}

TEST_CASE("capacity: honoured, never above T, counts add up, matches an independent reference",
          "[moe][capacity]") {
  const Weights w(6, 100);
  const std::size_t t_count = 37;
  const auto x = moe_test::randn(t_count * kD, 101);
  for (std::size_t k : {1, 2, 3}) {
    for (double cf : {0.0, 0.3, 0.8, 1.5, 50.0}) {
      for (std::size_t min_cap : {0, 5, 100}) {
        for (auto prio : {moe::DropPriority::kPosition, moe::DropPriority::kProbability,
                          moe::DropPriority::kBatchPrioritized}) {
          for (auto timing : {moe::RenormTiming::kBeforeDrop, moe::RenormTiming::kAfterDrop}) {
            const CapLayer layer(R(w.router.at(0), {.top_k = k, .renormalize = true}),
                                 {w.gate.view(), w.up.view(), w.down.view()},
                                 moe::CapacityFactor{.train = cf,
                                                     .eval = cf,
                                                     .min_capacity = min_cap,
                                                     .priority = prio,
                                                     .renorm = timing});
            const Run r = run(layer, x, t_count);
            const auto& st = r.res.stats;
            INFO("k " << k << " cf " << cf << " min " << min_cap << " prio " << int(prio));
            REQUIRE(st.capacity <= t_count);
            std::size_t kept = 0;
            for (std::size_t e = 0; e < w.e; ++e) {
              CHECK(st.tokens_per_expert[e] <= st.capacity);
              kept += st.tokens_per_expert[e];
            }
            CHECK(st.assignments == k * t_count);
            CHECK(kept + st.dropped == st.assignments);
            CHECK(st.dropped_fraction == Approx(double(st.dropped) / double(st.assignments)));
            // independent reference of which pairs are kept and their final weights
            const Routed ro = moe_test::route_copy(layer.router(), x, t_count);
            const auto wref =
                moe_test::ref_capacity_weights(ro, nullptr, st.capacity, ref_prio(prio),
                                               timing == moe::RenormTiming::kAfterDrop, 1.0f);
            const auto yref =
                moe_test::ref_combine(layer.experts(), ro, wref, x, moe::Activation::kSilu);
            CHECK(moe_test::tol_ratio(r.y.data(), yref.data(), yref.size(), 1e-5, 1e-4) <= 1.0);
          }
        }
      }
    }
  }
}

TEST_CASE("capacity: all tokens to one expert; dropped tokens output exactly 0",
          "[moe][capacity]") {
  const std::size_t e_count = 4, t_count = 20;
  Weights w(e_count, 200);
  // router column 0 = +8 on every input: with positive inputs expert 0 wins for every token
  for (std::size_t i = 0; i < kD; ++i) w.router.data[i * e_count + 0] = 8.0f;
  const auto x = moe_test::randu(t_count * kD, 201, 0.1f, 1.0f);
  const CapLayer layer(R(w.router.at(0), {.top_k = 1, .renormalize = false}),
                       {w.gate.view(), w.up.view(), w.down.view()},
                       moe::CapacityFactor{.train = 1.0, .eval = 1.0, .min_capacity = 0});
  const Run r = run(layer, x, t_count);
  const std::size_t cap = 5;  // ceil(20 / 4)
  REQUIRE(r.res.stats.capacity == cap);
  CHECK(r.res.stats.tokens_per_expert[0] == cap);
  CHECK(r.res.stats.dropped == t_count - cap);
  for (std::size_t t = 0; t < t_count; ++t) {
    const Routed ro = moe_test::route_copy(layer.router(), x, t_count);
    REQUIRE(ro.experts[t] == 0u);
    for (std::size_t i = 0; i < kD; ++i) {
      if (t >= cap) {
        CHECK(r.y[t * kD + i] == 0.0f);  // position priority: the first C tokens are kept
      } else {
        CHECK(r.y[t * kD + i] != 0.0f);
      }
    }
  }
  // C = 0: every pair dropped, every output 0
  const CapLayer zero(R(w.router.at(0), {.top_k = 2}), {w.gate.view(), w.up.view(), w.down.view()},
                      moe::CapacityFactor{.train = 0.0, .eval = 0.0, .min_capacity = 0});
  const Run z = run(zero, x, t_count);
  CHECK(z.res.stats.capacity == 0);
  CHECK(z.res.stats.dropped_fraction == 1.0f);
  for (float v : z.y) CHECK(v == 0.0f);
}

TEST_CASE("capacity: drop priorities on a hand-made batch", "[moe][capacity]") {
  // D = E = 4 identity router: the logits are the inputs. k = 2, capacity 2 per expert.
  std::vector<float> ident(16, 0.0f);
  for (std::size_t i = 0; i < 4; ++i) ident[i * 4 + i] = 1.0f;
  const DenseStack<float> gate(4, 4, 8, 1, 0.5f), up(4, 4, 8, 2, 0.5f), down(4, 8, 4, 3, 0.5f);
  // token: first choice, second choice (and how confident)
  const std::vector<float> x = {
      1.0f, 0.9f, 0, 0,     // t0: e0 (weak), e1
      0.8f, 3.0f, 0, 0,     // t1: e1 (strong), e0
      2.0f, 0,    0, 1.5f,  // t2: e0, e3
      0,    1.2f, 0, 0.0f,  // t3: e1, then e0 (tie of zeros: lowest index 0)
      4.0f, 0,    0, 0,     // t4: e0 (very strong), e1 (tie: lowest index)
  };
  const std::size_t t_count = 5;
  using L =
      moe::MoELayer<moe::Router<moe::F32Weight>, moe::Expert<moe::F32Weight>, moe::CapacityFactor>;
  auto kept_by = [&](moe::DropPriority p) {
    const L layer(moe::Router<moe::F32Weight>({ident.data(), 4, 4}, {.top_k = 2}),
                  {gate.view(), up.view(), down.view()},
                  moe::CapacityFactor{.train = 0.8, .eval = 0.8, .min_capacity = 0, .priority = p});
    const Run r = [&] {
      moe::ThreadPool pool(1);
      moe::Arena arena(layer.workspace_bytes(t_count));
      Run rr;
      rr.y.assign(t_count * 4, 0.0f);
      rr.res = layer.forward(pool, moe::MatrixView<const float>(x.data(), t_count, 4),
                             moe::MatrixView<float>(rr.y.data(), t_count, 4), arena);
      return rr;
    }();
    REQUIRE(r.res.stats.capacity == 2);  // ceil(2 * 5 * 0.8 / 4) = 2
    const Routed ro = moe_test::route_copy(layer.router(), x, t_count);
    std::vector<std::uint8_t> kept;
    moe_test::ref_capacity_weights(ro, nullptr, 2, ref_prio(p), true, 1.0f, &kept);
    // the layer's output agrees with the reference's kept set
    const auto wref = moe_test::ref_capacity_weights(ro, nullptr, 2, ref_prio(p), true, 1.0f);
    const auto yref = moe_test::ref_combine(layer.experts(), ro, wref, x, moe::Activation::kSilu);
    CHECK(moe_test::tol_ratio(r.y.data(), yref.data(), yref.size(), 1e-6, 1e-5) <= 1.0);
    return std::make_pair(ro.experts, kept);
  };
  const auto [experts, pos] = kept_by(moe::DropPriority::kPosition);
  REQUIRE(experts == std::vector<std::uint32_t>{0, 1, 1, 0, 0, 3, 1, 0, 0, 1});
  // Position: e0 first choices t0, t2, t4 -> keeps t0, t2; e1: t1, t3 (first) -> t0's 2nd dropped.
  CHECK(pos == std::vector<std::uint8_t>{1, 0, 1, 0, 1, 1, 1, 0, 0, 0});
  // Probability: e0 candidates by score: t4 (.95), t2 (.53), t0 (.38), ... -> t4, t2 kept;
  // e1: t1 (.83), t3 (.53), t0 (.34), t4 (.02) -> t1, t3 kept.
  const auto prob = kept_by(moe::DropPriority::kProbability).second;
  CHECK(prob == std::vector<std::uint8_t>{0, 0, 1, 0, 1, 1, 1, 0, 1, 0});
  // BPR: tokens by top-1 score: t4, t1, t2, t3, t0 -> e0 first choices t4, t2; e1: t1, t3 kept.
  const auto bpr = kept_by(moe::DropPriority::kBatchPrioritized).second;
  CHECK(bpr == std::vector<std::uint8_t>{0, 0, 1, 0, 1, 1, 1, 0, 1, 0});
}

TEST_CASE("capacity: renormalise before vs after dropping", "[moe][capacity]") {
  const std::size_t e_count = 4, t_count = 8;
  Weights w(e_count, 300);
  for (std::size_t i = 0; i < kD; ++i) w.router.data[i * e_count + 0] = 8.0f;  // everyone's 1st: e0
  const auto x = moe_test::randu(t_count * kD, 301, 0.1f, 1.0f);
  for (auto timing : {moe::RenormTiming::kBeforeDrop, moe::RenormTiming::kAfterDrop}) {
    const CapLayer layer(
        R(w.router.at(0), {.top_k = 2, .renormalize = true}),
        {w.gate.view(), w.up.view(), w.down.view()},
        moe::CapacityFactor{.train = 1.0, .eval = 1.0, .min_capacity = 0, .renorm = timing});
    const Run r = run(layer, x, t_count);
    REQUIRE(r.res.stats.capacity == 4);  // ceil(2 * 8 / 4)
    const Routed ro = moe_test::route_copy(layer.router(), x, t_count);
    // tokens 4..7 lose expert 0 (their first choice); their second expert survives when it has room
    std::vector<float> wt(ro.weights.size(), 0.0f);
    std::vector<std::uint8_t> kept;
    moe_test::ref_capacity_weights(ro, nullptr, 4, RefPriority::kPosition, false, 1.0f, &kept);
    for (std::size_t p = 0; p < wt.size(); ++p) {
      if (!kept[p]) continue;
      const bool lost_other = !kept[p ^ 1];
      // before: the routed weight; after: the only kept expert of a token gets weight 1
      wt[p] = (timing == moe::RenormTiming::kAfterDrop && lost_other) ? 1.0f : ro.weights[p];
    }
    const auto yref = moe_test::ref_combine(layer.experts(), ro, wt, x, moe::Activation::kSilu);
    CHECK(moe_test::tol_ratio(r.y.data(), yref.data(), yref.size(), 1e-6, 1e-5) <= 1.0);
    std::size_t lonely = 0;
    for (std::size_t t = 4; t < t_count; ++t) lonely += kept[t * 2 + 1];
    CHECK(lonely > 0);  // the case under test occurs
  }
}

TEST_CASE("capacity: padding tokens take no capacity and change nothing for real tokens",
          "[moe][capacity]") {
  const Weights w(5, 400);
  const std::size_t n_real = 23;
  const auto xr = moe_test::randn(n_real * kD, 401);
  // interleave 9 padding tokens (with large values) between the real ones
  std::vector<float> x;
  std::vector<std::uint8_t> mask;
  std::vector<std::size_t> pos;
  const auto junk = moe_test::randn(9 * kD, 402, 5.0f);
  for (std::size_t t = 0, j = 0; t < n_real; ++t) {
    if (t % 3 == 1 && j < 9) {
      x.insert(x.end(), junk.begin() + j * kD, junk.begin() + (j + 1) * kD);
      mask.push_back(0);
      ++j;
    }
    pos.push_back(mask.size());
    x.insert(x.end(), xr.begin() + t * kD, xr.begin() + (t + 1) * kD);
    mask.push_back(1);
  }
  const std::size_t t_all = mask.size();
  for (auto prio : {moe::DropPriority::kPosition, moe::DropPriority::kProbability,
                    moe::DropPriority::kBatchPrioritized}) {
    using L = moe::MoELayer<R, Ex, moe::CapacityFactor, moe::LoadBalanceLoss, moe::RouterZLoss>;
    const L layer(
        R(w.router.at(0), {.top_k = 2}), {w.gate.view(), w.up.view(), w.down.view()},
        moe::CapacityFactor{.train = 0.7, .eval = 0.7, .min_capacity = 0, .priority = prio});
    const Run a = run(layer, xr, n_real);
    moe::ForwardOptions opts;
    opts.token_mask = mask.data();
    const Run b = run(layer, x, t_all, opts);
    CHECK(a.res.stats.capacity == b.res.stats.capacity);
    CHECK(a.res.stats.tokens == b.res.stats.tokens);
    CHECK(a.res.stats.assignments == b.res.stats.assignments);
    CHECK(a.res.stats.dropped == b.res.stats.dropped);
    CHECK(a.res.stats.tokens_per_expert == b.res.stats.tokens_per_expert);
    CHECK(a.res.losses.load_balance == Approx(b.res.losses.load_balance).epsilon(1e-6));
    CHECK(a.res.losses.z_loss == Approx(b.res.losses.z_loss).epsilon(1e-6));
    CHECK(a.res.stats.router_entropy == Approx(b.res.stats.router_entropy).epsilon(1e-6));
    CHECK(a.res.stats.mean_top1_prob == Approx(b.res.stats.mean_top1_prob).epsilon(1e-6));
    for (std::size_t t = 0; t < n_real; ++t) {
      for (std::size_t i = 0; i < kD; ++i)
        CHECK(b.y[pos[t] * kD + i] == Approx(a.y[t * kD + i]).margin(1e-6));
    }
    for (std::size_t t = 0; t < t_all; ++t) {
      if (mask[t]) continue;
      for (std::size_t i = 0; i < kD; ++i) CHECK(b.y[t * kD + i] == 0.0f);
    }
  }
}
