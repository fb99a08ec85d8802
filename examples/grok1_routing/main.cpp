// grok1_routing: records which experts a Grok-1-format model routes real text to, and replays
// that routing through the library's expert cache (moe::ExpertCache, the code WeightResidency
// runs) at another checkpoint's sizes and RAM budgets: hit rates of real routing at Grok-1's
// expert size. See examples/grok1/README.md and docs/performance.md ("Weights larger than RAM").
//
//   grok1_routing record --checkpoint DIR --tokenizer FILE --text FILE [--tokens N] --out TRACE
//   grok1_routing replay --trace TRACE --checkpoint DIR [--budgets 8G,12G,16G,20G]
//                        [--disk-gbps X] [--seed S]
//
// record feeds the text's tokens one at a time (windows of the model's context) through the
// library decoder and writes, per token and layer, the experts that ran (from the MoE layers' own
// statistics). replay builds the residency plan of DIR (e.g. the 314B-shaped sparse checkpoint:
// only its sizes are used, nothing is read), splits each budget as WeightResidency does
// (moe::split_budget), and drives moe::ExpertCache with the trace, one decode step per token:
// plan layer l replays trace layer l % L from a token offset of (l / L) * N / ceil(layers / L),
// so a trace of fewer layers than the plan keeps each layer's skew and recency without repeating
// one layer's choices in lockstep. It prints, per budget and policy, the expert-cache hit rate,
// the bytes a token maps again (missed experts, released attention and head) and the seconds per
// token at --disk-gbps; the same with uniformly random routing as the baseline.
//
// Exit codes: 0 success, 1 runtime error, 2 usage error.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <moe/core/thread_pool.hpp>
#include <moe/models/grok1_loader.hpp>
#include <moe/models/grok1_residency.hpp>
#include <moe/models/weight_residency.hpp>
#if defined(MOE_HAVE_SENTENCEPIECE)
#include <moe/text/tokenizer.hpp>
#endif

#include "../common/cli.hpp"

namespace {

using examples::parse_bytes;
using examples::parse_double;
using examples::parse_integer;
using examples::UsageError;

constexpr const char* kUsage =
    "usage: grok1_routing record --checkpoint DIR --tokenizer FILE --text FILE [--tokens N]\n"
    "                            --out TRACE\n"
    "       grok1_routing replay --trace TRACE --checkpoint DIR [--budgets 8G,12G,16G,20G]\n"
    "                            [--disk-gbps X] [--seed S]\n";

constexpr std::string_view kMagic = "moe-routing-trace 1";

/// Per token, per layer, the experts that ran (ascending).
struct Trace {
  std::size_t n_layers = 0, n_experts = 0, top_k = 0;
  std::vector<std::vector<std::vector<std::uint16_t>>> tokens;  // [token][layer] -> experts
};

void write_trace(const std::filesystem::path& path, const Trace& t) {
  std::ofstream f(path);
  f << kMagic << "\nlayers " << t.n_layers << " experts " << t.n_experts << " top_k " << t.top_k
    << " tokens " << t.tokens.size() << "\n";
  for (const auto& tok : t.tokens) {
    for (std::size_t l = 0; l < tok.size(); ++l) {
      for (std::size_t k = 0; k < tok[l].size(); ++k) f << (k ? "," : l ? " " : "") << tok[l][k];
    }
    f << "\n";
  }
  if (!f) throw moe::IoError("[grok1_routing] cannot write '" + path.string() + "'");
}

Trace read_trace(const std::filesystem::path& path) {
  std::ifstream f(path);
  if (!f) throw moe::IoError("[grok1_routing] cannot read '" + path.string() + "'");
  const std::string where = "[grok1_routing] '" + path.string() + "'";
  std::string line;
  std::getline(f, line);
  if (line != kMagic) throw moe::FormatError(where + " is not a routing trace");
  Trace t;
  std::string w1, w2, w3, w4;
  std::size_t n = 0;
  f >> w1 >> t.n_layers >> w2 >> t.n_experts >> w3 >> t.top_k >> w4 >> n;
  if (!f || w1 != "layers" || w2 != "experts" || w3 != "top_k" || w4 != "tokens" ||
      t.n_layers == 0 || t.n_experts == 0 || t.n_experts > 65535) {
    throw moe::FormatError(where + ": bad header");
  }
  std::getline(f, line);
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::getline(f, line)) {
      throw moe::FormatError(where + ": " + std::to_string(i) + " of " + std::to_string(n) +
                             " token lines");
    }
    std::istringstream ls(line);
    std::vector<std::vector<std::uint16_t>> tok;
    std::string layer;
    while (ls >> layer) {
      std::vector<std::uint16_t> experts;
      std::istringstream es(layer);
      std::string e;
      while (std::getline(es, e, ',')) {
        const auto v = parse_integer<std::size_t>("expert id", e, 0, t.n_experts - 1);
        experts.push_back(static_cast<std::uint16_t>(v));
      }
      tok.push_back(std::move(experts));
    }
    if (tok.size() != t.n_layers) {
      throw moe::FormatError(where + ": token line " + std::to_string(i) + " has " +
                             std::to_string(tok.size()) + " layers, expected " +
                             std::to_string(t.n_layers));
    }
    t.tokens.push_back(std::move(tok));
  }
  return t;
}

