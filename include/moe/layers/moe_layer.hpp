// moe/layers/moe_layer.hpp: a Mixture-of-Experts FFN layer composed from policies.
//
//   MoELayer<RouterT, ExpertT, CapacityP, BalanceP, ZLossP, SharedT>
//
//   RouterT   Router<W, Routing, Noise>              (router.hpp)
//   ExpertT   Expert<W, Activation>                  (expert.hpp; stacked [E, ...] weights)
//   CapacityP Dropless | CapacityFactor              (policies.hpp)
//   BalanceP  NoBalanceLoss | LoadBalanceLoss
//   ZLossP    NoZLoss | RouterZLoss
//   SharedT   NoSharedExperts | GatedFfn<W, Activation> (always-on shared expert, DeepSeek style)
//
// forward(pool, x [T, D], y [T, D], arena, opts) -> MoEResult:
//   1. route: logits, probabilities, top-k experts and weights (f32);
//   2. losses and statistics over the real (unmasked) tokens;
//   3. dispatch: the (token, slot) pairs are grouped by expert with a stable counting sort over a
//      priority order, each expert keeps at most C pairs (capacity policy), and the weights of
//      tokens that lost experts are renormalised if the policy says so;
//   4. compute: for every expert with kept pairs, its rows are gathered into one contiguous block
//      and the expert runs once over the block (one GEMM per projection, T_e rows); only the
//      selected experts are computed;
//   5. combine: y[t] = shared(x)[t] + sum over kept pairs of w * expert_e(x[t]) (scatter-add in
//      expert order). A dropped pair contributes 0, so a token that lost every expert gets 0 (the
//      caller's residual carries it). Padding tokens (token_mask 0) are not routed to any expert,
//      take no capacity, are excluded from losses and stats, and their output row is 0.
//
// Everything is deterministic for a given seed/step and independent of the thread count. No
// allocation in forward(): all scratch comes from the arena (workspace_bytes).
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>

#include <moe/config.hpp>
#include <moe/core/arena.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/expert.hpp>
#include <moe/layers/moe_types.hpp>
#include <moe/layers/policies.hpp>
#include <moe/layers/router.hpp>
#include <moe/ops/softmax.hpp>
#include <moe/ops/vector.hpp>

MOE_SIMD_NAMESPACE_BEGIN

template <class RouterT, class ExpertT, CapacityPolicy CapacityP = Dropless,
          BalancePolicy BalanceP = NoBalanceLoss, ZLossPolicy ZLossP = NoZLoss,
          class SharedT = NoSharedExperts>
class MoELayer {
 public:
  using Result = MoEResult;
  using router_type = RouterT;
  using expert_type = ExpertT;
  using capacity_policy = CapacityP;
  using balance_policy = BalanceP;
  using zloss_policy = ZLossP;
  using shared_type = SharedT;
  using router_weight = typename RouterT::weight_type;
  using expert_weight = typename ExpertT::weight_type;
  static constexpr bool kCapacity = std::derived_from<CapacityP, CapacityFactor>;
  static constexpr bool kBalance = std::derived_from<BalanceP, LoadBalanceLoss>;
  static constexpr bool kZLoss = std::derived_from<ZLossP, RouterZLoss>;
  static constexpr bool kShared = !std::is_same_v<SharedT, NoSharedExperts>;

  /// Every policy value of the layer, each defaulted to the layer type's value (for a preset, its
  /// pinned value). Change the fields you mean to change; the others keep the preset's values.
  struct Policies {
    typename RouterT::routing_policy routing{};
    typename RouterT::noise_policy noise{};
    CapacityP capacity{};
    BalanceP balance{};
    ZLossP z_loss{};
  };

  /// The layer's weight views, by name (nothing is copied).
  struct Weights {
    router_weight router{};             ///< router gate [D, E]
    WeightStack<expert_weight> gate{};  ///< experts' gate projections [E, D, F]
    WeightStack<expert_weight> up{};    ///< experts' up projections [E, D, F]
    WeightStack<expert_weight> down{};  ///< experts' down projections [E, F, D]
    /// [E] selection bias, required iff Routing::selection_bias (DeepSeek-V3)
    std::span<const float> selection_bias{};
    /// the always-on shared expert (GatedFfn) when SharedT is not NoSharedExperts
    [[no_unique_address]] SharedT shared{};
  };

