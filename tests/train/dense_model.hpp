// A C++ decoder of dense blocks built over the parameters of a ref::Params (f32 copies), with a
// gradient buffer per named slice and the Decoder::Grads views over them.
#pragma once

#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <moe/layers/decoder.hpp>
#include <moe/layers/expert.hpp>

#include "train/decoder_ref.hpp"

namespace moe_test {

template <moe::Activation A>
struct DenseModel {
  using Ffn = moe::GatedFfn<moe::F32Weight, A>;
  using Block = moe::TransformerBlock<moe::RotaryAttention<moe::F32Weight>, Ffn>;
  using Model = moe::Decoder<Block>;

  ref::DecoderSpec spec;
  std::map<std::string, std::vector<float>> w;  ///< f32 parameters by slice name
  std::map<std::string, std::vector<float>> g;  ///< gradients by slice name (same sizes)
  std::optional<Model> model;
  typename Model::Grads grads;

  DenseModel(const ref::DecoderSpec& s, const ref::Params& p) : spec(s) {
    for (const auto& name : p.order) {
      w[name] = p.f32(name);
      g[name] = std::vector<float>(w[name].size(), 0.0f);
    }
    const std::size_t d = s.attention.d_model, f = s.d_ff, qd = s.attention.q_dim(),
                      kvd = s.attention.kv_dim();
    const auto wt = [&](const std::string& n, std::size_t in, std::size_t out) {
      return moe::F32Weight{w.at(n).data(), in, out, s.layout};
    };
    const auto gr = [&](const std::string& n, std::size_t in, std::size_t out) {
      return moe::WeightGrad{g.at(n).data(), in, out, s.layout};
    };
    const auto span = [&](std::map<std::string, std::vector<float>>& m, const std::string& n) {
      return m.count(n) ? std::span<float>(m.at(n)) : std::span<float>();
    };
    std::vector<Block> blocks;
    for (std::size_t l = 0; l < s.n_layers; ++l) {
      const auto n = [&](const char* what) { return ref::lname(l, what); };
      moe::RotaryAttention<moe::F32Weight> attn(
          s.attention,
          {wt(n("wq"), d, qd), wt(n("wk"), d, kvd), wt(n("wv"), d, kvd), wt(n("wo"), qd, d)});
      Ffn ffn(wt(n("gate"), d, f), wt(n("up"), d, f), wt(n("down"), f, d));
      moe::BlockNorms norms{w.at(n("pre_attn")), span(w, n("post_attn")), w.at(n("pre_ffn")),
                            span(w, n("post_ffn"))};
      blocks.emplace_back(
          std::move(attn), std::move(ffn), norms,
          moe::BlockConfig{s.sandwich ? moe::NormPlacement::kSandwich : moe::NormPlacement::kPre,
                           s.eps});
      typename Block::Grads bg;
      bg.attention = {gr(n("wq"), d, qd), gr(n("wk"), d, kvd), gr(n("wv"), d, kvd),
                      gr(n("wo"), qd, d)};
      bg.ffn = {gr(n("gate"), d, f), gr(n("up"), d, f), gr(n("down"), f, d)};
      bg.pre_attn = g.at(n("pre_attn"));
      bg.pre_ffn = g.at(n("pre_ffn"));
      bg.post_attn = span(g, n("post_attn"));
      bg.post_ffn = span(g, n("post_ffn"));
      grads.blocks.push_back(bg);
    }
    moe::DecoderConfig dc;
    dc.vocab_size = s.vocab;
    dc.d_model = d;
    dc.rms_eps = s.eps;
    dc.embedding_multiplier = s.emb_mult;
    dc.output_multiplier = s.out_mult;
    std::optional<moe::F32Weight> head;
    if (!s.tied) {
      head = wt("head", d, s.vocab);
      grads.head = gr("head", d, s.vocab);
    }
    model.emplace(dc, moe::EmbeddingTable(w.at("embedding").data(), s.vocab, d), std::move(blocks),
                  w.at("final_norm"), head);
    grads.embedding = g.at("embedding");
    grads.final_norm = g.at("final_norm");
  }
  DenseModel(const DenseModel&) = delete;
  DenseModel& operator=(const DenseModel&) = delete;

  void zero_grads() {
    for (auto& [name, v] : g) std::fill(v.begin(), v.end(), 0.0f);
  }
};

}  // namespace moe_test
