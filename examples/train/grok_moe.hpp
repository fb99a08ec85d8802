// The `train` example's model: Grok-1's decoder (sandwich norms, soft-cap, GELU-tanh experts,
// softmax router with top-k gates, tied head, multipliers) at any size, trained through
// moe::TrainableDecoder, with the routing policies the experiments vary:
//
//   top_k, renormalise       the router (Grok-1: top-2 of the softmax, not renormalised)
//   capacity_factor          0 = dropless (Grok-1); cf > 0: C = ceil(k T cf / E) per expert in
//                            training, 2.0 in evaluation (Switch Transformer's convention)
//   balance                  Switch load-balancing loss coefficient (0 = off), value 1 at balance
//   z_loss                   ST-MoE router z-loss coefficient (0 = off)
//   expert_dropout           dropout inside the experts in training (ST-MoE fine-tuning)
//   moe_every                0 = a dense model (FFN width top_k * d_ff: the same active size)
//
// The weights of an MoE model are exactly Grok-1's tensors, so the export writes them in the
// release format and `grok1` runs them (dropless, as Grok-1 infers).
#pragma once

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <moe/layers/policies.hpp>
#include <moe/layers/presets.hpp>
#include <moe/train/trainable.hpp>

#include "model.hpp"

namespace train_example {

/// The routing policies of the trained MoE layers (see the file comment).
struct RoutingChoice {
  std::size_t top_k = 2;
  bool renormalize = false;
  double capacity_factor = 0.0;  ///< 0 = dropless
  float balance = 1e-2f;
  float z_loss = 1e-3f;
  float expert_dropout = 0.0f;
  std::size_t moe_every = 1;  ///< 0 = dense model
  bool freeze_moe = false;    ///< fine-tuning: the MoE weights stay as they are

  /// One line for logs and the checkpoint's metadata.
  [[nodiscard]] std::string describe() const {
    std::string s = "top_k " + std::to_string(top_k) + (renormalize ? " renorm" : "") +
                    (capacity_factor > 0 ? " cf " + std::to_string(capacity_factor) : " dropless") +
                    " balance " + std::to_string(balance) + " z " + std::to_string(z_loss);
    if (expert_dropout > 0) s += " expert_dropout " + std::to_string(expert_dropout);
    if (moe_every != 1) s += " moe_every " + std::to_string(moe_every);
    if (freeze_moe) s += " frozen_moe";
    return s;
  }
};

/// The MoE layer of the trained model: Grok-1's router and experts with every training policy
/// as a runtime value.
using TrainMoE = moe::MoELayer<moe::Router<moe::F32Weight, moe::Routing>,
                               moe::Expert<moe::F32Weight, moe::Activation::kGeluTanh>,
                               moe::CapacityFactor, moe::LoadBalanceLoss, moe::RouterZLoss>;

inline TrainMoE::Policies train_policies(const RoutingChoice& r, std::size_t n_experts) {
  TrainMoE::Policies p;
  p.routing.top_k = r.top_k;
  p.routing.score = moe::ScoreFn::kSoftmax;
  p.routing.renormalize = r.renormalize;
  if (r.capacity_factor > 0) {
    p.capacity.train = r.capacity_factor;
    p.capacity.eval = 2.0;
  } else {  // dropless: C >= T for every expert (a token picks an expert at most once)
    p.capacity.train = p.capacity.eval = static_cast<double>(n_experts);
  }
  p.capacity.min_capacity = 0;
  p.balance.coef = r.balance;
  p.balance.counting = moe::BalanceCounting::kAllChoicesNormalized;
  p.z_loss.coef = r.z_loss;
  p.expert_dropout.rate = r.expert_dropout;
  return p;
}

inline moe::TrainableConfig trainable_config(const moe::grok1::Config& c, const RoutingChoice& r) {
  moe::TrainableConfig t;
  t.decoder = moe::grok1::decoder_config(c);
  t.attention = moe::grok1::attention_config(c);
  t.block = moe::grok1::block_config(c);
  t.n_layers = c.n_layers;
  t.n_experts = c.n_experts;
  t.d_ff = c.d_ff;
  t.moe_every = r.moe_every;
  t.tied_head = true;
  return t;
}

class GrokMoE final : public Model {
 public:
  using Net = moe::TrainableDecoder<TrainMoE>;

