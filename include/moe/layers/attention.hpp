// moe/layers/attention.hpp: RotaryAttention, grouped-query self-attention with RoPE and a KV cache.
//
// For the T rows of x ([T, D], one row per token at positions pos .. pos+T-1, pos = the layer's
// KV-cache length):
//
//   q = x . Wq (+ bq)  [T, Hq*dh]    k = x . Wk (+ bk)  [T, Hkv*dh]    v = x . Wv (+ bv)
//                                          (biases optional: Qwen2-MoE's q/k/v_proj.bias)
//   q <- RMSNorm(q, q_norm), k <- RMSNorm(k, k_norm)
//                                          (optional, over the whole projection of a token, all
//                                           heads together, eps qk_norm_eps: OLMoE's q_norm/k_norm)
//   q, k <- RoPE(position)                 (rotated in f32; layout and base from the config)
//   cache[layer] <- append k, v            (keys are cached already rotated)
//   for query head h (KV head g = h / (Hq/Hkv)) and token t, over keys j <= pos + t (causal;
//   with sliding_window = w only keys j > pos + t - w, as Mistral's sliding-window attention):
//     s_j = logit_multiplier * (q_t,h . k_j,g)
//     s_j = softcap * tanh(s_j / softcap)   (only when softcap > 0; Grok-1: 30)
//     w   = softmax_j(s)                    (f32)
//     o_t,h = sum_j w_j v_j,g
//   y = o . Wo  [T, D]
//
// Prefill (T tokens) and decode (T = 1) are the same code: both append to the cache and attend
// over everything in it. Grok-1's masking of keys whose token id is 0 (its padding) is not
// applied: moe never pads, so id 0 is an ordinary token.
//
// Training (forward_train / backward, the contract of moe/layers/moe_types.hpp with one extra
// argument, the sequence length): x holds B sequences of T tokens each ([B*T, D], sequence b in
// rows [b*T, (b+1)*T)); each attends causally within itself at positions 0 .. T-1, without a KV
// cache. The tape keeps the rotated q and k, v, the head outputs o and the log-sum-exp of every
// score row (with q/k norms also q and k before them); backward recomputes the attention weights
// from them (ops/attention.hpp has the formulas), un-rotates dq and dk (RoPE's transpose), runs
// the q/k norms backward, sums the bias gradients and runs the four projections backward.
//
// Work split: the projections are moe::matmul (moe::matmul_backward_* in training); the attention
// core (ops/attention.hpp) runs one task per (KV head, block of tokens) -- per (sequence, KV head)
// in backward -- and computes every query head of the group together, reading each key and value
// row once per block. Each output element is computed by exactly one task in a fixed order, so
// results are bit-identical for every pool size. Scores live in the pool's per-thread scratch
// (group * block * context floats); the projections' outputs in the caller's Arena.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>

#include <moe/config.hpp>
#include <moe/core/arena.hpp>
#include <moe/core/bf16.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/kv_cache.hpp>
#include <moe/ops/attention.hpp>
#include <moe/ops/matmul.hpp>
#include <moe/ops/matmul_grad.hpp>
#include <moe/ops/norm.hpp>
#include <moe/ops/rope.hpp>
#include <moe/ops/vector.hpp>
#include <moe/ops/weights.hpp>

namespace moe {

/// Configuration of a RotaryAttention layer.
struct AttentionConfig {
  std::size_t d_model = 0;     ///< D: input and output width
  std::size_t n_q_heads = 0;   ///< Hq
  std::size_t n_kv_heads = 0;  ///< Hkv; query head h uses KV head h / (Hq / Hkv)
  std::size_t head_dim = 0;    ///< dh (keys, queries and values)
  double rope_base = 10000.0;
  RopeLayout rope_layout = RopeLayout::kHalfSplit;
  std::size_t rotary_dims = 0;  ///< dims of each head that rotate (0 = all)
  /// Scale of the attention logits q.k (0 = 1/sqrt(head_dim)). Grok-1: 0.08838834764831845.
  double logit_multiplier = 0.0;
  /// Logit soft-cap c: s -> c tanh(s / c) after the multiplier (0 = off). Grok-1: 30.
  double softcap = 0.0;
  /// Sliding window: a query at position p sees keys p - w < j <= p (0 = plain causal). The KV
  /// cache still keeps every position. Mixtral's config.json sliding_window.
  std::size_t sliding_window = 0;
  /// eps of the optional q/k RMSNorms (AttentionWeights::q_norm, k_norm). OLMoE: rms_norm_eps.
  double qk_norm_eps = 1e-5;

