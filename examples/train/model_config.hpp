// The model configuration of the `train` example: Grok-1's architecture at a small size by
// default, or a JSON file (--config) with the keys of an export's config.json.
//
//   {"d_model": 128, "n_layers": 2, "n_experts": 4, "top_k": 1, "rope_base": 5000}
//
// Keys (all optional): vocab_size, d_model, n_layers, n_q_heads, n_kv_heads, head_dim, n_experts,
// top_k, d_ff, max_seq_len (positive integers); rope_base, rms_eps, embedding_multiplier,
// output_multiplier, attn_logit_multiplier (positive numbers); attn_softcap (>= 0, 0 = off);
// pad_id, bos_id, eos_id (token ids). Unset keys keep the defaults below, except that
// embedding_multiplier follows d_model (sqrt(d_model)), attn_logit_multiplier follows head_dim
// (1/sqrt(head_dim)), vocab_size and the special ids follow the tokenizer, and max_seq_len
// follows --seq. An export's config.json is a valid --config (it sets everything).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include <moe/core/error.hpp>
#include <moe/io/json.hpp>
#include <moe/models/grok1_config.hpp>

namespace train_example {

/// Grok-1's structure at a size a 2-core machine trains in under an hour: D 256, 4 layers, GQA
/// 8 query / 2 KV heads of 32, 8 experts top-2 of width 512, sandwich norms, soft-cap 30,
/// multipliers sqrt(D), 1/sqrt(3), 1/sqrt(head_dim); RoPE base and eps as Grok-1.
inline moe::grok1::Config default_model_config() {
  moe::grok1::Config c;
  c.d_model = 256;
  c.n_layers = 4;
  c.n_q_heads = 8;
  c.n_kv_heads = 2;
  c.head_dim = 32;
  c.n_experts = 8;
  c.top_k = 2;
  c.d_ff = 512;
  c.embedding_multiplier = 16.0;                  // sqrt(256)
  c.attn_logit_multiplier = 0.17677669529663687;  // 1/sqrt(32)
  return c;
}

/// What a --config file set (to tell "set" from "default" when filling in the rest).
struct ModelConfigFile {
  moe::grok1::Config config = default_model_config();
  bool vocab_size = false, max_seq_len = false, pad_id = false, bos_id = false, eos_id = false;
};

inline ModelConfigFile read_model_config(const std::filesystem::path& path) {
  const moe::io::JsonValue root = moe::io::read_json_file(path);
  const std::string where = "[train] '" + path.string() + "': ";
  if (!root.is_object()) {
    throw moe::ConfigError(where + "expected a JSON object, got " + root.describe());
  }
  ModelConfigFile f;
  moe::grok1::Config& c = f.config;
  bool emb_mult = false, att_mult = false;
  for (const auto& [key, v] : root.as_object()) {
    auto integer = [&](std::int64_t lo) {
      if (!v.is_integer() || v.as_int64() < lo || v.as_int64() > (std::int64_t{1} << 40)) {
        throw moe::ConfigError(where + "key '" + key + "' must be an integer >= " +
                               std::to_string(lo) + ", got " + v.describe());
      }
      return v.as_int64();
    };
    auto number = [&](bool positive) {
      if (!v.is_number() || !std::isfinite(v.as_number()) ||
          (positive ? v.as_number() <= 0 : v.as_number() < 0)) {
        throw moe::ConfigError(where + "key '" + key + "' must be a " +
                               (positive ? "positive" : "non-negative") + " number, got " +
                               v.describe());
      }
      return v.as_number();
    };
    auto size = [&] { return static_cast<std::size_t>(integer(1)); };
    auto id = [&] { return static_cast<std::int32_t>(integer(0)); };
    if (key == "vocab_size") {
      c.vocab_size = size();
      f.vocab_size = true;
    } else if (key == "d_model") {
      c.d_model = size();
    } else if (key == "n_layers") {
      c.n_layers = size();
    } else if (key == "n_q_heads") {
      c.n_q_heads = size();
    } else if (key == "n_kv_heads") {
      c.n_kv_heads = size();
    } else if (key == "head_dim") {
      c.head_dim = size();
    } else if (key == "n_experts") {
      c.n_experts = size();
    } else if (key == "top_k") {
      c.top_k = size();
    } else if (key == "d_ff") {
      c.d_ff = size();
    } else if (key == "max_seq_len") {
      c.max_seq_len = size();
      f.max_seq_len = true;
    } else if (key == "rope_base") {
      c.rope_base = number(true);
    } else if (key == "rms_eps") {
      c.rms_eps = number(true);
    } else if (key == "embedding_multiplier") {
      c.embedding_multiplier = number(true);
      emb_mult = true;
    } else if (key == "output_multiplier") {
      c.output_multiplier = number(true);
    } else if (key == "attn_logit_multiplier") {
      c.attn_logit_multiplier = number(true);
      att_mult = true;
    } else if (key == "attn_softcap") {
      c.attn_softcap = number(false);
    } else if (key == "pad_id") {
      c.pad_id = id();
      f.pad_id = true;
    } else if (key == "bos_id") {
      c.bos_id = id();
      f.bos_id = true;
    } else if (key == "eos_id") {
      c.eos_id = id();
      f.eos_id = true;
    } else {
      throw moe::ConfigError(where + "unknown key '" + key +
                             "' (known: vocab_size, d_model, n_layers, n_q_heads, n_kv_heads, "
                             "head_dim, n_experts, top_k, d_ff, max_seq_len, rope_base, rms_eps, "
                             "embedding_multiplier, output_multiplier, attn_logit_multiplier, "
                             "attn_softcap, pad_id, bos_id, eos_id)");
    }
  }
  if (!emb_mult) c.embedding_multiplier = std::sqrt(static_cast<double>(c.d_model));
  if (!att_mult) c.attn_logit_multiplier = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  return f;
}

/// Completes a configuration with what the tokenizer and --seq decide, and checks that they
/// agree with what the file set. `tokenizer` names the tokenizer in messages.
inline moe::grok1::Config finish_model_config(ModelConfigFile f, const std::string& tokenizer,
                                              std::size_t vocab, std::int32_t pad, std::int32_t bos,
                                              std::int32_t eos, std::size_t seq) {
  moe::grok1::Config& c = f.config;
  if (f.vocab_size && c.vocab_size != vocab) {
    throw moe::ConfigError("[train] the tokenizer '" + tokenizer + "' has " +
                           std::to_string(vocab) + " pieces but the model config says vocab_size " +
                           std::to_string(c.vocab_size) +
                           ": the model must be trained with the tokenizer it was made for");
  }
  c.vocab_size = vocab;
  auto special = [&](bool set, std::int32_t& field, std::int32_t from_tok, const char* name) {
    if (set && from_tok >= 0 && field != from_tok) {
      throw moe::ConfigError("[train] the model config says " + std::string(name) + " = " +
                             std::to_string(field) + " but the tokenizer '" + tokenizer + "' has " +
                             name + " " + std::to_string(from_tok));
    }
    if (!set && from_tok >= 0) field = from_tok;
  };
  special(f.pad_id, c.pad_id, pad, "pad_id");
  special(f.bos_id, c.bos_id, bos, "bos_id");
  special(f.eos_id, c.eos_id, eos, "eos_id");
  if (!f.max_seq_len) c.max_seq_len = seq;
  if (c.max_seq_len < seq) {
    throw moe::ConfigError("[train] --seq " + std::to_string(seq) +
                           " exceeds the model config's max_seq_len " +
                           std::to_string(c.max_seq_len));
  }
  c.validate();
  return c;
}

}  // namespace train_example
