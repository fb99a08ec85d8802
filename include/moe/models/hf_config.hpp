// moe/models/hf_config.hpp: Hugging Face MoE checkpoints: config.json in moe's names.
//
//   moe::hf::Config cfg = moe::hf::read_config("DIR");          // DIR/config.json
//
// The tensors of each family (names, shapes, roles) are in hf_tensors.hpp, the model built from
// them in hf_model.hpp.
//
// Families (the `architectures` entry of config.json; `model_type` when it is absent), as the
// public modeling code of huggingface/transformers defines them (models/mixtral, models/qwen2_moe,
// models/olmoe; docs/hf-checkpoints.md lists every field):
//   MixtralForCausalLM   pre-norm decoder, GQA, half-split RoPE (rotate_half), optional sliding
//                        window; every layer a sparse MoE block: softmax router, top-k,
//                        renormalised, SiLU-gated experts w1 (gate), w3 (up), w2 (down).
//   Qwen2MoeForCausalLM  as Mixtral plus q/k/v biases; routing renormalised only when
//                        norm_topk_prob; a shared expert scaled by sigmoid(x . shared_expert_gate);
//                        layers listed in mlp_only_layers, or not on the decoder_sparse_step
//                        grid, are dense SiLU-gated MLPs of width intermediate_size.
//   OlmoeForCausalLM     as Mixtral plus RMSNorm of the whole q and k projections (q_norm, k_norm,
//                        before RoPE); routing renormalised only when norm_topk_prob.
// Absent fields take the defaults of the family's configuration class, as transformers does.
// A field whose value moe cannot honour (hidden_act other than silu, RoPE scaling, Qwen2-MoE's
// use_sliding_window, OLMoE's clip_qkv or attention_bias, ...) is a ConfigError naming the field,
// its value and the file; an unknown architecture is a ConfigError listing the supported ones.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <moe/core/error.hpp>
#include <moe/io/json.hpp>
#include <moe/io/safetensors.hpp>

namespace moe::hf {

enum class Family : std::uint8_t { kMixtral, kQwen2Moe, kOlmoe };

/// The transformers class name ("MixtralForCausalLM", ...).
inline constexpr std::string_view architecture_name(Family f) noexcept {
  switch (f) {
    case Family::kMixtral:
      return "MixtralForCausalLM";
    case Family::kQwen2Moe:
      return "Qwen2MoeForCausalLM";
    case Family::kOlmoe:
      return "OlmoeForCausalLM";
  }
  return "?";
}

/// The config.json model_type ("mixtral", "qwen2_moe", "olmoe").
inline constexpr std::string_view model_type_name(Family f) noexcept {
  switch (f) {
    case Family::kMixtral:
      return "mixtral";
    case Family::kQwen2Moe:
      return "qwen2_moe";
    case Family::kOlmoe:
      return "olmoe";
  }
  return "?";
}

/// A decoder layer's feed-forward block.
enum class Mlp : std::uint8_t {
  kSparse,  ///< routed experts (plus the shared expert when d_ff_shared > 0)
  kDense,   ///< one SiLU-gated MLP of width d_ff_dense
};

/// Everything moe needs from config.json, in moe's names.
struct Config {
  Family family = Family::kMixtral;
  std::size_t vocab_size = 0;
  std::size_t d_model = 0;  ///< hidden_size
  std::size_t n_layers = 0;
  std::size_t n_q_heads = 0;
  std::size_t n_kv_heads = 0;
  std::size_t head_dim = 0;  ///< head_dim, or hidden_size / num_attention_heads
  std::size_t n_experts = 0;
  std::size_t top_k = 0;            ///< num_experts_per_tok
  std::size_t d_ff_expert = 0;      ///< width of one routed expert
  std::size_t d_ff_dense = 0;       ///< width of the dense layers' MLP (0: no dense layer)
  std::size_t d_ff_shared = 0;      ///< width of the shared expert (0: none)
  bool shared_expert_gate = false;  ///< the shared expert is scaled by sigmoid(x . w), w [1, D]
  bool norm_topk_prob = true;       ///< renormalise the top-k softmax probabilities
  bool qkv_bias = false;            ///< q_proj, k_proj, v_proj have biases
  bool qk_norm = false;             ///< RMSNorm over the whole q [Hq*dh] and k [Hkv*dh]
  double rope_theta = 10000.0;      ///< half-split RoPE over all head dims
  double rms_norm_eps = 1e-6;       ///< every RMSNorm: w * x / sqrt(mean(x^2) + eps)
  std::size_t sliding_window = 0;   ///< 0: full causal; else query i sees keys j > i - window
  std::size_t max_position_embeddings = 0;
  bool tie_word_embeddings = false;             ///< no lm_head.weight: the head is embed_tokens
  std::vector<Mlp> layers;                      ///< one per decoder layer
  std::optional<io::safetensors::DType> dtype;  ///< torch_dtype (or dtype), when given
  std::optional<std::int64_t> bos_token_id;
  std::vector<std::int64_t> eos_token_ids;

