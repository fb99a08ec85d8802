// grok1: runs xAI's original Grok-1 release (or any checkpoint in its format) directly from the
// pickled tensor files, zero-copy through mmap. See examples/grok1/README.md.
//
//   grok1 --checkpoint DIR [--tokenizer FILE] (--prompt TEXT | --tokens 1,2,3)
//         [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S] [--threads N]
//         [--dump-logits FILE.npy] [--json] [--stop-at-eos] [--ram-budget BYTES]
//         [--cache-policy none|lru|most-used] [--speculation] [--prefill-chunk N]
//         [--activations exact|int8] [--perplexity FILE]
//   mpirun -np N grok1 ...   tensor parallel over N ranks (tensor_parallel.hpp)
//
// Exit codes: 0 success, 1 runtime error (bad checkpoint, bad token ids, ...), 2 usage error.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unistd.h>
#include <vector>

#include <moe/io/npy.hpp>
#include <moe/models/grok1_loader.hpp>
#include <moe/models/grok1_residency.hpp>
#include <moe/models/weight_residency.hpp>
#include <moe/text/generate.hpp>
#if defined(MOE_HAVE_SENTENCEPIECE)
#include <moe/text/corpus.hpp>
#include <moe/text/tokenizer.hpp>
#endif

#include <nlohmann/json.hpp>
#if defined(MOE_HAVE_MPI)
#include <moe/mpi/tensor_parallel.hpp>
#endif

#include "../common/cli.hpp"
#include "../common/run_report.hpp"
#include "../common/text_output.hpp"
#include "perplexity.hpp"