  [[nodiscard]] std::size_t q_dim() const noexcept { return n_q_heads * head_dim; }
  [[nodiscard]] std::size_t kv_dim() const noexcept { return n_kv_heads * head_dim; }
  [[nodiscard]] std::size_t group() const noexcept { return n_q_heads / n_kv_heads; }
  [[nodiscard]] double multiplier() const noexcept {
    return logit_multiplier > 0 ? logit_multiplier : 1.0 / std::sqrt(static_cast<double>(head_dim));
  }

  /// Throws ConfigError("[attention] ...") naming the first inconsistent value.
  void validate() const {
    auto need = [](bool ok, const std::string& m) { check_config(ok, "attention", m); };
    need(d_model > 0 && head_dim > 0, "d_model and head_dim must be > 0");
    need(n_q_heads > 0 && n_kv_heads > 0, "n_q_heads and n_kv_heads must be > 0");
    need(n_q_heads % n_kv_heads == 0, "n_q_heads (" + std::to_string(n_q_heads) +
                                          ") must be a multiple of n_kv_heads (" +
                                          std::to_string(n_kv_heads) + ")");
    const std::size_t rd = rotary_dims ? rotary_dims : head_dim;
    need(rd % 2 == 0 && rd <= head_dim, "rotary_dims (" + std::to_string(rd) +
                                            ") must be even and <= head_dim (" +
                                            std::to_string(head_dim) + ")");
    need(rope_base > 0, "rope_base must be > 0");
    need(logit_multiplier >= 0 && std::isfinite(logit_multiplier),
         "logit_multiplier must be finite and >= 0 (0 = 1/sqrt(head_dim))");
    need(softcap >= 0 && std::isfinite(softcap), "softcap must be finite and >= 0 (0 = off)");
    need(qk_norm_eps > 0 && std::isfinite(qk_norm_eps), "qk_norm_eps must be finite and > 0");
  }
};

/// The four projections of an attention layer (views, JAX [in, out] or PyTorch layout), and the
/// optional f32 biases and q/k norm scales (empty = none).
template <class W>
struct AttentionWeights {
  W wq{};                                   ///< [D, Hq*dh]
  W wk{};                                   ///< [D, Hkv*dh]
  W wv{};                                   ///< [D, Hkv*dh]
  W wo{};                                   ///< [Hq*dh, D]
  std::span<const float> bq{}, bk{}, bv{};  ///< biases [Hq*dh], [Hkv*dh], [Hkv*dh] (Qwen2-MoE)
  /// RMSNorm scales over the whole q [Hq*dh] and k [Hkv*dh], before RoPE (OLMoE); both or none.
  std::span<const float> q_norm{}, k_norm{};

  [[nodiscard]] bool has_qk_norm() const noexcept { return !q_norm.empty(); }
};

}  // namespace moe

MOE_SIMD_NAMESPACE_BEGIN

template <class W>
class RotaryAttention {
 public:
  using weight_type = W;

  /// Tokens per task (upper bound; shrunk when the scores would not fit the thread scratch).
  static constexpr std::size_t kTokenBlock = 8;
  /// Below this many score multiply-adds (T * context * Hq * dh) the core runs on one thread.
  static constexpr std::size_t kSerialMacs = std::size_t{1} << 17;

  RotaryAttention() = default;
  RotaryAttention(const AttentionConfig& config, const AttentionWeights<W>& weights)
      : cfg_(config), w_(weights) {
    cfg_.validate();
    check_weight_shape(w_.wq, "attention", "wq", cfg_.d_model, cfg_.q_dim());
    check_weight_shape(w_.wk, "attention", "wk", cfg_.d_model, cfg_.kv_dim());
    check_weight_shape(w_.wv, "attention", "wv", cfg_.d_model, cfg_.kv_dim());
    check_weight_shape(w_.wo, "attention", "wo", cfg_.q_dim(), cfg_.d_model);
    check_vector(w_.bq, "bq", cfg_.q_dim());
    check_vector(w_.bk, "bk", cfg_.kv_dim());
    check_vector(w_.bv, "bv", cfg_.kv_dim());
    check_vector(w_.q_norm, "q_norm", cfg_.q_dim());
    check_vector(w_.k_norm, "k_norm", cfg_.kv_dim());
    if (w_.q_norm.empty() != w_.k_norm.empty()) {
      throw ShapeError("[attention] q_norm and k_norm come together: got only " +
                       std::string(w_.q_norm.empty() ? "k_norm" : "q_norm"));
    }
    rope_ = Rope(cfg_.head_dim, cfg_.rope_base, cfg_.rope_layout, cfg_.rotary_dims);
    core_ = AttentionCore{cfg_.n_q_heads,
                          cfg_.n_kv_heads,
                          cfg_.head_dim,
                          static_cast<float>(cfg_.multiplier()),
                          static_cast<float>(cfg_.softcap),
                          cfg_.sliding_window};
  }

