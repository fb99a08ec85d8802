// MoELayer and presets: Grok-1 vs the dense one-hot formulation, weight types, DeepSeek-V3,
// jitter isolation, thread-count determinism, workspace, block processing, errors, GatedFfn.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include <moe/layers/presets.hpp>

#include "moe/moe_test_util.hpp"

using moe_test::DenseStack;
using moe_test::Int8Stack;
using moe_test::Routed;

namespace {

/// The FFN-layer interface a TransformerBlock relies on (moe_types.hpp).
template <class L>
concept FfnLayer = requires(const L& l, moe::ThreadPool& pool, moe::MatrixView<const float> x,
                            moe::MatrixView<float> y, moe::Arena& arena) {
  { l.dim() } -> std::same_as<std::size_t>;
  { l.workspace_bytes(std::size_t{1}) } -> std::same_as<std::size_t>;
  { l.forward(pool, x, y, arena) } -> std::same_as<typename L::Result>;
  { l.forward(pool, x, y, arena, moe::ForwardOptions{}) } -> std::same_as<typename L::Result>;
};
static_assert(FfnLayer<moe::presets::Grok1>);
static_assert(FfnLayer<moe::presets::Mixtral<moe::BF16Weight>>);
static_assert(FfnLayer<moe::presets::DeepSeekV3<moe::F32Weight>>);
static_assert(FfnLayer<moe::presets::Switch<moe::F32Weight>>);
static_assert(FfnLayer<moe::presets::GShardTop2<moe::F32Weight>>);
static_assert(FfnLayer<moe::presets::STMoE<moe::F32Weight>>);
static_assert(FfnLayer<moe::GatedFfn<moe::Int8Weight, moe::Activation::kGeluTanh>>);
static_assert(std::is_same_v<moe::presets::Grok1::Result, moe::MoEResult>);
static_assert(std::is_same_v<moe::GatedFfn<moe::F32Weight>::Result, moe::FfnResult>);

template <class Layer>
std::vector<float> run(const Layer& layer, const std::vector<float>& x, std::size_t t_count,
                       std::size_t threads = 2, const moe::ForwardOptions& opts = {},
                       moe::MoEResult* res = nullptr) {
  moe::ThreadPool pool(threads);
  moe::Arena arena(layer.workspace_bytes(t_count));
  std::vector<float> y(t_count * layer.dim(), 7.0f);
  auto r = layer.forward(pool, moe::MatrixView<const float>(x.data(), t_count, layer.dim()),
                         moe::MatrixView<float>(y.data(), t_count, layer.dim()), arena, opts);
  if constexpr (std::is_same_v<decltype(r), moe::MoEResult>) {
    if (res) *res = r;
  }
  return y;
}

}  // namespace

TEST_CASE("Grok1 preset equals the dense 'compute all experts, pick with a one-hot' formulation",
          "[moe][layer][grok1]") {
  // Grok-1's structure at small size: f32 router [D, 8], int8 experts in the file layout
  // (gate/up [8, D, F] with one scale row, down [8, F, D] with 8 scale blocks), GELU-tanh.
  const std::size_t d = 64, f = 96, e_count = 8, t_count = 13;
  const DenseStack<float> router(1, d, e_count, 1, 0.3f);
  const Int8Stack gate(e_count, d, f, 1, 2, 0.002f), up(e_count, d, f, 1, 3, 0.002f),
      down(e_count, f, d, 8, 4, 0.002f);
  const moe::presets::Grok1 layer(router.at(0), gate.view(), up.view(), down.view());
  const auto x = moe_test::randn(t_count * d, 5);
  const auto y = run(layer, x, t_count);

  // JAX reference (model.py): every token tiled once per slot, ALL 8 experts evaluated on every
  // row, a one-hot over the row's expert picks one output, scaled by the raw softmax gate.
  std::vector<double> ref(t_count * d, 0.0);
  for (std::size_t t = 0; t < t_count; ++t) {
    const auto p = moe_test::softmax_ref(moe_test::logits_ref(router.at(0), x.data() + t * d));
    const auto top = moe_test::topk_ref(p, 2);
    for (std::size_t slot = 0; slot < 2; ++slot) {
      std::vector<std::vector<double>> all(e_count);
      for (std::size_t e = 0; e < e_count; ++e) {
        all[e] = moe_test::ffn_ref(gate.at(e), up.at(e), down.at(e), x.data() + t * d,
                                   moe::Activation::kGeluTanh);
      }
      for (std::size_t e = 0; e < e_count; ++e) {
        const double one_hot = e == top[slot] ? 1.0 : 0.0;
        for (std::size_t i = 0; i < d; ++i) ref[t * d + i] += p[top[slot]] * one_hot * all[e][i];
      }
    }
  }
  const double ratio = moe_test::tol_ratio(y.data(), ref.data(), ref.size(), 1e-6, 1e-4);
  INFO("worst error / (1e-6 + 1e-4 |ref|) = " << ratio);
  CHECK(ratio <= 1.0);
  // gates are not renormalised: scaling check on one token (sum of gates < 1)
  const Routed ro = moe_test::route_copy(layer.router(), x, t_count);
  CHECK(ro.weights[0] + ro.weights[1] < 1.0f);
}

