// moe/layers/router.hpp: the MoE router (gate): logits, scores, top-k selection, combine weights,
// and their backward.
//
// Router<W, RoutingP, NoiseP> holds a gate weight view [D, E] of any weight type (F32Weight for
// Grok-1's `router` tensor, bf16 or [out, in] for HF files) and a Routing policy value. route()
// computes, for T tokens:
//
//   logits [T, E]  z = x~ . W_r in f32 (x~ = x, or the router's jittered copy in training)
//   probs  [T, E]  the router's normalised distribution: softmax(z) for the softmax score
//                  functions, s / sum(s) for sigmoid / sqrt-softplus (used by the losses and stats)
//   experts[T, k]  selected experts, best first; ties go to the lower expert (and group) index;
//                  kNoExpert marks a slot RandomSecondExpert removed
//   weights[T, k]  combine weights (renormalised or not, times route_scale)
//   scores [T, k]  the un-renormalised score of each selected expert (p_i or s_i), used by the
//                  capacity policy (probability priority, renormalisation after dropping)
//   selected, noise_logits, next: what training needs besides (see RouterOutput)
//
// Everything stays f32 from the logits through top-k and renormalisation (Switch Transformer's
// selective precision, Fedus et al. 2022 §2.4; HF Mixtral computes routing in f32). Noise is
// applied only when opts.training is set and is a pure function of (seed, opts.step, token,
// index), so results do not depend on the thread count.
//
// Backward (training). The selection, the capacity keep-mask and the noise are constants; the
// weights are w_j = scale * s_j / Z over the kept slots, Z = sum of s over the renormalisation set
// (the selected slots, or the kept ones after a capacity drop) or 1 without renormalisation, and
// s = phi(z + noise). weights_backward() turns dL/dw of one token's slots into dL/dz (and, for
// NoisyTopK, dL/d(x W_noise)); probs_backward() does the same for dL/dprobs (the balance loss);
// load_backward() for the noisy-top-k load estimator; backward_input() finally applies the GEMMs:
// dW_r += x~^T dz, dx += (dz W_r^T) * jitter, and likewise for W_noise.
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include <moe/config.hpp>
#include <moe/core/arena.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/moe_types.hpp>
#include <moe/layers/policies.hpp>
#include <moe/ops/matmul.hpp>
#include <moe/ops/matmul_grad.hpp>
#include <moe/ops/softmax.hpp>
#include <moe/ops/topk.hpp>
#include <moe/ops/weights.hpp>

namespace moe {

/// Marks a slot that holds no expert (removed by RandomSecondExpert).
inline constexpr std::uint32_t kNoExpert = 0xffffffffu;

/// Output views of Router::route (all rows = T tokens). Caller-owned (see Router::alloc_output).
struct RouterOutput {
  MatrixView<float> logits;           ///< [T, E] clean logits z
  MatrixView<float> probs;            ///< [T, E]
  MatrixView<std::uint32_t> experts;  ///< [T, k] (kNoExpert: removed by RandomSecondExpert)
  MatrixView<float> weights;          ///< [T, k]
  MatrixView<float> scores;           ///< [T, k]
  /// [T, k] the experts as selected, before RandomSecondExpert removed any (the backward needs
  /// them: a removed expert's score stays in its token's renormalisation). Same storage as
  /// `experts` for the other noise policies.
  MatrixView<std::uint32_t> selected;
  MatrixView<float> noise_logits;  ///< [T, E] a = x . W_noise (NoisyTopK only; else empty)
  /// [T] expert of the (k+1)-th largest noisy logit (NoisyTopK in training with k < E; else
  /// nullptr): the load estimator's threshold for the selected experts.
  std::uint32_t* next = nullptr;
};

/// Gradients of a router's weights (WeightGrad: frozen when data is null).
struct RouterGrads {
  WeightGrad gate;   ///< [D, E], the gate's layout
  WeightGrad noise;  ///< [D, E], NoisyTopK's noise weight (ignored otherwise)
};

}  // namespace moe

MOE_SIMD_DETAIL_BEGIN