  [[nodiscard]] const AttentionConfig& config() const noexcept { return cfg_; }
  [[nodiscard]] const AttentionWeights<W>& weights() const noexcept { return w_; }
  [[nodiscard]] std::size_t dim() const noexcept { return cfg_.d_model; }

  /// Arena bytes forward() needs for up to max_tokens rows.
  [[nodiscard]] std::size_t workspace_bytes(std::size_t max_tokens) const noexcept {
    return 2 * Arena::bytes_for<float>(max_tokens * cfg_.q_dim()) +
           2 * Arena::bytes_for<float>(max_tokens * cfg_.kv_dim());
  }

  /// Bytes of the pool's per-thread scratch the attention core needs at a context of `context`
  /// positions (one token per task: the minimum).
  [[nodiscard]] std::size_t scratch_bytes(std::size_t context) const noexcept {
    return attend_scratch_bytes(core_, 1, context);
  }

  /// Throws unless `cache` matches this layer's KV shape, has `layer`, and has room for `tokens`
  /// more positions; and unless the pool's scratch can hold the scores. Nothing is modified.
  void check(const ThreadPool& pool, const KvCache& cache, std::size_t layer,
             std::size_t tokens) const {
    if (cache.n_kv_heads() != cfg_.n_kv_heads || cache.head_dim() != cfg_.head_dim) {
      throw ShapeError("[attention] KV cache has " + std::to_string(cache.n_kv_heads()) +
                       " heads of " + std::to_string(cache.head_dim()) + ", layer expects " +
                       std::to_string(cfg_.n_kv_heads) + " heads of " +
                       std::to_string(cfg_.head_dim));
    }
    cache.check_room(layer, tokens);
    check_scratch(pool, cache.length(layer) + tokens);
  }

  /// y [T, D] = attention over x [T, D] at positions cache.length(layer) + t; appends the T new
  /// keys and values to `cache` (layer `layer`). x and y must not alias. Throws (before any
  /// work) when the cache is full or does not match; see check().
  void forward(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y, KvCache& cache,
               std::size_t layer, Arena& arena) const {
    MOE_ASSERT(x.cols == cfg_.d_model && y.cols == cfg_.d_model && x.rows == y.rows);
    const std::size_t t_count = x.rows;
    if (t_count == 0) return;
    check(pool, cache, layer, t_count);
    const std::size_t pos = cache.length(layer);
    const std::size_t qd = cfg_.q_dim(), kvd = cfg_.kv_dim();

    Arena::Scope scope(arena);
    MatrixView<float> q(arena.alloc<float>(t_count * qd), t_count, qd);
    MatrixView<float> k(arena.alloc<float>(t_count * kvd), t_count, kvd);
    MatrixView<float> v(arena.alloc<float>(t_count * kvd), t_count, kvd);
    MatrixView<float> o(arena.alloc<float>(t_count * qd), t_count, qd);

    project_rotate(pool, x, q, k, v, pos, t_count);
    cache.append(layer, k, v);
    attend(pool, q, o, cache, layer, pos);
    matmul(pool, MatrixView<const float>(o), w_.wo, y);
  }

