// MoE backward invariants (properties that hold exactly, independent of a reference), frozen
// and quantised weights, thread-count determinism, the aux-free bias update as a separate step,
// and error handling.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <moe/core/arena.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/presets.hpp>

#include "common/test_util.hpp"

using moe::Activation;
using moe::F32Weight;

namespace {

template <class Noise = moe::NoNoise>
using R = moe::Router<F32Weight, moe::Routing, Noise>;
using Ex = moe::Expert<F32Weight, Activation::kSilu>;

/// Owned f32 parameters of an MoE layer: router [D, E], experts [E, D, F] / [E, F, D].
struct Params {
  std::size_t d, f, e;
  std::vector<float> router, gate, up, down;
  Params(std::size_t d_, std::size_t f_, std::size_t e_, std::uint64_t seed, float router_sd = 1.0f)
      : d(d_),
        f(f_),
        e(e_),
        router(moe_test::randn(d_ * e_, seed, router_sd / std::sqrt(static_cast<float>(d_)))),
        gate(moe_test::randn(e_ * d_ * f_, seed + 1, 0.4f)),
        up(moe_test::randn(e_ * d_ * f_, seed + 2, 0.4f)),
        down(moe_test::randn(e_ * f_ * d_, seed + 3, 0.3f)) {}
  [[nodiscard]] F32Weight wr() const { return {router.data(), d, e}; }
  [[nodiscard]] moe::WeightStack<F32Weight> s(const std::vector<float>& v, std::size_t in,
                                              std::size_t out) const {
    return {{v.data(), in, out}, e};
  }
  template <class Layer>
  [[nodiscard]] Layer layer(const typename Layer::Policies& p = {}) const {
    return Layer({.router = wr(), .gate = s(gate, d, f), .up = s(up, d, f), .down = s(down, f, d)},
                 p);
  }
};

/// Gradient buffers of a Params-shaped layer and their views.
struct GradBuf {
  std::vector<float> dx, router, gate, up, down;
  GradBuf(const Params& p, std::size_t t)
      : dx(t * p.d, 0.0f),
        router(p.router.size(), 0.0f),
        gate(p.gate.size(), 0.0f),
        up(p.up.size(), 0.0f),
        down(p.down.size(), 0.0f) {}
  template <class Layer>
  typename Layer::Grads views(const Layer& layer, bool experts = true, bool router_grad = true) {
    typename Layer::Grads g;
    if (router_grad) g.router.gate = moe::WeightGrad::like(router.data(), layer.router().gate());
    if (experts) {
      g.experts.gate = moe::grad_like(gate.data(), layer.experts().gate());
      g.experts.up = moe::grad_like(up.data(), layer.experts().up());
      g.experts.down = moe::grad_like(down.data(), layer.experts().down());
    }
    return g;
  }
};

struct Step {
  std::vector<float> y;
  moe::MoEResult res;
  std::vector<std::uint8_t> dropped;  ///< [T, k] pairs dropped by the capacity policy
};

/// forward_train + backward of `layer` with dy; returns y and the result, fills `gb`.
template <class Layer>
Step train_step(const Layer& layer, const std::vector<float>& x, const std::vector<float>& dy,
                std::size_t t_count, GradBuf& gb, const typename Layer::Grads& grads,
                const moe::ForwardOptions& opts = {.training = true, .step = 3},
                std::size_t threads = 2, float loss_scale = 1.0f) {
  const std::size_t d = layer.dim();
  moe::ThreadPool pool(threads);
  moe::Arena scratch(layer.training_workspace_bytes(t_count)), tape(layer.tape_bytes(t_count));
  typename Layer::Saved saved;
  Step s;
  s.y.assign(t_count * d, 0.0f);
  s.res = layer.forward_train(pool, {x.data(), t_count, d}, {s.y.data(), t_count, d}, scratch, tape,
                              saved, opts);
  moe::BackwardOptions bo;
  bo.loss_scale = loss_scale;
  layer.backward(pool, {x.data(), t_count, d}, saved, {dy.data(), t_count, d},
                 {gb.dx.data(), t_count, d}, grads, scratch, bo);
  CHECK(scratch.used() == 0);
  CHECK(scratch.high_water() <= scratch.capacity());
  CHECK(tape.used() <= layer.tape_bytes(t_count));
  s.dropped.assign(saved.dispatch.dropped, saved.dispatch.dropped + t_count * layer.top_k());
  return s;  // (saved's views die with the tape)
}

double max_abs(const std::vector<float>& v) {
  double m = 0.0;
  for (float a : v) m = std::max(m, static_cast<double>(std::abs(a)));
  return m;
}

}  // namespace

