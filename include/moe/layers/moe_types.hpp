// moe/layers/moe_types.hpp: plain data exchanged with an FFN layer's forward().
//
// Every feed-forward layer a TransformerBlock can hold (MoELayer, a dense gated FFN) offers
//
//   std::size_t dim() const;                                   // D (input = output width)
//   std::size_t workspace_bytes(std::size_t max_tokens) const; // Arena bytes forward() needs
//   Result forward(ThreadPool& pool, MatrixView<const float> x /*[T, D]*/,
//                  MatrixView<float> y /*[T, D]*/, Arena& arena,
//                  const ForwardOptions& opts = {}) const;     // y = layer(x); x, y never alias
//
// For MoELayer, Result is MoEResult: the layer's own losses (never hidden in global state) and
// its routing statistics, computed over the real (unmasked) tokens of this call only.
//
// Training (llm.c style: one backward next to each forward, no autograd engine). A trainable
// layer L also offers
//
//   struct L::Grads;  // gradient views mirroring its weights (WeightGrad, ops/weights.hpp;
//                     // frozen = data nullptr; bf16 / int8 weights are always frozen)
//   struct L::Saved;  // what forward_train keeps for backward: views into the caller's tape
//   std::size_t tape_bytes(std::size_t max_tokens) const;              // tape forward_train uses
//   std::size_t training_workspace_bytes(std::size_t max_tokens) const; // scratch of both calls
//   Result forward_train(ThreadPool&, MatrixView<const float> x, MatrixView<float> y,
//                        Arena& scratch, Arena& tape, Saved& saved,
//                        const ForwardOptions& opts = {}) const;      // y as forward(); saves
//   void backward(ThreadPool&, MatrixView<const float> x, const Saved& saved,
//                 MatrixView<const float> dy, MatrixView<float> dx, Grads& grads,
//                 Arena& scratch, const BackwardOptions& opts = {}) const;
//
// forward_train allocates what backward needs from `tape` and does not release it: the caller
// owns the tape (one Arena per training step, reset after the backward pass) and keeps x alive
// and unchanged until backward, which receives the same x again. backward ADDS dL/dx into dx
// and dL/dW into grads (the caller zeroes them once per step), given dy = dL/dy. A layer with
// auxiliary losses (MoELayer) adds their gradient too, scaled by BackwardOptions::loss_scale.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace moe {

/// Per-call options of an FFN layer's forward().
struct ForwardOptions {
  /// Training mode: enables the router noise policy and selects the training capacity factor.
  bool training = false;
  /// [T] mask, 1 = real token, 0 = padding (nullptr = all real). In an MoE layer, padding tokens
  /// are not dispatched to any expert, take no capacity, are excluded from the losses and the
  /// statistics, and their output row is 0. A dense FFN ignores the mask.
  const std::uint8_t* token_mask = nullptr;
  /// Counter for the noise RNG: noise is a pure function of (layer seed, step, token, expert),
  /// so a run is reproducible and independent of the thread count.
  std::uint64_t step = 0;
};

/// Per-call options of an FFN layer's backward().
struct BackwardOptions {
  /// Factor on the layer's own auxiliary losses (load balance, z-loss) in the total loss; e.g.
  /// 1 / n when n micro-batches are accumulated into one step with their losses averaged.
  float loss_scale = 1.0f;
};

/// Auxiliary losses of one MoE layer for one forward call. Divided by the number of real tokens.
struct MoELosses {
  /// raw Switch load-balancing loss, E * sum_i f_i P_i (normalised as the policy says)
  float load_balance = 0.0f;
  float z_loss = 0.0f;                 ///< raw router z-loss, mean over real tokens of lse(z)^2
  float importance = 0.0f;             ///< raw CV^2(Importance) (ImportanceLoadLoss)
  float load = 0.0f;                   ///< raw CV^2(Load) (ImportanceLoadLoss)
  float load_balance_weighted = 0.0f;  ///< load_balance * the balance policy's coefficient
  float z_loss_weighted = 0.0f;        ///< z_loss * the z-loss policy's coefficient
  float importance_weighted = 0.0f;    ///< importance * w_importance
  float load_weighted = 0.0f;          ///< load * w_load

  /// What to add to the training loss for this layer.
  [[nodiscard]] float total() const noexcept {
    return load_balance_weighted + z_loss_weighted + importance_weighted + load_weighted;
  }

  /// Sums another layer's losses into this one (e.g. over the layers of a decoder).
  MoELosses& operator+=(const MoELosses& o) noexcept {
    load_balance += o.load_balance;
    z_loss += o.z_loss;
    importance += o.importance;
    load += o.load;
    load_balance_weighted += o.load_balance_weighted;
    z_loss_weighted += o.z_loss_weighted;
    importance_weighted += o.importance_weighted;
    load_weighted += o.load_weighted;
    return *this;
  }
};

/// Routing statistics of one MoE layer for one forward call (real tokens only).
struct MoEStats {
  /// Largest expert count a layer supports (stats are a fixed-size array: no allocation).
  static constexpr std::size_t kMaxExperts = 512;

  std::size_t n_experts = 0;    ///< E (entries of tokens_per_expert that are meaningful)
  std::size_t tokens = 0;       ///< real (unmasked) tokens routed
  std::size_t assignments = 0;  ///< (token, expert) pairs selected by the router = k * tokens
  std::size_t dropped = 0;      ///< pairs dropped by the capacity policy
  std::size_t capacity = 0;     ///< per-expert capacity C of this call (0 for a dropless layer)
  /// (token, expert) pairs each expert actually computed (after capacity), real tokens only.
  std::array<std::uint32_t, kMaxExperts> tokens_per_expert{};
  /// (token, expert) pairs the router sent to each expert, before capacity (the load that the
  /// balance losses act on; equals tokens_per_expert in a dropless layer).
  std::array<std::uint32_t, kMaxExperts> routed_per_expert{};
  float dropped_fraction = 0.0f;  ///< dropped / assignments (0 when no tokens)
  float router_entropy = 0.0f;    ///< mean over tokens of -sum_i p_i log p_i (nats)
  float mean_top1_prob = 0.0f;    ///< mean over tokens of max_i p_i ("router confidence")
  float mean_logsumexp = 0.0f;    ///< mean over tokens of logsumexp(z) of the router logits
};

/// What a dense gated FFN's forward returns (nothing: it has no losses or routing).
struct FfnResult {};

/// What MoELayer::forward returns.
struct MoEResult {
  MoELosses losses;
  MoEStats stats;
};

}  // namespace moe