  /// Builds the layer from named weight views and policy values.
  explicit MoELayer(const Weights& w, const Policies& p = Policies{})
      : MoELayer(RouterT(w.router, p.routing, noise_value(p.noise), w.selection_bias),
                 ExpertT(w.gate, w.up, w.down), p.capacity, p.balance, p.z_loss, w.shared) {}

  /// Builds the layer from weight views: router gate [D, E], experts gate/up [E, D, F], down
  /// [E, F, D], with the policy values `p` (default: the layer type's values).
  MoELayer(const router_weight& router_gate, const WeightStack<expert_weight>& gate,
           const WeightStack<expert_weight>& up, const WeightStack<expert_weight>& down,
           const Policies& p = Policies{}) requires(!kShared)
      : MoELayer(Weights{.router = router_gate, .gate = gate, .up = up, .down = down}, p) {}

  /// Composes a layer from a router, the experts and the policy values.
  explicit MoELayer(RouterT router, ExpertT experts, CapacityP capacity = CapacityP{},
                    BalanceP balance = BalanceP{}, ZLossP z_loss = ZLossP{},
                    SharedT shared = SharedT{})
      : router_(std::move(router)),
        experts_(std::move(experts)),
        capacity_(capacity),
        balance_(balance),
        z_loss_(z_loss),
        shared_(std::move(shared)) {
    if (router_.n_experts() != experts_.n_experts() || router_.dim() != experts_.dim()) {
      throw ShapeError("[moe_layer] router gate " +
                       shape_str({router_.dim(), router_.n_experts()}) +
                       " does not match experts " +
                       shape_str({experts_.n_experts(), experts_.dim(), experts_.hidden()}) +
                       " (expected gate [D, E] with experts [E, D, F])");
    }
    if constexpr (kShared) {
      if (shared_.dim() != dim()) {
        throw ShapeError("[moe_layer] shared expert has width " + std::to_string(shared_.dim()) +
                         ", expected D = " + std::to_string(dim()));
      }
    }
    if constexpr (kCapacity) static_cast<const CapacityFactor&>(capacity_).validate();
    if constexpr (kBalance) static_cast<const LoadBalanceLoss&>(balance_).validate();
    if constexpr (kZLoss) static_cast<const RouterZLoss&>(z_loss_).validate();
  }

  [[nodiscard]] std::size_t dim() const noexcept { return router_.dim(); }
  [[nodiscard]] std::size_t n_experts() const noexcept { return router_.n_experts(); }
  [[nodiscard]] std::size_t top_k() const noexcept { return router_.top_k(); }
  [[nodiscard]] std::size_t hidden() const noexcept { return experts_.hidden(); }
  [[nodiscard]] const RouterT& router() const noexcept { return router_; }
  [[nodiscard]] const ExpertT& experts() const noexcept { return experts_; }
  [[nodiscard]] const CapacityP& capacity_policy_value() const noexcept { return capacity_; }
  [[nodiscard]] const BalanceP& balance_policy_value() const noexcept { return balance_; }
  [[nodiscard]] const ZLossP& zloss_policy_value() const noexcept { return z_loss_; }
  [[nodiscard]] const SharedT& shared() const noexcept { return shared_; }
  /// The layer's policy values (e.g. to build a sibling layer with one value changed).
  [[nodiscard]] Policies policies() const {
    return Policies{router_.routing(), router_.noise(), capacity_, balance_, z_loss_};
  }

  /// Arena bytes forward() needs for up to max_tokens tokens.
  [[nodiscard]] std::size_t workspace_bytes(std::size_t max_tokens) const noexcept {
    std::size_t experts = block_bytes(max_tokens);
    if constexpr (kShared) experts = std::max(experts, shared_.workspace_bytes(max_tokens));
    const std::size_t phase = std::max(
        {router_.scratch_bytes(max_tokens), loss_bytes(), dispatch_bytes(max_tokens) + experts});
    return router_.output_bytes(max_tokens) + phase;
  }

