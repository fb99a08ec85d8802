// train: trains a language model on text corpora with moe, resumably, and exports it in Grok-1's
// original release format for the `grok1` example. See examples/train/README.md.
//
//   train --corpus FILE... --tokenizer FILE --out DIR [--val FILE...] [--config model.json]
//         [--steps N] [--batch B] [--seq T] [--lr LR] [--threads N] [--resume DIR]
//         [--eval-every N] [--json] ...
//
// Steps: prepare (read and check every input; nothing is written), train (batches, AdamW,
// evaluations, checkpoints), export (the release format, then the int8 export's validation loss).
// Exit codes: 0 success, 1 error (a message naming the file and the problem), 2 usage error,
// 130 interrupted (Ctrl-C: the checkpoint of the last finished step is saved).
#include <atomic>
#include <charconv>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unistd.h>
#include <utility>
#include <vector>

#if defined(MOE_HAVE_SENTENCEPIECE)
#include <moe/io/json.hpp>
#include <moe/models/grok1_export.hpp>
#include <moe/models/grok1_loader.hpp>
#include <moe/ops/loss.hpp>
#include <moe/text/corpus.hpp>
#include <moe/text/tokenizer.hpp>
#include <moe/train/checkpoint.hpp>
#include <moe/train/optimizer.hpp>

#include "../common/cli.hpp"
#include "grok_moe.hpp"
#include "model_config.hpp"
#include "report.hpp"

