// moe/layers/moe_layer.hpp: a Mixture-of-Experts FFN layer composed from policies, with its
// backward pass.
//
//   MoELayer<RouterT, ExpertT, CapacityP, BalanceP, ZLossP, SharedT>
//
//   RouterT   Router<W, Routing, Noise>              (router.hpp)
//   ExpertT   Expert<W, Activation>                  (expert.hpp; stacked or separate experts)
//   CapacityP Dropless | CapacityFactor              (policies.hpp)
//   BalanceP  NoBalanceLoss | LoadBalanceLoss | ImportanceLoadLoss
//   ZLossP    NoZLoss | RouterZLoss
//   SharedT   NoSharedExperts | GatedFfn<W, Activation> (always-on shared expert, DeepSeek style)
//
// Construction, by name: the weight views in a Weights record, every policy value in a Policies
// record whose fields default to the layer type's values (a preset's pinned ones):
//
//   using L = moe::presets::Mixtral<moe::BF16Weight>;
//   L::Policies p;           // the preset's values...
//   p.balance.coef = 1e-2f;  // ...with this one changed (counting keeps the preset's value)
//   const L layer({.router = wr, .gate = w1, .up = w3, .down = w2}, p);
//
// forward(pool, x [T, D], y [T, D], arena, opts) -> MoEResult, in five steps (one function each):
//   1. route: logits, probabilities, top-k experts and weights (f32);
//   2. losses_and_stats: the auxiliary losses and statistics over the real (unmasked) tokens;
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
// Training (the contract of moe_types.hpp): forward_train runs the same five steps and keeps on
// the tape what backward needs (see Saved); backward mirrors them in reverse order:
//   5-4. experts_backward: per expert block, dL/dx through the expert, dL/dW of the expert, and
//        dL/dw = <dy_t, expert_e(x_t)> of every computed pair; shared_backward for the shared
//        expert. A dropped pair gets nothing: its token keeps only its residual gradient;
//   3-1. router_backward: dL/dw -> dL/dz through the renormalisation (over the selected slots,
//        or the kept ones after a capacity drop) and the score function, per token;
//   2.   losses_backward: the auxiliary losses' dL/dz (the balance loss through the mean
//        probabilities only; f is a constant), times BackwardOptions::loss_scale;
//   1.   the router GEMMs: dW_r += x~^T dz, dx += dz W_r^T (times the jitter).
// The top-k choice, the capacity keep-mask, the priority order, the noise and the selection bias
// are constants of the backward; DeepSeek's aux-free bias update (AuxFreeBias) is a separate,
// non-gradient step. bf16 / int8 weights are frozen (gradient to the input only).
//
// Everything is deterministic for a given seed/step and independent of the thread count. No
// allocation in forward(), forward_train() or backward(): all scratch comes from the arenas.
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
  static constexpr bool kImportanceLoad = std::derived_from<BalanceP, ImportanceLoadLoss>;
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
    ExpertDropout expert_dropout{};  ///< dropout inside the experts in training (0 = off)
  };

  /// The layer's weight views, by name (nothing is copied).
  struct Weights {
    router_weight router{};  ///< router gate [D, E]
    /// [D, E] noise weight W_noise, required iff the noise policy is NoisyTopK
    router_weight noise{};
    /// [E] selection bias, required iff Routing::selection_bias (DeepSeek-V3)
    std::span<const float> selection_bias{};
    WeightStack<expert_weight> gate{};  ///< experts' gate projections [E, D, F]
    WeightStack<expert_weight> up{};    ///< experts' up projections [E, D, F]
    WeightStack<expert_weight> down{};  ///< experts' down projections [E, F, D]
    /// the always-on shared expert (GatedFfn) when SharedT is not NoSharedExperts
    [[no_unique_address]] SharedT shared{};
  };

  /// Builds the layer from named weight views and policy values.
  explicit MoELayer(const Weights& w, const Policies& p = Policies{})
      : MoELayer(RouterT(w.router, p.routing, noise_value(p.noise), w.selection_bias, w.noise),
                 ExpertT(w.gate, w.up, w.down), p.capacity, p.balance, p.z_loss, w.shared) {
    p.expert_dropout.validate();
    dropout_ = p.expert_dropout;
  }

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
    if constexpr (kImportanceLoad) static_cast<const ImportanceLoadLoss&>(balance_).validate();
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
  [[nodiscard]] const ExpertDropout& expert_dropout() const noexcept { return dropout_; }
  /// The layer's policy values (e.g. to build a sibling layer with one value changed).
  [[nodiscard]] Policies policies() const {
    return Policies{router_.routing(), router_.noise(), capacity_, balance_, z_loss_, dropout_};
  }

  /// Arena bytes forward() needs for up to max_tokens tokens.
  [[nodiscard]] std::size_t workspace_bytes(std::size_t max_tokens) const noexcept {
    const std::size_t t = max_tokens, block = std::min(t, kFfnBlockRows);
    std::size_t experts = Arena::bytes_for<float>(block * dim()) +
                          2 * Arena::bytes_for<float>(experts_.scratch_floats(block));
    if constexpr (kShared) experts = std::max(experts, shared_.workspace_bytes(t));
    const std::size_t phase =
        std::max({router_.scratch_bytes(t), loss_bytes(t),
                  keep_bytes(t) + Arena::bytes_for<std::uint32_t>(t * top_k()) + experts});
    return router_.output_bytes(t) + phase;
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
    router_.route(pool, x, r, arena, opts);                           // 1. route
    losses_and_stats(r, opts, arena, res, nullptr);                   // 2. losses, statistics
    const Dispatch dsp = dispatch(r, opts, arena, arena, res.stats);  // 3. dispatch
    if constexpr (kShared) {                                          // 5. y = shared(x) or 0
      shared_.forward(pool, x, y, arena, opts);
    } else {
      zero_rows(y);
    }
    compute_and_combine(pool, x, r, dsp, y, arena, opts);  // 4-5
    zero_padding_rows(y, opts.token_mask);
    return res;
  }

  // ---- training (the contract of moe_types.hpp) -------------------------------------------------

  /// Gradient views mirroring the weights (WeightGrad / WeightStack<WeightGrad>: frozen when they
  /// have no data; bf16 / int8 weights must be frozen). All frozen (the default) = the MoE layer
  /// is frozen and backward only passes dL/dx on (ST-MoE's fine-tuning option).
  struct Grads {
    typename RouterT::Grads router{};   ///< gate [D, E] (and NoisyTopK's noise weight)
    typename ExpertT::Grads experts{};  ///< gate / up / down stacks, e.g. grad_like(p, stack)
    typename SharedT::Grads shared{};   ///< the shared expert's three gradients, if any
  };

  /// The pairs p = t * k + j of real tokens, grouped by expert (step 3's result).
  struct Dispatch {
    std::uint32_t* order = nullptr;    ///< [T * k] expert e's pairs at [offsets[e], offsets[e+1])
    std::uint32_t* offsets = nullptr;  ///< [E + 1]
    std::uint32_t* kept = nullptr;     ///< [E] pairs expert e computes: its first kept[e] pairs
    std::uint8_t* dropped = nullptr;   ///< [T * k] 1 = dropped by the capacity policy
    std::uint8_t* renormed = nullptr;  ///< [T] 1 = weights renormalised over the kept experts
  };

  /// What forward_train keeps for backward (views into the tape). Per token, with E experts,
  /// top-k, expert width F: the logits and probabilities (2 E floats), the router's k experts,
  /// weights and scores (3 k words; RandomSecondExpert: k more; NoisyTopK: E + 1 more), the
  /// dispatch (k words, k + 2 bytes) and, dominating, the gate and up projections of every
  /// computed pair (2 F floats per pair, at most k pairs); plus the shared expert's 2 F_shared
  /// floats. x is not copied: the caller keeps it alive and unchanged until backward.
  struct Saved {
    std::size_t tokens = 0;
    ForwardOptions opts;          ///< of forward_train; token_mask points at the tape's copy
    RouterOutput route;           ///< the router's outputs; weights are the final combine weights
    Dispatch dispatch;            ///< the grouping of the pairs and the capacity drops
    const float* gate = nullptr;  ///< [computed pairs, F] gate projections, in dispatch order
    const float* up = nullptr;    ///< [computed pairs, F] up projections, in dispatch order
    const double* importance_load = nullptr;  ///< [2 E] Importance, Load (ImportanceLoadLoss)
    typename SharedT::Saved shared{};
  };

  /// Tape bytes forward_train uses for up to max_tokens tokens (the worst case: no drops).
  [[nodiscard]] std::size_t tape_bytes(std::size_t max_tokens) const noexcept {
    const std::size_t t = max_tokens, pairs = t * top_k();
    std::size_t b = router_.output_bytes(t) + Arena::bytes_for<std::uint8_t>(t) + keep_bytes(t) +
                    2 * Arena::bytes_for<float>(pairs * hidden());
    if constexpr (kImportanceLoad) b += Arena::bytes_for<double>(2 * n_experts());
    if constexpr (kShared) b += shared_.tape_bytes(t);
    return b;
  }

  /// Scratch bytes forward_train and backward use for up to max_tokens tokens.
  [[nodiscard]] std::size_t training_workspace_bytes(std::size_t max_tokens) const noexcept {
    const std::size_t t = max_tokens, e = n_experts(), pairs = t * top_k();
    const std::size_t d = dim(), f = hidden();
    // forward_train: the router, the losses, then the pair list + the pair rows, their inputs
    // (then outputs) and hidden activations (or the shared expert)
    std::size_t experts = pair_rows_bytes(t) + Arena::bytes_for<std::uint32_t>(max_blocks(t)) +
                          Arena::bytes_for<float>(pairs * d) + Arena::bytes_for<float>(pairs * f);
    if constexpr (kShared) experts = std::max(experts, shared_.training_workspace_bytes(t));
    const std::size_t fwd = std::max({router_.scratch_bytes(t), loss_bytes(t),
                                      Arena::bytes_for<std::uint32_t>(pairs) + experts});
    // backward: dz, da, dL/dw, then the widest phase
    const std::size_t grads = 2 * Arena::bytes_for<float>(t * e) + Arena::bytes_for<float>(pairs);
    const std::size_t expert_phase = pair_rows_bytes(t) + Arena::bytes_for<std::uint32_t>(e) +
                                     3 * Arena::bytes_for<float>(pairs * d) +
                                     2 * Arena::bytes_for<float>(pairs * f) +
                                     2 * Arena::bytes_for<float>(pairs);
    std::size_t shared_phase = 0;
    if constexpr (kShared) {
      shared_phase = Arena::bytes_for<float>(t * d) + shared_.training_workspace_bytes(t);
    }
    const std::size_t router_phase =
        std::max(loss_grad_bytes(t), router_.backward_scratch_bytes(t));
    const std::size_t bwd = grads + std::max({expert_phase, shared_phase, router_phase});
    return std::max(fwd, bwd);
  }

  /// y = MoE(x) as forward(), keeping in `tape` what backward() needs (`saved` views it).
  MoEResult forward_train(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y,
                          Arena& scratch, Arena& tape, Saved& saved,
                          const ForwardOptions& opts = {}) const {
    check_io(x, y);
    saved = Saved{};
    saved.tokens = x.rows;
    saved.opts = opts;
    MoEResult res;
    res.stats.n_experts = n_experts();
    if (x.rows == 0) return res;
    if (opts.token_mask != nullptr) {  // the tape keeps its own copy of the mask
      std::uint8_t* m = tape.alloc<std::uint8_t>(x.rows);
      std::copy_n(opts.token_mask, x.rows, m);
      saved.opts.token_mask = m;
    }
    const ForwardOptions& o = saved.opts;
    Arena::Scope scope(scratch);
    saved.route = router_.alloc_output(tape, x.rows);
    const RouterOutput& r = saved.route;
    router_.route(pool, x, r, scratch, o);  // 1
    double* aux = nullptr;
    if constexpr (kImportanceLoad) aux = tape.alloc<double>(2 * n_experts());
    losses_and_stats(r, o, scratch, res, aux);  // 2
    saved.importance_load = aux;
    saved.dispatch = dispatch(r, o, tape, scratch, res.stats);  // 3
    std::size_t computed = 0;
    for (std::size_t e = 0; e < n_experts(); ++e) computed += saved.dispatch.kept[e];
    float* g = tape.alloc<float>(computed * hidden());
    float* u = tape.alloc<float>(computed * hidden());
    saved.gate = g;
    saved.up = u;
    if constexpr (kShared) {  // 5
      shared_.forward_train(pool, x, y, scratch, tape, saved.shared, o);
    } else {
      zero_rows(y);
    }
    compute_and_combine_train(pool, x, r, saved.dispatch, y, scratch, o, g, u);  // 4-5
    zero_padding_rows(y, o.token_mask);
    return res;
  }

  /// dx += dL/dx and grads += dL/dW, given the x of forward_train, its Saved record and dy =
  /// dL/dy; the auxiliary losses' gradients are added times opts.loss_scale.
  void backward(ThreadPool& pool, MatrixView<const float> x, const Saved& saved,
                MatrixView<const float> dy, MatrixView<float> dx, const Grads& grads,
                Arena& scratch, const BackwardOptions& opts = {}) const {
    check_backward_io(x, saved, dy, dx);
    router_.check_grads(grads.router);
    experts_.check_grads(grads.experts);
    if constexpr (kShared) shared_.check_grads(grads.shared);
    const std::size_t t_count = x.rows, e = n_experts(), k = top_k();
    if (t_count == 0) return;
    Arena::Scope scope(scratch);
    const MatrixView<float> dz(scratch.alloc<float>(t_count * e), t_count, e);
    const MatrixView<float> da(scratch.alloc<float>(t_count * e), t_count, e);
    float* gbar = scratch.alloc<float>(t_count * k);
    fill(dz.data, t_count * e, 0.0f);
    fill(da.data, t_count * e, 0.0f);
    fill(gbar, t_count * k, 0.0f);
    experts_backward(pool, x, saved, dy, dx, grads.experts, gbar, scratch);  // 5-4
    if constexpr (kShared) shared_backward(pool, x, saved, dy, dx, grads.shared, scratch);
    router_backward(pool, saved, gbar, dz, da, scratch, opts.loss_scale);            // 3-2
    router_.backward_input(pool, x, dz, da, dx, grads.router, scratch, saved.opts);  // 1
  }

 private:
  /// The noise policy value to pass on (a fresh value for the stateless NoNoise: GCC 12 warns
  /// that an empty member copied out of a temporary Policies "may be used uninitialized").
  static typename RouterT::noise_policy noise_value(const typename RouterT::noise_policy& n) {
    if constexpr (std::is_empty_v<typename RouterT::noise_policy>) {
      return typename RouterT::noise_policy{};
    } else {
      return n;
    }
  }

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

  void check_backward_io(MatrixView<const float> x, const Saved& saved, MatrixView<const float> dy,
                         MatrixView<const float> dx) const {
    check_io(x, dx);
    if (dy.cols != dim() || dy.rows != x.rows) {
      throw ShapeError("[moe_layer] backward() got dy " + shape_str({dy.rows, dy.cols}) +
                       ", expected " + shape_str({x.rows, dim()}));
    }
    if (saved.tokens != x.rows) {
      throw ShapeError("[moe_layer] backward() got " + std::to_string(x.rows) +
                       " tokens, forward_train() saved " + std::to_string(saved.tokens));
    }
  }

  static bool overlaps(MatrixView<const float> x, MatrixView<const float> y) noexcept {
    const auto a0 = reinterpret_cast<std::uintptr_t>(x.data);
    const auto a1 = reinterpret_cast<std::uintptr_t>(x.data + (x.rows - 1) * x.stride + x.cols);
    const auto b0 = reinterpret_cast<std::uintptr_t>(y.data);
    const auto b1 = reinterpret_cast<std::uintptr_t>(y.data + (y.rows - 1) * y.stride + y.cols);
    return a0 < b1 && b0 < a1;
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
  static void zero_rows(MatrixView<float> y) noexcept {
    for (std::size_t t = 0; t < y.rows; ++t) std::fill_n(y.row(t), y.cols, 0.0f);
  }
  static void zero_padding_rows(MatrixView<float> y, const std::uint8_t* mask) noexcept {
    if (mask == nullptr) return;
    for (std::size_t t = 0; t < y.rows; ++t) {
      if (mask[t] == 0) std::fill_n(y.row(t), y.cols, 0.0f);
    }
  }

  /// Bytes of the Dispatch arrays (order, offsets, kept, dropped, renormed).
  [[nodiscard]] std::size_t keep_bytes(std::size_t t) const noexcept {
    const std::size_t e = n_experts(), pairs = t * top_k();
    return Arena::bytes_for<std::uint32_t>(pairs) + Arena::bytes_for<std::uint32_t>(e + 1) +
           Arena::bytes_for<std::uint32_t>(e) + Arena::bytes_for<std::uint8_t>(pairs) +
           Arena::bytes_for<std::uint8_t>(t);
  }
  /// Scratch of losses_and_stats.
  [[nodiscard]] std::size_t loss_bytes(std::size_t /*t*/) const noexcept {
    return Arena::bytes_for<double>(2 * n_experts()) + Arena::bytes_for<double>(n_experts());
  }
  /// Scratch of losses_backward's tables (balance: one [E] row per group).
  [[nodiscard]] std::size_t loss_grad_bytes(std::size_t t) const noexcept {
    return Arena::bytes_for<double>(t * n_experts()) + Arena::bytes_for<std::size_t>(t) +
           2 * Arena::bytes_for<double>(n_experts());
  }

  // ---- 2. losses and statistics ----------------------------------------------------------------

  /// Fills res.losses and the router statistics of res.stats over the real tokens. aux: [2 E]
  /// for the Importance and Load vectors (ImportanceLoadLoss, forward_train), or nullptr.
  void losses_and_stats(const RouterOutput& r, const ForwardOptions& opts, Arena& arena,
                        MoEResult& res, double* aux) const {
    const std::uint8_t* mask = opts.token_mask;
    const std::size_t t_count = r.logits.rows, e_count = n_experts();
    const std::size_t n_real = count_real(mask, t_count);
    res.stats.tokens = n_real;
    if (n_real == 0) return;
    double ent = 0.0, top1 = 0.0, lse = 0.0;
    for (std::size_t t = 0; t < t_count; ++t) {
      if (!is_real(mask, t)) continue;
      lse += logsumexp(r.logits.row(t), e_count);
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
    res.stats.mean_logsumexp = static_cast<float>(lse * inv_n);
    if constexpr (kZLoss) {
      res.losses.z_loss = z_loss_value(r, mask, n_real);
      res.losses.z_loss_weighted = z_loss_.coef * res.losses.z_loss;
    }
    Arena::Scope scope(arena);
    if constexpr (kBalance) {
      double* acc = arena.alloc<double>(2 * e_count);
      res.losses.load_balance = balance_loss_value(r, mask, acc);
      res.losses.load_balance_weighted = balance_.coef * res.losses.load_balance;
    }
    if constexpr (kImportanceLoad) {
      double* v = aux != nullptr ? aux : arena.alloc<double>(2 * e_count);
      importance_and_load(r, opts, arena, v, v + e_count);
      res.losses.importance = static_cast<float>(cv_squared(v, e_count));
      res.losses.load = static_cast<float>(cv_squared(v + e_count, e_count));
      res.losses.importance_weighted = balance_.w_importance * res.losses.importance;
      res.losses.load_weighted = balance_.w_load * res.losses.load;
    }
  }

  /// Router z-loss: mean over the real tokens of logsumexp(z_t)^2.
  float z_loss_value(const RouterOutput& r, const std::uint8_t* mask,
                     std::size_t n_real) const requires kZLoss {
    double z2 = 0.0;
    for (std::size_t t = 0; t < r.logits.rows; ++t) {
      if (!is_real(mask, t)) continue;
      const double lse = logsumexp(r.logits.row(t), n_experts());
      z2 += lse * lse;
    }
    return static_cast<float>(z2 / static_cast<double>(n_real));
  }

  /// Tokens of a balance-loss group: runs of sequence_length tokens (0 = the whole call).
  [[nodiscard]] std::size_t balance_run(std::size_t t_count) const noexcept requires kBalance {
    return balance_.sequence_length == 0 ? t_count : balance_.sequence_length;
  }

  /// Switch load-balancing loss E sum_i f_i P_i, averaged over the groups with real tokens.
  /// acc: [2 E] double scratch.
  float balance_loss_value(const RouterOutput& r, const std::uint8_t* mask,
                           double* acc) const requires kBalance {
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
                                std::size_t t1, double* f) const requires kBalance {
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

  /// Shazeer et al.'s Importance (sum of the router's weights, before capacity) and Load (the
  /// smooth estimator with NoisyTopK in training, else the routed-token counts) over the real
  /// tokens, into imp [E] and load [E].
  void importance_and_load(const RouterOutput& r, const ForwardOptions& opts, Arena& arena,
                           double* imp, double* load) const requires kImportanceLoad {
    const std::size_t e_count = n_experts(), k = top_k();
    const std::uint8_t* mask = opts.token_mask;
    std::fill_n(imp, e_count, 0.0);
    std::fill_n(load, e_count, 0.0);
    Arena::Scope scope(arena);
    double* p = arena.alloc<double>(e_count);
    for (std::size_t t = 0; t < r.logits.rows; ++t) {
      if (!is_real(mask, t)) continue;
      for (std::size_t j = 0; j < k; ++j) {
        const std::uint32_t e = r.experts(t, j);
        if (e == kNoExpert) continue;
        imp[e] += r.weights(t, j);
        if (!smooth_load(r, t)) load[e] += 1.0;
      }
      if (smooth_load(r, t)) {
        if constexpr (RouterT::kNoisyTopK) {
          router_.load_probabilities(t, r, opts, p);
          for (std::size_t i = 0; i < e_count; ++i) load[i] += p[i];
        }
      }
    }
  }

  /// The load of token t is the smooth estimator (NoisyTopK in training with k < E).
  static bool smooth_load(const RouterOutput& r, std::size_t t) noexcept {
    return r.next != nullptr && r.next[t] != kNoExpert;
  }

  /// CV^2 = population variance / (mean^2 + 1e-10) (tensor2tensor's CVSquared).
  static double cv_squared(const double* v, std::size_t n) noexcept {
    double mean = 0.0;
    for (std::size_t i = 0; i < n; ++i) mean += v[i];
    mean /= static_cast<double>(n);
    double var = 0.0;
    for (std::size_t i = 0; i < n; ++i) var += (v[i] - mean) * (v[i] - mean);
    var /= static_cast<double>(n);
    return var / (mean * mean + 1e-10);
  }
  /// d CV^2 / d v_i into g [n].
  static void cv_squared_grad(const double* v, std::size_t n, double* g) noexcept {
    double mean = 0.0;
    for (std::size_t i = 0; i < n; ++i) mean += v[i];
    mean /= static_cast<double>(n);
    double var = 0.0;
    for (std::size_t i = 0; i < n; ++i) var += (v[i] - mean) * (v[i] - mean);
    var /= static_cast<double>(n);
    const double den = mean * mean + 1e-10, nd = static_cast<double>(n);
    for (std::size_t i = 0; i < n; ++i) {
      g[i] = 2.0 / nd * ((v[i] - mean) / den - var * mean / (den * den));
    }
  }

  // ---- 3. dispatch -----------------------------------------------------------------------------

  /// Groups the pairs of real tokens by expert in priority order, applies the capacity policy
  /// (renormalising r.weights after drops if it says so) and fills the dispatch statistics. The
  /// Dispatch arrays come from `keep`, the temporary pair list from `scratch`.
  Dispatch dispatch(const RouterOutput& r, const ForwardOptions& opts, Arena& keep, Arena& scratch,
                    MoEStats& stats) const {
    const std::size_t t_count = r.logits.rows, e_count = n_experts(), k = top_k();
    Dispatch d;
    d.order = keep.alloc<std::uint32_t>(t_count * k);
    d.offsets = keep.alloc<std::uint32_t>(e_count + 1);
    d.kept = keep.alloc<std::uint32_t>(e_count);
    d.dropped = keep.alloc<std::uint8_t>(t_count * k);
    d.renormed = keep.alloc<std::uint8_t>(t_count);
    std::uint32_t* prio = scratch.alloc<std::uint32_t>(t_count * k);
    const std::size_t listed = list_pairs(r, opts.token_mask, prio, d.order);
    group_by_expert(r, prio, listed, d);
    for (std::size_t e = 0; e < e_count; ++e) {
      stats.routed_per_expert[e] = d.offsets[e + 1] - d.offsets[e];
    }
    std::fill_n(d.dropped, t_count * k, std::uint8_t{0});
    std::fill_n(d.renormed, t_count, std::uint8_t{0});
    std::size_t cap = 0, n_dropped = 0;
    if constexpr (kCapacity) {
      cap = capacity_.capacity(stats.tokens, k, e_count, opts.training);
      n_dropped = apply_capacity(r, cap, d);
      if (n_dropped > 0 && capacity_.renorm == RenormTiming::kAfterDrop && router_.renormalizes()) {
        renormalize_after_drop(r, opts.token_mask, d);
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
  /// the kept ones, and marks it in d.renormed.
  void renormalize_after_drop(const RouterOutput& r, const std::uint8_t* mask,
                              const Dispatch& d) const {
    const std::size_t k = top_k();
    const float scale = router_.routing().route_scale;
    for (std::size_t t = 0; t < r.logits.rows; ++t) {
      if (!is_real(mask, t)) continue;
      bool any_drop = false;
      float sum = 0.0f;
      for (std::size_t j = 0; j < k; ++j) {
        const std::size_t p = t * k + j;
        if (r.experts.data[p] == kNoExpert) continue;
        if (d.dropped[p]) {
          any_drop = true;
        } else {
          sum += r.scores.data[p];
        }
      }
      if (!any_drop || !(sum > 0.0f)) continue;
      for (std::size_t j = 0; j < k; ++j) {
        const std::size_t p = t * k + j;
        r.weights.data[p] = d.dropped[p] ? 0.0f : scale * (r.scores.data[p] / sum);
      }
      d.renormed[t] = 1;
    }
  }

  // ---- 4. compute and 5. combine ---------------------------------------------------------------

  /// For every expert, in blocks of kept pairs: gather the rows, run the expert (its products
  /// parallel over the pool), combine into y.
  void compute_and_combine(ThreadPool& pool, MatrixView<const float> x, const RouterOutput& r,
                           const Dispatch& dsp, MatrixView<float> y, Arena& arena,
                           const ForwardOptions& opts) const {
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
        experts_.compute(pool, e, rows, rows, g, u, hidden_dropout(opts, seg + r0));
        combine_rows(r.weights.data, seg + r0, rows, y);
      }
    }
  }

  // ---- 4-5 in training: one task per expert block -----------------------------------------------
  //
  // A training batch gives every expert hundreds of rows, so forward_train and backward run the
  // experts side by side, one task per expert block (backward: per expert, whose blocks add to
  // the same weight gradients), each task's products on its own thread (nested pool calls run
  // inline). Every block is the same computation as in the sequential loop (same rows, same
  // products), and the combine / dx scatter add each token's rows in ascending expert order as
  // that loop does, so the results equal it bit for bit for any thread count; what changes is
  // that gathers, activations and scatters run in parallel too, and that there is one pool call
  // per layer instead of one per product. The price: the pairs' rows live side by side in the
  // scratch (PairRows, [pairs, D] and [pairs, F] buffers) instead of one block at a time.

  /// The computed pairs in dispatch order (the tape's row order: expert 0's kept pairs, then
  /// expert 1's, ...) and each token's rows in ascending expert order.
  struct PairRows {
    std::uint32_t* start = nullptr;     ///< [E + 1] expert e's rows are [start[e], start[e+1])
    std::uint32_t* pair = nullptr;      ///< [rows] the pair (t * k + j) computed at each row
    std::uint32_t* of_token = nullptr;  ///< [T * k] token t's rows at [t k, t k + count[t])
    std::uint8_t* count = nullptr;      ///< [T]
  };
  [[nodiscard]] std::size_t pair_rows_bytes(std::size_t t) const noexcept {
    return Arena::bytes_for<std::uint32_t>(n_experts() + 1) +
           2 * Arena::bytes_for<std::uint32_t>(t * top_k()) + Arena::bytes_for<std::uint8_t>(t);
  }
  /// Upper bound on the expert blocks of one call (each expert has at most t rows).
  [[nodiscard]] std::size_t max_blocks(std::size_t t) const noexcept {
    return n_experts() + t * top_k() / std::min(std::max<std::size_t>(t, 1), kFfnBlockRows);
  }

  PairRows pair_rows(const Dispatch& dsp, std::size_t t_count, Arena& arena) const {
    const std::size_t k = top_k();
    PairRows pr;
    pr.start = arena.alloc<std::uint32_t>(n_experts() + 1);
    pr.pair = arena.alloc<std::uint32_t>(t_count * k);
    pr.of_token = arena.alloc<std::uint32_t>(t_count * k);
    pr.count = arena.alloc<std::uint8_t>(t_count);
    std::fill_n(pr.count, t_count, std::uint8_t{0});
    std::uint32_t row = 0;
    for (std::size_t e = 0; e < n_experts(); ++e) {
      pr.start[e] = row;
      const std::uint32_t* seg = dsp.order + dsp.offsets[e];
      for (std::uint32_t i = 0; i < dsp.kept[e]; ++i, ++row) {
        const std::size_t t = seg[i] / k;
        pr.pair[row] = seg[i];
        pr.of_token[t * k + pr.count[t]++] = row;
      }
    }
    pr.start[n_experts()] = row;
    return pr;
  }

  /// forward_train's 4-5: every expert block computed in parallel into its pair rows (the gate
  /// and up projections to the tape, g_tape / u_tape), then combined into y.
  void compute_and_combine_train(ThreadPool& pool, MatrixView<const float> x, const RouterOutput& r,
                                 const Dispatch& dsp, MatrixView<float> y, Arena& arena,
                                 const ForwardOptions& opts, float* g_tape, float* u_tape) const {
    const std::size_t d = dim(), f = hidden(), block = std::min(x.rows, kFfnBlockRows);
    Arena::Scope scope(arena);
    const PairRows pr = pair_rows(dsp, x.rows, arena);
    const std::size_t n_rows = pr.start[n_experts()];
    // Row of the pairs: input, then (in place) the expert's output.
    const MatrixView<float> out(arena.alloc<float>(n_rows * d), n_rows, d);
    float* h = arena.alloc<float>(n_rows * f);
    std::uint32_t* first_row = arena.alloc<std::uint32_t>(max_blocks(x.rows));  // of each block
    std::size_t n_blocks = 0;
    for (std::size_t e = 0; e < n_experts(); ++e) {
      for (std::uint32_t r0 = pr.start[e]; r0 < pr.start[e + 1]; r0 += block) {
        first_row[n_blocks++] = r0;
      }
    }
    const std::uint32_t* const start = pr.start;
    pool.parallel_for(n_blocks, [&](std::size_t b, std::size_t) {
      const std::size_t row = first_row[b];
      const std::size_t e = static_cast<std::size_t>(
          std::upper_bound(start, start + n_experts() + 1, row) - start - 1);
      const std::size_t n = std::min<std::size_t>(block, start[e + 1] - row);
      const MatrixView<float> rows = out.rows_slice(row, n);
      const std::uint32_t* pairs = pr.pair + row;
      gather_rows(x, pairs, rows);
      experts_.compute_train(pool, e, rows, rows, g_tape + row * f, u_tape + row * f, h + row * f,
                             hidden_dropout(opts, pairs));
    });
    const std::size_t k = top_k();
    for_token_chunks(pool, x.rows, [&](std::size_t t) {
      for (std::size_t c = 0; c < pr.count[t]; ++c) {
        const std::uint32_t row = pr.of_token[t * k + c];
        axpy(r.weights.data[pr.pair[row]], out.row(row), y.row(t), y.cols);
      }
    });
  }

  /// fn(t) for every token, in parallel chunks.
  template <class Fn>
  static void for_token_chunks(ThreadPool& pool, std::size_t t_count, Fn&& fn) {
    constexpr std::size_t kChunk = 64;
    pool.parallel_for((t_count + kChunk - 1) / kChunk, [&](std::size_t c, std::size_t) {
      const std::size_t t1 = std::min(t_count, (c + 1) * kChunk);
      for (std::size_t t = c * kChunk; t < t1; ++t) fn(t);
    });
  }

  /// The expert dropout of a block whose rows are the pairs keys[0..n) (inactive outside training).
  [[nodiscard]] HiddenDropout hidden_dropout(const ForwardOptions& opts,
                                             const std::uint32_t* keys) const noexcept {
    if (!opts.training || !(dropout_.rate > 0.0f)) return {};
    return HiddenDropout{dropout_.rate, dropout_.seed, opts.step, keys};
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
    for (std::size_t i = 0; i < out.rows; ++i) {
      axpy(w[seg[i]], out.row(i), y.row(seg[i] / k), y.cols);
    }
  }

  // ---- backward of 5-4: the experts and the shared expert ---------------------------------------

  /// For every expert block of forward_train: dx += dL/dx through the expert, grads += dL/dW,
  /// gbar[pair] = dL/dw of the pair's combine weight. Padding and dropped pairs get nothing.
  void experts_backward(ThreadPool& pool, MatrixView<const float> x, const Saved& s,
                        MatrixView<const float> dy, MatrixView<float> dx,
                        const typename ExpertT::Grads& grads, float* gbar, Arena& arena) const {
    const std::size_t d = dim(), f = hidden(), k = top_k(), block = std::min(x.rows, kFfnBlockRows);
    Arena::Scope scope(arena);
    const Dispatch& dsp = s.dispatch;
    const PairRows pr = pair_rows(dsp, x.rows, arena);
    const std::size_t n_rows = pr.start[n_experts()];
    const MatrixView<float> xg(arena.alloc<float>(n_rows * d), n_rows, d);
    const MatrixView<float> dyg(arena.alloc<float>(n_rows * d), n_rows, d);
    const MatrixView<float> dxg(arena.alloc<float>(n_rows * d), n_rows, d);
    float* s0 = arena.alloc<float>(n_rows * f);
    float* s1 = arena.alloc<float>(n_rows * f);
    float* w = arena.alloc<float>(n_rows);
    float* gb = arena.alloc<float>(n_rows);
    // One task per expert (its blocks add to the same gradients), the largest first.
    std::uint32_t* experts = arena.alloc<std::uint32_t>(n_experts());
    std::size_t n_busy = 0;
    for (std::uint32_t e = 0; e < n_experts(); ++e) {
      if (dsp.kept[e] > 0) experts[n_busy++] = e;
    }
    std::stable_sort(experts, experts + n_busy, [&dsp](std::uint32_t a, std::uint32_t b) {
      return dsp.kept[a] > dsp.kept[b];
    });
    pool.parallel_for(n_busy, [&](std::size_t i, std::size_t) {
      const std::size_t e = experts[i];
      for (std::size_t row = pr.start[e]; row < pr.start[e + 1]; row += block) {
        const std::size_t n = std::min<std::size_t>(block, pr.start[e + 1] - row);
        const std::uint32_t* pairs = pr.pair + row;
        gather_rows(x, pairs, xg.rows_slice(row, n));
        gather_rows(dy, pairs, dyg.rows_slice(row, n));
        for (std::size_t j = 0; j < n; ++j) w[row + j] = s.route.weights.data[pairs[j]];
        fill(dxg.row(row), n * d, 0.0f);
        experts_.backward_rows(pool, e, xg.rows_slice(row, n), s.gate + row * f, s.up + row * f,
                               dyg.rows_slice(row, n), dxg.rows_slice(row, n), grads, s0 + row * f,
                               s1 + row * f, RowWeights{w + row, gb + row},
                               hidden_dropout(s.opts, pairs));
      }
    });
    for_token_chunks(pool, x.rows, [&](std::size_t t) {
      for (std::size_t c = 0; c < pr.count[t]; ++c) {
        const std::uint32_t row = pr.of_token[t * k + c];
        axpy(1.0f, dxg.row(row), dx.row(t), d);
      }
    });
    const std::uint32_t* pair_of_row = pr.pair;
    for (std::size_t row = 0; row < n_rows; ++row) gbar[pair_of_row[row]] = gb[row];
  }

  /// The shared expert's backward; padding rows' output was zeroed, so their dy is ignored.
  void shared_backward(ThreadPool& pool, MatrixView<const float> x, const Saved& s,
                       MatrixView<const float> dy, MatrixView<float> dx,
                       const typename SharedT::Grads& grads, Arena& arena) const requires kShared {
    Arena::Scope scope(arena);
    MatrixView<const float> dys = dy;
    if (s.opts.token_mask != nullptr) {
      const MatrixView<float> m(arena.alloc<float>(x.rows * dim()), x.rows, dim());
      for (std::size_t t = 0; t < x.rows; ++t) {
        if (s.opts.token_mask[t] != 0) {
          std::copy_n(dy.row(t), dim(), m.row(t));
        } else {
          std::fill_n(m.row(t), dim(), 0.0f);
        }
      }
      dys = m;
    }
    shared_.backward(pool, x, s.shared, dys, dx, grads, arena);
  }

  // ---- backward of 3-1: combine weights and auxiliary losses to the router logits ---------------

  /// dz (and da) of every real token: the combine-weight gradients through the renormalisation
  /// and the score function, plus the auxiliary losses times loss_scale.
  void router_backward(ThreadPool& pool, const Saved& s, const float* gbar, MatrixView<float> dz,
                       MatrixView<float> da, Arena& arena, float loss_scale) const {
    const RouterOutput& r = s.route;
    const std::uint8_t* mask = s.opts.token_mask;
    const std::size_t t_count = r.logits.rows, k = top_k();
    const std::size_t n_real = count_real(mask, t_count);
    if (n_real == 0) return;
    Arena::Scope scope(arena);
    const LossGrads lg = loss_grads(s, arena, loss_scale, n_real);
    constexpr std::size_t kChunk = 32;
    pool.parallel_for((t_count + kChunk - 1) / kChunk, [&](std::size_t c, std::size_t) {
      const std::size_t t1 = std::min(t_count, (c + 1) * kChunk);
      for (std::size_t t = c * kChunk; t < t1; ++t) {
        if (!is_real(mask, t)) continue;
        float gw[MoEStats::kMaxExperts];
        std::uint8_t in_norm[MoEStats::kMaxExperts];
        for (std::size_t j = 0; j < k; ++j) {
          const std::size_t p = t * k + j;
          const bool computed = r.experts.data[p] != kNoExpert && !s.dispatch.dropped[p];
          gw[j] = computed ? gbar[p] : 0.0f;
          in_norm[j] = s.dispatch.renormed[t] ? computed : 1;
        }
        router_.weights_backward(t, r, gw, in_norm, dz.row(t), da.row(t), s.opts);
        losses_backward(t, s, lg, dz.row(t), da.row(t));
      }
    });
  }

  /// Per-layer factors of the auxiliary losses' gradients, computed once per backward.
  struct LossGrads {
    const double* balance = nullptr;       ///< [groups, E]: dL/dprobs of a token of group g
    std::size_t run = 0;                   ///< tokens per balance group
    double z_factor = 0.0;                 ///< dL/dz = z_factor * lse(z) * softmax(z)
    const double* d_importance = nullptr;  ///< [E] loss_scale * w_imp * dCV^2/dImportance
    const double* d_load = nullptr;        ///< [E] loss_scale * w_load * dCV^2/dLoad
  };

  LossGrads loss_grads(const Saved& s, Arena& arena, float loss_scale, std::size_t n_real) const {
    const RouterOutput& r = s.route;
    const std::uint8_t* mask = s.opts.token_mask;
    const std::size_t t_count = r.logits.rows, e_count = n_experts();
    LossGrads lg;
    if constexpr (kBalance) {
      lg.run = balance_run(t_count);
      const std::size_t n_groups = (t_count + lg.run - 1) / lg.run;
      double* table = arena.alloc<double>(n_groups * e_count);
      std::size_t groups_with_tokens = 0;
      std::size_t* n_in = arena.alloc<std::size_t>(n_groups);
      for (std::size_t g = 0; g < n_groups; ++g) {
        n_in[g] = balance_fractions(r, mask, g * lg.run, std::min(t_count, (g + 1) * lg.run),
                                    table + g * e_count);
        groups_with_tokens += n_in[g] > 0 ? 1 : 0;
      }
      // L = coef / G sum_g E sum_i f_i (1/n_g) sum_t q_ti  =>  dL/dq_ti = coef E f_i / (n_g G)
      for (std::size_t g = 0; g < n_groups; ++g) {
        if (n_in[g] == 0) continue;
        const double c = static_cast<double>(loss_scale) * balance_.coef *
                         static_cast<double>(e_count) /
                         (static_cast<double>(n_in[g]) * static_cast<double>(groups_with_tokens));
        for (std::size_t i = 0; i < e_count; ++i) table[g * e_count + i] *= c;
      }
      lg.balance = table;
    }
    if constexpr (kZLoss) {
      lg.z_factor =
          2.0 * static_cast<double>(loss_scale) * z_loss_.coef / static_cast<double>(n_real);
    }
    if constexpr (kImportanceLoad) {
      double* di = arena.alloc<double>(e_count);
      double* dl = arena.alloc<double>(e_count);
      cv_squared_grad(s.importance_load, e_count, di);
      cv_squared_grad(s.importance_load + e_count, e_count, dl);
      for (std::size_t i = 0; i < e_count; ++i) {
        di[i] *= static_cast<double>(loss_scale) * balance_.w_importance;
        dl[i] *= static_cast<double>(loss_scale) * balance_.w_load;
      }
      lg.d_importance = di;
      lg.d_load = dl;
    }
    return lg;
  }

  /// dz, da of token t += the auxiliary losses' gradients.
  void losses_backward(std::size_t t, const Saved& s, const LossGrads& lg, float* dz,
                       float* da) const {
    const RouterOutput& r = s.route;
    const std::size_t e_count = n_experts(), k = top_k();
    if constexpr (kBalance) {  // through the mean probabilities only
      router_.probs_backward(t, r, lg.balance + (t / lg.run) * e_count, dz);
    }
    if constexpr (kZLoss) {  // dL/dz_i = 2 c / n lse(z) softmax(z)_i
      const float* z = r.logits.row(t);
      const double lse = logsumexp(z, e_count);
      for (std::size_t i = 0; i < e_count; ++i) {
        dz[i] += static_cast<float>(lg.z_factor * lse * std::exp(z[i] - lse));
      }
    }
    if constexpr (kImportanceLoad) {
      // Importance: through the router's weights before capacity (renormalised over the
      // selected slots); Load: through the normal-CDF estimator, when it is the smooth one.
      float gw[MoEStats::kMaxExperts];
      std::uint8_t all[MoEStats::kMaxExperts];
      for (std::size_t j = 0; j < k; ++j) {
        const std::uint32_t e = r.experts(t, j);
        gw[j] = e == kNoExpert ? 0.0f : static_cast<float>(lg.d_importance[e]);
        all[j] = 1;
      }
      router_.weights_backward(t, r, gw, all, dz, da, s.opts);
      if (smooth_load(r, t)) {
        if constexpr (RouterT::kNoisyTopK) router_.load_backward(t, r, lg.d_load, dz, da, s.opts);
      }
    }
    (void)da;
  }

  RouterT router_;
  ExpertT experts_;
  CapacityP capacity_;
  BalanceP balance_;
  ZLossP z_loss_;
  [[no_unique_address]] SharedT shared_;
  ExpertDropout dropout_{};
};

MOE_SIMD_NAMESPACE_END
