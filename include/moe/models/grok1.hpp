// moe/models/grok1.hpp: Grok-1's weights as views, in the checkpoint's own layout.
//
// grok1::Weights is a plain struct of non-owning views (nothing is copied or repacked). The
// checkpoint loader binds memory-mapped tensors to it; tests and examples bind Buffers. Every
// field names the checkpoint tensor it holds and its shape (JAX [in, out] layout):
//
//   language_model/in_out_embed/embeddings            embedding   f32 [V, D] (row = token)
//   language_model/rms_norm/scale                     final_norm  f32 [D]
//   transformer/decoder_layer_N/...
//     multi_head_attention/query/w                    wq   [D, Hq*dh]      int8, scales [1, Hq*dh]
//     multi_head_attention/key/w                      wk   [D, Hkv*dh]     int8, scales [1, Hkv*dh]
//     multi_head_attention/value/w                    wv   [D, Hkv*dh]     int8, scales [1, Hkv*dh]
//     multi_head_attention/linear/w                   wo   [Hq*dh, D]      int8, scales [8, D]
//     rms_norm/scale, rms_norm_1/scale,               norm_pre_attn, norm_post_attn,
//     rms_norm_2/scale, rms_norm_3/scale              norm_pre_moe, norm_post_moe   f32 [D]
//     router/w                                        router  f32 [D, E]
//     moe/linear/w    (GELU branch, "w1")             expert_gate  [E, D, F]  scales [E, 1, F]
//     moe/linear_v/w  (linear branch, "w3")           expert_up    [E, D, F]  scales [E, 1, F]
//     moe/linear_1/w  (down projection, "w2")         expert_down  [E, F, D]  scales [E, 8, D]
//
// WeightsT<W> is templated on the projection/expert weight type so that the same model runs with
// f32 or bf16 weights (tests); grok1::Weights is the checkpoint's int8 instance. The scale block
// counts are not fixed by validate() (any divisor of `in` is accepted), only the shapes.
//
// The model is composed from the generic components, nothing Grok-specific is coded twice:
//
//   grok1::ModelOf<W> = Decoder<TransformerBlock<RotaryAttention<W>, presets::Grok1Of<W>>>
//   auto model = grok1::make_model(config, weights);       // validates, builds views only
//   auto state = model.make_state(/*capacity*/ 1024, /*max_tokens*/ 128);
//   model.forward(pool, tokens, state, logits);
//
// attention_config / block_config / decoder_config translate grok1::Config into the components'
// configurations (sandwich norms, soft-cap 30, multipliers, half-split RoPE, tied head);
// RandomWeights owns random int8 weights of any Config (examples, benchmarks, tests).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <moe/core/bf16.hpp>
#include <moe/core/buffer.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/layers/attention.hpp>
#include <moe/layers/decoder.hpp>
#include <moe/layers/policies.hpp>
#include <moe/layers/presets.hpp>
#include <moe/layers/transformer_block.hpp>
#include <moe/models/grok1_config.hpp>
#include <moe/ops/weights.hpp>

namespace moe::grok1 {

/// The weights of one decoder layer (views).
template <class W>
struct LayerWeightsT {
  static_assert(is_weight_v<W>, "LayerWeightsT<W>: W must be F32Weight, BF16Weight or Int8Weight");
  using weight_type = W;

  W wq{};                                 ///< multi_head_attention/query   [D, Hq*dh]
  W wk{};                                 ///< multi_head_attention/key     [D, Hkv*dh]
  W wv{};                                 ///< multi_head_attention/value   [D, Hkv*dh]
  W wo{};                                 ///< multi_head_attention/linear  [Hq*dh, D]
  std::span<const float> norm_pre_attn;   ///< rms_norm/scale    [D]
  std::span<const float> norm_post_attn;  ///< rms_norm_1/scale  [D]
  std::span<const float> norm_pre_moe;    ///< rms_norm_2/scale  [D]
  std::span<const float> norm_post_moe;   ///< rms_norm_3/scale  [D]
  F32Weight router{};                     ///< router/w [D, E], f32, [in, out]
  WeightStack<W> expert_gate{};           ///< moe/linear/w    [E, D, F]
  WeightStack<W> expert_up{};             ///< moe/linear_v/w  [E, D, F]
  WeightStack<W> expert_down{};           ///< moe/linear_1/w  [E, F, D]
};

/// All weights of the model (views). `layers[N]` is transformer/decoder_layer_N.
template <class W>
struct WeightsT {
  using weight_type = W;
  using layer_type = LayerWeightsT<W>;