namespace {

using examples::parse_double;
using examples::parse_integer;
using examples::UsageError;

namespace fs = std::filesystem;
using examples::Clock;
using examples::seconds_since;
using namespace train_example;

constexpr const char* kUsage =
    "usage: train --corpus FILE... --tokenizer FILE --out DIR [options]\n"
    "\n"
    "data and model\n"
    "  --corpus FILE...      training text, one paragraph a line (scripts/get_corpus)\n"
    "  --val FILE...         validation text (default: the last 5% of the corpus tokens)\n"
    "  --tokenizer FILE      SentencePiece model (scripts/get_corpus trains one)\n"
    "  --config FILE         model configuration, JSON (default: Grok-1 at a small size)\n"
    "routing (the MoE layers; Grok-1's router with these training policies)\n"
    "  --capacity-factor CF  expert capacity ceil(k T CF / E) in training, 0 = dropless (default "
    "0)\n"
    "  --balance COEF        Switch load-balancing loss coefficient, 0 = off (default 0.01)\n"
    "  --z-loss COEF         router z-loss coefficient, 0 = off (default 0.001)\n"
    "  --renormalize         renormalise the top-k gates (Grok-1 does not)\n"
    "  --expert-dropout P    dropout inside the experts in training (default 0)\n"
    "  --dense               a dense model of the same active size (FFN width top_k * d_ff)\n"
    "  --freeze-moe          train everything but the MoE layers (fine-tuning)\n"
    "  --init DIR            start from the weights of DIR/train.ckpt (fine-tuning)\n"
    "training\n"
    "  --steps N             optimizer steps (default 2000)\n"
    "  --batch B             windows per step (default 8)\n"
    "  --seq T               tokens per window (default 256)\n"
    "  --lr LR               peak learning rate (default 3e-3)\n"
    "  --min-lr LR           final learning rate of the cosine decay (default lr / 10)\n"
    "  --warmup N            linear warmup steps (default min(100, steps / 10))\n"
    "  --weight-decay W      AdamW's decoupled weight decay (default 0.1)\n"
    "  --clip C              global gradient-norm clipping, 0 = off (default 1.0)\n"
    "  --seed S              initialisation and data order (default 1)\n"
    "  --threads N           threads (default: all cores)\n"
    "evaluation, checkpoints, export\n"
    "  --eval-every N        validation loss every N steps (default 100)\n"
    "  --val-windows N       validation windows of T tokens (default 64)\n"
    "  --save-every N        training checkpoint every N steps (default: --eval-every)\n"
    "  --out DIR             DIR/train.ckpt (the training checkpoint) and DIR/grok1 (the export)\n"
    "  --resume DIR          continue the run whose checkpoint is DIR/train.ckpt\n"
    "  --stop-after N        stop after step N, saving the checkpoint (resume later; no export)\n"
    "  --export DIR          where to export (default OUT/grok1)\n"
    "  --no-export           do not export at the end\n"
    "  --json                print one JSON object per evaluation on stdout\n";

/// The training hyperparameters a resumed run must share with the run it continues.
struct Hyper {
  std::uint64_t steps = 2000;
  std::size_t batch = 8, seq = 256;
  double lr = 3e-3, min_lr = -1, weight_decay = 0.1, clip = 1.0;
  std::int64_t warmup = -1;
  std::uint64_t seed = 1;
};

struct Args {
  std::vector<fs::path> corpus, val;
  fs::path tokenizer, out;
  std::optional<fs::path> config, resume, export_dir, init;
  RoutingChoice routing;
  Hyper hyper;
  std::size_t threads = 0, eval_every = 100, val_windows = 64, save_every = 0;
  std::uint64_t stop_after = 0;  ///< 0: run to --steps
  bool no_export = false, json = false;
};

// ---- command line --------------------------------------------------------------------------

Args parse_args(int argc, char** argv) {
  Args a;
  Hyper& h = a.hyper;
  constexpr std::size_t kMax = std::size_t{1} << 30;
  examples::for_each_flag(argc, argv, kUsage, [&](std::string_view flag, auto& value) {
    auto files = [&](std::vector<fs::path>& to) {
      for (const std::string_view f : value.list("file")) to.emplace_back(f);
    };
    if (flag == "--corpus") {
      files(a.corpus);
    } else if (flag == "--val") {
      files(a.val);
    } else if (flag == "--tokenizer") {
      a.tokenizer = std::string(value());
    } else if (flag == "--out") {
      a.out = std::string(value());
    } else if (flag == "--config") {
      a.config = std::string(value());
    } else if (flag == "--capacity-factor") {
      a.routing.capacity_factor = parse_double(flag, value(), 0.0, 1e6);
    } else if (flag == "--balance") {
      a.routing.balance = static_cast<float>(parse_double(flag, value(), 0.0, 1e3));
    } else if (flag == "--z-loss") {
      a.routing.z_loss = static_cast<float>(parse_double(flag, value(), 0.0, 1e3));
    } else if (flag == "--renormalize") {
      a.routing.renormalize = true;
    } else if (flag == "--expert-dropout") {
      a.routing.expert_dropout = static_cast<float>(parse_double(flag, value(), 0.0, 0.99));
    } else if (flag == "--dense") {
      a.routing.moe_every = 0;
    } else if (flag == "--freeze-moe") {
      a.routing.freeze_moe = true;
    } else if (flag == "--init") {
      a.init = std::string(value());
    } else if (flag == "--steps") {
      h.steps = parse_integer<std::uint64_t>(flag, value(), 1, kMax);
    } else if (flag == "--batch") {
      h.batch = parse_integer<std::size_t>(flag, value(), 1, 1 << 16);
    } else if (flag == "--seq") {
      h.seq = parse_integer<std::size_t>(flag, value(), 1, 1 << 20);
    } else if (flag == "--lr") {
      h.lr = parse_double(flag, value(), 1e-12, 10.0);
    } else if (flag == "--min-lr") {
      h.min_lr = parse_double(flag, value(), 0.0, 10.0);
    } else if (flag == "--warmup") {
      h.warmup = parse_integer<std::int64_t>(flag, value(), 0, kMax);
    } else if (flag == "--weight-decay") {
      h.weight_decay = parse_double(flag, value(), 0.0, 10.0);
    } else if (flag == "--clip") {
      h.clip = parse_double(flag, value(), 0.0, 1e9);
    } else if (flag == "--seed") {
      h.seed = parse_integer<std::uint64_t>(flag, value(), 0, UINT64_MAX);
    } else if (flag == "--threads") {
      a.threads = parse_integer<std::size_t>(flag, value(), 1, 1024);
    } else if (flag == "--eval-every") {
      a.eval_every = parse_integer<std::size_t>(flag, value(), 1, kMax);
    } else if (flag == "--val-windows") {
      a.val_windows = parse_integer<std::size_t>(flag, value(), 1, kMax);
    } else if (flag == "--save-every") {
      a.save_every = parse_integer<std::size_t>(flag, value(), 1, kMax);
    } else if (flag == "--stop-after") {
      a.stop_after = parse_integer<std::uint64_t>(flag, value(), 1, kMax);
    } else if (flag == "--resume") {
      a.resume = std::string(value());
    } else if (flag == "--export") {
      a.export_dir = std::string(value());
    } else if (flag == "--no-export") {
      a.no_export = true;
    } else if (flag == "--json") {
      a.json = true;
    } else {
      return false;
    }
    return true;
  });
  if (a.corpus.empty()) throw UsageError("--corpus FILE... is required");
  if (a.tokenizer.empty()) throw UsageError("--tokenizer FILE is required");
  if (a.out.empty()) throw UsageError("--out DIR is required");
  if (a.no_export && a.export_dir) throw UsageError("--export and --no-export contradict");
  if (h.min_lr < 0) h.min_lr = h.lr / 10;
  if (h.min_lr > h.lr) throw UsageError("--min-lr must not exceed --lr");
  if (h.warmup < 0)
    h.warmup = static_cast<std::int64_t>(std::min<std::uint64_t>(100, h.steps / 10));
  if (static_cast<std::uint64_t>(h.warmup) >= h.steps) {
    throw UsageError("--warmup (" + std::to_string(h.warmup) + ") must be below --steps (" +
                     std::to_string(h.steps) + ")");
  }
  if (a.save_every == 0) a.save_every = a.eval_every;
  if (!a.export_dir) a.export_dir = a.out / "grok1";
  if (a.routing.moe_every == 0 && !a.no_export) {
    throw UsageError("--dense: a dense model has no Grok-1 export; add --no-export");
  }
  if (a.routing.moe_every == 0 && a.routing.freeze_moe) {
    throw UsageError("--freeze-moe needs MoE layers (not --dense)");
  }
  if (a.init && a.resume) throw UsageError("--init and --resume contradict");
  return a;
}

// ---- the run's identity: checkpoint metadata -----------------------------------------------

std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

/// Everything that decides the trajectory of the weights, as JSON (stored in the checkpoint and
/// compared on --resume) -- except the step count, which a resumed run may extend.
std::string run_identity(const Args& a, const moe::grok1::Config& c, const moe::TokenStream& train,
                         std::uint64_t val_hash, std::uint64_t tok_hash, std::uint64_t init_hash) {
  const Hyper& h = a.hyper;
  JsonLine j;
  j.key("model").string("grok-moe");
  j.key("routing").string(a.routing.describe());
  j.key("init").string(a.init ? hex(init_hash) : "");
  j.key("config").raw(moe::grok1::config_to_json(c));
  j.key("batch").integer(h.batch).key("seq").integer(h.seq);
  j.key("lr").number(h.lr).key("min_lr").number(h.min_lr);
  j.key("warmup").integer(static_cast<std::uint64_t>(h.warmup));
  j.key("weight_decay").number(h.weight_decay).key("clip").number(h.clip);
  j.key("seed").integer(h.seed);
  j.key("corpus").string(hex(train.text_hash())).key("validation").string(hex(val_hash));
  j.key("tokenizer").string(hex(tok_hash));
  return j.str();
}

/// The metadata of a checkpoint at `step`: {"step":..,"steps":..,"identity":{...}}.
std::string metadata(std::uint64_t step, std::uint64_t steps, const std::string& identity) {
  JsonLine j;
  j.key("format").string("moe-train-example/1");
  j.key("step").integer(step).key("steps").integer(steps);
  j.key("identity").raw(identity);
  return j.str();
}

/// A JSON value as canonical text (numbers as read, objects in file order).
std::string canonical(const moe::io::JsonValue& v) {
  using T = moe::io::JsonValue::Type;
  switch (v.type()) {
    case T::kObject: {
      std::string s = "{";
      for (const auto& [k, x] : v.as_object()) s += k + ":" + canonical(x) + ",";
      return s + "}";
    }
    case T::kArray: {
      std::string s = "[";
      for (const auto& x : v.as_array()) s += canonical(x) + ",";
      return s + "]";
    }
    case T::kString:
      return "\"" + v.as_string() + "\"";
    case T::kNumber: {
      char buf[64];
      const auto r = std::to_chars(buf, buf + sizeof buf, v.as_number());
      return std::string(buf, r.ptr);
    }
    default:
      return v.describe();
  }
}

/// The first field where a checkpoint's identity differs from this run's: {what, "(then X, now
/// Y)"}, or {"", ""} when they agree.
std::pair<std::string, std::string> identity_difference(const moe::io::JsonValue& saved,
                                                        const moe::io::JsonValue& now) {
  if (!saved.is_object()) return {"the metadata", "(malformed)"};
  static constexpr const char* kFields[][2] = {
      {"model", "the model"},
      {"routing", "the routing options"},
      {"init", "the --init weights"},
      {"config", "the model config"},
      {"batch", "--batch"},
      {"seq", "--seq"},
      {"lr", "--lr"},
      {"min_lr", "--min-lr"},
      {"warmup", "--warmup"},
      {"weight_decay", "--weight-decay"},
      {"clip", "--clip"},
      {"seed", "--seed"},
      {"corpus", "the corpus text"},
      {"validation", "the validation text"},
      {"tokenizer", "the tokenizer"},
  };
  for (const auto& [key, what] : kFields) {
    const moe::io::JsonValue* a = saved.find(key);
    const moe::io::JsonValue* b = now.find(key);
    if (!a || !b) return {what, ""};
    if (canonical(*a) != canonical(*b)) {
      const std::string was = canonical(*a), is = canonical(*b);
      if (was.size() + is.size() > 60) return {what, ""};  // e.g. the whole model config
      return {what, " (then " + was + ", now " + is + ")"};
    }
  }
  return {};
}

moe::grok1::ExportOptions export_options(const Args& a) {
  moe::grok1::ExportOptions o;
  o.extra_files = {{"tokenizer.model", a.tokenizer}};
  return o;
}

// ---- prepare: read and check everything, write nothing -------------------------------------

struct Setup {
  explicit Setup(moe::Tokenizer t) : tokenizer(std::move(t)) {}
  moe::Tokenizer tokenizer;
  std::uint64_t tokenizer_hash = 0;
  moe::grok1::Config config;
  moe::TokenStream train_stream;
  std::vector<std::int32_t> train_ids;  ///< the training part (all of train_stream with --val)
  moe::Batch val;
  moe::Batch train_eval;  ///< --json: windows of the training text, evaluated like `val`
  std::uint64_t val_hash = 0;
  std::unique_ptr<Model> model;
  moe::AdamW opt;
  std::uint64_t start_step = 0;
  std::string identity;
  fs::path checkpoint;  ///< OUT/train.ckpt
};

void log_stream(Progress& log, const char* what, const moe::TokenStream& s) {
  for (const moe::CorpusFile& f : s.files()) {
    log.message(std::string(what) + " " + f.path.string() + ": " + std::to_string(f.bytes) +
                " bytes, " + std::to_string(f.lines) + " lines, " + std::to_string(f.n_tokens) +
                " tokens" +
                (f.from_cache      ? " (cached)"
                 : f.cache_written ? " (cache written)"
                                   : ""));
  }
}

Setup prepare(const Args& a, moe::ThreadPool& pool, Progress& log) {
  Setup s(moe::Tokenizer(a.tokenizer.string()));
  s.tokenizer_hash = moe::tokenizer_fingerprint(s.tokenizer);
  const moe::Tokenizer& tok = s.tokenizer;

  ModelConfigFile file = a.config ? read_model_config(*a.config) : ModelConfigFile{};
  s.config =
      finish_model_config(file, a.tokenizer.string(), static_cast<std::size_t>(tok.vocab_size()),
                          tok.pad_id(), tok.bos_id(), tok.eos_id(), a.hyper.seq);

  s.train_stream = moe::tokenize_corpus(pool, tok, std::span<const fs::path>(a.corpus));
  log_stream(log, "corpus", s.train_stream);
  std::span<const std::int32_t> ids = s.train_stream.ids();
  std::span<const std::int32_t> val_ids;
  moe::TokenStream val_stream;
  if (!a.val.empty()) {
    val_stream = moe::tokenize_corpus(pool, tok, std::span<const fs::path>(a.val));
    log_stream(log, "validation", val_stream);
    val_ids = val_stream.ids();
    s.val_hash = val_stream.text_hash();
    s.train_ids.assign(ids.begin(), ids.end());
  } else {  // hold out the last 5% of the training tokens
    const std::size_t cut = ids.size() - ids.size() / 20;
    s.train_ids.assign(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(cut));
    val_ids = ids.subspan(cut);
    s.val_hash = s.train_stream.text_hash() ^ 0x5a5a5a5a5a5a5a5aull;
    log.message("validation: the last " + std::to_string(val_ids.size()) +
                " tokens of the corpus (no --val)");
  }
  s.val = moe::validation_windows(val_ids, a.hyper.seq, a.val_windows);
  if (a.json) s.train_eval = moe::validation_windows(s.train_ids, a.hyper.seq, a.val_windows);
  moe::BatchSampler probe(s.train_ids, {a.hyper.batch, a.hyper.seq, a.hyper.seed});  // checks size

  s.model = std::make_unique<GrokMoE>(s.config, a.routing, a.hyper.seed);
  moe::ParameterStore& store = s.model->parameters();
  std::uint64_t init_hash = 0;
  if (a.init) {  // fine-tuning: the weights of another run, a fresh optimizer
    const fs::path from = *a.init / "train.ckpt";
    init_hash = moe::load_parameters(from, store);
    log.message("initial weights from " + from.string() + " (fine-tuning: " + a.routing.describe() +
                ")");
  }
  moe::AdamWConfig adamw;
  adamw.beta2 = 0.95f;
  adamw.weight_decay = static_cast<float>(a.hyper.weight_decay);
  s.opt = moe::AdamW(store.n_elements(), adamw);
  s.identity = run_identity(a, s.config, s.train_stream, s.val_hash, s.tokenizer_hash, init_hash);
  s.checkpoint = a.out / "train.ckpt";

  if (a.resume) {
    const fs::path from = *a.resume / "train.ckpt";
    const std::string meta_text = moe::load_training_state(from, store, s.opt);
    const moe::io::JsonValue meta = moe::io::parse_json(meta_text, from.string() + " metadata");
    const moe::io::JsonValue* step = meta.find("step");
    const moe::io::JsonValue* saved = meta.find("identity");
    if (!step || !step->is_integer() || !saved) {
      throw moe::FormatError("[train] '" + from.string() + "' has no train-example metadata");
    }
    const auto [what, values] =
        identity_difference(*saved, moe::io::parse_json(s.identity, "this run"));
    if (!what.empty()) {
      throw moe::ConfigError("[train] cannot resume '" + from.string() + "': " + what +
                             " differs from the run that wrote it" + values +
                             "; resuming must see the same model, data and hyperparameters");
    }
    s.start_step = static_cast<std::uint64_t>(step->as_int64());
    if (s.start_step > a.hyper.steps) {
      throw moe::ConfigError("[train] '" + from.string() + "' is at step " +
                             std::to_string(s.start_step) + ", beyond --steps " +
                             std::to_string(a.hyper.steps));
    }
    log.message("resuming " + from.string() + " at step " + std::to_string(s.start_step));
  }
  // Never overwrite another run: OUT may hold a checkpoint only when it is the one resumed.
  std::error_code ec;
  const bool same_dir = a.resume && fs::equivalent(*a.resume, a.out, ec);
  if (!same_dir && fs::exists(s.checkpoint, ec)) {
    throw moe::ConfigError("[train] '" + a.out.string() +
                           "' already holds a training checkpoint (train.ckpt); continue it "
                           "with --resume " +
                           a.out.string() + " or choose another --out");
  }
  if (!a.no_export) {
    moe::grok1::check_export_dir(*a.export_dir, export_options(a));
  }
  return s;
}

// ---- train ------------------------------------------------------------------------------------

std::atomic<bool> g_interrupted{false};

/// Mean cross-entropy over the validation windows, `batch` windows at a time.
template <class LossFn>
double validation_loss(const moe::Batch& val, std::size_t batch, LossFn&& loss) {
  double sum = 0;
  for (std::size_t first = 0; first < val.batch; first += batch) {
    moe::Batch part;
    part.batch = std::min(batch, val.batch - first);
    part.seq = val.seq;
    part.tokens.assign(
        val.tokens.begin() + static_cast<std::ptrdiff_t>(first * (val.seq + 1)),
        val.tokens.begin() + static_cast<std::ptrdiff_t>((first + part.batch) * (val.seq + 1)));
    sum += loss(part) * static_cast<double>(part.batch);
  }
  return sum / static_cast<double>(val.batch);
}

/// The MoE layers' routing statistics, averaged over the steps since the last evaluation: per
/// layer the mean expert load, and the per-step coefficient of variation and max/mean of the load
/// (before capacity), the dropped fraction, the router entropy and log-sum-exp, the balance loss.
struct RoutingWindow {
  std::size_t steps = 0;
  std::vector<std::vector<double>> load;
  std::vector<double> cv, max_over_mean, dropped, entropy, lse, balance;

