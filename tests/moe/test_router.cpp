// Router: score functions, top-k ties, renormalisation, selection bias, groups, noise, errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <moe/layers/router.hpp>

#include "moe/moe_test_util.hpp"

using moe_test::DenseStack;
using moe_test::route_copy;
using moe_test::Routed;

namespace {

/// D = E router with W = identity: the logits are the input row itself.
struct IdentityRouter {
  std::vector<float> w;
  std::size_t e;
  explicit IdentityRouter(std::size_t n) : w(n * n, 0.0f), e(n) {
    for (std::size_t i = 0; i < n; ++i) w[i * n + i] = 1.0f;
  }
  moe::F32Weight view() const { return {w.data(), e, e, moe::Layout::kInOut}; }
};

}  // namespace

TEST_CASE("router: softmax of the top-k logits equals the renormalised top-k of the softmax",
          "[moe][router]") {
  for (auto [e_count, k] : {std::pair<std::size_t, std::size_t>{8, 2}, {64, 6}, {5, 5}}) {
    const std::size_t d = 32, t_count = 200;
    const DenseStack<float> gate(1, d, e_count, 11 + e_count, 0.5f);
    const auto x = moe_test::randn(t_count * d, 7 + k);
    const moe::Router<moe::F32Weight> a(
        gate.at(0), {.top_k = k, .score = moe::ScoreFn::kSoftmax, .renormalize = true});
    const moe::Router<moe::F32Weight> b(gate.at(0),
                                        {.top_k = k, .score = moe::ScoreFn::kSoftmaxOfSelected});
    const Routed ra = route_copy(a, x, t_count), rb = route_copy(b, x, t_count);
    CHECK(ra.experts == rb.experts);
    double worst = 0.0;
    for (std::size_t i = 0; i < ra.weights.size(); ++i) {
      worst = std::max(worst, std::abs(ra.weights[i] - rb.weights[i]) /
                                  std::max(1e-30, static_cast<double>(rb.weights[i])));
    }
    INFO("E " << e_count << " k " << k << " worst relative difference " << worst);
    CHECK(worst < 8 * 1.2e-7);  // a few ulps of f32
    // and both equal the float64 formula
    for (std::size_t t = 0; t < t_count; t += 17) {
      const auto p = moe_test::softmax_ref(moe_test::logits_ref(gate.at(0), x.data() + t * d));
      const auto idx = moe_test::topk_ref(p, k);
      double s = 0.0;
      for (auto i : idx) s += p[i];
      for (std::size_t j = 0; j < k; ++j) {
        CHECK(ra.experts[t * k + j] == idx[j]);
        CHECK(ra.weights[t * k + j] == Approx(p[idx[j]] / s).epsilon(1e-5));
      }
    }
  }
}

TEST_CASE("router: Grok-1 gates are the raw softmax probabilities (not renormalised)",
          "[moe][router]") {
  const std::size_t d = 16, e_count = 8, t_count = 40;
  const DenseStack<float> gate(1, d, e_count, 3, 0.7f);
  const auto x = moe_test::randn(t_count * d, 4);
  const moe::Router<moe::F32Weight> r(gate.at(0), {.top_k = 2, .renormalize = false});
  const Routed o = route_copy(r, x, t_count);
  for (std::size_t t = 0; t < t_count; ++t) {
    double psum = 0.0;
    for (std::size_t i = 0; i < e_count; ++i) psum += o.probs[t * e_count + i];
    CHECK(psum == Approx(1.0).epsilon(1e-6));
    for (std::size_t j = 0; j < 2; ++j) {
      const std::uint32_t e = o.experts[t * 2 + j];
      CHECK(o.weights[t * 2 + j] == o.probs[t * e_count + e]);  // bitwise: no renormalisation
      CHECK(o.scores[t * 2 + j] == o.probs[t * e_count + e]);
    }
    CHECK(o.weights[t * 2] + o.weights[t * 2 + 1] < 1.0f);
    CHECK(o.weights[t * 2] >= o.weights[t * 2 + 1]);
  }
}