  /// The attention core alone: o [T, Hq*dh] from rotated queries q [T, Hq*dh] at positions
  /// pos .. pos+T-1, over cache positions [0, pos + t] of `layer` (which must already hold
  /// them). Exposed for tests and benchmarks.
  void attend(ThreadPool& pool, MatrixView<const float> q, MatrixView<float> o,
              const KvCache& cache, std::size_t layer, std::size_t pos) const {
    const std::size_t t_count = q.rows;
    MOE_ASSERT(cache.length(layer) >= pos + t_count);
    const std::size_t block = token_block(pool, pos + t_count);
    const std::size_t n_blocks = (t_count + block - 1) / block;
    const std::size_t n_tasks = cfg_.n_kv_heads * n_blocks;
    const std::size_t dh = cfg_.head_dim;
    const auto run = [&](std::size_t task, std::size_t thread) {
      const std::size_t g = task % cfg_.n_kv_heads;
      const std::size_t t0 = (task / cfg_.n_kv_heads) * block;
      const std::size_t t1 = std::min(t_count, t0 + block);
      auto* scratch = reinterpret_cast<float*>(pool.scratch(thread));
      if (cache.dtype() == KvDtype::kF32) {
        const KvRows<float> kv{cache.keys_f32(layer, g), cache.values_f32(layer, g), dh};
        attend_causal(core_, q, o, kv, g, t0, t1, pos, scratch);
      } else {
        const KvRows<bf16> kv{cache.keys_bf16(layer, g), cache.values_bf16(layer, g), dh};
        attend_causal(core_, q, o, kv, g, t0, t1, pos, scratch);
      }
    };
    run_tasks(pool, n_tasks, t_count * (pos + t_count) * cfg_.q_dim(), run);
  }

  // ---- training (the contract of moe/layers/moe_types.hpp, per sequence-batched call) ----

  /// Gradients of the four projections (frozen = data null; bf16 / int8 weights are frozen), and
  /// of the biases and q/k norm scales when the layer has them (empty span = frozen).
  struct Grads {
    WeightGrad wq, wk, wv, wo;
    std::span<float> bq{}, bk{}, bv{}, q_norm{}, k_norm{};
  };
  /// What forward_train keeps for backward (views into the caller's tape).
  struct Saved {
    MatrixView<const float> q, k, v, o;  ///< rotated q [BT, Hq*dh], rotated k, v, head outputs
    const float* lse = nullptr;          ///< [BT, Hq]: log-sum-exp of every score row
    std::size_t seq_len = 0;             ///< T
    MatrixView<const float> q_pre{}, k_pre{};  ///< q, k before their norms (q/k norms only)
  };

  /// Tape bytes forward_train() keeps for max_tokens rows (B * T).
  [[nodiscard]] std::size_t tape_bytes(std::size_t max_tokens) const noexcept {
    const std::size_t qk = w_.has_qk_norm() ? 3 : 2;  // q and o (k and v), + q (k) before the norm
    return qk * Arena::bytes_for<float>(max_tokens * cfg_.q_dim()) +
           qk * Arena::bytes_for<float>(max_tokens * cfg_.kv_dim()) +
           Arena::bytes_for<float>(max_tokens * cfg_.n_q_heads);
  }
  /// Scratch bytes of forward_train() and backward() for max_tokens rows (backward: dq, dk, dv and
  /// the gradient of o; with q/k norms, the gradients before the norms and one float per row).
  [[nodiscard]] std::size_t training_workspace_bytes(std::size_t max_tokens) const noexcept {
    std::size_t b = workspace_bytes(max_tokens);
    if (w_.has_qk_norm()) {
      b += Arena::bytes_for<float>(max_tokens * cfg_.q_dim()) +
           Arena::bytes_for<float>(max_tokens * cfg_.kv_dim()) +
           Arena::bytes_for<float>(max_tokens);
    }
    return b;
  }
  /// Bytes of the pool's per-thread scratch forward_train() and backward() need for sequences of
  /// seq_len tokens (backward takes its query rows in blocks as large as the scratch allows, up
  /// to kAttentionBackwardRows; the results do not depend on it).
  [[nodiscard]] std::size_t training_scratch_bytes(std::size_t seq_len) const noexcept {
    return std::max(attend_scratch_bytes(core_, 1, seq_len),
                    attend_backward_scratch_bytes(core_, seq_len, 1));
  }

