// The Hugging Face config.json translation and tensor table (moe/models/hf_config.hpp,
// hf_tensors.hpp): the published shapes of Mixtral 8x7B, Qwen1.5-MoE-A2.7B and OLMoE-1B-7B
// (parameter counts against the published totals), the tiny checkpoints of
// tools/make_hf_checkpoint.py (whose Python table is written independently of the C++ one: the two
// must agree name for name), and every unsupported or inconsistent value as a ConfigError naming
// the field and the file.
#include <catch2/catch.hpp>

#include <set>
#include <string>
#include <vector>

#include <moe/io/json.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/models/hf_config.hpp>
#include <moe/models/hf_tensors.hpp>

#include "io_test_util.hpp"

using namespace io_test;
using Catch::Matchers::EndsWith;
using moe::ConfigError;
using moe::FormatError;
using moe::ShapeError;
using moe::hf::Config;
using moe::hf::Family;
using moe::hf::Mlp;
namespace st = moe::io::safetensors;

namespace {

// The fields of the published config.json files that the translation reads.
const char* const kMixtral8x7B = R"({
  "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_act": "silu",
  "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
  "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 8,
  "num_experts_per_tok": 2, "vocab_size": 32000, "max_position_embeddings": 32768,
  "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": null,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
  "router_aux_loss_coef": 0.02, "output_router_logits": false, "attention_dropout": 0.0})";

const char* const kQwen15MoE = R"({
  "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_act": "silu",
  "hidden_size": 2048, "intermediate_size": 5632, "moe_intermediate_size": 1408,
  "shared_expert_intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 16,
  "num_key_value_heads": 16, "num_experts": 60, "num_experts_per_tok": 4,
  "norm_topk_prob": false, "decoder_sparse_step": 1, "vocab_size": 151936,
  "max_position_embeddings": 8192, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "use_sliding_window": false, "sliding_window": 32768, "max_window_layers": 21,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "bos_token_id": 151643,
  "eos_token_id": 151643})";

const char* const kOlmoe1B7B = R"({
  "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "hidden_act": "silu",
  "hidden_size": 2048, "intermediate_size": 1024, "num_hidden_layers": 16,
  "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 64,
  "num_experts_per_tok": 8, "norm_topk_prob": false, "clip_qkv": null,
  "attention_bias": false, "vocab_size": 50304, "max_position_embeddings": 4096,
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "rope_scaling": null,
  "tie_word_embeddings": false, "torch_dtype": "float32", "pad_token_id": 1,
  "eos_token_id": 50279})";

Config parse(const std::string& text) {
  return moe::hf::config_from_json(moe::io::parse_json(text), "config.json");
}

/// `base` with one field replaced (or added): "key": value_json.
std::string with(const std::string& base, const std::string& key, const std::string& value) {
  moe::io::JsonValue j = moe::io::parse_json(base);
  std::string out = "{";
  bool found = false;
  for (const auto& kv : j.as_object()) {
    std::string v;
    if (kv.first == key) {
      v = value;
      found = true;
    } else {
      // Re-serialise the few value kinds the configs above use.
      const moe::io::JsonValue& x = kv.second;
      if (x.is_string()) {
        v = "\"" + x.as_string() + "\"";
      } else if (x.is_bool()) {
        v = x.as_bool() ? "true" : "false";
      } else if (x.is_null()) {
        v = "null";
      } else if (x.is_array()) {
        v = "[";
        for (std::size_t i = 0; i < x.size(); ++i) {
          v += (i ? ", \"" : "\"") + x.at(i).as_string() + "\"";
        }
        v += "]";
      } else {
        const std::string d = x.describe();  // "a number (1e-05)"
        v = d.substr(10, d.size() - 11);
      }
    }
    out += (out.size() > 1 ? ", \"" : "\"") + kv.first + "\": " + v;
  }
  if (!found) out += ", \"" + key + "\": " + value;
  return out + "}";
}