TEMPLATE_TEST_CASE("Mixtral preset: f32 and bf16 weights in both layouts match float64",
                   "[moe][layer]", float, moe::bf16) {
  const std::size_t d = 48, f = 80, e_count = 8, t_count = 21;
  const DenseStack<float> router(1, d, e_count, 10, 0.3f);
  for (auto layout : {moe::Layout::kInOut, moe::Layout::kOutIn}) {
    const DenseStack<TestType> gate(e_count, d, f, 11, 0.15f, layout),
        up(e_count, d, f, 12, 0.15f, layout), down(e_count, f, d, 13, 0.1f, layout);
    const moe::presets::Mixtral<moe::DenseWeight<TestType>> layer(router.at(0), gate.view(),
                                                                  up.view(), down.view());
    const auto x = moe_test::randn(t_count * d, 14);
    moe::MoEResult res;
    const auto y = run(layer, x, t_count, 2, {}, &res);
    const Routed ro = moe_test::route_copy(layer.router(), x, t_count);
    const auto ref =
        moe_test::ref_combine(layer.experts(), ro, ro.weights, x, moe::Activation::kSilu);
    INFO("layout " << moe::layout_name(layout));
    CHECK(moe_test::tol_ratio(y.data(), ref.data(), ref.size(), 1e-6, 1e-4) <= 1.0);
    for (std::size_t t = 0; t < t_count; ++t)
      CHECK(ro.weights[2 * t] + ro.weights[2 * t + 1] == Approx(1.0f));
    CHECK(res.losses.load_balance > 0.0f);
    CHECK(res.losses.load_balance_weighted == Approx(1e-3 * res.losses.load_balance));
    CHECK(res.losses.z_loss == 0.0f);
  }
}

