// moe/models/grok1.hpp: the Grok-1 model, composed from the generic components.
//
// The weights are grok1::WeightsT<W> (grok1_tensors.hpp: views in the checkpoint's own layout,
// and the table naming every tensor); W is the projection/expert weight type, so the same model
// runs with the checkpoint's int8 weights or with f32 / bf16 ones (tests). Nothing Grok-specific
// is coded twice:
//
//   grok1::ModelOf<W> = Decoder<TransformerBlock<RotaryAttention<W>, presets::Grok1Of<W>>>
//   auto model = grok1::make_model(config, weights);       // validates, builds views only
//   auto state = model.make_state(/*capacity*/ 1024, /*max_tokens*/ 128);
//   model.forward(pool, tokens, state, logits);
//   auto approx = grok1::int8_activations(weights);    // opt-in: int8 activations (approximate)
//
// attention_config / block_config / decoder_config translate grok1::Config into the components'
// configurations (sandwich norms, soft-cap 30, multipliers, half-split RoPE, tied head).
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include <moe/core/error.hpp>
#include <moe/layers/attention.hpp>
#include <moe/layers/decoder.hpp>
#include <moe/layers/policies.hpp>
#include <moe/layers/presets.hpp>
#include <moe/layers/transformer_block.hpp>
#include <moe/models/grok1_config.hpp>
#include <moe/models/grok1_tensors.hpp>
#include <moe/ops/weights.hpp>

namespace moe::grok1 {

// ---- the model ---------------------------------------------------------------------------------
//
// The aliases and make_model() live in plain moe::grok1 (a second `grok1` namespace inside the
// SIMD namespace would make `moe::grok1::` ambiguous). They are still per-ISA: an alias is not a
// symbol, and make_model's mangled name contains its return type, a SIMD-namespace Decoder.

/// Grok-1's MoE layer over expert weights W (router f32, softmax, top-k raw gates, GELU-tanh).
template <class W>
using MoEOf = presets::Grok1Of<W>;
/// One Grok-1 decoder layer.
template <class W>
using BlockOf = TransformerBlock<RotaryAttention<W>, MoEOf<W>>;
/// The whole model (tied head).
template <class W>
using ModelOf = Decoder<BlockOf<W>>;
/// The released checkpoint's model type.
using Model = ModelOf<Int8Weight>;

/// Attention of `c`: GQA, half-split RoPE over all head dims, logits * attn_logit_multiplier then
/// attn_softcap * tanh(x / attn_softcap).
inline AttentionConfig attention_config(const Config& c) {
  AttentionConfig a;
  a.d_model = c.d_model;
  a.n_q_heads = c.n_q_heads;
  a.n_kv_heads = c.n_kv_heads;
  a.head_dim = c.head_dim;
  a.rope_base = c.rope_base;
  a.rope_layout = RopeLayout::kHalfSplit;
  a.rotary_dims = 0;
  a.logit_multiplier = c.attn_logit_multiplier;
  a.softcap = c.attn_softcap;
  return a;
}

/// Sandwich norms (4 RMSNorms per layer), eps from `c`.
inline BlockConfig block_config(const Config& c) {
  return BlockConfig{NormPlacement::kSandwich, c.rms_eps};
}

/// Vocabulary, width, embedding and output multipliers, final-norm eps.
inline DecoderConfig decoder_config(const Config& c) {
  DecoderConfig d;
  d.vocab_size = c.vocab_size;
  d.d_model = c.d_model;
  d.embedding_multiplier = c.embedding_multiplier;
  d.output_multiplier = c.output_multiplier;
  d.rms_eps = c.rms_eps;
  return d;
}

/// The routing of `c`: softmax over all experts, top_k, gates NOT renormalised.
inline Routing routing(const Config& c) {
  Routing r;
  r.top_k = c.top_k;
  r.score = ScoreFn::kSoftmax;
  r.renormalize = false;
  return r;
}

/// Builds the model over `weights` (views: the weights must outlive the model). Validates the
/// config and every tensor shape first (ConfigError / ShapeError naming the checkpoint tensor).
template <class W>
ModelOf<W> make_model(const Config& config, const WeightsT<W>& weights) {
  weights.validate(config);
  using Moe = MoEOf<W>;
  using RouterT = typename Moe::router_type;
  using ExpertT = typename Moe::expert_type;
  std::vector<BlockOf<W>> blocks;
  blocks.reserve(weights.layers.size());
  for (const LayerWeightsT<W>& l : weights.layers) {
    RotaryAttention<W> attention(attention_config(config),
                                 AttentionWeights<W>{l.wq, l.wk, l.wv, l.wo});
    Moe moe(RouterT(l.router, routing(config)), ExpertT(l.expert_gate, l.expert_up, l.expert_down));
    blocks.emplace_back(
        std::move(attention), std::move(moe),
        BlockNorms{l.norm_pre_attn, l.norm_post_attn, l.norm_pre_moe, l.norm_post_moe},
        block_config(config));
  }
  return ModelOf<W>(decoder_config(config), weights.embedding, std::move(blocks),
                    weights.final_norm);
}

/// The same weights as int8-activation views (Int8ActWeight, ops/weights.hpp: activations
/// quantised per token and block, VNNI products; approximate, opt-in): the attention projections
/// and the experts. The router, norms and the embedding / tied head stay as they are (f32,
/// exact). Views only: `weights` must outlive the result. Throws ConfigError unless W is an int8
/// weight type and every expert stack is one stacked tensor (as the release stores them).
template <class W>
WeightsT<Int8ActWeight> int8_activations(const WeightsT<W>& weights) {
  if constexpr (!is_int8_weight_v<W>) {
    throw ConfigError(
        "[grok1] int8 activations need int8 weights; the projections and experts are " +
        (weights.layers.empty() ? std::string("not int8")
                                : weight_type_name(weights.layers[0].wq)));
  } else {
    auto matrix = [](const W& w) { return Int8ActWeight(w); };
    auto stack = [](const WeightStack<W>& s) {
      check_config(s.views == nullptr, "grok1",
                   "int8 activations need each expert stack stored as one tensor (this one is " +
                       std::to_string(s.count) + " separate views)");
      return WeightStack<Int8ActWeight>{Int8ActWeight(s.first), s.count};
    };
    return map_weights<Int8ActWeight>(weights, matrix, stack);
  }
}

}  // namespace moe::grok1
