// moe/layers/policies.hpp: the semantic switches of an MoE layer, as explicit policy values.
//
// Every choice on which the reference implementations disagree is a named field here, never
// inferred from the architecture (docs/policies.md has the full table with sources):
//
//   Routing             score function, k, renormalise or not, route scale, selection bias,
//                       group-limited selection                       -> Router<W, Routing, Noise>
//   Dropless /          capacity: none, or C = ceil(k*T*cf/E) with train/eval factors, minimum,
//   CapacityFactor      clamp to T, drop priority and renormalisation timing
//   NoBalanceLoss /     Switch load-balancing loss with its normalisation (value 1 or k at
//   LoadBalanceLoss     perfect balance), optionally per sequence (DeepSeek "seq aux")
//   ImportanceLoadLoss  Shazeer et al. 2017's importance and load losses
//   NoZLoss /           ST-MoE router z-loss (stable log-sum-exp)
//   RouterZLoss
//   NoNoise / Jitter /  training-only router noise, seeded by (seed, step, token, index)
//   GaussianLogitNoise /
//   RandomSecondExpert /
//   NoisyTopK
//   ExpertDropout       dropout inside the experts (fine-tuning), a runtime rate
//
// A policy is a plain aggregate with the recommended defaults, so a custom layer reads
// `CapacityFactor{.train = 1.25, .eval = 2.0}`. The template parameter chooses the code path;
// the object carries the numbers. `Pinned<V>` turns a value into a type whose default value is
// V, which is how the presets (presets.hpp) pin every switch in a type alias:
//
//   using Capacity = Pinned<CapacityFactor{.train = 1.25, .eval = 2.0, .multiply_by_k = false}>;
//   Capacity c;          // c.train == 1.25, ..., and c is a CapacityFactor
//   c.min_capacity = 8;  // the pinned values, with this one changed
#pragma once

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include <moe/core/error.hpp>
#include <moe/layers/moe_types.hpp>

namespace moe {

// ---- pinning a policy value into a type ---------------------------------------------------------

/// A type whose default-constructed value is V (a policy aggregate). It derives from V's type,
/// so it is accepted wherever that policy is, and its fields can still be changed at runtime.
///
/// Converting a whole policy value into a Pinned type is explicit: `LoadBalanceLoss{.coef = 1e-2f}`
/// means "the library defaults with coef 1e-2", which would silently reset the preset's other
/// fields, so it does not convert implicitly. Change one field of a preset through the layer's
/// Policies instead (moe_layer.hpp): `L::Policies p; p.balance.coef = 1e-2f;`.
template <auto V>
struct Pinned : decltype(V) {
  using policy_type = decltype(V);
  constexpr Pinned() : policy_type(V) {}
  constexpr explicit Pinned(const policy_type& v) : policy_type(v) {}
};

// ---- routing ------------------------------------------------------------------------------------

/// Score function phi applied to the router logits z (always in f32).
enum class ScoreFn : std::uint8_t {
  kSoftmax,            ///< p = softmax(z) over all E (Switch, GShard, Mixtral/HF, Grok-1)
  kSoftmaxOfSelected,  ///< top-k on z, weights = softmax over the k selected logits
                       ///< (mistral-inference)
  kSigmoid,            ///< s = sigmoid(z) (DeepSeek-V3, GLM-4.x MoE)
  kSqrtSoftplus,       ///< s = sqrt(softplus(z)) (llama.cpp SQRT_SOFTPLUS)
};

/// How a group's score is formed in group-limited routing.
enum class GroupScore : std::uint8_t {
  kMax,      ///< max selection score in the group (DeepSeek-V2 / V3 without bias)
  kTop2Sum,  ///< sum of the two largest selection scores in the group (DeepSeek-V3 with bias)
};

inline constexpr const char* score_fn_name(ScoreFn s) noexcept {
  switch (s) {
    case ScoreFn::kSoftmax:
      return "softmax";
    case ScoreFn::kSoftmaxOfSelected:
      return "softmax_of_selected";
    case ScoreFn::kSigmoid:
      return "sigmoid";
    case ScoreFn::kSqrtSoftplus:
      return "sqrt_softplus";
  }
  return "?";
}

/// Token-choice top-k routing. Pipeline per token (f32 throughout):
///   s = phi(z); selection value v = s + bias (bias only if `selection_bias`);
///   optional group limiting on v; top-k of v (ties -> lower expert index);
///   weights w_i = s_i, renormalised over the selected set if `renormalize`, times route_scale.
/// kSoftmaxOfSelected selects on z and always normalises over the selected set (it equals
/// kSoftmax with renormalize = true up to rounding), so `renormalize` does not apply to it.
struct Routing {
  std::size_t top_k = 2;
  ScoreFn score = ScoreFn::kSoftmax;
  bool renormalize = true;      ///< Mixtral/HF/DeepSeek-V3: true; Grok-1, Switch, ST-MoE: false
  float route_scale = 1.0f;     ///< multiplies every weight (DeepSeek-V3: 2.5)
  bool selection_bias = false;  ///< the Router takes a [E] bias added for selection only
  std::size_t n_group = 1;      ///< group-limited routing: E experts in n_group groups (1 = off)
  std::size_t topk_group = 1;   ///< keep this many groups per token
  GroupScore group_score = GroupScore::kMax;