TEST_CASE("DeepSeekV3 preset: sigmoid, bias, groups, route scale and a shared expert",
          "[moe][layer]") {
  const std::size_t d = 32, f = 40, fs = 56, e_count = 16, t_count = 9;
  const DenseStack<float> router(1, d, e_count, 20, 0.4f);
  const DenseStack<float> gate(e_count, d, f, 21, 0.15f), up(e_count, d, f, 22, 0.15f),
      down(e_count, f, d, 23, 0.1f);
  const DenseStack<float> sg(1, d, fs, 24, 0.15f), su(1, d, fs, 25, 0.15f), sd(1, fs, d, 26, 0.1f);
  const auto bias = moe_test::randu(e_count, 27, -0.2f, 0.2f);
  using L = moe::presets::DeepSeekV3<moe::F32Weight>;
  const L layer({.router = router.at(0),
                 .selection_bias = bias,
                 .gate = gate.view(),
                 .up = up.view(),
                 .down = down.view(),
                 .shared = {sg.at(0), su.at(0), sd.at(0)}});
  CHECK(layer.top_k() == 8);
  CHECK(layer.router().routing().route_scale == 2.5f);
  const auto x = moe_test::randn(t_count * d, 28);
  moe::MoEResult res;
  const auto y = run(layer, x, t_count, 2, {}, &res);
  const Routed ro = moe_test::route_copy(layer.router(), x, t_count);
  auto ref = moe_test::ref_combine(layer.experts(), ro, ro.weights, x, moe::Activation::kSilu);
  for (std::size_t t = 0; t < t_count; ++t) {
    const auto s =
        moe_test::ffn_ref(sg.at(0), su.at(0), sd.at(0), x.data() + t * d, moe::Activation::kSilu);
    for (std::size_t i = 0; i < d; ++i) ref[t * d + i] += s[i];
    double wsum = 0.0;
    for (std::size_t j = 0; j < 8; ++j) wsum += ro.weights[t * 8 + j];
    CHECK(wsum == Approx(2.5).epsilon(1e-5));
    // 8 groups of 2, 4 kept, k = 8: exactly the experts of 4 whole groups
    std::vector<int> per_group(8, 0);
    for (std::size_t j = 0; j < 8; ++j) per_group[ro.experts[t * 8 + j] / 2]++;
    for (int c : per_group) CHECK((c == 0 || c == 2));
  }
  CHECK(moe_test::tol_ratio(y.data(), ref.data(), ref.size(), 1e-6, 1e-4) <= 1.0);
  CHECK(res.losses.load_balance > 0.0f);
  CHECK(res.losses.load_balance_weighted == Approx(1e-4 * res.losses.load_balance));
}