  [[nodiscard]] std::size_t q_dim() const noexcept { return n_q_heads * head_dim; }
  [[nodiscard]] std::size_t kv_dim() const noexcept { return n_kv_heads * head_dim; }
  [[nodiscard]] bool sparse(std::size_t layer) const noexcept {
    return layers[layer] == Mlp::kSparse;
  }

  /// Parameters of one layer: attention (+ biases, q/k norms), its MLP block, two norms.
  [[nodiscard]] std::size_t layer_parameters(std::size_t layer) const noexcept {
    std::size_t n = d_model * (2 * q_dim() + 2 * kv_dim()) + 2 * d_model;
    if (qkv_bias) n += q_dim() + 2 * kv_dim();
    if (qk_norm) n += q_dim() + kv_dim();
    if (!sparse(layer)) return n + 3 * d_model * d_ff_dense;
    n += n_experts * 3 * d_model * d_ff_expert + n_experts * d_model;
    n += 3 * d_model * d_ff_shared + (shared_expert_gate ? d_model : 0);
    return n;
  }
  /// All parameters (Mixtral 8x7B: 46,702,792,704).
  [[nodiscard]] std::size_t parameters() const noexcept {
    std::size_t n = vocab_size * d_model * (tie_word_embeddings ? 1 : 2) + d_model;
    for (std::size_t l = 0; l < n_layers; ++l) n += layer_parameters(l);
    return n;
  }
  /// Parameters a token uses: top_k of n_experts routed experts (Mixtral 8x7B: 12,879,925,248).
  [[nodiscard]] std::size_t active_parameters() const noexcept {
    std::size_t n = parameters();
    for (std::size_t l = 0; l < n_layers; ++l) {
      if (sparse(l)) n -= (n_experts - top_k) * 3 * d_model * d_ff_expert;
    }
    return n;
  }
  /// Bytes of the routed experts' weights a token reads (all layers) at `bytes_per_value`.
  [[nodiscard]] std::size_t expert_bytes_per_token(std::size_t bytes_per_value) const noexcept {
    std::size_t n = 0;
    for (std::size_t l = 0; l < n_layers; ++l) {
      if (sparse(l)) n += top_k * 3 * d_model * d_ff_expert;
    }
    return n * bytes_per_value;
  }

  /// Throws ConfigError("[hf] 'source': ...") naming the first inconsistent value.
  void validate(const std::string& source = "config") const {
    auto need = [&source](bool ok, const std::string& msg) {
      check_config(ok, "hf", "'" + source + "': " + msg);
    };
    auto num = [](std::size_t v) { return std::to_string(v); };
    need(vocab_size > 0, "vocab_size must be > 0");
    need(d_model > 0, "hidden_size must be > 0");
    need(n_layers > 0 && layers.size() == n_layers, "num_hidden_layers must be > 0");
    need(n_q_heads > 0 && n_kv_heads > 0,
         "num_attention_heads and num_key_value_heads must be > 0");
    need(n_q_heads % n_kv_heads == 0, "num_attention_heads (" + num(n_q_heads) +
                                          ") must be a multiple of num_key_value_heads (" +
                                          num(n_kv_heads) + ")");
    need(head_dim > 0 && head_dim % 2 == 0, "head_dim must be even and > 0, got " + num(head_dim));
    need(!qk_norm || q_dim() == d_model,
         "q_norm normalises hidden_size (" + num(d_model) +
             ") values: num_attention_heads * head_dim must equal it, got " + num(q_dim()));
    need(n_experts > 0, "the number of experts must be > 0");
    need(top_k > 0 && top_k <= n_experts,
         "num_experts_per_tok (" + num(top_k) + ") must be in [1, " + num(n_experts) + "]");
    need(d_ff_expert > 0, "the expert width must be > 0");
    bool any_dense = false;
    for (Mlp m : layers) any_dense = any_dense || m == Mlp::kDense;
    need(!any_dense || d_ff_dense > 0, "intermediate_size (the dense layers' width) must be > 0");
    need(rope_theta > 0 && std::isfinite(rope_theta), "rope_theta must be > 0");
    need(rms_norm_eps > 0 && std::isfinite(rms_norm_eps), "rms_norm_eps must be > 0");
  }
};

namespace detail {

/// Reads config.json fields with the family's defaults and names the field and file in errors.
class Fields {
 public:
  Fields(const io::JsonValue& json, std::string source) : json_(json), source_(std::move(source)) {}