  /// y = MoE(x). x, y: [T, D], must not alias. See the file comment for the semantics.
  MoEResult forward(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y, Arena& arena,
                    const ForwardOptions& opts = {}) const {
    check_io(x, y);
    MoEResult res;
    res.stats.n_experts = n_experts();
    if (x.rows == 0) return res;
    Arena::Scope scope(arena);
    const RouterOutput r = router_.alloc_output(arena, x.rows);
    router_.route(pool, x, r, arena, opts);                    // 1. route
    losses_and_stats(r, opts.token_mask, arena, res);          // 2. losses, statistics
    const Dispatch dsp = dispatch(r, opts, arena, res.stats);  // 3. dispatch
    start_output(pool, x, y, arena, opts);                     // 5. y = shared(x) or 0
    compute_and_combine(pool, x, r, dsp, y, arena);            // 4-5. experts, combine
    zero_padding_rows(y, opts.token_mask);
    return res;
  }

 private:
  /// The pairs p = t * k + j of real tokens, grouped by expert (step 3's result).
  struct Dispatch {
    std::uint32_t* order = nullptr;    ///< [listed] expert e's pairs at [offsets[e], offsets[e+1])
    std::uint32_t* offsets = nullptr;  ///< [E + 1]
    std::uint32_t* kept = nullptr;     ///< [E] pairs expert e computes: its first kept[e] pairs
    std::uint8_t* dropped = nullptr;   ///< [T * k] 1 = dropped by the capacity policy
  };

  void check_io(MatrixView<const float> x, MatrixView<const float> y) const {
    if (x.cols != dim() || y.cols != dim() || x.rows != y.rows) {
      throw ShapeError("[moe_layer] input " + shape_str({x.rows, x.cols}) + " / output " +
                       shape_str({y.rows, y.cols}) + " do not match [T, " + std::to_string(dim()) +
                       "]");
    }
    if (x.rows > 0 && overlaps(x, y)) {
      throw ShapeError(
          "[moe_layer] input and output views overlap (forward does not work in place)");
    }
  }

  static bool overlaps(MatrixView<const float> x, MatrixView<const float> y) noexcept {
    const auto a0 = reinterpret_cast<std::uintptr_t>(x.data);
    const auto a1 = reinterpret_cast<std::uintptr_t>(x.data + (x.rows - 1) * x.stride + x.cols);
    const auto b0 = reinterpret_cast<std::uintptr_t>(y.data);
    const auto b1 = reinterpret_cast<std::uintptr_t>(y.data + (y.rows - 1) * y.stride + y.cols);
    return a0 < b1 && b0 < a1;
  }

  /// The noise policy value to pass on (a fresh value for the stateless NoNoise: GCC 12 warns
  /// that an empty member copied out of a temporary Policies "may be used uninitialized").
  static typename RouterT::noise_policy noise_value(const typename RouterT::noise_policy& n) {
    if constexpr (std::is_empty_v<typename RouterT::noise_policy>) {
      return typename RouterT::noise_policy{};
    } else {
      return n;
    }
  }

  static bool is_real(const std::uint8_t* mask, std::size_t t) noexcept {
    return mask == nullptr || mask[t] != 0;
  }
  static std::size_t count_real(const std::uint8_t* mask, std::size_t t_count) noexcept {
    if (mask == nullptr) return t_count;
    std::size_t n = 0;
    for (std::size_t t = 0; t < t_count; ++t) n += mask[t] != 0 ? 1 : 0;
    return n;
  }

  [[nodiscard]] bool renormalizes() const noexcept {
    const auto& rt = router_.routing();
    return rt.renormalize || rt.score == ScoreFn::kSoftmaxOfSelected;
  }

