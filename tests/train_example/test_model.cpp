// The `train` example's model (examples/train/grok_moe.hpp): its loss against moe's Grok-1
// inference Decoder run on its export views, what each routing choice changes, freezing,
// determinism across thread counts, and learning the fixture corpus. (The gradients themselves
// are checked layer by layer and end to end in tests/train/.)
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

#include <moe/core/thread_pool.hpp>
#include <moe/models/grok1.hpp>
#include <moe/ops/loss.hpp>
#include <moe/text/corpus.hpp>
#include <moe/text/tokenizer.hpp>
#include <moe/train/optimizer.hpp>

#include "grok_moe.hpp"

using train_example::GrokMoE;
using train_example::RoutingChoice;

namespace {

moe::grok1::Config tiny_config(std::size_t vocab) {
  moe::grok1::Config c = moe::grok1::Config::tiny();
  c.vocab_size = vocab;
  c.max_seq_len = 32;
  return c;
}

moe::Batch make_batch(std::size_t B, std::size_t T, std::size_t vocab, std::uint64_t seed) {
  moe::Batch b;
  b.batch = B;
  b.seq = T;
  b.tokens.resize(B * (T + 1));
  std::uint64_t x = seed;
  for (auto& t : b.tokens) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    t = static_cast<std::int32_t>((x >> 33) % vocab);
  }
  return b;
}

/// A few AdamW steps on random batches.
void train(GrokMoE& m, moe::ThreadPool& pool, std::size_t steps, std::size_t vocab) {
  moe::AdamW opt(m.parameters().n_elements(), {});
  for (std::size_t s = 1; s <= steps; ++s) {
    m.parameters().zero_grads();
    m.train_step(pool, make_batch(4, 16, vocab, s), s);
    moe::clip_grad_norm(pool, m.parameters(), 1.0);
    opt.step(pool, m.parameters(), 1e-2f);
  }
}

}  // namespace

TEST_CASE("grok-moe: its loss is the Grok-1 inference Decoder's on its export views",
          "[train_example]") {
  const moe::grok1::Config c = tiny_config(41);
  moe::ThreadPool pool(2);
  GrokMoE model(c, RoutingChoice{}, 5);
  train(model, pool, 5, c.vocab_size);  // away from the initialisation
  const moe::Batch batch = make_batch(2, 16, c.vocab_size, 4);
  const double loss = model.loss(pool, batch);
  const auto weights = model.grok1_weights();
  const auto decoder = moe::grok1::make_model(c, weights);
  std::vector<float> logits(16 * c.vocab_size), rows(16);
  double via_decoder = 0;
  for (std::size_t w = 0; w < batch.batch; ++w) {
    auto state = decoder.make_state(16, 16);
    moe::MatrixView<float> l(logits.data(), 16, c.vocab_size);
    decoder.forward(pool, batch.inputs(w), state, l);
    via_decoder += moe::softmax_cross_entropy(pool, l, batch.targets(w), -1, rows.data()).mean();
  }
  via_decoder /= static_cast<double>(batch.batch);
  // Two code paths (batched training forward, dropless through the capacity path, vs the KV-cache
  // inference forward of presets::Grok1): equal up to f32 rounding.
  CHECK(loss == Approx(via_decoder).epsilon(1e-5));
}