  /// Throws ConfigError("[router] ...") for an inconsistent value, given E experts.
  void validate(std::size_t n_experts) const {
    const auto need = [](bool ok, const std::string& m) { check_config(ok, "router", m); };
    const std::string e = std::to_string(n_experts);
    need(n_experts > 0, "the router has no experts");
    need(n_experts <= MoEStats::kMaxExperts,
         e + " experts exceed the supported maximum " + std::to_string(MoEStats::kMaxExperts));
    need(top_k >= 1 && top_k <= n_experts,
         "top_k = " + std::to_string(top_k) + " must be in [1, n_experts = " + e + "]");
    need(std::isfinite(route_scale) && route_scale > 0.0f, "route_scale must be finite and > 0");
    need(n_group >= 1 && n_experts % n_group == 0,
         "n_group = " + std::to_string(n_group) + " must divide n_experts = " + e);
    need(topk_group >= 1 && topk_group <= n_group,
         "topk_group = " + std::to_string(topk_group) +
             " must be in [1, n_group = " + std::to_string(n_group) + "]");
    need(top_k <= topk_group * (n_experts / n_group),
         "top_k = " + std::to_string(top_k) + " exceeds the " +
             std::to_string(topk_group * (n_experts / n_group)) +
             " experts of the kept groups (topk_group * n_experts / n_group)");
    need(group_score != GroupScore::kTop2Sum || n_group == 1 || n_experts / n_group >= 2,
         "group_score = top2_sum needs at least 2 experts per group");
  }
};

// ---- capacity -----------------------------------------------------------------------------------

/// Every selected (token, expert) pair is computed (MegaBlocks, Megatron default, Mixtral, vLLM).
struct Dropless {};

/// Which pairs an expert keeps when more than C are routed to it.
enum class DropPriority : std::uint8_t {
  kPosition,          ///< all first choices (in token order) before any second choice (GShard)
  kProbability,       ///< the C pairs with the highest router score (DeepSpeed drop_policy=probs)
  kBatchPrioritized,  ///< tokens sorted by top-1 score, descending, then slot-major (V-MoE BPR).
                      ///< Looks at the whole batch: never use it in a causal decoder.
};

/// When the weights of a token that lost experts to capacity are renormalised.
enum class RenormTiming : std::uint8_t {
  kBeforeDrop,  ///< weights as routed; a dropped pair just contributes 0 (mesh-tf)
  kAfterDrop,   ///< renormalise over the kept experts (DeepSpeed, fairseq default)
};

/// Capacity factor: C = ceil(k * T * cf / E) (or ceil(T * cf / E) without k), then
/// C = max(C, min_capacity), then C = min(C, T). T counts the real (unmasked) tokens of the call:
/// one forward() call is one routing group (split the batch to emulate a group size).
/// The ceiling forgives a relative excess of 1e-9 so that cf = 1.1 with T*cf/E = 11 gives 11.
struct CapacityFactor {
  double train = 1.25;           ///< cf in training (mesh-tf, ST-MoE, flaxformer)
  double eval = 2.0;             ///< cf in inference
  bool multiply_by_k = true;     ///< false reproduces flaxformer / ST-MoE
  std::size_t min_capacity = 4;  ///< flaxformer, DeepSpeed layer
  DropPriority priority = DropPriority::kPosition;
  RenormTiming renorm = RenormTiming::kAfterDrop;  ///< only matters with Routing::renormalize

