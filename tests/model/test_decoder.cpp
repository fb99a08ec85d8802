// Decoder: incremental decoding vs full recompute, causality, errors, threads, bf16 cache,
// profile, and a Mixtral-style configuration built from the same components.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <moe/layers/decoder.hpp>
#include <moe/layers/expert.hpp>
#include <moe/models/grok1.hpp>

#include "common/test_util.hpp"
#include "model/model_util.hpp"
#include "support/grok1_random_weights.hpp"

namespace {

using Logits = std::vector<float>;

/// Logits of every position for `tokens`, fed to a fresh state in chunks of the given sizes.
template <class Model>
Logits run(moe::ThreadPool& pool, const Model& model, const std::vector<std::int32_t>& tokens,
           const std::vector<std::size_t>& chunks, moe::KvDtype dtype = moe::KvDtype::kF32) {
  const std::size_t V = model.vocab_size();
  auto state = model.make_state(64, 32, dtype);
  Logits out(tokens.size() * V);
  std::size_t t0 = 0;
  for (std::size_t n : chunks) {
    model.forward(pool, std::span<const std::int32_t>(tokens.data() + t0, n), state,
                  moe::MatrixView<float>(out.data() + t0 * V, n, V));
    t0 += n;
  }
  REQUIRE(t0 == tokens.size());
  REQUIRE(state.position() == tokens.size());
  return out;
}

std::vector<std::int32_t> some_tokens(std::size_t n, std::size_t vocab, std::uint64_t seed) {
  auto u = moe_test::randu(n, seed, 0.0f, static_cast<float>(vocab));
  std::vector<std::int32_t> t(n);
  for (std::size_t i = 0; i < n; ++i)
    t[i] = static_cast<std::int32_t>(u[i]) % static_cast<std::int32_t>(vocab);
  return t;
}

double scale_of(const Logits& l) {
  return moe_test::max_abs(l.data(), l.size());
}

}  // namespace

TEST_CASE("decoder: prefill + single steps equal a full recompute", "[model][decoder]") {
  moe::ThreadPool pool(2);
  const auto cfg = moe::grok1::Config::tiny();
  moe::grok1::RandomWeights rw(cfg, 7);
  const auto model = moe::grok1::make_model(cfg, rw.weights());
  const auto tokens = some_tokens(20, cfg.vocab_size, 3);
  const Logits full = run(pool, model, tokens, {20});
  std::vector<std::size_t> steps = {6};
  steps.insert(steps.end(), 14, 1);
  const Logits inc = run(pool, model, tokens, steps);
  const Logits chunked = run(pool, model, tokens, {1, 4, 9, 3, 3});
  const double s = scale_of(full);
  REQUIRE(s > 0.1);
  INFO("incremental: " << moe_test::diff(inc.data(), full.data(), full.size()).str());
  CHECK(moe_test::diff(inc.data(), full.data(), full.size()).max_abs <= 1e-5 * s);
  CHECK(moe_test::diff(chunked.data(), full.data(), full.size()).max_abs <= 1e-5 * s);
  // Only the last row requested: the same numbers as row T-1.
  auto state = model.make_state(64, 32);
  Logits last(cfg.vocab_size);
  model.forward(pool, tokens, state, moe::MatrixView<float>(last.data(), 1, cfg.vocab_size));
  CHECK(moe_test::diff(last.data(), full.data() + 19 * cfg.vocab_size, cfg.vocab_size).max_abs <=
        1e-5 * s);
}

TEST_CASE("decoder: changing a later token leaves earlier logits unchanged", "[model][decoder]") {
  moe::ThreadPool pool(2);
  const auto cfg = moe::grok1::Config::tiny();
  moe::grok1::RandomWeights rw(cfg, 9);
  const auto model = moe::grok1::make_model(cfg, rw.weights());
  auto tokens = some_tokens(12, cfg.vocab_size, 5);
  const Logits a = run(pool, model, tokens, {12});
  tokens[8] = (tokens[8] + 17) % static_cast<std::int32_t>(cfg.vocab_size);
  const Logits b = run(pool, model, tokens, {12});
  const std::size_t V = cfg.vocab_size;
  const double s = scale_of(a);
  CHECK(moe_test::diff(b.data(), a.data(), 8 * V).max_abs <= 1e-6 * s);
  for (std::size_t t = 8; t < 12; ++t) {
    CHECK(moe_test::diff(b.data() + t * V, a.data() + t * V, V).max_abs > 1e-3 * s);
  }
}