inline float sigmoid_f(float z) noexcept {
  return 1.0f / (1.0f + std::exp(-z));
}
inline float softplus_f(float z) noexcept {
  return z > 20.0f ? z : (z < -20.0f ? std::exp(z) : std::log1p(std::exp(z)));
}
inline double sigmoid_d(double z) noexcept {
  return 1.0 / (1.0 + std::exp(-z));
}
inline double softplus_d(double z) noexcept {
  return z > 30.0 ? z : std::log1p(std::exp(z));
}
/// Standard normal CDF and density.
inline double normal_cdf(double a) noexcept {
  return 0.5 * std::erfc(-a * 0.7071067811865476);
}
inline double normal_pdf(double a) noexcept {
  return 0.3989422804014327 * std::exp(-0.5 * a * a);
}

MOE_SIMD_DETAIL_END

MOE_SIMD_NAMESPACE_BEGIN

template <class W, RoutingPolicy RoutingP = Routing, NoisePolicy NoiseP = NoNoise>
class Router {
 public:
  using weight_type = W;
  using routing_policy = RoutingP;
  using noise_policy = NoiseP;
  using Grads = RouterGrads;
  static constexpr bool kJitter = std::derived_from<NoiseP, Jitter>;
  static constexpr bool kLogitNoise = std::derived_from<NoiseP, GaussianLogitNoise>;
  static constexpr bool kRandomSecond = std::derived_from<NoiseP, RandomSecondExpert>;
  static constexpr bool kNoisyTopK = std::derived_from<NoiseP, NoisyTopK>;

  /// `gate` is the [D, E] router weight (logical [in = D, out = E], any layout).
  /// `selection_bias` ([E] f32, a view kept by reference) is required iff routing.selection_bias;
  /// `noise_gate` ([D, E], same type as the gate) iff the noise policy is NoisyTopK.
  /// `routing` and `noise` default to the policy types' values (a preset's pinned ones).
  explicit Router(const W& gate, const RoutingP& routing = RoutingP{},
                  const NoiseP& noise = NoiseP{}, std::span<const float> selection_bias = {},
                  const W& noise_gate = W{})
      : gate_(gate),
        noise_gate_(noise_gate),
        routing_(routing),
        noise_(noise),
        bias_(selection_bias) {
    static_assert(is_weight_v<W>, "Router: W must be a weight view type (ops/weights.hpp)");
    validate_weight(gate_, "router", "gate");
    static_cast<const Routing&>(routing_).validate(gate_.out);
    if constexpr (requires(const NoiseP& n) { n.validate(); }) noise_.validate();
    if (routing_.selection_bias) {
      if (bias_.size() != gate_.out) {
        throw ShapeError("[router] tensor 'selection_bias' has shape " + shape_str({bias_.size()}) +
                         ", expected " + shape_str({gate_.out}) + " (one per expert)");
      }
    } else if (!bias_.empty()) {
      throw ConfigError("[router] a selection_bias was given but Routing::selection_bias is false");
    }
    if constexpr (kNoisyTopK) {
      check_weight_shape(noise_gate_, "router", "noise", gate_.in, gate_.out);
      check_config(
          routing_.score == ScoreFn::kSoftmax || routing_.score == ScoreFn::kSoftmaxOfSelected,
          "router", "NoisyTopK needs a softmax score function");
      check_config(!routing_.selection_bias && routing_.n_group == 1, "router",
                   "NoisyTopK does not combine with a selection bias or group-limited routing");
    } else if (noise_gate_.data != nullptr) {
      throw ConfigError("[router] a noise weight was given but the noise policy is not NoisyTopK");
    }
  }

  /// A complete Routing value (e.g. built from a checkpoint's config) replacing a pinned routing
  /// policy. A braced list `{.top_k = 4}` does not select this overload: it must name the type.
  template <std::same_as<Routing> R>
  requires(!std::same_as<RoutingP, Routing>)
      Router(const W& gate, const R& routing, const NoiseP& noise = NoiseP{},
             std::span<const float> selection_bias = {}, const W& noise_gate = W{})
      : Router(gate, RoutingP(routing), noise, selection_bias, noise_gate) {}

  [[nodiscard]] std::size_t dim() const noexcept { return gate_.in; }
  [[nodiscard]] std::size_t n_experts() const noexcept { return gate_.out; }
  [[nodiscard]] std::size_t top_k() const noexcept { return routing_.top_k; }
  [[nodiscard]] const RoutingP& routing() const noexcept { return routing_; }
  [[nodiscard]] const NoiseP& noise() const noexcept { return noise_; }
  [[nodiscard]] const W& gate() const noexcept { return gate_; }
  [[nodiscard]] const W& noise_gate() const noexcept { return noise_gate_; }
  [[nodiscard]] std::span<const float> selection_bias() const noexcept { return bias_; }
  /// True when the weights are renormalised over a set of slots (also kSoftmaxOfSelected).
  [[nodiscard]] bool renormalizes() const noexcept {
    return routing_.renormalize || routing_.score == ScoreFn::kSoftmaxOfSelected;
  }

