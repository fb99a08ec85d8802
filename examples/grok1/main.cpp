// grok1: runs xAI's original Grok-1 release (or any checkpoint in its format) directly from the
// pickled tensor files, zero-copy through mmap. See examples/grok1/README.md.
//
//   grok1 --checkpoint DIR [--tokenizer FILE] (--prompt TEXT | --tokens 1,2,3)
//         [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S] [--threads N]
//         [--dump-logits FILE.npy] [--json] [--stop-at-eos]
//
// Exit codes: 0 success, 1 runtime error (bad checkpoint, bad token ids, ...), 2 usage error.
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <sys/resource.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <moe/io/npy.hpp>
#include <moe/models/grok1_loader.hpp>
#include <moe/text/generate.hpp>
#if defined(MOE_HAVE_SENTENCEPIECE)
#include <moe/text/tokenizer.hpp>
#endif

#include "json_writer.hpp"

namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kUsage =
    "usage: grok1 --checkpoint DIR [--tokenizer FILE] (--prompt TEXT | --tokens 1,2,3)\n"
    "             [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S] [--threads N]\n"
    "             [--dump-logits FILE.npy] [--json] [--stop-at-eos]\n"
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
    "  --stop-at-eos         stop after generating EOS (id 2); run.py never stops early\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Args {
  std::filesystem::path checkpoint;
  std::optional<std::filesystem::path> tokenizer;
  std::optional<std::string> prompt;
  std::optional<std::vector<std::int32_t>> tokens;
  std::size_t max_new_tokens = 100;
  double temperature = 0.01;
  double top_p = 1.0;
  std::uint64_t seed = 42;
  std::size_t threads = 0;
  std::optional<std::filesystem::path> dump_logits;
  bool json = false;
  bool stop_at_eos = false;
};

template <class T>
T parse_integer(std::string_view flag, std::string_view s, T lo, T hi) {
  T v{};
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v < lo || v > hi) {
    throw UsageError(std::string(flag) + " expects an integer in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], got '" + std::string(s) + "'");
  }
  return v;
}

double parse_double(std::string_view flag, std::string_view s, double lo, double hi) {
  std::string str(s);
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(str.c_str(), &end);
  if (str.empty() || end != str.c_str() + str.size() || errno != 0 || !std::isfinite(v) || v < lo ||
      v > hi) {
    throw UsageError(std::string(flag) + " expects a number in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], got '" + str + "'");
  }
  return v;
}

std::vector<std::int32_t> parse_tokens(std::string_view s) {
  std::vector<std::int32_t> ids;
  while (!s.empty()) {
    const std::size_t comma = s.find(',');
    const std::string_view item = s.substr(0, comma);
    ids.push_back(parse_integer<std::int32_t>("--tokens", item, 0, INT32_MAX));
    if (comma == std::string_view::npos) break;
    s.remove_prefix(comma + 1);
    if (s.empty()) throw UsageError("--tokens has a trailing comma");
  }
  if (ids.empty()) throw UsageError("--tokens is empty");
  return ids;
}