  GrokMoE(const moe::grok1::Config& c, const RoutingChoice& r, std::uint64_t seed)
      : cfg_(c), routing_(r), net_(trainable_config(c, r), train_policies(r, c.n_experts), seed) {
    net_.freeze_moe(r.freeze_moe);
  }

  [[nodiscard]] std::string name() const override { return "grok-moe"; }
  moe::ParameterStore& parameters() override { return net_.parameters(); }
  [[nodiscard]] const RoutingChoice& routing() const noexcept { return routing_; }
  [[nodiscard]] const Net& net() const noexcept { return net_; }

  StepStats train_step(moe::ThreadPool& pool, const moe::Batch& batch,
                       std::uint64_t step) override {
    auto& st = state(batch);
    flatten(batch);
    moe::TrainingOptions opts;
    opts.step = step;
    const moe::TrainingLoss l = net_.model().forward_train(pool, inputs_, targets_, st, opts);
    net_.model().backward(pool, st, net_.grads());
    StepStats s;
    s.loss = l.ce;
    s.aux = l.aux;
    for (const auto& r : st.ffn_results()) {
      if (r) s.layers.push_back(layer_step(*r));
    }
    return s;
  }

  double loss(moe::ThreadPool& pool, const moe::Batch& batch) override {
    auto& st = state(batch);
    flatten(batch);
    moe::TrainingOptions opts;
    opts.training = false;
    return net_.model().forward_train(pool, inputs_, targets_, st, opts).ce;
  }

  [[nodiscard]] moe::grok1::WeightsT<moe::F32Weight> grok1_weights() const override {
    if (routing_.moe_every != 1) {
      throw moe::ConfigError("[train] a model with dense blocks has no Grok-1 export");
    }
    moe::grok1::WeightsT<moe::F32Weight> w;
    w.embedding =
        moe::MatrixView<const float>(net_.embedding().data(), cfg_.vocab_size, cfg_.d_model);
    w.final_norm = net_.final_norm();
    w.layers.resize(cfg_.n_layers);
    for (std::size_t l = 0; l < cfg_.n_layers; ++l) {
      const auto& v = net_.layer(l);
      auto& o = w.layers[l];
      o.wq = v.attention.wq;
      o.wk = v.attention.wk;
      o.wv = v.attention.wv;
      o.wo = v.attention.wo;
      o.norm_pre_attn = v.pre_attn;
      o.norm_post_attn = v.post_attn;
      o.norm_pre_moe = v.pre_ffn;
      o.norm_post_moe = v.post_ffn;
      o.router = v.experts.router;
      o.expert_gate = v.experts.gate;
      o.expert_up = v.experts.up;
      o.expert_down = v.experts.down;
    }
    return w;
  }

 private:
  static LayerStep layer_step(const moe::MoEResult& r) {
    const moe::MoEStats& m = r.stats;
    LayerStep l;
    l.load.assign(m.n_experts, 0.0);
    const double total = static_cast<double>(m.assignments);
    for (std::size_t e = 0; e < m.n_experts && total > 0; ++e) {
      l.load[e] = static_cast<double>(m.routed_per_expert[e]) / total;
    }
    l.dropped = m.dropped_fraction;
    l.entropy = m.router_entropy;
    l.mean_lse = m.mean_logsumexp;
    l.balance_loss = r.losses.load_balance;
    return l;
  }

  Net::Model::TrainingState& state(const moe::Batch& batch) {
    if (!state_ || state_->batch() < batch.batch || state_->seq_len() != batch.seq) {
      state_ = std::make_unique<Net::Model::TrainingState>(
          net_.model().make_training_state(batch.batch, batch.seq));
    }
    return *state_;
  }
  void flatten(const moe::Batch& batch) {
    inputs_.resize(batch.n_tokens());
    targets_.resize(batch.n_tokens());
    for (std::size_t b = 0; b < batch.batch; ++b) {
      std::copy_n(batch.inputs(b).data(), batch.seq, inputs_.begin() + b * batch.seq);
      std::copy_n(batch.targets(b).data(), batch.seq, targets_.begin() + b * batch.seq);
    }
  }

  moe::grok1::Config cfg_;
  RoutingChoice routing_;
  Net net_;
  std::unique_ptr<Net::Model::TrainingState> state_;
  std::vector<std::int32_t> inputs_, targets_;
};

}  // namespace train_example