  [[nodiscard]] std::size_t dispatch_bytes(std::size_t t) const noexcept {
    const std::size_t e = n_experts(), pairs = t * top_k();
    return 2 * Arena::bytes_for<std::uint32_t>(pairs) + Arena::bytes_for<std::uint32_t>(e + 1) +
           Arena::bytes_for<std::uint32_t>(e) + Arena::bytes_for<std::uint8_t>(pairs);
  }
  [[nodiscard]] std::size_t loss_bytes() const noexcept {
    return Arena::bytes_for<double>(2 * n_experts());
  }
  [[nodiscard]] std::size_t block_bytes(std::size_t t) const noexcept {
    const std::size_t block = std::min(t, kFfnBlockRows);
    return Arena::bytes_for<float>(block * dim()) +
           2 * Arena::bytes_for<float>(experts_.scratch_floats(block));
  }

  // ---- 2. losses and statistics ----------------------------------------------------------------

  /// Fills res.losses and the router statistics of res.stats over the real tokens.
  void losses_and_stats(const RouterOutput& r, const std::uint8_t* mask, Arena& arena,
                        MoEResult& res) const {
    const std::size_t t_count = r.logits.rows, e_count = n_experts();
    const std::size_t n_real = count_real(mask, t_count);
    res.stats.tokens = n_real;
    if (n_real == 0) return;
    double ent = 0.0, top1 = 0.0;
    for (std::size_t t = 0; t < t_count; ++t) {
      if (!is_real(mask, t)) continue;
      const float* p = r.probs.row(t);
      double h = 0.0;
      float m = 0.0f;
      for (std::size_t i = 0; i < e_count; ++i) {
        if (p[i] > 0.0f) h -= static_cast<double>(p[i]) * std::log(static_cast<double>(p[i]));
        m = std::max(m, p[i]);
      }
      ent += h;
      top1 += m;
    }
    const double inv_n = 1.0 / static_cast<double>(n_real);
    res.stats.router_entropy = static_cast<float>(ent * inv_n);
    res.stats.mean_top1_prob = static_cast<float>(top1 * inv_n);
    if constexpr (kZLoss) {
      res.losses.z_loss = z_loss_value(r, mask, n_real);
      res.losses.z_loss_weighted = z_loss_.coef * res.losses.z_loss;
    }
    if constexpr (kBalance) {
      Arena::Scope scope(arena);
      double* acc = arena.alloc<double>(2 * e_count);
      res.losses.load_balance = balance_loss_value(r, mask, acc);
      res.losses.load_balance_weighted = balance_.coef * res.losses.load_balance;
    }
  }

  /// Router z-loss: mean over the real tokens of logsumexp(z_t)^2.
  float z_loss_value(const RouterOutput& r, const std::uint8_t* mask, std::size_t n_real) const {
    double z2 = 0.0;
    for (std::size_t t = 0; t < r.logits.rows; ++t) {
      if (!is_real(mask, t)) continue;
      const double lse = logsumexp(r.logits.row(t), n_experts());
      z2 += lse * lse;
    }
    return static_cast<float>(z2 / static_cast<double>(n_real));
  }

  /// Tokens [t0, t1) of a balance-loss group: runs of sequence_length tokens (0 = the whole call).
  [[nodiscard]] std::size_t balance_run(std::size_t t_count) const noexcept {
    return balance_.sequence_length == 0 ? t_count : balance_.sequence_length;
  }

  /// Switch load-balancing loss E sum_i f_i P_i, averaged over the groups with real tokens.
  /// acc: [2 E] double scratch.
  float balance_loss_value(const RouterOutput& r, const std::uint8_t* mask, double* acc) const {
    const std::size_t t_count = r.logits.rows, e_count = n_experts();
    const std::size_t run = balance_run(t_count);
    double total = 0.0;
    std::size_t groups = 0;
    double* f = acc;
    double* psum = acc + e_count;
    for (std::size_t t0 = 0; t0 < t_count; t0 += run) {
      const std::size_t t1 = std::min(t_count, t0 + run);
      const std::size_t n = balance_fractions(r, mask, t0, t1, f);
      if (n == 0) continue;
      std::fill_n(psum, e_count, 0.0);
      for (std::size_t t = t0; t < t1; ++t) {
        if (!is_real(mask, t)) continue;
        const float* p = r.probs.row(t);
        for (std::size_t i = 0; i < e_count; ++i) psum[i] += p[i];
      }
      double s = 0.0;
      for (std::size_t i = 0; i < e_count; ++i) s += f[i] * (psum[i] / static_cast<double>(n));
      total += static_cast<double>(e_count) * s;
      ++groups;
    }
    return static_cast<float>(total / static_cast<double>(groups));
  }