TEST_CASE("decoder: results are identical for 1 and 2 threads", "[model][decoder]") {
  moe::ThreadPool p1(1), p2(2);
  const auto cfg = moe::grok1::Config::tiny();
  moe::grok1::RandomWeights rw(cfg, 2);
  const auto model = moe::grok1::make_model(cfg, rw.weights());
  const auto tokens = some_tokens(17, cfg.vocab_size, 8);
  const Logits a = run(p1, model, tokens, {9, 1, 7});
  const Logits b = run(p2, model, tokens, {9, 1, 7});
  CHECK(moe_test::diff(a.data(), b.data(), a.size()).max_abs == 0.0);
}

TEST_CASE("decoder: a bf16 KV cache is close to f32", "[model][decoder]") {
  moe::ThreadPool pool(2);
  const auto cfg = moe::grok1::Config::tiny();
  moe::grok1::RandomWeights rw(cfg, 4);
  const auto model = moe::grok1::make_model(cfg, rw.weights());
  const auto tokens = some_tokens(16, cfg.vocab_size, 1);
  const Logits f = run(pool, model, tokens, {10, 6});
  const Logits h = run(pool, model, tokens, {10, 6}, moe::KvDtype::kBF16);
  const double e = moe_test::diff(h.data(), f.data(), f.size()).max_abs / scale_of(f);
  INFO("bf16 vs f32 cache: " << e);
  CHECK(e < 5e-2);
  CHECK(e > 0.0);
  CHECK(model.make_state(100, 8, moe::KvDtype::kBF16).cache().bytes() * 2 ==
        model.make_state(100, 8).cache().bytes());
}

TEST_CASE("decoder: errors are thrown before any work", "[model][decoder]") {
  moe::ThreadPool pool(1);
  const auto cfg = moe::grok1::Config::tiny();
  moe::grok1::RandomWeights rw(cfg, 1);
  const auto model = moe::grok1::make_model(cfg, rw.weights());
  const std::size_t V = cfg.vocab_size;
  auto state = model.make_state(8, 4);
  Logits out(8 * V);
  auto fwd = [&](std::vector<std::int32_t> t, std::size_t rows) {
    model.forward(pool, t, state, moe::MatrixView<float>(out.data(), rows, V));
  };
  CHECK_THROWS_WITH(fwd({1, 64, 2}, 3),
                    Catch::Contains("token id 64 at index 1") && Catch::Contains("[0, 64)"));
  CHECK_THROWS_AS(fwd({-1}, 1), moe::TokenError);
  CHECK_THROWS_AS(fwd({}, 1), moe::ShapeError);
  CHECK_THROWS_WITH(fwd({1, 2, 3, 4, 5}, 1), Catch::Contains("at most 4"));
  CHECK_THROWS_WITH(fwd({1, 2}, 3), Catch::Contains("logits have shape [3, 64]"));
  CHECK(state.position() == 0);
  fwd({1, 2, 3, 4}, 4);
  fwd({1, 2, 3, 4}, 1);
  CHECK(state.position() == 8);
  CHECK_THROWS_WITH(fwd({5}, 1), Catch::Contains("[kv_cache] full"));
  CHECK_THROWS_AS(fwd({5}, 1), moe::CapacityError);
  CHECK(state.position() == 8);
  state.truncate(7);
  fwd({5}, 1);
  CHECK(state.position() == 8);
  state.reset();
  CHECK(state.position() == 0);
}

TEST_CASE("decoder: the profile accounts for every component", "[model][decoder]") {
  moe::ThreadPool pool(2);
  const auto cfg = moe::grok1::Config::tiny();
  moe::grok1::RandomWeights rw(cfg, 1);
  const auto model = moe::grok1::make_model(cfg, rw.weights());
  auto state = model.make_state(32, 16);
  moe::DecoderProfile prof;
  std::size_t layers_seen = 0;
  moe::DecoderOptions opts;
  opts.profile = &prof;
  opts.on_layer = [&](std::size_t l, moe::MatrixView<const float> h) {
    CHECK(l == layers_seen++ % cfg.n_layers);
    CHECK(h.cols == cfg.d_model);
  };
  std::vector<moe::MoEResult> results(cfg.n_layers);
  Logits out(cfg.vocab_size);
  std::vector<std::int32_t> tokens = {3, 4, 5, 6, 7};
  model.forward(pool, tokens, state, moe::MatrixView<float>(out.data(), 1, cfg.vocab_size), opts,
                results);
  model.step(pool, 9, state, out, opts);
  CHECK(layers_seen == 2 * cfg.n_layers);
  CHECK(prof.calls == 2);
  CHECK(prof.tokens == 6);
  CHECK(prof.attention > 0);
  CHECK(prof.ffn > 0);
  CHECK(prof.norms > 0);
  CHECK(prof.head > 0);
  CHECK(prof.total() >= prof.attention + prof.ffn);
  for (const auto& r : results) {
    CHECK(r.stats.tokens == 5);
    CHECK(r.stats.assignments == 5 * cfg.top_k);
  }
}