  MatrixView<const float> embedding;  ///< language_model/in_out_embed/embeddings [V, D]
  std::span<const float> final_norm;  ///< language_model/rms_norm/scale [D]
  std::vector<LayerWeightsT<W>> layers;

  /// Throws ShapeError naming the checkpoint tensor and both shapes when any view disagrees with
  /// `config` (or is missing).
  void validate(const Config& config) const;
};

/// The checkpoint's types: int8 projections and experts with bf16 scales.
using LayerWeights = LayerWeightsT<Int8Weight>;
using Weights = WeightsT<Int8Weight>;

/// Checkpoint name of a layer tensor, e.g. layer_tensor_name(3, "multi_head_attention/query/w").
inline std::string layer_tensor_name(std::size_t layer, const char* leaf) {
  return "transformer/decoder_layer_" + std::to_string(layer) + "/" + leaf;
}

namespace detail {

inline void check_vector(std::span<const float> v, const std::string& name, std::size_t n) {
  if (v.data() == nullptr) throw ShapeError("[grok1] tensor '" + name + "' is missing");
  check_shape("grok1", name, {v.size()}, {n});
}

template <class W>
void check_matrix(const W& w, const std::string& name, std::size_t in, std::size_t out) {
  check_weight_shape(w, "grok1", name, in, out);
}

template <class W>
void check_stack(const WeightStack<W>& s, const std::string& name, std::size_t e, std::size_t in,
                 std::size_t out) {
  validate_weight(s.first, "grok1", name);
  check_shape("grok1", name, {s.count, s.in(), s.out()}, {e, in, out});
}

}  // namespace detail

template <class W>
void WeightsT<W>::validate(const Config& c) const {
  c.validate();
  const std::size_t d = c.d_model;
  if (embedding.data == nullptr) {
    throw ShapeError("[grok1] tensor 'language_model/in_out_embed/embeddings' is missing");
  }
  if (embedding.stride != embedding.cols) {
    throw ShapeError("[grok1] tensor 'language_model/in_out_embed/embeddings' must be contiguous");
  }
  check_shape("grok1", "language_model/in_out_embed/embeddings", {embedding.rows, embedding.cols},
              {c.vocab_size, d});
  detail::check_vector(final_norm, "language_model/rms_norm/scale", d);
  if (layers.size() != c.n_layers) {
    throw ShapeError("[grok1] weights have " + std::to_string(layers.size()) +
                     " decoder layers, config expects " + std::to_string(c.n_layers));
  }
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const LayerWeightsT<W>& l = layers[i];
    auto name = [i](const char* leaf) { return layer_tensor_name(i, leaf); };
    detail::check_matrix(l.wq, name("multi_head_attention/query/w"), d, c.q_dim());
    detail::check_matrix(l.wk, name("multi_head_attention/key/w"), d, c.kv_dim());
    detail::check_matrix(l.wv, name("multi_head_attention/value/w"), d, c.kv_dim());
    detail::check_matrix(l.wo, name("multi_head_attention/linear/w"), c.q_dim(), d);
    detail::check_vector(l.norm_pre_attn, name("rms_norm/scale"), d);
    detail::check_vector(l.norm_post_attn, name("rms_norm_1/scale"), d);
    detail::check_vector(l.norm_pre_moe, name("rms_norm_2/scale"), d);
    detail::check_vector(l.norm_post_moe, name("rms_norm_3/scale"), d);
    detail::check_matrix(l.router, name("router/w"), d, c.n_experts);
    detail::check_stack(l.expert_gate, name("moe/linear/w"), c.n_experts, d, c.d_ff);
    detail::check_stack(l.expert_up, name("moe/linear_v/w"), c.n_experts, d, c.d_ff);
    detail::check_stack(l.expert_down, name("moe/linear_1/w"), c.n_experts, c.d_ff, d);
  }
}

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

// ---- random weights ----------------------------------------------------------------------------

