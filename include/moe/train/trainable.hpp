// moe/train/trainable.hpp: TrainableDecoder, a decoder to train with its parameters and
// gradients, for any MoE layer composed from the presets.
//
//   using Moe = moe::presets::Mixtral<moe::F32Weight>;          // any MoELayer over F32Weight
//   moe::TrainableDecoder<Moe> net(config, Moe::Policies{}, /*seed*/ 1);
//   auto st = net.model().make_training_state(batch, seq_len);
//   moe::AdamW opt(net.parameters().n_elements(), {.weight_decay = 0.1f});
//   for (step = 1 ..) {
//     net.parameters().zero_grads();
//     net.model().forward_train(pool, tokens, targets, st);
//     net.model().backward(pool, st, net.grads());
//     opt.step(pool, net.parameters(), lr);
//   }
//
// The model is an ordinary Decoder (the type inference runs) whose blocks are
// TransformerBlock<RotaryAttention<F32Weight>, DenseOrMoE<Moe, GatedFfn<F32Weight, act>>>: every
// block holds the MoE layer, or, where TrainableConfig::moe_every says so, a dense gated FFN (a
// dense model: moe_every = 0; GLaM: MoE in every second block). Every weight is an F32Weight view
// into a ParameterStore and every gradient a WeightGrad view into its gradient buffer, so
// AdamW, clipping and checkpoints work on the store. Tensor names (training checkpoints):
//
//   embedding [V, D], final_norm [D], head [D, V] (untied only)
//   layer_L/attention/{wq [D, Hq dh], wk, wv [D, Hkv dh], wo [Hq dh, D]}
//   layer_L/norm/{pre_attn, post_attn, pre_ffn, post_ffn} [D] (post_* for sandwich blocks only)
//   layer_L/moe/{router [D, E], noise [D, E] (NoisyTopK), selection_bias [E] (DeepSeek-V3),
//                gate [E, D, F], up [E, D, F], down [E, F, D], shared_{gate,up,down}}
//   layer_L/ffn/{gate [D, F'], up [D, F'], down [F', D]} (dense blocks)
//
// Weights are stored [in, out] (JAX / Grok-1 layout). Initialisation (deterministic for a seed):
// normal with std 1 / sqrt(fan_in) for projections, divided by sqrt(2 L) for the two projections
// that write into the residual stream (attention output, FFN down: GPT-2's scaled init); the
// router at 0.1 of that (Switch Transformer's advice: a small router init is more stable); the
// embedding at 1 / sqrt(D); norm scales 1. Weight decay applies to every matrix, not to norm
// scales or the selection bias.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <moe/config.hpp>
#include <moe/core/error.hpp>
#include <moe/layers/attention.hpp>
#include <moe/layers/decoder.hpp>
#include <moe/layers/expert.hpp>
#include <moe/layers/moe_layer.hpp>
#include <moe/layers/transformer_block.hpp>
#include <moe/ops/embedding.hpp>
#include <moe/ops/weights.hpp>
#include <moe/train/parameters.hpp>

namespace moe {

/// The shape of a decoder to train.
struct TrainableConfig {
  DecoderConfig decoder;      ///< vocabulary, width, multipliers, final-norm eps
  AttentionConfig attention;  ///< heads, RoPE, logit multiplier, soft-cap (d_model = decoder's)
  BlockConfig block;          ///< pre-norm or sandwich, eps
  std::size_t n_layers = 0;
  std::size_t n_experts = 8;
  std::size_t d_ff = 0;  ///< expert width F (and the shared expert's)
  /// Width of the dense blocks' FFN; 0 = top_k * d_ff (the active width of an MoE block).
  std::size_t dense_ff = 0;
  /// MoE in the blocks l with (l + 1) % moe_every == 0: 1 = every block, 2 = every second block
  /// (GLaM), 0 = none (a dense model).
  std::size_t moe_every = 1;
  bool tied_head = true;

  [[nodiscard]] bool is_moe(std::size_t layer) const noexcept {
    return moe_every != 0 && (layer + 1) % moe_every == 0;
  }
  void validate() const {
    decoder.validate();
    AttentionConfig a = attention;
    a.d_model = decoder.d_model;
    a.validate();
    check_config(n_layers > 0, "trainable", "n_layers must be > 0");
    check_config(d_ff > 0 && n_experts > 0, "trainable", "d_ff and n_experts must be > 0");
  }
};

}  // namespace moe