TEST_CASE("top-1 with renormalisation gives the router no gradient from the output",
          "[train][moe_invariant]") {
  using L = moe::MoELayer<R<>, Ex>;
  const std::size_t t_count = 40;
  const Params prm(8, 12, 4, 1);
  const auto x = moe_test::randn(t_count * 8, 2), dy = moe_test::randn(t_count * 8, 3);
  L::Policies p;
  p.routing = {.top_k = 1, .renormalize = true};
  GradBuf renorm(prm, t_count);
  const L a = prm.layer<L>(p);
  train_step(a, x, dy, t_count, renorm, renorm.views(a));
  p.routing.renormalize = false;  // Switch: the raw probability is the gate
  GradBuf raw(prm, t_count);
  const L b = prm.layer<L>(p);
  train_step(b, x, dy, t_count, raw, raw.views(b));
  INFO("router gradient: renormalised " << max_abs(renorm.router) << ", raw "
                                        << max_abs(raw.router));
  CHECK(max_abs(raw.router) > 0.1);
  CHECK(max_abs(renorm.router) <= 1e-6 * max_abs(raw.router));
  CHECK(max_abs(renorm.gate) > 0.1);  // the experts still learn
}

TEST_CASE("a token that lost every expert: dx = 0 through the experts, only aux through the router",
          "[train][moe_invariant]") {
  const std::size_t t_count = 48, d = 8;
  const Params prm(d, 12, 4, 10, 3.0f);  // a peaked router, so that experts overflow
  const auto x = moe_test::randn(t_count * d, 11);
  auto dy = moe_test::randn(t_count * d, 12);
  const auto fully_dropped = [&](const Step& s) {
    std::vector<std::size_t> out;
    for (std::size_t t = 0; t < t_count; ++t) {
      bool all = true;
      for (std::size_t j = 0; j < 2; ++j) all = all && s.dropped[t * 2 + j];
      if (all) out.push_back(t);
    }
    return out;
  };
  SECTION("no auxiliary loss: dx = 0 and the token's dy is ignored") {
    using L = moe::MoELayer<R<>, Ex, moe::CapacityFactor>;
    L::Policies p;
    p.capacity = {.train = 0.4, .eval = 0.4, .min_capacity = 0};
    const L layer = prm.layer<L>(p);
    GradBuf g1(prm, t_count);
    const Step s1 = train_step(layer, x, dy, t_count, g1, g1.views(layer), {.training = true});
    const auto dropped = fully_dropped(s1);
    REQUIRE(dropped.size() >= 2);
    for (std::size_t t : dropped) {
      for (std::size_t i = 0; i < d; ++i) CHECK(g1.dx[t * d + i] == 0.0f);
      for (std::size_t i = 0; i < d; ++i) dy[t * d + i] = 100.0f;  // changes nothing
    }
    GradBuf g2(prm, t_count);
    train_step(layer, x, dy, t_count, g2, g2.views(layer), {.training = true});
    CHECK(g1.dx == g2.dx);
    CHECK(g1.router == g2.router);
    CHECK(g1.gate == g2.gate);
    CHECK(g1.down == g2.down);
  }
  SECTION("balance and z-loss: the token's dx is the auxiliary losses' router gradient only") {
    using L = moe::MoELayer<R<>, Ex, moe::CapacityFactor, moe::LoadBalanceLoss, moe::RouterZLoss>;
    L::Policies p;
    p.capacity = {.train = 0.4, .eval = 0.4, .min_capacity = 0};
    p.balance = {.coef = 1.0f};
    p.z_loss = {.coef = 1.0f};
    const L layer = prm.layer<L>(p);
    GradBuf full(prm, t_count), aux(prm, t_count);
    const Step s1 = train_step(layer, x, dy, t_count, full, full.views(layer), {.training = true});
    const std::vector<float> zero(t_count * d, 0.0f);
    train_step(layer, x, zero, t_count, aux, aux.views(layer), {.training = true});
    const auto dropped = fully_dropped(s1);
    REQUIRE(dropped.size() >= 2);
    for (std::size_t t : dropped) {
      double n = 0.0;
      for (std::size_t i = 0; i < d; ++i) {
        CHECK(full.dx[t * d + i] == aux.dx[t * d + i]);
        n += std::abs(full.dx[t * d + i]);
      }
      CHECK(n > 0.0);  // the aux losses still see the token
    }
  }
}