TEST_CASE("presets pin their switches", "[moe][layer]") {
  const std::size_t d = 8, f = 8, e_count = 8;
  const DenseStack<float> router(1, d, e_count, 1, 0.3f), g(e_count, d, f, 2, 0.1f),
      u(e_count, d, f, 3, 0.1f), dn(e_count, f, d, 4, 0.1f);
  const moe::presets::Switch<moe::F32Weight> sw(router.at(0), g.view(), u.view(), dn.view());
  CHECK(sw.top_k() == 1);
  CHECK_FALSE(sw.router().routing().renormalize);
  CHECK(sw.router().noise().eps == 1e-2f);
  CHECK(sw.capacity_policy_value().train == 1.25);
  CHECK(sw.capacity_policy_value().eval == 2.0);
  CHECK(sw.balance_policy_value().counting == moe::BalanceCounting::kTop1);
  CHECK(sw.zloss_policy_value().coef == 1e-3f);
  const moe::presets::STMoE<moe::F32Weight> st(router.at(0), g.view(), u.view(), dn.view());
  CHECK_FALSE(st.capacity_policy_value().multiply_by_k);
  CHECK_FALSE(st.router().routing().renormalize);
  CHECK(st.balance_policy_value().counting == moe::BalanceCounting::kAllChoices);
  const moe::presets::GShardTop2<moe::F32Weight> gs(router.at(0), g.view(), u.view(), dn.view());
  CHECK(gs.capacity_policy_value().renorm == moe::RenormTiming::kBeforeDrop);
  CHECK(gs.router().noise().threshold == 0.2f);
  const moe::presets::Grok1Of<moe::F32Weight> grok(router.at(0), g.view(), u.view(), dn.view());
  CHECK_FALSE(grok.router().routing().renormalize);
  CHECK(moe::presets::Grok1Of<moe::F32Weight>::expert_type::activation ==
        moe::Activation::kGeluTanh);
  CHECK(moe::presets::Mixtral<moe::F32Weight>::expert_type::activation == moe::Activation::kSilu);
  const moe::presets::GLaM<moe::F32Weight> glam(router.at(0), g.view(), u.view(), dn.view());
  CHECK(glam.top_k() == 2);
  CHECK(glam.router().routing().renormalize);
  CHECK(glam.capacity_policy_value().train == 2.0);
  CHECK_FALSE(glam.capacity_policy_value().multiply_by_k);
  CHECK(glam.capacity_policy_value().min_capacity == 0);
  CHECK(glam.capacity_policy_value().renorm == moe::RenormTiming::kBeforeDrop);
  CHECK(glam.balance_policy_value().coef == 1e-2f);
  CHECK(glam.balance_policy_value().counting == moe::BalanceCounting::kTop1);
  CHECK(moe::presets::GLaM<moe::F32Weight>::expert_type::activation == moe::Activation::kGeluTanh);
  const DenseStack<float> noise(1, d, e_count, 9, 0.3f);
  using SG = moe::presets::SparselyGated<moe::F32Weight>;
  const SG sg({.router = router.at(0),
               .noise = noise.at(0),
               .gate = g.view(),
               .up = u.view(),
               .down = dn.view()});
  CHECK(sg.top_k() == 4);
  CHECK(sg.router().routing().score == moe::ScoreFn::kSoftmaxOfSelected);
  CHECK(sg.router().noise().noise_epsilon == 1e-2f);
  CHECK(sg.balance_policy_value().w_importance == 0.1f);
  CHECK(sg.balance_policy_value().w_load == 0.1f);
  CHECK_THROWS_WITH(
      SG({.router = router.at(0), .gate = g.view(), .up = u.view(), .down = dn.view()}),
      Catch::Contains("[router] weight 'noise' has no data"));
  // the pinned values are defaults: change one through Policies, the others keep their values
  using S = moe::presets::Switch<moe::F32Weight>;
  S::Policies p;
  p.capacity.train = 3.0;
  p.balance.coef = 0.5f;
  p.routing.top_k = 2;
  p.noise.seed = 9;
  const S custom({.router = router.at(0), .gate = g.view(), .up = u.view(), .down = dn.view()}, p);
  CHECK(custom.capacity_policy_value().train == 3.0);
  CHECK(custom.capacity_policy_value().eval == 2.0);
  CHECK(custom.capacity_policy_value().min_capacity == 4);
  CHECK(custom.capacity_policy_value().renorm == moe::RenormTiming::kBeforeDrop);
  CHECK(custom.balance_policy_value().coef == 0.5f);
  CHECK(custom.balance_policy_value().counting == moe::BalanceCounting::kTop1);
  CHECK(custom.top_k() == 2);
  CHECK_FALSE(custom.router().routing().renormalize);
  CHECK(custom.router().noise().seed == 9);
  CHECK(custom.router().noise().eps == 1e-2f);
  CHECK(custom.zloss_policy_value().coef == 1e-3f);
  // the example: Mixtral with a different balance coefficient keeps kAllChoices
  using M = moe::presets::Mixtral<moe::F32Weight>;
  M::Policies mp;
  mp.balance.coef = 1e-2f;
  const M mixtral(router.at(0), g.view(), u.view(), dn.view(), mp);
  CHECK(mixtral.balance_policy_value().coef == 1e-2f);
  CHECK(mixtral.balance_policy_value().counting == moe::BalanceCounting::kAllChoices);
  CHECK(mixtral.policies().routing.renormalize);
  // a whole policy value (library defaults + one field) does not convert silently
  static_assert(!std::is_convertible_v<moe::LoadBalanceLoss, M::balance_policy>);
  static_assert(!std::is_convertible_v<moe::CapacityFactor, S::capacity_policy>);
  static_assert(std::is_constructible_v<M::balance_policy, moe::LoadBalanceLoss>);
  // training with Switch/GShard noise runs and is reproducible
  const auto x = moe_test::randn(12 * d, 5);
  moe::ForwardOptions opts;
  opts.training = true;
  opts.step = 3;
  CHECK(run(sw, x, 12, 1, opts) == run(sw, x, 12, 2, opts));
  CHECK(run(gs, x, 12, 1, opts) == run(gs, x, 12, 3, opts));
}