  /// f_i of the balance loss over the real tokens of [t0, t1) (the router's choices, before
  /// capacity, normalised as the policy says) into f [E]; returns the number of real tokens.
  std::size_t balance_fractions(const RouterOutput& r, const std::uint8_t* mask, std::size_t t0,
                                std::size_t t1, double* f) const {
    const std::size_t e_count = n_experts(), k = top_k();
    const std::size_t slots = balance_.counting == BalanceCounting::kTop1 ? 1 : k;
    std::fill_n(f, e_count, 0.0);
    std::size_t n = 0;
    for (std::size_t t = t0; t < t1; ++t) {
      if (!is_real(mask, t)) continue;
      ++n;
      for (std::size_t j = 0; j < slots; ++j) {
        const std::uint32_t e = r.experts(t, j);
        if (e != kNoExpert) f[e] += 1.0;
      }
    }
    if (n == 0) return 0;
    const double div =
        static_cast<double>(n) * (balance_.counting == BalanceCounting::kAllChoicesNormalized
                                      ? static_cast<double>(k)
                                      : 1.0);
    for (std::size_t i = 0; i < e_count; ++i) f[i] /= div;
    return n;
  }

  // ---- 3. dispatch -----------------------------------------------------------------------------

  /// Groups the pairs of real tokens by expert in priority order, applies the capacity policy
  /// (renormalising r.weights after drops if it says so) and fills the dispatch statistics.
  Dispatch dispatch(const RouterOutput& r, const ForwardOptions& opts, Arena& arena,
                    MoEStats& stats) const {
    const std::size_t t_count = r.logits.rows, e_count = n_experts(), k = top_k();
    Dispatch d;
    d.order = arena.alloc<std::uint32_t>(t_count * k);
    d.offsets = arena.alloc<std::uint32_t>(e_count + 1);
    d.kept = arena.alloc<std::uint32_t>(e_count);
    d.dropped = arena.alloc<std::uint8_t>(t_count * k);
    std::uint32_t* prio = arena.alloc<std::uint32_t>(t_count * k);
    const std::size_t listed = list_pairs(r, opts.token_mask, prio, d.order);
    group_by_expert(r, prio, listed, d);
    std::fill_n(d.dropped, t_count * k, std::uint8_t{0});
    std::size_t cap = 0, n_dropped = 0;
    if constexpr (kCapacity) {
      cap = capacity_.capacity(stats.tokens, k, e_count, opts.training);
      n_dropped = apply_capacity(r, cap, d);
      if (n_dropped > 0 && capacity_.renorm == RenormTiming::kAfterDrop && renormalizes()) {
        renormalize_after_drop(r, opts.token_mask, d.dropped);
      }
    }
    stats.assignments = listed;
    stats.capacity = cap;
    stats.dropped = n_dropped;
    stats.dropped_fraction =
        listed > 0
            ? static_cast<float>(static_cast<double>(n_dropped) / static_cast<double>(listed))
            : 0.0f;
    for (std::size_t e = 0; e < e_count; ++e) stats.tokens_per_expert[e] = d.kept[e];
    return d;
  }