TEST_CASE("the balance-loss gradient vanishes under perfectly uniform dispatch",
          "[train][moe_invariant]") {
  using L = moe::MoELayer<R<>, Ex, moe::Dropless, moe::LoadBalanceLoss>;
  const std::size_t e = 4, t_count = 48;
  // identity router (D = E): token t prefers expert t % E (logit 3) then (t + 1) % E (1.5), so
  // every expert is the first choice and the second choice of T / E tokens
  Params prm(e, 6, e, 20);
  std::fill(prm.router.begin(), prm.router.end(), 0.0f);
  for (std::size_t i = 0; i < e; ++i) prm.router[i * e + i] = 1.0f;
  std::vector<float> x(t_count * e, 0.0f), skew(t_count * e, 0.0f);
  for (std::size_t t = 0; t < t_count; ++t) {
    x[t * e + t % e] = 3.0f;
    x[t * e + (t + 1) % e] = 1.5f;
    skew[t * e + (t % 3 == 0 ? 0 : t % e)] = 3.0f;  // expert 0 overloaded
    skew[t * e + (t + 1) % e] += 1.5f;
  }
  const std::vector<float> dy(t_count * e, 0.0f);  // only the balance loss
  for (auto counting : {moe::BalanceCounting::kAllChoicesNormalized,
                        moe::BalanceCounting::kAllChoices, moe::BalanceCounting::kTop1}) {
    for (std::size_t k : {1u, 2u}) {
      L::Policies p;
      p.routing = {.top_k = k};
      p.balance = {.coef = 1.0f, .counting = counting};
      const L layer = prm.layer<L>(p);
      GradBuf uni(prm, t_count), sk(prm, t_count);
      const Step s = train_step(layer, x, dy, t_count, uni, uni.views(layer));
      train_step(layer, skew, dy, t_count, sk, sk.views(layer));
      INFO("k " << k << " counting " << static_cast<int>(counting) << " uniform " << max_abs(uni.dx)
                << " skewed " << max_abs(sk.dx));
      for (std::size_t i = 0; i < e; ++i)
        CHECK(s.res.stats.tokens_per_expert[i] == t_count * k / e);
      CHECK(max_abs(sk.dx) > 1e-3);
      CHECK(max_abs(uni.dx) <= 1e-5 * max_abs(sk.dx));
      CHECK(max_abs(uni.router) <= 1e-5 * max_abs(sk.router));
    }
  }
}