/// Owns random Grok-1 weights for a Config in the checkpoint's formats (int8 [in, out] with bf16
/// scales: 1 block for q/k/v and the expert gate/up projections, 8 blocks for the output and
/// down projections when `in` allows it; f32 embedding, norms, router). Scales are chosen so that
/// every projection roughly preserves the activations' scale. Deterministic for a seed.
class RandomWeights {
 public:
  explicit RandomWeights(const Config& c, std::uint64_t seed = 42) : cfg_(c) {
    c.validate();
    std::mt19937_64 rng(seed);
    const std::size_t d = c.d_model, f = c.d_ff, e = c.n_experts;
    embedding_ = normal(rng, c.vocab_size * d, 1.0 / std::sqrt(static_cast<double>(d)));
    final_norm_ = Buffer<float>(d, 1.0f);
    weights_.embedding = MatrixView<const float>(embedding_.data(), c.vocab_size, d);
    weights_.final_norm = final_norm_.span();
    layers_.resize(c.n_layers);
    weights_.layers.resize(c.n_layers);
    for (std::size_t i = 0; i < c.n_layers; ++i) {
      Layer& o = layers_[i];
      LayerWeights& l = weights_.layers[i];
      l.wq = int8(rng, o.wq, 1, d, c.q_dim(), 1);
      l.wk = int8(rng, o.wk, 1, d, c.kv_dim(), 1);
      l.wv = int8(rng, o.wv, 1, d, c.kv_dim(), 1);
      l.wo = int8(rng, o.wo, 1, c.q_dim(), d, blocks_for(c.q_dim()));
      for (std::size_t n = 0; n < 4; ++n) o.norms[n] = Buffer<float>(d, 1.0f);
      l.norm_pre_attn = o.norms[0].span();
      l.norm_post_attn = o.norms[1].span();
      l.norm_pre_moe = o.norms[2].span();
      l.norm_post_moe = o.norms[3].span();
      o.router = normal(rng, d * e, 1.0 / std::sqrt(static_cast<double>(d)));
      l.router = F32Weight{o.router.data(), d, e, Layout::kInOut};
      l.expert_gate = {int8(rng, o.gate, e, d, f, 1), e};
      l.expert_up = {int8(rng, o.up, e, d, f, 1), e};
      l.expert_down = {int8(rng, o.down, e, f, d, blocks_for(f)), e};
    }
  }
  RandomWeights(const RandomWeights&) = delete;
  RandomWeights& operator=(const RandomWeights&) = delete;
  RandomWeights(RandomWeights&&) = default;
  RandomWeights& operator=(RandomWeights&&) = default;

  [[nodiscard]] const Config& config() const noexcept { return cfg_; }
  /// The views (valid while this object lives).
  [[nodiscard]] const Weights& weights() const noexcept { return weights_; }
  /// Bytes owned.
  [[nodiscard]] std::size_t bytes() const noexcept {
    std::size_t b = (embedding_.size() + final_norm_.size()) * sizeof(float);
    for (const Layer& o : layers_) {
      for (const Quant* q : {&o.wq, &o.wk, &o.wv, &o.wo, &o.gate, &o.up, &o.down}) {
        b += q->data.size() + q->scales.size() * sizeof(bf16);
      }
      b += o.router.size() * sizeof(float) + 4 * cfg_.d_model * sizeof(float);
    }
    return b;
  }

 private:
  struct Quant {
    Buffer<std::int8_t> data;
    Buffer<bf16> scales;
  };
  struct Layer {
    Quant wq, wk, wv, wo, gate, up, down;
    Buffer<float> norms[4];
    Buffer<float> router;
  };

  static std::size_t blocks_for(std::size_t in) { return in % 8 == 0 ? 8 : 1; }

  static Buffer<float> normal(std::mt19937_64& rng, std::size_t n, double stddev) {
    Buffer<float> b(n);
    std::normal_distribution<float> nd(0.0f, static_cast<float>(stddev));
    for (auto& v : b) v = nd(rng);
    return b;
  }

  /// `count` int8 [in, out] matrices back to back with [blocks, out] bf16 scales each; returns
  /// the view of the first. Uniform int8 in [-127, 127] (std ~73.6), scales ~ 1/(73.6 sqrt(in)).
  static Int8Weight int8(std::mt19937_64& rng, Quant& q, std::size_t count, std::size_t in,
                         std::size_t out, std::size_t blocks) {
    q.data = Buffer<std::int8_t>(count * in * out);
    q.scales = Buffer<bf16>(count * blocks * out);
    std::uniform_int_distribution<int> di(-127, 127);
    for (auto& v : q.data) v = static_cast<std::int8_t>(di(rng));
    const double s = 1.0 / (73.6 * std::sqrt(static_cast<double>(in)));
    std::uniform_real_distribution<double> du(0.75 * s, 1.25 * s);
    for (auto& v : q.scales) v = bf16(static_cast<float>(du(rng)));
    return Int8Weight{q.data.data(), q.scales.data(), in, out, blocks};
  }

  Config cfg_;
  Buffer<float> embedding_, final_norm_;
  std::vector<Layer> layers_;
  Weights weights_;
};

}  // namespace moe::grok1
