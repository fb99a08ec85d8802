// TrainableDecoder: the store holds every tensor, the gradients of a step land in the store,
// freezing the MoE layers, determinism, and a small model memorising a sequence.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include <moe/core/thread_pool.hpp>
#include <moe/layers/presets.hpp>
#include <moe/train/optimizer.hpp>
#include <moe/train/trainable.hpp>

namespace {

moe::TrainableConfig small_config(bool sandwich, bool tied, std::size_t moe_every) {
  moe::TrainableConfig c;
  c.decoder.vocab_size = 37;
  c.decoder.d_model = 32;
  c.decoder.embedding_multiplier = sandwich ? std::sqrt(32.0) : 1.0;
  c.decoder.output_multiplier = sandwich ? 0.5773502691896257 : 1.0;
  c.attention.n_q_heads = 4;
  c.attention.n_kv_heads = 2;
  c.attention.head_dim = 8;
  c.attention.softcap = sandwich ? 30.0 : 0.0;
  c.block.norm = sandwich ? moe::NormPlacement::kSandwich : moe::NormPlacement::kPre;
  c.n_layers = 3;
  c.n_experts = 4;
  c.d_ff = 24;
  c.moe_every = moe_every;
  c.tied_head = tied;
  return c;
}

template <class Net>
double train_steps(Net& net, moe::ThreadPool& pool, const std::vector<std::int32_t>& tokens,
                   const std::vector<std::int32_t>& targets, std::size_t batch, std::size_t seq,
                   std::size_t steps, float lr, double* first = nullptr) {
  auto st = net.model().make_training_state(batch, seq);
  moe::AdamW opt(net.parameters().n_elements(), {.beta2 = 0.99f});
  double loss = 0;
  for (std::size_t s = 1; s <= steps; ++s) {
    net.parameters().zero_grads();
    loss = net.model().forward_train(pool, tokens, targets, st, {.step = s}).ce;
    if (s == 1 && first) *first = loss;
    net.model().backward(pool, st, net.grads());
    moe::clip_grad_norm(pool, net.parameters(), 1.0);
    opt.step(pool, net.parameters(), lr);
  }
  return loss;
}

std::vector<std::int32_t> pattern(std::size_t n, std::size_t vocab, std::uint32_t seed) {
  std::vector<std::int32_t> v(n);
  std::uint32_t x = seed;
  for (auto& t : v) {
    x = x * 1664525u + 1013904223u;
    t = static_cast<std::int32_t>((x >> 16) % vocab);
  }
  return v;
}

}  // namespace

TEST_CASE("TrainableDecoder declares every tensor and a step fills every gradient",
          "[train][trainable]") {
  using Grok = moe::presets::Grok1Of<moe::F32Weight>;
  using Mixtral = moe::presets::Mixtral<moe::F32Weight>;
  moe::ThreadPool pool(2);
  const auto tokens = pattern(2 * 16, 37, 1), targets = pattern(2 * 16, 37, 2);
  const auto check_all_grads = [&](auto& net) {
    auto st = net.model().make_training_state(2, 16);
    net.parameters().zero_grads();
    const auto loss = net.model().forward_train(pool, tokens, targets, st);
    CHECK(std::isfinite(loss.loss));
    net.model().backward(pool, st, net.grads());
    for (std::size_t i = 0; i < net.parameters().n_tensors(); ++i) {
      const auto g = net.parameters().grad(i);
      double norm = 0;
      for (float x : g) norm += double(x) * x;
      INFO(net.parameters().info(i).name);
      CHECK(norm > 0);
      CHECK(std::isfinite(norm));
    }
  };
  SECTION("Grok-1 shape: sandwich norms, soft-cap, tied head, MoE everywhere") {
    moe::TrainableDecoder<Grok> net(small_config(true, true, 1), {}, 7);
    CHECK(net.parameters().n_tensors() == 1 + 3 * 12 + 1);
    CHECK(net.parameters().find("layer_2/moe/down") != moe::ParameterStore::npos);
    CHECK(net.parameters().info(net.parameters().at("layer_0/moe/gate")).shape ==
          std::vector<std::size_t>{4, 32, 24});
    check_all_grads(net);
  }
  SECTION("Mixtral shape: pre-norm, separate head, GLaM-style alternation") {
    moe::TrainableDecoder<Mixtral> net(small_config(false, false, 2), {}, 7);
    CHECK(net.parameters().find("layer_0/ffn/gate") != moe::ParameterStore::npos);
    CHECK(net.parameters().find("layer_1/moe/router") != moe::ParameterStore::npos);
    CHECK(net.parameters().info(net.parameters().at("layer_0/ffn/gate")).shape ==
          std::vector<std::size_t>{32, 48});  // dense width = top_k * d_ff
    CHECK(net.parameters().find("head") != moe::ParameterStore::npos);
    check_all_grads(net);
  }
  SECTION("a dense model") {
    moe::TrainableDecoder<Mixtral> net(small_config(false, true, 0), {}, 7);
    CHECK(net.parameters().find("layer_0/moe/router") == moe::ParameterStore::npos);
    check_all_grads(net);
  }
}