TEST_CASE("the z-loss gradient is parallel to the probabilities", "[train][moe_invariant]") {
  using L = moe::MoELayer<R<>, Ex, moe::Dropless, moe::NoBalanceLoss, moe::RouterZLoss>;
  const std::size_t e = 6, t_count = 33;
  Params prm(e, 5, e, 30);  // identity router: the logits are x and dL/dx = dL/dz
  std::fill(prm.router.begin(), prm.router.end(), 0.0f);
  for (std::size_t i = 0; i < e; ++i) prm.router[i * e + i] = 1.0f;
  const auto x = moe_test::randn(t_count * e, 31, 2.0f);
  const std::vector<float> dy(t_count * e, 0.0f);
  L::Policies p;
  p.z_loss = {.coef = 0.7f};
  const L layer = prm.layer<L>(p);
  GradBuf g(prm, t_count);
  train_step(layer, x, dy, t_count, g, g.views(layer), {.training = true}, 2, 1.5f);
  for (std::size_t t = 0; t < t_count; ++t) {
    double m = -1e300, s = 0.0;
    for (std::size_t i = 0; i < e; ++i) m = std::max(m, static_cast<double>(x[t * e + i]));
    for (std::size_t i = 0; i < e; ++i) s += std::exp(x[t * e + i] - m);
    const double lse = m + std::log(s);
    const double want = 1.5 * 2.0 * 0.7 * lse / static_cast<double>(t_count);  // dL/dz_i / p_i
    for (std::size_t i = 0; i < e; ++i) {
      const double prob = std::exp(x[t * e + i] - lse);
      INFO("token " << t << " expert " << i);
      CHECK(g.dx[t * e + i] / prob == Approx(want).epsilon(2e-5));
    }
  }
}

TEST_CASE("frozen MoE parameters: no weight gradient, dx unchanged", "[train][moe_invariant]") {
  using L = moe::presets::Switch<F32Weight>;
  const std::size_t t_count = 40;
  const Params prm(8, 12, 4, 40, 2.0f);
  const auto x = moe_test::randn(t_count * 8, 41), dy = moe_test::randn(t_count * 8, 42);
  const L layer = prm.layer<L>();
  GradBuf all(prm, t_count), frozen_experts(prm, t_count), frozen(prm, t_count);
  train_step(layer, x, dy, t_count, all, all.views(layer));
  train_step(layer, x, dy, t_count, frozen_experts, frozen_experts.views(layer, false));
  train_step(layer, x, dy, t_count, frozen, L::Grads{});  // the whole layer frozen (ST-MoE)
  CHECK(max_abs(all.gate) > 0.0);
  CHECK(frozen_experts.dx == all.dx);
  CHECK(frozen_experts.router == all.router);
  CHECK(max_abs(frozen_experts.gate) == 0.0);
  CHECK(max_abs(frozen_experts.up) == 0.0);
  CHECK(max_abs(frozen_experts.down) == 0.0);
  CHECK(frozen.dx == all.dx);
  CHECK(max_abs(frozen.router) == 0.0);
}

TEST_CASE("separate per-expert gradient views equal the stacked ones; one expert frozen",
          "[train][moe_invariant]") {
  using L = moe::presets::Mixtral<F32Weight>;
  const std::size_t t_count = 36, d = 8, f = 12, e = 4;
  const Params prm(d, f, e, 50);
  const auto x = moe_test::randn(t_count * d, 51), dy = moe_test::randn(t_count * d, 52);
  const L layer = prm.layer<L>();
  GradBuf stacked(prm, t_count);
  train_step(layer, x, dy, t_count, stacked, stacked.views(layer));
  // one buffer per expert, expert 2 frozen
  std::vector<std::vector<float>> bufs(3 * e, std::vector<float>(d * f, 0.0f));
  std::vector<moe::WeightGrad> gv, uv, dv;
  for (std::size_t i = 0; i < e; ++i) {
    gv.push_back(i == 2 ? moe::WeightGrad{} : moe::WeightGrad{bufs[i].data(), d, f});
    uv.push_back(i == 2 ? moe::WeightGrad{} : moe::WeightGrad{bufs[e + i].data(), d, f});
    dv.push_back(i == 2 ? moe::WeightGrad{} : moe::WeightGrad{bufs[2 * e + i].data(), f, d});
  }
  GradBuf sep(prm, t_count);
  L::Grads g = sep.views(layer, false);
  g.experts.gate = moe::WeightStack<moe::WeightGrad>::of(gv);
  g.experts.up = moe::WeightStack<moe::WeightGrad>::of(uv);
  g.experts.down = moe::WeightStack<moe::WeightGrad>::of(dv);
  train_step(layer, x, dy, t_count, sep, g);
  CHECK(sep.dx == stacked.dx);
  CHECK(sep.router == stacked.router);
  for (std::size_t i = 0; i < e; ++i) {
    if (i == 2) continue;
    CHECK(std::equal(bufs[i].begin(), bufs[i].end(), stacked.gate.begin() + i * d * f));
    CHECK(std::equal(bufs[2 * e + i].begin(), bufs[2 * e + i].end(),
                     stacked.down.begin() + i * d * f));
  }
}

