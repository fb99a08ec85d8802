// moe-run: runs a Hugging Face MoE checkpoint (MixtralForCausalLM, Qwen2MoeForCausalLM,
// OlmoeForCausalLM; config.json + safetensors shards) directly from its files, zero-copy through
// mmap. See examples/moe_run/README.md (flags, --json) and docs/hf-checkpoints.md.
//
//   moe-run --checkpoint DIR [--tokenizer FILE] (--prompt TEXT | --tokens 1,2,3)
//           [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S] [--threads N]
//           [--dump-logits FILE.npy] [--json] [--stop-at-eos] [--no-bos] [--ram-budget BYTES]
//           [--cache-policy none|lru|most-used] [--prefill-chunk N] [--no-huge-readahead]
//
// Exit codes: 0 success, 1 runtime error (bad checkpoint, unsupported config, bad token ids, ...),
// 2 usage error.
//
// The steps of run(): open the checkpoint (config.json translated, every shard's header
// validated, the tensor table checked), bind the views (hf::bind_weights), build the model
// (hf::make_model, with the W and shared-expert types the checkpoint needs), plan where the
// weights live (hf::residency_plan + WeightResidency), encode the prompt, generate.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <type_traits>
#include <unistd.h>
#include <vector>

#include <moe/io/npy.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/models/hf_config.hpp>
#include <moe/models/hf_model.hpp>
#include <moe/models/hf_residency.hpp>
#include <moe/models/hf_tensors.hpp>
#include <moe/models/weight_residency.hpp>
#include <moe/text/generate.hpp>
#if defined(MOE_HAVE_SENTENCEPIECE)
#include <moe/text/tokenizer.hpp>
#endif

#include <nlohmann/json.hpp>

#include "../common/cli.hpp"
#include "../common/run_report.hpp"
#include "../common/text_output.hpp"

