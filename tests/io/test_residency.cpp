// WeightResidency on a real (small) checkpoint: the experts it observes are the ones the MoE
// layers report, a budget never changes the logits, the mapped expert pages stay within the
// cache capacity, and a file truncated while in use is a clear error (IoError between layers,
// a one-line report and exit status 1 when the kernel hits the missing page).
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include <moe/core/thread_pool.hpp>
#include <moe/models/grok1_loader.hpp>
#include <moe/models/grok1_residency.hpp>
#include <moe/models/weight_residency.hpp>
#include <moe/text/sampler.hpp>

#include "io_test_util.hpp"

using namespace io_test;

namespace {

/// An opened checkpoint with its weights and model.
struct Model {
  moe::grok1::Checkpoint ckpt;
  moe::grok1::Weights weights;
  moe::grok1::Model model;
  explicit Model(const fs::path& dir)
      : ckpt(moe::grok1::Checkpoint::open(dir)),
        weights(moe::grok1::bind_weights(ckpt)),
        model(moe::grok1::make_model(ckpt.config(), weights)) {}
};

/// Pages of the plan's expert ranges mapped in this process (/proc/self/pagemap).
std::uint64_t mapped_expert_bytes(const moe::ResidencyPlan& plan) {
  moe::detail::PagemapReader pm;
  const std::size_t page = moe::io::detail::page_size();
  std::uint64_t n = 0;
  for (const moe::LayerRanges& ranges : plan.layers) {
    for (const auto& e : ranges.experts) {
      for (const moe::MappedRange& r : e) {
        const std::size_t first = r.offset / page * page;
        for (std::size_t off = first; off < r.offset + r.length; off += page) {
          n += pm.present(r.file->data() + off) == 1 ? page : 0;
        }
      }
    }
  }
  return n;
}

/// Greedy decode of `steps` tokens after `prompt`, one token per forward call; returns every
/// logit row. With `res`, its hook runs after every layer; with `check`, it is called after
/// every layer with the MoE results of that layer.
template <class Check>
std::vector<float> decode(const Model& m, std::size_t steps, moe::WeightResidency* res,
                          Check&& check) {
  const std::size_t vocab = m.ckpt.config().vocab_size;
  moe::ThreadPool pool(2);
  auto state = m.model.make_state(64, 1);
  std::vector<moe::MoEResult> results(m.ckpt.config().n_layers);
  moe::DecoderOptions opt;
  opt.on_layer = [&](std::size_t l, moe::MatrixView<const float> h) {
    if (res) res->on_layer(l, h);
    check(l, results[l]);
  };
  std::vector<float> all;
  std::vector<float> logits(vocab);
  std::int32_t token = 3;
  for (std::size_t s = 0; s < steps; ++s) {
    const std::int32_t in[1] = {token};
    m.model.forward(pool, in, state, {logits.data(), 1, vocab}, opt, results);
    all.insert(all.end(), logits.begin(), logits.end());
    token = static_cast<std::int32_t>(moe::argmax(logits));
    if (s % 3 == 2) token = static_cast<std::int32_t>((token * 7 + s) % vocab);  // vary the routing
  }
  return all;
}

}  // namespace

TEST_CASE("residency: the plan splits every expert tensor per expert", "[io][residency]") {
  const Model m(fixture("residency"));
  const moe::ResidencyPlan plan = moe::grok1::residency_plan(m.ckpt);
  const auto& c = m.ckpt.config();
  REQUIRE(plan.layers.size() == 2);
  for (const moe::LayerRanges& ranges : plan.layers) {
    REQUIRE(ranges.experts.size() == 4);
    std::uint64_t expert_bytes = 0;
    for (const auto& e : ranges.experts) expert_bytes += moe::detail::range_bytes(e);
    // gate, up, down: int8 [D, F] each, and their bf16 scales
    CHECK(expert_bytes ==
          4 * (3 * c.d_model * c.d_ff + 2 * (2 * c.d_ff + 8 * c.d_model)));    // blocks 1, 1 and 8
    for (const moe::MappedRange& p : ranges.probes) CHECK(p.file != nullptr);  // 4 MiB gate slices
    CHECK(ranges.router.data != nullptr);
    CHECK(ranges.router_norm.size() == c.d_model);
  }
}