TEST_CASE("bf16 and int8 experts are frozen: gradient to the input only",
          "[train][moe_invariant]") {
  const std::size_t t_count = 24, d = 8, f = 16, e = 4;
  const Params prm(d, f, e, 60);
  std::vector<moe::bf16> gb(prm.gate.size()), ub(prm.up.size()), db(prm.down.size());
  std::vector<float> gr(prm.gate.size()), ur(prm.up.size()), dr(prm.down.size());
  for (std::size_t i = 0; i < gb.size(); ++i) gr[i] = (gb[i] = moe::bf16(prm.gate[i])).to_float();
  for (std::size_t i = 0; i < ub.size(); ++i) ur[i] = (ub[i] = moe::bf16(prm.up[i])).to_float();
  for (std::size_t i = 0; i < db.size(); ++i) dr[i] = (db[i] = moe::bf16(prm.down[i])).to_float();
  using LB = moe::presets::Mixtral<moe::BF16Weight>;
  using LF = moe::presets::Mixtral<F32Weight>;
  const LB lb({.router = prm.wr(),
               .gate = {{gb.data(), d, f}, e},
               .up = {{ub.data(), d, f}, e},
               .down = {{db.data(), f, d}, e}});
  const LF lf({.router = prm.wr(),
               .gate = {{gr.data(), d, f}, e},
               .up = {{ur.data(), d, f}, e},
               .down = {{dr.data(), f, d}, e}});
  const auto x = moe_test::randn(t_count * d, 61), dy = moe_test::randn(t_count * d, 62);
  GradBuf gbf(prm, t_count), gf(prm, t_count);
  LB::Grads grads;
  grads.router.gate = moe::WeightGrad::like(gbf.router.data(), prm.wr());
  train_step(lb, x, dy, t_count, gbf, grads);
  train_step(lf, x, dy, t_count, gf, gf.views(lf, false));
  // the same dx and router gradient as the f32 layer over the bf16-rounded values
  const auto dd = moe_test::diff(gbf.dx.data(), gf.dx.data(), gf.dx.size());
  INFO(dd.str());
  CHECK(dd.max_abs <= 1e-5 * max_abs(gf.dx));
  CHECK(moe_test::diff(gbf.router.data(), gf.router.data(), gf.router.size()).max_abs <=
        1e-5 * max_abs(gf.router));
  // a trainable bf16 expert weight is refused
  moe::ThreadPool pool(1);
  moe::Arena scratch(lb.training_workspace_bytes(t_count)), tape(lb.tape_bytes(t_count));
  LB::Saved saved;
  std::vector<float> y(t_count * d);
  lb.forward_train(pool, {x.data(), t_count, d}, {y.data(), t_count, d}, scratch, tape, saved);
  LB::Grads bad;
  bad.experts.up = {{gbf.up.data(), d, f}, e};
  CHECK_THROWS_WITH(lb.backward(pool, {x.data(), t_count, d}, saved, {dy.data(), t_count, d},
                                {gbf.dx.data(), t_count, d}, bad, scratch),
                    Catch::Contains("[expert] weight 'up[0]' is bf16") &&
                        Catch::Contains("only f32 weights are trainable"));
  // int8 experts (Grok-1's file format), the router trainable
  using G = moe::presets::Grok1;
  std::vector<std::int8_t> q(e * d * f, 3), qd(e * f * d, -2);
  std::vector<moe::bf16> sc(e * f, moe::bf16(0.01f)), scd(e * d, moe::bf16(0.01f));
  const G grok(prm.wr(), {{q.data(), sc.data(), d, f, 1}, e}, {{q.data(), sc.data(), d, f, 1}, e},
               {{qd.data(), scd.data(), f, d, 1}, e});
  G::Saved gs;
  moe::Arena gscratch(grok.training_workspace_bytes(t_count)), gtape(grok.tape_bytes(t_count));
  grok.forward_train(pool, {x.data(), t_count, d}, {y.data(), t_count, d}, gscratch, gtape, gs);
  G::Grads gg;
  gg.router.gate = moe::WeightGrad::like(gbf.router.data(), prm.wr());
  std::fill(gbf.dx.begin(), gbf.dx.end(), 0.0f);
  grok.backward(pool, {x.data(), t_count, d}, gs, {dy.data(), t_count, d},
                {gbf.dx.data(), t_count, d}, gg, gscratch);
  CHECK(max_abs(gbf.dx) > 0.0);
  gg.experts.down = {{gbf.down.data(), f, d}, e};
  CHECK_THROWS_AS(grok.backward(pool, {x.data(), t_count, d}, gs, {dy.data(), t_count, d},
                                {gbf.dx.data(), t_count, d}, gg, gscratch),
                  moe::ConfigError);
}

