// A Mixtral-style decoder with a dense first block (as DeepSeek-MoE and Qwen-MoE configure their
// first layers) whose experts are stored the way a Hugging Face checkpoint stores them: one tensor
// per expert projection (`model.layers.L.block_sparse_moe.experts.E.w1.weight`, [out, in]), each
// in its own buffer. The decoder is built from views into those buffers without copying a weight
// (every view it holds is checked to point into them), and its forward pass is compared with
// - the float64 reference of tools/decoder_reference.py (fixture mixtral_dense_first: every
//   layer's residual stream and the logits), and
// - the same weights stacked in one [E, out, in] buffer per projection (the fixture's own
//   tensors, Grok-1's storage): bit-identical residual streams and logits.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <moe/core/buffer.hpp>
#include <moe/layers/decoder.hpp>
#include <moe/layers/presets.hpp>
#include <moe/layers/transformer_block.hpp>

#include "common/test_util.hpp"
#include "model/fixture.hpp"
#include "model/model_util.hpp"

namespace {

using moe_test::Fixture;
using W = moe::BF16Weight;
using Moe = moe::presets::Mixtral<W>;
using Dense = moe::GatedFfn<W, moe::Activation::kSilu>;
using Block = moe::TransformerBlock<moe::RotaryAttention<W>, moe::DenseOrMoE<Moe, Dense>>;
using Model = moe::Decoder<Block, W>;

/// The checkpoint: every bf16 tensor of the fixture in its own buffer, under its Hugging Face
/// name; the stacked expert tensors [E, out, in] become E tensors [out, in].
struct SeparateCheckpoint {
  std::map<std::string, moe::Buffer<moe::bf16>> tensors;

