// Drives an MoE layer's forward_train / backward on owned random parameters and compares the
// gradients with central differences of the float64 formulation in moe_ref.hpp.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include <moe/core/arena.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/presets.hpp>

#include "common/gradcheck.hpp"
#include "common/test_util.hpp"
#include "train/moe_ref.hpp"

namespace moe_grad {

/// The shape and call of one check.
struct Case {
  std::size_t T = 32, D = 6, F = 8, E = 4, Fs = 0;
  moe::Layout layout = moe::Layout::kInOut, router_layout = moe::Layout::kInOut;
  bool training = true;
  std::uint64_t step = 7;
  std::vector<std::uint8_t> mask{};
  float loss_scale = 1.0f;
  float router_sd = 1.0f;   ///< router weights ~ N(0, router_sd^2 / D)
  bool aux_only = false;    ///< dy = 0: only the auxiliary losses drive the gradient
  double tolerance = 1e-5;  ///< max error relative to each tensor's largest gradient
  std::size_t threads = 2;
};

/// The reference configuration of a layer: its policy values and the case.
template <class Layer>
moe_ref::Config config_of(const Layer& layer, const Case& cs, std::span<const float> bias) {
  moe_ref::Config c;
  c.T = cs.T;
  c.D = cs.D;
  c.F = cs.F;
  c.E = cs.E;
  c.Fs = Layer::kShared ? cs.Fs : 0;
  const auto p = layer.policies();
  c.k = p.routing.top_k;
  c.score = p.routing.score;
  c.renormalize = p.routing.renormalize;
  c.route_scale = p.routing.route_scale;
  c.bias.assign(bias.begin(), bias.end());
  c.n_group = p.routing.n_group;
  c.topk_group = p.routing.topk_group;
  c.group_score = p.routing.group_score;
  using N = typename Layer::router_type::noise_policy;
  if constexpr (std::derived_from<N, moe::Jitter>) {
    c.noise = moe_ref::Noise::kJitter;
    c.noise_param = p.noise.eps;
    c.noise_seed = p.noise.seed;
  } else if constexpr (std::derived_from<N, moe::GaussianLogitNoise>) {
    c.noise = moe_ref::Noise::kGauss;
    c.noise_param = p.noise.stddev;
    c.noise_seed = p.noise.seed;
  } else if constexpr (std::derived_from<N, moe::RandomSecondExpert>) {
    c.noise = moe_ref::Noise::kRandomSecond;
    c.noise_param = p.noise.threshold;
    c.noise_seed = p.noise.seed;
  } else if constexpr (std::derived_from<N, moe::NoisyTopK>) {
    c.noise = moe_ref::Noise::kNoisyTopK;
    c.noise_param = p.noise.noise_epsilon;
    c.noise_seed = p.noise.seed;
  }
  if constexpr (Layer::kCapacity) {
    c.cf = cs.training ? p.capacity.train : p.capacity.eval;
    c.cf_times_k = p.capacity.multiply_by_k;
    c.min_capacity = p.capacity.min_capacity;
    c.priority = p.capacity.priority;
    c.renorm_after = p.capacity.renorm == moe::RenormTiming::kAfterDrop;
  }
  if constexpr (Layer::kBalance) {
    c.balance = true;
    c.balance_coef = p.balance.coef;
    c.counting = p.balance.counting;
    c.seq_len = p.balance.sequence_length;
  }
  if constexpr (Layer::kImportanceLoad) {
    c.importance_load = true;
    c.w_importance = p.balance.w_importance;
    c.w_load = p.balance.w_load;
  }
  if constexpr (Layer::kZLoss) {
    c.z = true;
    c.z_coef = p.z_loss.coef;
  }
  c.act = Layer::expert_type::activation;
  if constexpr (Layer::kShared) c.shared_act = Layer::shared_type::activation;
  c.layout = cs.layout;
  c.router_layout = cs.router_layout;
  c.dropout = p.expert_dropout.rate;
  c.dropout_seed = p.expert_dropout.seed;
  c.training = cs.training;
  c.step = cs.step;
  c.mask = cs.mask;
  c.loss_scale = cs.loss_scale;
  return c;
}

/// Owned parameters (float), their float64 copy theta, and the objective weights r.
struct Problem {
  moe_ref::Config c;
  moe_ref::Layout L;
  std::vector<float> p;     // all parameters, theta's layout
  std::vector<float> bias;  // selection bias (not a parameter)
  std::vector<float> r;     // dL/dy
  std::vector<double> theta;
  Problem(const moe_ref::Config& cfg, std::uint64_t seed, float router_sd, bool aux_only,
          bool with_bias)
      : c(cfg), L(cfg) {
    p.resize(L.size);
    const auto fill = [&](std::size_t at, std::size_t n, float sd, std::uint64_t s) {
      const auto v = moe_test::randn(n, s, sd);
      std::copy(v.begin(), v.end(), p.begin() + static_cast<std::ptrdiff_t>(at));
    };
    const float d = static_cast<float>(c.D), f = static_cast<float>(c.F);
    fill(L.x, c.T * c.D, 1.0f, seed);
    fill(L.router, c.D * c.E, router_sd / std::sqrt(d), seed + 1);
    fill(L.noise, L.gate - L.noise, 1.0f / std::sqrt(d), seed + 2);
    fill(L.gate, c.E * c.D * c.F, 1.0f / std::sqrt(d), seed + 3);
    fill(L.up, c.E * c.D * c.F, 1.0f / std::sqrt(d), seed + 4);
    fill(L.down, c.E * c.F * c.D, 1.0f / std::sqrt(f), seed + 5);
    if (c.Fs > 0) {
      fill(L.sgate, c.D * c.Fs, 1.0f / std::sqrt(d), seed + 6);
      fill(L.sup, c.D * c.Fs, 1.0f / std::sqrt(d), seed + 7);
      fill(L.sdown, c.Fs * c.D, 1.0f / std::sqrt(static_cast<float>(c.Fs)), seed + 8);
    }
    if (with_bias) bias = moe_test::randu(c.E, seed + 9, -0.05f, 0.05f);
    c.bias = bias;
    r = aux_only ? std::vector<float>(c.T * c.D, 0.0f) : moe_test::randn(c.T * c.D, seed + 10);
    theta.assign(p.begin(), p.end());
  }
  [[nodiscard]] std::vector<double> r64() const { return {r.begin(), r.end()}; }
  [[nodiscard]] moe::F32Weight w(std::size_t at, std::size_t in, std::size_t out,
                                 moe::Layout l) const {
    return {p.data() + at, in, out, l};
  }
  [[nodiscard]] moe::WeightStack<moe::F32Weight> stack(std::size_t at, std::size_t in,
                                                       std::size_t out) const {
    return {{p.data() + at, in, out, c.layout}, c.E};
  }
};

/// The layer over a problem's parameters, with the policy values `pol`.
template <class Layer>
Layer make_layer(const Problem& pr, const typename Layer::Policies& pol) {
  const auto& c = pr.c;
  moe::F32Weight noise{};
  if constexpr (Layer::router_type::kNoisyTopK) {
    noise = pr.w(pr.L.noise, c.D, c.E, moe::Layout::kInOut);
  }
  if constexpr (Layer::kShared) {
    return Layer(
        {.router = pr.w(pr.L.router, c.D, c.E, c.router_layout),
         .noise = noise,
         .selection_bias = pr.bias,
         .gate = pr.stack(pr.L.gate, c.D, c.F),
         .up = pr.stack(pr.L.up, c.D, c.F),
         .down = pr.stack(pr.L.down, c.F, c.D),
         .shared = {pr.w(pr.L.sgate, c.D, c.Fs, c.layout), pr.w(pr.L.sup, c.D, c.Fs, c.layout),
                    pr.w(pr.L.sdown, c.Fs, c.D, c.layout)}},
        pol);
  } else {
    return Layer({.router = pr.w(pr.L.router, c.D, c.E, c.router_layout),
                  .noise = noise,
                  .selection_bias = pr.bias,
                  .gate = pr.stack(pr.L.gate, c.D, c.F),
                  .up = pr.stack(pr.L.up, c.D, c.F),
                  .down = pr.stack(pr.L.down, c.F, c.D)},
                 pol);
  }
}

/// The library's gradients (theta's layout) and decisions after forward_train + backward.
struct Analytic {
  std::vector<float> grad;
  std::vector<float> y;
  moe::MoEResult result;
  moe_ref::Frozen frozen;
};

template <class Layer>
typename Layer::Grads full_grads(const Layer& layer, const Problem& pr, std::vector<float>& g) {
  const auto& L = pr.L;
  const auto& c = pr.c;
  typename Layer::Grads gr;
  gr.router.gate = moe::WeightGrad{g.data() + L.router, c.D, c.E, c.router_layout};
  if constexpr (Layer::router_type::kNoisyTopK) {
    gr.router.noise = moe::WeightGrad{g.data() + L.noise, c.D, c.E, moe::Layout::kInOut};
  }
  gr.experts.gate = moe::grad_like(g.data() + L.gate, layer.experts().gate());
  gr.experts.up = moe::grad_like(g.data() + L.up, layer.experts().up());
  gr.experts.down = moe::grad_like(g.data() + L.down, layer.experts().down());
  if constexpr (Layer::kShared) {
    gr.shared.gate = moe::WeightGrad::like(g.data() + L.sgate, layer.shared().gate());
    gr.shared.up = moe::WeightGrad::like(g.data() + L.sup, layer.shared().up());
    gr.shared.down = moe::WeightGrad::like(g.data() + L.sdown, layer.shared().down());
  }
  return gr;
}

template <class Layer>
Analytic run_library(const Layer& layer, const Problem& pr, std::size_t threads, float loss_scale) {
  const auto& c = pr.c;
  moe::ThreadPool pool(threads);
  moe::Arena scratch(layer.training_workspace_bytes(c.T)), tape(layer.tape_bytes(c.T));
  Analytic a;
  a.grad.assign(pr.L.size, 0.0f);
  a.y.assign(c.T * c.D, -1.0f);
  typename Layer::Saved saved;
  moe::ForwardOptions opts;
  opts.training = c.training;
  opts.step = c.step;
  opts.token_mask = c.mask.empty() ? nullptr : c.mask.data();
  const moe::MatrixView<const float> x(pr.p.data() + pr.L.x, c.T, c.D);
  a.result = layer.forward_train(pool, x, {a.y.data(), c.T, c.D}, scratch, tape, saved, opts);
  CHECK(scratch.used() == 0);
  CHECK(tape.used() <= tape.capacity());
  const auto gr = full_grads(layer, pr, a.grad);
  moe::BackwardOptions bo;
  bo.loss_scale = loss_scale;
  layer.backward(pool, x, saved, {pr.r.data(), c.T, c.D}, {a.grad.data() + pr.L.x, c.T, c.D}, gr,
                 scratch, bo);
  CHECK(scratch.used() == 0);
  CHECK(scratch.high_water() <= scratch.capacity());
  // decisions
  const std::size_t k = c.k;
  auto& fz = a.frozen;
  fz.selected.assign(saved.route.selected.data, saved.route.selected.data + c.T * k);
  fz.removed.assign(c.T * k, 0);
  fz.kept.assign(c.T * k, 0);
  fz.renormed.assign(saved.dispatch.renormed, saved.dispatch.renormed + c.T);
  fz.next.assign(c.T, moe_ref::kNone);
  for (std::size_t t = 0; t < c.T; ++t) {
    if (saved.route.next != nullptr) fz.next[t] = saved.route.next[t];
    for (std::size_t j = 0; j < k; ++j) {
      const std::size_t q = t * k + j;
      fz.removed[q] = saved.route.experts.data[q] == moe::kNoExpert;
      fz.kept[q] = c.real(t) && !fz.removed[q] && !saved.dispatch.dropped[q];
    }
  }
  return a;
}

/// A seed whose routing decisions all have a margin of at least `min_margin` (and, if asked,
/// at least one capacity drop), so that finite differences never straddle a decision.
inline std::uint64_t pick_seed(const moe_ref::Config& c, float router_sd, bool aux_only,
                               bool with_bias, bool want_drop, double min_margin = 2e-3) {
  for (std::uint64_t seed = 1; seed < 400; ++seed) {
    Problem pr(c, seed * 100, router_sd, aux_only, with_bias);
    moe_ref::Frozen now;
    double margin = 0.0;
    moe_ref::objective(pr.c, pr.theta, pr.r64(), {}, &now, &margin);
    if (!(margin > min_margin)) continue;
    if (want_drop) {
      bool drop = false;
      for (std::size_t q = 0; q < now.kept.size(); ++q) {
        drop = drop || (pr.c.real(q / c.k) && !now.removed[q] && !now.kept[q]);
      }
      if (!drop) continue;
    }
    return seed * 100;
  }
  FAIL("no seed with routing margins");
  return 0;
}

/// The whole check: every named parameter's gradient against central differences of the
/// float64 objective with frozen decisions, which must not flip at any probe.
template <class Layer>
void check(const std::string& name, const Case& cs, const typename Layer::Policies& pol,
           bool want_drop = false) {
  INFO(name);
  // a layer over zeros only to read its policies into the reference configuration
  const bool with_bias = pol.routing.selection_bias;
  moe_ref::Config c0;
  {
    moe_ref::Config probe;
    probe.T = cs.T;
    probe.D = cs.D;
    probe.F = cs.F;
    probe.E = cs.E;
    probe.Fs = Layer::kShared ? cs.Fs : 0;
    probe.noise = std::derived_from<typename Layer::router_type::noise_policy, moe::NoisyTopK>
                      ? moe_ref::Noise::kNoisyTopK
                      : moe_ref::Noise::kNone;
    Problem zero(probe, 1, cs.router_sd, true, with_bias);
    const Layer layer = make_layer<Layer>(zero, pol);
    c0 = config_of(layer, cs, zero.bias);
  }
  const std::uint64_t seed = pick_seed(c0, cs.router_sd, cs.aux_only, with_bias, want_drop);
  Problem pr(c0, seed, cs.router_sd, cs.aux_only, with_bias);
  const Layer layer = make_layer<Layer>(pr, pol);
  const Analytic a = run_library(layer, pr, cs.threads, cs.loss_scale);

  // the library's decisions and output are the reference's
  moe_ref::Frozen now;
  std::vector<double> y, aux;
  moe_ref::objective(pr.c, pr.theta, pr.r64(), {}, &now, nullptr, &y, &aux);
  REQUIRE(now == a.frozen);
  const moe_test::GradCheck yc = moe_test::compare_gradient(a.y.data(), y.data(), y.size());
  INFO(yc.str("y"));
  CHECK(yc.max_err < 1e-5);
  CHECK(a.result.losses.load_balance == Approx(aux[0]).epsilon(1e-5).margin(1e-7));
  CHECK(a.result.losses.z_loss == Approx(aux[1]).epsilon(1e-5).margin(1e-7));
  CHECK(a.result.losses.importance == Approx(aux[2]).epsilon(1e-4).margin(1e-7));
  CHECK(a.result.losses.load == Approx(aux[3]).epsilon(1e-4).margin(1e-7));

  // central differences with the decisions frozen; count flips at the probes
  std::size_t flips = 0;
  const std::vector<double> r = pr.r64();
  std::vector<double> theta = pr.theta;
  const auto f = [&]() {
    moe_ref::Frozen at;
    const double v = moe_ref::objective(pr.c, theta, r, a.frozen, &at);
    flips += at == a.frozen ? 0 : 1;
    return v;
  };
  const std::vector<double> num = moe_test::numeric_gradient(f, theta);
  REQUIRE(flips == 0);
  const auto& L = pr.L;
  struct Slice {
    const char* name;
    std::size_t at, n;
  };
  std::vector<Slice> slices = {{"x", L.x, L.router - L.x},
                               {"router", L.router, L.noise - L.router},
                               {"noise", L.noise, L.gate - L.noise},
                               {"expert gate", L.gate, L.up - L.gate},
                               {"expert up", L.up, L.down - L.up},
                               {"expert down", L.down, L.sgate - L.down},
                               {"shared gate", L.sgate, L.sup - L.sgate},
                               {"shared up", L.sup, L.sdown - L.sup},
                               {"shared down", L.sdown, L.size - L.sdown}};
  for (const Slice& s : slices) {
    if (s.n == 0) continue;
    const moe_test::GradCheck gc =
        moe_test::compare_gradient(a.grad.data() + s.at, num.data() + s.at, s.n);
    INFO(gc.str(s.name));
    if (cs.aux_only && std::string(s.name).find("expert") != std::string::npos) {
      CHECK(gc.scale < 1e-12);  // no output gradient: the experts learn nothing
      CHECK(gc.max_err < 1e-12);
      continue;
    }
    if (cs.aux_only && std::string(s.name).find("shared") != std::string::npos) continue;
    if (!cs.training && std::string(s.name) == "noise") {  // no noise outside training
      CHECK(gc.scale == 0.0);
      CHECK(gc.max_err == 0.0);
      continue;
    }
    REQUIRE(gc.scale > 0.0);
    CHECK(gc.max_err < cs.tolerance);
    if (std::getenv("MOE_GRAD_VERBOSE") != nullptr)
      std::printf("%s | %s\n", name.c_str(), gc.str(s.name).c_str());
  }
}

}  // namespace moe_grad