TEST_CASE("training is bit-identical for 1, 2 and 3 threads", "[train][moe_invariant]") {
  // capacity, jitter, expert dropout, a shared expert, padding, T > 256 (several row blocks)
  using L = moe::MoELayer<R<moe::Jitter>, Ex, moe::CapacityFactor, moe::LoadBalanceLoss,
                          moe::RouterZLoss, moe::GatedFfn<F32Weight, Activation::kSilu>>;
  const std::size_t t_count = 300, d = 16, f = 24, fs = 20, e = 4;
  const Params prm(d, f, e, 70);
  const auto sg = moe_test::randn(d * fs, 71, 0.3f), su = moe_test::randn(d * fs, 72, 0.3f),
             sd = moe_test::randn(fs * d, 73, 0.3f);
  L::Policies p;
  p.noise = {.eps = 0.05f, .seed = 1};
  p.capacity = {.train = 0.8, .eval = 0.8, .min_capacity = 0};
  p.expert_dropout = {.rate = 0.2f, .seed = 9};
  const L layer({.router = prm.wr(),
                 .gate = prm.s(prm.gate, d, f),
                 .up = prm.s(prm.up, d, f),
                 .down = prm.s(prm.down, f, d),
                 .shared = {F32Weight{sg.data(), d, fs}, F32Weight{su.data(), d, fs},
                            F32Weight{sd.data(), fs, d}}},
                p);
  const auto x = moe_test::randn(t_count * d, 74), dy = moe_test::randn(t_count * d, 75);
  std::vector<std::uint8_t> mask(t_count, 1);
  for (std::size_t t = 0; t < t_count; t += 7) mask[t] = 0;
  const moe::ForwardOptions opts{.training = true, .token_mask = mask.data(), .step = 11};
  std::vector<std::vector<float>> results;
  for (std::size_t threads : {1u, 2u, 3u}) {
    GradBuf g(prm, t_count);
    std::vector<float> gsg(sg.size(), 0.0f), gsu(su.size(), 0.0f), gsd(sd.size(), 0.0f);
    L::Grads grads = g.views(layer);
    grads.shared = {moe::WeightGrad::like(gsg.data(), layer.shared().gate()),
                    moe::WeightGrad::like(gsu.data(), layer.shared().up()),
                    moe::WeightGrad::like(gsd.data(), layer.shared().down())};
    const Step s = train_step(layer, x, dy, t_count, g, grads, opts, threads, 0.5f);
    CHECK(s.res.stats.dropped > 0);
    std::vector<float> all = s.y;
    for (const auto* v : {&g.dx, &g.router, &g.gate, &g.up, &g.down, &gsg, &gsu, &gsd}) {
      all.insert(all.end(), v->begin(), v->end());
    }
    results.push_back(all);
  }
  CHECK(results[0] == results[1]);
  CHECK(results[0] == results[2]);
}