  void add(const StepStats& s) {
    const std::size_t n = s.layers.size();
    if (load.size() != n) {
      load.assign(n, {});
      for (auto* v : {&cv, &max_over_mean, &dropped, &entropy, &lse, &balance}) v->assign(n, 0.0);
    }
    for (std::size_t l = 0; l < n; ++l) {
      const LayerStep& x = s.layers[l];
      load[l].resize(x.load.size(), 0.0);
      const double e = static_cast<double>(x.load.size()), mean = 1.0 / e;
      double var = 0, mx = 0;
      for (std::size_t i = 0; i < x.load.size(); ++i) {
        load[l][i] += x.load[i];
        var += (x.load[i] - mean) * (x.load[i] - mean) / e;
        mx = std::max(mx, x.load[i]);
      }
      cv[l] += std::sqrt(var) / mean;
      max_over_mean[l] += mx / mean;
      dropped[l] += x.dropped;
      entropy[l] += x.entropy;
      lse[l] += x.mean_lse;
      balance[l] += x.balance_loss;
    }
    ++steps;
  }
  [[nodiscard]] std::vector<std::vector<double>> mean_load() const {
    auto m = load;
    for (auto& l : m) {
      for (double& x : l) x /= static_cast<double>(std::max<std::size_t>(steps, 1));
    }
    return m;
  }
  [[nodiscard]] std::vector<double> mean(const std::vector<double>& v) const {
    std::vector<double> m = v;
    for (double& x : m) x /= static_cast<double>(std::max<std::size_t>(steps, 1));
    return m;
  }
  void json(JsonLine& j) const {
    j.key("expert_load").matrix(mean_load());
    j.key("load_cv").array(mean(cv)).key("load_max_over_mean").array(mean(max_over_mean));
    j.key("dropped").array(mean(dropped)).key("router_entropy").array(mean(entropy));
    j.key("router_lse").array(mean(lse)).key("balance_loss").array(mean(balance));
  }
};

/// Runs steps start+1 .. steps. Returns false when interrupted (after saving the checkpoint).
bool train(const Args& a, Setup& s, moe::ThreadPool& pool, Progress& log) {
  const Hyper& h = a.hyper;
  moe::ParameterStore& store = s.model->parameters();
  moe::BatchSampler sampler(s.train_ids, {h.batch, h.seq, h.seed});
  moe::LrSchedule schedule{static_cast<float>(h.lr), static_cast<float>(h.min_lr),
                           static_cast<std::size_t>(h.warmup), static_cast<std::size_t>(h.steps)};
  schedule.validate();
  fs::create_directories(a.out);
  log.message(s.model->name() + ": " + std::to_string(store.n_parameters()) +
              " trainable parameters; " + std::to_string(s.train_ids.size()) +
              " training tokens (" + std::to_string(sampler.n_windows()) + " windows of " +
              std::to_string(h.seq) + "), " + std::to_string(s.val.batch) +
              " validation windows; " + std::to_string(pool.size()) + " threads");

  const auto t0 = Clock::now();
  auto save = [&](std::uint64_t step) {
    moe::save_training_state(s.checkpoint, store, s.opt, metadata(step, h.steps, s.identity));
  };
  moe::Batch batch;
  double loss_sum = 0;
  std::uint64_t loss_n = 0;
  double aux_sum = 0;
  RoutingWindow routing;
  std::uint64_t window_tokens = 0;
  double window_start = 0;
  double last_tps = 0;
  ProgressLine line;
  line.steps = h.steps;
  for (std::uint64_t step = s.start_step + 1; step <= h.steps; ++step) {
    sampler.fill(step - 1, batch);  // the data position is the step
    store.zero_grads();
    const StepStats st = s.model->train_step(pool, batch, step);
    const double grad_norm = moe::clip_grad_norm(pool, store, h.clip);
    const float lr = schedule(step);
    s.opt.step(pool, store, lr);
    if (!std::isfinite(st.loss)) {
      throw moe::Error("[train] the loss is " + std::to_string(st.loss) + " at step " +
                       std::to_string(step) + " (lower --lr?); the last checkpoint is intact");
    }
    loss_sum += st.loss;
    ++loss_n;
    aux_sum += st.aux;
    routing.add(st);
    window_tokens += batch.n_tokens();
    const double now = seconds_since(t0);
    if (now - window_start > 1.0) {
      last_tps = static_cast<double>(window_tokens) / (now - window_start);
      window_tokens = 0;
      window_start = now;
    }
    line.step = step;
    line.loss = loss_sum / static_cast<double>(loss_n);
    line.lr = lr;
    line.elapsed = now;
    line.tokens_per_second = last_tps > 0 ? last_tps : static_cast<double>(window_tokens) / now;
    line.eta = now / static_cast<double>(step - s.start_step) * static_cast<double>(h.steps - step);
    line.expert_load = routing.mean_load();
    const bool last = step == h.steps;
    if (step % a.eval_every == 0 || last) {
      line.val_loss = validation_loss(s.val, h.batch,
                                      [&](const moe::Batch& b) { return s.model->loss(pool, b); });
      log.evaluation(line);
      if (a.json) {
        JsonLine j;
        j.key("event").string("eval").key("step").integer(step);
        j.key("epoch").number(sampler.epochs(step)).key("lr").number(lr);
        j.key("loss").number(line.loss).key("val_loss").number(line.val_loss);
        j.key("train_eval_loss")
            .number(validation_loss(s.train_eval, h.batch,
                                    [&](const moe::Batch& b) { return s.model->loss(pool, b); }));
        j.key("grad_norm").number(grad_norm);
        j.key("tokens_per_second").number(line.tokens_per_second);
        j.key("aux_loss").number(aux_sum / static_cast<double>(loss_n));
        j.key("elapsed_seconds").number(now);
        routing.json(j);
        std::printf("%s\n", j.str().c_str());
        std::fflush(stdout);
      }
      line.val_loss = NAN;
      loss_sum = 0;
      loss_n = 0;
      aux_sum = 0;
      routing = RoutingWindow{};
    } else {
      log.update(line, now);
    }
    if (step % a.save_every == 0 || last) save(step);
    if (!last && (g_interrupted.load() || step == a.stop_after)) {
      save(step);
      log.message(std::string(g_interrupted.load() ? "interrupted" : "stopped (--stop-after)") +
                  ": saved " + s.checkpoint.string() + " at step " + std::to_string(step) +
                  "; continue with --resume " + a.out.string());
      return false;
    }
  }
  log.message("saved " + s.checkpoint.string() + " at step " + std::to_string(h.steps) + " (" +
              duration(seconds_since(t0)) + ")");
  return true;
}

// ---- export -----------------------------------------------------------------------------------

/// The validation loss of a Grok-1 model (the loaded export) through moe's inference path.
template <class M>
double decoder_loss(moe::ThreadPool& pool, const M& model, std::size_t vocab, const moe::Batch& b) {
  auto state = model.make_state(b.seq, b.seq);
  std::vector<float> logits(b.seq * vocab), rows(b.seq);
  double sum = 0;
  for (std::size_t w = 0; w < b.batch; ++w) {
    state.reset();
    moe::MatrixView<float> l(logits.data(), b.seq, vocab);
    model.forward(pool, b.inputs(w), state, l);
    sum += moe::softmax_cross_entropy(pool, l, b.targets(w), -1, rows.data()).mean();
  }
  return sum / static_cast<double>(b.batch);
}

void export_and_report(const Args& a, Setup& s, moe::ThreadPool& pool, Progress& log) {
  const auto t0 = Clock::now();
  moe::grok1::export_checkpoint(*a.export_dir, s.config, s.model->grok1_weights(),
                                export_options(a));
  const double secs = seconds_since(t0);
  std::uint64_t bytes = 0;
  for (const auto& e : fs::recursive_directory_iterator(*a.export_dir)) {
    if (e.is_regular_file()) bytes += e.file_size();
  }
  log.message("exported " + a.export_dir->string() + " (Grok-1 release format, " +
              std::to_string(moe::grok1::n_files(s.config.n_layers)) + " tensor files, " +
              std::to_string(bytes / 1024) + " KiB, " + duration(secs) + ")");

  const double f32 = validation_loss(s.val, a.hyper.batch,
                                     [&](const moe::Batch& b) { return s.model->loss(pool, b); });
  const auto ckpt = moe::grok1::Checkpoint::open(*a.export_dir);
  const moe::grok1::Weights w = moe::grok1::bind_weights(ckpt);
  const auto int8 = moe::grok1::make_model(ckpt.config(), w);
  const double q = validation_loss(s.val, s.val.batch, [&](const moe::Batch& b) {
    return decoder_loss(pool, int8, ckpt.config().vocab_size, b);
  });
  char buf[160];
  std::snprintf(buf, sizeof buf, "validation loss: f32 model %.4f, int8 export %.4f (%+.4f)", f32,
                q, q - f32);
  log.message(buf);
  if (a.json) {
    JsonLine j;
    j.key("event").string("export").key("dir").string(a.export_dir->string());
    j.key("bytes").integer(bytes).key("val_loss_f32").number(f32).key("val_loss_int8").number(q);
    std::printf("%s\n", j.str().c_str());
    std::fflush(stdout);
  }
}

int run(const Args& a) {
  Progress log(true, isatty(fileno(stderr)) != 0);
  moe::ThreadPool pool(a.threads);
  Setup s = prepare(a, pool, log);
  std::signal(SIGINT, [](int) { g_interrupted.store(true); });
  if (!train(a, s, pool, log)) return g_interrupted.load() ? 130 : 0;
  if (!a.no_export) export_and_report(a, s, pool, log);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return examples::run_main("train", kUsage, argc, argv, parse_args, run);
}

#else  // built without SentencePiece: the example needs a tokenizer

int main() {
  std::fputs("train: error: built without SentencePiece (libsentencepiece-dev)\n", stderr);
  return 1;
}

#endif
