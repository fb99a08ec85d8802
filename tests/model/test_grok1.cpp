// grok1::Config (314B values, validation), grok1::Weights validation, RandomWeights, and the
// model built from f32 weights equal to the int8 one (exact dequantization).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <moe/models/grok1.hpp>

#include "common/test_util.hpp"
#include "model/model_util.hpp"
#include "support/grok1_random_weights.hpp"

TEST_CASE("grok1: the released model's configuration", "[model][grok1]") {
  const auto c = moe::grok1::Config::full();
  CHECK(c.vocab_size == 131072);
  CHECK(c.d_model == 6144);
  CHECK(c.n_layers == 64);
  CHECK(c.n_q_heads == 48);
  CHECK(c.n_kv_heads == 8);
  CHECK(c.head_dim == 128);
  CHECK(c.n_experts == 8);
  CHECK(c.top_k == 2);
  CHECK(c.d_ff == 32768);
  CHECK(c.max_seq_len == 8192);
  CHECK(c.kv_group() == 6);
  // xai-org/grok-1 model.py shapes: 315,684,820,992 parameters (tied head once), 83,756,587,008
  // active per token; the KV cache takes 256 KiB per position in bf16.
  CHECK(c.parameters() == 315'684'820'992ULL);
  CHECK(c.active_parameters() == 83'756'587'008ULL);
  CHECK(c.kv_bytes_per_position(2) == 256 * 1024);
  CHECK(c.embedding_multiplier == Approx(std::sqrt(6144.0)).epsilon(1e-15));
  CHECK(c.output_multiplier == Approx(1.0 / std::sqrt(3.0)).epsilon(1e-15));
  CHECK(c.attn_logit_multiplier == Approx(1.0 / std::sqrt(128.0)).epsilon(1e-15));
  CHECK(c.attn_softcap == 30.0);
  CHECK(c.rope_base == 10000.0);
  CHECK(c.rms_eps == 1e-5);
  CHECK(c.eos_id == 2);
  CHECK_NOTHROW(c.validate());
  CHECK_NOTHROW(moe::grok1::Config::tiny().validate());
  CHECK_NOTHROW(moe::grok1::Config::demo().validate());
  // F = int(8 * 6144) * 2 // 3 rounded up to a multiple of 8 (model.py ffn_size).
  std::size_t f = 8 * 6144 * 2 / 3;
  f = (f + 7) / 8 * 8;
  CHECK(f == c.d_ff);
  // The translated component configurations.
  const auto a = moe::grok1::attention_config(c);
  CHECK(a.group() == 6);
  CHECK(a.softcap == 30.0);
  CHECK(a.rope_layout == moe::RopeLayout::kHalfSplit);
  CHECK(moe::grok1::block_config(c).norm == moe::NormPlacement::kSandwich);
  CHECK_FALSE(moe::grok1::routing(c).renormalize);
}

TEST_CASE("grok1: configuration errors name the value", "[model][grok1]") {
  auto c = moe::grok1::Config::tiny();
  c.n_kv_heads = 3;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("[grok1]") && Catch::Contains("n_q_heads (4)") &&
                                      Catch::Contains("n_kv_heads (3)"));
  c = moe::grok1::Config::tiny();
  c.top_k = 9;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("top_k (9)"));
  c = moe::grok1::Config::tiny();
  c.head_dim = 7;
  CHECK_THROWS_AS(c.validate(), moe::ConfigError);
  c = moe::grok1::Config::tiny();
  c.eos_id = 64;
  CHECK_THROWS_AS(c.validate(), moe::ConfigError);
}

TEST_CASE("grok1: weight validation names the checkpoint tensor and both shapes",
          "[model][grok1]") {
  const auto cfg = moe::grok1::Config::tiny();
  moe::grok1::RandomWeights rw(cfg, 1);
  CHECK_NOTHROW(rw.weights().validate(cfg));
  SECTION("a projection") {
    auto w = rw.weights();
    w.layers[1].wk.out = 24;
    CHECK_THROWS_WITH(moe::grok1::make_model(cfg, w),
                      Catch::Contains("transformer/decoder_layer_1/multi_head_attention/key/w") &&
                          Catch::Contains("[32, 24]") && Catch::Contains("[32, 16]"));
  }
  SECTION("an expert stack") {
    auto w = rw.weights();
    w.layers[0].expert_down.count = 7;
    CHECK_THROWS_WITH(w.validate(cfg), Catch::Contains("decoder_layer_0/moe/linear_1/w") &&
                                           Catch::Contains("[7, 48, 32]") &&
                                           Catch::Contains("[8, 48, 32]"));
  }
  SECTION("a norm, the embedding, the layer count") {
    auto w = rw.weights();
    w.layers[1].norm_post_moe = w.layers[1].norm_post_moe.first(31);
    CHECK_THROWS_WITH(w.validate(cfg), Catch::Contains("decoder_layer_1/rms_norm_3/scale"));
    w = rw.weights();
    w.embedding.rows = 63;
    CHECK_THROWS_WITH(w.validate(cfg),
                      Catch::Contains("in_out_embed/embeddings") && Catch::Contains("[63, 32]"));
    w = rw.weights();
    w.layers.pop_back();
    CHECK_THROWS_WITH(w.validate(cfg), Catch::Contains("1 decoder layers"));
    w = rw.weights();
    w.layers[0].router.data = nullptr;
    CHECK_THROWS_WITH(w.validate(cfg), Catch::Contains("decoder_layer_0/router/w"));
  }
  SECTION("int8 scale blocks must divide the rows") {
    auto w = rw.weights();
    w.layers[0].wo.blocks = 5;
    CHECK_THROWS_WITH(w.validate(cfg), Catch::Contains("multi_head_attention/linear/w"));
  }
}