  /// Arena bytes of alloc_output(max_tokens).
  [[nodiscard]] std::size_t output_bytes(std::size_t max_tokens) const noexcept {
    const std::size_t e = n_experts(), k = top_k();
    std::size_t b = 2 * Arena::bytes_for<float>(max_tokens * e) +
                    Arena::bytes_for<std::uint32_t>(max_tokens * k) +
                    2 * Arena::bytes_for<float>(max_tokens * k);
    if constexpr (kRandomSecond) b += Arena::bytes_for<std::uint32_t>(max_tokens * k);
    if constexpr (kNoisyTopK) {
      b += Arena::bytes_for<float>(max_tokens * e) + Arena::bytes_for<std::uint32_t>(max_tokens);
    }
    return b;
  }
  /// Arena bytes route() uses internally (released when it returns).
  [[nodiscard]] std::size_t scratch_bytes(std::size_t max_tokens) const noexcept {
    std::size_t b = Arena::bytes_for<float>(max_tokens * n_experts());  // selection values
    if constexpr (kJitter) b += Arena::bytes_for<float>(max_tokens * dim());
    return b;
  }
  /// Everything a standalone user of the router needs: alloc_output(T) + route().
  [[nodiscard]] std::size_t workspace_bytes(std::size_t max_tokens) const noexcept {
    return output_bytes(max_tokens) + scratch_bytes(max_tokens);
  }
  /// Arena bytes backward_input() uses.
  [[nodiscard]] std::size_t backward_scratch_bytes(std::size_t max_tokens) const noexcept {
    return kJitter ? 2 * Arena::bytes_for<float>(max_tokens * dim()) : 0;
  }

  /// Output views for `tokens` tokens carved from the arena.
  [[nodiscard]] RouterOutput alloc_output(Arena& arena, std::size_t tokens) const {
    const std::size_t e = n_experts(), k = top_k();
    RouterOutput o;
    o.logits = {arena.alloc<float>(tokens * e), tokens, e};
    o.probs = {arena.alloc<float>(tokens * e), tokens, e};
    o.experts = {arena.alloc<std::uint32_t>(tokens * k), tokens, k};
    o.weights = {arena.alloc<float>(tokens * k), tokens, k};
    o.scores = {arena.alloc<float>(tokens * k), tokens, k};
    o.selected = o.experts;
    if constexpr (kRandomSecond) o.selected = {arena.alloc<std::uint32_t>(tokens * k), tokens, k};
    if constexpr (kNoisyTopK) {
      o.noise_logits = {arena.alloc<float>(tokens * e), tokens, e};
      o.next = arena.alloc<std::uint32_t>(tokens);
    }
    return o;
  }

  /// Routes x [T, D] into `out` (views of T rows). Uses scratch_bytes(T) of the arena.
  void route(ThreadPool& pool, MatrixView<const float> x, const RouterOutput& out, Arena& arena,
             const ForwardOptions& opts = {}) const {
    MOE_ASSERT(x.cols == dim() && out.logits.rows == x.rows && out.experts.cols == top_k());
    const std::size_t t_count = x.rows, e = n_experts();
    if (t_count == 0) return;
    Arena::Scope scope(arena);
    float* sel = arena.alloc<float>(t_count * e);

    // 1. logits in f32 (router's own jittered copy of x in training).
    MatrixView<const float> xr = x;
    if constexpr (kJitter) {
      if (jittered(opts)) {
        float* xj = arena.alloc<float>(t_count * dim());
        jitter_input(x, MatrixView<float>(xj, t_count, dim()), opts);
        xr = MatrixView<const float>(xj, t_count, dim());
      }
    }
    matmul(pool, xr, gate_, out.logits);
    if constexpr (kNoisyTopK) matmul(pool, x, noise_gate_, out.noise_logits);

    // 2. per-token scores, selection and weights (independent tokens, fixed chunks).
    constexpr std::size_t kChunk = 32;
    const std::size_t n_chunks = (t_count + kChunk - 1) / kChunk;
    pool.parallel_for(n_chunks, [&](std::size_t c, std::size_t) {
      const std::size_t t1 = std::min(t_count, (c + 1) * kChunk);
      for (std::size_t t = c * kChunk; t < t1; ++t) route_token(t, out, sel + t * e, opts);
    });
  }