  /// y [B*T, D] = attention over x [B*T, D], B sequences of seq_len tokens, each causal within
  /// itself at positions 0 .. seq_len-1 (no KV cache). Keeps q, k, v, o and the log-sum-exps in
  /// `tape` (tape_bytes) for backward(); x must stay alive and unchanged until then.
  void forward_train(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y,
                     std::size_t seq_len, Arena& scratch, Arena& tape, Saved& saved) const {
    check_train_io(x, y, seq_len);
    check_scratch(pool, seq_len, true);
    (void)scratch;
    const std::size_t n = x.rows, qd = cfg_.q_dim(), kvd = cfg_.kv_dim(), hq = cfg_.n_q_heads;
    MatrixView<float> q(tape.alloc<float>(n * qd), n, qd);
    MatrixView<float> k(tape.alloc<float>(n * kvd), n, kvd);
    MatrixView<float> v(tape.alloc<float>(n * kvd), n, kvd);
    MatrixView<float> o(tape.alloc<float>(n * qd), n, qd);
    float* lse = tape.alloc<float>(n * hq);
    saved = Saved{q, k, v, o, lse, seq_len};
    MatrixView<float> q_pre, k_pre;
    if (w_.has_qk_norm()) {
      q_pre = MatrixView<float>(tape.alloc<float>(n * qd), n, qd);
      k_pre = MatrixView<float>(tape.alloc<float>(n * kvd), n, kvd);
      saved.q_pre = q_pre;
      saved.k_pre = k_pre;
    }
    if (n == 0) return;

    project_rotate(pool, x, q, k, v, 0, seq_len, q_pre, k_pre);
    const std::size_t block = token_block(pool, seq_len);
    const std::size_t n_blocks = (seq_len + block - 1) / block;
    const std::size_t n_seq = n / seq_len, dh = cfg_.head_dim;
    const std::size_t n_tasks = n_seq * cfg_.n_kv_heads * n_blocks;
    run_tasks(pool, n_tasks, n * seq_len * qd, [&](std::size_t task, std::size_t thread) {
      const std::size_t g = task % cfg_.n_kv_heads;
      const std::size_t rest = task / cfg_.n_kv_heads;
      const std::size_t b = rest / n_blocks, t0 = (rest % n_blocks) * block;
      const std::size_t t1 = std::min(seq_len, t0 + block);
      const std::size_t r0 = b * seq_len;
      const KvRows<float> kv{k.row(r0) + g * dh, v.row(r0) + g * dh, kvd};
      attend_causal(core_, MatrixView<const float>(q.rows_slice(r0, seq_len)),
                    o.rows_slice(r0, seq_len), kv, g, t0, t1, 0,
                    reinterpret_cast<float*>(pool.scratch(thread)), lse + r0 * hq, hq);
    });
    matmul(pool, MatrixView<const float>(o), w_.wo, y);
  }