TEST_CASE("decoder: a Mixtral-style model is configuration (pre-norm, untied head, dense FFN)",
          "[model][decoder]") {
  // Pre-norm blocks with a dense SiLU FFN and an untied bf16 head, checked against a float64
  // recomputation of the whole forward from the same components' math.
  moe::ThreadPool pool(2);
  const std::size_t V = 40, D = 24, F = 32, T = 7;
  moe::AttentionConfig ac;
  ac.d_model = D;
  ac.n_q_heads = 6;
  ac.n_kv_heads = 2;
  ac.head_dim = 4;
  ac.rope_layout = moe::RopeLayout::kInterleaved;
  ac.rope_base = 1e6;
  moe_test::AttentionOwner aw(ac, 17);
  auto emb = moe_test::randn(V * D, 1);
  auto head_f = moe_test::randn(V * D, 2, 0.2f);  // [V, D], [out, in]
  std::vector<moe::bf16> head(V * D);
  for (std::size_t i = 0; i < head.size(); ++i) head[i] = moe::bf16(head_f[i]);
  auto gate = moe_test::randn(D * F, 3, 0.2f), up = moe_test::randn(D * F, 4, 0.2f),
       down = moe_test::randn(F * D, 5, 0.2f);
  auto n0 = moe_test::randu(D, 6, 0.5f, 1.5f), n2 = moe_test::randu(D, 7, 0.5f, 1.5f),
       fin = moe_test::randu(D, 8, 0.5f, 1.5f);
  using Ffn = moe::GatedFfn<moe::F32Weight, moe::Activation::kSilu>;
  using Block = moe::TransformerBlock<moe::RotaryAttention<moe::F32Weight>, Ffn>;
  std::vector<Block> blocks;
  blocks.emplace_back(moe::RotaryAttention<moe::F32Weight>(ac, aw.views),
                      Ffn({gate.data(), D, F}, {up.data(), D, F}, {down.data(), F, D}),
                      moe::BlockNorms{n0, {}, n2, {}}, moe::BlockConfig{moe::NormPlacement::kPre});
  moe::Decoder<Block, moe::BF16Weight> model(
      moe::DecoderConfig{V, D}, {emb.data(), V, D}, std::move(blocks), fin,
      moe::BF16Weight{head.data(), D, V, moe::Layout::kOutIn});
  CHECK_FALSE(model.tied_head());
  const std::vector<std::int32_t> tokens = {3, 39, 0, 17, 17, 8, 21};
  const Logits got = run(pool, model, tokens, {4, 1, 2});

  // float64 reference
  auto rms = [&](const std::vector<double>& x, const std::vector<float>& s) {
    std::vector<double> y(x.size());
    for (std::size_t t = 0; t < T; ++t) {
      double ss = 0;
      for (std::size_t i = 0; i < D; ++i) ss += x[t * D + i] * x[t * D + i];
      const double inv = 1.0 / std::sqrt(ss / D + 1e-5);
      for (std::size_t i = 0; i < D; ++i) y[t * D + i] = s[i] * x[t * D + i] * inv;
    }
    return y;
  };
  std::vector<double> h(T * D);
  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t i = 0; i < D; ++i) h[t * D + i] = emb[tokens[t] * D + i];
  }
  auto a = rms(h, n0);
  std::vector<float> af(a.begin(), a.end());  // the reference attention takes float input
  auto att = moe_test::attention_ref(ac, aw.views, af.data(), T);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] += att[i];
  auto m = rms(h, n2);
  for (std::size_t t = 0; t < T; ++t) {
    std::vector<double> hid(F);
    for (std::size_t f = 0; f < F; ++f) {
      double g = 0, u = 0;
      for (std::size_t i = 0; i < D; ++i) {
        g += m[t * D + i] * gate[i * F + f];
        u += m[t * D + i] * up[i * F + f];
      }
      hid[f] = g / (1.0 + std::exp(-g)) * u;
    }
    for (std::size_t o = 0; o < D; ++o) {
      double acc = 0;
      for (std::size_t f = 0; f < F; ++f) acc += hid[f] * down[f * D + o];
      h[t * D + o] += acc;
    }
  }
  auto hn = rms(h, fin);
  std::vector<double> ref(T * V);
  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t v = 0; v < V; ++v) {
      double acc = 0;
      for (std::size_t i = 0; i < D; ++i) acc += hn[t * D + i] * head[v * D + i].to_float();
      ref[t * V + v] = acc;
    }
  }
  const double s = moe_test::max_abs(ref.data(), ref.size());
  const auto d = moe_test::diff(got.data(), ref.data(), ref.size());
  INFO(d.str() << " scale " << s);
  // The attention reference rounds its input to f32: allow that on top of f32 arithmetic.
  CHECK(d.max_abs <= 2e-5 * s);
}