  // ---- backward ---------------------------------------------------------------------------------

  /// Throws unless `g` fits this router (ConfigError for a non-f32 trainable weight).
  void check_grads(const Grads& g) const {
    check_weight_grad(gate_, g.gate, "router", "gate");
    if constexpr (kNoisyTopK) check_weight_grad(noise_gate_, g.noise, "router", "noise");
  }

  /// Token t of a saved route: dz[E] += dL/dz and (NoisyTopK) da[E] += dL/da, given gw[j] =
  /// dL/dw_j for its k slots (0 for a slot whose pair was not computed) and in_norm[j] = 1 for
  /// the slots of the renormalisation set (ignored without renormalisation).
  void weights_backward(std::size_t t, const RouterOutput& r, const float* gw,
                        const std::uint8_t* in_norm, float* dz, float* da,
                        const ForwardOptions& opts) const {
    const std::size_t e = n_experts(), k = top_k();
    double v[MoEStats::kMaxExperts], eps[MoEStats::kMaxExperts];
    noisy_logits(t, r, opts, v, eps);
    const std::uint32_t* sel = r.selected.row(t);
    const ScoreFn fn = routing_.score;
    const bool softmax_family = fn == ScoreFn::kSoftmax || fn == ScoreFn::kSoftmaxOfSelected;
    // scores s of the selected experts (and the full softmax for the softmax family)
    double p[MoEStats::kMaxExperts], s[MoEStats::kMaxExperts];
    if (softmax_family) softmax_d(v, e, p);
    for (std::size_t j = 0; j < k; ++j) {
      const std::uint32_t m = sel[j];
      s[j] = softmax_family            ? p[m]
             : fn == ScoreFn::kSigmoid ? detail::sigmoid_d(v[m])
                                       : std::sqrt(detail::softplus_d(v[m]));
    }
    // dL/ds_j from w_j = scale * s_j / Z
    const double scale = routing_.route_scale;
    double ds[MoEStats::kMaxExperts];
    if (renormalizes()) {
      double z_sum = 0.0, g_sum = 0.0;
      for (std::size_t j = 0; j < k; ++j) {
        if (in_norm[j]) z_sum += s[j];
        g_sum += static_cast<double>(gw[j]) * s[j];
      }
      if (!(z_sum > 0.0)) return;
      for (std::size_t j = 0; j < k; ++j) {
        ds[j] = scale / z_sum * (gw[j] - (in_norm[j] ? g_sum / z_sum : 0.0));
      }
    } else {
      for (std::size_t j = 0; j < k; ++j) ds[j] = scale * gw[j];
    }
    // dL/dv through phi, then to z (and to sigma for NoisyTopK)
    double dv[MoEStats::kMaxExperts];
    std::fill_n(dv, e, 0.0);
    if (softmax_family) {
      double dot = 0.0;
      for (std::size_t j = 0; j < k; ++j) dot += ds[j] * p[sel[j]];
      for (std::size_t i = 0; i < e; ++i) dv[i] = -p[i] * dot;
      for (std::size_t j = 0; j < k; ++j) dv[sel[j]] += p[sel[j]] * ds[j];
    } else {
      for (std::size_t j = 0; j < k; ++j) dv[sel[j]] = ds[j] * score_derivative(v[sel[j]], s[j]);
    }
    add_logit_grad(t, r, eps, dv, dz, da);
  }

