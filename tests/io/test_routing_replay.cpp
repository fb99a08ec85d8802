// The expert cache driven by a recorded routing trace (moe::ExpertCache, as grok1_routing replay
// uses it) makes the same decisions as WeightResidency observing a live decode: the same uses and
// hits, step for step; and split_budget is the split the residency reports.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include <moe/core/thread_pool.hpp>
#include <moe/models/grok1_loader.hpp>
#include <moe/models/grok1_residency.hpp>
#include <moe/models/weight_residency.hpp>
#include <moe/text/sampler.hpp>

#include "io_test_util.hpp"

using namespace io_test;

TEST_CASE("routing replay: a recorded trace drives the cache exactly as a live decode",
          "[io][residency]") {
  const auto ck = moe::grok1::Checkpoint::open(fixture("residency"));
  const moe::grok1::Config& c = ck.config();
  const moe::grok1::Weights w = moe::grok1::bind_weights(ck);
  const moe::grok1::Model model = moe::grok1::make_model(c, w);
  const moe::ResidencyPlan plan = moe::grok1::residency_plan(ck);
  const std::uint64_t one = moe::detail::range_bytes(plan.layers[0].experts[0]);
  std::vector<std::vector<std::uint64_t>> bytes(plan.layers.size());
  for (std::size_t l = 0; l < plan.layers.size(); ++l) {
    for (const auto& e : plan.layers[l].experts) bytes[l].push_back(moe::detail::range_bytes(e));
  }
  for (moe::CachePolicy policy : {moe::CachePolicy::kLru, moe::CachePolicy::kMostUsed}) {
    INFO("policy " << moe::cache_policy_name(policy));
    moe::ResidencyOptions o;
    o.cache = policy;
    o.ram_budget = moe::WeightResidency::kOverhead + ck.copied_bytes() +
                   moe::detail::range_bytes(plan.chunked) + 5 * one +
                   2 * moe::detail::range_bytes(plan.layers[0].dense) + (1u << 16);
    moe::WeightResidency res(plan, o);
    const moe::ResidencyStats& s = res.stats();
    REQUIRE(s.streaming);
    REQUIRE(s.cache_capacity >= 2 * one);  // room to differ from no cache
    const moe::BudgetSplit split = moe::split_budget(plan, o.ram_budget, policy);
    CHECK(split.cache_capacity == s.cache_capacity);
    CHECK(split.attention_streamed == s.attention_streamed);
    CHECK(split.head_released == s.head_released);
    CHECK(split.batch_fits == res.batch_prefill_fits());

    // Live: greedy decode, the routing recorded from the MoE layers' own statistics.
    moe::ThreadPool pool(2);
    auto state = model.make_state(64, 1);
    std::vector<moe::MoEResult> results(c.n_layers);
    std::vector<std::vector<std::vector<int>>> trace;  // [step][layer][expert]
    moe::DecoderOptions opt;
    opt.on_layer = [&](std::size_t l, moe::MatrixView<const float> h) {
      res.on_layer(l, h);
      std::vector<int> seen(c.n_experts);
      for (std::size_t e = 0; e < c.n_experts; ++e) {
        seen[e] = results[l].stats.tokens_per_expert[e] > 0 ? 1 : 0;
      }
      trace.back().push_back(seen);
    };
    std::vector<float> logits(c.vocab_size);
    std::int32_t token = 3;
    for (std::size_t step = 0; step < 24; ++step) {
      trace.emplace_back();
      const std::int32_t in[1] = {token};
      model.forward(pool, in, state, {logits.data(), 1, c.vocab_size}, opt, results);
      token = static_cast<std::int32_t>((moe::argmax(logits) * 7 + step) % c.vocab_size);
    }

    // Replayed: the same cache code, driven by the trace alone.
    moe::ExpertCache cache(policy, s.cache_capacity, bytes);
    std::size_t uses = 0, hits = 0;
    for (const auto& step : trace) {
      for (std::size_t l = 0; l < step.size(); ++l) {
        const moe::ExpertCache::Step r = cache.after_layer(l, step[l], [](auto, auto) {});
        uses += r.uses;
        hits += r.hits;
      }
    }
    CHECK(uses == s.expert_uses);
    CHECK(uses == 24 * c.n_layers * c.top_k);
    CHECK(hits == s.cache_hits);
    CHECK(hits > 0);
  }
}

TEST_CASE("routing replay: frequency beats recency on a cyclic layer order", "[io][residency]") {
  // 2 layers of 4 experts, room for 3: each layer runs expert 0 and one of the others in turn.
  // A layer's experts come back only after the other layer's, so LRU has always evicted them;
  // most-used keeps both experts 0 once their counts lead (the third slot churns).
  const std::vector<std::vector<std::uint64_t>> bytes(2, std::vector<std::uint64_t>(4, 10));
  for (moe::CachePolicy policy : {moe::CachePolicy::kLru, moe::CachePolicy::kMostUsed}) {
    INFO("policy " << moe::cache_policy_name(policy));
    moe::ExpertCache cache(policy, 30, bytes);
    std::size_t hits = 0;
    for (std::size_t step = 0; step < 100; ++step) {
      for (std::size_t l = 0; l < 2; ++l) {
        std::vector<int> seen(4, 0);
        seen[0] = 1;
        seen[1 + step % 3] = 1;
        hits += cache.after_layer(l, seen, [](auto, auto) {}).hits;
        CHECK(cache.cached_bytes() <= cache.capacity());
      }
    }
    if (policy == moe::CachePolicy::kLru) {
      CHECK(hits == 0);
    } else {
      CHECK(hits >= 2 * 98);  // every step after the first two
      CHECK((cache.cached(0, 0) && cache.cached(1, 0)));
    }
  }
}