TEST_CASE("grok1: an f32 copy of the int8 weights gives the same logits", "[model][grok1]") {
  // Dequantization is exact (int8 x bf16 fits in f32), so the int8 model and the f32 model over
  // the dequantized tensors compute the same function; only the matmul kernels differ.
  const auto cfg = moe::grok1::Config::tiny();
  moe::grok1::RandomWeights rw(cfg, 5);
  const auto& q = rw.weights();
  std::vector<std::vector<float>> store;
  auto deq = [&](const moe::Int8Weight& w, std::size_t count = 1) {
    std::vector<float> v(count * w.in * w.out);
    for (std::size_t e = 0; e < count; ++e) {
      moe::Int8Weight we = moe::WeightStack<moe::Int8Weight>{w, count}[e];
      for (std::size_t i = 0; i < w.in; ++i) {
        for (std::size_t o = 0; o < w.out; ++o) v[(e * w.in + i) * w.out + o] = we.at(i, o);
      }
    }
    store.push_back(std::move(v));
    return moe::F32Weight{store.back().data(), w.in, w.out, moe::Layout::kInOut};
  };
  store.reserve(64);
  const auto f = moe::grok1::map_weights<moe::F32Weight>(
      q, [&](const moe::Int8Weight& w) { return deq(w); },
      [&](const moe::WeightStack<moe::Int8Weight>& s) {
        return moe::WeightStack<moe::F32Weight>{deq(s.first, s.count), s.count};
      });
  REQUIRE(store.size() <= 64);  // no reallocation moved a view's storage
  moe::ThreadPool pool(2);
  const auto m8 = moe::grok1::make_model(cfg, q);
  const auto m32 = moe::grok1::make_model(cfg, f);
  const std::vector<std::int32_t> tokens = {4, 8, 15, 16, 23, 42};
  std::vector<float> a(6 * cfg.vocab_size), b(6 * cfg.vocab_size);
  auto s8 = m8.make_state(16, 8), s32 = m32.make_state(16, 8);
  m8.forward(pool, tokens, s8, {a.data(), 6, cfg.vocab_size});
  m32.forward(pool, tokens, s32, {b.data(), 6, cfg.vocab_size});
  const auto d = moe_test::diff(a.data(), b.data(), a.size());
  INFO(d.str());
  CHECK(d.max_abs <= 1e-5 * moe_test::max_abs(b.data(), b.size()));
}

TEST_CASE("grok1: random weights have the checkpoint's formats", "[model][grok1]") {
  const auto cfg = moe::grok1::Config::tiny();
  moe::grok1::RandomWeights a(cfg, 3), b(cfg, 3);
  const auto& w = a.weights();
  CHECK(w.layers.size() == cfg.n_layers);
  CHECK(w.layers[0].wq.blocks == 1);
  CHECK(w.layers[0].wo.blocks == 8);
  CHECK(w.layers[0].expert_gate.first.blocks == 1);
  CHECK(w.layers[0].expert_down.first.blocks == 8);
  CHECK(w.layers[1].expert_up.count == cfg.n_experts);
  // Deterministic for a seed.
  CHECK(w.layers[1].expert_down[5].at(7, 3) == b.weights().layers[1].expert_down[5].at(7, 3));
  CHECK(a.bytes() > cfg.n_layers * 3 * cfg.n_experts * cfg.d_model * cfg.d_ff);
}

TEST_CASE("grok1: the tensor table gives every name, shape and field once", "[model][grok1]") {
  using namespace moe::grok1;
  // The table's shapes for the released config add up to the published parameter count.
  const Config full = Config::full();
  std::size_t params = 0;
  for (const auto& g : global_tensors<>) {
    std::size_t n = 1;
    for (std::size_t d : g.shape(full).span()) n *= d;
    params += n;
  }
  for (const auto& s : layer_tensors<>) {
    std::size_t n = 1;
    for (std::size_t d : s.shape(full).span()) n *= d;
    params += n * full.n_layers;
  }
  CHECK(params == full.parameters());
  // Names and slots.
  CHECK(slot_path(Slot::kQuery) == "multi_head_attention/query/w");
  CHECK(layer_tensor_name(7, Slot::kExpertDown) == "transformer/decoder_layer_7/moe/linear_1/w");
  CHECK(tensor_name(1, 64) == "language_model/rms_norm/scale");
  // Every field of a layer is bound by exactly one table entry: mark each one through the table
  // and find all twelve marked.
  const Config cfg = Config::tiny();
  RandomWeights rw(cfg, 2);
  LayerWeights l = rw.weights().layers[0];
  std::size_t visited = 0;
  for (const auto& s : layer_tensors<>) {
    s.field.visit(l, [&](auto& view) {
      view = {};
      ++visited;
    });
  }
  CHECK(visited == kSlotsPerLayer);
  CHECK(l.wq.data == nullptr);
  CHECK(l.expert_down.first.data == nullptr);
  CHECK(l.norm_post_moe.data() == nullptr);
  CHECK(l.router.data == nullptr);
  CHECK(l.wo.data == nullptr);
  CHECK(l.expert_up.count == 0);
}
