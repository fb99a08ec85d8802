// moe/models/hf_model.hpp: Hugging Face MoE decoders (Mixtral, Qwen2-MoE, OLMoE) composed from the
// generic components, over the views of hf_tensors.hpp.
//
//   moe::io::safetensors::Checkpoint ckpt("DIR");
//   const moe::hf::Config cfg = moe::hf::read_config("DIR");
//   auto w = moe::hf::bind_weights<moe::BF16Weight>(cfg, ckpt);   // views, validated
//   auto model = moe::hf::make_model<moe::BF16Weight>(cfg, w);     // Mixtral, OLMoE
//   auto model = moe::hf::make_model<moe::BF16Weight, moe::hf::SharedExpertOf<moe::BF16Weight>>(
//       cfg, w);                                                   // Qwen2-MoE (shared expert)
//
// Every family is the same decoder, Decoder<TransformerBlock<RotaryAttention<W>,
// DenseOrMoE<MoE, GatedFfn>>, W> with pre-norm blocks and an untied (or tied) [out, in] head:
//
//   attention   GQA, half-split RoPE (rotate_half) with rope_theta over all head dims, logits
//               scaled by 1/sqrt(head_dim), no soft-cap; Mixtral's sliding_window; Qwen2-MoE's
//               q/k/v biases; OLMoE's q/k RMSNorms (eps rms_norm_eps)
//   MoE layer   f32 routing over the W router [E, D]: softmax over all experts, top-k (ties to
//               the lower index), renormalised iff norm_topk_prob (always for Mixtral), dropless;
//               SiLU-gated experts, one [out, in] view per expert; Qwen2-MoE adds
//               sigmoid(x . shared_expert_gate) * shared_expert(x) (SharedExpertOf<W>)
//   dense layer Qwen2-MoE's layers off the sparse grid: one SiLU-gated MLP (GatedFfn)
//
// W is BF16Weight or F32Weight; the second parameter is the MoE layer's shared expert type
// (NoSharedExperts for Mixtral and OLMoE; a Qwen2-MoE config with
// shared_expert_intermediate_size 0 uses NoSharedExperts too). make_model() checks that the type
// fits the config (ConfigError naming the type to use otherwise).
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <moe/core/error.hpp>
#include <moe/layers/attention.hpp>
#include <moe/layers/decoder.hpp>
#include <moe/layers/expert.hpp>
#include <moe/layers/moe_layer.hpp>
#include <moe/layers/policies.hpp>
#include <moe/layers/router.hpp>
#include <moe/layers/transformer_block.hpp>
#include <moe/models/hf_config.hpp>
#include <moe/models/hf_tensors.hpp>
#include <moe/ops/activation.hpp>
#include <moe/ops/weights.hpp>