TEST_CASE("jitter never reaches the expert inputs", "[moe][layer]") {
  const std::size_t d = 24, f = 32, e_count = 6, t_count = 30;
  const DenseStack<float> router(1, d, e_count, 30, 0.4f), g(e_count, d, f, 31, 0.2f),
      u(e_count, d, f, 32, 0.2f), dn(e_count, f, d, 33, 0.2f);
  using RJ = moe::Router<moe::F32Weight, moe::Routing, moe::Jitter>;
  using L = moe::MoELayer<RJ, moe::Expert<moe::F32Weight, moe::Activation::kGeluTanh>>;
  const L layer(RJ(router.at(0), {.top_k = 2}, {.eps = 0.5f, .seed = 1}),
                {g.view(), u.view(), dn.view()});
  const auto x = moe_test::randn(t_count * d, 34);
  moe::ForwardOptions opts;
  opts.training = true;
  opts.step = 77;
  const auto y = run(layer, x, t_count, 2, opts);
  const Routed noisy = moe_test::route_copy(layer.router(), x, t_count, opts);
  const Routed clean = moe_test::route_copy(layer.router(), x, t_count);
  CHECK(noisy.experts != clean.experts);  // eps = 0.5 changes some choices
  // expert inputs are the clean x: the reference uses the noisy routing but clean inputs
  const auto ref =
      moe_test::ref_combine(layer.experts(), noisy, noisy.weights, x, moe::Activation::kGeluTanh);
  CHECK(moe_test::tol_ratio(y.data(), ref.data(), ref.size(), 1e-6, 1e-4) <= 1.0);
  // and x itself is untouched
  CHECK(x == moe_test::randn(t_count * d, 34));
}

TEST_CASE("results are bit-identical for 1, 2 and 3 threads", "[moe][layer]") {
  const std::size_t d = 40, f = 72, e_count = 8, t_count = 50;
  const DenseStack<float> router(1, d, e_count, 40, 0.4f);
  const Int8Stack g(e_count, d, f, 1, 41, 0.003f), u(e_count, d, f, 1, 42, 0.003f),
      dn(e_count, f, d, 8, 43, 0.003f);
  using RN = moe::Router<moe::F32Weight, moe::Routing, moe::GaussianLogitNoise>;
  using L = moe::MoELayer<RN, moe::Expert<moe::Int8Weight, moe::Activation::kGeluTanh>,
                          moe::CapacityFactor, moe::LoadBalanceLoss, moe::RouterZLoss>;
  const L layer(RN(router.at(0), {.top_k = 2}, {.stddev = 0.5f}), {g.view(), u.view(), dn.view()},
                moe::CapacityFactor{.train = 0.9, .priority = moe::DropPriority::kProbability});
  const auto x = moe_test::randn(t_count * d, 44);
  for (bool training : {false, true}) {
    moe::ForwardOptions opts;
    opts.training = training;
    opts.step = 12;
    moe::MoEResult r1, r2, r3;
    const auto y1 = run(layer, x, t_count, 1, opts, &r1);
    const auto y2 = run(layer, x, t_count, 2, opts, &r2);
    const auto y3 = run(layer, x, t_count, 3, opts, &r3);
    CHECK(y1 == y2);
    CHECK(y1 == y3);
    CHECK(r1.losses.load_balance == r3.losses.load_balance);
    CHECK(r1.losses.z_loss == r3.losses.z_loss);
    CHECK(r1.stats.tokens_per_expert == r3.stats.tokens_per_expert);
    CHECK(r1.stats.router_entropy == r2.stats.router_entropy);
  }
}