TEST_CASE("grok-moe: routing choices show in the step statistics", "[train_example]") {
  const moe::grok1::Config c = tiny_config(41);
  moe::ThreadPool pool(2);
  const moe::Batch batch = make_batch(4, 16, c.vocab_size, 9);
  RoutingChoice dropless;
  GrokMoE a(c, dropless, 1);
  const auto sa = a.train_step(pool, batch, 1);
  REQUIRE(sa.layers.size() == c.n_layers);
  for (const auto& l : sa.layers) {
    CHECK(l.dropped == 0.0);
    double sum = 0;
    for (double x : l.load) sum += x;
    CHECK(sum == Approx(1.0));
    CHECK(l.entropy > 0.0);
    CHECK(l.balance_loss > 0.0);
  }
  CHECK(sa.aux > 0.0);
  RoutingChoice tight;
  tight.capacity_factor = 0.5;  // half the average load per expert: something must drop
  GrokMoE b(c, tight, 1);
  const auto sb = b.train_step(pool, batch, 1);
  for (const auto& l : sb.layers) CHECK(l.dropped > 0.0);
  RoutingChoice no_aux;
  no_aux.balance = 0.0f;
  no_aux.z_loss = 0.0f;
  GrokMoE d(c, no_aux, 1);
  CHECK(d.train_step(pool, batch, 1).aux == 0.0);
  RoutingChoice dense;
  dense.moe_every = 0;
  GrokMoE e(c, dense, 1);
  CHECK(e.train_step(pool, batch, 1).layers.empty());
  CHECK_THROWS_WITH(e.grok1_weights(), Catch::Contains("no Grok-1 export"));
}

TEST_CASE("grok-moe: --freeze-moe leaves the MoE weights as they were", "[train_example]") {
  const moe::grok1::Config c = tiny_config(41);
  moe::ThreadPool pool(2);
  RoutingChoice frozen;
  frozen.freeze_moe = true;
  GrokMoE m(c, frozen, 3);
  moe::ParameterStore& s = m.parameters();
  const std::vector<float> before(s.params().begin(), s.params().end());
  train(m, pool, 3, c.vocab_size);
  for (const auto& info : s.infos()) {
    const bool moe_tensor = info.name.find("/moe/") != std::string::npos;
    const bool same = std::equal(s.param(s.at(info.name)).begin(), s.param(s.at(info.name)).end(),
                                 before.begin() + static_cast<std::ptrdiff_t>(info.offset));
    INFO(info.name);
    CHECK(same == moe_tensor);
  }
}

TEST_CASE("grok-moe: learns the fixture corpus, bit-identically for 1 and 3 threads",
          "[train_example]") {
  const moe::Tokenizer tok(std::string(MOE_TRAIN_FIXTURES) + "/tokenizer.model");
  moe::ThreadPool pool(2);
  moe::CorpusOptions no_cache;
  no_cache.use_cache = false;
  const std::filesystem::path train_txt = std::string(MOE_TRAIN_FIXTURES) + "/train.txt";
  const std::filesystem::path val_txt = std::string(MOE_TRAIN_FIXTURES) + "/val.txt";
  const moe::TokenStream ts = moe::tokenize_corpus(pool, tok, {train_txt}, no_cache);
  const moe::TokenStream vs = moe::tokenize_corpus(pool, tok, {val_txt}, no_cache);
  moe::grok1::Config c = tiny_config(static_cast<std::size_t>(tok.vocab_size()));
  const moe::Batch v = moe::validation_windows(vs.ids(), 32, 16);

  auto run = [&](std::size_t threads, std::size_t steps, double* first_loss) {
    moe::ThreadPool p(threads);
    auto model = std::make_unique<GrokMoE>(c, RoutingChoice{}, 1);
    moe::ParameterStore& store = model->parameters();
    moe::AdamW opt(store.n_elements(), {});
    moe::BatchSampler sampler(ts.ids(), {8, 32, 3});
    moe::Batch b;
    if (first_loss) *first_loss = model->loss(p, v);
    for (std::size_t step = 1; step <= steps; ++step) {
      sampler.fill(step - 1, b);
      store.zero_grads();
      model->train_step(p, b, step);
      moe::clip_grad_norm(p, store, 1.0);
      opt.step(p, store, 1e-2f);
    }
    return model;
  };
  double before = 0;
  auto a = run(2, 120, &before);
  const double after = a->loss(pool, v);
  INFO("validation loss " << before << " -> " << after << " (log vocab = "
                          << std::log(static_cast<double>(c.vocab_size)) << ")");
  CHECK(before > 5.0);
  CHECK(after < 0.7 * before);

  auto b1 = run(1, 6, nullptr);
  auto b3 = run(3, 6, nullptr);
  const auto p1 = b1->parameters().params(), p3 = b3->parameters().params();
  CHECK(std::equal(p1.begin(), p1.end(), p3.begin(), p3.end()));
}