  [[nodiscard]] const io::JsonValue* get(std::string_view key) const {
    const io::JsonValue* v = json_.find(key);
    return v == nullptr || v->is_null() ? nullptr : v;
  }
  [[noreturn]] void fail(std::string_view key, const std::string& msg) const {
    throw ConfigError("[hf] '" + source_ + "': " + std::string(key) + " " + msg);
  }
  [[noreturn]] void unsupported(std::string_view key, const io::JsonValue& v,
                                const std::string& why) const {
    fail(key, "= " + v.describe() + " is not supported: " + why);
  }

  [[nodiscard]] std::size_t size(std::string_view key, std::size_t fallback) const {
    const io::JsonValue* v = get(key);
    if (v == nullptr) return fallback;
    if (!v->is_integer() || v->as_int64() < 0) {
      fail(key, "must be a non-negative integer, got " + v->describe());
    }
    return static_cast<std::size_t>(v->as_int64());
  }
  /// The first present key of `keys` (a field and its alias), else fallback.
  [[nodiscard]] std::size_t size(std::initializer_list<std::string_view> keys,
                                 std::size_t fallback) const {
    for (std::string_view k : keys) {
      if (get(k) != nullptr) return size(k, fallback);
    }
    return fallback;
  }
  [[nodiscard]] double number(std::string_view key, double fallback) const {
    const io::JsonValue* v = get(key);
    if (v == nullptr) return fallback;
    if (!v->is_number()) fail(key, "must be a number, got " + v->describe());
    return v->as_number();
  }
  [[nodiscard]] bool flag(std::string_view key, bool fallback) const {
    const io::JsonValue* v = get(key);
    if (v == nullptr) return fallback;
    if (!v->is_bool()) fail(key, "must be true or false, got " + v->describe());
    return v->as_bool();
  }
  [[nodiscard]] std::string text(std::string_view key, std::string fallback) const {
    const io::JsonValue* v = get(key);
    if (v == nullptr) return fallback;
    if (!v->is_string()) fail(key, "must be a string, got " + v->describe());
    return v->as_string();
  }
  [[nodiscard]] std::vector<std::int64_t> integers(std::string_view key) const {
    std::vector<std::int64_t> out;
    const io::JsonValue* v = get(key);
    if (v == nullptr) return out;
    if (v->is_integer()) return {v->as_int64()};
    if (!v->is_array()) fail(key, "must be an integer or a list of integers, got " + v->describe());
    for (const io::JsonValue& x : v->as_array()) {
      if (!x.is_integer()) fail(key, "must list integers, got " + x.describe());
      out.push_back(x.as_int64());
    }
    return out;
  }

