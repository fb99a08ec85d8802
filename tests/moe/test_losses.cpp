// Load-balancing loss, z-loss and routing statistics.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include <moe/layers/moe_layer.hpp>

#include "moe/moe_test_util.hpp"

using moe_test::DenseStack;

namespace {

using R = moe::Router<moe::F32Weight>;
using Ex = moe::Expert<moe::F32Weight, moe::Activation::kSilu>;
using LossLayer = moe::MoELayer<R, Ex, moe::Dropless, moe::LoadBalanceLoss, moe::RouterZLoss>;

/// Experts of width D = E and F = 4 (their values do not matter for the losses).
struct Experts {
  DenseStack<float> gate, up, down;
  explicit Experts(std::size_t e)
      : gate(e, e, 4, 1, 0.1f), up(e, e, 4, 2, 0.1f), down(e, 4, e, 3, 0.1f) {}
  Ex make() const { return Ex(gate.view(), up.view(), down.view()); }
};

std::vector<float> identity(std::size_t n) {
  std::vector<float> w(n * n, 0.0f);
  for (std::size_t i = 0; i < n; ++i) w[i * n + i] = 1.0f;
  return w;
}

template <class Layer>
moe::MoEResult forward(const Layer& layer, const std::vector<float>& x, std::size_t t_count,
                       const std::uint8_t* mask = nullptr) {
  moe::ThreadPool pool(2);
  moe::Arena arena(layer.workspace_bytes(t_count));
  std::vector<float> y(t_count * layer.dim());
  moe::ForwardOptions opts;
  opts.token_mask = mask;
  return layer.forward(pool, moe::MatrixView<const float>(x.data(), t_count, layer.dim()),
                       moe::MatrixView<float>(y.data(), t_count, layer.dim()), arena, opts);
}

}  // namespace

TEST_CASE("balance loss: exactly 1 (or k) under perfectly balanced routing", "[moe][loss]") {
  const std::size_t e_count = 4;
  const auto w = identity(e_count);
  const Experts ex(e_count);
  // Token t prefers expert t % E (logit 3) and then (t + 1) % E (logit 1.5): every expert is the
  // first choice of T/E tokens and the second choice of T/E tokens, and P_i = 1/E by symmetry.
  const std::size_t t_count = 4 * e_count * 3;
  std::vector<float> x(t_count * e_count, 0.0f);
  for (std::size_t t = 0; t < t_count; ++t) {
    x[t * e_count + t % e_count] = 3.0f;
    x[t * e_count + (t + 1) % e_count] = 1.5f;
  }
  for (std::size_t k : {1, 2}) {
    auto loss = [&](moe::BalanceCounting c) {
      const LossLayer layer(R({w.data(), e_count, e_count}, {.top_k = k}), ex.make(), {},
                            moe::LoadBalanceLoss{.coef = 0.01f, .counting = c});
      return forward(layer, x, t_count).losses;
    };
    const auto norm = loss(moe::BalanceCounting::kAllChoicesNormalized);
    const auto top1 = loss(moe::BalanceCounting::kTop1);
    const auto all = loss(moe::BalanceCounting::kAllChoices);
    INFO("k = " << k);
    CHECK(norm.load_balance == Approx(1.0).epsilon(1e-6));
    CHECK(top1.load_balance == Approx(1.0).epsilon(1e-6));
    CHECK(all.load_balance == Approx(static_cast<double>(k)).epsilon(1e-6));
    CHECK(norm.load_balance_weighted == Approx(0.01).epsilon(1e-6));
    CHECK(all.total() == Approx(0.01 * k + all.z_loss_weighted).epsilon(1e-6));
  }
}

