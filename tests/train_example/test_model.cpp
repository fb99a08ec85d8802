// The `train` example's stand-in model (examples/train/model.hpp): its gradients against central
// differences of an independent float64 formulation, its loss against moe's Grok-1 Decoder run on
// its export views (zero layers are an identity), determinism across thread counts, and learning.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <vector>

#include <moe/core/thread_pool.hpp>
#include <moe/models/grok1.hpp>
#include <moe/text/corpus.hpp>
#include <moe/text/tokenizer.hpp>
#include <moe/train/optimizer.hpp>

#include "common/gradcheck.hpp"
#include "model.hpp"

using train_example::BigramStandIn;

namespace {

moe::grok1::Config tiny_config(std::size_t vocab) {
  moe::grok1::Config c = moe::grok1::Config::tiny();
  c.vocab_size = vocab;
  c.d_model = 6;
  c.n_q_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 4;
  c.n_experts = 4;
  c.d_ff = 8;
  c.embedding_multiplier = 2.449489742783178;  // sqrt(6)
  c.output_multiplier = 0.7;
  c.rms_eps = 1e-3;  // large enough to matter in the gradient
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

/// The stand-in's loss in float64, written from its definition (not from model.hpp's code).
double reference_loss(const moe::grok1::Config& c, const std::vector<double>& E,
                      const std::vector<double>& g, const moe::Batch& b) {
  const std::size_t V = c.vocab_size, D = c.d_model;
  double total = 0;
  for (std::size_t w = 0; w < b.batch; ++w) {
    for (std::size_t t = 0; t < b.seq; ++t) {
      const std::size_t x = static_cast<std::size_t>(b.inputs(w)[t]);
      const std::size_t y = static_cast<std::size_t>(b.targets(w)[t]);
      std::vector<double> h(D);
      double ms = 0;
      for (std::size_t i = 0; i < D; ++i) {
        h[i] = E[x * D + i] * c.embedding_multiplier;
        ms += h[i] * h[i] / static_cast<double>(D);
      }
      const double r = 1.0 / std::sqrt(ms + c.rms_eps);
      std::vector<double> z(V, 0.0);
      double zmax = -1e300;
      for (std::size_t v = 0; v < V; ++v) {
        for (std::size_t i = 0; i < D; ++i) z[v] += h[i] * r * g[i] * E[v * D + i];
        z[v] *= c.output_multiplier;
        zmax = std::max(zmax, z[v]);
      }
      double sum = 0;
      for (double zv : z) sum += std::exp(zv - zmax);
      total += zmax + std::log(sum) - z[y];
    }
  }
  return total / static_cast<double>(b.batch * b.seq);
}

}  // namespace

TEST_CASE("standin: gradients match central differences of a float64 formulation",
          "[train_example]") {
  const moe::grok1::Config c = tiny_config(11);
  BigramStandIn model(c, 3);
  moe::ParameterStore& store = model.parameters();
  // Move the norm scale off 1 so that its gradient and its effect are not trivial.
  auto g32 = store.param(store.at("language_model/rms_norm/scale"));
  for (std::size_t i = 0; i < g32.size(); ++i) g32[i] = 0.7f + 0.1f * static_cast<float>(i);
  const moe::Batch batch = make_batch(3, 5, c.vocab_size, 9);
  moe::ThreadPool pool(2);
  store.zero_grads();
  const double loss = model.train_step(pool, batch).loss;

  const auto e_id = store.at("language_model/in_out_embed/embeddings");
  const auto g_id = store.at("language_model/rms_norm/scale");
  std::vector<double> E(store.param(e_id).begin(), store.param(e_id).end());
  std::vector<double> g(store.param(g_id).begin(), store.param(g_id).end());
  CHECK(loss == Approx(reference_loss(c, E, g, batch)).epsilon(1e-5));
  const auto f = [&] { return reference_loss(c, E, g, batch); };
  const std::vector<double> dE = moe_test::numeric_gradient(f, E);
  const std::vector<double> dg = moe_test::numeric_gradient(f, g);
  const auto ce = moe_test::compare_gradient(store.grad(e_id).data(), dE.data(), dE.size());
  const auto cg = moe_test::compare_gradient(store.grad(g_id).data(), dg.data(), dg.size());
  INFO(ce.str("embeddings"));
  INFO(cg.str("final norm"));
  CHECK(ce.scale > 1e-3);
  CHECK(cg.scale > 1e-3);
  CHECK(ce.max_err < 1e-4);
  CHECK(cg.max_err < 1e-4);
}

TEST_CASE("standin: its loss is the Grok-1 Decoder's on its export views", "[train_example]") {
  moe::grok1::Config c = tiny_config(37);
  c.d_model = 32;
  c.embedding_multiplier = std::sqrt(32.0);
  c.rms_eps = 1e-5;
  c.max_seq_len = 16;
  BigramStandIn model(c, 5);
  const moe::Batch batch = make_batch(1, 16, c.vocab_size, 4);
  moe::ThreadPool pool(2);
  const double loss = model.loss(pool, batch);
  const auto weights = model.grok1_weights();
  const auto decoder = moe::grok1::make_model(c, weights);
  auto state = decoder.make_state(16, 16);
  std::vector<float> logits(16 * c.vocab_size);
  moe::MatrixView<float> l(logits.data(), 16, c.vocab_size);
  decoder.forward(pool, batch.inputs(0), state, l);
  std::vector<double> rows;
  const double via_decoder =
      train_example::cross_entropy(pool, l, batch.targets(0), false, 0.0f, rows);
  // Same operations in the same order: equal to the last bit of the f32 logits.
  CHECK(loss == via_decoder);
}

TEST_CASE("standin: learns the fixture corpus, bit-identically for 1 and 3 threads",
          "[train_example]") {
  const moe::Tokenizer tok(std::string(MOE_TRAIN_FIXTURES) + "/tokenizer.model");
  moe::ThreadPool pool(2);
  moe::CorpusOptions no_cache;
  no_cache.use_cache = false;
  const std::filesystem::path train = std::string(MOE_TRAIN_FIXTURES) + "/train.txt";
  const std::filesystem::path val = std::string(MOE_TRAIN_FIXTURES) + "/val.txt";
  const moe::TokenStream ts = moe::tokenize_corpus(pool, tok, {train}, no_cache);
  const moe::TokenStream vs = moe::tokenize_corpus(pool, tok, {val}, no_cache);
  moe::grok1::Config c = moe::grok1::Config::tiny();
  c.vocab_size = static_cast<std::size_t>(tok.vocab_size());
  const moe::Batch v = moe::validation_windows(vs.ids(), 32, 16);

  auto run = [&](std::size_t threads, std::size_t steps, double* first_loss) {
    moe::ThreadPool p(threads);
    auto model = std::make_unique<BigramStandIn>(c, 1);
    moe::ParameterStore& store = model->parameters();
    moe::AdamW opt(store.n_elements(), {});
    moe::BatchSampler sampler(ts.ids(), {8, 32, 3});
    moe::Batch b;
    if (first_loss) *first_loss = model->loss(p, v);
    for (std::size_t step = 1; step <= steps; ++step) {
      sampler.fill(step - 1, b);
      store.zero_grads();
      model->train_step(p, b);
      moe::clip_grad_norm(p, store, 1.0);
      opt.step(p, store, 1e-2f);
    }
    return model;
  };
  double before = 0;
  auto a = run(1, 150, &before);
  const double after = a->loss(pool, v);
  INFO("validation loss " << before << " -> " << after << " (log vocab = "
                          << std::log(static_cast<double>(c.vocab_size)) << ")");
  CHECK(before > 5.0);
  CHECK(after < 0.6 * before);

  auto b1 = run(1, 12, nullptr);
  auto b3 = run(3, 12, nullptr);
  const auto p1 = b1->parameters().params(), p3 = b3->parameters().params();
  CHECK(std::equal(p1.begin(), p1.end(), p3.begin(), p3.end()));
}