  /// Per-expert capacity for `tokens` real tokens.
  [[nodiscard]] std::size_t capacity(std::size_t tokens, std::size_t top_k, std::size_t experts,
                                     bool training) const noexcept {
    if (tokens == 0) return 0;
    const double cf = training ? train : eval;
    const double v = (multiply_by_k ? static_cast<double>(top_k) : 1.0) *
                     static_cast<double>(tokens) * cf / static_cast<double>(experts);
    double c = std::ceil(v - 1e-9 * (v > 1.0 ? v : 1.0));
    if (c < 0.0) c = 0.0;
    std::size_t cap = static_cast<std::size_t>(c);
    if (cap < min_capacity) cap = min_capacity;
    return cap < tokens ? cap : tokens;
  }

  void validate() const {
    check_config(std::isfinite(train) && train >= 0.0, "capacity",
                 "train capacity factor must be finite and >= 0, got " + std::to_string(train));
    check_config(std::isfinite(eval) && eval >= 0.0, "capacity",
                 "eval capacity factor must be finite and >= 0, got " + std::to_string(eval));
  }
};

// ---- auxiliary losses ---------------------------------------------------------------------------

struct NoBalanceLoss {};

/// How f_i (the fraction of tokens routed to expert i) is counted, and the loss value at
/// perfect balance. L = E * sum_i f_i * P_i, P_i = mean router probability of expert i.
enum class BalanceCounting : std::uint8_t {
  kAllChoicesNormalized,  ///< f_i = count over all k slots / (k T): value 1 at balance
                          ///< (DeepSpeed topkgating, Megatron, DeepSeek f'_i/E)
  kAllChoices,            ///< f_i = count over all k slots / T: value k (flaxformer, HF Mixtral)
  kTop1,                  ///< f_i = top-1 choices / T: value 1 (Switch, GShard, mesh-tf, tutel)
};

/// Switch-style load-balancing loss, per layer, masked, over the router's choices before capacity.
/// P uses the full softmax (kSoftmax, kSoftmaxOfSelected) or the per-token normalised scores
/// s / sum(s) (kSigmoid, kSqrtSoftplus), without selection bias or noise.
struct LoadBalanceLoss {
  float coef = 1e-2f;  ///< Switch / ST-MoE paper alpha
  BalanceCounting counting = BalanceCounting::kAllChoicesNormalized;
  /// 0: the whole call is one group. n > 0: computed over each run of n consecutive tokens and
  /// averaged over the runs that contain real tokens (DeepSeek "seq_aux" with n = sequence length).
  std::size_t sequence_length = 0;