  /// dz[E] += J^T dq for the router's normalised distribution q = probs(z) of token t (no noise).
  void probs_backward(std::size_t t, const RouterOutput& r, const double* dq, float* dz) const {
    const std::size_t e = n_experts();
    const float* q = r.probs.row(t);
    double dot = 0.0;
    for (std::size_t i = 0; i < e; ++i) dot += dq[i] * q[i];
    const ScoreFn fn = routing_.score;
    if (fn == ScoreFn::kSoftmax || fn == ScoreFn::kSoftmaxOfSelected) {
      for (std::size_t i = 0; i < e; ++i) dz[i] += static_cast<float>(q[i] * (dq[i] - dot));
      return;
    }
    // q = s / sum(s): ds_i = (dq_i - dot) / sum(s), then through phi
    const float* z = r.logits.row(t);
    double s[MoEStats::kMaxExperts], sum = 0.0;
    for (std::size_t i = 0; i < e; ++i) {
      s[i] =
          fn == ScoreFn::kSigmoid ? detail::sigmoid_d(z[i]) : std::sqrt(detail::softplus_d(z[i]));
      sum += s[i];
    }
    if (!(sum > 0.0)) return;
    for (std::size_t i = 0; i < e; ++i) {
      dz[i] += static_cast<float>((dq[i] - dot) / sum * score_derivative(z[i], s[i]));
    }
  }

  /// NoisyTopK load estimator of token t: p[i] = P(expert i in the top k under a fresh draw of
  /// the noise) = Phi((z_i - threshold_i) / sigma_i). Requires r.next (training, k < E).
  void load_probabilities(std::size_t t, const RouterOutput& r, const ForwardOptions& opts,
                          double* p) const requires kNoisyTopK {
    LoadTerms lt;
    load_terms(t, r, opts, lt);
    for (std::size_t i = 0; i < n_experts(); ++i) p[i] = detail::normal_cdf(lt.arg[i]);
  }

  /// Backward of load_probabilities: dz[E], da[E] += from dp[i] = dL/dp_i (the thresholds are
  /// noisy logits, so their experts' logits and noise scales receive gradient too).
  void load_backward(std::size_t t, const RouterOutput& r, const double* dp, float* dz, float* da,
                     const ForwardOptions& opts) const requires kNoisyTopK {
    LoadTerms lt;
    load_terms(t, r, opts, lt);
    const std::size_t e = n_experts();
    double dzz[MoEStats::kMaxExperts], dsig[MoEStats::kMaxExperts];
    std::fill_n(dzz, e, 0.0);
    std::fill_n(dsig, e, 0.0);
    for (std::size_t i = 0; i < e; ++i) {
      const double g = dp[i] * detail::normal_pdf(lt.arg[i]) / lt.sigma[i];
      dzz[i] += g;                        // d arg / d z_i
      dsig[i] -= g * lt.arg[i];           // d arg / d sigma_i
      const std::uint32_t m = lt.thr[i];  // threshold = v_m = z_m + eps_m sigma_m
      dzz[m] -= g;
      dsig[m] -= g * lt.eps[m];
    }
    const float* a = r.noise_logits.row(t);
    for (std::size_t i = 0; i < e; ++i) {
      dz[i] += static_cast<float>(dzz[i]);
      da[i] += static_cast<float>(dsig[i] * detail::sigmoid_d(a[i]));
    }
  }

  /// The router's GEMM backward for T tokens: grads.gate += x~^T dz, dx += (dz W_r^T) * jitter;
  /// NoisyTopK: grads.noise += x^T da, dx += da W_noise^T. Uses backward_scratch_bytes(T).
  void backward_input(ThreadPool& pool, MatrixView<const float> x, MatrixView<const float> dz,
                      MatrixView<const float> da, MatrixView<float> dx, const Grads& grads,
                      Arena& scratch, const ForwardOptions& opts) const {
    const std::size_t t_count = x.rows, d = dim();
    if (t_count == 0) return;
    if (jittered(opts)) {
      if constexpr (kJitter) {
        Arena::Scope scope(scratch);
        const MatrixView<float> xj(scratch.alloc<float>(t_count * d), t_count, d);
        const MatrixView<float> dxr(scratch.alloc<float>(t_count * d), t_count, d);
        jitter_input(x, xj, opts);
        matmul_backward_weight(pool, xj, dz, grads.gate);
        for (std::size_t t = 0; t < t_count; ++t) std::fill_n(dxr.row(t), d, 0.0f);
        matmul_backward_input(pool, dz, gate_, dxr);
        const float lo = 1.0f - noise_.eps, span = 2.0f * noise_.eps;
        for (std::size_t t = 0; t < t_count; ++t) {
          const float* g = dxr.row(t);
          float* o = dx.row(t);
          for (std::size_t i = 0; i < d; ++i) {
            o[i] += g[i] * (lo + span * rng::uniform(noise_.seed, opts.step, t, i));
          }
        }
      }
    } else {
      matmul_backward_weight(pool, x, dz, grads.gate);
      matmul_backward_input(pool, dz, gate_, dx);
    }
    if constexpr (kNoisyTopK) {
      matmul_backward_weight(pool, x, da, grads.noise);
      matmul_backward_input(pool, da, noise_gate_, dx);
    }
  }