namespace {

using examples::Log;
using examples::peak_rss_bytes;
using examples::print_json;
using examples::TextOutput;
using examples::Tokenizer;
using examples::UsageError;
using grok1_example::Activations;

using examples::Clock;
using examples::seconds_since;

constexpr const char* kUsage =
    "usage: grok1 --checkpoint DIR [--tokenizer FILE] (--prompt TEXT | --tokens 1,2,3)\n"
    "             [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S] [--threads N]\n"
    "             [--dump-logits FILE.npy] [--json] [--stop-at-eos] [--ram-budget BYTES]\n"
    "             [--cache-policy none|lru|most-used] [--speculation] [--prefill-chunk N]\n"
    "             [--no-huge-readahead] [--activations exact|int8] [--perplexity FILE]\n"
    "\n"
    "  --checkpoint DIR      directory holding ckpt-0/ (or ckpt/) and optionally config.json\n"
    "  --tokenizer FILE      SentencePiece model (the release's tokenizer.model); needed for\n"
    "                        --prompt and for printing text\n"
    "  --prompt TEXT         prompt, encoded without BOS (as run.py)\n"
    "  --tokens IDS          prompt as comma-separated token ids\n"
    "  --max-new-tokens N    tokens to generate (default 100, as run.py)\n"
    "  --temperature T       0 = greedy, ties to the lowest id (default 0.01, as run.py)\n"
    "  --top-p P             nucleus mass in (0, 1] (default 1.0, as run.py)\n"
    "  --seed S              sampling seed (default 42, as run.py)\n"
    "  --threads N           worker threads (default: all cores)\n"
    "  --dump-logits FILE    write the prompt's logits, float32 .npy [prompt_len, vocab]\n"
    "  --json                print one JSON object on stdout, nothing on stderr but errors\n"
    "  --stop-at-eos         stop after generating EOS (id 2); run.py never stops early\n"
    "  --ram-budget BYTES    memory the process may hold (suffix K, M or G: binary units);\n"
    "                        default 80% of the available memory\n"
    "  --cache-policy P      experts kept mapped between uses when streaming\n"
    "                        (default most-used)\n"
    "  --speculation         prefetch the experts the next layer's router picks (off: it did\n"
    "                        not pay off in docs/performance.md)\n"
    "  --no-huge-readahead   keep the device's read-ahead for faults on streamed weights\n"
    "  --prefill-chunk N     prompt tokens per forward call (default 256, or 1 when a layer's\n"
    "                        experts do not fit in the budget)\n"
    "  --activations A       exact (default: f32 products) or int8 (activations quantised\n"
    "                        per token, VNNI; approximate) for the int8 matrices\n"
    "  --perplexity FILE     instead of generating: mean next-token cross-entropy and\n"
    "                        perplexity over FILE's text (needs --tokenizer), in windows of\n"
    "                        the model's max_seq_len\n";

struct Args : examples::RunnerArgs {
  bool speculate = false;
  Activations activations = Activations::kExact;
  std::optional<std::filesystem::path> perplexity;
  Args() { temperature = 0.01; }  // run.py's
};

Args parse_args(int argc, char** argv) {
  Args a;
  examples::for_each_flag(argc, argv, kUsage, [&a](std::string_view flag, auto& value) {
    if (examples::parse_runner_flag(flag, value, a)) return true;
    if (flag == "--speculation") {
      a.speculate = true;
    } else if (flag == "--activations") {
      a.activations = grok1_example::parse_activations(value());
    } else if (flag == "--perplexity") {
      a.perplexity = std::string(value());
    } else {
      return false;
    }
    return true;
  });
  if (a.checkpoint.empty()) throw UsageError("--checkpoint DIR is required");
  if (a.perplexity) {
    if (a.prompt || a.tokens) throw UsageError("--perplexity FILE takes no --prompt or --tokens");
    if (!a.tokenizer) throw UsageError("--perplexity needs --tokenizer FILE");
    return a;
  }
  if (a.prompt.has_value() == a.tokens.has_value()) {
    throw UsageError("give exactly one of --prompt TEXT or --tokens IDS");
  }
  if (a.prompt && !a.tokenizer) throw UsageError("--prompt needs --tokenizer FILE");
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
  if (args.tokenizer) throw moe::ConfigError("[grok1] built without SentencePiece: no --tokenizer");
  return {};
}
#endif

/// File-validation progress: in place on a terminal; in a log, a line at most every 2 s.
moe::grok1::ProgressFn validation_progress(const Log& log) {
  if (log.quiet) return {};
  const auto t0 = Clock::now();
  return [tty = log.tty, t0, last = t0](std::size_t done, std::size_t total,
                                        const std::filesystem::path&) mutable {
    if (tty) {
      std::fprintf(stderr, "\rgrok1: validating checkpoint files %zu/%zu", done, total);
      if (done == total) std::fputc('\n', stderr);
    } else if (done == total || seconds_since(last) >= 2.0) {
      last = Clock::now();
      std::fprintf(stderr, "grok1: validated %zu/%zu checkpoint files (%.1f s)\n", done, total,
                   seconds_since(t0));
    }
  };
}

moe::WeightResidency make_residency(const Args& args, const moe::grok1::Checkpoint& ckpt,
                                    const Log& log);

/// The checkpoint, where its weights live, its weight views and the model over them (views
/// only; a streamed model's tied head releases the embedding chunk by chunk); with
/// --activations int8, also the int8-activation views and their model, which run instead.
struct Loaded {
  using ActModel = moe::grok1::ModelOf<moe::Int8ActWeight>;
  moe::grok1::Checkpoint ckpt;
  moe::WeightResidency residency;
  moe::grok1::Weights weights;
  moe::grok1::Model model;
  std::optional<moe::grok1::WeightsT<moe::Int8ActWeight>> act_weights;
  std::optional<ActModel> act_model;