  void add(const std::string& name, const moe::bf16* src, std::size_t n) {
    moe::Buffer<moe::bf16> b(n);
    std::copy(src, src + n, b.data());
    tensors.emplace(name, std::move(b));
  }
  /// A weight view of tensor `name` (stored [out, in]), pointing into its buffer.
  [[nodiscard]] W view(const std::string& name, std::size_t in, std::size_t out) const {
    const auto& b = tensors.at(name);
    REQUIRE(b.size() == in * out);
    return W{b.data(), in, out, moe::Layout::kOutIn};
  }
  [[nodiscard]] const moe::bf16* data(const std::string& name) const {
    return tensors.at(name).data();
  }
};

std::string hf(std::size_t l, const std::string& rest) {
  return "model.layers." + std::to_string(l) + "." + rest;
}
std::string hf_expert(std::size_t l, std::size_t e, const char* w) {
  return hf(l, "block_sparse_moe.experts." + std::to_string(e) + "." + w + ".weight");
}

/// Fixture projection names and their Hugging Face names (Mixtral: w1 gate, w3 up, w2 down).
struct Proj {
  const char* fixture;
  const char* hf;
};
constexpr Proj kAttn[] = {{"wq", "self_attn.q_proj.weight"},
                          {"wk", "self_attn.k_proj.weight"},
                          {"wv", "self_attn.v_proj.weight"},
                          {"wo", "self_attn.o_proj.weight"}};
constexpr Proj kDense[] = {{"dense_gate", "mlp.gate_proj.weight"},
                           {"dense_up", "mlp.up_proj.weight"},
                           {"dense_down", "mlp.down_proj.weight"}};
constexpr Proj kExperts[] = {{"gate", "w1"}, {"up", "w3"}, {"down", "w2"}};

std::size_t elements(const Fixture& f, const std::string& name) {
  std::size_t n = 1;
  for (std::size_t s : f.shape(name)) n *= s;
  return n;
}

struct Shapes {
  std::size_t V, D, E, F, FD, L;
  moe::AttentionConfig attn;
  std::vector<bool> is_moe;
};

Shapes shapes(const Fixture& f) {
  Shapes s{f.size("vocab_size"),
           f.size("d_model"),
           f.size("n_experts"),
           f.size("d_ff"),
           f.size("dense_d_ff"),
           f.size("n_layers"),
           {},
           {}};
  s.attn.d_model = s.D;
  s.attn.n_q_heads = f.size("n_q_heads");
  s.attn.n_kv_heads = f.size("n_kv_heads");
  s.attn.head_dim = f.size("head_dim");
  s.attn.rope_base = f.real("rope_base");
  s.attn.rope_layout = moe::RopeLayout::kInterleaved;
  s.attn.logit_multiplier = 0.0;  // 1 / sqrt(head_dim)
  s.attn.softcap = 0.0;
  s.is_moe.assign(s.L, false);
  for (std::size_t l = 1; l < s.L; ++l) s.is_moe[l] = true;  // "moe_layers 1,2"
  return s;
}

/// (in, out) of a projection.
std::pair<std::size_t, std::size_t> dims(const Shapes& s, const std::string& p) {
  const std::size_t q = s.attn.q_dim(), kv = s.attn.kv_dim();
  if (p == "wq") return {s.D, q};
  if (p == "wk" || p == "wv") return {s.D, kv};
  if (p == "wo") return {q, s.D};
  if (p == "dense_gate" || p == "dense_up") return {s.D, s.FD};
  if (p == "dense_down") return {s.FD, s.D};
  if (p == "gate" || p == "up") return {s.D, s.F};
  return {s.F, s.D};  // down
}

SeparateCheckpoint read_separately(const Fixture& f, const Shapes& s) {
  SeparateCheckpoint c;
  c.add("lm_head.weight", f.data<moe::bf16>("head"), elements(f, "head"));
  for (std::size_t l = 0; l < s.L; ++l) {
    const std::string p = "layer" + std::to_string(l) + ".";
    for (const Proj& a : kAttn)
      c.add(hf(l, a.hf), f.data<moe::bf16>(p + a.fixture), elements(f, p + a.fixture));
    if (!s.is_moe[l]) {
      for (const Proj& d : kDense) {
        c.add(hf(l, d.hf), f.data<moe::bf16>(p + d.fixture), elements(f, p + d.fixture));
      }
      continue;
    }
    for (const Proj& x : kExperts) {
      const auto [in, out] = dims(s, x.fixture);
      REQUIRE(elements(f, p + x.fixture) == s.E * in * out);
      for (std::size_t e = 0; e < s.E; ++e) {
        c.add(hf_expert(l, e, x.hf), f.data<moe::bf16>(p + x.fixture) + e * in * out, in * out);
      }
    }
  }
  return c;
}

/// One view per expert and projection, per layer; must outlive the decoder (WeightStack::of).
struct ExpertViews {
  std::vector<W> gate, up, down;
};

Model build(const Fixture& f, const Shapes& s, const SeparateCheckpoint* separate,
            std::vector<ExpertViews>& views) {
  auto vec = [&](const std::string& name) {
    return std::span<const float>(f.data<float>(name), f.shape(name)[0]);
  };
  // A projection of layer l: from the separate checkpoint, or from the fixture.
  auto w = [&](std::size_t l, const Proj& p) {
    const auto [in, out] = dims(s, p.fixture);
    if (separate != nullptr) return separate->view(hf(l, p.hf), in, out);
    return W{f.data<moe::bf16>("layer" + std::to_string(l) + "." + p.fixture), in, out,
             moe::Layout::kOutIn};
  };
  views.assign(s.L, {});
  std::vector<Block> blocks;
  for (std::size_t l = 0; l < s.L; ++l) {
    const std::string p = "layer" + std::to_string(l) + ".";
    moe::RotaryAttention<W> attn(s.attn,
                                 {w(l, kAttn[0]), w(l, kAttn[1]), w(l, kAttn[2]), w(l, kAttn[3])});
    const moe::BlockNorms norms{vec(p + "norm0"), {}, vec(p + "norm2"), {}};
    const moe::BlockConfig bc{moe::NormPlacement::kPre, f.real("rms_eps")};
    if (!s.is_moe[l]) {
      blocks.emplace_back(std::move(attn), Dense(w(l, kDense[0]), w(l, kDense[1]), w(l, kDense[2])),
                          norms, bc);
      continue;
    }
    Moe::Weights mw;
    mw.router = moe::F32Weight{f.data<float>(p + "router"), s.D, s.E, moe::Layout::kOutIn};
    if (separate != nullptr) {
      ExpertViews& v = views[l];
      for (std::size_t e = 0; e < s.E; ++e) {
        v.gate.push_back(separate->view(hf_expert(l, e, "w1"), s.D, s.F));
        v.up.push_back(separate->view(hf_expert(l, e, "w3"), s.D, s.F));
        v.down.push_back(separate->view(hf_expert(l, e, "w2"), s.F, s.D));
      }
      mw.gate = moe::WeightStack<W>::of(v.gate);
      mw.up = moe::WeightStack<W>::of(v.up);
      mw.down = moe::WeightStack<W>::of(v.down);
    } else {
      mw.gate = {w(l, kExperts[0]), s.E};
      mw.up = {w(l, kExperts[1]), s.E};
      mw.down = {w(l, kExperts[2]), s.E};
    }
    blocks.emplace_back(std::move(attn), Moe(mw), norms, bc);
  }
  moe::DecoderConfig dc;
  dc.vocab_size = s.V;
  dc.d_model = s.D;
  dc.rms_eps = f.real("rms_eps");
  const W head = separate != nullptr ? separate->view("lm_head.weight", s.D, s.V)
                                     : W{f.data<moe::bf16>("head"), s.D, s.V, moe::Layout::kOutIn};
  return Model(dc, {f.data<float>("embedding"), s.V, s.D}, std::move(blocks), vec("final_norm"),
               head);
}

struct Outputs {
  std::vector<std::vector<float>> hidden;  // per layer, [T, D]
  std::vector<float> logits;               // [T, V]
};

/// The tokens in two calls (the second reads the KV cache), every layer's residual stream kept.
Outputs run(const Model& model, std::span<const std::int32_t> tokens) {
  moe::ThreadPool pool(2);
  const std::size_t T = tokens.size(), D = model.dim(), V = model.vocab_size();
  Outputs o{std::vector<std::vector<float>>(model.n_layers(), std::vector<float>(T * D)),
            std::vector<float>(T * V)};
  auto state = model.make_state(T, T);
  std::size_t t0 = 0;
  moe::DecoderOptions opts;
  opts.on_layer = [&](std::size_t l, moe::MatrixView<const float> h) {
    for (std::size_t r = 0; r < h.rows; ++r) {
      std::copy(h.row(r), h.row(r) + D, o.hidden[l].data() + (t0 + r) * D);
    }
  };
  for (std::size_t n : {T / 2 + 1, T - T / 2 - 1}) {
    model.forward(pool, tokens.subspan(t0, n), state,
                  moe::MatrixView<float>(o.logits.data() + t0 * V, n, V), opts);
    t0 += n;
  }
  return o;
}

/// max |a - ref| / max |ref|.
double rel_error(const std::vector<float>& a, const double* ref) {
  const auto d = moe_test::diff(a.data(), ref, a.size());
  return d.max_abs / moe_test::max_abs(ref, a.size());
}

}  // namespace