std::string config_error(const std::string& text) {
  return message_of<ConfigError>([&] { (void)parse(text); });
}

}  // namespace

TEST_CASE("hf config: Mixtral 8x7B as published", "[hf]") {
  const Config c = parse(kMixtral8x7B);
  CHECK(c.family == Family::kMixtral);
  CHECK(c.vocab_size == 32000);
  CHECK(c.d_model == 4096);
  CHECK(c.n_layers == 32);
  CHECK(c.n_q_heads == 32);
  CHECK(c.n_kv_heads == 8);
  CHECK(c.head_dim == 128);
  CHECK(c.n_experts == 8);
  CHECK(c.top_k == 2);
  CHECK(c.d_ff_expert == 14336);
  CHECK(c.d_ff_dense == 0);
  CHECK(c.d_ff_shared == 0);
  CHECK(c.norm_topk_prob);
  CHECK_FALSE(c.qkv_bias);
  CHECK_FALSE(c.qk_norm);
  CHECK(c.rope_theta == 1e6);
  CHECK(c.rms_norm_eps == 1e-5);
  CHECK(c.sliding_window == 0);
  CHECK_FALSE(c.tie_word_embeddings);
  CHECK(c.dtype == st::DType::kBF16);
  CHECK(c.bos_token_id == 1);
  CHECK(c.eos_token_ids == std::vector<std::int64_t>{2});
  CHECK(c.layers == std::vector<Mlp>(32, Mlp::kSparse));
  // Published: 46.7B parameters, 12.9B active per token.
  CHECK(c.parameters() == 46'702'792'704);
  CHECK(c.active_parameters() == 12'879'925'248);
  CHECK(c.expert_bytes_per_token(2) == 22'548'578'304);  // 2 experts x 32 layers in bf16
  const auto table = moe::hf::tensor_table(c);
  CHECK(table.size() == 1 + 32 * (2 + 4 + 1 + 8 * 3) + 2);  // 995 tensors
  CHECK(table[1].name == "model.layers.0.input_layernorm.weight");
  CHECK(table[8].name == "model.layers.0.block_sparse_moe.experts.0.w1.weight");
  CHECK(table[8].shape == std::vector<std::size_t>{14336, 4096});
  CHECK(table[8].slot == moe::hf::Slot::kExpertGate);
  CHECK(table[8].expert == 0);
  CHECK(table[8].dtype == st::DType::kBF16);
  CHECK(table.back().name == "lm_head.weight");
  std::size_t n = 0;
  for (const auto& t : table) {
    std::size_t k = 1;
    for (std::size_t d : t.shape) k *= d;
    n += k;
  }
  CHECK(n == c.parameters());
}

TEST_CASE("hf config: Qwen1.5-MoE-A2.7B and OLMoE-1B-7B as published", "[hf]") {
  const Config q = parse(kQwen15MoE);
  CHECK(q.family == Family::kQwen2Moe);
  CHECK(q.head_dim == 128);
  CHECK(q.n_experts == 60);
  CHECK(q.top_k == 4);
  CHECK(q.d_ff_expert == 1408);
  CHECK(q.d_ff_dense == 5632);
  CHECK(q.d_ff_shared == 5632);
  CHECK(q.shared_expert_gate);
  CHECK_FALSE(q.norm_topk_prob);
  CHECK(q.qkv_bias);
  CHECK(q.sliding_window == 0);  // use_sliding_window is false
  CHECK(q.rms_norm_eps == 1e-6);
  CHECK(q.layers == std::vector<Mlp>(24, Mlp::kSparse));
  CHECK(q.parameters() == 14'315'784'192);        // published: 14.3B
  CHECK(q.active_parameters() == 2'689'173'504);  // published: 2.7B activated
  const Config o = parse(kOlmoe1B7B);
  CHECK(o.family == Family::kOlmoe);
  CHECK(o.qk_norm);
  CHECK_FALSE(o.qkv_bias);
  CHECK_FALSE(o.norm_topk_prob);
  CHECK(o.n_experts == 64);
  CHECK(o.top_k == 8);
  CHECK(o.d_ff_expert == 1024);
  CHECK(o.rope_theta == 10000.0);
  CHECK(o.dtype == st::DType::kF32);
  CHECK(o.eos_token_ids == std::vector<std::int64_t>{50279});
  CHECK(o.parameters() == 6'919'161'856);         // published: 6.9B
  CHECK(o.active_parameters() == 1'282'017'280);  // published: 1.3B active
}

TEST_CASE("hf config: layer kinds, defaults and aliases", "[hf]") {
  // Qwen2-MoE: decoder_sparse_step and mlp_only_layers choose the dense layers.
  std::string q = with(with(kQwen15MoE, "num_hidden_layers", "6"), "decoder_sparse_step", "2");
  CHECK(parse(q).layers == std::vector<Mlp>{Mlp::kDense, Mlp::kSparse, Mlp::kDense, Mlp::kSparse,
                                            Mlp::kDense, Mlp::kSparse});
  q = with(q, "mlp_only_layers", "[3, 0]");
  CHECK(parse(q).layers == std::vector<Mlp>{Mlp::kDense, Mlp::kSparse, Mlp::kDense, Mlp::kDense,
                                            Mlp::kDense, Mlp::kSparse});
  const auto table = moe::hf::tensor_table(parse(q));
  CHECK(table[1 + 9].name ==
        "model.layers.0.mlp.gate_proj.weight");  // after 9 attention and norm tensors
  CHECK(table[1 + 9].shape == std::vector<std::size_t>{5632, 2048});
  // Absent fields take the configuration class's defaults; aliases name the same field.
  const Config m = parse(R"({"architectures": ["MixtralForCausalLM"], "num_experts": 4})");
  CHECK(m.n_experts == 4);
  CHECK(m.d_model == 4096);
  CHECK(m.n_kv_heads == 8);
  CHECK(m.rope_theta == 1e6);
  CHECK_FALSE(m.dtype.has_value());
  CHECK(parse(R"({"model_type": "olmoe"})").n_experts == 64);
  CHECK(parse(R"({"model_type": "qwen2_moe", "num_key_value_heads": null})").n_kv_heads == 16);
  // head_dim when given; transformers 5's rope_parameters; sliding window; tied head.
  const Config h = parse(with(with(with(kMixtral8x7B, "head_dim", "64"), "rope_theta", "null"),
                              "rope_parameters", R"({"rope_type": "default", "rope_theta": 5e5})"));
  CHECK(h.head_dim == 64);
  CHECK(h.q_dim() == 2048);
  CHECK(h.rope_theta == 5e5);
  CHECK(parse(with(kMixtral8x7B, "sliding_window", "4096")).sliding_window == 4096);
  const Config tied = parse(with(kOlmoe1B7B, "tie_word_embeddings", "true"));
  CHECK(moe::hf::tensor_table(tied).back().name == "model.norm.weight");
  CHECK(parse(with(kMixtral8x7B, "eos_token_id", "[2, 32000]")).eos_token_ids ==
        std::vector<std::int64_t>{2, 32000});
}

TEST_CASE("hf config: unknown architectures and unsupported values are ConfigErrors", "[hf]") {
  CHECK(config_error(with(kMixtral8x7B, "architectures", R"(["LlamaForCausalLM"])")) ==
        "[hf] 'config.json': architectures 'LlamaForCausalLM' is not supported (supported: "
        "MixtralForCausalLM, Qwen2MoeForCausalLM, OlmoeForCausalLM)");
  CHECK(config_error(R"({"model_type": "llama"})") ==
        "[hf] 'config.json': model_type 'llama' is not supported (supported: MixtralForCausalLM, "
        "Qwen2MoeForCausalLM, OlmoeForCausalLM)");
  CHECK_THAT(config_error("{}"), Contains("architectures is missing, and so is model_type"));
  CHECK(config_error(with(kMixtral8x7B, "hidden_act", "\"gelu\"")) ==
        "[hf] 'config.json': hidden_act = a string (\"gelu\") is not supported: the experts of "
        "these families are SiLU-gated");
  CHECK_THAT(config_error(with(kMixtral8x7B, "rope_scaling", R"({"type": "yarn", "factor": 4})")),
             StartsWith("[hf] 'config.json': rope_scaling = an object is not supported: rope_type "
                        "'yarn'"));
  CHECK_THAT(config_error(with(kQwen15MoE, "use_sliding_window", "true")),
             StartsWith("[hf] 'config.json': use_sliding_window = true is not supported"));
  CHECK_THAT(config_error(with(kQwen15MoE, "layer_types", R"(["sliding_attention"])")),
             StartsWith("[hf] 'config.json': layer_types = a string (\"sliding_attention\") is not "
                        "supported"));
  CHECK(config_error(with(kOlmoe1B7B, "clip_qkv", "8.0")) ==
        "[hf] 'config.json': clip_qkv = a number (8.0) is not supported: moe does not clamp q, k "
        "and v");
  CHECK_THAT(config_error(with(kOlmoe1B7B, "attention_bias", "true")),
             StartsWith("[hf] 'config.json': attention_bias = true is not supported"));
  CHECK_THAT(config_error(with(kMixtral8x7B, "torch_dtype", "\"float8_e4m3fn\"")),
             StartsWith("[hf] 'config.json': torch_dtype = a string (\"float8_e4m3fn\") is not "
                        "supported"));
  CHECK_THAT(config_error(with(kMixtral8x7B, "sliding_window", "0")),
             StartsWith("[hf] 'config.json': sliding_window = a number (0) is not supported"));
  // Inconsistent values.
  CHECK(config_error(with(kMixtral8x7B, "num_experts_per_tok", "9")) ==
        "[hf] 'config.json': num_experts_per_tok (9) must be in [1, 8]");
  CHECK(config_error(with(kQwen15MoE, "mlp_only_layers", "[24]")) ==
        "[hf] 'config.json': mlp_only_layers lists layer 24, outside [0, 24)");
  CHECK(config_error(with(kMixtral8x7B, "num_key_value_heads", "6")) ==
        "[hf] 'config.json': num_attention_heads (32) must be a multiple of num_key_value_heads "
        "(6)");
  CHECK_THAT(config_error(with(kOlmoe1B7B, "head_dim", "64")),
             EndsWith("q_norm normalises hidden_size (2048) values: num_attention_heads * "
                      "head_dim must equal it, got 1024"));
  CHECK(config_error(with(kMixtral8x7B, "hidden_size", "\"4096\"")) ==
        "[hf] 'config.json': hidden_size must be a non-negative integer, got a string (\"4096\")");
  CHECK(config_error(with(kMixtral8x7B, "rms_norm_eps", "0")) ==
        "[hf] 'config.json': rms_norm_eps must be > 0");
  CHECK(config_error(with(kQwen15MoE, "decoder_sparse_step", "0")) ==
        "[hf] 'config.json': decoder_sparse_step must be >= 1");
  // read_config names the file; malformed JSON is a FormatError.
  const fs::path dir = scratch("hf_config_file");
  write_text(dir / "config.json", with(kMixtral8x7B, "hidden_act", "\"relu\""));
  CHECK_THAT(message_of<ConfigError>([&] { (void)moe::hf::read_config(dir); }),
             StartsWith("[hf] '" + (dir / "config.json").string() + "': hidden_act"));
  write_text(dir / "config.json", "{\"hidden_size\": 4096,}");
  CHECK_THAT(message_of<FormatError>([&] { (void)moe::hf::read_config(dir); }),
             StartsWith("[json] '" + (dir / "config.json").string() + "'"));
}

TEST_CASE("hf config: the generator's checkpoints match the tensor table", "[hf]") {
  for (const char* name :
       {"mixtral_bf16_sharded", "mixtral_f32", "mixtral_window", "qwen2_moe_bf16", "olmoe_f32"}) {
    INFO("fixture " << name);
    const fs::path dir = fixture(std::string("hf/") + name);
    const Config c = moe::hf::read_config(dir);
    const st::Checkpoint ckpt(dir);
    moe::hf::check_tensors(c, ckpt);
    // The C++ table and the generator's Python table agree exactly (no tensor missing or extra).
    std::set<std::string> table;
    for (const auto& t : moe::hf::tensor_table(c)) table.insert(t.name);
    std::set<std::string> stored;
    for (std::string_view n : ckpt.names()) stored.insert(std::string(n));
    CHECK(table == stored);
  }
  const Config q = moe::hf::read_config(fixture("hf/qwen2_moe_bf16"));
  CHECK(q.layers == std::vector<Mlp>{Mlp::kDense, Mlp::kSparse, Mlp::kSparse});
  CHECK(moe::hf::read_config(fixture("hf/mixtral_window")).sliding_window == 3);
  CHECK(moe::hf::read_config(fixture("hf/olmoe_f32")).tie_word_embeddings);
}

TEST_CASE("hf config: check_tensors names the tensor, the file and both shapes or dtypes", "[hf]") {
  const fs::path dir = fixture("hf/mixtral_bf16_sharded");
  const st::Checkpoint ckpt(dir);
  Config c = moe::hf::read_config(dir);
  const std::string shard1 = (dir / "model-00001-of-00003.safetensors").string();
  Config wide = c;
  wide.d_ff_expert = 64;
  CHECK(message_of<ShapeError>([&] { moe::hf::check_tensors(wide, ckpt); }) ==
        "[hf] tensor 'model.layers.0.block_sparse_moe.experts.0.w1.weight' in '" + shard1 +
            "' has shape [48, 32], expected [64, 32]");
  Config f32 = c;
  f32.dtype = st::DType::kF32;
  CHECK(message_of<ShapeError>([&] { moe::hf::check_tensors(f32, ckpt); }) ==
        "[hf] tensor 'model.embed_tokens.weight' in '" + shard1 +
            "' has dtype BF16, expected F32 (config.json torch_dtype)");
  Config deeper = c;
  deeper.n_layers = 3;
  deeper.layers.push_back(Mlp::kSparse);
  CHECK_THAT(message_of<FormatError>([&] { moe::hf::check_tensors(deeper, ckpt); }),
             StartsWith("[safetensors] tensor 'model.layers.2.input_layernorm.weight' is not in "
                        "the index"));
}

TEST_CASE("hf config: the real Mixtral 8x7B layout (19 sparse shards) opens and validates",
          "[hf]") {
  // tools/make_hf_checkpoint.py --preset full --sparse: real headers, data left as holes.
  const fs::path dir = fixture("hf/mixtral_8x7b_sparse");
  const Config c = moe::hf::read_config(dir);
  CHECK(c.parameters() == 46'702'792'704);
  const st::Checkpoint ckpt(dir);
  CHECK(ckpt.files().size() == 19);
  CHECK(ckpt.size() == 995);
  CHECK(ckpt.data_bytes() == 2 * c.parameters());  // bf16: 93.4 GB
  CHECK(ckpt.index_total_size() == ckpt.data_bytes());
  moe::hf::check_tensors(c, ckpt);
  const st::Tensor w2 = ckpt.tensor("model.layers.31.block_sparse_moe.experts.7.w2.weight");
  CHECK(w2.describe() == "BF16 [4096, 14336]");
  CHECK(w2.aligned());
  // Opening read the headers only (at most the kernel's read-ahead beyond them).
  CHECK(ckpt.file_of(w2.name()).mapped().resident_bytes(w2.entry->begin, w2.nbytes) < (4u << 20));
}