TEST_CASE("forward_train (experts side by side) equals forward (experts in turn) bit for bit",
          "[train][moe_invariant]") {
  // 4 experts top-3 over 700 tokens: several 256-row blocks per expert, uneven loads, and
  // three terms per token, whose sum depends on the order the combine adds them in.
  using L = moe::MoELayer<R<>, Ex>;
  const std::size_t t_count = 700, d = 32, f = 48;
  const Params prm(d, f, 4, 60, 3.0f);
  L::Policies p;
  p.routing.top_k = 3;
  const L layer = prm.layer<L>(p);
  const auto x = moe_test::randn(t_count * d, 61);
  for (std::size_t threads : {1u, 2u, 3u}) {
    moe::ThreadPool pool(threads);
    moe::Arena arena(layer.workspace_bytes(t_count));
    moe::Arena scratch(layer.training_workspace_bytes(t_count)), tape(layer.tape_bytes(t_count));
    std::vector<float> y_eval(t_count * d), y_train(t_count * d);
    const moe::MoEResult r =
        layer.forward(pool, {x.data(), t_count, d}, {y_eval.data(), t_count, d}, arena);
    L::Saved saved;
    layer.forward_train(pool, {x.data(), t_count, d}, {y_train.data(), t_count, d}, scratch, tape,
                        saved, {.training = false});
    CHECK(*std::max_element(r.stats.tokens_per_expert.begin(), r.stats.tokens_per_expert.end()) >
          256);  // at least one expert has two blocks
    CHECK(y_train == y_eval);
  }
}

TEST_CASE("expert dropout acts in training only; the aux-free bias update is a separate step",
          "[train][moe_invariant]") {
  SECTION("expert dropout") {
    using L = moe::MoELayer<R<>, Ex>;
    const std::size_t t_count = 20, d = 8;
    const Params prm(d, 12, 4, 80);
    L::Policies p;
    p.expert_dropout = {.rate = 0.4f};
    const L with = prm.layer<L>(p), without = prm.layer<L>();
    CHECK(with.expert_dropout().rate == 0.4f);
    const auto x = moe_test::randn(t_count * d, 81);
    moe::ThreadPool pool(2);
    moe::Arena arena(with.workspace_bytes(t_count));
    std::vector<float> y1(t_count * d), y2(t_count * d), y3(t_count * d);
    with.forward(pool, {x.data(), t_count, d}, {y1.data(), t_count, d}, arena, {.training = false});
    without.forward(pool, {x.data(), t_count, d}, {y2.data(), t_count, d}, arena);
    CHECK(y1 == y2);
    with.forward(pool, {x.data(), t_count, d}, {y3.data(), t_count, d}, arena, {.training = true});
    CHECK(y3 != y2);
    L::Policies bad;
    bad.expert_dropout.rate = 1.0f;
    CHECK_THROWS_AS(prm.layer<L>(bad), moe::ConfigError);
  }
  SECTION("DeepSeek-V3 bias: updated from the step's loads, never by backward") {
    using L = moe::presets::DeepSeekV3<F32Weight>;
    const std::size_t t_count = 64, d = 8, f = 6, e = 16;
    const Params prm(d, f, e, 90, 2.0f);
    const auto sg = moe_test::randn(d * f, 91, 0.3f);
    std::vector<float> bias(e, 0.0f);
    const L layer({.router = prm.wr(),
                   .selection_bias = bias,
                   .gate = prm.s(prm.gate, d, f),
                   .up = prm.s(prm.up, d, f),
                   .down = prm.s(prm.down, f, d),
                   .shared = {F32Weight{sg.data(), d, f}, F32Weight{sg.data(), d, f},
                              F32Weight{sg.data(), f, d}}});
    const auto x = moe_test::randn(t_count * d, 92), dy = moe_test::randn(t_count * d, 93);
    moe::ThreadPool pool(2);
    moe::Arena scratch(layer.training_workspace_bytes(t_count)), tape(layer.tape_bytes(t_count));
    L::Saved saved;
    std::vector<float> y(t_count * d);
    const moe::MoEResult res =
        layer.forward_train(pool, {x.data(), t_count, d}, {y.data(), t_count, d}, scratch, tape,
                            saved, {.training = true});
    GradBuf g1(prm, t_count), g2(prm, t_count);
    layer.backward(pool, {x.data(), t_count, d}, saved, {dy.data(), t_count, d},
                   {g1.dx.data(), t_count, d}, g1.views(layer), scratch);
    moe::AuxFreeBias{.update_rate = 1e-3f}.update(bias, res.stats);  // the separate step
    double moved = 0.0;
    for (float b : bias) moved += std::abs(b);
    CHECK(moved > 0.0);
    for (std::size_t i = 0; i < e; ++i) {  // overloaded experts go down, underloaded up
      const double mean = static_cast<double>(res.stats.assignments) / static_cast<double>(e);
      if (res.stats.tokens_per_expert[i] > mean) CHECK(bias[i] < 0.0f);
      if (res.stats.tokens_per_expert[i] < mean) CHECK(bias[i] > 0.0f);
    }
    // the saved step's backward does not read the bias
    layer.backward(pool, {x.data(), t_count, d}, saved, {dy.data(), t_count, d},
                   {g2.dx.data(), t_count, d}, g2.views(layer), scratch);
    CHECK(g1.dx == g2.dx);
    CHECK(g1.router == g2.router);
  }
}

