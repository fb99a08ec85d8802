// moe/layers/decoder.hpp: Decoder<Block, Head>, a decoder-only language model over token ids.
//
//   h      = embedding[token] * embedding_multiplier                 [T, D]   (table [V, D])
//   h      = block_l(h)  for l = 0 .. L-1                              (TransformerBlock)
//   logits = (RMSNorm(h, final_norm) . head) * output_multiplier      [T or 1, V]
//
// The embedding is an EmbeddingTable (ops/embedding.hpp): f32 at any byte alignment, bf16, or
// int8 with bf16 scales, read in place and widened exactly row by row. The head is tied to the
// embedding by default (logits = h . E^T: the table's own weight view, e.g. the F32Weight
// {E, in = D, out = V, Layout::kOutIn}) or a separate weight of type Head ([D, V]).
//
// A Decoder holds views only and is const during forward(): several DecoderStates (sequences) can
// share one Decoder. A DecoderState owns what one sequence needs: its KvCache and an Arena sized
// at construction for `max_tokens` tokens per call, so forward() never allocates.
//
// forward(pool, tokens, state, logits): runs the T tokens at positions state.position() ..
// position()+T-1 (prefill: T > 1, as a batch through every matmul; decode: T = 1), appends them
// to the cache, and writes logits for every token (logits.rows == T) or only the last one
// (logits.rows == 1, which skips T-1 rows of the largest GEMM). Every error (token id out of
// range, cache full, T > max_tokens, wrong logits shape) throws before any work is done.
//
// Training (llm.c's structure: an explicit backward next to each forward, gradients accumulated
// with +=, activations kept in caller-owned arenas):
//
//   TrainingState st = model.make_training_state(batch, seq_len, recompute);   // sized once
//   TrainingLoss l = model.forward_train(pool, tokens /*[B*T]*/, targets /*[B*T]*/, st, opts);
//   model.backward(pool, st, grads);                                          // grads +=
//
// forward_train runs B sequences of T tokens (each causal within itself at positions 0..T-1, no
// KV cache) and returns the mean softmax cross-entropy over the targets that are not
// opts.ignore_id plus the MoE layers' weighted auxiliary losses. backward adds the gradient of
// loss_scale * that loss to every parameter gradient in `grads` (Grads mirrors the weights: the
// embedding table, the final norm, an untied head, every block's; empty / frozen views are
// skipped; the caller zeroes them once per step). The tied head adds its part to the embedding's
// gradient. With `recompute`, forward_train keeps only each block's input and backward re-runs
// the block's forward before its backward (less memory, one more forward; docs/training.md).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <moe/config.hpp>
#include <moe/core/arena.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/attention.hpp>
#include <moe/layers/kv_cache.hpp>
#include <moe/layers/transformer_block.hpp>
#include <moe/ops/embedding.hpp>
#include <moe/ops/loss.hpp>
#include <moe/ops/matmul.hpp>
#include <moe/ops/matmul_grad.hpp>
#include <moe/ops/norm.hpp>
#include <moe/ops/softmax.hpp>
#include <moe/ops/weights.hpp>

namespace moe {

/// Model-level constants of a Decoder.
struct DecoderConfig {
  std::size_t vocab_size = 0;
  std::size_t d_model = 0;
  double embedding_multiplier = 1.0;  ///< Grok-1: 78.38367176906169 (sqrt(6144))
  double output_multiplier = 1.0;     ///< Grok-1: 0.5773502691896257 (1/sqrt(3))
  double rms_eps = 1e-5;              ///< of the final norm
  /// Columns of the head and of the logits (0 = vocab_size). A tensor-parallel shard computes
  /// only its slice of the vocabulary (moe/mpi/): its untied head is that slice, [D, head_vocab].
  std::size_t head_vocab = 0;

  [[nodiscard]] std::size_t logits_cols() const noexcept {
    return head_vocab == 0 ? vocab_size : head_vocab;
  }