TEST_CASE("router: exact ties pick the lower expert index, also with group-limited routing",
          "[moe][router]") {
  const IdentityRouter id(8);
  SECTION("all logits equal") {
    const std::vector<float> x(8, 0.25f);
    for (std::size_t k = 1; k <= 8; ++k) {
      const moe::Router<moe::F32Weight> r(id.view(), {.top_k = k});
      const Routed o = route_copy(r, x, 1);
      for (std::size_t j = 0; j < k; ++j) CHECK(o.experts[j] == j);
      for (std::size_t j = 0; j < k; ++j)
        CHECK(o.weights[j] == Approx(1.0 / static_cast<double>(k)));
    }
  }
  SECTION("ties among the best experts") {
    const std::vector<float> x = {0, 0, 5, 1, 0, 0, 5, 1};
    const moe::Router<moe::F32Weight> r(id.view(), {.top_k = 4});
    const Routed o = route_copy(r, x, 1);
    CHECK(o.experts == std::vector<std::uint32_t>{2, 6, 3, 7});
  }
  SECTION("tied groups") {
    // groups {0,1} {2,3} {4,5} {6,7}; g1 and g3 tie (max 5), g1 wins with one group kept.
    const std::vector<float> x = {0, 0, 5, 1, 0, 0, 5, 1};
    for (auto gs : {moe::GroupScore::kMax, moe::GroupScore::kTop2Sum}) {
      const moe::Router<moe::F32Weight> one(
          id.view(), {.top_k = 2, .n_group = 4, .topk_group = 1, .group_score = gs});
      CHECK(route_copy(one, x, 1).experts == std::vector<std::uint32_t>{2, 3});
      const moe::Router<moe::F32Weight> two(
          id.view(), {.top_k = 3, .n_group = 4, .topk_group = 2, .group_score = gs});
      CHECK(route_copy(two, x, 1).experts == std::vector<std::uint32_t>{2, 6, 3});
    }
    // all groups tied: groups 0 and 1 are kept, so experts 0..3 only
    const std::vector<float> flat(8, 1.0f);
    const moe::Router<moe::F32Weight> r(id.view(), {.top_k = 4, .n_group = 4, .topk_group = 2});
    CHECK(route_copy(r, flat, 1).experts == std::vector<std::uint32_t>{0, 1, 2, 3});
  }
  SECTION("sigmoid scores with a tie-creating bias") {
    const std::vector<float> x = {0, 0, 0, 0, 0, 0, 0, 0};
    const std::vector<float> bias = {0, 0.5f, 0, 0.5f, 0, 0, 0, 0.5f};
    const moe::Router<moe::F32Weight> r(
        id.view(), {.top_k = 2, .score = moe::ScoreFn::kSigmoid, .selection_bias = true}, {}, bias);
    CHECK(route_copy(r, x, 1).experts == std::vector<std::uint32_t>{1, 3});
  }
}

TEST_CASE("router: selection bias changes the choice but not the weights (DeepSeek-V3)",
          "[moe][router]") {
  const IdentityRouter id(8);
  const std::vector<float> x = {2.0f, 1.5f, 1.0f, 0.5f, 0.0f, -0.5f, -1.0f, -1.5f};
  const std::vector<float> bias = {0, 0, 0, 0, 0, 0, 0, 10.0f};  // force expert 7
  const moe::Router<moe::F32Weight> r(id.view(),
                                      {.top_k = 2,
                                       .score = moe::ScoreFn::kSigmoid,
                                       .renormalize = true,
                                       .route_scale = 2.5f,
                                       .selection_bias = true},
                                      {}, bias);
  const Routed o = route_copy(r, x, 1);
  REQUIRE(o.experts == std::vector<std::uint32_t>{7, 0});
  const double s7 = 1.0 / (1.0 + std::exp(1.5)), s0 = 1.0 / (1.0 + std::exp(-2.0));
  CHECK(o.weights[0] == Approx(2.5 * s7 / (s7 + s0)).epsilon(1e-6));
  CHECK(o.weights[1] == Approx(2.5 * s0 / (s7 + s0)).epsilon(1e-6));
  CHECK(o.scores[0] == Approx(s7).epsilon(1e-6));
  // probs: per-token normalised (unbiased) sigmoid scores
  double ssum = 0.0;
  for (float v : x) ssum += 1.0 / (1.0 + std::exp(-v));
  CHECK(o.probs[0] == Approx(s0 / ssum).epsilon(1e-6));
  // without renormalisation the weights are route_scale * s
  const moe::Router<moe::F32Weight> raw(id.view(),
                                        {.top_k = 2,
                                         .score = moe::ScoreFn::kSigmoid,
                                         .renormalize = false,
                                         .route_scale = 2.5f,
                                         .selection_bias = true},
                                        {}, bias);
  CHECK(route_copy(raw, x, 1).weights[0] == Approx(2.5 * s7).epsilon(1e-6));
}