  /// dx += dL/dx and grads += dL/dW, given the x of forward_train(), its Saved record and dy.
  void backward(ThreadPool& pool, MatrixView<const float> x, const Saved& saved,
                MatrixView<const float> dy, MatrixView<float> dx, const Grads& grads,
                Arena& scratch) const {
    check_train_io(x, dy, saved.seq_len);
    check_train_io(x, dx, saved.seq_len);
    if (saved.q.rows != x.rows) {
      throw ShapeError("[attention] backward() got " + std::to_string(x.rows) +
                       " rows, forward_train() saved " + std::to_string(saved.q.rows));
    }
    check_weight_grad(w_.wq, grads.wq, "attention", "wq");
    check_weight_grad(w_.wk, grads.wk, "attention", "wk");
    check_weight_grad(w_.wv, grads.wv, "attention", "wv");
    check_weight_grad(w_.wo, grads.wo, "attention", "wo");
    check_vector_grad(grads.bq, w_.bq, "bq");
    check_vector_grad(grads.bk, w_.bk, "bk");
    check_vector_grad(grads.bv, w_.bv, "bv");
    check_vector_grad(grads.q_norm, w_.q_norm, "q_norm");
    check_vector_grad(grads.k_norm, w_.k_norm, "k_norm");
    const std::size_t n = x.rows, seq_len = saved.seq_len, qd = cfg_.q_dim(), kvd = cfg_.kv_dim();
    if (n == 0) return;
    check_scratch(pool, seq_len, true);
    Arena::Scope scope(scratch);
    MatrixView<float> d_o(scratch.alloc<float>(n * qd), n, qd);
    MatrixView<float> dq(scratch.alloc<float>(n * qd), n, qd);
    MatrixView<float> dk(scratch.alloc<float>(n * kvd), n, kvd);
    MatrixView<float> dv(scratch.alloc<float>(n * kvd), n, kvd);
    fill(d_o.data, n * qd, 0.0f);
    fill(dq.data, n * qd, 0.0f);
    fill(dk.data, n * kvd, 0.0f);
    fill(dv.data, n * kvd, 0.0f);

    // 1. output projection: d_o = dy . Wo^T, dWo += o^T dy.
    matmul_backward_weight(pool, saved.o, dy, grads.wo);
    matmul_backward_input(pool, dy, w_.wo, d_o);
    // 2. the attention core, one task per (sequence, KV head).
    const std::size_t dh = cfg_.head_dim, hq = cfg_.n_q_heads;
    const std::size_t block_rows = attend_backward_block_rows(core_, seq_len, pool.scratch_bytes());
    run_tasks(pool, (n / seq_len) * cfg_.n_kv_heads, n * seq_len * qd,
              [&](std::size_t task, std::size_t th) {
                const std::size_t g = task % cfg_.n_kv_heads,
                                  r0 = (task / cfg_.n_kv_heads) * seq_len;
                const KvRows<float> kv{saved.k.row(r0) + g * dh, saved.v.row(r0) + g * dh, kvd};
                const KvGradRows dkv{dk.row(r0) + g * dh, dv.row(r0) + g * dh, kvd};
                attend_causal_backward(core_, saved.q.rows_slice(r0, seq_len),
                                       saved.o.rows_slice(r0, seq_len),
                                       MatrixView<const float>(d_o).rows_slice(r0, seq_len),
                                       saved.lse + r0 * hq, hq, kv, dq.rows_slice(r0, seq_len), dkv,
                                       g, reinterpret_cast<float*>(pool.scratch(th)), block_rows);
              });
    // 3. RoPE's transpose on dq and dk.
    constexpr std::size_t kRopeRows = 16;
    pool.parallel_for((n + kRopeRows - 1) / kRopeRows, [&](std::size_t task, std::size_t) {
      const std::size_t t1 = std::min(n, (task + 1) * kRopeRows);
      for (std::size_t t = task * kRopeRows; t < t1; ++t) {
        rope_.apply_inverse(dk.row(t), cfg_.n_kv_heads, t % seq_len);
        rope_.apply_inverse(dq.row(t), cfg_.n_q_heads, t % seq_len);
      }
    });
    // 4. the q/k norms (dq, dk become the gradients of the projections), then the biases.
    if (w_.has_qk_norm()) {
      MatrixView<float> dq_pre(scratch.alloc<float>(n * qd), n, qd);
      MatrixView<float> dk_pre(scratch.alloc<float>(n * kvd), n, kvd);
      float* r = scratch.alloc<float>(n);
      fill(dq_pre.data, n * qd, 0.0f);
      fill(dk_pre.data, n * kvd, 0.0f);
      const auto eps = static_cast<float>(cfg_.qk_norm_eps);
      detail::rms_norm_backward_rows(pool, saved.q_pre, w_.q_norm.data(), dq, dq_pre,
                                     grads.q_norm.empty() ? nullptr : grads.q_norm.data(), eps, r);
      detail::rms_norm_backward_rows(pool, saved.k_pre, w_.k_norm.data(), dk, dk_pre,
                                     grads.k_norm.empty() ? nullptr : grads.k_norm.data(), eps, r);
      dq = dq_pre;
      dk = dk_pre;
    }
    bias_backward(pool, dq, grads.bq);
    bias_backward(pool, dk, grads.bk);
    bias_backward(pool, dv, grads.bv);
    // 5. the input projections.
    matmul_backward_weight(pool, x, dq, grads.wq);
    matmul_backward_weight(pool, x, dk, grads.wk);
    matmul_backward_weight(pool, x, dv, grads.wv);
    matmul_backward_input(pool, MatrixView<const float>(dq), w_.wq, dx);
    matmul_backward_input(pool, MatrixView<const float>(dk), w_.wk, dx);
    matmul_backward_input(pool, MatrixView<const float>(dv), w_.wv, dx);
  }