  /// The pairs of real tokens (p = t * k + j; removed slots skipped) in the capacity policy's
  /// priority order into prio; `tokens` is [T * k] scratch. Returns the number of pairs.
  std::size_t list_pairs(const RouterOutput& r, const std::uint8_t* mask, std::uint32_t* prio,
                         std::uint32_t* tokens) const {
    const std::size_t t_count = r.logits.rows, k = top_k();
    std::size_t n = 0;
    const auto list = [&](std::size_t t, std::size_t j) {
      if (r.experts(t, j) != kNoExpert) prio[n++] = static_cast<std::uint32_t>(t * k + j);
    };
    DropPriority priority = DropPriority::kPosition;
    if constexpr (kCapacity) priority = capacity_.priority;
    if (!kCapacity) {  // token order
      for (std::size_t t = 0; t < t_count; ++t) {
        if (!is_real(mask, t)) continue;
        for (std::size_t j = 0; j < k; ++j) list(t, j);
      }
    } else if (priority == DropPriority::kBatchPrioritized) {
      // tokens by top-1 score, descending (ties: earlier token first), then slot-major
      std::size_t n_tok = 0;
      for (std::size_t t = 0; t < t_count; ++t) {
        if (is_real(mask, t)) tokens[n_tok++] = static_cast<std::uint32_t>(t);
      }
      std::sort(tokens, tokens + n_tok, [&](std::uint32_t a, std::uint32_t b) {
        const float sa = r.scores(a, 0), sb = r.scores(b, 0);
        return sa > sb || (sa == sb && a < b);
      });
      for (std::size_t j = 0; j < k; ++j) {
        for (std::size_t i = 0; i < n_tok; ++i) list(tokens[i], j);
      }
    } else {  // position (and the tie order of probability): all first choices, then second, ...
      for (std::size_t j = 0; j < k; ++j) {
        for (std::size_t t = 0; t < t_count; ++t) {
          if (is_real(mask, t)) list(t, j);
        }
      }
    }
    return n;
  }

  /// Stable counting sort of the listed pairs by expert into d.order / d.offsets; d.kept = counts.
  void group_by_expert(const RouterOutput& r, const std::uint32_t* prio, std::size_t listed,
                       Dispatch& d) const {
    const std::size_t e_count = n_experts();
    std::fill_n(d.offsets, e_count + 1, 0u);
    for (std::size_t i = 0; i < listed; ++i) ++d.offsets[r.experts.data[prio[i]] + 1];
    for (std::size_t e = 0; e < e_count; ++e) d.offsets[e + 1] += d.offsets[e];
    std::fill_n(d.kept, e_count, 0u);  // fill cursor, ends as the per-expert count
    for (std::size_t i = 0; i < listed; ++i) {
      const std::uint32_t e = r.experts.data[prio[i]];
      d.order[d.offsets[e] + d.kept[e]++] = prio[i];
    }
  }

  /// Keeps the first `cap` pairs of every expert (by score first for kProbability), marks the
  /// others in d.dropped and sets d.kept. Returns the number of dropped pairs.
  std::size_t apply_capacity(const RouterOutput& r, std::size_t cap,
                             Dispatch& d) const requires kCapacity {
    const std::size_t t_count = r.logits.rows, k = top_k();
    std::size_t n_dropped = 0;
    for (std::size_t e = 0; e < n_experts(); ++e) {
      const std::uint32_t n_e = d.offsets[e + 1] - d.offsets[e];
      if (n_e <= cap) continue;
      std::uint32_t* seg = d.order + d.offsets[e];
      if (capacity_.priority == DropPriority::kProbability) {
        // highest score first; ties in position order (slot-major rank)
        std::sort(seg, seg + n_e, [&](std::uint32_t a, std::uint32_t b) {
          const float sa = r.scores.data[a], sb = r.scores.data[b];
          if (sa != sb) return sa > sb;
          return (a % k) * t_count + a / k < (b % k) * t_count + b / k;
        });
      }
      for (std::uint32_t i = static_cast<std::uint32_t>(cap); i < n_e; ++i) d.dropped[seg[i]] = 1;
      d.kept[e] = static_cast<std::uint32_t>(cap);
      n_dropped += n_e - cap;
    }
    return n_dropped;
  }