  Loaded(const Args& args, const moe::grok1::OpenOptions& options, const Log& log)
      : ckpt(moe::grok1::Checkpoint::open(args.checkpoint, options)),
        residency(make_residency(args, ckpt, log)),
        weights(moe::grok1::bind_weights(ckpt, {.release_head = residency.stats().head_released})),
        model(moe::grok1::make_model(ckpt.config(), weights)) {
    if (args.activations == Activations::kInt8) {
      act_weights.emplace(moe::grok1::int8_activations(weights));
      act_model.emplace(moe::grok1::make_model(ckpt.config(), *act_weights));
    }
  }
  /// f(the model that runs).
  template <class F>
  void with_model(F&& f) const {
    if (act_model) {
      f(*act_model);
    } else {
      f(model);
    }
  }
};

/// The prompt's ids (encoded without BOS, as run.py), checked against the context.
std::vector<std::int32_t> prompt_ids(const Args& args, [[maybe_unused]] const Tokenizer& tok,
                                     const moe::grok1::Config& cfg) {
  std::vector<std::int32_t> prompt;
#if defined(MOE_HAVE_SENTENCEPIECE)
  if (args.prompt) prompt = tok->encode(*args.prompt);
  if (tok && static_cast<std::size_t>(tok->vocab_size()) > cfg.vocab_size) {
    throw moe::ConfigError("[grok1] the tokenizer has " + std::to_string(tok->vocab_size()) +
                           " pieces but the checkpoint's vocabulary is " +
                           std::to_string(cfg.vocab_size));
  }
#endif
  if (args.tokens) prompt = *args.tokens;
  if (prompt.empty()) throw moe::ConfigError("[grok1] the prompt encodes to zero tokens");
  // Token ids are checked by generate() (TokenError naming the id) before any compute.
  if (prompt.size() + args.max_new_tokens > cfg.max_seq_len) {
    throw moe::ConfigError("[grok1] prompt (" + std::to_string(prompt.size()) + ") + " +
                           std::to_string(args.max_new_tokens) +
                           " new tokens exceed the context of " + std::to_string(cfg.max_seq_len));
  }
  return prompt;
}

/// Where the weights live (library: moe::WeightResidency): all mapped when the checkpoint fits
/// the budget, otherwise experts (and attention if needed) released after use, prefetched ahead.
moe::WeightResidency make_residency(const Args& args, const moe::grok1::Checkpoint& ckpt,
                                    const Log& log) {
  moe::ResidencyOptions o;
  o.ram_budget = args.ram_budget;
  o.cache = args.cache_policy;
  o.speculate = args.speculate;
  o.huge_readahead = args.huge_readahead;
  moe::WeightResidency res(moe::grok1::residency_plan(ckpt), o);
  res.report_faults("grok1: error: ");
  const moe::ResidencyStats& s = res.stats();
  if (s.streaming) {
    log("grok1: the model (%.1f GB, %.1f GB of it copied) exceeds the RAM budget (%.1f GB): "
        "streaming experts%s%s, %s cache of %.1f GB, speculation %s\n",
        static_cast<double>(s.model_bytes) / 1e9, static_cast<double>(s.copied_bytes) / 1e9,
        static_cast<double>(s.budget) / 1e9, s.attention_streamed ? " and attention" : "",
        s.head_released ? " (head in chunks)" : "",
        std::string(moe::cache_policy_name(args.cache_policy)).c_str(),
        static_cast<double>(s.cache_capacity) / 1e9, args.speculate ? "on" : "off");
  }
  return res;
}

/// The per-layer hook: the residency's steps, then prefill progress (in place on a terminal;
/// as lines for a streamed model, whose prefill reads the whole checkpoint).
std::function<void(std::size_t, moe::MatrixView<const float>)> layer_hook(moe::WeightResidency& res,
                                                                          std::size_t n_layers,
                                                                          const Log& log) {
  const bool progress = !log.quiet && (log.tty || res.stats().streaming);
  return
      [&res, n_layers, progress, tty = log.tty](std::size_t layer, moe::MatrixView<const float> h) {
        res.on_layer(layer, h);
        if (!progress || h.rows <= 1) return;
        if (tty) {
          std::fprintf(stderr, "\rgrok1: prefill layer %zu/%zu", layer + 1, n_layers);
          if (layer + 1 == n_layers) std::fputc('\n', stderr);
        } else if ((layer + 1) % 8 == 0 || layer + 1 == n_layers) {
          std::fprintf(stderr, "grok1: prefill layer %zu/%zu\n", layer + 1, n_layers);
        }
      };
}

/// What one run produced, for the summary line and --json.
struct Report : examples::RunReport {
  bool speculate = false;
  Activations activations = Activations::kExact;
};

/// The --json object (keys documented in examples/grok1/README.md).
nlohmann::ordered_json json_report(const Report& r, const moe::grok1::Config& cfg,
                                   const TextOutput& out) {
  nlohmann::ordered_json j;
  examples::json_generation(j, r, out);
  j["config"] = {{"vocab_size", cfg.vocab_size}, {"d_model", cfg.d_model},
                 {"n_layers", cfg.n_layers},     {"n_q_heads", cfg.n_q_heads},
                 {"n_kv_heads", cfg.n_kv_heads}, {"n_experts", cfg.n_experts},
                 {"top_k", cfg.top_k},           {"d_ff", cfg.d_ff}};
  examples::json_run(j, r);
  j["activations"] = grok1_example::activations_name(r.activations);
  j["streamed_experts"] = r.residency.streaming;
  j["io"] = examples::json_io(r);
  nlohmann::ordered_json res = examples::json_residency(r);
  res["head_released"] = r.residency.head_released;
  res["speculation"] = r.speculate;
  res["speculated"] = r.residency.speculated;
  res["speculation_hit_rate"] = r.residency.speculation_hit_rate();
  j["residency"] = std::move(res);
  return j;
}

/// Generates, streaming the text to `out`; records the storage reads of prefill and decode.
void generate(const Loaded& m, moe::ThreadPool& pool, moe::DecoderState& state,
              const moe::GenerateOptions& gen, TextOutput& out, Report& r) {
  m.with_model(
      [&](const auto& model) { examples::generate_reporting(pool, model, state, gen, out, r); });
}

/// --perplexity FILE: the text's ids (as examples/train tokenises it), scored window by window;
/// progress on stderr (in place on a terminal, else a line every 5 s), the result on stdout.
int run_perplexity(const Args& args, [[maybe_unused]] const Tokenizer& tokenizer, const Loaded& m,
                   moe::WeightResidency& residency, const Log& log) {
#if defined(MOE_HAVE_SENTENCEPIECE)
  const moe::grok1::Config& cfg = m.ckpt.config();
  moe::ThreadPool pool(args.threads);
  moe::CorpusOptions no_cache;
  no_cache.use_cache = false;  // never write FILE.tokens next to the user's file
  const moe::TokenStream text =
      moe::tokenize_corpus(pool, *tokenizer, {*args.perplexity}, no_cache);
  const char* mode = grok1_example::activations_name(args.activations);
  log("grok1: perplexity over %s: %zu tokens, windows of %zu, %s activations, %zu threads\n",
      args.perplexity->c_str(), text.size(), cfg.max_seq_len, mode, pool.size());
  auto t_last = Clock::now();
  auto progress = [&](std::size_t done, std::size_t total) {
    if (log.quiet) return;
    if (log.tty) {
      std::fprintf(stderr, "\rgrok1: perplexity window %zu/%zu", done, total);
      if (done == total) std::fputc('\n', stderr);
    } else if (done == total || seconds_since(t_last) >= 5.0) {
      t_last = Clock::now();
      std::fprintf(stderr, "grok1: perplexity window %zu/%zu\n", done, total);
    }
  };
  grok1_example::PerplexityResult p;
  m.with_model([&](const auto& model) {
    p = grok1_example::perplexity(pool, model, text.ids(), cfg.max_seq_len, cfg.vocab_size,
                                  progress, layer_hook(residency, cfg.n_layers, Log{true, false}));
  });
  if (args.json) {
    nlohmann::ordered_json j;
    j["file"] = args.perplexity->string();
    j["activations"] = mode;
    j["tokens"] = p.n_ids;
    j["predicted_tokens"] = p.n_predicted;
    j["windows"] = p.n_windows;
    j["window"] = p.window;
    j["mean_cross_entropy"] = p.mean_cross_entropy;
    j["perplexity"] = p.perplexity();
    j["seconds"] = p.seconds;
    j["tokens_per_second"] = p.tokens_per_second();
    j["threads"] = pool.size();
    print_json(j);
  } else {
    std::printf(
        "mean cross-entropy %.6f nats/token, perplexity %.4f (%zu tokens predicted, %zu "
        "windows of %zu, %s activations)\n",
        p.mean_cross_entropy, p.perplexity(), p.n_predicted, p.n_windows, p.window, mode);
  }
  log("grok1: scored %zu tokens in %.2f s (%.0f tokens/s); peak RSS %.1f MiB\n", p.n_predicted,
      p.seconds, p.tokens_per_second(), static_cast<double>(peak_rss_bytes()) / (1024.0 * 1024.0));
  return 0;
#else
  (void)args, (void)m, (void)residency, (void)log;
  throw moe::ConfigError("[grok1] built without SentencePiece: no --perplexity");
#endif
}

int run(const Args& args) {
  const Log log{args.json, isatty(fileno(stderr)) != 0};
  const Tokenizer tokenizer = load_tokenizer(args);  // a bad path fails before validation
  const auto t_load = Clock::now();
  moe::grok1::OpenOptions open_options;
  open_options.progress = validation_progress(log);
  Loaded m(args, open_options, log);
  const moe::grok1::Config& cfg = m.ckpt.config();
  log("grok1: %s\n", m.ckpt.summary().c_str());
  moe::WeightResidency& residency = m.residency;
  if (args.perplexity) return run_perplexity(args, tokenizer, m, residency, log);

  Report r;
  r.prompt = prompt_ids(args, tokenizer, cfg);
  moe::ThreadPool pool(args.threads);
  // The prompt runs as one batch, in chunks; one token at a time when a batch (which reads all
  // of a layer's experts at once) does not fit in the RAM budget.
  r.prefill_chunk =
      args.prefill_chunk ? args.prefill_chunk : (residency.batch_prefill_fits() ? 256 : 1);
  moe::DecoderState state;
  m.with_model([&](const auto& model) {
    state = model.make_state(r.prompt.size() + args.max_new_tokens,
                             std::min(r.prompt.size(), r.prefill_chunk));
  });
  r.load_seconds = seconds_since(t_load);
  r.threads = pool.size();
  log("grok1: loaded in %.2f s; %zu prompt tokens, %zu threads\n", r.load_seconds, r.prompt.size(),
      pool.size());

  moe::GenerateOptions gen = examples::generate_options(args, cfg.eos_id);
  gen.on_layer = layer_hook(residency, cfg.n_layers, log);
  moe::Buffer<float> prompt_logits;
  if (args.dump_logits) {
    prompt_logits = moe::Buffer<float>(r.prompt.size() * cfg.vocab_size);
    gen.prompt_logits = {prompt_logits.data(), r.prompt.size(), cfg.vocab_size};
  }
  TextOutput out(tokenizer, log.quiet);
  log("grok1: prefill of %zu tokens, then %zu new tokens\n", r.prompt.size(), args.max_new_tokens);
  out.prompt(args.prompt);
  generate(m, pool, state, gen, out, r);
  if (args.dump_logits) {
    moe::io::write_npy(*args.dump_logits, prompt_logits.data(), {r.prompt.size(), cfg.vocab_size});
    log("grok1: wrote prompt logits [%zu, %zu] to %s\n", r.prompt.size(), cfg.vocab_size,
        args.dump_logits->c_str());
  }
  r.peak_rss = peak_rss_bytes();
  r.residency = residency.stats();
  r.cache_policy = args.cache_policy;
  r.speculate = args.speculate;
  r.activations = args.activations;
  examples::print_summary("grok1", r, log);
  if (args.json) print_json(json_report(r, cfg, out));
  return 0;
}

#if defined(MOE_HAVE_MPI)
#include "tensor_parallel.hpp"  // MPI mode (uses the definitions above)
#endif

}  // namespace

int main(int argc, char** argv) {
#if defined(MOE_HAVE_MPI)
  if (moe::mpi::launched_by_mpirun()) return main_tensor_parallel(argc, argv);
#endif
  return examples::run_main("grok1", kUsage, argc, argv, parse_args, run);
}