Args parse_args(int argc, char** argv) {
  Args a;
  bool have_checkpoint = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) throw UsageError(std::string(flag) + " needs a value");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (flag == "--checkpoint") {
      a.checkpoint = std::string(value());
      have_checkpoint = true;
    } else if (flag == "--tokenizer") {
      a.tokenizer = std::string(value());
    } else if (flag == "--prompt") {
      a.prompt = std::string(value());
    } else if (flag == "--tokens") {
      a.tokens = parse_tokens(value());
    } else if (flag == "--max-new-tokens") {
      a.max_new_tokens = parse_integer<std::size_t>(flag, value(), 0, 1u << 20);
    } else if (flag == "--temperature") {
      a.temperature = parse_double(flag, value(), 0.0, 1e6);
    } else if (flag == "--top-p") {
      a.top_p = parse_double(flag, value(), 1e-12, 1.0);
    } else if (flag == "--seed") {
      a.seed = parse_integer<std::uint64_t>(flag, value(), 0, UINT64_MAX);
    } else if (flag == "--threads") {
      a.threads = parse_integer<std::size_t>(flag, value(), 1, 1024);
    } else if (flag == "--dump-logits") {
      a.dump_logits = std::string(value());
    } else if (flag == "--json") {
      a.json = true;
    } else if (flag == "--stop-at-eos") {
      a.stop_at_eos = true;
    } else {
      throw UsageError("unknown option '" + std::string(flag) + "'");
    }
  }
  if (!have_checkpoint) throw UsageError("--checkpoint DIR is required");
  if (a.prompt.has_value() == a.tokens.has_value()) {
    throw UsageError("give exactly one of --prompt TEXT or --tokens IDS");
  }
  if (a.prompt && !a.tokenizer) throw UsageError("--prompt needs --tokenizer FILE");
  return a;
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::uint64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<std::uint64_t>(u.ru_maxrss) * 1024u;  // Linux reports KiB
}