  /// Renormalises the weights of every real token that lost some (not all) of its experts over
  /// the kept ones.
  void renormalize_after_drop(const RouterOutput& r, const std::uint8_t* mask,
                              const std::uint8_t* dropped) const {
    const std::size_t k = top_k();
    const float scale = router_.routing().route_scale;
    for (std::size_t t = 0; t < r.logits.rows; ++t) {
      if (!is_real(mask, t)) continue;
      bool any_drop = false;
      float sum = 0.0f;
      for (std::size_t j = 0; j < k; ++j) {
        const std::size_t p = t * k + j;
        if (r.experts.data[p] == kNoExpert) continue;
        if (dropped[p]) {
          any_drop = true;
        } else {
          sum += r.scores.data[p];
        }
      }
      if (!any_drop || !(sum > 0.0f)) continue;
      for (std::size_t j = 0; j < k; ++j) {
        const std::size_t p = t * k + j;
        r.weights.data[p] = dropped[p] ? 0.0f : scale * (r.scores.data[p] / sum);
      }
    }
  }

  // ---- 4. compute and 5. combine ---------------------------------------------------------------

  /// y = shared(x) (or 0): the base the experts' weighted outputs are added to.
  void start_output(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y, Arena& arena,
                    const ForwardOptions& opts) const {
    if constexpr (kShared) {
      shared_.forward(pool, x, y, arena, opts);
    } else {
      for (std::size_t t = 0; t < y.rows; ++t) std::fill_n(y.row(t), y.cols, 0.0f);
    }
  }

  /// For every expert, in blocks of kept pairs: gather the rows, run the expert, combine.
  void compute_and_combine(ThreadPool& pool, MatrixView<const float> x, const RouterOutput& r,
                           const Dispatch& dsp, MatrixView<float> y, Arena& arena) const {
    const std::size_t d = dim(), block = std::min(x.rows, kFfnBlockRows);
    Arena::Scope scope(arena);
    float* xg = arena.alloc<float>(block * d);
    float* g = arena.alloc<float>(experts_.scratch_floats(block));
    float* u = arena.alloc<float>(experts_.scratch_floats(block));
    for (std::size_t e = 0; e < n_experts(); ++e) {
      const std::uint32_t* seg = dsp.order + dsp.offsets[e];
      for (std::size_t r0 = 0; r0 < dsp.kept[e]; r0 += block) {
        const std::size_t n = std::min<std::size_t>(block, dsp.kept[e] - r0);
        const MatrixView<float> rows(xg, n, d);
        gather_rows(x, seg + r0, rows);
        // xg is read by the gate/up projections only, so it also receives the expert output.
        experts_.compute(pool, e, rows, rows, g, u);
        combine_rows(r.weights.data, seg + r0, rows, y);
      }
    }
  }

  /// rows[i] = x[token of pair seg[i]].
  void gather_rows(MatrixView<const float> x, const std::uint32_t* seg,
                   MatrixView<float> rows) const {
    const std::size_t k = top_k();
    for (std::size_t i = 0; i < rows.rows; ++i) {
      std::memcpy(rows.row(i), x.row(seg[i] / k), x.cols * sizeof(float));
    }
  }

  /// y[token of pair seg[i]] += w[pair] * out[i].
  void combine_rows(const float* w, const std::uint32_t* seg, MatrixView<const float> out,
                    MatrixView<float> y) const {
    const std::size_t k = top_k();
    for (std::size_t i = 0; i < out.rows; ++i)
      axpy(w[seg[i]], out.row(i), y.row(seg[i] / k), y.cols);
  }

  static void zero_padding_rows(MatrixView<float> y, const std::uint8_t* mask) noexcept {
    if (mask == nullptr) return;
    for (std::size_t t = 0; t < y.rows; ++t) {
      if (mask[t] == 0) std::fill_n(y.row(t), y.cols, 0.0f);
    }
  }

  RouterT router_;
  ExpertT experts_;
  CapacityP capacity_;
  BalanceP balance_;
  ZLossP z_loss_;
  [[no_unique_address]] SharedT shared_;
};

MOE_SIMD_NAMESPACE_END