MOE_SIMD_NAMESPACE_BEGIN

template <class Moe, class Dense = GatedFfn<F32Weight, Moe::expert_type::activation>>
class TrainableDecoder {
 public:
  using moe_type = Moe;
  using dense_type = Dense;
  using Ffn = DenseOrMoE<Moe, Dense>;
  using Block = TransformerBlock<RotaryAttention<F32Weight>, Ffn>;
  using Model = Decoder<Block>;
  using Grads = typename Model::Grads;
  static_assert(std::is_same_v<typename Moe::expert_type::weight_type, F32Weight> &&
                    std::is_same_v<typename Moe::router_type::weight_type, F32Weight>,
                "TrainableDecoder trains f32 weights: compose the MoE layer over F32Weight");

  /// The weight views of one layer (for exporting or inspecting; valid while this lives).
  struct LayerViews {
    AttentionWeights<F32Weight> attention;
    std::span<const float> pre_attn, post_attn, pre_ffn, post_ffn;
    bool moe = true;
    typename Moe::Weights experts;                     ///< MoE blocks
    F32Weight dense_gate{}, dense_up{}, dense_down{};  ///< dense blocks
  };

  TrainableDecoder(const TrainableConfig& config, const typename Moe::Policies& policies,
                   std::uint64_t seed)
      : cfg_(config), policies_(policies) {
    cfg_.validate();
    cfg_.attention.d_model = cfg_.decoder.d_model;
    declare();
    store_.allocate();
    initialise(seed);
    build();
  }
  TrainableDecoder(const TrainableDecoder&) = delete;
  TrainableDecoder& operator=(const TrainableDecoder&) = delete;

  [[nodiscard]] const TrainableConfig& config() const noexcept { return cfg_; }
  [[nodiscard]] ParameterStore& parameters() noexcept { return store_; }
  [[nodiscard]] const ParameterStore& parameters() const noexcept { return store_; }
  [[nodiscard]] const Model& model() const noexcept { return *model_; }
  /// The gradient views backward() adds into (zero them with parameters().zero_grads()).
  [[nodiscard]] Grads& grads() noexcept { return grads_; }
  [[nodiscard]] const LayerViews& layer(std::size_t l) const { return views_.at(l); }
  [[nodiscard]] std::span<const float> embedding() const { return store_.param(ids_.embedding); }
  [[nodiscard]] std::span<const float> final_norm() const { return store_.param(ids_.final_norm); }
  /// Freezes (or unfreezes) every MoE layer's weights: backward() then leaves their gradients
  /// alone but still passes the gradient to the layers' inputs (ST-MoE's fine-tuning advice).
  void freeze_moe(bool frozen) {
    for (std::size_t l = 0; l < cfg_.n_layers; ++l) {
      if (cfg_.is_moe(l)) grads_.blocks[l].ffn.moe = frozen ? typename Moe::Grads{} : moe_grads_[l];
    }
  }

 private:
  using Id = ParameterStore::Id;
  struct LayerIds {
    Id wq, wk, wv, wo, pre_attn, post_attn = ParameterStore::npos, pre_ffn,
                                 post_ffn = ParameterStore::npos;
    Id router = ParameterStore::npos, noise = ParameterStore::npos, bias = ParameterStore::npos;
    Id gate, up, down;
    Id shared_gate = ParameterStore::npos, shared_up = ParameterStore::npos,
       shared_down = ParameterStore::npos;
  };
  struct Ids {
    Id embedding, final_norm, head = ParameterStore::npos;
    std::vector<LayerIds> layers;
  };

  [[nodiscard]] std::size_t dense_width() const noexcept {
    return cfg_.dense_ff != 0 ? cfg_.dense_ff : policies_.routing.top_k * cfg_.d_ff;
  }
  [[nodiscard]] bool sandwich() const noexcept {
    return cfg_.block.norm == NormPlacement::kSandwich;
  }