// ---- record ------------------------------------------------------------------------------------

int record(const std::vector<std::string_view>& a) {
  std::filesystem::path checkpoint, tokenizer, text, out;
  std::size_t max_tokens = 8192;
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto value = [&]() -> std::string_view {
      if (i + 1 >= a.size()) throw UsageError(std::string(a[i]) + " needs a value");
      return a[++i];
    };
    if (a[i] == "--checkpoint") {
      checkpoint = std::string(value());
    } else if (a[i] == "--tokenizer") {
      tokenizer = std::string(value());
    } else if (a[i] == "--text") {
      text = std::string(value());
    } else if (a[i] == "--tokens") {
      max_tokens = parse_integer<std::size_t>(a[i], value(), 1, 1u << 24);
    } else if (a[i] == "--out") {
      out = std::string(value());
    } else {
      throw UsageError("unknown option '" + std::string(a[i]) + "'");
    }
  }
  if (checkpoint.empty() || tokenizer.empty() || text.empty() || out.empty()) {
    throw UsageError("record needs --checkpoint, --tokenizer, --text and --out");
  }
#if defined(MOE_HAVE_SENTENCEPIECE)
  const auto ckpt = moe::grok1::Checkpoint::open(checkpoint);
  const moe::grok1::Config& c = ckpt.config();
  const moe::grok1::Weights w = moe::grok1::bind_weights(ckpt);
  const moe::grok1::Model model = moe::grok1::make_model(c, w);
  const moe::Tokenizer tok(tokenizer);
  std::ifstream f(text);
  if (!f) throw moe::IoError("[grok1_routing] cannot read '" + text.string() + "'");
  std::vector<std::int32_t> ids;
  std::string line;
  while (ids.size() < max_tokens && std::getline(f, line)) {
    const std::vector<std::int32_t> v = tok.encode(line + "\n");
    ids.insert(ids.end(), v.begin(), v.end());
  }
  ids.resize(std::min(ids.size(), max_tokens));
  moe::ThreadPool pool(0);
  auto state = model.make_state(c.max_seq_len, 1);
  std::vector<moe::MoEResult> results(c.n_layers);
  std::vector<float> logits(c.vocab_size);
  Trace t{c.n_layers, c.n_experts, c.top_k, {}};
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (state.position() == c.max_seq_len) state.reset();  // windows of the model's context
    const std::int32_t in[1] = {ids[i]};
    model.forward(pool, in, state, {logits.data(), 1, c.vocab_size}, {}, results);
    std::vector<std::vector<std::uint16_t>> layers(c.n_layers);
    for (std::size_t l = 0; l < c.n_layers; ++l) {
      for (std::size_t e = 0; e < c.n_experts; ++e) {
        if (results[l].stats.tokens_per_expert[e] > 0) {
          layers[l].push_back(static_cast<std::uint16_t>(e));
        }
      }
    }
    t.tokens.push_back(std::move(layers));
  }
  write_trace(out, t);
  std::fprintf(stderr, "grok1_routing: %zu tokens x %zu layers recorded to %s\n", t.tokens.size(),
               t.n_layers, out.c_str());
  return 0;