int run(const Args& args) {
  const bool quiet = args.json;
  auto log = [&](const char* fmt, auto... xs) {
    if (!quiet) std::fprintf(stderr, fmt, xs...);
  };

  // Tokenizer first: a bad path fails before minutes of checkpoint validation.
#if defined(MOE_HAVE_SENTENCEPIECE)
  std::optional<moe::Tokenizer> tokenizer;
  if (args.tokenizer) tokenizer.emplace(*args.tokenizer);
#else
  if (args.tokenizer) throw moe::ConfigError("[grok1] built without SentencePiece: no --tokenizer");
#endif

  // ---- load: map and validate every tensor file -------------------------------------------
  const auto t_load = Clock::now();
  const bool tty = isatty(fileno(stderr)) != 0;
  moe::grok1::OpenOptions open_options;
  if (!quiet) {
    // On a terminal the line updates in place; in a log, a line at most every 2 s and at the end.
    open_options.progress = [tty, t_load, last = t_load](std::size_t done, std::size_t total,
                                                         const std::filesystem::path&) mutable {
      if (tty) {
        std::fprintf(stderr, "\rgrok1: validating checkpoint files %zu/%zu", done, total);
        if (done == total) std::fputc('\n', stderr);
      } else if (done == total || seconds_since(last) >= 2.0) {
        last = Clock::now();
        std::fprintf(stderr, "grok1: validated %zu/%zu checkpoint files (%.1f s)\n", done, total,
                     seconds_since(t_load));
      }
    };
  }
  const auto ckpt = moe::grok1::Checkpoint::open(args.checkpoint, open_options);
  const moe::grok1::Config& cfg = ckpt.config();
  const moe::grok1::Weights weights = moe::grok1::bind_weights(ckpt);
  const auto model = moe::grok1::make_model(cfg, weights);
  log("grok1: %s\n", ckpt.summary().c_str());

  // ---- prompt ---------------------------------------------------------------------------------
  std::vector<std::int32_t> prompt;
#if defined(MOE_HAVE_SENTENCEPIECE)
  if (args.prompt) prompt = tokenizer->encode(*args.prompt);
  if (tokenizer && static_cast<std::size_t>(tokenizer->vocab_size()) > cfg.vocab_size) {
    throw moe::ConfigError("[grok1] the tokenizer has " + std::to_string(tokenizer->vocab_size()) +
                           " pieces but the checkpoint's vocabulary is " +
                           std::to_string(cfg.vocab_size));
  }
#endif
  if (args.tokens) prompt = *args.tokens;
  if (prompt.empty()) throw moe::ConfigError("[grok1] the prompt encodes to zero tokens");
  // Token ids are checked by generate() (TokenError naming the id) before any compute.
  const std::size_t capacity = prompt.size() + args.max_new_tokens;
  if (capacity > cfg.max_seq_len) {
    throw moe::ConfigError("[grok1] prompt (" + std::to_string(prompt.size()) + ") + " +
                           std::to_string(args.max_new_tokens) +
                           " new tokens exceed the context of " + std::to_string(cfg.max_seq_len));
  }
  moe::ThreadPool pool(args.threads);
  // Prefill runs the prompt as one batch (in chunks of up to 256 tokens).
  moe::DecoderState state = model.make_state(capacity, std::min<std::size_t>(prompt.size(), 256));
  const double load_seconds = seconds_since(t_load);
  log("grok1: loaded in %.2f s; %zu prompt tokens, %zu threads\n", load_seconds, prompt.size(),
      pool.size());

  // ---- generate -------------------------------------------------------------------------------
  moe::GenerateOptions gen;
  gen.max_new_tokens = args.max_new_tokens;
  gen.sampler.temperature = args.temperature;
  gen.sampler.top_p = args.top_p;
  gen.sampler.seed = args.seed;
  gen.eos_id = args.stop_at_eos ? cfg.eos_id : -1;
  // Memory: the weights stay in the page cache (mmap); a token reads 2 of 8 experts per layer.
  // When the checkpoint is larger than half the RAM (the real 318 GB release), a layer's expert
  // pages are unmapped from this process once the layer is done (they stay cached until the
  // kernel needs the memory), so RSS holds about one layer's experts rather than growing to the
  // RAM size, and the next layer's attention weights are prefetched. A checkpoint that fits in
  // RAM keeps its pages mapped (re-faulting them every token would only cost time).
  const double ram_bytes =
      static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
  const bool stream_experts = static_cast<double>(ckpt.file_bytes()) > 0.5 * ram_bytes;
  if (stream_experts) {
    log("grok1: checkpoint (%.1f GB) exceeds half the RAM (%.1f GB): streaming experts\n",
        static_cast<double>(ckpt.file_bytes()) / 1e9, ram_bytes / 1e9);
  }
  // Prefill progress per layer: in place on a terminal; as lines for a big (streamed) model,
  // whose prefill reads the whole checkpoint and takes minutes.
  const bool layer_progress = !quiet && (tty || stream_experts);
  if (stream_experts || layer_progress) {
    gen.on_layer = [&](std::size_t layer, moe::MatrixView<const float> h) {
      using moe::grok1::Slot;
      if (stream_experts) {
        for (Slot s : {Slot::kExpertGate, Slot::kExpertUp, Slot::kExpertDown}) {
          ckpt.advise(ckpt.index_of(layer, s), moe::io::Advice::kDontNeed);
        }
        if (layer + 1 < cfg.n_layers) {
          for (Slot s : {Slot::kQuery, Slot::kKey, Slot::kValue, Slot::kAttnOut}) {
            ckpt.advise(ckpt.index_of(layer + 1, s), moe::io::Advice::kWillNeed);
          }
        }
      }
      if (layer_progress && h.rows > 1) {
        if (tty) {
          std::fprintf(stderr, "\rgrok1: prefill layer %zu/%zu", layer + 1, cfg.n_layers);
          if (layer + 1 == cfg.n_layers) std::fputc('\n', stderr);
        } else if ((layer + 1) % 8 == 0 || layer + 1 == cfg.n_layers) {
          std::fprintf(stderr, "grok1: prefill layer %zu/%zu\n", layer + 1, cfg.n_layers);
        }
      }
    };
  }
  moe::Buffer<float> prompt_logits;
  if (args.dump_logits) {
    prompt_logits = moe::Buffer<float>(prompt.size() * cfg.vocab_size);
    gen.prompt_logits = moe::MatrixView<float>(prompt_logits.data(), prompt.size(), cfg.vocab_size);
  }

  std::string text;
#if defined(MOE_HAVE_SENTENCEPIECE)
  std::optional<moe::DecodeStream> stream;
  if (tokenizer) stream.emplace(tokenizer->decode_stream());
#endif
  auto on_token = [&](std::int32_t id) {
#if defined(MOE_HAVE_SENTENCEPIECE)
    if (stream) {
      const std::string piece = stream->push(id);
      text += piece;
      if (!quiet) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
      }
      return;
    }
#endif
    if (!quiet) {
      std::printf("%d ", id);
      std::fflush(stdout);
    }
  };
  log("grok1: prefill of %zu tokens, then %zu new tokens\n", prompt.size(), args.max_new_tokens);
  if (!quiet && args.prompt) {
    std::fputs(args.prompt->c_str(), stdout);  // the continuation is streamed right after it
    std::fflush(stdout);
  }
  const moe::GenerateResult result = moe::generate(pool, model, state, prompt, gen, on_token);