TEST_CASE("router: group-limited selection matches a float64 reference", "[moe][router]") {
  const std::size_t d = 24, e_count = 16, t_count = 64, k = 4, ng = 4, kg = 2;
  const DenseStack<float> gate(1, d, e_count, 21, 0.6f);
  const auto x = moe_test::randn(t_count * d, 22);
  const auto bias = moe_test::randu(e_count, 23, -0.3f, 0.3f);
  const moe::Router<moe::F32Weight> r(gate.at(0),
                                      {.top_k = k,
                                       .score = moe::ScoreFn::kSigmoid,
                                       .renormalize = true,
                                       .selection_bias = true,
                                       .n_group = ng,
                                       .topk_group = kg,
                                       .group_score = moe::GroupScore::kTop2Sum},
                                      {}, bias);
  const Routed o = route_copy(r, x, t_count);
  const std::size_t gs = e_count / ng;
  for (std::size_t t = 0; t < t_count; ++t) {
    const auto z = moe_test::logits_ref(gate.at(0), x.data() + t * d);
    std::vector<double> s(e_count), v(e_count), gscore(ng);
    for (std::size_t i = 0; i < e_count; ++i) {
      s[i] = 1.0 / (1.0 + std::exp(-z[i]));
      v[i] = s[i] + bias[i];
    }
    for (std::size_t g = 0; g < ng; ++g) {
      std::vector<double> grp(v.begin() + g * gs, v.begin() + (g + 1) * gs);
      std::sort(grp.rbegin(), grp.rend());
      gscore[g] = grp[0] + grp[1];
    }
    const auto keep = moe_test::topk_ref(gscore, kg);
    std::vector<double> masked(e_count, -1e300);
    for (auto g : keep) {
      for (std::size_t i = 0; i < gs; ++i) masked[g * gs + i] = v[g * gs + i];
    }
    const auto idx = moe_test::topk_ref(masked, k);
    double sum = 0.0;
    for (auto i : idx) sum += s[i];
    for (std::size_t j = 0; j < k; ++j) {
      INFO("token " << t << " slot " << j);
      CHECK(o.experts[t * k + j] == idx[j]);
      CHECK(o.weights[t * k + j] == Approx(s[idx[j]] / sum).epsilon(1e-5));
    }
  }
}

