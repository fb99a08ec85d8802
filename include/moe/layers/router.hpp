// moe/layers/router.hpp: the MoE router (gate): logits, scores, top-k selection, combine weights.
//
// Router<W, RoutingP, NoiseP> holds a gate weight view [D, E] of any weight type (F32Weight for
// Grok-1's `router` tensor, bf16 or [out, in] for HF files) and a Routing policy value. route()
// computes, for T tokens:
//
//   logits [T, E]  z = x~ . W_r in f32 (x~ = x, or the router's jittered copy in training)
//   probs  [T, E]  the router's normalised distribution: softmax(z) for the softmax score
//                  functions, s / sum(s) for sigmoid / sqrt-softplus (used by the losses and stats)
//   experts[T, k]  selected experts, best first; ties go to the lower expert (and group) index
//   weights[T, k]  combine weights (renormalised or not, times route_scale)
//   scores [T, k]  the un-renormalised score of each selected expert (p_i or s_i), used by the
//                  capacity policy (probability priority, renormalisation after dropping)
//
// Everything stays f32 from the logits through top-k and renormalisation (Switch Transformer's
// selective precision, Fedus et al. 2022 §2.4; HF Mixtral computes routing in f32). Noise is
// applied only when opts.training is set and is a pure function of (seed, opts.step, token,
// index), so results do not depend on the thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <type_traits>

#include <moe/config.hpp>
#include <moe/core/arena.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/moe_types.hpp>
#include <moe/layers/policies.hpp>
#include <moe/ops/matmul.hpp>
#include <moe/ops/softmax.hpp>
#include <moe/ops/topk.hpp>
#include <moe/ops/weights.hpp>

namespace moe {

/// Marks a slot that holds no expert (removed by RandomSecondExpert).
inline constexpr std::uint32_t kNoExpert = 0xffffffffu;

/// Output views of Router::route (all rows = T tokens). Caller-owned (see Router::alloc_output).
struct RouterOutput {
  MatrixView<float> logits;           ///< [T, E]
  MatrixView<float> probs;            ///< [T, E]
  MatrixView<std::uint32_t> experts;  ///< [T, k]
  MatrixView<float> weights;          ///< [T, k]
  MatrixView<float> scores;           ///< [T, k]
};

}  // namespace moe

MOE_SIMD_DETAIL_BEGIN

inline float sigmoid_f(float z) noexcept {
  return 1.0f / (1.0f + std::exp(-z));
}
inline float softplus_f(float z) noexcept {
  return z > 20.0f ? z : (z < -20.0f ? std::exp(z) : std::log1p(std::exp(z)));
}

MOE_SIMD_DETAIL_END

MOE_SIMD_NAMESPACE_BEGIN

template <class W, RoutingPolicy RoutingP = Routing, NoisePolicy NoiseP = NoNoise>
class Router {
 public:
  using weight_type = W;
  using routing_policy = RoutingP;
  using noise_policy = NoiseP;
  static constexpr bool kJitter = std::derived_from<NoiseP, Jitter>;
  static constexpr bool kLogitNoise = std::derived_from<NoiseP, GaussianLogitNoise>;
  static constexpr bool kRandomSecond = std::derived_from<NoiseP, RandomSecondExpert>;

  /// `gate` is the [D, E] router weight (logical [in = D, out = E], any layout).
  /// `selection_bias` ([E] f32, a view kept by reference) is required iff routing.selection_bias.
  /// `routing` and `noise` default to the policy types' values (a preset's pinned ones).
  explicit Router(const W& gate, const RoutingP& routing = RoutingP{},
                  const NoiseP& noise = NoiseP{}, std::span<const float> selection_bias = {})
      : gate_(gate), routing_(routing), noise_(noise), bias_(selection_bias) {
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
  }

  /// A complete Routing value (e.g. built from a checkpoint's config) replacing a pinned routing
  /// policy. A braced list `{.top_k = 4}` does not select this overload: it must name the type.
  template <std::same_as<Routing> R>
  requires(!std::same_as<RoutingP, Routing>)
      Router(const W& gate, const R& routing, const NoiseP& noise = NoiseP{},
             std::span<const float> selection_bias = {})
      : Router(gate, RoutingP(routing), noise, selection_bias) {}

  [[nodiscard]] std::size_t dim() const noexcept { return gate_.in; }
  [[nodiscard]] std::size_t n_experts() const noexcept { return gate_.out; }
  [[nodiscard]] std::size_t top_k() const noexcept { return routing_.top_k; }
  [[nodiscard]] const RoutingP& routing() const noexcept { return routing_; }
  [[nodiscard]] const NoiseP& noise() const noexcept { return noise_; }
  [[nodiscard]] const W& gate() const noexcept { return gate_; }
  [[nodiscard]] std::span<const float> selection_bias() const noexcept { return bias_; }

  /// Arena bytes of alloc_output(max_tokens).
  [[nodiscard]] std::size_t output_bytes(std::size_t max_tokens) const noexcept {
    const std::size_t e = n_experts(), k = top_k();
    return 2 * Arena::bytes_for<float>(max_tokens * e) +
           Arena::bytes_for<std::uint32_t>(max_tokens * k) +
           2 * Arena::bytes_for<float>(max_tokens * k);
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

  /// Output views for `tokens` tokens carved from the arena.
  [[nodiscard]] RouterOutput alloc_output(Arena& arena, std::size_t tokens) const {
    const std::size_t e = n_experts(), k = top_k();
    RouterOutput o;
    o.logits = {arena.alloc<float>(tokens * e), tokens, e};
    o.probs = {arena.alloc<float>(tokens * e), tokens, e};
    o.experts = {arena.alloc<std::uint32_t>(tokens * k), tokens, k};
    o.weights = {arena.alloc<float>(tokens * k), tokens, k};
    o.scores = {arena.alloc<float>(tokens * k), tokens, k};
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
      if (opts.training && noise_.eps > 0.0f) {
        const std::size_t d = dim();
        float* xj = arena.alloc<float>(t_count * d);
        const float lo = 1.0f - noise_.eps, span = 2.0f * noise_.eps;
        for (std::size_t t = 0; t < t_count; ++t) {
          const float* src = x.row(t);
          float* dst = xj + t * d;
          for (std::size_t i = 0; i < d; ++i) {
            dst[i] = src[i] * (lo + span * rng::uniform(noise_.seed, opts.step, t, i));
          }
        }
        xr = MatrixView<const float>(xj, t_count, d);
      }
    }
    matmul(pool, xr, gate_, out.logits);

    // 2. per-token scores, selection and weights (independent tokens, fixed chunks).
    constexpr std::size_t kChunk = 32;
    const std::size_t n_chunks = (t_count + kChunk - 1) / kChunk;
    pool.parallel_for(n_chunks, [&](std::size_t c, std::size_t) {
      const std::size_t t1 = std::min(t_count, (c + 1) * kChunk);
      for (std::size_t t = c * kChunk; t < t1; ++t) route_token(t, out, sel + t * e, opts);
    });
  }

 private:
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
    bool noisy = false;
    for (std::size_t i = 0; i < e; ++i) v[i] = z[i];
    if constexpr (kLogitNoise) {
      if (opts.training) {
        noisy = true;
        const float sd = noise_.stddev > 0.0f ? noise_.stddev : 1.0f / static_cast<float>(e);
        for (std::size_t i = 0; i < e; ++i) v[i] += sd * rng::normal(noise_.seed, opts.step, t, i);
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
  RoutingP routing_;
  NoiseP noise_;
  std::span<const float> bias_;
};

MOE_SIMD_NAMESPACE_END