TEST_CASE("MoE backward errors name the component and both shapes", "[train][moe_invariant]") {
  using L = moe::presets::Mixtral<F32Weight>;
  const std::size_t t_count = 8, d = 8;
  const Params prm(d, 12, 4, 100);
  const L layer = prm.layer<L>();
  const auto x = moe_test::randn(t_count * d, 101);
  moe::ThreadPool pool(1);
  moe::Arena scratch(layer.training_workspace_bytes(t_count)), tape(layer.tape_bytes(t_count));
  L::Saved saved;
  std::vector<float> y(t_count * d), dx(t_count * d, 0.0f);
  layer.forward_train(pool, {x.data(), t_count, d}, {y.data(), t_count, d}, scratch, tape, saved);
  CHECK_THROWS_WITH(layer.backward(pool, {x.data(), 4, d}, saved, {y.data(), 4, d},
                                   {dx.data(), 4, d}, {}, scratch),
                    "[moe_layer] backward() got 4 tokens, forward_train() saved 8");
  CHECK_THROWS_WITH(layer.backward(pool, {x.data(), t_count, d}, saved, {y.data(), t_count - 1, d},
                                   {dx.data(), t_count, d}, {}, scratch),
                    "[moe_layer] backward() got dy [7, 8], expected [8, 8]");
  std::vector<float> g(8 * 5);
  L::Grads bad;
  bad.router.gate = moe::WeightGrad{g.data(), 8, 5};
  CHECK_THROWS_WITH(layer.backward(pool, {x.data(), t_count, d}, saved, {y.data(), t_count, d},
                                   {dx.data(), t_count, d}, bad, scratch),
                    "[router] gradient of 'gate' has shape [8, 5] [in, out], expected [8, 4] "
                    "[in, out]");
  bad = {};
  bad.experts.gate = {{g.data(), 8, 5}, 4};
  CHECK_THROWS_AS(layer.backward(pool, {x.data(), t_count, d}, saved, {y.data(), t_count, d},
                                 {dx.data(), t_count, d}, bad, scratch),
                  moe::ShapeError);
}
