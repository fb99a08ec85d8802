// The accuracy cost of int8 activations on a Grok-shaped decoder: grok1::ModelOf<Int8ActWeight>
// against grok1::ModelOf<Int8Weight> (exact dequantisation) over the same random checkpoint-format
// weights (grok1::RandomWeights, Config::demo(): 12 layers, D 256, GQA 8/2, 8 experts top-2,
// F 512, vocab 1024), prefill of 32 tokens then 8 decode steps.
//
// Stated bounds (docs/performance.md "Kernels" has the measured values): with 2 layers, the rms
// logit error <= 0.1 and the median over positions of the largest error <= 0.15 of the exact
// logits' standard deviation, argmax agreement >= 90 %; with all 12 layers, rms <= 0.5 and
// agreement >= 50 % (routing flips compound, see below). A kernel bug (wrong scale block, column
// or rounding) moves the logits by about their own scale.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <moe/models/grok1.hpp>

#include "support/grok1_random_weights.hpp"

namespace {

struct Metrics {
  double max_rel = 0;     ///< max |delta logit| / std of the exact logits
  double rms_rel = 0;     ///< rms |delta logit| / std
  double median_row = 0;  ///< median over positions of the row's max |delta| / std
  double agreement = 0;   ///< argmax agreement
};

/// Exact and int8-activation models over the same weights: prefill T tokens, then `steps`
/// greedy decode steps (both fed the exact model's tokens).
Metrics measure(std::size_t n_layers, std::size_t T, std::size_t steps) {
  auto cfg = moe::grok1::Config::demo();
  cfg.n_layers = n_layers;
  const moe::grok1::RandomWeights rw(cfg, 7);
  const auto wa = moe::grok1::int8_activations(rw.weights());
  const auto exact = moe::grok1::make_model(cfg, rw.weights());
  const auto approx = moe::grok1::make_model(cfg, wa);
  moe::ThreadPool pool(2);
  const std::size_t V = cfg.vocab_size;
  std::vector<std::int32_t> tokens(T);
  for (std::size_t i = 0; i < T; ++i) tokens[i] = static_cast<std::int32_t>((37 * i + 11) % V);
  auto se = exact.make_state(T + steps, T), sa = approx.make_state(T + steps, T);
  std::vector<float> le(T * V), la(T * V);
  exact.forward(pool, tokens, se, {le.data(), T, V});
  approx.forward(pool, tokens, sa, {la.data(), T, V});
  for (std::size_t s = 0; s < steps; ++s) {
    const float* last = le.data() + (le.size() / V - 1) * V;
    const auto next = static_cast<std::int32_t>(std::max_element(last, last + V) - last);
    le.resize(le.size() + V);
    la.resize(la.size() + V);
    exact.step(pool, next, se, {le.data() + le.size() - V, V});
    approx.step(pool, next, sa, {la.data() + la.size() - V, V});
  }
  const std::size_t rows = le.size() / V;
  double sum = 0, sum2 = 0, err2 = 0, max_err = 0;
  std::size_t agree = 0;
  std::vector<double> row_max;
  for (std::size_t r = 0; r < rows; ++r) {
    const float* e = le.data() + r * V;
    const float* a = la.data() + r * V;
    double m = 0;
    for (std::size_t v = 0; v < V; ++v) {
      const double d = std::abs(double(a[v]) - e[v]);
      sum += e[v];
      sum2 += double(e[v]) * e[v];
      err2 += d * d;
      m = std::isfinite(d) ? std::max(m, d) : 1e300;
    }
    row_max.push_back(m);
    max_err = std::max(max_err, m);
    agree += (std::max_element(e, e + V) - e) == (std::max_element(a, a + V) - a);
  }
  const double n = double(rows * V);
  const double sd = std::sqrt(sum2 / n - (sum / n) * (sum / n));
  std::sort(row_max.begin(), row_max.end());
  Metrics m;
  m.max_rel = max_err / sd;
  m.rms_rel = std::sqrt(err2 / n) / sd;
  m.median_row = row_max[rows / 2] / sd;
  m.agreement = double(agree) / double(rows);
  return m;
}

}  // namespace

TEST_CASE("int8 activations on a Grok-shaped decoder: logit error within the stated bounds",
          "[kernels][int8act][model]") {
  // 2 layers: the quantisation noise of the activations, before routing flips compound.
  const Metrics two = measure(2, 32, 8);
  WARN("int8 activations, Grok-shaped demo decoder, 2 layers: max |delta logit| / logit std "
       << two.max_rel << ", rms " << two.rms_rel << ", median row max " << two.median_row
       << ", argmax agreement " << two.agreement);
  CHECK(two.rms_rel <= 0.1);
  CHECK(two.median_row <= 0.15);
  CHECK(two.agreement >= 0.9);
  // All 12 layers of Config::demo(): a token whose top-2 experts flip in some layer moves by about
  // the logits' own scale (the routing is discontinuous), and flips compound over the layers of a
  // random model with near-flat logits. Reported, with a bound a kernel bug would still break.
  const Metrics all = measure(12, 32, 8);
  WARN("int8 activations, Grok-shaped demo decoder, 12 layers: max |delta logit| / logit std "
       << all.max_rel << ", rms " << all.rms_rel << ", median row max " << all.median_row
       << ", argmax agreement " << all.agreement);
  CHECK(std::isfinite(all.max_rel));
  CHECK(all.rms_rel <= 0.5);
  CHECK(all.agreement >= 0.5);
}

TEST_CASE("int8 activations: views over the release's stacked experts; bad weights are refused",
          "[kernels][int8act][model]") {
  auto cfg = moe::grok1::Config::tiny();
  const moe::grok1::RandomWeights rw(cfg, 3);
  const auto wa = moe::grok1::int8_activations(rw.weights());
  REQUIRE(wa.layers.size() == cfg.n_layers);
  const auto& l = rw.weights().layers[1];
  const auto& a = wa.layers[1];
  CHECK(a.wo.data == l.wo.data);  // views, no copies
  CHECK(a.expert_down.count == l.expert_down.count);
  CHECK(a.expert_down[2].data == l.expert_down[2].data);  // expert e is the same tensor
  CHECK(a.router.data == l.router.data);
  CHECK(a.norm_post_moe.data() == l.norm_post_moe.data());
  // An expert stack of separate views (as a tensor-parallel shard binds) has no stacked form.
  auto split = rw.weights();
  std::vector<moe::Int8Weight> views;
  for (std::size_t e = 0; e < cfg.n_experts; ++e) views.push_back(l.expert_up[e]);
  split.layers[1].expert_up = moe::WeightStack<moe::Int8Weight>::of(views);
  CHECK_THROWS_AS(moe::grok1::int8_activations(split), moe::ConfigError);
  // f32 weights have nothing to quantise against.
  const moe::grok1::WeightsT<moe::F32Weight> f32;
  CHECK_THROWS_WITH(moe::grok1::int8_activations(f32), Catch::Contains("int8 weights"));
}
