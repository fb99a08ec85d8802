// Decoder training end to end (dense blocks): every parameter's gradient against central
// differences of the float64 formulation (tests/train/decoder_ref.hpp), a directional derivative
// along a random direction, determinism over 1, 2 and 3 threads, the recompute mode, gradient
// accumulation with loss_scale, and the errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <moe/core/thread_pool.hpp>
#include <moe/layers/decoder.hpp>

#include "common/gradcheck.hpp"
#include "common/test_util.hpp"
#include "train/decoder_ref.hpp"
#include "train/dense_model.hpp"

namespace {

using moe_test::ref::DecoderSpec;

/// Grok-shaped (dense): sandwich norms, GQA 4/2, soft-cap engaged, GELU-tanh, both multipliers,
/// tied head, half-split RoPE.
DecoderSpec grok_like() {
  DecoderSpec s;
  s.attention.d_model = 12;
  s.attention.n_q_heads = 4;
  s.attention.n_kv_heads = 2;
  s.attention.head_dim = 4;
  s.attention.logit_multiplier = 0.5;
  s.attention.softcap = 2.0;
  s.vocab = 11;
  s.d_ff = 10;
  s.n_layers = 2;
  s.activation = moe::Activation::kGeluTanh;
  s.sandwich = true;
  s.tied = true;
  s.emb_mult = 3.4641016151377544;  // sqrt(D)
  s.out_mult = 0.5773502691896257;
  return s;
}

/// Mixtral-shaped (dense): pre-norm, GQA 6/2 (MQA-like groups of 3), SiLU, untied head in the
/// [out, in] layout, interleaved RoPE with partial rotary dims, 1/sqrt(dh).
DecoderSpec mixtral_like() {
  DecoderSpec s;
  s.attention.d_model = 12;
  s.attention.n_q_heads = 6;
  s.attention.n_kv_heads = 2;
  s.attention.head_dim = 4;
  s.attention.rope_layout = moe::RopeLayout::kInterleaved;
  s.attention.rope_base = 100.0;
  s.vocab = 13;
  s.d_ff = 8;
  s.n_layers = 2;
  s.activation = moe::Activation::kSilu;
  s.sandwich = false;
  s.tied = false;
  s.layout = moe::Layout::kOutIn;
  return s;
}

struct Batch {
  std::vector<std::int32_t> tokens, targets;
};

/// B sequences of T tokens; every 4th target ignored (id -1).
Batch make_batch(std::size_t b, std::size_t t, std::size_t vocab, std::uint64_t seed) {
  Batch x;
  const auto u = moe_test::randu(2 * b * t, seed, 0.0f, static_cast<float>(vocab));
  for (std::size_t i = 0; i < b * t; ++i) {
    x.tokens.push_back(static_cast<std::int32_t>(u[i]) % static_cast<std::int32_t>(vocab));
    x.targets.push_back(i % 4 == 3 ? -1
                                   : static_cast<std::int32_t>(u[b * t + i]) %
                                         static_cast<std::int32_t>(vocab));
  }
  return x;
}

template <moe::Activation A>
void check_every_parameter(const DecoderSpec& spec, float qk_gain) {
  const std::size_t B = 2, T = 5;
  moe_test::ref::Params p = moe_test::ref::random_params(spec, 7, 1.0f, qk_gain);
  const Batch batch = make_batch(B, T, spec.vocab, 3);
  moe_test::DenseModel<A> m(spec, p);
  moe::ThreadPool pool(2);
  auto st = m.model->make_training_state(B, T);
  const moe::TrainingLoss loss = m.model->forward_train(pool, batch.tokens, batch.targets, st);
  m.model->backward(pool, st, m.grads);

  const auto ref_loss = [&]() {
    const auto z = moe_test::ref::logits(spec, p, batch.tokens, T);
    return moe_test::ref::cross_entropy(z, spec.vocab, batch.targets, -1);
  };
  CHECK(loss.counted == 8);
  CHECK(loss.loss == Approx(ref_loss()).epsilon(1e-5));
  const std::vector<double> num = moe_test::numeric_gradient(ref_loss, p.theta);
  for (const auto& name : p.order) {
    const auto& s = p.slice(name);
    const moe_test::GradCheck c =
        moe_test::compare_gradient(m.g.at(name).data(), num.data() + s.offset, s.size);
    INFO(c.str(name));
    REQUIRE(c.scale > 0);
    CHECK(c.max_err < 1e-4);
  }
}

}  // namespace