 private:
  const io::JsonValue& json_;
  std::string source_;
};

inline Family family_of(const Fields& f) {
  constexpr Family kAll[] = {Family::kMixtral, Family::kQwen2Moe, Family::kOlmoe};
  const std::string supported =
      "supported: MixtralForCausalLM, Qwen2MoeForCausalLM, "
      "OlmoeForCausalLM";
  if (const io::JsonValue* a = f.get("architectures")) {
    if (!a->is_array() || a->size() != 1 || !a->at(0).is_string()) {
      f.fail("architectures", "must list one class name, got " + a->describe());
    }
    for (Family fam : kAll) {
      if (a->at(0).as_string() == architecture_name(fam)) return fam;
    }
    f.fail("architectures", "'" + a->at(0).as_string() + "' is not supported (" + supported + ")");
  }
  const std::string type = f.text("model_type", "");
  for (Family fam : kAll) {
    if (type == model_type_name(fam)) return fam;
  }
  if (type.empty()) f.fail("architectures", "is missing, and so is model_type (" + supported + ")");
  f.fail("model_type", "'" + type + "' is not supported (" + supported + ")");
}

/// rope_theta, from rope_theta or transformers 5's rope_parameters; only unscaled RoPE.
inline double rope_theta(const Fields& f, double fallback) {
  const std::string why = "moe applies plain RoPE (rope_type 'default')";
  for (std::string_view key : {"rope_scaling", "rope_parameters"}) {
    const io::JsonValue* v = f.get(key);
    if (v == nullptr) continue;
    if (!v->is_object()) f.fail(key, "must be an object, got " + v->describe());
    const Fields sub(*v, "");
    std::string type = sub.text("rope_type", sub.text("type", "default"));
    if (type != "default") f.unsupported(key, *v, "rope_type '" + type + "'; " + why);
    if (const io::JsonValue* t = v->find("rope_theta"); t != nullptr && t->is_number()) {
      fallback = t->as_number();
    }
  }
  return f.number("rope_theta", fallback);
}

inline std::optional<io::safetensors::DType> weight_dtype(const Fields& f) {
  using io::safetensors::DType;
  const std::string_view key = f.get("torch_dtype") != nullptr ? "torch_dtype" : "dtype";
  const std::string name = f.text(key, "");
  if (name.empty()) return std::nullopt;
  if (name == "bfloat16") return DType::kBF16;
  if (name == "float32") return DType::kF32;
  if (name == "float16") return DType::kF16;
  f.unsupported(key, *f.get(key), "moe reads bfloat16, float16 and float32 weights");
}

}  // namespace detail

/// Translates a parsed config.json (`source` names it in messages). Throws ConfigError.
inline Config config_from_json(const io::JsonValue& json, const std::string& source) {
  if (!json.is_object()) {
    throw ConfigError("[hf] '" + source + "': expected a JSON object, got " + json.describe());
  }
  const detail::Fields f(json, source);
  Config c;
  c.family = detail::family_of(f);
  const bool mixtral = c.family == Family::kMixtral;
  const bool qwen = c.family == Family::kQwen2Moe;

  // Defaults of MixtralConfig, Qwen2MoeConfig and OlmoeConfig.
  c.vocab_size = f.size("vocab_size", mixtral ? 32000 : qwen ? 151936 : 50304);
  c.d_model = f.size("hidden_size", mixtral ? 4096 : 2048);
  c.n_layers = f.size("num_hidden_layers", mixtral ? 32 : qwen ? 24 : 16);
  c.n_q_heads = f.size("num_attention_heads", mixtral ? 32 : 16);
  c.n_kv_heads = f.size("num_key_value_heads", mixtral ? 8 : c.n_q_heads);
  c.head_dim = f.size("head_dim", c.n_q_heads > 0 ? c.d_model / c.n_q_heads : 0);
  c.max_position_embeddings = f.size("max_position_embeddings", mixtral ? 131072
                                                                : qwen  ? 32768
                                                                        : 4096);
  c.rms_norm_eps = f.number("rms_norm_eps", qwen ? 1e-6 : 1e-5);
  c.rope_theta = detail::rope_theta(f, mixtral ? 1e6 : 10000.0);
  c.tie_word_embeddings = f.flag("tie_word_embeddings", false);
  c.dtype = detail::weight_dtype(f);
  if (const io::JsonValue* b = f.get("bos_token_id")) {
    if (!b->is_integer()) f.fail("bos_token_id", "must be an integer, got " + b->describe());
    c.bos_token_id = b->as_int64();
  }
  c.eos_token_ids = f.integers("eos_token_id");

  if (const io::JsonValue* act = f.get("hidden_act");
      act != nullptr && f.text("hidden_act", "") != "silu") {
    f.unsupported("hidden_act", *act, "the experts of these families are SiLU-gated");
  }
  if (const io::JsonValue* m = f.get("mlp_bias"); m != nullptr && f.flag("mlp_bias", false)) {
    f.unsupported("mlp_bias", *m, "moe's experts have no biases");
  }

  if (mixtral) {
    c.n_experts = f.size({"num_local_experts", "num_experts"}, 8);
    c.top_k = f.size("num_experts_per_tok", 2);
    c.d_ff_expert = f.size("intermediate_size", 14336);
    c.norm_topk_prob = true;  // MixtralSparseMoeBlock always renormalises
    if (const io::JsonValue* w = f.get("sliding_window")) {
      c.sliding_window = f.size("sliding_window", 0);
      if (c.sliding_window == 0) f.unsupported("sliding_window", *w, "use null for no window");
    }
    c.layers.assign(c.n_layers, Mlp::kSparse);
  } else if (qwen) {
    c.n_experts = f.size("num_experts", 60);
    c.top_k = f.size("num_experts_per_tok", 4);
    c.d_ff_expert = f.size("moe_intermediate_size", 1408);
    c.d_ff_dense = f.size("intermediate_size", 5632);
    c.d_ff_shared = f.size("shared_expert_intermediate_size", 5632);
    c.shared_expert_gate = c.d_ff_shared > 0;
    c.norm_topk_prob = f.flag("norm_topk_prob", false);
    c.qkv_bias = f.flag("qkv_bias", true);
    if (const io::JsonValue* s = f.get("use_sliding_window");
        s != nullptr && f.flag("use_sliding_window", false)) {
      f.unsupported("use_sliding_window", *s,
                    "moe has no per-layer sliding window (Qwen2-MoE applies it below "
                    "max_window_layers)");
    }
    if (const io::JsonValue* lt = f.get("layer_types")) {
      if (!lt->is_array()) f.fail("layer_types", "must be a list, got " + lt->describe());
      for (const io::JsonValue& t : lt->as_array()) {
        if (!t.is_string() || t.as_string() != "full_attention") {
          f.unsupported("layer_types", t, "moe supports 'full_attention' layers only");
        }
      }
    }
    const std::size_t step = f.size("decoder_sparse_step", 1);
    if (step == 0) f.fail("decoder_sparse_step", "must be >= 1");
    c.layers.assign(c.n_layers, Mlp::kDense);
    for (std::size_t l = 0; l < c.n_layers; ++l) {
      if ((l + 1) % step == 0) c.layers[l] = Mlp::kSparse;
    }
    for (std::int64_t l : f.integers("mlp_only_layers")) {
      if (l < 0 || static_cast<std::size_t>(l) >= c.n_layers) {
        f.fail("mlp_only_layers", "lists layer " + std::to_string(l) + ", outside [0, " +
                                      std::to_string(c.n_layers) + ")");
      }
      c.layers[static_cast<std::size_t>(l)] = Mlp::kDense;
    }
    if (c.n_experts == 0) {
      f.unsupported("num_experts", *f.get("num_experts"), "a model without experts is not an MoE");
    }
  } else {
    c.n_experts = f.size({"num_experts", "num_local_experts"}, 64);
    c.top_k = f.size("num_experts_per_tok", 8);
    c.d_ff_expert = f.size("intermediate_size", 2048);
    c.norm_topk_prob = f.flag("norm_topk_prob", false);
    c.qk_norm = true;
    if (const io::JsonValue* clip = f.get("clip_qkv")) {
      f.unsupported("clip_qkv", *clip, "moe does not clamp q, k and v");
    }
    if (const io::JsonValue* b = f.get("attention_bias");
        b != nullptr && f.flag("attention_bias", false)) {
      f.unsupported("attention_bias", *b, "moe's attention has no o_proj bias");
    }
    c.layers.assign(c.n_layers, Mlp::kSparse);
  }
  c.validate(source);
  return c;
}

/// Reads DIR/config.json (or the JSON file `path`). Throws IoError, FormatError, ConfigError.
inline Config read_config(const std::filesystem::path& path) {
  const std::filesystem::path file =
      std::filesystem::is_directory(path) ? path / "config.json" : path;
  return config_from_json(io::read_json_file(file), file.string());
}

}  // namespace moe::hf