TEST_CASE("balance loss: imbalance is penalised; value matches E sum f P", "[moe][loss]") {
  const std::size_t e_count = 4, t_count = 10, d = 6;
  const DenseStack<float> gate(1, d, e_count, 5, 0.8f);
  const DenseStack<float> g(e_count, d, 4, 1, 0.1f), u(e_count, d, 4, 2, 0.1f),
      dn(e_count, 4, d, 3, 0.1f);
  const auto x = moe_test::randn(t_count * d, 6);
  const LossLayer layer(R(gate.at(0), {.top_k = 2}), Ex(g.view(), u.view(), dn.view()), {},
                        moe::LoadBalanceLoss{.coef = 1.0f});
  const auto res = forward(layer, x, t_count);
  double f[4] = {}, p[4] = {};
  for (std::size_t t = 0; t < t_count; ++t) {
    const auto pr = moe_test::softmax_ref(moe_test::logits_ref(gate.at(0), x.data() + t * d));
    for (auto e : moe_test::topk_ref(pr, 2)) f[e] += 1.0 / (2.0 * t_count);
    for (std::size_t e = 0; e < e_count; ++e) p[e] += pr[e] / t_count;
  }
  double ref = 0.0;
  for (std::size_t e = 0; e < e_count; ++e) ref += e_count * f[e] * p[e];
  CHECK(res.losses.load_balance == Approx(ref).epsilon(1e-5));
  // every token to expert 0: f = (1, 0, ...) with k = 1, so L = E P_0 -> E as P_0 -> 1
  const auto w = identity(e_count);
  const Experts ex(e_count);
  std::vector<float> one(t_count * e_count, 0.0f);
  for (std::size_t t = 0; t < t_count; ++t) one[t * e_count] = 20.0f;
  const LossLayer bad(R({w.data(), e_count, e_count}, {.top_k = 1}), ex.make(), {},
                      moe::LoadBalanceLoss{.counting = moe::BalanceCounting::kTop1});
  CHECK(forward(bad, one, t_count).losses.load_balance == Approx(4.0).epsilon(1e-6));
}

TEST_CASE("z-loss: mean of logsumexp^2, stable for large logits", "[moe][loss]") {
  const std::size_t e_count = 4, t_count = 5;
  const auto w = identity(e_count);
  const Experts ex(e_count);
  std::vector<float> x = moe_test::randn(t_count * e_count, 8, 3.0f);
  auto ref = [&](const std::vector<float>& v) {
    double s = 0.0;
    for (std::size_t t = 0; t < t_count; ++t) {
      double m = -1e300, z = 0.0;
      for (std::size_t i = 0; i < e_count; ++i) m = std::max(m, double(v[t * e_count + i]));
      for (std::size_t i = 0; i < e_count; ++i) z += std::exp(v[t * e_count + i] - m);
      s += (m + std::log(z)) * (m + std::log(z));
    }
    return s / t_count;
  };
  const LossLayer layer(R({w.data(), e_count, e_count}, {.top_k = 2}), ex.make(), {}, {},
                        moe::RouterZLoss{.coef = 1e-3f});
  auto res = forward(layer, x, t_count);
  CHECK(res.losses.z_loss == Approx(ref(x)).epsilon(1e-6));
  CHECK(res.losses.z_loss_weighted == Approx(1e-3 * ref(x)).epsilon(1e-6));
  for (auto& v : x) v *= 3000.0f;  // exp would overflow without the max subtraction
  res = forward(layer, x, t_count);
  CHECK(std::isfinite(res.losses.z_loss));
  CHECK(res.losses.z_loss == Approx(ref(x)).epsilon(1e-5));
}

TEST_CASE("losses: padding tokens leave f, P and the z-loss unchanged", "[moe][loss]") {
  const std::size_t e_count = 6, d = 10, n_real = 15;
  const DenseStack<float> gate(1, d, e_count, 9, 0.7f);
  const DenseStack<float> g(e_count, d, 4, 1, 0.1f), u(e_count, d, 4, 2, 0.1f),
      dn(e_count, 4, d, 3, 0.1f);
  const auto xr = moe_test::randn(n_real * d, 10);
  std::vector<float> x;
  std::vector<std::uint8_t> mask;
  const auto junk = moe_test::randn(7 * d, 11, 10.0f);
  for (std::size_t t = 0; t < n_real; ++t) {
    if (t % 2 == 0 && t / 2 < 7) {
      x.insert(x.end(), junk.begin() + (t / 2) * d, junk.begin() + (t / 2 + 1) * d);
      mask.push_back(0);
    }
    x.insert(x.end(), xr.begin() + t * d, xr.begin() + (t + 1) * d);
    mask.push_back(1);
  }
  for (auto c : {moe::BalanceCounting::kAllChoicesNormalized, moe::BalanceCounting::kAllChoices,
                 moe::BalanceCounting::kTop1}) {
    const LossLayer layer(R(gate.at(0), {.top_k = 3}), Ex(g.view(), u.view(), dn.view()), {},
                          moe::LoadBalanceLoss{.counting = c});
    const auto a = forward(layer, xr, n_real);
    const auto b = forward(layer, x, mask.size(), mask.data());
    CHECK(b.stats.tokens == n_real);
    CHECK(a.losses.load_balance == Approx(b.losses.load_balance).epsilon(1e-6));
    CHECK(a.losses.z_loss == Approx(b.losses.z_loss).epsilon(1e-6));
    CHECK(a.stats.tokens_per_expert == b.stats.tokens_per_expert);
    // the padding tokens really are different: unmasked, the loss changes
    const auto c2 = forward(layer, x, mask.size());
    CHECK(c2.losses.z_loss != Approx(a.losses.z_loss).epsilon(1e-3));
  }
  // all tokens masked: zero losses and stats, zero outputs
  std::vector<std::uint8_t> none(mask.size(), 0);
  const LossLayer layer(R(gate.at(0), {.top_k = 3}), Ex(g.view(), u.view(), dn.view()));
  const auto z = forward(layer, x, mask.size(), none.data());
  CHECK(z.stats.tokens == 0);
  CHECK(z.losses.total() == 0.0f);
  CHECK(z.stats.dropped_fraction == 0.0f);
}