 private:
  /// The noisy-top-k load terms of one token.
  struct LoadTerms {
    double arg[MoEStats::kMaxExperts];         ///< (z_i - threshold_i) / sigma_i
    double sigma[MoEStats::kMaxExperts];       ///< softplus(a_i) + noise_epsilon
    double eps[MoEStats::kMaxExperts];         ///< the N(0, 1) draw of each expert
    std::uint32_t thr[MoEStats::kMaxExperts];  ///< the expert whose noisy logit is the threshold
  };

  void load_terms(std::size_t t, const RouterOutput& r, const ForwardOptions& opts,
                  LoadTerms& lt) const requires kNoisyTopK {
    const std::size_t e = n_experts(), k = top_k();
    double v[MoEStats::kMaxExperts];
    noisy_logits(t, r, opts, v, lt.eps);
    const float* z = r.logits.row(t);
    const float* a = r.noise_logits.row(t);
    const std::uint32_t in_thr = r.next[t], out_thr = r.selected(t, k - 1);
    bool in_top[MoEStats::kMaxExperts] = {};
    for (std::size_t j = 0; j < k; ++j) in_top[r.selected(t, j)] = true;
    for (std::size_t i = 0; i < e; ++i) {
      lt.sigma[i] = detail::softplus_d(a[i]) + noise_.noise_epsilon;
      lt.thr[i] = in_top[i] ? in_thr : out_thr;
      lt.arg[i] = (z[i] - v[lt.thr[i]]) / lt.sigma[i];
    }
  }

  [[nodiscard]] bool jittered(const ForwardOptions& opts) const noexcept {
    if constexpr (kJitter) {
      return opts.training && noise_.eps > 0.0f;
    } else {
      return false;
    }
  }

  /// xj = x * U[1 - eps, 1 + eps], elementwise, from the counter-based generator.
  void jitter_input(MatrixView<const float> x, MatrixView<float> xj,
                    const ForwardOptions& opts) const requires kJitter {
    const float lo = 1.0f - noise_.eps, span = 2.0f * noise_.eps;
    for (std::size_t t = 0; t < x.rows; ++t) {
      const float* src = x.row(t);
      float* dst = xj.row(t);
      for (std::size_t i = 0; i < x.cols; ++i) {
        dst[i] = src[i] * (lo + span * rng::uniform(noise_.seed, opts.step, t, i));
      }
    }
  }

  /// d phi / dz at z given s = phi(z), for the sigmoid and sqrt-softplus scores.
  [[nodiscard]] double score_derivative(double z, double s) const noexcept {
    if (routing_.score == ScoreFn::kSigmoid) return s * (1.0 - s);
    return s > 0.0 ? detail::sigmoid_d(z) / (2.0 * s) : 0.0;  // sqrt(softplus(z))
  }

  static void softmax_d(const double* v, std::size_t n, double* p) noexcept {
    double m = v[0];
    for (std::size_t i = 1; i < n; ++i) m = std::max(m, v[i]);
    double sum = 0.0;
    for (std::size_t i = 0; i < n; ++i) sum += (p[i] = std::exp(v[i] - m));
    for (std::size_t i = 0; i < n; ++i) p[i] /= sum;
  }

  /// The noise of token t's logit i (0 without noise or outside training): v = z + noise.
  [[nodiscard]] float logit_noise(std::size_t t, std::size_t i, const float* a,
                                  const ForwardOptions& opts) const noexcept {
    if (!opts.training) return 0.0f;
    if constexpr (kLogitNoise) {
      const float sd =
          noise_.stddev > 0.0f ? noise_.stddev : 1.0f / static_cast<float>(n_experts());
      return sd * rng::normal(noise_.seed, opts.step, t, i);
    } else if constexpr (kNoisyTopK) {
      return rng::normal(noise_.seed, opts.step, t, i) *
             (detail::softplus_f(a[i]) + noise_.noise_epsilon);
    } else {
      return 0.0f;
    }
  }