  // 1. Every tensor, in the order of the forward pass.
  void declare() {
    const std::size_t v = cfg_.decoder.vocab_size, d = cfg_.decoder.d_model, e = cfg_.n_experts,
                      f = cfg_.d_ff, q = cfg_.attention.q_dim(), kv = cfg_.attention.kv_dim();
    ids_.embedding = store_.add("embedding", {v, d});
    ids_.layers.resize(cfg_.n_layers);
    for (std::size_t l = 0; l < cfg_.n_layers; ++l) {
      LayerIds& t = ids_.layers[l];
      const std::string p = "layer_" + std::to_string(l) + "/";
      t.pre_attn = store_.add(p + "norm/pre_attn", {d}, false);
      t.wq = store_.add(p + "attention/wq", {d, q});
      t.wk = store_.add(p + "attention/wk", {d, kv});
      t.wv = store_.add(p + "attention/wv", {d, kv});
      t.wo = store_.add(p + "attention/wo", {q, d});
      if (sandwich()) t.post_attn = store_.add(p + "norm/post_attn", {d}, false);
      t.pre_ffn = store_.add(p + "norm/pre_ffn", {d}, false);
      if (cfg_.is_moe(l)) {
        t.router = store_.add(p + "moe/router", {d, e});
        if constexpr (Moe::router_type::kNoisyTopK) t.noise = store_.add(p + "moe/noise", {d, e});
        if (policies_.routing.selection_bias)
          t.bias = store_.add(p + "moe/selection_bias", {e}, false);
        t.gate = store_.add(p + "moe/gate", {e, d, f});
        t.up = store_.add(p + "moe/up", {e, d, f});
        t.down = store_.add(p + "moe/down", {e, f, d});
        if constexpr (Moe::kShared) {
          t.shared_gate = store_.add(p + "moe/shared_gate", {d, f});
          t.shared_up = store_.add(p + "moe/shared_up", {d, f});
          t.shared_down = store_.add(p + "moe/shared_down", {f, d});
        }
      } else {
        const std::size_t fd = dense_width();
        t.gate = store_.add(p + "ffn/gate", {d, fd});
        t.up = store_.add(p + "ffn/up", {d, fd});
        t.down = store_.add(p + "ffn/down", {fd, d});
      }
      if (sandwich()) t.post_ffn = store_.add(p + "norm/post_ffn", {d}, false);
    }
    ids_.final_norm = store_.add("final_norm", {d}, false);
    if (!cfg_.tied_head) ids_.head = store_.add("head", {d, v});
  }

  // 2. Initial values (see the file comment).
  void initialise(std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    const double d = static_cast<double>(cfg_.decoder.d_model);
    const double resid = 1.0 / std::sqrt(2.0 * static_cast<double>(cfg_.n_layers));
    const auto normal = [&](Id id, double stddev) {
      std::normal_distribution<float> nd(0.0f, static_cast<float>(stddev));
      for (float& x : store_.param(id)) x = nd(rng);
    };
    const auto ones = [&](Id id) {
      if (id != ParameterStore::npos)
        std::fill(store_.param(id).begin(), store_.param(id).end(), 1.0f);
    };
    const auto fan_in = [&](Id id) {
      const auto& s = store_.info(id).shape;
      return 1.0 / std::sqrt(static_cast<double>(s[s.size() - 2]));
    };
    normal(ids_.embedding, 1.0 / std::sqrt(d));
    for (std::size_t l = 0; l < cfg_.n_layers; ++l) {
      const LayerIds& t = ids_.layers[l];
      for (Id id : {t.pre_attn, t.post_attn, t.pre_ffn, t.post_ffn}) ones(id);
      for (Id id : {t.wq, t.wk, t.wv}) normal(id, fan_in(id));
      normal(t.wo, fan_in(t.wo) * resid);
      if (t.router != ParameterStore::npos) normal(t.router, 0.1 * fan_in(t.router));
      if (t.noise != ParameterStore::npos) normal(t.noise, 0.1 * fan_in(t.noise));
      normal(t.gate, fan_in(t.gate));
      normal(t.up, fan_in(t.up));
      normal(t.down, fan_in(t.down) * resid);
      if (t.shared_gate != ParameterStore::npos) {
        normal(t.shared_gate, fan_in(t.shared_gate));
        normal(t.shared_up, fan_in(t.shared_up));
        normal(t.shared_down, fan_in(t.shared_down) * resid);
      }
    }
    ones(ids_.final_norm);
    if (ids_.head != ParameterStore::npos) normal(ids_.head, 1.0 / std::sqrt(d));
  }