#else
  throw moe::ConfigError("[grok1_routing] built without SentencePiece: cannot encode --text");
#endif
}

// ---- replay ------------------------------------------------------------------------------------

struct Replayed {
  std::size_t uses = 0, hits = 0;
  double gb_per_token = 0;
};

/// Drives moe::ExpertCache over `steps` decode steps; choice(step, layer) gives the experts.
template <class Choice>
Replayed replay_cache(const moe::ResidencyPlan& plan, const moe::BudgetSplit& split,
                      moe::CachePolicy policy, std::size_t steps, Choice&& choice) {
  const std::size_t n_layers = plan.layers.size();
  std::vector<std::vector<std::uint64_t>> bytes(n_layers);
  std::uint64_t dense = 0;
  for (std::size_t l = 0; l < n_layers; ++l) {
    for (const auto& e : plan.layers[l].experts) bytes[l].push_back(moe::detail::range_bytes(e));
    dense += moe::detail::range_bytes(plan.layers[l].dense);
  }
  moe::ExpertCache cache(policy, split.cache_capacity, bytes);
  Replayed r;
  double missed_bytes = 0;
  for (std::size_t s = 0; s < steps; ++s) {
    for (std::size_t l = 0; l < n_layers; ++l) {
      std::vector<int> seen(bytes[l].size(), 0);
      for (std::uint16_t e : choice(s, l)) seen[e] = 1;
      for (std::size_t e = 0; e < seen.size(); ++e) {
        if (seen[e] == 1 && !cache.cached(l, e)) missed_bytes += static_cast<double>(bytes[l][e]);
      }
      const moe::ExpertCache::Step step =
          cache.after_layer(l, seen, [](std::size_t, std::size_t) {});
      r.uses += step.uses;
      r.hits += step.hits;
    }
  }
  const double per_token_fixed =
      (split.attention_streamed ? static_cast<double>(dense) : 0.0) +
      (split.head_released ? static_cast<double>(moe::detail::range_bytes(plan.chunked)) : 0.0);
  r.gb_per_token = (missed_bytes / static_cast<double>(steps) + per_token_fixed) / 1e9;
  return r;
}