  /// v = z + noise of a saved token in double, and the N(0, 1) draws eps (NoisyTopK; else 0).
  void noisy_logits(std::size_t t, const RouterOutput& r, const ForwardOptions& opts, double* v,
                    double* eps) const {
    const std::size_t e = n_experts();
    const float* z = r.logits.row(t);
    const bool noisy = opts.training && (kLogitNoise || kNoisyTopK);
    for (std::size_t i = 0; i < e; ++i) {
      v[i] = z[i];
      eps[i] = 0.0;
      if (!noisy) continue;
      if constexpr (kLogitNoise) {
        const double sd = noise_.stddev > 0.0f ? noise_.stddev : 1.0 / static_cast<double>(e);
        v[i] += sd * rng::normal(noise_.seed, opts.step, t, i);
      } else if constexpr (kNoisyTopK) {
        eps[i] = rng::normal(noise_.seed, opts.step, t, i);
        v[i] += eps[i] * (detail::softplus_d(r.noise_logits(t, i)) + noise_.noise_epsilon);
      }
    }
  }

  /// dz += dv (the noise is additive) and, for NoisyTopK, da += dv * eps * sigmoid(a).
  void add_logit_grad(std::size_t t, const RouterOutput& r, const double* eps, const double* dv,
                      float* dz, float* da) const {
    const std::size_t e = n_experts();
    for (std::size_t i = 0; i < e; ++i) dz[i] += static_cast<float>(dv[i]);
    if constexpr (kNoisyTopK) {
      const float* a = r.noise_logits.row(t);
      for (std::size_t i = 0; i < e; ++i) {
        da[i] += static_cast<float>(dv[i] * eps[i] * detail::sigmoid_d(a[i]));
      }
    } else {
      (void)t, (void)r, (void)eps, (void)da;
    }
  }

  // One token: fills out.probs/experts/weights/scores row t. `v` is an [E] scratch row.
  void route_token(std::size_t t, const RouterOutput& out, float* v,
                   const ForwardOptions& opts) const {
    const std::size_t e = n_experts(), k = top_k();
    const float* z = out.logits.row(t);
    float* p = out.probs.row(t);
    std::uint32_t* idx = out.experts.row(t);
    float* w = out.weights.row(t);
    float* sc = out.scores.row(t);
    const ScoreFn fn = routing_.score;

    // probs: the clean normalised distribution (losses, stats).
    if (fn == ScoreFn::kSoftmax || fn == ScoreFn::kSoftmaxOfSelected) {
      for (std::size_t i = 0; i < e; ++i) p[i] = z[i];
      softmax(p, e);
    } else {
      float sum = 0.0f;
      for (std::size_t i = 0; i < e; ++i) {
        p[i] =
            fn == ScoreFn::kSigmoid ? detail::sigmoid_f(z[i]) : std::sqrt(detail::softplus_f(z[i]));
        sum += p[i];
      }
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      for (std::size_t i = 0; i < e; ++i) p[i] *= inv;
    }
    // scores s into v, from the logits plus the training noise, if any.
    const bool noisy = opts.training && (kLogitNoise || kNoisyTopK);
    const float* a = kNoisyTopK ? out.noise_logits.row(t) : nullptr;
    for (std::size_t i = 0; i < e; ++i) v[i] = noisy ? z[i] + logit_noise(t, i, a, opts) : z[i];
    if constexpr (kNoisyTopK) {
      if (opts.training && k < e) {  // the load estimator's threshold: the (k+1)-th noisy logit
        std::uint32_t top[MoEStats::kMaxExperts];
        float val[MoEStats::kMaxExperts];
        moe::top_k(v, e, k + 1, top, val);
        out.next[t] = top[k];
      } else {
        out.next[t] = kNoExpert;
      }
    }
    switch (fn) {
      case ScoreFn::kSoftmax:
        if (noisy) {
          softmax(v, e);
        } else {
          for (std::size_t i = 0; i < e; ++i) v[i] = p[i];  // the clean softmax, computed above
        }
        break;
      case ScoreFn::kSoftmaxOfSelected:
        break;  // select on logits
      case ScoreFn::kSigmoid:
        for (std::size_t i = 0; i < e; ++i) v[i] = detail::sigmoid_f(v[i]);
        break;
      case ScoreFn::kSqrtSoftplus:
        for (std::size_t i = 0; i < e; ++i) v[i] = std::sqrt(detail::softplus_f(v[i]));
        break;
    }
    // Top-k of the selection values (v + bias, group-limited); v itself stays unbiased.
    select(v, idx, sc);
    // Weights from the unbiased scores of the selected experts.
    if (fn == ScoreFn::kSoftmaxOfSelected) {
      // softmax over the selected logits; raw score = full softmax probability of the (noisy)
      // logits, so that renormalising the raw scores over a subset equals softmax over it.
      float m = -std::numeric_limits<float>::infinity();
      for (std::size_t j = 0; j < k; ++j) m = std::max(m, v[idx[j]]);
      float zsum = 0.0f;
      for (std::size_t j = 0; j < k; ++j) {
        w[j] = std::exp(v[idx[j]] - m);
        zsum += w[j];
      }
      for (std::size_t j = 0; j < k; ++j) w[j] /= zsum;
      // raw scores: softmax over all E of the noisy logits
      const float lse = logsumexp(v, e);
      for (std::size_t j = 0; j < k; ++j) sc[j] = std::exp(v[idx[j]] - lse);
    } else {
      float sum = 0.0f;
      for (std::size_t j = 0; j < k; ++j) {
        sc[j] = v[idx[j]];
        sum += sc[j];
      }
      const float inv = (routing_.renormalize && sum > 0.0f) ? 1.0f / sum : 1.0f;
      for (std::size_t j = 0; j < k; ++j) w[j] = sc[j] * inv;
    }
    if (routing_.route_scale != 1.0f) {
      for (std::size_t j = 0; j < k; ++j) w[j] *= routing_.route_scale;
    }
    if constexpr (kRandomSecond) {
      std::copy_n(idx, k, out.selected.row(t));
      if (opts.training) {
        for (std::size_t j = 1; j < k; ++j) {
          const float u = rng::uniform(noise_.seed, opts.step, t, j);
          if (!(u < w[j] / noise_.threshold)) {
            idx[j] = kNoExpert;
            w[j] = 0.0f;
            sc[j] = 0.0f;
          }
        }
      }
    }
  }