  void validate() const {
    check_config(vocab_size > 0 && d_model > 0, "decoder", "vocab_size and d_model must be > 0");
    check_config(head_vocab <= vocab_size, "decoder",
                 "head_vocab (" + std::to_string(head_vocab) + ") exceeds vocab_size (" +
                     std::to_string(vocab_size) + ")");
    check_config(rms_eps > 0, "decoder", "rms_eps must be > 0");
    check_config(std::isfinite(embedding_multiplier) && std::isfinite(output_multiplier), "decoder",
                 "multipliers must be finite");
  }
};

/// Per-call options of Decoder::forward.
struct DecoderOptions {
  /// When set, wall time per component is added to it.
  DecoderProfile* profile = nullptr;
  /// When set, called after every block with the residual stream h [T, D] (tests, debugging).
  std::function<void(std::size_t layer, MatrixView<const float> h)> on_layer;
  /// Tensor parallel: sums every block's partial attention and FFN outputs across shards.
  PartialSum reduce;
};

/// Per-step options of Decoder::forward_train (backward uses the same).
struct TrainingOptions {
  /// Targets equal to this id are not counted (PyTorch's ignore_index).
  std::int32_t ignore_id = -1;
  /// Factor on the whole loss, so on every gradient (e.g. 1 / n when n micro-batches are
  /// accumulated into one step). The returned loss is not scaled.
  float loss_scale = 1.0f;
  /// ForwardOptions::step of the MoE layers (their router noise).
  std::uint64_t step = 0;
  /// ForwardOptions::training of the MoE layers: router noise and the training capacity factor
  /// (false: evaluation semantics, e.g. a validation loss without a backward pass).
  bool training = true;
};

/// What Decoder::forward_train returns.
struct TrainingLoss {
  float loss = 0.0f;        ///< ce + aux
  float ce = 0.0f;          ///< mean cross-entropy over the counted targets
  float aux = 0.0f;         ///< sum of the MoE layers' weighted auxiliary losses
  std::size_t counted = 0;  ///< targets that are not ignore_id
};

namespace detail {
/// The weighted auxiliary loss in an FFN result (0 for dense layers).
inline float aux_loss(unsigned char) noexcept {
  return 0.0f;
}
inline float aux_loss(const FfnResult&) noexcept {
  return 0.0f;
}
inline float aux_loss(const MoEResult& r) noexcept {
  return r.losses.total();
}
template <class R>
float aux_loss(const std::optional<R>& r) noexcept {
  return r ? aux_loss(*r) : 0.0f;
}
}  // namespace detail

}  // namespace moe

MOE_SIMD_NAMESPACE_BEGIN

/// Everything one sequence needs: its KV cache and its scratch.
class DecoderState {
 public:
  DecoderState() = default;
  DecoderState(const KvCacheConfig& cache, std::size_t max_tokens, std::size_t workspace_bytes)
      : cache_(cache), arena_(workspace_bytes), max_tokens_(max_tokens) {
    check_config(max_tokens > 0, "decoder", "max_tokens must be > 0");
  }

  /// Position of the next token (= tokens processed so far).
  [[nodiscard]] std::size_t position() const noexcept { return cache_.size(); }
  /// Largest T one forward() call accepts.
  [[nodiscard]] std::size_t max_tokens() const noexcept { return max_tokens_; }
  [[nodiscard]] std::size_t capacity() const noexcept { return cache_.capacity(); }
  /// Starts a new sequence.
  void reset() noexcept { cache_.clear(); }
  /// Keeps the first n positions.
  void truncate(std::size_t n) { cache_.truncate(n); }

  [[nodiscard]] KvCache& cache() noexcept { return cache_; }
  [[nodiscard]] const KvCache& cache() const noexcept { return cache_; }
  [[nodiscard]] Arena& arena() noexcept { return arena_; }

 private:
  KvCache cache_;
  Arena arena_;
  std::size_t max_tokens_ = 0;
};

template <class Block, class Head = F32Weight>
class Decoder {
 public:
  using block_type = Block;
  using head_type = Head;
  using ffn_result_type = typename Block::ffn_result_type;
  /// Element of forward()'s optional per-layer result span (a dummy byte for void FFNs).
  using result_slot =
      std::conditional_t<std::is_void_v<ffn_result_type>, unsigned char, ffn_result_type>;

