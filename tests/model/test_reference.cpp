// The decoder against the float64 reference of tools/decoder_reference.py (fixtures in
// tests/data/model/): per-layer residual streams and final logits, for Grok-1 itself (int8
// weights, sandwich norms, soft-cap, multipliers, raw top-2 gates, tied head), for a
// Mixtral-style model built from the same components by configuration (bf16 [out, in] weights,
// pre-norm, SiLU, renormalised top-2, interleaved RoPE, untied head), and for a GLaM-shaped one
// (dense and MoE blocks alternating through DenseOrMoE, 64 experts, GShard top-2 with capacity).
#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <moe/layers/decoder.hpp>
#include <moe/layers/presets.hpp>
#include <moe/models/grok1.hpp>

#include "common/test_util.hpp"
#include "model/fixture.hpp"
#include "model/model_util.hpp"

namespace {

using moe_test::Fixture;

moe::Int8Weight int8(const Fixture& f, const std::string& name) {
  const auto& s = f.shape(name);
  const auto& ss = f.shape(name + ".scales");
  return moe::Int8Weight{f.data<std::int8_t>(name), f.data<moe::bf16>(name + ".scales"),
                         s[s.size() - 2], s[s.size() - 1], ss[ss.size() - 2]};
}

std::span<const float> vec(const Fixture& f, const std::string& name) {
  return {f.data<float>(name), f.shape(name)[0]};
}

/// Runs `tokens` through `model` (in two chunks, so the KV cache is used, unless `one_call`) and
/// compares every layer's residual stream and the logits with the fixture. `results` (optional,
/// one per layer) receives the FFN results of the last call. Returns the worst relative error.
template <class Model>
double compare(const Fixture& f, const Model& model, double tol, bool one_call = false,
               std::span<typename Model::result_slot> results = {}) {
  moe::ThreadPool pool(2);
  const auto& tshape = f.shape("tokens");
  const std::size_t T = tshape[0], D = model.dim(), V = model.vocab_size();
  const std::int32_t* tok = f.data<std::int32_t>("tokens");
  const std::size_t L = model.n_layers();
  std::vector<std::vector<float>> hidden(L, std::vector<float>(T * D));
  std::vector<float> logits(T * V);
  auto state = model.make_state(T, T);
  std::size_t t0 = 0;
  moe::DecoderOptions opts;
  opts.on_layer = [&](std::size_t l, moe::MatrixView<const float> h) {
    for (std::size_t r = 0; r < h.rows; ++r) {
      std::copy(h.row(r), h.row(r) + D, hidden[l].data() + (t0 + r) * D);
    }
  };
  const std::vector<std::size_t> chunks =
      one_call ? std::vector<std::size_t>{T} : std::vector<std::size_t>{T / 2 + 1, T - T / 2 - 1};
  for (std::size_t n : chunks) {
    model.forward(pool, std::span<const std::int32_t>(tok + t0, n), state,
                  moe::MatrixView<float>(logits.data() + t0 * V, n, V), opts, results);
    t0 += n;
  }
  double worst = 0;
  for (std::size_t l = 0; l < L; ++l) {
    const double* ref = f.data<double>("hidden." + std::to_string(l));
    const auto d = moe_test::diff(hidden[l].data(), ref, T * D);
    const double rel = d.max_abs / moe_test::max_abs(ref, T * D);
    INFO("layer " << l << ": " << d.str() << " relative " << rel);
    CHECK(rel < tol);
    worst = std::max(worst, rel);
  }
  const double* ref = f.data<double>("logits");
  const auto d = moe_test::diff(logits.data(), ref, T * V);
  const double rel = d.max_abs / moe_test::max_abs(ref, T * V);
  INFO("logits: " << d.str() << " relative " << rel);
  CHECK(rel < tol);
  // Greedy choices agree everywhere.
  for (std::size_t t = 0; t < T; ++t) {
    std::size_t a = 0, b = 0;
    for (std::size_t v = 1; v < V; ++v) {
      if (logits[t * V + v] > logits[t * V + a]) a = v;
      if (ref[t * V + v] > ref[t * V + b]) b = v;
    }
    CHECK(a == b);
  }
  return std::max(worst, rel);
}

}  // namespace