  // 3. The Decoder over views of the parameters, and the matching gradient views.
  [[nodiscard]] F32Weight w2(Id id) const { return store_.weight(id); }
  [[nodiscard]] WeightGrad g2(Id id) { return store_.weight_grad(id); }
  [[nodiscard]] WeightStack<F32Weight> w3(Id id) const {
    const auto& s = store_.info(id).shape;
    return WeightStack<F32Weight>{F32Weight{store_.param(id).data(), s[1], s[2]}, s[0]};
  }
  [[nodiscard]] WeightStack<WeightGrad> g3(Id id) {
    return grad_like(store_.grad(id).data(), w3(id));
  }
  [[nodiscard]] std::span<const float> p1(Id id) const {
    return id == ParameterStore::npos ? std::span<const float>() : store_.param(id);
  }
  [[nodiscard]] std::span<float> gr1(Id id) {
    return id == ParameterStore::npos ? std::span<float>() : store_.grad(id);
  }

  void build() {
    std::vector<Block> blocks;
    blocks.reserve(cfg_.n_layers);
    grads_.blocks.resize(cfg_.n_layers);
    moe_grads_.resize(cfg_.n_layers);
    views_.resize(cfg_.n_layers);
    for (std::size_t l = 0; l < cfg_.n_layers; ++l) {
      const LayerIds& t = ids_.layers[l];
      LayerViews& v = views_[l];
      typename Block::Grads& g = grads_.blocks[l];
      v.attention = {w2(t.wq), w2(t.wk), w2(t.wv), w2(t.wo)};
      g.attention = {g2(t.wq), g2(t.wk), g2(t.wv), g2(t.wo)};
      v.pre_attn = p1(t.pre_attn);
      v.post_attn = p1(t.post_attn);
      v.pre_ffn = p1(t.pre_ffn);
      v.post_ffn = p1(t.post_ffn);
      g.pre_attn = gr1(t.pre_attn);
      g.post_attn = gr1(t.post_attn);
      g.pre_ffn = gr1(t.pre_ffn);
      g.post_ffn = gr1(t.post_ffn);
      v.moe = cfg_.is_moe(l);
      std::optional<Ffn> ffn;
      if (v.moe) {
        typename Moe::Weights& w = v.experts;
        w.router = w2(t.router);
        if (t.noise != ParameterStore::npos) w.noise = w2(t.noise);
        if (t.bias != ParameterStore::npos) w.selection_bias = p1(t.bias);
        w.gate = w3(t.gate);
        w.up = w3(t.up);
        w.down = w3(t.down);
        typename Moe::Grads mg;
        mg.router.gate = g2(t.router);
        if (t.noise != ParameterStore::npos) mg.router.noise = g2(t.noise);
        mg.experts = {g3(t.gate), g3(t.up), g3(t.down)};
        if constexpr (Moe::kShared) {
          w.shared =
              typename Moe::shared_type(w2(t.shared_gate), w2(t.shared_up), w2(t.shared_down));
          mg.shared = {g2(t.shared_gate), g2(t.shared_up), g2(t.shared_down)};
        }
        moe_grads_[l] = mg;
        g.ffn.moe = mg;
        ffn.emplace(Moe(w, policies_));
      } else {
        v.dense_gate = w2(t.gate);
        v.dense_up = w2(t.up);
        v.dense_down = w2(t.down);
        g.ffn.dense = {g2(t.gate), g2(t.up), g2(t.down)};
        ffn.emplace(Dense(v.dense_gate, v.dense_up, v.dense_down));
      }
      blocks.emplace_back(RotaryAttention<F32Weight>(cfg_.attention, v.attention), std::move(*ffn),
                          BlockNorms{v.pre_attn, v.post_attn, v.pre_ffn, v.post_ffn}, cfg_.block);
    }
    std::optional<F32Weight> head;
    if (ids_.head != ParameterStore::npos) {
      head = w2(ids_.head);
      grads_.head = g2(ids_.head);
    }
    const std::size_t vsz = cfg_.decoder.vocab_size, d = cfg_.decoder.d_model;
    model_.emplace(cfg_.decoder, EmbeddingTable(store_.param(ids_.embedding).data(), vsz, d),
                   std::move(blocks), store_.param(ids_.final_norm), head);
    grads_.embedding = store_.grad(ids_.embedding);
    grads_.final_norm = store_.grad(ids_.final_norm);
  }

  TrainableConfig cfg_;
  typename Moe::Policies policies_;
  ParameterStore store_;
  Ids ids_;
  std::vector<LayerViews> views_;
  std::vector<typename Moe::Grads> moe_grads_;
  std::optional<Model> model_;
  Grads grads_;
};

MOE_SIMD_NAMESPACE_END