TEST_CASE("balance loss: per-sequence (DeepSeek seq_aux) averages the per-sequence losses",
          "[moe][loss]") {
  const std::size_t e_count = 8, d = 12, seq = 7, n_seq = 3;
  const DenseStack<float> gate(1, d, e_count, 12, 0.7f);
  const DenseStack<float> g(e_count, d, 4, 1, 0.1f), u(e_count, d, 4, 2, 0.1f),
      dn(e_count, 4, d, 3, 0.1f);
  const auto x = moe_test::randn(seq * n_seq * d, 13);
  const LossLayer whole(R(gate.at(0), {.top_k = 2}), Ex(g.view(), u.view(), dn.view()), {},
                        moe::LoadBalanceLoss{.coef = 1e-4f});
  const LossLayer per_seq(R(gate.at(0), {.top_k = 2}), Ex(g.view(), u.view(), dn.view()), {},
                          moe::LoadBalanceLoss{.coef = 1e-4f, .sequence_length = seq});
  double mean = 0.0;
  for (std::size_t s = 0; s < n_seq; ++s) {
    const std::vector<float> xs(x.begin() + s * seq * d, x.begin() + (s + 1) * seq * d);
    mean += forward(whole, xs, seq).losses.load_balance / n_seq;
  }
  const auto r = forward(per_seq, x, seq * n_seq);
  CHECK(r.losses.load_balance == Approx(mean).epsilon(1e-6));
  CHECK(r.losses.load_balance_weighted == Approx(1e-4 * mean).epsilon(1e-6));
  CHECK(forward(whole, x, seq * n_seq).losses.load_balance != Approx(mean).epsilon(1e-4));
}

TEST_CASE("stats: router entropy and mean top-1 probability", "[moe][loss]") {
  const std::size_t e_count = 5, d = 9, t_count = 11;
  const DenseStack<float> gate(1, d, e_count, 14, 0.9f);
  const DenseStack<float> g(e_count, d, 4, 1, 0.1f), u(e_count, d, 4, 2, 0.1f),
      dn(e_count, 4, d, 3, 0.1f);
  const auto x = moe_test::randn(t_count * d, 15);
  const LossLayer layer(R(gate.at(0), {.top_k = 2}), Ex(g.view(), u.view(), dn.view()));
  const auto r = forward(layer, x, t_count);
  double h = 0.0, top = 0.0;
  for (std::size_t t = 0; t < t_count; ++t) {
    const auto p = moe_test::softmax_ref(moe_test::logits_ref(gate.at(0), x.data() + t * d));
    for (double v : p) h -= v * std::log(v);
    top += *std::max_element(p.begin(), p.end());
  }
  CHECK(r.stats.router_entropy == Approx(h / t_count).epsilon(1e-5));
  CHECK(r.stats.mean_top1_prob == Approx(top / t_count).epsilon(1e-5));
  CHECK(r.stats.n_experts == e_count);
  CHECK(r.stats.tokens == t_count);
  CHECK(r.stats.assignments == 2 * t_count);
  CHECK(r.stats.dropped == 0);
  CHECK(r.stats.capacity == 0);
}

TEST_CASE("AuxFreeBias: sign update towards the mean load", "[moe][loss]") {
  moe::MoEStats st;
  st.n_experts = 4;
  st.tokens_per_expert[0] = 10;
  st.tokens_per_expert[1] = 2;
  st.tokens_per_expert[2] = 6;
  st.tokens_per_expert[3] = 6;
  std::vector<float> bias(4, 0.0f);
  moe::AuxFreeBias{.update_rate = 0.001f}.update(bias, st);
  CHECK(bias[0] == Approx(-0.001f));
  CHECK(bias[1] == Approx(0.001f));
  CHECK(bias[2] == 0.0f);
  CHECK(bias[3] == 0.0f);
}