TEST_CASE("reference: Grok-1 tiny (int8) matches the float64 reference", "[model][reference]") {
  const Fixture f("grok1_tiny");
  const auto cfg = moe::grok1::Config::tiny();
  // The fixture was generated for exactly grok1::Config::tiny().
  REQUIRE(f.size("vocab_size") == cfg.vocab_size);
  REQUIRE(f.size("d_model") == cfg.d_model);
  REQUIRE(f.size("n_layers") == cfg.n_layers);
  REQUIRE(f.size("n_q_heads") == cfg.n_q_heads);
  REQUIRE(f.size("n_kv_heads") == cfg.n_kv_heads);
  REQUIRE(f.size("head_dim") == cfg.head_dim);
  REQUIRE(f.size("n_experts") == cfg.n_experts);
  REQUIRE(f.size("top_k") == cfg.top_k);
  REQUIRE(f.size("d_ff") == cfg.d_ff);
  REQUIRE(f.real("embedding_multiplier") == cfg.embedding_multiplier);
  REQUIRE(f.real("output_multiplier") == cfg.output_multiplier);
  REQUIRE(f.real("attn_logit_multiplier") == cfg.attn_logit_multiplier);
  REQUIRE(f.real("attn_softcap") == cfg.attn_softcap);
  REQUIRE(f.real("rope_base") == cfg.rope_base);

  moe::grok1::Weights w;
  w.embedding = {f.data<float>("embedding"), cfg.vocab_size, cfg.d_model};
  w.final_norm = vec(f, "final_norm");
  for (std::size_t l = 0; l < cfg.n_layers; ++l) {
    const std::string p = "layer" + std::to_string(l) + ".";
    moe::grok1::LayerWeights lw;
    lw.wq = int8(f, p + "wq");
    lw.wk = int8(f, p + "wk");
    lw.wv = int8(f, p + "wv");
    lw.wo = int8(f, p + "wo");
    REQUIRE(lw.wo.blocks == 8);
    lw.norm_pre_attn = vec(f, p + "norm0");
    lw.norm_post_attn = vec(f, p + "norm1");
    lw.norm_pre_moe = vec(f, p + "norm2");
    lw.norm_post_moe = vec(f, p + "norm3");
    lw.router = {f.data<float>(p + "router"), cfg.d_model, cfg.n_experts, moe::Layout::kInOut};
    lw.expert_gate = {int8(f, p + "gate"), cfg.n_experts};
    lw.expert_up = {int8(f, p + "up"), cfg.n_experts};
    lw.expert_down = {int8(f, p + "down"), cfg.n_experts};
    REQUIRE(lw.expert_down.first.blocks == 8);
    w.layers.push_back(lw);
  }
  const auto model = moe::grok1::make_model(cfg, w);
  const double worst = compare(f, model, 2e-5);
  WARN("grok1_tiny: worst relative error vs float64 " << worst);
}

TEST_CASE("reference: a Mixtral-style model (bf16, pre-norm) matches the float64 reference",
          "[model][reference]") {
  const Fixture f("mixtral_tiny");
  REQUIRE(f.config("rope_layout") == "interleaved");
  REQUIRE_FALSE(f.flag("sandwich"));
  REQUIRE_FALSE(f.flag("tied"));
  REQUIRE(f.config("activation") == "silu");
  REQUIRE(f.flag("renormalize"));
  const std::size_t V = f.size("vocab_size"), D = f.size("d_model"), E = f.size("n_experts"),
                    F = f.size("d_ff"), L = f.size("n_layers");
  moe::AttentionConfig ac;
  ac.d_model = D;
  ac.n_q_heads = f.size("n_q_heads");
  ac.n_kv_heads = f.size("n_kv_heads");
  ac.head_dim = f.size("head_dim");
  ac.rope_base = f.real("rope_base");
  ac.rope_layout = moe::RopeLayout::kInterleaved;
  ac.logit_multiplier = 0.0;  // 1 / sqrt(head_dim)
  ac.softcap = 0.0;
  REQUIRE(f.real("attn_logit_multiplier") == Approx(ac.multiplier()).epsilon(1e-15));

  using W = moe::BF16Weight;
  using Moe = moe::presets::Mixtral<W>;
  using Block = moe::TransformerBlock<moe::RotaryAttention<W>, Moe>;
  auto bf = [&](const std::string& name, std::size_t in, std::size_t out) {
    return W{f.data<moe::bf16>(name), in, out, moe::Layout::kOutIn};  // stored [out, in]
  };
  std::vector<Block> blocks;
  for (std::size_t l = 0; l < L; ++l) {
    const std::string p = "layer" + std::to_string(l) + ".";
    moe::AttentionWeights<W> aw{bf(p + "wq", D, ac.q_dim()), bf(p + "wk", D, ac.kv_dim()),
                                bf(p + "wv", D, ac.kv_dim()), bf(p + "wo", ac.q_dim(), D)};
    Moe moe_layer(moe::F32Weight{f.data<float>(p + "router"), D, E, moe::Layout::kOutIn},
                  moe::WeightStack<W>{bf(p + "gate", D, F), E},
                  moe::WeightStack<W>{bf(p + "up", D, F), E},
                  moe::WeightStack<W>{bf(p + "down", F, D), E});
    blocks.emplace_back(moe::RotaryAttention<W>(ac, aw), std::move(moe_layer),
                        moe::BlockNorms{vec(f, p + "norm0"), {}, vec(f, p + "norm2"), {}},
                        moe::BlockConfig{moe::NormPlacement::kPre, f.real("rms_eps")});
  }
  moe::DecoderConfig dc;
  dc.vocab_size = V;
  dc.d_model = D;
  dc.rms_eps = f.real("rms_eps");
  const moe::Decoder<Block, W> model(dc, {f.data<float>("embedding"), V, D}, std::move(blocks),
                                     vec(f, "final_norm"), bf("head", D, V));
  const double worst = compare(f, model, 2e-5);
  WARN("mixtral_tiny: worst relative error vs float64 " << worst);
}