int replay(const std::vector<std::string_view>& a) {
  std::filesystem::path trace_path, checkpoint;
  std::vector<std::uint64_t> budgets;
  double disk_gbps = 1.4;
  std::uint64_t seed = 1;
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto value = [&]() -> std::string_view {
      if (i + 1 >= a.size()) throw UsageError(std::string(a[i]) + " needs a value");
      return a[++i];
    };
    if (a[i] == "--trace") {
      trace_path = std::string(value());
    } else if (a[i] == "--checkpoint") {
      checkpoint = std::string(value());
    } else if (a[i] == "--budgets") {
      std::string list(value());
      std::istringstream ls(list);
      std::string b;
      while (std::getline(ls, b, ',')) budgets.push_back(parse_bytes("--budgets", b));
    } else if (a[i] == "--disk-gbps") {
      disk_gbps = parse_double(a[i], value(), 1e-3, 1e4);
    } else if (a[i] == "--seed") {
      seed = parse_integer<std::uint64_t>(a[i], value(), 0, UINT64_MAX);
    } else {
      throw UsageError("unknown option '" + std::string(a[i]) + "'");
    }
  }
  if (trace_path.empty() || checkpoint.empty()) {
    throw UsageError("replay needs --trace and --checkpoint");
  }
  if (budgets.empty()) budgets = {8ull << 30, 12ull << 30, 16ull << 30, 20ull << 30};
  const Trace t = read_trace(trace_path);
  const auto ckpt = moe::grok1::Checkpoint::open(checkpoint);
  const moe::ResidencyPlan plan = moe::grok1::residency_plan(ckpt);
  const std::size_t n_layers = plan.layers.size(), n_experts = plan.layers[0].experts.size();
  if (t.n_experts != n_experts || t.tokens.empty()) {
    throw moe::ConfigError("[grok1_routing] the trace has " + std::to_string(t.n_experts) +
                           " experts per layer, the checkpoint " + std::to_string(n_experts));
  }
  const std::size_t n = t.tokens.size();
  const std::size_t groups = (n_layers + t.n_layers - 1) / t.n_layers;
  auto real = [&](std::size_t s, std::size_t l) -> const std::vector<std::uint16_t>& {
    return t.tokens[(s + (l / t.n_layers) * (n / groups)) % n][l % t.n_layers];
  };
  // Uniform routing: top_k distinct experts per (step, layer), drawn once.
  std::mt19937_64 rng(seed);
  std::vector<std::vector<std::vector<std::uint16_t>>> uniform(
      n, std::vector<std::vector<std::uint16_t>>(n_layers));
  for (auto& tok : uniform) {
    for (auto& experts : tok) {
      std::vector<std::uint16_t> all(n_experts);
      for (std::size_t e = 0; e < n_experts; ++e) all[e] = static_cast<std::uint16_t>(e);
      std::shuffle(all.begin(), all.end(), rng);
      experts.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(t.top_k));
    }
  }
  auto uni = [&](std::size_t s, std::size_t l) -> const std::vector<std::uint16_t>& {
    return uniform[s][l];
  };
  const double expert_gb =
      static_cast<double>(moe::detail::range_bytes(plan.layers[0].experts[0])) / 1e9;
  std::printf(
      "# %zu tokens of recorded routing (%zu layers) over %zu layers x %zu experts of %.3f GB "
      "(%s); disk %.2f GB/s\n",
      n, t.n_layers, n_layers, n_experts, expert_gb, checkpoint.c_str(), disk_gbps);
  std::printf(
      "| budget GiB | attention | head | cache GB (experts) | policy | hit rate real | GB/token "
      "real | s/token real | hit rate uniform | GB/token uniform | s/token uniform |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (std::uint64_t budget : budgets) {
    for (moe::CachePolicy policy :
         {moe::CachePolicy::kNone, moe::CachePolicy::kLru, moe::CachePolicy::kMostUsed}) {
      const moe::BudgetSplit split = moe::split_budget(plan, budget, policy);
      const Replayed r = replay_cache(plan, split, policy, n, real);
      const Replayed u = replay_cache(plan, split, policy, n, uni);
      auto rate = [](const Replayed& x) {
        return x.uses ? static_cast<double>(x.hits) / static_cast<double>(x.uses) : 0.0;
      };
      std::printf(
          "| %.1f | %s | %s | %.1f (%.0f) | %s | %.3f | %.1f | %.1f | %.3f | %.1f | %.1f |\n",
          static_cast<double>(budget) / (1ull << 30),
          split.attention_streamed ? "streamed" : "resident",
          split.head_released ? "chunks" : "resident",
          static_cast<double>(split.cache_capacity) / 1e9,
          std::floor(static_cast<double>(split.cache_capacity) / 1e9 / expert_gb),
          std::string(moe::cache_policy_name(policy)).c_str(), rate(r), r.gb_per_token,
          r.gb_per_token / disk_gbps, rate(u), u.gb_per_token, u.gb_per_token / disk_gbps);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::vector<std::string_view> args(argv + std::min(argc, 2), argv + argc);
    const std::string_view mode = argc > 1 ? argv[1] : "";
    if (mode == "record") return record(args);
    if (mode == "replay") return replay(args);
    if (mode == "--help" || mode == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    throw UsageError("the first argument is record or replay");
  } catch (const UsageError& e) {
    std::fprintf(stderr, "grok1_routing: error: %s\n\n%s", e.what(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "grok1_routing: error: %s\n", e.what());
    return 1;
  }
}