TEST_CASE("residency: observed expert use equals the MoE layers' own statistics",
          "[io][residency]") {
  const Model m(fixture("residency"));
  moe::ResidencyOptions o;
  o.ram_budget = 1;  // stream everything, cache nothing: every use is observable
  o.cache = moe::CachePolicy::kNone;
  moe::WeightResidency res(moe::grok1::residency_plan(m.ckpt), o);
  REQUIRE(res.stats().streaming);
  std::size_t compared = 0;
  (void)decode(m, 12, &res, [&](std::size_t l, const moe::MoEResult& r) {
    const std::vector<int> seen = res.last_used(l);
    for (std::size_t e = 0; e < seen.size(); ++e) {
      INFO("layer " << l << " expert " << e);
      CHECK(seen[e] == (r.stats.tokens_per_expert[e] > 0 ? 1 : 0));
      ++compared;
    }
  });
  CHECK(compared == 12 * 2 * 4);
  CHECK(res.stats().expert_uses == 12 * 2 * 2);  // top-2 of 4, one token per step
  CHECK(res.stats().unobserved_layers == 0);
}

TEST_CASE("residency: a budget never changes the logits and the cache stays within its capacity",
          "[io][residency]") {
  const Model m(fixture("residency"));
  const auto none = [](std::size_t, const moe::MoEResult&) {};
  const std::vector<float> free_run = decode(m, 10, nullptr, none);
  const moe::ResidencyPlan probe_plan = moe::grok1::residency_plan(m.ckpt);
  const std::uint64_t one_expert = moe::detail::range_bytes(probe_plan.layers[0].experts[0]);
  for (moe::CachePolicy policy :
       {moe::CachePolicy::kNone, moe::CachePolicy::kLru, moe::CachePolicy::kMostUsed}) {
    for (bool speculate : {false, true}) {
      INFO("policy " << moe::cache_policy_name(policy) << ", speculation " << speculate);
      moe::ResidencyOptions o;
      // room for the overhead, the working set and three experts (of eight in the model)
      o.ram_budget = moe::WeightResidency::kOverhead + 5 * one_expert +
                     moe::detail::range_bytes(probe_plan.layers[0].dense) * 2 + (1u << 20);
      o.cache = policy;
      o.speculate = speculate;
      const moe::ResidencyPlan plan = moe::grok1::residency_plan(m.ckpt);
      moe::WeightResidency res(plan, o);
      REQUIRE(res.stats().streaming);
      REQUIRE_FALSE(res.stats().attention_streamed);
      std::uint64_t peak = 0;
      const std::vector<float> budgeted = decode(m, 10, &res, [&](std::size_t, const auto&) {
        peak = std::max(peak, mapped_expert_bytes(plan));
      });
      CHECK(budgeted == free_run);  // bit for bit
      CHECK(peak <= res.stats().cache_capacity + 4096 * 64);
      if (policy == moe::CachePolicy::kNone) CHECK(peak <= 4096 * 64);
      if (policy != moe::CachePolicy::kNone) CHECK(res.stats().cache_hits > 0);
      if (speculate) CHECK(res.stats().speculated == 2 * 10);  // layer 1 only: top-2, 10 steps
    }
  }
}

TEST_CASE("residency: a file truncated while in use is a clear error", "[io][residency]") {
  const fs::path dir = scratch("residency_truncated") / "ck";
  fs::copy(fixture("residency"), dir, fs::copy_options::recursive);
  SECTION("between layers: IoError naming the file") {
    const Model m(dir);
    moe::ResidencyOptions o;
    o.ram_budget = 1;
    moe::WeightResidency res(moe::grok1::residency_plan(m.ckpt), o);
    const fs::path victim = m.ckpt.file(m.ckpt.index_of(1, moe::grok1::Slot::kQuery)).path;
    fs::resize_file(victim, 4096);
    const auto none = [](std::size_t, const moe::MoEResult&) {};
    CHECK_THAT(message_of<moe::IoError>([&] { (void)decode(m, 1, &res, none); }),
               Contains("[residency] '" + victim.string() + "' changed while in use: it was ") &&
                   Contains("bytes when mapped, now 4096 bytes (truncated?)"));
  }
  SECTION("inside a layer: one line on stderr and exit status 1 (a child process)") {
    const fs::path log = dir.parent_path() / "stderr.txt";
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      std::freopen(log.c_str(), "w", stderr);
      const Model m(dir);
      moe::ResidencyOptions o;
      o.ram_budget = 1;
      moe::WeightResidency res(moe::grok1::residency_plan(m.ckpt), o);
      res.report_faults("test: error: ");
      const fs::path victim = m.ckpt.file(m.ckpt.index_of(1, moe::grok1::Slot::kQuery)).path;
      (void)decode(m, 1, &res, [&](std::size_t l, const moe::MoEResult&) {
        if (l == 0) fs::resize_file(victim, 4096);  // after the residency checked layer 1
      });
      ::_exit(0);  // not reached: layer 1 reads the missing pages
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 1);
    const std::vector<std::byte> b = read_file(log);
    const std::string text(reinterpret_cast<const char*>(b.data()), b.size());
    CHECK_THAT(text, Contains("test: error: [residency] reading a mapped weight file failed "
                              "(SIGBUS: the file was truncated or the disk returned an error "
                              "while in use): '") &&
                         Contains("tensor00019_000' at byte "));
  }
}

