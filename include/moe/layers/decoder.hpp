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
#include <moe/layers/kv_cache.hpp>
#include <moe/layers/transformer_block.hpp>
#include <moe/ops/embedding.hpp>
#include <moe/ops/matmul.hpp>
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

  void validate() const {
    check_config(vocab_size > 0 && d_model > 0, "decoder", "vocab_size and d_model must be > 0");
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
};

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
    if (head_) check_weight_shape(*head_, "decoder", "head", d, v);
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
    const std::size_t T = tokens.size();
    if (T == 0) throw ShapeError("[decoder] forward() needs at least one token");
    for (std::size_t t = 0; t < T; ++t) {
      if (tokens[t] < 0 || static_cast<std::size_t>(tokens[t]) >= cfg_.vocab_size) {
        throw TokenError("[decoder] token id " + std::to_string(tokens[t]) + " at index " +
                         std::to_string(t) + " is outside the vocabulary [0, " +
                         std::to_string(cfg_.vocab_size) + ")");
      }
    }
    if (T > state.max_tokens()) {
      throw CapacityError("[decoder] " + std::to_string(T) +
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
      blocks_[l].attention().check(pool, cache, l, T);
    }
    if (logits.data == nullptr || logits.cols != cfg_.vocab_size ||
        (logits.rows != T && logits.rows != 1)) {
      throw ShapeError("[decoder] logits have shape " + shape_str({logits.rows, logits.cols}) +
                       ", expected " + shape_str({T, cfg_.vocab_size}) + " (every token) or " +
                       shape_str({1, cfg_.vocab_size}) + " (the last token)");
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

  /// Convenience: one decode step; logits of the new token into `logits` [V].
  void step(ThreadPool& pool, std::int32_t token, DecoderState& state, std::span<float> logits,
            const DecoderOptions& options = {}) const {
    const std::int32_t tok[1] = {token};
    if (logits.size() != cfg_.vocab_size) {
      throw ShapeError("[decoder] logits have shape " + shape_str({logits.size()}) + ", expected " +
                       shape_str({cfg_.vocab_size}));
    }
    forward(pool, std::span<const std::int32_t>(tok, 1), state,
            MatrixView<float>(logits.data(), 1, cfg_.vocab_size), options);
  }

 private:
  void run(ThreadPool& pool, std::span<const std::int32_t> tokens, DecoderState& state,
           MatrixView<float> logits, const DecoderOptions& options,
           std::span<result_slot> ffn_results) const {
    const std::size_t T = tokens.size(), d = cfg_.d_model;
    DecoderProfile* prof = options.profile;
    auto t0 = std::chrono::steady_clock::now();
    Arena& arena = state.arena();
    Arena::Scope scope(arena);
    MatrixView<float> h(arena.alloc<float>(T * d), T, d);

    embed_rows(pool, emb_, tokens, static_cast<float>(cfg_.embedding_multiplier), h);
    if (prof) prof->embedding += detail::lap(t0);

    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      if constexpr (std::is_void_v<ffn_result_type>) {
        blocks_[l].forward(pool, h, state.cache(), l, arena, prof);
      } else {
        auto r = blocks_[l].forward(pool, h, state.cache(), l, arena, prof);
        if (!ffn_results.empty()) ffn_results[l] = std::move(r);
      }
      if (options.on_layer) options.on_layer(l, h);
    }
    t0 = std::chrono::steady_clock::now();

    // Final norm of the rows whose logits are wanted, then the head.
    const std::size_t rows = logits.rows;
    MatrixView<const float> hs = h.rows_slice(T - rows, rows);
    MatrixView<float> hn(arena.alloc<float>(rows * d), rows, d);
    detail::rms_norm_rows_parallel(pool, hs, final_norm_.data(), hn,
                                   static_cast<float>(cfg_.rms_eps));
    if (prof) prof->norms += detail::lap(t0);
    if (head_) {
      matmul(pool, MatrixView<const float>(hn), *head_, logits);
    } else {
      tied_logits(pool, MatrixView<const float>(hn), emb_, logits);
    }
    const auto omul = static_cast<float>(cfg_.output_multiplier);
    if (omul != 1.0f) {
      for (std::size_t r = 0; r < rows; ++r) scale(logits.row(r), logits.cols, omul);
    }
    if (prof) {
      prof->head += detail::lap(t0);
      prof->calls += 1;
      prof->tokens += T;
    }
  }

  DecoderConfig cfg_;
  EmbeddingTable emb_;
  std::vector<Block> blocks_;
  std::span<const float> final_norm_;
  std::optional<Head> head_;
};

MOE_SIMD_NAMESPACE_END