TEST_CASE("reference: a GLaM-shaped model (MoE every other block) matches the float64 reference",
          "[model][reference]") {
  const Fixture f("glam_tiny");
  REQUIRE(f.config("moe_layers") == "0,2");
  REQUIRE(f.config("capacity") == "cf=2.0,min_capacity=0,multiply_by_k=False");
  REQUIRE(f.flag("renormalize"));
  REQUIRE_FALSE(f.flag("tied"));
  const std::size_t V = f.size("vocab_size"), D = f.size("d_model"), E = f.size("n_experts"),
                    F = f.size("d_ff"), FD = f.size("dense_d_ff"), L = f.size("n_layers");
  REQUIRE(E == 64);
  moe::AttentionConfig ac;
  ac.d_model = D;
  ac.n_q_heads = f.size("n_q_heads");
  ac.n_kv_heads = f.size("n_kv_heads");
  ac.head_dim = f.size("head_dim");
  ac.rope_base = f.real("rope_base");
  REQUIRE(f.real("attn_logit_multiplier") == Approx(ac.multiplier()).epsilon(1e-15));

  // presets::GLaM (GShard's top-2, capacity 2T/E, no random second expert), bf16 [in, out]
  // experts; the dense blocks are gated-GELU FFNs.
  using Moe = moe::presets::GLaM<moe::BF16Weight>;
  using Dense = moe::GatedFfn<moe::F32Weight, moe::Activation::kGeluTanh>;
  using Block =
      moe::TransformerBlock<moe::RotaryAttention<moe::F32Weight>, moe::DenseOrMoE<Moe, Dense>>;
  auto w32 = [&](const std::string& name, std::size_t in, std::size_t out) {
    return moe::F32Weight{f.data<float>(name), in, out};
  };
  auto stack = [&](const std::string& name, std::size_t in, std::size_t out) {
    return moe::WeightStack<moe::BF16Weight>{{f.data<moe::bf16>(name), in, out}, E};
  };
  std::vector<Block> blocks;
  for (std::size_t l = 0; l < L; ++l) {
    const std::string p = "layer" + std::to_string(l) + ".";
    moe::RotaryAttention<moe::F32Weight> attn(
        ac, {w32(p + "wq", D, ac.q_dim()), w32(p + "wk", D, ac.kv_dim()),
             w32(p + "wv", D, ac.kv_dim()), w32(p + "wo", ac.q_dim(), D)});
    const moe::BlockNorms norms{vec(f, p + "norm0"), {}, vec(f, p + "norm2"), {}};
    const moe::BlockConfig bc{moe::NormPlacement::kPre, f.real("rms_eps")};
    if (l % 2 == 0) {
      Moe layer(typename Moe::router_type(w32(p + "router", D, E)),
                typename Moe::expert_type(stack(p + "gate", D, F), stack(p + "up", D, F),
                                          stack(p + "down", F, D)));
      blocks.emplace_back(std::move(attn), std::move(layer), norms, bc);
    } else {
      blocks.emplace_back(std::move(attn),
                          Dense(w32(p + "dense_gate", D, FD), w32(p + "dense_up", D, FD),
                                w32(p + "dense_down", FD, D)),
                          norms, bc);
    }
    CHECK(blocks.back().ffn().is_moe() == (l % 2 == 0));
  }
  moe::DecoderConfig dc;
  dc.vocab_size = V;
  dc.d_model = D;
  dc.rms_eps = f.real("rms_eps");
  const moe::Decoder<Block> model(dc, {f.data<float>("embedding"), V, D}, std::move(blocks),
                                  vec(f, "final_norm"), w32("head", D, V));
  // One call: the capacity is a function of the tokens per call.
  std::vector<std::optional<moe::MoEResult>> results(L);
  const double worst = compare(f, model, 2e-5, true, std::span(results));
  WARN("glam_tiny: worst relative error vs float64 " << worst);
  const std::int32_t* dropped = f.data<std::int32_t>("dropped");
  const std::size_t T = f.shape("tokens")[0];
  for (std::size_t l = 0; l < L; ++l) {
    INFO("layer " << l);
    REQUIRE(results[l].has_value() == (l % 2 == 0));
    if (results[l]) {
      CHECK(results[l]->stats.n_experts == E);
      CHECK(results[l]->stats.tokens == T);
      CHECK(results[l]->stats.capacity == (2 * T + E - 1) / E);
      CHECK(results[l]->stats.dropped == static_cast<std::size_t>(dropped[l]));
      CHECK(dropped[l] > 0);
    }
  }
}