TEST_CASE("TrainableDecoder: frozen MoE layers keep zero gradients, the rest still learns",
          "[train][trainable]") {
  using Grok = moe::presets::Grok1Of<moe::F32Weight>;
  moe::ThreadPool pool(2);
  moe::TrainableDecoder<Grok> net(small_config(true, true, 1), {}, 3);
  net.freeze_moe(true);
  const auto tokens = pattern(32, 37, 4), targets = pattern(32, 37, 5);
  auto st = net.model().make_training_state(2, 16);
  net.parameters().zero_grads();
  net.model().forward_train(pool, tokens, targets, st);
  net.model().backward(pool, st, net.grads());
  for (std::size_t i = 0; i < net.parameters().n_tensors(); ++i) {
    const auto& info = net.parameters().info(i);
    double norm = 0;
    for (float x : net.parameters().grad(i)) norm += double(x) * x;
    INFO(info.name);
    if (info.name.find("/moe/") != std::string::npos) {
      CHECK(norm == 0);
    } else {
      CHECK(norm > 0);
    }
  }
}

TEST_CASE("TrainableDecoder: training is bit-identical for 1, 2 and 3 threads",
          "[train][trainable]") {
  using Switch = moe::presets::Switch<moe::F32Weight>;
  const auto tokens = pattern(64, 37, 8), targets = pattern(64, 37, 9);
  std::vector<std::vector<float>> params;
  for (std::size_t threads : {1, 2, 3}) {
    moe::ThreadPool pool(threads);
    moe::TrainableDecoder<Switch> net(small_config(false, true, 1), {}, 11);
    train_steps(net, pool, tokens, targets, 4, 16, 5, 3e-3f);
    params.emplace_back(net.parameters().params().begin(), net.parameters().params().end());
  }
  CHECK(params[0] == params[1]);
  CHECK(params[0] == params[2]);
}

TEST_CASE("a small MoE decoder memorises a short sequence", "[train][trainable]") {
  using Grok = moe::presets::Grok1Of<moe::F32Weight>;
  moe::ThreadPool pool(2);
  moe::TrainableDecoder<Grok> net(small_config(true, true, 1), {}, 5);
  // One sequence of 32 tokens, the model learns to predict each next token.
  const auto seq = pattern(33, 37, 21);
  const std::vector<std::int32_t> tokens(seq.begin(), seq.end() - 1),
      targets(seq.begin() + 1, seq.end());
  double first = 0;
  const double last = train_steps(net, pool, tokens, targets, 1, 32, 300, 1e-2f, &first);
  INFO("cross-entropy " << first << " -> " << last);
  CHECK(first > 3.0);
  CHECK(last < 0.05);
}