  void validate() const {
    check_config(std::isfinite(coef) && coef >= 0.0f, "balance_loss",
                 "coef must be finite and >= 0");
  }
};

/// The importance and load losses of Shazeer et al. 2017 ("Outrageously Large Neural Networks",
/// §4 and Appendix A), as in tensor2tensor's expert_utils (CVSquared, _ProbInTopK):
///   Importance_i = sum over real tokens of the router's weight for expert i (before capacity);
///   Load_i       = sum over real tokens of P(t, i), the probability that expert i stays in the
///                  top k under a fresh draw of the noise: Phi((z_i - threshold) / sigma_i), with
///                  the threshold the k-th largest noisy logit (or the (k+1)-th one for a selected
///                  expert). Smooth only with the NoisyTopK router in training; otherwise Load_i
///                  counts the tokens routed to i (no gradient).
///   L = w_importance * CV^2(Importance) + w_load * CV^2(Load), CV^2 = var / (mean^2 + 1e-10) with
///   the population variance over the E experts.
struct ImportanceLoadLoss {
  float w_importance = 0.1f;  ///< a row of the paper's Table 6 ablation (tensor2tensor: 1e-2)
  float w_load = 0.1f;
  void validate() const {
    check_config(std::isfinite(w_importance) && w_importance >= 0.0f && std::isfinite(w_load) &&
                     w_load >= 0.0f,
                 "balance_loss", "importance / load weights must be finite and >= 0");
  }
};

struct NoZLoss {};

/// ST-MoE router z-loss: mean over real tokens of logsumexp(z_t)^2 (computed stably).
struct RouterZLoss {
  float coef = 1e-3f;  ///< ST-MoE paper
  void validate() const {
    check_config(std::isfinite(coef) && coef >= 0.0f, "z_loss", "coef must be finite and >= 0");
  }
};

// ---- training-only router noise -----------------------------------------------------------------

/// No noise.
struct NoNoise {};

/// Multiplicative jitter on the ROUTER'S COPY of the input: x~ = x * U[1 - eps, 1 + eps] (mesh-tf,
/// DeepSpeed, HF Switch). The experts always see the clean input.
struct Jitter {
  float eps = 1e-2f;
  std::uint64_t seed = 0;  ///< e.g. the layer index
  void validate() const {
    check_config(eps >= 0.0f && eps < 1.0f, "router", "jitter eps must be in [0, 1)");
  }
};

/// Additive Gaussian noise on the logits used for selection and weights (V-MoE, tutel). The
/// losses see the clean logits. stddev = 0 means 1 / E (the V-MoE default).
struct GaussianLogitNoise {
  float stddev = 0.0f;
  std::uint64_t seed = 0;
  void validate() const {
    check_config(std::isfinite(stddev) && stddev >= 0.0f, "router",
                 "logit noise stddev must be finite and >= 0");
  }
};

/// GShard "random" second-expert policy: slot j >= 1 is kept with probability
/// min(1, w_j / threshold), else removed (weight 0, no expert); the first slot is kept. mesh-tf
/// uses threshold 0.2; fairseq / HF NLLB 0.5. Removed pairs are not counted as capacity drops.
struct RandomSecondExpert {
  float threshold = 0.2f;
  std::uint64_t seed = 0;
  void validate() const {
    check_config(std::isfinite(threshold) && threshold > 0.0f, "router",
                 "random-second threshold must be > 0");
  }
};

/// Noisy top-k gating of Shazeer et al. 2017 (§2.1): in training, the selection and the weights
/// use H = z + N(0, 1) * sigma with a learned, input-dependent scale sigma = softplus(x W_noise) +
/// noise_epsilon (tensor2tensor's noisy_top_k_gating); the router then needs the [D, E] noise
/// weight W_noise. Use it with ScoreFn::kSoftmaxOfSelected (softmax over the kept top-k of H, the
/// paper's gate) and ImportanceLoadLoss. Inference uses the clean logits.
struct NoisyTopK {
  float noise_epsilon = 1e-2f;  ///< tensor2tensor NoisyTopKGatingParams
  std::uint64_t seed = 0;
  void validate() const {
    check_config(std::isfinite(noise_epsilon) && noise_epsilon >= 0.0f, "router",
                 "noise_epsilon must be finite and >= 0");
  }
};

// ---- expert dropout (fine-tuning) ---------------------------------------------------------------

/// Dropout inside the experts, on the hidden activation act(x W_gate) * (x W_up) before the down
/// projection, in training only, at its own rate: Switch Transformer (Fedus et al. 2022, Table 4,
/// "expert dropout" 0.4 inside the experts with 0.1 elsewhere) and ST-MoE's fine-tuning advice.
/// The mask is a pure function of (seed, step, token, slot, hidden index). 0 = off.
struct ExpertDropout {
  float rate = 0.0f;
  std::uint64_t seed = 0;
  void validate() const {
    check_config(std::isfinite(rate) && rate >= 0.0f && rate < 1.0f, "expert_dropout",
                 "rate must be in [0, 1)");
  }
};

// ---- shared experts -----------------------------------------------------------------------------

/// No always-on shared expert. (A shared expert is a GatedFfn<W, Act>, see expert.hpp.) Its
/// nested Grads and Saved are empty, so an MoE layer's training records name them uniformly.
struct NoSharedExperts {
  struct Grads {};
  struct Saved {};
};

// ---- DeepSeek-V3 auxiliary-loss-free balancing (an optimizer-side rule) -------------------------

/// b_i <- b_i + rate * sign(mean_load - load_i), with load_i = stats.tokens_per_expert[i]. Call it
/// after each training step with the step's statistics (summed over layers' batches/ranks first if
/// they are split). DeepSeek-V3: rate 1e-3. It is not a gradient: the backward pass never touches
/// the bias (selection is a constant of the backward), the optimizer never sees it.
struct AuxFreeBias {
  float update_rate = 1e-3f;