TEST_CASE("decoder backward: every parameter of a Grok-shaped dense decoder (float64 FD)",
          "[train][decoder]") {
  check_every_parameter<moe::Activation::kGeluTanh>(grok_like(), 3.0f);
}

TEST_CASE("decoder backward: every parameter of a Mixtral-shaped dense decoder (float64 FD)",
          "[train][decoder]") {
  check_every_parameter<moe::Activation::kSilu>(mixtral_like(), 1.0f);
}

TEST_CASE("decoder backward: directional derivative along a random direction", "[train][decoder]") {
  // The JAX check_vjp idea: g . v against (L(theta + h v) - L(theta - h v)) / 2h, for a larger
  // model than the per-parameter checks (3 blocks, 3 sequences of 9 tokens).
  DecoderSpec spec = grok_like();
  spec.n_layers = 3;
  spec.attention.d_model = 16;
  spec.d_ff = 24;
  const std::size_t B = 3, T = 9;
  moe_test::ref::Params p = moe_test::ref::random_params(spec, 21, 1.0f, 3.0f);
  const Batch batch = make_batch(B, T, spec.vocab, 5);
  moe_test::DenseModel<moe::Activation::kGeluTanh> m(spec, p);
  moe::ThreadPool pool(2);
  auto st = m.model->make_training_state(B, T);
  m.model->forward_train(pool, batch.tokens, batch.targets, st);
  m.model->backward(pool, st, m.grads);

  const std::vector<float> dir = moe_test::randn(p.theta.size(), 99);
  double analytic = 0;
  for (const auto& name : p.order) {
    const auto& s = p.slice(name);
    for (std::size_t i = 0; i < s.size; ++i) analytic += m.g.at(name)[i] * dir[s.offset + i];
  }
  const auto loss_at = [&](double h) {
    moe_test::ref::Params q = p;
    for (std::size_t i = 0; i < q.theta.size(); ++i) q.theta[i] += h * dir[i];
    return moe_test::ref::cross_entropy(moe_test::ref::logits(spec, q, batch.tokens, T), spec.vocab,
                                        batch.targets, -1);
  };
  const double h = 1e-5;
  const double numeric = (loss_at(h) - loss_at(-h)) / (2 * h);
  INFO("analytic " << analytic << " numeric " << numeric);
  REQUIRE(std::abs(numeric) > 1e-2);
  CHECK(analytic == Approx(numeric).epsilon(1e-4));
}

TEST_CASE("decoder backward: bit-identical for 1, 2 and 3 threads, and in recompute mode",
          "[train][decoder]") {
  const DecoderSpec spec = grok_like();
  const std::size_t B = 3, T = 16;  // large enough for the multi-task attention paths
  moe_test::ref::Params p = moe_test::ref::random_params(spec, 5, 1.0f, 3.0f);
  const Batch batch = make_batch(B, T, spec.vocab, 8);
  std::vector<std::map<std::string, std::vector<float>>> results;
  std::vector<float> losses;
  for (const auto& [threads, recompute] :
       {std::pair{1, false}, std::pair{2, false}, std::pair{3, false}, std::pair{2, true}}) {
    moe_test::DenseModel<moe::Activation::kGeluTanh> m(spec, p);
    moe::ThreadPool pool(static_cast<std::size_t>(threads));
    auto st = m.model->make_training_state(B, T, recompute);
    losses.push_back(m.model->forward_train(pool, batch.tokens, batch.targets, st).loss);
    m.model->backward(pool, st, m.grads);
    results.push_back(m.g);
  }
  for (std::size_t i = 1; i < results.size(); ++i) {
    INFO("run " << i);
    CHECK(losses[i] == losses[0]);
    for (const auto& [name, v] : results[0]) {
      INFO(name);
      CHECK(results[i].at(name) == v);
    }
  }
}