TEST_CASE(
    "separate experts: a dense-first Mixtral-style decoder over one tensor per expert, "
    "built without copying, matches float64 and the stacked weights",
    "[model][reference][separate]") {
  const Fixture f("mixtral_dense_first");
  REQUIRE(f.config("moe_layers") == "1,2");
  REQUIRE(f.config("rope_layout") == "interleaved");
  REQUIRE(f.config("activation") == "silu");
  REQUIRE(f.config("dense_activation") == "silu");
  REQUIRE(f.flag("renormalize"));
  REQUIRE_FALSE(f.flag("sandwich"));
  REQUIRE_FALSE(f.flag("tied"));
  const Shapes s = shapes(f);
  REQUIRE(f.real("attn_logit_multiplier") == Approx(s.attn.multiplier()).epsilon(1e-15));

  const SeparateCheckpoint ckpt = read_separately(f, s);
  std::vector<ExpertViews> views, no_views;
  const Model separate = build(f, s, &ckpt, views);
  const Model stacked = build(f, s, nullptr, no_views);

  SECTION("no weight was copied: every view points into the checkpoint's buffers") {
    for (std::size_t l = 0; l < s.L; ++l) {
      INFO("layer " << l);
      const Block& b = separate.blocks()[l];
      const auto& aw = b.attention().weights();
      CHECK(aw.wq.data == ckpt.data(hf(l, "self_attn.q_proj.weight")));
      CHECK(aw.wk.data == ckpt.data(hf(l, "self_attn.k_proj.weight")));
      CHECK(aw.wv.data == ckpt.data(hf(l, "self_attn.v_proj.weight")));
      CHECK(aw.wo.data == ckpt.data(hf(l, "self_attn.o_proj.weight")));
      REQUIRE(b.ffn().is_moe() == s.is_moe[l]);
      if (const Dense* d = b.ffn().dense()) {
        CHECK(d->gate().data == ckpt.data(hf(l, "mlp.gate_proj.weight")));
        CHECK(d->up().data == ckpt.data(hf(l, "mlp.up_proj.weight")));
        CHECK(d->down().data == ckpt.data(hf(l, "mlp.down_proj.weight")));
        continue;
      }
      const auto& ex = b.ffn().moe()->experts();
      REQUIRE(ex.gate().separate());
      REQUIRE(ex.up().separate());
      REQUIRE(ex.down().separate());
      REQUIRE(ex.n_experts() == s.E);
      for (std::size_t e = 0; e < s.E; ++e) {
        INFO("expert " << e);
        CHECK(ex.gate()[e].data == ckpt.data(hf_expert(l, e, "w1")));
        CHECK(ex.up()[e].data == ckpt.data(hf_expert(l, e, "w3")));
        CHECK(ex.down()[e].data == ckpt.data(hf_expert(l, e, "w2")));
        CHECK(ex[e].gate().data == ckpt.data(hf_expert(l, e, "w1")));
      }
      // The stacked model's experts are offsets into one fixture tensor instead.
      const auto& sx = stacked.blocks()[l].ffn().moe()->experts();
      CHECK_FALSE(sx.gate().separate());
      CHECK(sx.gate()[s.E - 1].data ==
            f.data<moe::bf16>("layer" + std::to_string(l) + ".gate") + (s.E - 1) * s.D * s.F);
    }
  }

  SECTION("forward: float64 reference, and bit-identical to the stacked weights") {
    const std::span<const std::int32_t> tokens(f.data<std::int32_t>("tokens"),
                                               f.shape("tokens")[0]);
    const Outputs a = run(separate, tokens);
    const Outputs b = run(stacked, tokens);
    double worst = 0;
    for (std::size_t l = 0; l < s.L; ++l) {
      INFO("layer " << l);
      const double rel = rel_error(a.hidden[l], f.data<double>("hidden." + std::to_string(l)));
      CHECK(rel < 2e-5);
      worst = std::max(worst, rel);
      CHECK(std::memcmp(a.hidden[l].data(), b.hidden[l].data(),
                        a.hidden[l].size() * sizeof(float)) == 0);
    }
    const double rel = rel_error(a.logits, f.data<double>("logits"));
    CHECK(rel < 2e-5);
    CHECK(std::memcmp(a.logits.data(), b.logits.data(), a.logits.size() * sizeof(float)) == 0);
    WARN("mixtral_dense_first (separate experts): worst relative error vs float64 "
         << std::max(worst, rel));
  }
}