namespace moe::hf {

/// A dense layer's MLP (and the FFN inside the shared expert).
template <class W>
using DenseOf = GatedFfn<W, Activation::kSilu>;
/// Qwen2-MoE's shared expert: sigmoid(x . shared_expert_gate) * shared_expert(x).
template <class W>
using SharedExpertOf = SigmoidGatedFfn<W, Activation::kSilu>;
/// The sparse block: W router, softmax top-k (renormalisation a runtime value), dropless, SiLU
/// experts, no losses (inference).
template <class W, class Shared = NoSharedExperts>
using MoEOf =
    MoELayer<Router<W>, Expert<W, Activation::kSilu>, Dropless, NoBalanceLoss, NoZLoss, Shared>;
template <class W, class Shared = NoSharedExperts>
using BlockOf = TransformerBlock<RotaryAttention<W>, DenseOrMoE<MoEOf<W, Shared>, DenseOf<W>>>;
template <class W, class Shared = NoSharedExperts>
using ModelOf = Decoder<BlockOf<W, Shared>, W>;

/// The attention of `c` (see the file comment).
inline AttentionConfig attention_config(const Config& c) {
  AttentionConfig a;
  a.d_model = c.d_model;
  a.n_q_heads = c.n_q_heads;
  a.n_kv_heads = c.n_kv_heads;
  a.head_dim = c.head_dim;
  a.rope_base = c.rope_theta;
  a.rope_layout = RopeLayout::kHalfSplit;
  a.rotary_dims = 0;
  a.logit_multiplier = 0.0;  // 1/sqrt(head_dim)
  a.softcap = 0.0;
  a.sliding_window = c.sliding_window;
  a.qk_norm_eps = c.rms_norm_eps;
  return a;
}

/// Pre-norm blocks with rms_norm_eps.
inline BlockConfig block_config(const Config& c) {
  return BlockConfig{NormPlacement::kPre, c.rms_norm_eps};
}

inline DecoderConfig decoder_config(const Config& c) {
  DecoderConfig d;
  d.vocab_size = c.vocab_size;
  d.d_model = c.d_model;
  d.rms_eps = c.rms_norm_eps;
  return d;
}

/// Softmax over all experts, top_k, renormalised iff norm_topk_prob.
inline Routing routing(const Config& c) {
  Routing r;
  r.top_k = c.top_k;
  r.score = ScoreFn::kSoftmax;
  r.renormalize = c.norm_topk_prob;
  return r;
}

/// True when ModelOf<W, Shared> can hold the config's MoE layers.
template <class Shared>
constexpr bool shared_type_fits(const Config& c) noexcept {
  return std::is_same_v<Shared, NoSharedExperts> == (c.d_ff_shared == 0);
}

/// Builds the model over `w` (views: the weights must outlive the model). Validates the config,
/// every view's shape (ShapeError naming the checkpoint tensor) and the Shared type (ConfigError).
template <class W, class Shared = NoSharedExperts>
ModelOf<W, Shared> make_model(const Config& c, const WeightsT<W>& w) {
  if (!shared_type_fits<Shared>(c)) {
    throw ConfigError(c.d_ff_shared > 0 ? "[hf] the config has a shared expert: build ModelOf<W, "
                                          "SharedExpertOf<W>> (make_model<W, SharedExpertOf<W>>)"
                                        : "[hf] the config has no shared expert: build ModelOf<W> "
                                          "(make_model<W>)");
  }
  w.validate(c);
  using Moe = MoEOf<W, Shared>;
  using Ffn = DenseOrMoE<Moe, DenseOf<W>>;
  std::vector<BlockOf<W, Shared>> blocks;
  blocks.reserve(c.n_layers);
  typename Moe::Policies policies;
  policies.routing = routing(c);
  for (std::size_t l = 0; l < c.n_layers; ++l) {
    const LayerWeightsT<W>& lw = w.layers[l];
    AttentionWeights<W> aw{lw.wq, lw.wk, lw.wv, lw.wo};
    aw.bq = lw.bq;
    aw.bk = lw.bk;
    aw.bv = lw.bv;
    aw.q_norm = lw.q_norm;
    aw.k_norm = lw.k_norm;
    RotaryAttention<W> attention(attention_config(c), aw);
    const BlockNorms norms{lw.attn_norm, {}, lw.mlp_norm, {}};
    if (!c.sparse(l)) {
      blocks.emplace_back(std::move(attention),
                          Ffn(DenseOf<W>(lw.dense_gate, lw.dense_up, lw.dense_down)), norms,
                          block_config(c));
      continue;
    }
    const auto gate = WeightStack<W>::of(lw.expert_gate), up = WeightStack<W>::of(lw.expert_up),
               down = WeightStack<W>::of(lw.expert_down);
    if constexpr (std::is_same_v<Shared, NoSharedExperts>) {
      const Moe moe({.router = lw.router, .gate = gate, .up = up, .down = down}, policies);
      blocks.emplace_back(std::move(attention), Ffn(moe), norms, block_config(c));
    } else {
      const Moe moe({.router = lw.router,
                     .gate = gate,
                     .up = up,
                     .down = down,
                     .shared = Shared(DenseOf<W>(lw.shared_gate, lw.shared_up, lw.shared_down),
                                      lw.shared_expert_gate)},
                    policies);
      blocks.emplace_back(std::move(attention), Ffn(moe), norms, block_config(c));
    }
  }
  std::optional<W> head;
  if (!c.tie_word_embeddings) head = w.lm_head;
  return ModelOf<W, Shared>(decoder_config(c), w.embedding, std::move(blocks), w.final_norm,
                            std::move(head));
}

}  // namespace moe::hf