  /// Gradients of every parameter: views the caller owns and zeroes once per step (backward()
  /// adds). An empty span / a frozen WeightGrad is not computed (a bf16 or int8 table or weight
  /// must be frozen).
  struct Grads {
    std::span<float> embedding;   ///< [V, D] row-major; the tied head adds its part here too
    std::span<float> final_norm;  ///< [D]
    WeightGrad head;              ///< [D, V] in the head's layout (untied head only)
    std::vector<typename Block::Grads> blocks;  ///< one per layer
  };

  /// What one training step keeps between forward_train() and backward(), and the scratch of
  /// both: made once by make_training_state() for B sequences of T tokens.
  class TrainingState {
   public:
    TrainingState() = default;
    [[nodiscard]] std::size_t batch() const noexcept { return batch_; }
    [[nodiscard]] std::size_t seq_len() const noexcept { return seq_len_; }
    [[nodiscard]] bool recompute() const noexcept { return recompute_; }
    /// The FFN results of the last forward_train(), one per layer (MoE statistics and losses).
    [[nodiscard]] std::span<const result_slot> ffn_results() const noexcept { return results_; }
    /// Bytes of the tape, the scratch and (recompute) the one-block tape.
    [[nodiscard]] std::size_t bytes() const noexcept {
      return tape_.capacity() + scratch_.capacity() + block_tape_.capacity();
    }
    [[nodiscard]] const Arena& tape() const noexcept { return tape_; }
    [[nodiscard]] const Arena& scratch() const noexcept { return scratch_; }

   private:
    friend class Decoder;
    TrainingState(std::size_t batch, std::size_t seq_len, bool recompute, std::size_t layers,
                  std::size_t tape, std::size_t scratch, std::size_t block_tape)
        : batch_(batch),
          seq_len_(seq_len),
          recompute_(recompute),
          tape_(tape),
          scratch_(scratch),
          block_tape_(block_tape),
          saved_(layers),
          results_(layers),
          h_(layers + 1) {}

    std::size_t batch_ = 0, seq_len_ = 0;
    bool recompute_ = false;
    Arena tape_, scratch_, block_tape_;
    std::vector<typename Block::Saved> saved_;
    std::vector<result_slot> results_;
    // the step in flight (views into tape_)
    std::vector<MatrixView<float>> h_;  // block inputs h_0 .. h_L
    MatrixView<float> hn_, logits_;
    std::span<const std::int32_t> tokens_, targets_;
    TrainingOptions options_;
    std::size_t counted_ = 0;
    bool ready_ = false;
  };