#if defined(MOE_HAVE_SENTENCEPIECE)
  if (stream) {
    const std::string rest = stream->finish();
    text += rest;
    if (!quiet) std::fwrite(rest.data(), 1, rest.size(), stdout);
  }
#endif
  if (!quiet) {
    std::fputc('\n', stdout);
    std::fflush(stdout);
  }

  if (args.dump_logits) {
    moe::io::write_npy(*args.dump_logits, prompt_logits.data(), {prompt.size(), cfg.vocab_size});
    log("grok1: wrote prompt logits [%zu, %zu] to %s\n", prompt.size(), cfg.vocab_size,
        args.dump_logits->c_str());
  }

  const std::uint64_t rss = peak_rss_bytes();
  log("grok1: prefill %zu tokens in %.3f s (%.2f tokens/s); decode %zu tokens in %.3f s "
      "(%.3f tokens/s); peak RSS %.1f MiB\n",
      result.prompt_tokens, result.prefill_seconds, result.prefill_tokens_per_second(),
      result.tokens.size() > 0 ? result.tokens.size() - 1 : 0, result.decode_seconds,
      result.decode_tokens_per_second(), static_cast<double>(rss) / (1024.0 * 1024.0));

  if (args.json) {
    grok1_example::JsonWriter j(stdout);
    j.begin_object();
    j.key("prompt_tokens").int_array(prompt);
    j.key("generated_tokens").int_array(result.tokens);
#if defined(MOE_HAVE_SENTENCEPIECE)
    if (tokenizer) j.key("text").string(text);
#endif
    j.key("stopped_at_eos").boolean(result.stopped_at_eos);
    j.key("config").begin_object();
    j.key("vocab_size").number(static_cast<double>(cfg.vocab_size));
    j.key("d_model").number(static_cast<double>(cfg.d_model));
    j.key("n_layers").number(static_cast<double>(cfg.n_layers));
    j.key("n_q_heads").number(static_cast<double>(cfg.n_q_heads));
    j.key("n_kv_heads").number(static_cast<double>(cfg.n_kv_heads));
    j.key("n_experts").number(static_cast<double>(cfg.n_experts));
    j.key("top_k").number(static_cast<double>(cfg.top_k));
    j.key("d_ff").number(static_cast<double>(cfg.d_ff));
    j.end_object();
    j.key("timings").begin_object();
    j.key("load_seconds").number(load_seconds);
    j.key("prefill_seconds").number(result.prefill_seconds);
    j.key("prefill_tokens_per_second").number(result.prefill_tokens_per_second());
    j.key("decode_seconds").number(result.decode_seconds);
    j.key("decode_tokens_per_second").number(result.decode_tokens_per_second());
    j.end_object();
    j.key("peak_rss_bytes").number(static_cast<double>(rss));
    j.key("threads").number(static_cast<double>(pool.size()));
    j.key("streamed_experts").boolean(stream_experts);
    j.end_object();
    std::fputc('\n', stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  try {
    args = parse_args(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "grok1: error: %s\n\n%s", e.what(), kUsage);
    return 2;
  }
  try {
    return run(args);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "\ngrok1: error: out of memory\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\ngrok1: error: %s\n", e.what());
  }
  return 1;
}
