// Cross-check against tools/moe_reference.py: the HF Switch / Mixtral, DeepSpeed, mesh-tf and
// flaxformer formulas transliterated in torch float64, stored in tests/data/moe/*.txt.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <moe/layers/moe_layer.hpp>

#include "common/fixture.hpp"
#include "moe/moe_test_util.hpp"

using Fixture = moe_test::TextFixture;

namespace {
Fixture load_fixture(const std::string& name) {
  return moe_test::load_text_fixture(std::string(MOE_TEST_DATA_DIR) + "/moe/" + name);
}
}  // namespace

namespace {

/// Owns the fixture's f32 weights as views.
struct FixtureWeights {
  std::vector<float> router, gate, up, down;
  std::size_t d, f, e;
  moe::Layout layout;
  explicit FixtureWeights(const Fixture& fx)
      : router(fx.f("router")),
        gate(fx.f("gate")),
        up(fx.f("up")),
        down(fx.f("down")),
        d(fx.cfg("D")),
        f(fx.cfg("F")),
        e(fx.cfg("E")),
        layout(fx.config.at("layout") == "out_in" ? moe::Layout::kOutIn : moe::Layout::kInOut) {}
  moe::F32Weight router_w() const { return {router.data(), d, e, moe::Layout::kInOut}; }
  moe::WeightStack<moe::F32Weight> stack(const std::vector<float>& v, std::size_t in,
                                         std::size_t out) const {
    return {{v.data(), in, out, layout}, e};
  }
  moe::WeightStack<moe::F32Weight> gate_s() const { return stack(gate, d, f); }
  moe::WeightStack<moe::F32Weight> up_s() const { return stack(up, d, f); }
  moe::WeightStack<moe::F32Weight> down_s() const { return stack(down, f, d); }
};

template <class Layer>
void check_fixture(const Fixture& fx, const Layer& layer, const std::string& suf,
                   const std::uint8_t* mask = nullptr, bool check_capacity = true) {
  const std::size_t t_count = fx.cfg("T"), d = fx.cfg("D"), e_count = fx.cfg("E"), k = fx.cfg("k");
  moe::ThreadPool pool(2);
  moe::Arena arena(layer.workspace_bytes(t_count));
  const auto x = fx.f("x");
  std::vector<float> y(t_count * d, -1.0f);
  moe::ForwardOptions opts;
  opts.token_mask = mask;
  const auto res = layer.forward(pool, moe::MatrixView<const float>(x.data(), t_count, d),
                                 moe::MatrixView<float>(y.data(), t_count, d), arena, opts);

  // Routing: same experts (the script picked inputs without near-ties) and weights.
  moe::Arena ra(layer.router().workspace_bytes(t_count));
  const auto r = layer.router().alloc_output(ra, t_count);
  layer.router().route(pool, moe::MatrixView<const float>(x.data(), t_count, d), r, ra);
  const auto& ex = fx.t("experts" + suf);
  for (std::size_t t = 0; t < t_count; ++t) {
    if (mask && !mask[t]) continue;
    for (std::size_t j = 0; j < k; ++j) {
      INFO("token " << t << " slot " << j);
      CHECK(r.experts(t, j) == static_cast<std::uint32_t>(ex[t * k + j]));
    }
  }
  // Weights as routed (before capacity) equal the reference's for tokens that kept every expert.
  const auto& wr = fx.t("weights" + suf);
  for (std::size_t t = 0; t < t_count; ++t) {
    bool all_kept = !(mask && !mask[t]);
    for (std::size_t j = 0; j < k; ++j) all_kept = all_kept && wr[t * k + j] != 0.0;
    if (!all_kept) continue;
    for (std::size_t j = 0; j < k; ++j) {
      INFO("token " << t << " slot " << j);
      CHECK(r.weights(t, j) == Approx(wr[t * k + j]).margin(1e-6));
    }
  }
  // Per-expert kept counts and capacity.
  const auto& kept = fx.t("kept" + suf);
  for (std::size_t e = 0; e < e_count; ++e) {
    INFO("expert " << e);
    CHECK(res.stats.tokens_per_expert[e] == static_cast<std::uint32_t>(kept[e]));
  }
  if (check_capacity && fx.config.count("capacity"))
    CHECK(res.stats.capacity == fx.cfg("capacity"));

  // Output: |y - ref| <= 2e-6 + 2e-5 |ref| (f32 GEMMs over D = 8, F = 12 vs float64).
  const auto& yr = fx.t("y" + suf);
  double worst = 0.0;
  for (std::size_t t = 0; t < t_count; ++t) {
    for (std::size_t i = 0; i < d; ++i) {
      const double ref = (mask && !mask[t]) ? 0.0 : yr[t * d + i];
      const double err = std::abs(y[t * d + i] - ref) - 2e-5 * std::abs(ref);
      worst = std::max(worst, err);
    }
  }
  INFO("worst excess error " << worst);
  CHECK(worst <= 2e-6);

  // Losses (raw values; coefficients are 1 in these layers).
  CHECK(res.losses.load_balance == Approx(fx.t("aux" + suf)[0]).epsilon(1e-5));
  CHECK(res.losses.z_loss == Approx(fx.t("z" + suf)[0]).epsilon(1e-5));
  CHECK(res.losses.total() == Approx(fx.t("aux" + suf)[0] + fx.t("z" + suf)[0]).epsilon(1e-5));
}

}  // namespace