  void update(std::span<float> bias, const MoEStats& stats) const noexcept {
    const std::size_t e = bias.size() < stats.n_experts ? bias.size() : stats.n_experts;
    if (e == 0) return;
    double mean = 0.0;
    for (std::size_t i = 0; i < e; ++i) mean += stats.tokens_per_expert[i];
    mean /= static_cast<double>(e);
    for (std::size_t i = 0; i < e; ++i) {
      const double load = stats.tokens_per_expert[i];
      if (load < mean) bias[i] += update_rate;
      if (load > mean) bias[i] -= update_rate;
    }
  }
};

// ---- policy concepts ----------------------------------------------------------------------------

template <class P>
concept CapacityPolicy = std::derived_from<P, Dropless> || std::derived_from<P, CapacityFactor>;
template <class P>
concept BalancePolicy = std::derived_from<P, NoBalanceLoss> ||
    std::derived_from<P, LoadBalanceLoss> || std::derived_from<P, ImportanceLoadLoss>;
template <class P>
concept ZLossPolicy = std::derived_from<P, NoZLoss> || std::derived_from<P, RouterZLoss>;
template <class P>
concept NoisePolicy = std::derived_from<P, NoNoise> || std::derived_from<P, Jitter> ||
    std::derived_from<P, GaussianLogitNoise> || std::derived_from<P, RandomSecondExpert> ||
    std::derived_from<P, NoisyTopK>;
template <class P>
concept RoutingPolicy = std::derived_from<P, Routing>;

// ---- counter-based RNG for the noise policies ---------------------------------------------------

/// Counter-based random numbers for the noise policies (plain integer math, no state).
namespace rng {

/// SplitMix64 finaliser: a bijective 64-bit mix.
constexpr std::uint64_t mix64(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// A pure function of (seed, step, a, b): the same noise for every thread count and call order.
constexpr std::uint64_t hash(std::uint64_t seed, std::uint64_t step, std::uint64_t a,
                             std::uint64_t b) noexcept {
  std::uint64_t h = mix64(seed + 0x9e3779b97f4a7c15ull);
  h = mix64(h ^ (step + 0x632be59bd9b4e019ull));
  h = mix64(h ^ (a + 0x85157af5ull * 0x100000001ull));
  return mix64(h ^ (b + 0xd6e8feb86659fd93ull));
}

/// Uniform in [0, 1) with 24 random bits.
constexpr float uniform(std::uint64_t seed, std::uint64_t step, std::uint64_t a,
                        std::uint64_t b) noexcept {
  return static_cast<float>(hash(seed, step, a, b) >> 40) * 0x1.0p-24f;
}

/// Standard normal (Box-Muller on two independent 32-bit halves).
inline float normal(std::uint64_t seed, std::uint64_t step, std::uint64_t a,
                    std::uint64_t b) noexcept {
  const std::uint64_t h = hash(seed, step, a, b);
  const double u1 = (static_cast<double>(h >> 32) + 1.0) * 0x1.0p-32;  // (0, 1]
  const double u2 = static_cast<double>(h & 0xffffffffull) * 0x1.0p-32;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

}  // namespace rng

}  // namespace moe