 private:
  /// q, k, v = x . W{q,k,v} (+ biases), the q/k norms, then RoPE on q and k; row t is at
  /// position pos0 + t % period. q_pre / k_pre (training with q/k norms) receive q and k before
  /// their norms.
  void project_rotate(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> q,
                      MatrixView<float> k, MatrixView<float> v, std::size_t pos0,
                      std::size_t period, MatrixView<float> q_pre = {},
                      MatrixView<float> k_pre = {}) const {
    matmul(pool, x, w_.wq, q);
    matmul(pool, x, w_.wk, k);
    matmul(pool, x, w_.wv, v);
    const std::size_t n = x.rows, qd = cfg_.q_dim(), kvd = cfg_.kv_dim();
    const auto eps = static_cast<float>(cfg_.qk_norm_eps);
    constexpr std::size_t kRopeRows = 16;
    pool.parallel_for((n + kRopeRows - 1) / kRopeRows, [&](std::size_t task, std::size_t) {
      const std::size_t t1 = std::min(n, (task + 1) * kRopeRows);
      for (std::size_t t = task * kRopeRows; t < t1; ++t) {
        if (!w_.bq.empty()) add(q.row(t), w_.bq.data(), q.row(t), qd);
        if (!w_.bk.empty()) add(k.row(t), w_.bk.data(), k.row(t), kvd);
        if (!w_.bv.empty()) add(v.row(t), w_.bv.data(), v.row(t), kvd);
        if (w_.has_qk_norm()) {
          if (q_pre.data != nullptr) copy(q.row(t), q_pre.row(t), qd);
          if (k_pre.data != nullptr) copy(k.row(t), k_pre.row(t), kvd);
          rms_norm(q.row(t), w_.q_norm.data(), q.row(t), qd, eps);
          rms_norm(k.row(t), w_.k_norm.data(), k.row(t), kvd, eps);
        }
        rope_.apply(k.row(t), cfg_.n_kv_heads, pos0 + t % period);
        rope_.apply(q.row(t), cfg_.n_q_heads, pos0 + t % period);
      }
    });
  }

  static void check_vector(std::span<const float> v, const char* name, std::size_t n) {
    if (!v.empty()) check_shape("attention", name, {v.size()}, {n});
  }
  static void check_vector_grad(std::span<float> g, std::span<const float> v, const char* name) {
    if (g.empty()) return;
    if (v.empty()) {
      throw ShapeError(std::string("[attention] gradient of '") + name +
                       "' given, but the layer has no " + name);
    }
    check_shape("attention", std::string("gradient of ") + name, {g.size()}, {v.size()});
  }

  /// Tokens per forward task: as many as fit the per-thread scratch (results do not depend on it).
  [[nodiscard]] std::size_t token_block(const ThreadPool& pool,
                                        std::size_t context) const noexcept {
    std::size_t block = kTokenBlock;
    while (block > 1 && attend_scratch_bytes(core_, block, context) > pool.scratch_bytes()) --block;
    return block;
  }

  /// Runs n_tasks tasks on the pool; small problems (a decode step at a short context) run them
  /// in order on the calling thread: waking the workers would cost more than the work. Same
  /// tasks, same order, same results.
  template <class F>
  static void run_tasks(ThreadPool& pool, std::size_t n_tasks, std::size_t macs, const F& run) {
    if (macs < kSerialMacs) {
      pool.parallel_for(1, [&](std::size_t, std::size_t thread) {
        for (std::size_t task = 0; task < n_tasks; ++task) run(task, thread);
      });
    } else {
      pool.parallel_for(n_tasks, run);
    }
  }

  /// Throws CapacityError unless the pool's per-thread scratch holds one token's scores at a
  /// context of `context` positions (in training: also the backward's rows).
  void check_scratch(const ThreadPool& pool, std::size_t context, bool training = false) const {
    const std::size_t need = training ? training_scratch_bytes(context) : scratch_bytes(context);
    if (need > pool.scratch_bytes()) {
      throw CapacityError("[attention] the thread pool's scratch (" +
                          std::to_string(pool.scratch_bytes()) + " bytes per thread) cannot hold " +
                          std::to_string(need) + " bytes of attention scores for a context of " +
                          std::to_string(context) +
                          " positions; construct the ThreadPool with more scratch");
    }
  }

  void check_train_io(MatrixView<const float> x, MatrixView<const float> y,
                      std::size_t seq_len) const {
    if (x.cols != cfg_.d_model || y.cols != cfg_.d_model || x.rows != y.rows) {
      throw ShapeError("[attention] input " + shape_str({x.rows, x.cols}) + " / output " +
                       shape_str({y.rows, y.cols}) + " do not match [B*T, " +
                       std::to_string(cfg_.d_model) + "]");
    }
    if (seq_len == 0 || x.rows % seq_len != 0) {
      throw ShapeError("[attention] " + std::to_string(x.rows) +
                       " rows are not whole sequences of seq_len = " + std::to_string(seq_len));
    }
  }

  AttentionConfig cfg_{};
  AttentionWeights<W> w_{};
  Rope rope_;
  AttentionCore core_{};
};

MOE_SIMD_NAMESPACE_END