TEST_CASE("decoder backward: recompute keeps less tape; loss_scale and accumulation",
          "[train][decoder]") {
  const DecoderSpec spec = mixtral_like();
  const std::size_t B = 2, T = 6;
  moe_test::ref::Params p = moe_test::ref::random_params(spec, 9);
  const Batch batch = make_batch(B, T, spec.vocab, 4);
  moe_test::DenseModel<moe::Activation::kSilu> m(spec, p);
  moe::ThreadPool pool(2);
  auto full = m.model->make_training_state(B, T);
  auto re = m.model->make_training_state(B, T, true);
  CHECK(re.tape().capacity() < full.tape().capacity());
  // Two half-weighted steps on the same batch accumulate to one full step.
  m.model->forward_train(pool, batch.tokens, batch.targets, full);
  m.model->backward(pool, full, m.grads);
  const auto one = m.g;
  m.zero_grads();
  moe::TrainingOptions half;
  half.loss_scale = 0.5f;
  for (int i = 0; i < 2; ++i) {
    m.model->forward_train(pool, batch.tokens, batch.targets, full, half);
    m.model->backward(pool, full, m.grads);
  }
  for (const auto& [name, v] : one) {
    const auto c = moe_test::compare_gradient(m.g.at(name), v);
    INFO(c.str(name));
    CHECK(c.max_err < 1e-6);
  }
  // Fewer sequences than the state holds.
  const std::vector<std::int32_t> t1(batch.tokens.begin(), batch.tokens.begin() + T),
      g1(batch.targets.begin(), batch.targets.begin() + T);
  CHECK_NOTHROW(m.model->forward_train(pool, t1, g1, full));
}

TEST_CASE("decoder training: errors are thrown before any work", "[train][decoder]") {
  const DecoderSpec spec = mixtral_like();
  moe_test::ref::Params p = moe_test::ref::random_params(spec, 1);
  moe_test::DenseModel<moe::Activation::kSilu> m(spec, p);
  moe::ThreadPool pool(1);
  auto st = m.model->make_training_state(2, 4);
  std::vector<std::int32_t> tok(8, 1), tgt(8, 2);
  CHECK_THROWS_WITH(m.model->backward(pool, st, m.grads), Catch::Contains("forward_train() first"));
  tok[5] = 13;
  CHECK_THROWS_WITH(m.model->forward_train(pool, tok, tgt, st),
                    Catch::Contains("token id 13 at index 5"));
  tok[5] = 1;
  tgt[2] = 40;
  CHECK_THROWS_WITH(m.model->forward_train(pool, tok, tgt, st),
                    Catch::Contains("target id 40 at index 2"));
  tgt[2] = 2;
  CHECK_THROWS_WITH(
      m.model->forward_train(pool, std::span(tok).first(6), std::span(tgt).first(6), st),
      Catch::Contains("whole sequences of 4"));
  std::vector<std::int32_t> big(12, 1);
  CHECK_THROWS_AS(m.model->forward_train(pool, big, big, st), moe::ShapeError);
  CHECK_THROWS_WITH(m.model->forward_train(pool, tok, std::span(tgt).first(4), st),
                    Catch::Contains("targets have shape [4]"));
  m.model->forward_train(pool, tok, tgt, st);
  auto bad = m.grads;
  bad.blocks.pop_back();
  CHECK_THROWS_WITH(m.model->backward(pool, st, bad), Catch::Contains("Grads::blocks has 1"));
  bad = m.grads;
  bad.final_norm = bad.final_norm.first(3);
  CHECK_THROWS_WITH(m.model->backward(pool, st, bad),
                    Catch::Contains("gradient of final_norm") && Catch::Contains("[3]"));
  m.model->backward(pool, st, m.grads);
  CHECK_THROWS_AS(m.model->backward(pool, st, m.grads), moe::ConfigError);  // consumed
  // A tiny pool scratch cannot hold the attention rows of long sequences.
  moe::ThreadPool small(1, 256);
  auto long_st = m.model->make_training_state(1, 200);
  std::vector<std::int32_t> lt(200, 1);
  CHECK_THROWS_WITH(m.model->forward_train(small, lt, lt, long_st), Catch::Contains("scratch"));
}