TEST_CASE("residency: the default budget is what the machine has available", "[io][residency]") {
  const std::uint64_t b = moe::default_ram_budget();
  CHECK(b > (std::uint64_t{64} << 20));
  CHECK(b <= moe::detail::available_memory());
  const Model m(fixture("residency"));
  const moe::WeightResidency res(moe::grok1::residency_plan(m.ckpt));
  CHECK_FALSE(res.stats().streaming);  // 100 MB fit: everything stays mapped
  CHECK(res.batch_prefill_fits());
}

namespace {

/// Cache hit rate of `policy` when experts are used with probabilities `p` (per layer, top-2
/// drawn without replacement): a synthetic routing that "runs" an expert by reading its probe
/// page, so the library observes it exactly as after a real layer.
double synthetic_hit_rate(const Model& m, moe::CachePolicy policy, const std::vector<double>& p,
                          std::uint64_t capacity_experts) {
  const moe::ResidencyPlan plan = moe::grok1::residency_plan(m.ckpt);
  const std::uint64_t one = moe::detail::range_bytes(plan.layers[0].experts[0]);
  moe::ResidencyOptions o;
  o.cache = policy;
  o.speculate = false;
  o.ram_budget = moe::WeightResidency::kOverhead + m.ckpt.copied_bytes() +
                 moe::detail::range_bytes(plan.chunked) +  // the embedding (< one head chunk)
                 (2 + capacity_experts) * one + 2 * moe::detail::range_bytes(plan.layers[0].dense) +
                 (1u << 16);
  moe::WeightResidency res(plan, o);
  std::mt19937_64 rng(7);
  std::vector<float> h(m.ckpt.config().d_model, 1.0f);
  for (int step = 0; step < 1500; ++step) {
    for (std::size_t l = 0; l < plan.layers.size(); ++l) {
      std::discrete_distribution<std::size_t> pick(p.begin(), p.end());
      const std::size_t a = pick(rng);
      std::size_t b = a;
      while (b == a) b = pick(rng);
      for (std::size_t e : {a, b}) {
        const moe::MappedRange& probe = plan.layers[l].probes[e];
        volatile std::byte touch = probe.file->data()[probe.offset];
        (void)touch;
      }
      res.on_layer(l, {h.data(), 1, h.size()});
    }
  }
  return res.stats().cache_hit_rate();
}

}  // namespace

TEST_CASE("residency: cache policies on uniform and skewed synthetic routing", "[io][residency]") {
  const Model m(fixture("residency"));
  const std::vector<double> uniform = {1, 1, 1, 1};
  const std::vector<double> skewed = {8, 4, 2, 1};  // a few experts do most of the work
  const double lru_u = synthetic_hit_rate(m, moe::CachePolicy::kLru, uniform, 3);
  const double mu_u = synthetic_hit_rate(m, moe::CachePolicy::kMostUsed, uniform, 3);
  const double lru_s = synthetic_hit_rate(m, moe::CachePolicy::kLru, skewed, 3);
  const double mu_s = synthetic_hit_rate(m, moe::CachePolicy::kMostUsed, skewed, 3);
  const double none = synthetic_hit_rate(m, moe::CachePolicy::kNone, skewed, 3);
  WARN("cache of 3 of 8 experts (2 layers x 4, top-2): uniform routing lru "
       << lru_u << ", most-used " << mu_u << "; skewed 8:4:2:1 lru " << lru_s << ", most-used "
       << mu_s);
  CHECK(none == 0.0);
  CHECK(lru_u > 0.2);
  CHECK(mu_u > 0.2);
  CHECK(mu_s > lru_s);  // stationary skew: frequency beats recency
}