TEST_CASE("router: other weight types and layouts give the same routing", "[moe][router]") {
  const std::size_t d = 40, e_count = 8, t_count = 30;
  const DenseStack<float> in_out(1, d, e_count, 31, 0.5f);
  // the same matrix stored [out, in] (PyTorch nn.Linear)
  std::vector<float> out_in(d * e_count);
  for (std::size_t i = 0; i < d; ++i) {
    for (std::size_t o = 0; o < e_count; ++o) out_in[o * d + i] = in_out.data[i * e_count + o];
  }
  const auto x = moe_test::randn(t_count * d, 32);
  const moe::Router<moe::F32Weight> a(in_out.at(0), {.top_k = 2});
  const moe::Router<moe::F32Weight> b(
      moe::F32Weight{out_in.data(), d, e_count, moe::Layout::kOutIn}, {.top_k = 2});
  const Routed ra = route_copy(a, x, t_count), rb = route_copy(b, x, t_count);
  CHECK(ra.experts == rb.experts);
  for (std::size_t i = 0; i < ra.weights.size(); ++i)
    CHECK(ra.weights[i] == Approx(rb.weights[i]).epsilon(1e-5));
  // bf16 router weights: logits in f32 from the exactly widened bf16 values
  const DenseStack<moe::bf16> bf(1, d, e_count, 31, 0.5f);
  const moe::Router<moe::BF16Weight> c(bf.at(0), {.top_k = 2});
  const Routed rc = route_copy(c, x, t_count);
  for (std::size_t t = 0; t < t_count; ++t) {
    const auto z = moe_test::logits_ref(bf.at(0), x.data() + t * d);
    for (std::size_t i = 0; i < e_count; ++i)
      CHECK(rc.logits[t * e_count + i] == Approx(z[i]).margin(1e-4));
  }
  // bf16 vs f32 router weights select the same experts wherever the f32 top-2 margins exceed what
  // the bf16 rounding (<= 2^-8 relative per weight) can move two logits (a margin-filtered test
  // set: near-ties may legitimately flip)
  std::size_t compared = 0;
  for (std::size_t t = 0; t < t_count; ++t) {
    std::vector<double> z(ra.logits.begin() + t * e_count, ra.logits.begin() + (t + 1) * e_count);
    std::sort(z.rbegin(), z.rend());
    double bound = 0.0;
    for (std::size_t e = 0; e < e_count; ++e) {
      double sum = 0.0;
      for (std::size_t i = 0; i < d; ++i)
        sum += std::abs(x[t * d + i] * in_out.at(0).at(i, e)) / 256.0;
      bound = std::max(bound, sum);
    }
    if (z[0] - z[1] <= 2 * bound || z[1] - z[2] <= 2 * bound) continue;
    ++compared;
    CHECK(ra.experts[t * 2] == rc.experts[t * 2]);
    CHECK(ra.experts[t * 2 + 1] == rc.experts[t * 2 + 1]);
  }
  CHECK(compared > t_count / 4);
}