TEST_CASE("workspace_bytes is enough in the worst case; blocks of more than 256 rows",
          "[moe][layer]") {
  // every token to expert 0 (k = 2: and to expert 1), T = 300 > kFfnBlockRows.
  const std::size_t d = 8, f = 16, e_count = 4, t_count = 300;
  DenseStack<float> router(1, d, e_count, 50, 0.1f);
  for (std::size_t i = 0; i < d; ++i) {
    router.data[i * e_count + 0] = 6.0f;
    router.data[i * e_count + 1] = 3.0f;
  }
  const DenseStack<float> g(e_count, d, f, 51, 0.3f), u(e_count, d, f, 52, 0.3f),
      dn(e_count, f, d, 53, 0.3f);
  const moe::presets::Mixtral<moe::F32Weight> layer(router.at(0), g.view(), u.view(), dn.view());
  const auto x = moe_test::randu(t_count * d, 54, 0.1f, 1.0f);
  moe::ThreadPool pool(2);
  moe::Arena arena(layer.workspace_bytes(t_count));
  std::vector<float> y(t_count * d);
  const auto res = layer.forward(pool, moe::MatrixView<const float>(x.data(), t_count, d),
                                 moe::MatrixView<float>(y.data(), t_count, d), arena);
  CHECK(arena.high_water() <= arena.capacity());
  CHECK(arena.used() == 0);  // everything released
  CHECK(res.stats.tokens_per_expert[0] == t_count);
  CHECK(res.stats.tokens_per_expert[1] == t_count);
  const Routed ro = moe_test::route_copy(layer.router(), x, t_count);
  const auto ref =
      moe_test::ref_combine(layer.experts(), ro, ro.weights, x, moe::Activation::kSilu);
  CHECK(moe_test::tol_ratio(y.data(), ref.data(), ref.size(), 1e-6, 1e-4) <= 1.0);
  // a workspace for fewer tokens than passed runs out (CapacityError), never overflows
  moe::Arena small(layer.workspace_bytes(10));
  CHECK_THROWS_AS(layer.forward(pool, moe::MatrixView<const float>(x.data(), t_count, d),
                                moe::MatrixView<float>(y.data(), t_count, d), small),
                  moe::CapacityError);
  // T = 0 is a no-op
  CHECK(layer
            .forward(pool, moe::MatrixView<const float>(x.data(), 0, d),
                     moe::MatrixView<float>(y.data(), 0, d), arena)
            .stats.tokens == 0);
  // strided input and output views
  std::vector<float> xs(t_count * (d + 3)), ys(t_count * (d + 5), -1.0f);
  for (std::size_t t = 0; t < t_count; ++t)
    std::copy_n(x.data() + t * d, d, xs.data() + t * (d + 3));
  layer.forward(pool, moe::MatrixView<const float>(xs.data(), t_count, d, d + 3),
                moe::MatrixView<float>(ys.data(), t_count, d, d + 5), arena);
  for (std::size_t t = 0; t < t_count; ++t) {
    for (std::size_t i = 0; i < d; ++i) CHECK(ys[t * (d + 5) + i] == y[t * d + i]);
    for (std::size_t i = d; i < d + 5; ++i) CHECK(ys[t * (d + 5) + i] == -1.0f);
  }
}

TEST_CASE("GatedFfn: the dense FFN with the same interface", "[moe][layer]") {
  const std::size_t d = 24, f = 40, t_count = 270;
  const Int8Stack g(1, d, f, 1, 60, 0.01f), u(1, d, f, 1, 61, 0.01f), dn(1, f, d, 8, 62, 0.01f);
  const moe::GatedFfn<moe::Int8Weight, moe::Activation::kGeluErf> ffn(g.at(0), u.at(0), dn.at(0));
  CHECK(ffn.dim() == d);
  CHECK(ffn.hidden() == f);
  const auto x = moe_test::randn(t_count * d, 63);
  const auto y = run(ffn, x, t_count);
  std::vector<double> ref;
  for (std::size_t t = 0; t < t_count; ++t) {
    const auto r =
        moe_test::ffn_ref(g.at(0), u.at(0), dn.at(0), x.data() + t * d, moe::Activation::kGeluErf);
    ref.insert(ref.end(), r.begin(), r.end());
  }
  // f32 accumulation over F = 40 products of magnitude ~|ref|: within 1e-5 of the largest output
  double scale = 0.0;
  for (double v : ref) scale = std::max(scale, std::abs(v));
  CHECK(moe_test::tol_ratio(y.data(), ref.data(), ref.size(), 1e-5 * scale, 0.0) <= 1.0);
}