namespace {

using examples::Log;
using examples::peak_rss_bytes;
using examples::print_json;
using examples::TextOutput;
using examples::Tokenizer;
using examples::UsageError;

using examples::Clock;
using examples::seconds_since;
namespace fs = std::filesystem;
namespace st = moe::io::safetensors;

constexpr const char* kUsage =
    "usage: moe-run --checkpoint DIR [--tokenizer FILE] (--prompt TEXT | --tokens 1,2,3)\n"
    "               [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S] [--threads N]\n"
    "               [--dump-logits FILE.npy] [--json] [--stop-at-eos] [--no-bos]\n"
    "               [--ram-budget BYTES] [--cache-policy none|lru|most-used]\n"
    "               [--prefill-chunk N] [--no-huge-readahead]\n"
    "\n"
    "  --checkpoint DIR      a Hugging Face checkpoint: config.json and model.safetensors or\n"
    "                        model.safetensors.index.json with its shards (Mixtral, Qwen2-MoE,\n"
    "                        OLMoE)\n"
    "  --tokenizer FILE      SentencePiece model; default DIR/tokenizer.model when present\n"
    "                        (Mixtral ships one); needed for --prompt and for printing text\n"
    "  --prompt TEXT         prompt, encoded with BOS first (as the HF tokenizer does)\n"
    "  --tokens IDS          prompt as comma-separated token ids (used as given)\n"
    "  --no-bos              do not put BOS before an encoded --prompt\n"
    "  --max-new-tokens N    tokens to generate (default 100)\n"
    "  --temperature T       0 = greedy, ties to the lowest id (default 0, as transformers'\n"
    "                        generate without sampling)\n"
    "  --top-p P             nucleus mass in (0, 1] (default 1.0)\n"
    "  --seed S              sampling seed (default 42)\n"
    "  --threads N           worker threads (default: all cores)\n"
    "  --dump-logits FILE    write the prompt's logits, float32 .npy [prompt_len, vocab]\n"
    "  --json                print one JSON object on stdout, nothing on stderr but errors\n"
    "  --stop-at-eos         stop after generating config.json's (first) eos_token_id\n"
    "  --ram-budget BYTES    memory the process may hold (suffix K, M or G: binary units);\n"
    "                        default 80% of the available memory\n"
    "  --cache-policy P      experts kept mapped between uses when streaming\n"
    "                        (default most-used)\n"
    "  --no-huge-readahead   keep the device's read-ahead for faults on streamed weights\n"
    "  --prefill-chunk N     prompt tokens per forward call (default 256, or 1 when a layer's\n"
    "                        experts do not fit in the budget)\n";

struct Args : examples::RunnerArgs {
  bool bos = true;
};

// ---- the command line ---------------------------------------------------------------------------

Args parse_args(int argc, char** argv) {
  Args a;
  examples::for_each_flag(argc, argv, kUsage, [&a](std::string_view flag, auto& value) {
    if (examples::parse_runner_flag(flag, value, a)) return true;
    if (flag != "--no-bos") return false;
    a.bos = false;
    return true;
  });
  if (a.checkpoint.empty()) throw UsageError("--checkpoint DIR is required");
  if (a.prompt.has_value() == a.tokens.has_value()) {
    throw UsageError("give exactly one of --prompt TEXT or --tokens IDS");
  }
  if (!a.tokenizer && fs::exists(a.checkpoint / "tokenizer.model")) {
    a.tokenizer = a.checkpoint / "tokenizer.model";
  }
  if (a.prompt && !a.tokenizer) {
    throw UsageError(
        "--prompt needs a SentencePiece tokenizer: --tokenizer FILE, or "
        "tokenizer.model in the checkpoint directory");
  }
  return a;
}

#if defined(MOE_HAVE_SENTENCEPIECE)
Tokenizer load_tokenizer(const Args& args) {
  Tokenizer t;
  if (args.tokenizer) t.emplace(*args.tokenizer);
  return t;
}
#else
Tokenizer load_tokenizer(const Args& args) {
  if (args.prompt) throw moe::ConfigError("[moe-run] built without SentencePiece: no --prompt");
  return {};
}
#endif

// ---- the run ------------------------------------------------------------------------------------

/// The opened checkpoint: its config and its validated shards (headers only are read).
struct Opened {
  moe::hf::Config config;
  st::Checkpoint ckpt;
  explicit Opened(const fs::path& dir) : config(moe::hf::read_config(dir)), ckpt(dir) {
    moe::hf::check_tensors(config, ckpt);
  }
};

/// The prompt's ids (BOS first for an encoded --prompt unless --no-bos), checked against the
/// vocabulary of the tokenizer and the context.
std::vector<std::int32_t> prompt_ids(const Args& args, [[maybe_unused]] const Tokenizer& tok,
                                     const moe::hf::Config& cfg) {
  std::vector<std::int32_t> prompt;
#if defined(MOE_HAVE_SENTENCEPIECE)
  if (tok && static_cast<std::size_t>(tok->vocab_size()) > cfg.vocab_size) {
    throw moe::ConfigError("[moe-run] the tokenizer has " + std::to_string(tok->vocab_size()) +
                           " pieces but the checkpoint's vocabulary is " +
                           std::to_string(cfg.vocab_size));
  }
  if (args.prompt) {
    if (args.bos) {
      const std::int64_t bos = cfg.bos_token_id ? *cfg.bos_token_id : tok->bos_id();
      if (bos < 0) throw moe::ConfigError("[moe-run] no BOS id (config.json, tokenizer): --no-bos");
      prompt.push_back(static_cast<std::int32_t>(bos));
    }
    const std::vector<std::int32_t> text = tok->encode(*args.prompt);
    prompt.insert(prompt.end(), text.begin(), text.end());
  }
#endif
  if (args.tokens) prompt = *args.tokens;
  if (prompt.empty()) throw moe::ConfigError("[moe-run] the prompt encodes to zero tokens");
  // Token ids are checked by generate() (TokenError naming the id) before any compute.
  const std::size_t context = cfg.max_position_embeddings;
  if (context > 0 && prompt.size() + args.max_new_tokens > context) {
    throw moe::ConfigError("[moe-run] prompt (" + std::to_string(prompt.size()) + ") + " +
                           std::to_string(args.max_new_tokens) +
                           " new tokens exceed the context of " + std::to_string(context) +
                           " (config.json max_position_embeddings)");
  }
  return prompt;
}

/// Where the weights live (library: moe::WeightResidency): all mapped when the checkpoint fits the
/// budget, otherwise experts (and attention if needed) released after use, prefetched ahead.
moe::WeightResidency make_residency(const Args& args, const Opened& o, std::uint64_t copied,
                                    const Log& log) {
  moe::ResidencyOptions opt;
  opt.ram_budget = args.ram_budget;
  opt.cache = args.cache_policy;
  opt.huge_readahead = args.huge_readahead;
  moe::WeightResidency res(moe::hf::residency_plan(o.config, o.ckpt, copied), opt);
  res.report_faults("moe-run: error: ");
  const moe::ResidencyStats& s = res.stats();
  if (s.streaming) {
    log("moe-run: the model (%.1f GB, %.2f GB of it copied) exceeds the RAM budget (%.1f GB): "
        "streaming experts%s, %s cache of %.1f GB\n",
        static_cast<double>(s.model_bytes) / 1e9, static_cast<double>(s.copied_bytes) / 1e9,
        static_cast<double>(s.budget) / 1e9, s.attention_streamed ? " and attention" : "",
        std::string(moe::cache_policy_name(args.cache_policy)).c_str(),
        static_cast<double>(s.cache_capacity) / 1e9);
  }
  return res;
}

/// What one run produced, for the summary line and --json.
struct Report : examples::RunReport {
  std::string weights;  ///< "bf16" or "f32"
  std::uint64_t copied_bytes = 0;
};

/// The --json object (keys documented in examples/moe_run/README.md).
nlohmann::ordered_json json_report(const Report& r, const moe::hf::Config& cfg,
                                   const TextOutput& out) {
  nlohmann::ordered_json j;
  examples::json_generation(j, r, out);
  j["architecture"] = moe::hf::architecture_name(cfg.family);
  j["weights"] = r.weights;
  j["config"] = {{"vocab_size", cfg.vocab_size},
                 {"d_model", cfg.d_model},
                 {"n_layers", cfg.n_layers},
                 {"n_q_heads", cfg.n_q_heads},
                 {"n_kv_heads", cfg.n_kv_heads},
                 {"head_dim", cfg.head_dim},
                 {"n_experts", cfg.n_experts},
                 {"top_k", cfg.top_k},
                 {"d_ff_expert", cfg.d_ff_expert},
                 {"d_ff_shared", cfg.d_ff_shared},
                 {"sliding_window", cfg.sliding_window}};
  examples::json_run(j, r);
  j["io"] = examples::json_io(r);
  j["residency"] = examples::json_residency(r);
  return j;
}

/// The per-layer hook: the residency's steps, then prefill progress for a streamed model (whose
/// prefill reads the whole checkpoint).
std::function<void(std::size_t, moe::MatrixView<const float>)> layer_hook(moe::WeightResidency& res,
                                                                          std::size_t n_layers,
                                                                          const Log& log) {
  const bool progress = !log.quiet && res.stats().streaming;
  return [&res, n_layers, progress](std::size_t layer, moe::MatrixView<const float> h) {
    res.on_layer(layer, h);
    if (progress && h.rows > 1 && ((layer + 1) % 8 == 0 || layer + 1 == n_layers)) {
      std::fprintf(stderr, "moe-run: prefill layer %zu/%zu\n", layer + 1, n_layers);
    }
  };
}

/// Binds, builds and generates with weight views W and shared-expert type Shared.
template <class W, class Shared>
int generate_with(const Args& args, const Opened& o, const Tokenizer& tokenizer, const Log& log,
                  Clock::time_point t_load) {
  const moe::hf::Config& cfg = o.config;
  const moe::hf::WeightsT<W> weights = moe::hf::bind_weights<W>(cfg, o.ckpt);
  const auto model = moe::hf::make_model<W, Shared>(cfg, weights);
  moe::WeightResidency residency = make_residency(args, o, weights.copied_bytes, log);

  Report r;
  r.weights = std::is_same_v<W, moe::BF16Weight> ? "bf16" : "f32";
  r.copied_bytes = weights.copied_bytes;
  r.prompt = prompt_ids(args, tokenizer, cfg);
  moe::ThreadPool pool(args.threads);
  // The prompt runs as one batch, in chunks; one token at a time when a batch (which reads all
  // of a layer's experts at once) does not fit in the RAM budget.
  r.prefill_chunk =
      args.prefill_chunk ? args.prefill_chunk : (residency.batch_prefill_fits() ? 256 : 1);
  moe::DecoderState state = model.make_state(r.prompt.size() + args.max_new_tokens,
                                             std::min(r.prompt.size(), r.prefill_chunk));
  r.load_seconds = seconds_since(t_load);
  r.threads = pool.size();
  log("moe-run: %s, %zu layers, %zu experts (top-%zu), %s weights (%.2f MB copied); loaded in "
      "%.2f s; %zu prompt tokens, %zu threads\n",
      std::string(moe::hf::architecture_name(cfg.family)).c_str(), cfg.n_layers, cfg.n_experts,
      cfg.top_k, r.weights.c_str(), static_cast<double>(r.copied_bytes) / 1e6, r.load_seconds,
      r.prompt.size(), pool.size());

  moe::GenerateOptions gen = examples::generate_options(
      args, cfg.eos_token_ids.empty() ? -1 : static_cast<std::int32_t>(cfg.eos_token_ids.front()));
  gen.on_layer = layer_hook(residency, cfg.n_layers, log);
  moe::Buffer<float> prompt_logits;
  if (args.dump_logits) {
    prompt_logits = moe::Buffer<float>(r.prompt.size() * cfg.vocab_size);
    gen.prompt_logits = {prompt_logits.data(), r.prompt.size(), cfg.vocab_size};
  }
  TextOutput out(tokenizer, log.quiet);
  out.prompt(args.prompt);
  examples::generate_reporting(pool, model, state, gen, out, r);
  if (args.dump_logits) {
    moe::io::write_npy(*args.dump_logits, prompt_logits.data(), {r.prompt.size(), cfg.vocab_size});
    log("moe-run: wrote prompt logits [%zu, %zu] to %s\n", r.prompt.size(), cfg.vocab_size,
        args.dump_logits->c_str());
  }
  r.peak_rss = peak_rss_bytes();
  r.residency = residency.stats();
  r.cache_policy = args.cache_policy;
  examples::print_summary("moe-run", r, log);
  if (args.json) print_json(json_report(r, cfg, out));
  return 0;
}

int run(const Args& args) {
  const Log log{args.json, isatty(fileno(stderr)) != 0};
  const Tokenizer tokenizer = load_tokenizer(args);  // a bad path fails before the checkpoint
  const auto t_load = Clock::now();
  const Opened o(args.checkpoint);
  // BF16 matrices are viewed as BF16Weight; F32 (and F16, widened at load) as F32Weight.
  const bool bf16 = moe::hf::matrix_dtype(o.ckpt) == st::DType::kBF16;
  const bool shared = o.config.d_ff_shared > 0;
  using moe::BF16Weight, moe::F32Weight, moe::NoSharedExperts, moe::hf::SharedExpertOf;
  if (bf16) {
    return shared ? generate_with<BF16Weight, SharedExpertOf<BF16Weight>>(args, o, tokenizer, log,
                                                                          t_load)
                  : generate_with<BF16Weight, NoSharedExperts>(args, o, tokenizer, log, t_load);
  }
  return shared
             ? generate_with<F32Weight, SharedExpertOf<F32Weight>>(args, o, tokenizer, log, t_load)
             : generate_with<F32Weight, NoSharedExperts>(args, o, tokenizer, log, t_load);
}

}  // namespace

int main(int argc, char** argv) {
  return examples::run_main("moe-run", kUsage, argc, argv, parse_args, run);
}