  // Top-k of the selection values v + bias (group-limited if configured) into idx; `tmp` is a
  // [k] float scratch. v is left unchanged.
  void select(const float* v, std::uint32_t* idx, float* tmp) const {
    const std::size_t e = n_experts(), k = top_k();
    const bool biased = routing_.selection_bias;
    const std::size_t ng = routing_.n_group;
    if (!biased && ng == 1) {
      moe::top_k(v, e, k, idx, tmp);
      return;
    }
    // Biased and/or group-limited selection values live on the stack in chunks of the expert
    // count; E <= MoEStats::kMaxExperts keeps this bounded.
    float sv[MoEStats::kMaxExperts];
    for (std::size_t i = 0; i < e; ++i) sv[i] = biased ? v[i] + bias_[i] : v[i];
    if (ng > 1) {
      const std::size_t gs = e / ng;
      float gscore[MoEStats::kMaxExperts];
      for (std::size_t g = 0; g < ng; ++g) {
        const float* s = sv + g * gs;
        if (routing_.group_score == GroupScore::kMax) {
          float m = -std::numeric_limits<float>::infinity();
          for (std::size_t i = 0; i < gs; ++i) m = std::max(m, s[i]);
          gscore[g] = m;
        } else {
          float a = -std::numeric_limits<float>::infinity(), b = a;  // a >= b: two largest
          for (std::size_t i = 0; i < gs; ++i) {
            if (s[i] > a) {
              b = a;
              a = s[i];
            } else if (s[i] > b) {
              b = s[i];
            }
          }
          gscore[g] = a + b;
        }
      }
      std::uint32_t gidx[MoEStats::kMaxExperts];
      float gval[MoEStats::kMaxExperts];
      moe::top_k(gscore, ng, routing_.topk_group, gidx, gval);
      bool keep[MoEStats::kMaxExperts] = {};
      for (std::size_t j = 0; j < routing_.topk_group; ++j) keep[gidx[j]] = true;
      for (std::size_t g = 0; g < ng; ++g) {
        if (!keep[g]) {
          for (std::size_t i = 0; i < gs; ++i)
            sv[g * gs + i] = -std::numeric_limits<float>::infinity();
        }
      }
    }
    moe::top_k(sv, e, k, idx, tmp);
  }

  W gate_;
  W noise_gate_;
  RoutingP routing_;
  NoiseP noise_;
  std::span<const float> bias_;
};

MOE_SIMD_NAMESPACE_END