TEST_CASE("shape errors are thrown at construction with both shapes", "[moe][layer]") {
  const DenseStack<float> router(1, 16, 8, 1, 0.3f), router7(1, 16, 7, 1, 0.3f);
  const DenseStack<float> g(8, 16, 24, 2, 0.1f), u(8, 16, 24, 3, 0.1f), dn(8, 24, 16, 4, 0.1f);
  const DenseStack<float> u_bad(8, 16, 20, 3, 0.1f), dn_bad(8, 16, 24, 4, 0.1f);
  using M = moe::presets::Mixtral<moe::F32Weight>;
  auto msg = [](auto&& f) {
    try {
      f();
    } catch (const moe::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_NOTHROW(M(router.at(0), g.view(), u.view(), dn.view()));
  CHECK_THROWS_AS(M(router7.at(0), g.view(), u.view(), dn.view()), moe::ShapeError);
  CHECK(msg([&] { M m(router7.at(0), g.view(), u.view(), dn.view()); }) ==
        "[moe_layer] router gate [16, 7] does not match experts [8, 16, 24] (expected gate [D, E] "
        "with "
        "experts [E, D, F])");
  CHECK(msg([&] { M m(router.at(0), g.view(), u_bad.view(), dn.view()); }) ==
        "[expert] tensor 'up' has shape [8, 16, 20], expected [8, 16, 24] ([experts, in, out])");
  CHECK(msg([&] { M m(router.at(0), g.view(), u.view(), dn_bad.view()); }) ==
        "[expert] tensor 'down' has shape [8, 16, 24], expected [8, 24, 16] ([experts, in, out])");
  const M layer(router.at(0), g.view(), u.view(), dn.view());
  moe::ThreadPool pool(1);
  moe::Arena arena(layer.workspace_bytes(4));
  std::vector<float> x(4 * 17), y(4 * 16);
  CHECK_THROWS_AS(layer.forward(pool, moe::MatrixView<const float>(x.data(), 4, 17),
                                moe::MatrixView<float>(y.data(), 4, 16), arena),
                  moe::ShapeError);
  CHECK_THROWS_AS(layer.forward(pool, moe::MatrixView<const float>(y.data(), 4, 16),
                                moe::MatrixView<float>(y.data(), 4, 16), arena),
                  moe::ShapeError);
  using C = moe::MoELayer<moe::Router<moe::F32Weight>, moe::Expert<moe::F32Weight>,
                          moe::CapacityFactor, moe::LoadBalanceLoss, moe::RouterZLoss>;
  CHECK_THROWS_AS(C(moe::Router<moe::F32Weight>(router.at(0)), {g.view(), u.view(), dn.view()},
                    moe::CapacityFactor{.eval = -1.0}),
                  moe::ConfigError);
  CHECK_THROWS_AS(C(moe::Router<moe::F32Weight>(router.at(0)), {g.view(), u.view(), dn.view()}, {},
                    moe::LoadBalanceLoss{.coef = -1.0f}),
                  moe::ConfigError);
}

namespace {

/// Copies expert e of a stack into its own allocation (as a Hugging Face file stores it).
template <class T>
std::vector<moe::Buffer<T>> split_experts(const DenseStack<T>& s) {
  std::vector<moe::Buffer<T>> out;
  for (std::size_t e = 0; e < s.experts; ++e) {
    moe::Buffer<T> b(s.in * s.out);
    std::copy_n(s.data.data() + e * s.in * s.out, s.in * s.out, b.data());
    out.push_back(std::move(b));
  }
  return out;
}

template <class T>
std::vector<moe::DenseWeight<T>> views_of(const std::vector<moe::Buffer<T>>& bufs,
                                          const DenseStack<T>& s) {
  std::vector<moe::DenseWeight<T>> v;
  for (const auto& b : bufs) v.push_back({b.data(), s.in, s.out, s.layout});
  return v;
}

}  // namespace

TEMPLATE_TEST_CASE("separately stored experts equal the stacked experts bit for bit",
                   "[moe][layer][weights]", float, moe::bf16) {
  const std::size_t d = 40, f = 72, e_count = 4, t_count = 37;
  const DenseStack<float> router(1, d, e_count, 70, 0.4f);
  const DenseStack<TestType> g(e_count, d, f, 71, 0.15f, moe::Layout::kOutIn),
      u(e_count, d, f, 72, 0.15f, moe::Layout::kOutIn),
      dn(e_count, f, d, 73, 0.1f, moe::Layout::kOutIn);
  // HF layout: one [out, in] tensor per expert, each in its own allocation
  const auto gb = split_experts(g), ub = split_experts(u), db = split_experts(dn);
  const auto gv = views_of(gb, g), uv = views_of(ub, u), dv = views_of(db, dn);
  using W = moe::DenseWeight<TestType>;
  using S = moe::WeightStack<W>;
  const S gs = S::of(gv), us = S::of(uv), ds = S::of(dv);
  REQUIRE(gs.separate());
  CHECK(gs[2].data == gb[2].data());
  CHECK(g.view()[2].data == g.data.data() + 2 * d * f);

  using L = moe::presets::STMoE<W>;  // with capacity, so dispatch order matters too
  const L stacked(router.at(0), g.view(), u.view(), dn.view());
  const L separate(router.at(0), gs, us, ds);
  const auto x = moe_test::randn(t_count * d, 74);
  moe::ForwardOptions opts;
  opts.training = true;
  moe::MoEResult r1, r2;
  const auto y1 = run(stacked, x, t_count, 2, opts, &r1);
  const auto y2 = run(separate, x, t_count, 2, opts, &r2);
  CHECK(y1 == y2);
  CHECK(r1.stats.tokens_per_expert == r2.stats.tokens_per_expert);
  CHECK(r1.stats.dropped > 0);
  // and one expert alone
  const auto e1 = stacked.experts()[1], e2 = separate.experts()[1];
  CHECK(run(e1, x, t_count) == run(e2, x, t_count));
}

TEST_CASE("separately stored int8 experts equal the stacked ones; mismatched views are refused",
          "[moe][layer][weights]") {
  const std::size_t d = 32, f = 48, e_count = 3, t_count = 20;
  const DenseStack<float> router(1, d, e_count, 80, 0.4f);
  const Int8Stack g(e_count, d, f, 1, 81, 0.004f), u(e_count, d, f, 1, 82, 0.004f),
      dn(e_count, f, d, 8, 83, 0.004f);
  std::vector<moe::Int8Weight> gv, uv, dv;
  for (std::size_t e = 0; e < e_count; ++e) {
    gv.push_back(g.at(e));
    uv.push_back(u.at(e));
    dv.push_back(dn.at(e));
  }
  using S = moe::WeightStack<moe::Int8Weight>;
  using L = moe::presets::Grok1;
  const L stacked(router.at(0), g.view(), u.view(), dn.view());
  const L separate(router.at(0), S::of(gv), S::of(uv), S::of(dv));
  const auto x = moe_test::randn(t_count * d, 84);
  CHECK(run(stacked, x, t_count) == run(separate, x, t_count));

  auto bad = dv;
  bad[2].blocks = 4;
  CHECK_THROWS_WITH(L(router.at(0), S::of(gv), S::of(uv), S::of(bad)),
                    Catch::Contains("[expert] tensor 'down' expert 2") &&
                        Catch::Contains("every expert must have the same shape"));
  bad = dv;
  bad[1].data = nullptr;
  CHECK_THROWS_WITH(L(router.at(0), S::of(gv), S::of(uv), S::of(bad)),
                    Catch::Contains("[expert] weight 'down[1]' has no data"));
  CHECK_THROWS_WITH(L(router.at(0), S::of(gv), S::of(std::span(uv).first(2)), S::of(dv)),
                    Catch::Contains("[expert] tensor 'up' has shape [2, 32, 48], expected [3, 32, "
                                    "48]"));
}
