// moe/models/grok1_config.hpp: every Grok-1 hyperparameter, in one place.
//
// Values of the released 314B model come from xai-org/grok-1 run.py / model.py (usage:
// docs/decoder.md). Config::full() is that model; Config::tiny() and Config::demo()
// are small configurations with the same structure for tests and the demo. The translation into
// the components' configurations (attention, block, decoder, routing) is in models/grok1.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <moe/core/error.hpp>

namespace moe::grok1 {

struct Config {
  std::size_t vocab_size = 131072;  ///< 128 * 1024
  std::size_t d_model = 6144;       ///< emb_size, = 48 * 128
  std::size_t n_layers = 64;
  std::size_t n_q_heads = 48;
  std::size_t n_kv_heads = 8;  ///< GQA: query head h uses KV head h / (48 / 8)
  std::size_t head_dim = 128;  ///< key_size (values have the same size)
  std::size_t n_experts = 8;
  std::size_t top_k = 2;           ///< num_selected_experts; gates are NOT renormalised
  std::size_t d_ff = 32768;        ///< int(8 * 6144) * 2 // 3, rounded up to a multiple of 8
  std::size_t max_seq_len = 8192;  ///< context length and KV-cache capacity
  double rope_base = 10000.0;      ///< half-split ("NeoX") RoPE over all head dims
  double rms_eps = 1e-5;
  double embedding_multiplier = 78.38367176906169;     ///< sqrt(6144), applied after lookup
  double output_multiplier = 0.5773502691896257;       ///< 1/sqrt(3), applied to the logits
  double attn_logit_multiplier = 0.08838834764831845;  ///< 1/sqrt(128) ("attn_output_multiplier")
  double attn_softcap = 30.0;                          ///< logits -> 30 tanh(logits / 30)
  std::int32_t pad_id = 0;
  std::int32_t bos_id = 1;  ///< never added by the reference runner
  std::int32_t eos_id = 2;

  /// The released 314B model.
  static Config full() { return Config{}; }

  /// Tiny structure-preserving config for unit tests (GQA 4/2, 8 experts top-2, 2 layers).
  static Config tiny() {
    Config c;
    c.vocab_size = 64;
    c.d_model = 32;
    c.n_layers = 2;
    c.n_q_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 8;
    c.n_experts = 8;
    c.top_k = 2;
    c.d_ff = 48;
    c.max_seq_len = 64;
    c.attn_logit_multiplier = 0.35355339059327373;  // 1/sqrt(8)
    c.embedding_multiplier = 5.656854249492381;     // sqrt(32)
    return c;
  }

  /// Small config of the built-in demo checkpoint: 12 layers (so the checkpoint's lexicographic
  /// layer order 0, 1, 10, 11, 2, ... matters), vocab 1024 to match the demo tokenizer.
  static Config demo() {
    Config c;
    c.vocab_size = 1024;
    c.d_model = 256;
    c.n_layers = 12;
    c.n_q_heads = 8;
    c.n_kv_heads = 2;
    c.head_dim = 32;
    c.n_experts = 8;
    c.top_k = 2;
    c.d_ff = 512;
    c.max_seq_len = 512;
    c.attn_logit_multiplier = 0.17677669529663687;  // 1/sqrt(32)
    c.embedding_multiplier = 16.0;                  // sqrt(256)
    return c;
  }

  [[nodiscard]] std::size_t q_dim() const noexcept { return n_q_heads * head_dim; }
  [[nodiscard]] std::size_t kv_dim() const noexcept { return n_kv_heads * head_dim; }
  [[nodiscard]] std::size_t kv_group() const noexcept { return n_q_heads / n_kv_heads; }

  /// Parameters of one decoder layer: attention, experts, router, 4 norms.
  [[nodiscard]] std::size_t layer_parameters() const noexcept {
    const std::size_t attention = d_model * (2 * q_dim() + 2 * kv_dim());
    return attention + n_experts * 3 * d_model * d_ff + d_model * n_experts + 4 * d_model;
  }
  /// All parameters, the tied head counted once (full(): 315,684,820,992, published as "314B").
  [[nodiscard]] std::size_t parameters() const noexcept {
    return vocab_size * d_model + d_model + n_layers * layer_parameters();
  }
  /// Parameters used per token: top_k of n_experts experts (full(): 83,756,587,008, 26.5%).
  [[nodiscard]] std::size_t active_parameters() const noexcept {
    return parameters() - n_layers * (n_experts - top_k) * 3 * d_model * d_ff;
  }
  /// KV-cache bytes per position (all layers, keys and values) at `bytes_per_value` (4 = f32).
  [[nodiscard]] std::size_t kv_bytes_per_position(std::size_t bytes_per_value = 4) const noexcept {
    return 2 * n_layers * kv_dim() * bytes_per_value;
  }

  /// Throws ConfigError("[grok1] ...") naming the first inconsistent value.
  void validate() const {
    auto need = [](bool ok, const std::string& msg) { check_config(ok, "grok1", msg); };
    need(vocab_size > 0, "vocab_size must be > 0");
    need(d_model > 0, "d_model must be > 0");
    need(n_layers > 0, "n_layers must be > 0");
    need(head_dim > 0 && head_dim % 2 == 0,
         "head_dim must be even and > 0, got " + std::to_string(head_dim));
    need(n_q_heads > 0 && n_kv_heads > 0, "n_q_heads and n_kv_heads must be > 0");
    need(n_q_heads % n_kv_heads == 0, "n_q_heads (" + std::to_string(n_q_heads) +
                                          ") must be a multiple of n_kv_heads (" +
                                          std::to_string(n_kv_heads) + ")");
    need(n_experts > 0, "n_experts must be > 0");
    need(top_k > 0 && top_k <= n_experts,
         "top_k (" + std::to_string(top_k) +
             ") must be in [1, n_experts = " + std::to_string(n_experts) + "]");
    need(d_ff > 0, "d_ff must be > 0");
    need(max_seq_len > 0, "max_seq_len must be > 0");
    need(rope_base > 0, "rope_base must be > 0");
    need(rms_eps > 0, "rms_eps must be > 0");
    need(attn_softcap >= 0, "attn_softcap must be >= 0 (0 = off)");
    need(eos_id >= 0 && static_cast<std::size_t>(eos_id) < vocab_size, "eos_id out of vocabulary");
  }
};

}  // namespace moe::grok1
