// moe/models/grok1_config_json.hpp: Grok-1's config translator (tensor shapes + config.json ->
// grok1::Config).
//
// The release has no config file: the shapes of its tensors give vocab, width, layers, experts,
// d_ff and the attention widths, and the constants the shapes cannot tell are those of xai-org's
// run.py (grok1::Config defaults). An optional config.json next to ckpt-0/ (moe's addition) may
// override those constants and cross-check the shape-derived values:
//
//   ShapeFacts facts = ...;                                   // read off the tensors
//   std::optional<JsonConfig> json = read_json_config(path);  // strict: unknown keys are errors
//   Config c = translate_config(facts, json, "'DIR/config.json'", "'DIR/ckpt-0'");
//
// Errors are ConfigError naming the file and the key (FormatError for malformed JSON).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include <moe/core/error.hpp>
#include <moe/io/json.hpp>
#include <moe/models/grok1_config.hpp>

namespace moe::grok1 {

/// Keys config.json may set: overrides for what shapes cannot tell, and cross-checks.
struct JsonConfig {
  std::optional<std::size_t> head_dim, top_k, max_seq_len;
  std::optional<double> rope_base, rms_eps, embedding_multiplier, output_multiplier,
      attn_logit_multiplier, attn_softcap;
  std::optional<std::int32_t> pad_id, bos_id, eos_id;
  // must agree with the shapes when present
  std::optional<std::size_t> vocab_size, d_model, n_layers, n_q_heads, n_kv_heads, n_experts, d_ff;
};

/// What the tensor shapes say: the embedding [vocab, D], the file count, layer 0's expert gate
/// [E, D, F], query [D, Hq*dh] and key [D, Hkv*dh].
struct ShapeFacts {
  std::size_t vocab_size = 0, d_model = 0, n_layers = 0, n_experts = 0, d_ff = 0;
  std::size_t q_width = 0, kv_width = 0;
};

namespace detail {

struct JsonIntKey {
  const char* name;
  std::optional<std::size_t> JsonConfig::*field;
};
struct JsonNumberKey {
  const char* name;
  std::optional<double> JsonConfig::*field;
  bool positive;  ///< false: >= 0
};
struct JsonIdKey {
  const char* name;
  std::optional<std::int32_t> JsonConfig::*field;
};

inline constexpr JsonIntKey kJsonInts[] = {
    {"head_dim", &JsonConfig::head_dim},       {"top_k", &JsonConfig::top_k},
    {"max_seq_len", &JsonConfig::max_seq_len}, {"vocab_size", &JsonConfig::vocab_size},
    {"d_model", &JsonConfig::d_model},         {"n_layers", &JsonConfig::n_layers},
    {"n_q_heads", &JsonConfig::n_q_heads},     {"n_kv_heads", &JsonConfig::n_kv_heads},
    {"n_experts", &JsonConfig::n_experts},     {"d_ff", &JsonConfig::d_ff},
};
inline constexpr JsonNumberKey kJsonNumbers[] = {
    {"rope_base", &JsonConfig::rope_base, true},
    {"rms_eps", &JsonConfig::rms_eps, true},
    {"embedding_multiplier", &JsonConfig::embedding_multiplier, true},
    {"output_multiplier", &JsonConfig::output_multiplier, true},
    {"attn_logit_multiplier", &JsonConfig::attn_logit_multiplier, true},
    {"attn_softcap", &JsonConfig::attn_softcap, false},
};
inline constexpr JsonIdKey kJsonIds[] = {{"pad_id", &JsonConfig::pad_id},
                                         {"bos_id", &JsonConfig::bos_id},
                                         {"eos_id", &JsonConfig::eos_id}};

/// Reads one key into `c`; false when the key is unknown.
inline bool read_json_key(JsonConfig& c, const std::string& key, const io::JsonValue& v,
                          const std::string& where) {
  for (const JsonIntKey& k : kJsonInts) {
    if (key != k.name) continue;
    if (!v.is_integer() || v.as_int64() <= 0 || v.as_int64() > (std::int64_t{1} << 40)) {
      throw ConfigError(where + "key '" + key + "' must be a positive integer, got " +
                        v.describe());
    }
    c.*k.field = static_cast<std::size_t>(v.as_int64());
    return true;
  }
  for (const JsonNumberKey& k : kJsonNumbers) {
    if (key != k.name) continue;
    if (!v.is_number() || !std::isfinite(v.as_number()) ||
        (k.positive ? v.as_number() <= 0 : v.as_number() < 0)) {
      throw ConfigError(where + "key '" + key + "' must be a " +
                        (k.positive ? "positive" : "non-negative") + " number, got " +
                        v.describe());
    }
    c.*k.field = v.as_number();
    return true;
  }
  for (const JsonIdKey& k : kJsonIds) {
    if (key != k.name) continue;
    if (!v.is_integer() || v.as_int64() < 0 || v.as_int64() > INT32_MAX) {
      throw ConfigError(where + "key '" + key + "' must be a token id (integer >= 0), got " +
                        v.describe());
    }
    c.*k.field = static_cast<std::int32_t>(v.as_int64());
    return true;
  }
  return false;
}

}  // namespace detail

/// Reads a strict config.json (see the file comment). Throws ConfigError naming the file and
/// the key, FormatError for malformed JSON, IoError when it cannot be read.
inline JsonConfig read_json_config(const std::filesystem::path& path) {
  const io::JsonValue root = io::read_json_file(path);
  const std::string where = "[grok1] '" + path.string() + "': ";
  if (!root.is_object()) {
    throw ConfigError(where + "expected a JSON object, got " + root.describe());
  }
  JsonConfig c;
  for (const auto& [key, v] : root.as_object()) {
    if (!detail::read_json_key(c, key, v, where)) {
      throw ConfigError(where + "unknown key '" + key +
                        "' (known: head_dim, top_k, max_seq_len, rope_base, rms_eps, "
                        "embedding_multiplier, output_multiplier, attn_logit_multiplier, "
                        "attn_softcap, pad_id, bos_id, eos_id, and the shape-derived vocab_size, "
                        "d_model, n_layers, n_q_heads, n_kv_heads, n_experts, d_ff)");
    }
  }
  return c;
}

/// The config of a checkpoint with these shapes, then `json` (overrides and cross-checks).
/// `json_name` names the JSON file in messages ("config.json" when there is none); `tensors`
/// names where the shapes came from. Throws ConfigError.
inline Config translate_config(const ShapeFacts& s, const std::optional<JsonConfig>& json,
                               const std::string& json_name, const std::string& tensors) {
  Config c;  // non-shape defaults: the released model's (grok1_config.hpp)
  c.vocab_size = s.vocab_size;
  c.d_model = s.d_model;
  c.n_layers = s.n_layers;
  c.n_experts = s.n_experts;
  c.d_ff = s.d_ff;

  std::size_t hd = 128;  // Grok-1's key_size
  if (json && json->head_dim) {
    hd = *json->head_dim;
  } else if (json && json->n_q_heads && *json->n_q_heads != 0 &&
             s.q_width % *json->n_q_heads == 0) {
    hd = s.q_width / *json->n_q_heads;
  }
  if (s.q_width % hd != 0 || s.kv_width % hd != 0) {
    throw ConfigError("[grok1] cannot infer the attention heads: the query width " +
                      std::to_string(s.q_width) + " and key width " + std::to_string(s.kv_width) +
                      " (" + tensors + ") are not multiples of head_dim " + std::to_string(hd) +
                      "; set \"head_dim\" in " + json_name);
  }
  c.head_dim = hd;
  c.n_q_heads = s.q_width / hd;
  c.n_kv_heads = s.kv_width / hd;
  // The release's constants are sqrt(6144) and 1/sqrt(128) as written in run.py.
  c.embedding_multiplier =
      c.d_model == 6144 ? 78.38367176906169 : std::sqrt(static_cast<double>(c.d_model));
  c.attn_logit_multiplier =
      hd == 128 ? 0.08838834764831845 : 1.0 / std::sqrt(static_cast<double>(hd));
  c.top_k = std::min<std::size_t>(2, c.n_experts);

  if (json) {
    const JsonConfig& j = *json;
    auto agree = [&](const char* key, const std::optional<std::size_t>& v, std::size_t have) {
      if (v && *v != have) {
        throw ConfigError("[grok1] " + json_name + " says " + key + " = " + std::to_string(*v) +
                          " but the checkpoint's tensors have " + key + " = " +
                          std::to_string(have));
      }
    };
    agree("vocab_size", j.vocab_size, c.vocab_size);
    agree("d_model", j.d_model, c.d_model);
    agree("n_layers", j.n_layers, c.n_layers);
    agree("n_q_heads", j.n_q_heads, c.n_q_heads);
    agree("n_kv_heads", j.n_kv_heads, c.n_kv_heads);
    agree("n_experts", j.n_experts, c.n_experts);
    agree("d_ff", j.d_ff, c.d_ff);
    if (j.top_k) c.top_k = *j.top_k;
    if (j.max_seq_len) c.max_seq_len = *j.max_seq_len;
    if (j.rope_base) c.rope_base = *j.rope_base;
    if (j.rms_eps) c.rms_eps = *j.rms_eps;
    if (j.embedding_multiplier) c.embedding_multiplier = *j.embedding_multiplier;
    if (j.output_multiplier) c.output_multiplier = *j.output_multiplier;
    if (j.attn_logit_multiplier) c.attn_logit_multiplier = *j.attn_logit_multiplier;
    if (j.attn_softcap) c.attn_softcap = *j.attn_softcap;
    if (j.pad_id) c.pad_id = *j.pad_id;
    if (j.bos_id) c.bos_id = *j.bos_id;
    if (j.eos_id) c.eos_id = *j.eos_id;
  }
  // Vocabularies smaller than the release's special ids (tiny test models): keep validate()
  // meaningful instead of failing on an id nobody set.
  if (!(json && json->eos_id) && static_cast<std::size_t>(c.eos_id) >= c.vocab_size) c.eos_id = 0;
  try {
    c.validate();
  } catch (const ConfigError& e) {
    throw ConfigError(std::string(e.what()) + " (config inferred from " + tensors +
                      (json ? " and " + json_name : "") + ")");
  }
  return c;
}

}  // namespace moe::grok1
