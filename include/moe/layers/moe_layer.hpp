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
  static constexpr bool kCapacity = std::derived_from<CapacityP, CapacityFactor>;
  static constexpr bool kBalance = std::derived_from<BalanceP, LoadBalanceLoss>;
  static constexpr bool kZLoss = std::derived_from<ZLossP, RouterZLoss>;
  static constexpr bool kShared = !std::is_same_v<SharedT, NoSharedExperts>;

  /// Composes a layer from a router, the stacked experts and the policy values.
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

  /// Builds the router and experts from weight views with the policies' default values (the
  /// preset's pinned values): router gate [D, E], experts gate/up [E, D, F], down [E, F, D].
  MoELayer(const typename RouterT::weight_type& router_gate,
           const WeightStack<typename ExpertT::weight_type>& gate,
           const WeightStack<typename ExpertT::weight_type>& up,
           const WeightStack<typename ExpertT::weight_type>& down) requires(!kShared)
      : MoELayer(RouterT(router_gate), ExpertT(gate, up, down)) {}

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

  /// Arena bytes forward() needs for up to max_tokens tokens.
  [[nodiscard]] std::size_t workspace_bytes(std::size_t max_tokens) const noexcept {
    std::size_t phase = router_.scratch_bytes(max_tokens);
    if constexpr (kShared) phase = std::max(phase, shared_.workspace_bytes(max_tokens));
    phase = std::max(phase, dispatch_bytes(max_tokens) + block_bytes(max_tokens));
    return router_.output_bytes(max_tokens) + phase;
  }

  /// y = MoE(x). x, y: [T, D], must not alias. See the file comment for the semantics.
  MoEResult forward(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y, Arena& arena,
                    const ForwardOptions& opts = {}) const {
    if (x.cols != dim() || y.cols != dim() || x.rows != y.rows) {
      throw ShapeError("[moe_layer] input " + shape_str({x.rows, x.cols}) + " / output " +
                       shape_str({y.rows, y.cols}) + " do not match [T, " + std::to_string(dim()) +
                       "]");
    }
    if (x.rows > 0 && overlaps(x, y)) {
      throw ShapeError(
          "[moe_layer] input and output views overlap (forward does not work in place)");
    }
    MoEResult res;
    const std::size_t t_count = x.rows, e_count = n_experts(), k = top_k(), d = dim();
    res.stats.n_experts = e_count;
    if (t_count == 0) return res;
    const std::uint8_t* mask = opts.token_mask;
    const auto real = [mask](std::size_t t) { return mask == nullptr || mask[t] != 0; };

    Arena::Scope scope(arena);
    const RouterOutput r = router_.alloc_output(arena, t_count);
    router_.route(pool, x, r, arena, opts);

    if constexpr (kShared) {
      shared_.forward(pool, x, y, arena, opts);
    } else {
      for (std::size_t t = 0; t < t_count; ++t) std::fill_n(y.row(t), d, 0.0f);
    }

    // ---- dispatch scratch ----
    const std::size_t n_pairs = t_count * k;
    std::uint32_t* prio = arena.alloc<std::uint32_t>(n_pairs);
    std::uint32_t* order = arena.alloc<std::uint32_t>(n_pairs);
    std::uint32_t* offsets = arena.alloc<std::uint32_t>(e_count + 1);
    std::uint32_t* kept = arena.alloc<std::uint32_t>(e_count);
    std::uint8_t* dropped = arena.alloc<std::uint8_t>(n_pairs);
    double* acc = arena.alloc<double>(2 * e_count);

    std::size_t n_real = 0;
    for (std::size_t t = 0; t < t_count; ++t) n_real += real(t) ? 1 : 0;
    res.stats.tokens = n_real;
    compute_losses_and_stats(r, mask, n_real, acc, res);

    // 1. Priority order of the pairs of real tokens (pair p = t * k + j).
    std::size_t n_listed = 0;
    const auto list_pair = [&](std::size_t t, std::size_t j) {
      if (r.experts(t, j) != kNoExpert) prio[n_listed++] = static_cast<std::uint32_t>(t * k + j);
    };
    DropPriority priority = DropPriority::kPosition;
    if constexpr (kCapacity) priority = capacity_.priority;
    if (!kCapacity) {
      for (std::size_t t = 0; t < t_count; ++t) {
        if (real(t)) {
          for (std::size_t j = 0; j < k; ++j) list_pair(t, j);
        }
      }
    } else if (priority == DropPriority::kBatchPrioritized) {
      // tokens by top-1 score, descending (ties: earlier token first), then slot-major. The token
      // list uses `order` as scratch (it is rebuilt below).
      std::size_t n_tok = 0;
      for (std::size_t t = 0; t < t_count; ++t) {
        if (real(t)) order[n_tok++] = static_cast<std::uint32_t>(t);
      }
      std::sort(order, order + n_tok, [&](std::uint32_t a, std::uint32_t b) {
        const float sa = r.scores(a, 0), sb = r.scores(b, 0);
        return sa > sb || (sa == sb && a < b);
      });
      for (std::size_t j = 0; j < k; ++j) {
        for (std::size_t i = 0; i < n_tok; ++i) list_pair(order[i], j);
      }
    } else {  // position (and the tie order of probability): all first choices, then second, ...
      for (std::size_t j = 0; j < k; ++j) {
        for (std::size_t t = 0; t < t_count; ++t) {
          if (real(t)) list_pair(t, j);
        }
      }
    }
    res.stats.assignments = n_listed;

    // 2. Stable counting sort by expert.
    std::fill_n(offsets, e_count + 1, 0u);
    for (std::size_t i = 0; i < n_listed; ++i) ++offsets[r.experts.data[prio[i]] + 1];
    for (std::size_t e = 0; e < e_count; ++e) offsets[e + 1] += offsets[e];
    std::fill_n(kept, e_count, 0u);  // used as fill cursor, then overwritten with kept counts
    for (std::size_t i = 0; i < n_listed; ++i) {
      const std::uint32_t e = r.experts.data[prio[i]];
      order[offsets[e] + kept[e]++] = prio[i];
    }

    // 3. Capacity.
    std::fill_n(dropped, n_pairs, std::uint8_t{0});
    std::size_t cap = 0, n_dropped = 0;
    if constexpr (kCapacity) {
      cap = capacity_.capacity(n_real, k, e_count, opts.training);
      for (std::size_t e = 0; e < e_count; ++e) {
        const std::uint32_t n_e = offsets[e + 1] - offsets[e];
        if (n_e <= cap) continue;
        std::uint32_t* seg = order + offsets[e];
        if (priority == DropPriority::kProbability) {
          // highest score first; ties in position order (slot-major rank).
          std::sort(seg, seg + n_e, [&](std::uint32_t a, std::uint32_t b) {
            const float sa = r.scores.data[a], sb = r.scores.data[b];
            if (sa != sb) return sa > sb;
            const std::size_t ra = (a % k) * t_count + a / k, rb = (b % k) * t_count + b / k;
            return ra < rb;
          });
        }
        for (std::uint32_t i = static_cast<std::uint32_t>(cap); i < n_e; ++i) dropped[seg[i]] = 1;
        kept[e] = static_cast<std::uint32_t>(cap);
        n_dropped += n_e - cap;
      }
      // Renormalise over the kept experts (tokens that lost some but not all).
      if (n_dropped > 0 && capacity_.renorm == RenormTiming::kAfterDrop && renormalizes()) {
        const float scale = router_.routing().route_scale;
        for (std::size_t t = 0; t < t_count; ++t) {
          if (!real(t)) continue;
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
    }
    res.stats.capacity = cap;
    res.stats.dropped = n_dropped;
    res.stats.dropped_fraction =
        n_listed > 0
            ? static_cast<float>(static_cast<double>(n_dropped) / static_cast<double>(n_listed))
            : 0.0f;
    for (std::size_t e = 0; e < e_count; ++e) res.stats.tokens_per_expert[e] = kept[e];

    // 4-5. Experts over contiguous gathered blocks, then weighted scatter-add.
    const std::size_t block = std::min(t_count, kFfnBlockRows);
    float* xg = arena.alloc<float>(block * d);
    float* g = arena.alloc<float>(experts_.scratch_floats(block));
    float* u = arena.alloc<float>(experts_.scratch_floats(block));
    for (std::size_t e = 0; e < e_count; ++e) {
      const std::uint32_t* seg = order + offsets[e];
      const std::size_t n_e = kept[e];
      for (std::size_t r0 = 0; r0 < n_e; r0 += block) {
        const std::size_t n = std::min(block, n_e - r0);
        for (std::size_t i = 0; i < n; ++i) {
          std::memcpy(xg + i * d, x.row(seg[r0 + i] / k), d * sizeof(float));
        }
        // xg is read by the gate/up projections only, so it also receives the expert output.
        experts_.compute(pool, e, MatrixView<const float>(xg, n, d), MatrixView<float>(xg, n, d), g,
                         u);
        for (std::size_t i = 0; i < n; ++i) {
          const std::uint32_t p = seg[r0 + i];
          axpy(r.weights.data[p], xg + i * d, y.row(p / k), d);
        }
      }
    }
    if (mask != nullptr) {
      for (std::size_t t = 0; t < t_count; ++t) {
        if (!real(t)) std::fill_n(y.row(t), d, 0.0f);
      }
    }
    return res;
  }

 private:
  static bool overlaps(MatrixView<const float> x, MatrixView<float> y) noexcept {
    const auto a0 = reinterpret_cast<std::uintptr_t>(x.data);
    const auto a1 = reinterpret_cast<std::uintptr_t>(x.data + (x.rows - 1) * x.stride + x.cols);
    const auto b0 = reinterpret_cast<std::uintptr_t>(y.data);
    const auto b1 = reinterpret_cast<std::uintptr_t>(y.data + (y.rows - 1) * y.stride + y.cols);
    return a0 < b1 && b0 < a1;
  }

  [[nodiscard]] bool renormalizes() const noexcept {
    const auto& rt = router_.routing();
    return rt.renormalize || rt.score == ScoreFn::kSoftmaxOfSelected;
  }

  [[nodiscard]] std::size_t dispatch_bytes(std::size_t t) const noexcept {
    const std::size_t e = n_experts(), pairs = t * top_k();
    return 2 * Arena::bytes_for<std::uint32_t>(pairs) + Arena::bytes_for<std::uint32_t>(e + 1) +
           Arena::bytes_for<std::uint32_t>(e) + Arena::bytes_for<std::uint8_t>(pairs) +
           Arena::bytes_for<double>(2 * e);
  }
  [[nodiscard]] std::size_t block_bytes(std::size_t t) const noexcept {
    const std::size_t block = std::min(t, kFfnBlockRows);
    return Arena::bytes_for<float>(block * dim()) +
           2 * Arena::bytes_for<float>(experts_.scratch_floats(block));
  }

  // Losses and routing statistics over the real tokens; acc is [2 E] double scratch.
  void compute_losses_and_stats(const RouterOutput& r, const std::uint8_t* mask, std::size_t n_real,
                                double* acc, MoEResult& res) const {
    const std::size_t t_count = r.logits.rows, e_count = n_experts(), k = top_k();
    const auto real = [mask](std::size_t t) { return mask == nullptr || mask[t] != 0; };
    if (n_real == 0) return;
    double ent = 0.0, top1 = 0.0, z2 = 0.0;
    for (std::size_t t = 0; t < t_count; ++t) {
      if (!real(t)) continue;
      const float* p = r.probs.row(t);
      double h = 0.0;
      float m = 0.0f;
      for (std::size_t i = 0; i < e_count; ++i) {
        if (p[i] > 0.0f) h -= static_cast<double>(p[i]) * std::log(static_cast<double>(p[i]));
        m = std::max(m, p[i]);
      }
      ent += h;
      top1 += m;
      if constexpr (kZLoss) {
        const double lse = logsumexp(r.logits.row(t), e_count);
        z2 += lse * lse;
      }
    }
    const double inv_n = 1.0 / static_cast<double>(n_real);
    res.stats.router_entropy = static_cast<float>(ent * inv_n);
    res.stats.mean_top1_prob = static_cast<float>(top1 * inv_n);
    if constexpr (kZLoss) {
      res.losses.z_loss = static_cast<float>(z2 * inv_n);
      res.losses.z_loss_weighted = z_loss_.coef * res.losses.z_loss;
    }
    if constexpr (kBalance) {
      const std::size_t run = balance_.sequence_length == 0 ? t_count : balance_.sequence_length;
      double total = 0.0;
      std::size_t groups = 0;
      double* count = acc;
      double* psum = acc + e_count;
      for (std::size_t t0 = 0; t0 < t_count; t0 += run) {
        const std::size_t t1 = std::min(t_count, t0 + run);
        std::fill_n(count, e_count, 0.0);
        std::fill_n(psum, e_count, 0.0);
        std::size_t n = 0;
        for (std::size_t t = t0; t < t1; ++t) {
          if (!real(t)) continue;
          ++n;
          const float* p = r.probs.row(t);
          for (std::size_t i = 0; i < e_count; ++i) psum[i] += p[i];
          const std::size_t slots = balance_.counting == BalanceCounting::kTop1 ? 1 : k;
          for (std::size_t j = 0; j < slots; ++j) {
            const std::uint32_t e = r.experts(t, j);
            if (e != kNoExpert) count[e] += 1.0;
          }
        }
        if (n == 0) continue;
        const double nd = static_cast<double>(n);
        const double f_div = balance_.counting == BalanceCounting::kAllChoicesNormalized
                                 ? nd * static_cast<double>(k)
                                 : nd;
        double s = 0.0;
        for (std::size_t i = 0; i < e_count; ++i) s += (count[i] / f_div) * (psum[i] / nd);
        total += static_cast<double>(e_count) * s;
        ++groups;
      }
      res.losses.load_balance = static_cast<float>(total / static_cast<double>(groups));
      res.losses.load_balance_weighted = balance_.coef * res.losses.load_balance;
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