  /// `embedding` [V, D] (row = token, contiguous; a MatrixView<const float> converts to an f32
  /// table), `final_norm` [D]; `head` [D, V] when the LM head is not tied to the embedding
  /// (std::nullopt = tied).
  Decoder(const DecoderConfig& config, EmbeddingTable embedding, std::vector<Block> blocks,
          std::span<const float> final_norm, std::optional<Head> head = std::nullopt)
      : cfg_(config),
        emb_(embedding),
        blocks_(std::move(blocks)),
        final_norm_(final_norm),
        head_(std::move(head)) {
    cfg_.validate();
    const std::size_t v = cfg_.vocab_size, d = cfg_.d_model;
    emb_.validate("decoder", "embedding", v, d);
    if (final_norm_.data() == nullptr) throw ShapeError("[decoder] tensor 'final_norm' is missing");
    check_shape("decoder", "final_norm", {final_norm_.size()}, {d});
    check_config(!blocks_.empty(), "decoder", "needs at least one block");
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      const auto& a = blocks_[l].attention().config();
      const auto& a0 = blocks_[0].attention().config();
      check_config(blocks_[l].dim() == d, "decoder",
                   "block " + std::to_string(l) + " has width " + std::to_string(blocks_[l].dim()) +
                       ", expected d_model = " + std::to_string(d));
      check_config(a.n_kv_heads == a0.n_kv_heads && a.head_dim == a0.head_dim, "decoder",
                   "block " + std::to_string(l) + " has a different KV shape than block 0");
    }
    if (head_) check_weight_shape(*head_, "decoder", "head", d, cfg_.logits_cols());
    check_config(head_ || cfg_.logits_cols() == v, "decoder",
                 "a head over a vocabulary slice (head_vocab " + std::to_string(cfg_.head_vocab) +
                     ") must be an untied head");
  }

  [[nodiscard]] const DecoderConfig& config() const noexcept { return cfg_; }
  [[nodiscard]] std::size_t vocab_size() const noexcept { return cfg_.vocab_size; }
  [[nodiscard]] std::size_t dim() const noexcept { return cfg_.d_model; }
  [[nodiscard]] std::size_t n_layers() const noexcept { return blocks_.size(); }
  [[nodiscard]] const std::vector<Block>& blocks() const noexcept { return blocks_; }
  [[nodiscard]] bool tied_head() const noexcept { return !head_.has_value(); }
  [[nodiscard]] const EmbeddingTable& embedding() const noexcept { return emb_; }

  /// The shape of the KV cache this model needs for `capacity` positions.
  [[nodiscard]] KvCacheConfig kv_config(std::size_t capacity, KvDtype dtype = KvDtype::kF32) const {
    const auto& a = blocks_[0].attention().config();
    return KvCacheConfig{blocks_.size(), a.n_kv_heads, a.head_dim, capacity, dtype};
  }

  /// Arena bytes forward() needs for up to max_tokens tokens per call.
  [[nodiscard]] std::size_t workspace_bytes(std::size_t max_tokens) const {
    std::size_t blocks = 0;
    for (const auto& b : blocks_) blocks = std::max(blocks, b.workspace_bytes(max_tokens));
    return 2 * Arena::bytes_for<float>(max_tokens * cfg_.d_model) + blocks;
  }

  /// A new sequence: a KV cache of `capacity` positions and scratch for up to `max_tokens`
  /// tokens per forward() call (prompts longer than that are fed in chunks by generate()).
  [[nodiscard]] DecoderState make_state(std::size_t capacity, std::size_t max_tokens,
                                        KvDtype dtype = KvDtype::kF32) const {
    return DecoderState(kv_config(capacity, dtype), max_tokens, workspace_bytes(max_tokens));
  }

  /// Throws (TokenError, CapacityError, ShapeError) unless forward() with these arguments can
  /// run. Called by forward() before any work.
  void check(const ThreadPool& pool, std::span<const std::int32_t> tokens,
             const DecoderState& state, MatrixView<float> logits) const {
    const std::size_t t_count = tokens.size();
    if (t_count == 0) throw ShapeError("[decoder] forward() needs at least one token");
    for (std::size_t t = 0; t < t_count; ++t) {
      if (tokens[t] < 0 || static_cast<std::size_t>(tokens[t]) >= cfg_.vocab_size) {
        throw TokenError("[decoder] token id " + std::to_string(tokens[t]) + " at index " +
                         std::to_string(t) + " is outside the vocabulary [0, " +
                         std::to_string(cfg_.vocab_size) + ")");
      }
    }
    if (t_count > state.max_tokens()) {
      throw CapacityError("[decoder] " + std::to_string(t_count) +
                          " tokens in one call, but the state was made for at most " +
                          std::to_string(state.max_tokens()) +
                          " (make_state(capacity, max_tokens)); feed them in chunks");
    }
    const KvCache& cache = state.cache();
    if (cache.n_layers() != blocks_.size()) {
      throw ShapeError("[decoder] KV cache has " + std::to_string(cache.n_layers()) +
                       " layers, model has " + std::to_string(blocks_.size()));
    }
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      if (cache.length(l) != cache.size()) {
        throw ShapeError("[decoder] KV cache layers hold different lengths (layer " +
                         std::to_string(l) + ": " + std::to_string(cache.length(l)) +
                         ", layer 0: " + std::to_string(cache.size()) + ")");
      }
      blocks_[l].attention().check(pool, cache, l, t_count);
    }
    const std::size_t lc = cfg_.logits_cols();
    if (logits.data == nullptr || logits.cols != lc ||
        (logits.rows != t_count && logits.rows != 1)) {
      throw ShapeError("[decoder] logits have shape " + shape_str({logits.rows, logits.cols}) +
                       ", expected " + shape_str({t_count, lc}) + " (every token) or " +
                       shape_str({1, lc}) + " (the last token)");
    }
  }

  /// Runs tokens at positions state.position() + t; see the file comment. `ffn_results`, when
  /// not empty, must have n_layers() entries and receives each block's FFN result (for an MoE
  /// layer: routing statistics and losses).
  void forward(ThreadPool& pool, std::span<const std::int32_t> tokens, DecoderState& state,
               MatrixView<float> logits, const DecoderOptions& options = {},
               std::span<result_slot> ffn_results = {}) const {
    check(pool, tokens, state, logits);
    if (!ffn_results.empty() && ffn_results.size() != blocks_.size()) {
      throw ShapeError("[decoder] ffn_results has " + std::to_string(ffn_results.size()) +
                       " entries, expected " + std::to_string(blocks_.size()));
    }
    run(pool, tokens, state, logits, options, ffn_results);
  }

  // ---- training -----------------------------------------------------------------------------

  /// Tape bytes of one training step over n = B * T tokens (see docs/training.md).
  [[nodiscard]] std::size_t training_tape_bytes(std::size_t n, bool recompute = false) const {
    std::size_t blocks = 0;
    if (!recompute) {
      for (const auto& b : blocks_) blocks += b.tape_bytes(n);
    }
    return (blocks_.size() + 2) * Arena::bytes_for<float>(n * cfg_.d_model) +
           Arena::bytes_for<float>(n * cfg_.vocab_size) + 2 * Arena::bytes_for<std::int32_t>(n) +
           blocks;
  }
  /// Scratch bytes of forward_train() and backward() over n tokens (recompute: plus one block
  /// output; the block tape is separate, block_tape_bytes).
  [[nodiscard]] std::size_t training_workspace_bytes(std::size_t n, bool recompute = false) const {
    std::size_t blocks = 0;
    for (const auto& b : blocks_) blocks = std::max(blocks, b.training_workspace_bytes(n));
    const std::size_t rows = Arena::bytes_for<float>(n * cfg_.d_model);
    return (recompute ? 3 : 2) * rows + 2 * Arena::bytes_for<float>(n) + blocks;
  }
  /// The largest tape of one block over n tokens (the recompute mode's per-block tape).
  [[nodiscard]] std::size_t block_tape_bytes(std::size_t n) const {
    std::size_t m = 0;
    for (const auto& b : blocks_) m = std::max(m, b.tape_bytes(n));
    return m;
  }

  /// A training state for `batch` sequences of `seq_len` tokens per step (allocated here, once).
  [[nodiscard]] TrainingState make_training_state(std::size_t batch, std::size_t seq_len,
                                                  bool recompute = false) const {
    check_config(batch > 0 && seq_len > 0, "decoder", "batch and seq_len must be > 0");
    const std::size_t n = batch * seq_len;
    return TrainingState(batch, seq_len, recompute, blocks_.size(),
                         training_tape_bytes(n, recompute), training_workspace_bytes(n, recompute),
                         recompute ? block_tape_bytes(n) : 0);
  }

  /// Forward pass of a training step: tokens and targets hold B' <= B sequences of T tokens
  /// (B' * T ids each, row b*T + t = token t of sequence b); targets equal to opts.ignore_id are
  /// not counted. Returns the loss; keeps what backward() needs in `state`. Throws (before any
  /// work) on an id out of range, a size that is not whole sequences, or too little scratch.
  TrainingLoss forward_train(ThreadPool& pool, std::span<const std::int32_t> tokens,
                             std::span<const std::int32_t> targets, TrainingState& state,
                             const TrainingOptions& opts = {}) const {
    check_training(pool, tokens, targets, state, opts);
    const std::size_t n = tokens.size(), d = cfg_.d_model, seq_len = state.seq_len_;
    TrainingState& st = state;
    st.ready_ = false;
    st.tape_.reset();
    st.scratch_.reset();
    auto* tok = st.tape_.template alloc<std::int32_t>(n);
    auto* tgt = st.tape_.template alloc<std::int32_t>(n);
    std::copy(tokens.begin(), tokens.end(), tok);
    std::copy(targets.begin(), targets.end(), tgt);
    st.tokens_ = {tok, n};
    st.targets_ = {tgt, n};
    st.options_ = opts;
    for (auto& h : st.h_) h = MatrixView<float>(st.tape_.template alloc<float>(n * d), n, d);

    embed_rows(pool, emb_, st.tokens_, static_cast<float>(cfg_.embedding_multiplier), st.h_[0]);
    ForwardOptions fo;
    fo.training = opts.training;
    fo.step = opts.step;
    float aux = 0.0f;
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      Arena& tape = st.recompute_ ? st.block_tape_ : st.tape_;
      if (st.recompute_) st.block_tape_.reset();
      if constexpr (std::is_void_v<ffn_result_type>) {
        blocks_[l].forward_train(pool, st.h_[l], st.h_[l + 1], seq_len, st.scratch_, tape,
                                 st.saved_[l], fo);
      } else {
        st.results_[l] = blocks_[l].forward_train(pool, st.h_[l], st.h_[l + 1], seq_len,
                                                  st.scratch_, tape, st.saved_[l], fo);
        aux += detail::aux_loss(st.results_[l]);
      }
    }
    st.hn_ = MatrixView<float>(st.tape_.template alloc<float>(n * d), n, d);
    detail::rms_norm_rows_parallel(pool, st.h_.back(), final_norm_.data(), st.hn_,
                                   static_cast<float>(cfg_.rms_eps));
    st.logits_ =
        MatrixView<float>(st.tape_.template alloc<float>(n * cfg_.vocab_size), n, cfg_.vocab_size);
    head_forward(pool, st.hn_, st.logits_);

    Arena::Scope scope(st.scratch_);
    float* row_loss = st.scratch_.template alloc<float>(n);
    const CrossEntropySum ce =
        softmax_cross_entropy(pool, st.logits_, st.targets_, opts.ignore_id, row_loss);
    st.counted_ = ce.counted;
    st.ready_ = true;
    TrainingLoss r;
    r.ce = static_cast<float>(ce.mean());
    r.aux = aux;
    r.loss = r.ce + aux;
    r.counted = ce.counted;
    return r;
  }

  /// Backward pass of the step forward_train() recorded in `state`: adds loss_scale * dL/dtheta
  /// to every non-empty view in `grads`. Consumes the step (a second call throws).
  void backward(ThreadPool& pool, TrainingState& state, Grads& grads) const {
    TrainingState& st = state;
    if (!st.ready_) {
      throw ConfigError("[decoder] backward() needs a forward_train() first (once per step)");
    }
    check_grads(grads);
    st.ready_ = false;
    const std::size_t n = st.tokens_.size(), d = cfg_.d_model, v = cfg_.vocab_size;
    const std::size_t seq_len = st.seq_len_;
    const TrainingOptions& opts = st.options_;
    const auto eps = static_cast<float>(cfg_.rms_eps);
    Arena& scratch = st.scratch_;
    scratch.reset();
    MatrixView<float> da(scratch.template alloc<float>(n * d), n, d);
    MatrixView<float> db(scratch.template alloc<float>(n * d), n, d);
    float* r = scratch.template alloc<float>(n);

    // 1. loss -> logits (softmax cross-entropy, mean over the counted targets, output multiplier).
    const float g = st.counted_ ? opts.loss_scale * static_cast<float>(cfg_.output_multiplier) /
                                      static_cast<float>(st.counted_)
                                : 0.0f;
    softmax_cross_entropy_backward(pool, st.logits_, st.targets_, opts.ignore_id, g);
    // 2. head: db = dlogits . head^T; head (or tied table) gradient.
    fill(db.data, n * d, 0.0f);
    const MatrixView<const float> dlogits = st.logits_, hn = st.hn_;
    if (head_) {
      matmul_backward_weight(pool, hn, dlogits, grads.head);
      matmul_backward_input(pool, dlogits, *head_, db);
    } else {
      if (!grads.embedding.empty()) {
        tied_logits_backward_weight(pool, hn, dlogits, {grads.embedding.data(), v, d});
      }
      tied_logits_backward_input(pool, dlogits, emb_, db);
    }
    // 3. final norm.
    fill(da.data, n * d, 0.0f);
    detail::rms_norm_backward_rows(pool, st.h_.back(), final_norm_.data(), db, da,
                                   grads.final_norm.empty() ? nullptr : grads.final_norm.data(),
                                   eps, r);
    // 4. blocks, last to first (da = dL/d(output of block l), db receives dL/d(its input)).
    ForwardOptions fo;
    fo.training = opts.training;
    fo.step = opts.step;
    BackwardOptions bo;
    bo.loss_scale = opts.loss_scale;
    for (std::size_t l = blocks_.size(); l-- > 0;) {
      fill(db.data, n * d, 0.0f);
      if (st.recompute_) {
        Arena::Scope scope(scratch);
        MatrixView<float> y(scratch.template alloc<float>(n * d), n, d);
        st.block_tape_.reset();
        blocks_[l].forward_train(pool, st.h_[l], y, seq_len, scratch, st.block_tape_, st.saved_[l],
                                 fo);
        blocks_[l].backward(pool, st.h_[l], st.saved_[l], da, db, grads.blocks[l], scratch, bo);
      } else {
        blocks_[l].backward(pool, st.h_[l], st.saved_[l], da, db, grads.blocks[l], scratch, bo);
      }
      std::swap(da, db);
    }
    // 5. embedding.
    if (!grads.embedding.empty()) {
      embed_backward(pool, st.tokens_, da, static_cast<float>(cfg_.embedding_multiplier),
                     {grads.embedding.data(), v, d});
    }
  }

  /// Convenience: one decode step; logits of the new token into `logits` [V].
  void step(ThreadPool& pool, std::int32_t token, DecoderState& state, std::span<float> logits,
            const DecoderOptions& options = {}) const {
    const std::int32_t tok[1] = {token};
    if (logits.size() != cfg_.logits_cols()) {
      throw ShapeError("[decoder] logits have shape " + shape_str({logits.size()}) + ", expected " +
                       shape_str({cfg_.logits_cols()}));
    }
    forward(pool, std::span<const std::int32_t>(tok, 1), state,
            MatrixView<float>(logits.data(), 1, cfg_.logits_cols()), options);
  }

 private:
  void run(ThreadPool& pool, std::span<const std::int32_t> tokens, DecoderState& state,
           MatrixView<float> logits, const DecoderOptions& options,
           std::span<result_slot> ffn_results) const {
    const std::size_t t_count = tokens.size(), d = cfg_.d_model;
    DecoderProfile* prof = options.profile;
    auto t0 = std::chrono::steady_clock::now();
    Arena& arena = state.arena();
    Arena::Scope scope(arena);
    MatrixView<float> h(arena.alloc<float>(t_count * d), t_count, d);
    const PartialSum* reduce = options.reduce ? &options.reduce : nullptr;

    embed_rows(pool, emb_, tokens, static_cast<float>(cfg_.embedding_multiplier), h);
    if (prof) prof->embedding += detail::lap(t0);

    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      if constexpr (std::is_void_v<ffn_result_type>) {
        blocks_[l].forward(pool, h, state.cache(), l, arena, prof, {}, reduce);
      } else {
        auto r = blocks_[l].forward(pool, h, state.cache(), l, arena, prof, {}, reduce);
        if (!ffn_results.empty()) ffn_results[l] = std::move(r);
      }
      if (options.on_layer) options.on_layer(l, h);
    }
    t0 = std::chrono::steady_clock::now();

    // Final norm of the rows whose logits are wanted, then the head.
    const std::size_t rows = logits.rows;
    MatrixView<const float> hs = h.rows_slice(t_count - rows, rows);
    MatrixView<float> hn(arena.alloc<float>(rows * d), rows, d);
    detail::rms_norm_rows_parallel(pool, hs, final_norm_.data(), hn,
                                   static_cast<float>(cfg_.rms_eps));
    if (prof) prof->norms += detail::lap(t0);
    head_forward(pool, hn, logits);
    if (prof) {
      prof->head += detail::lap(t0);
      prof->calls += 1;
      prof->tokens += t_count;
    }
  }

  /// logits = (hn . head) * output_multiplier (tied: the table's own view).
  void head_forward(ThreadPool& pool, MatrixView<const float> hn, MatrixView<float> logits) const {
    if (head_) {
      matmul(pool, hn, *head_, logits);
    } else {
      tied_logits(pool, hn, emb_, logits);
    }
    const auto omul = static_cast<float>(cfg_.output_multiplier);
    if (omul != 1.0f) {
      for (std::size_t r = 0; r < logits.rows; ++r) scale(logits.row(r), logits.cols, omul);
    }
  }

  void check_training(const ThreadPool& pool, std::span<const std::int32_t> tokens,
                      std::span<const std::int32_t> targets, const TrainingState& st,
                      const TrainingOptions& opts) const {
    const std::size_t n = tokens.size(), seq_len = st.seq_len_;
    if (seq_len == 0)
      throw ConfigError("[decoder] the training state is empty (make_training_state)");
    check_config(cfg_.logits_cols() == cfg_.vocab_size, "decoder",
                 "a vocabulary-slice head (head_vocab) is for inference only");
    if (n == 0 || n % seq_len != 0 || n > st.batch_ * seq_len) {
      throw ShapeError("[decoder] forward_train() got " + std::to_string(n) +
                       " tokens; the state takes whole sequences of " + std::to_string(seq_len) +
                       ", at most " + std::to_string(st.batch_));
    }
    if (targets.size() != n) {
      throw ShapeError("[decoder] targets have shape " + shape_str({targets.size()}) + ", tokens " +
                       shape_str({n}));
    }
    for (std::size_t t = 0; t < n; ++t) {
      if (tokens[t] < 0 || static_cast<std::size_t>(tokens[t]) >= cfg_.vocab_size) {
        throw TokenError("[decoder] token id " + std::to_string(tokens[t]) + " at index " +
                         std::to_string(t) + " is outside the vocabulary [0, " +
                         std::to_string(cfg_.vocab_size) + ")");
      }
      if (targets[t] != opts.ignore_id &&
          (targets[t] < 0 || static_cast<std::size_t>(targets[t]) >= cfg_.vocab_size)) {
        throw TokenError("[decoder] target id " + std::to_string(targets[t]) + " at index " +
                         std::to_string(t) + " is outside the vocabulary [0, " +
                         std::to_string(cfg_.vocab_size) + ") and is not the ignore id " +
                         std::to_string(opts.ignore_id));
      }
    }
    for (const auto& b : blocks_) {
      const std::size_t need = b.attention().training_scratch_bytes(seq_len);
      if (need > pool.scratch_bytes()) {
        throw CapacityError("[decoder] the thread pool's scratch (" +
                            std::to_string(pool.scratch_bytes()) +
                            " bytes per thread) cannot hold the attention rows of a sequence of " +
                            std::to_string(seq_len) + " tokens (" + std::to_string(need) +
                            " bytes); construct the ThreadPool with more scratch");
      }
    }
    if (emb_.dtype == EmbeddingDtype::kInt8 && !head_ &&
        pool.scratch_bytes() < cfg_.d_model * sizeof(float)) {
      throw CapacityError("[decoder] the thread pool's scratch cannot hold one embedding row");
    }
  }

  void check_grads(const Grads& g) const {
    const std::size_t v = cfg_.vocab_size, d = cfg_.d_model;
    if (!g.embedding.empty()) {
      if (emb_.dtype != EmbeddingDtype::kF32) {
        throw ConfigError("[decoder] the embedding table is " +
                          std::string(embedding_dtype_name(emb_.dtype)) +
                          ": only an f32 table is trainable (pass an empty span)");
      }
      check_shape("decoder", "gradient of embedding", {g.embedding.size()}, {v * d});
    }
    if (!g.final_norm.empty()) {
      check_shape("decoder", "gradient of final_norm", {g.final_norm.size()}, {d});
    }
    if (head_) {
      check_weight_grad(*head_, g.head, "decoder", "head");
    } else if (!g.head.frozen()) {
      throw ConfigError(
          "[decoder] the head is tied to the embedding: its gradient goes to "
          "Grads::embedding (leave Grads::head frozen)");
    }
    if (g.blocks.size() != blocks_.size()) {
      throw ShapeError("[decoder] Grads::blocks has " + std::to_string(g.blocks.size()) +
                       " entries, the model has " + std::to_string(blocks_.size()) + " blocks");
    }
  }

  DecoderConfig cfg_;
  EmbeddingTable emb_;
  std::vector<Block> blocks_;
  std::span<const float> final_norm_;
  std::optional<Head> head_;
};

MOE_SIMD_NAMESPACE_END