TEST_CASE("fixture: HF Switch top-1 with capacity (position priority, raw probability)",
          "[moe][fixture]") {
  const Fixture fx = load_fixture("hf_switch_top1.txt");
  const FixtureWeights w(fx);
  using R = moe::Router<moe::F32Weight>;
  using L = moe::MoELayer<R, moe::Expert<moe::F32Weight, moe::Activation::kGeluErf>,
                          moe::CapacityFactor, moe::LoadBalanceLoss, moe::RouterZLoss>;
  const L layer(R(w.router_w(), moe::Routing{.top_k = 1, .renormalize = false}),
                {w.gate_s(), w.up_s(), w.down_s()},
                moe::CapacityFactor{.train = 0.75, .eval = 0.75, .min_capacity = 0},
                moe::LoadBalanceLoss{.coef = 1.0f, .counting = moe::BalanceCounting::kTop1},
                moe::RouterZLoss{.coef = 1.0f});
  check_fixture(fx, layer, "");
}

TEST_CASE("fixture: HF Mixtral top-2 dropless, [out, in] weights, with and without padding mask",
          "[moe][fixture]") {
  const Fixture fx = load_fixture("hf_mixtral_top2.txt");
  const FixtureWeights w(fx);
  REQUIRE(w.layout == moe::Layout::kOutIn);
  using R = moe::Router<moe::F32Weight>;
  using L = moe::MoELayer<R, moe::Expert<moe::F32Weight, moe::Activation::kSilu>, moe::Dropless,
                          moe::LoadBalanceLoss, moe::RouterZLoss>;
  const L layer(R(w.router_w(), moe::Routing{.top_k = 2, .renormalize = true}),
                {w.gate_s(), w.up_s(), w.down_s()}, {},
                moe::LoadBalanceLoss{.coef = 1.0f, .counting = moe::BalanceCounting::kAllChoices},
                moe::RouterZLoss{.coef = 1.0f});
  check_fixture(fx, layer, "");
  const auto& m = fx.t("mask");
  std::vector<std::uint8_t> mask(m.begin(), m.end());
  check_fixture(fx, layer, "_masked", mask.data());
}

TEST_CASE("fixture: top-2 position capacity, renormalise after (DeepSpeed) / before (mesh-tf)",
          "[moe][fixture]") {
  const Fixture fx = load_fixture("top2_capacity.txt");
  const FixtureWeights w(fx);
  using R = moe::Router<moe::F32Weight>;
  using L = moe::MoELayer<R, moe::Expert<moe::F32Weight, moe::Activation::kGeluTanh>,
                          moe::CapacityFactor, moe::LoadBalanceLoss, moe::RouterZLoss>;
  for (auto timing : {moe::RenormTiming::kAfterDrop, moe::RenormTiming::kBeforeDrop}) {
    const L layer(
        R(w.router_w(), moe::Routing{.top_k = 2, .renormalize = true}),
        {w.gate_s(), w.up_s(), w.down_s()},
        moe::CapacityFactor{.train = 0.5, .eval = 0.5, .min_capacity = 0, .renorm = timing},
        moe::LoadBalanceLoss{.coef = 1.0f, .counting = moe::BalanceCounting::kTop1},
        moe::RouterZLoss{.coef = 1.0f});
    check_fixture(fx, layer, timing == moe::RenormTiming::kAfterDrop ? "_after" : "_before");
  }
}

TEST_CASE("fixture: DeepSpeed topkgating k=3, drop by probability", "[moe][fixture]") {
  const Fixture fx = load_fixture("deepspeed_topk_probs.txt");
  const FixtureWeights w(fx);
  using R = moe::Router<moe::F32Weight>;
  using L = moe::MoELayer<R, moe::Expert<moe::F32Weight, moe::Activation::kSilu>,
                          moe::CapacityFactor, moe::LoadBalanceLoss, moe::RouterZLoss>;
  const L layer(R(w.router_w(), moe::Routing{.top_k = 3, .renormalize = true}),
                {w.gate_s(), w.up_s(), w.down_s()},
                moe::CapacityFactor{.train = 0.55,
                                    .eval = 0.55,
                                    .min_capacity = 0,
                                    .priority = moe::DropPriority::kProbability},
                moe::LoadBalanceLoss{.coef = 1.0f}, moe::RouterZLoss{.coef = 1.0f});
  check_fixture(fx, layer, "");
}

TEST_CASE("fixture: flaxformer / ST-MoE top-2 raw probabilities, capacity without k",
          "[moe][fixture]") {
  const Fixture fx = load_fixture("flaxformer_top2.txt");
  const FixtureWeights w(fx);
  using R = moe::Router<moe::F32Weight>;
  using L = moe::MoELayer<R, moe::Expert<moe::F32Weight, moe::Activation::kGeluTanh>,
                          moe::CapacityFactor, moe::LoadBalanceLoss, moe::RouterZLoss>;
  const L layer(
      R(w.router_w(), moe::Routing{.top_k = 2, .renormalize = false}),
      {w.gate_s(), w.up_s(), w.down_s()},
      moe::CapacityFactor{.train = 1.25, .eval = 1.25, .multiply_by_k = false, .min_capacity = 2},
      moe::LoadBalanceLoss{.coef = 1.0f, .counting = moe::BalanceCounting::kAllChoices},
      moe::RouterZLoss{.coef = 1.0f});
  check_fixture(fx, layer, "");
}