TEST_CASE("router: noise is training-only, seeded by step, and thread-count independent",
          "[moe][router]") {
  const std::size_t d = 32, e_count = 8, t_count = 64;
  const DenseStack<float> gate(1, d, e_count, 41, 0.3f);
  const auto x = moe_test::randn(t_count * d, 42);
  const moe::Router<moe::F32Weight> clean(gate.at(0), {.top_k = 2});
  const Routed base = route_copy(clean, x, t_count);
  moe::ForwardOptions train;
  train.training = true;
  train.step = 5;
  moe::ForwardOptions train6 = train;
  train6.step = 6;

  SECTION("jitter") {
    const moe::Router<moe::F32Weight, moe::Routing, moe::Jitter> r(gate.at(0), {.top_k = 2},
                                                                   {.eps = 0.3f, .seed = 9});
    CHECK(route_copy(r, x, t_count).logits == base.logits);  // inference: no noise
    const Routed a = route_copy(r, x, t_count, train), b = route_copy(r, x, t_count, train, 3);
    CHECK(a.logits == b.logits);  // bitwise, 1 vs 3 threads
    CHECK(a.logits != base.logits);
    CHECK(route_copy(r, x, t_count, train6).logits != a.logits);
    // every logit is W . (x * u) with u in [0.7, 1.3]: bounded by sum |x_i w_i| * 0.3
    for (std::size_t t = 0; t < t_count; ++t) {
      for (std::size_t e = 0; e < e_count; ++e) {
        double bound = 0.0;
        for (std::size_t i = 0; i < d; ++i) bound += std::abs(x[t * d + i] * gate.at(0).at(i, e));
        CHECK(std::abs(a.logits[t * e_count + e] - base.logits[t * e_count + e]) <=
              0.3 * bound + 1e-5);
      }
    }
  }
  SECTION("gaussian logit noise") {
    const moe::Router<moe::F32Weight, moe::Routing, moe::GaussianLogitNoise> r(
        gate.at(0), {.top_k = 2}, {.stddev = 2.0f, .seed = 1});
    const Routed a = route_copy(r, x, t_count, train), b = route_copy(r, x, t_count, train, 2);
    CHECK(a.experts == b.experts);
    CHECK(a.weights == b.weights);
    CHECK(a.logits == base.logits);  // the losses see the clean logits
    CHECK(a.probs == base.probs);
    CHECK(a.experts != base.experts);  // std 2 over logits of scale ~1 changes choices
    CHECK(route_copy(r, x, t_count).experts == base.experts);  // inference
  }
  SECTION("random second expert") {
    const moe::Router<moe::F32Weight, moe::Routing, moe::RandomSecondExpert> r(
        gate.at(0), {.top_k = 2, .renormalize = true}, {.threshold = 0.5f, .seed = 3});
    const Routed a = route_copy(r, x, t_count, train);
    std::size_t removed = 0;
    double expected = 0.0;
    for (std::size_t t = 0; t < t_count; ++t) {
      CHECK(a.experts[t * 2] == base.experts[t * 2]);
      CHECK(a.weights[t * 2] == base.weights[t * 2]);  // the first gate is not renormalised
      expected += 1.0 - std::min(1.0, base.weights[t * 2 + 1] / 0.5);
      if (a.experts[t * 2 + 1] == moe::kNoExpert) {
        ++removed;
        CHECK(a.weights[t * 2 + 1] == 0.0f);
      } else {
        CHECK(a.experts[t * 2 + 1] == base.experts[t * 2 + 1]);
      }
    }
    INFO("removed " << removed << " expected about " << expected);
    CHECK(std::abs(static_cast<double>(removed) - expected) < 4.0 * std::sqrt(expected + 1.0));
    CHECK(route_copy(r, x, t_count, train).experts == a.experts);
    CHECK(route_copy(r, x, t_count).experts == base.experts);
  }
}

TEST_CASE("router: configuration and shape errors name the component", "[moe][router]") {
  const DenseStack<float> gate(1, 16, 8, 1, 1.0f);
  using R = moe::Router<moe::F32Weight>;
  auto msg = [](auto&& f) {
    try {
      f();
    } catch (const moe::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_THROWS_AS(R(gate.at(0), {.top_k = 9}), moe::ConfigError);
  CHECK(msg([&] { R r(gate.at(0), {.top_k = 9}); }).find("[router] top_k = 9") == 0);
  CHECK_THROWS_AS(R(gate.at(0), {.top_k = 0}), moe::ConfigError);
  CHECK_THROWS_AS(R(gate.at(0), {.n_group = 3}), moe::ConfigError);
  CHECK_THROWS_AS(R(gate.at(0), {.top_k = 6, .n_group = 4, .topk_group = 2}), moe::ConfigError);
  CHECK_THROWS_AS(R(gate.at(0), {.route_scale = 0.0f}), moe::ConfigError);
  const std::vector<float> bias(7, 0.0f);
  CHECK_THROWS_AS(R(gate.at(0), {.selection_bias = true}, {}, bias), moe::ShapeError);
  CHECK(msg([&] {
          R r(gate.at(0), {.selection_bias = true}, {}, bias);
        }).find("[router] tensor 'selection_bias' has shape [7], expected [8]") == 0);
  CHECK_THROWS_AS(R(gate.at(0), {}, {}, std::vector<float>(8)), moe::ConfigError);
  CHECK_THROWS_AS(R(moe::F32Weight{nullptr, 16, 8}), moe::ShapeError);
  using J = moe::Router<moe::F32Weight, moe::Routing, moe::Jitter>;
  CHECK_THROWS_AS(J(gate.at(0), {}, {.eps = 1.5f}), moe::ConfigError);
}
