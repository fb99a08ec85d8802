// One training step of a tiny Grok-shaped and a tiny Mixtral-shaped MoE decoder against PyTorch
// float64 autograd (tools/decoder_grad_reference.py, fixtures tests/data/train/*_train.txt): the
// loss, and every parameter's gradient within 1e-4 of that tensor's largest gradient.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <moe/core/thread_pool.hpp>
#include <moe/layers/decoder.hpp>
#include <moe/layers/presets.hpp>

#include "common/fixture.hpp"
#include "common/gradcheck.hpp"

namespace {

using moe_test::TextFixture;

/// The MoE layer has the training contract (Saved, Grads, forward_train, backward).
template <class M>
concept TrainableMoE = requires {
  typename M::Saved;
  typename M::Grads;
};

/// Builds the fixture's decoder over f32 copies of its parameters, runs forward_train + backward
/// with 1 and 3 threads and compares the loss and every gradient with PyTorch's.
template <class Moe, class Head>
void check_fixture(const std::string& name) {
  const TextFixture fx =
      moe_test::load_text_fixture(std::string(MOE_TEST_DATA_DIR) + "/train/" + name + ".txt");
  const std::size_t V = fx.cfg("vocab"), D = fx.cfg("d"), L = fx.cfg("layers"),
                    E = fx.cfg("experts"), F = fx.cfg("d_ff"), B = fx.cfg("batch"),
                    T = fx.cfg("seq_len");
  const bool sandwich = fx.config.at("sandwich") == "true";
  const bool tied = fx.config.at("tied") == "true";
  const moe::Layout layout =
      fx.config.at("layout") == "in_out" ? moe::Layout::kInOut : moe::Layout::kOutIn;
  moe::AttentionConfig ac;
  ac.d_model = D;
  ac.n_q_heads = fx.cfg("hq");
  ac.n_kv_heads = fx.cfg("hkv");
  ac.head_dim = fx.cfg("dh");
  ac.rope_base = fx.cfgd("rope_base");
  ac.rope_layout = fx.config.at("rope_layout") == "half_split" ? moe::RopeLayout::kHalfSplit
                                                               : moe::RopeLayout::kInterleaved;
  ac.logit_multiplier = fx.cfgd("logit_mult");
  ac.softcap = fx.cfgd("softcap");
  const std::size_t qd = ac.q_dim(), kvd = ac.kv_dim();

  std::map<std::string, std::vector<float>> w, g;
  for (const auto& [key, values] : fx.data) {
    if (key.rfind("grad.", 0) == 0 || key == "tokens" || key == "targets" || key == "loss" ||
        key == "ce" || key == "aux") {
      continue;
    }
    w[key] = fx.f(key);
    g[key] = std::vector<float>(w[key].size(), 0.0f);
  }
  const auto wt = [&](const std::string& n, std::size_t in, std::size_t out) {
    return moe::F32Weight{w.at(n).data(), in, out, layout};
  };
  const auto gr = [&](const std::string& n, std::size_t in, std::size_t out) {
    return moe::WeightGrad{g.at(n).data(), in, out, layout};
  };
  using Block = moe::TransformerBlock<moe::RotaryAttention<moe::F32Weight>, Moe>;
  using Model = moe::Decoder<Block, Head>;
  std::vector<Block> blocks;
  typename Model::Grads grads;
  for (std::size_t l = 0; l < L; ++l) {
    const std::string p = "layer" + std::to_string(l) + ".";
    moe::RotaryAttention<moe::F32Weight> attn(
        ac, {wt(p + "wq", D, qd), wt(p + "wk", D, kvd), wt(p + "wv", D, kvd), wt(p + "wo", qd, D)});
    Moe layer(typename Moe::router_type(wt(p + "router", D, E)),
              typename Moe::expert_type({wt(p + "gate", D, F), E}, {wt(p + "up", D, F), E},
                                        {wt(p + "down", F, D), E}));
    const auto norm = [&](const char* n) {
      return w.count(p + n) ? std::span<const float>(w.at(p + n)) : std::span<const float>();
    };
    const auto norm_grad = [&](const char* n) {
      return g.count(p + n) ? std::span<float>(g.at(p + n)) : std::span<float>();
    };
    blocks.emplace_back(
        std::move(attn), std::move(layer),
        moe::BlockNorms{norm("norm0"), norm("norm1"), norm("norm2"), norm("norm3")},
        moe::BlockConfig{sandwich ? moe::NormPlacement::kSandwich : moe::NormPlacement::kPre,
                         fx.cfgd("eps")});
    typename Block::Grads bg;
    bg.attention = {gr(p + "wq", D, qd), gr(p + "wk", D, kvd), gr(p + "wv", D, kvd),
                    gr(p + "wo", qd, D)};
    bg.ffn.router.gate = gr(p + "router", D, E);
    bg.ffn.experts.gate = {gr(p + "gate", D, F), E};
    bg.ffn.experts.up = {gr(p + "up", D, F), E};
    bg.ffn.experts.down = {gr(p + "down", F, D), E};
    bg.pre_attn = norm_grad("norm0");
    bg.post_attn = norm_grad("norm1");
    bg.pre_ffn = norm_grad("norm2");
    bg.post_ffn = norm_grad("norm3");
    grads.blocks.push_back(bg);
  }
  moe::DecoderConfig dc;
  dc.vocab_size = V;
  dc.d_model = D;
  dc.rms_eps = fx.cfgd("eps");
  dc.embedding_multiplier = fx.cfgd("emb_mult");
  dc.output_multiplier = fx.cfgd("out_mult");
  std::optional<Head> head;
  if (!tied) {
    head = Head{w.at("head").data(), D, V, moe::Layout::kOutIn};  // lm_head.weight [V, D]
    grads.head = moe::WeightGrad{g.at("head").data(), D, V, moe::Layout::kOutIn};
  }
  const Model model(dc, {w.at("embedding").data(), V, D}, std::move(blocks), w.at("final_norm"),
                    head);
  grads.embedding = g.at("embedding");
  grads.final_norm = g.at("final_norm");

  std::vector<std::int32_t> tokens, targets;
  for (double v : fx.t("tokens")) tokens.push_back(static_cast<std::int32_t>(v));
  for (double v : fx.t("targets")) targets.push_back(static_cast<std::int32_t>(v));
  std::map<std::string, std::vector<float>> first;
  for (std::size_t threads : {1, 3}) {
    for (auto& [key, v] : g) std::fill(v.begin(), v.end(), 0.0f);
    moe::ThreadPool pool(threads);
    auto st = model.make_training_state(B, T);
    const moe::TrainingLoss loss = model.forward_train(pool, tokens, targets, st);
    model.backward(pool, st, grads);
    INFO(name << ", " << threads << " threads");
    CHECK(loss.loss == Approx(fx.s("loss")).epsilon(1e-5));
    CHECK(loss.ce == Approx(fx.s("ce")).epsilon(1e-5));
    CHECK(loss.aux == Approx(fx.s("aux")).epsilon(1e-4).margin(1e-9));
    for (const auto& [key, v] : g) {
      const auto& ref = fx.t("grad." + key);
      const moe_test::GradCheck c = moe_test::compare_gradient(v.data(), ref.data(), v.size());
      INFO(c.str(key));
      REQUIRE(c.scale > 0);
      CHECK(c.max_err < 1e-4);
    }
    if (threads == 1) {
      first = g;
    } else {
      CHECK(g == first);  // bit-identical for any pool size
    }
  }
}

}  // namespace

TEST_CASE("decoder training step matches PyTorch: tiny Grok-shaped MoE decoder",
          "[train][decoder][torch]") {
  check_fixture<moe::presets::Grok1Of<moe::F32Weight>, moe::F32Weight>("grok_train");
}

TEST_CASE("decoder training step matches PyTorch: tiny Mixtral-shaped MoE decoder",
          "[train][decoder][torch]") {
  check_fixture<moe::presets::Mixtral<moe::F32Weight>, moe::F32Weight>("mixtral_train");
}
