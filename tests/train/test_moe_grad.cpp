// MoE layer backward, per policy and per preset, against central differences of a float64
// formulation with the routing decisions frozen (tests/train/moe_ref.hpp): the objective is
// L = sum r * y + loss_scale * (weighted auxiliary losses), 32 tokens over at most 4 experts (so
// every expert sees several), inputs picked with a decision margin, no decision flips at any
// probe, each named parameter compared separately against a non-zero reference.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include <moe/layers/presets.hpp>

#include "train/moe_grad_util.hpp"

using moe::Activation;
using moe::F32Weight;
using moe_grad::Case;

namespace {

template <class Noise = moe::NoNoise>
using R = moe::Router<F32Weight, moe::Routing, Noise>;
template <Activation A = Activation::kSilu>
using Ex = moe::Expert<F32Weight, A>;

/// Every balance counting and the z-loss on a dropless layer.
using LossLayer = moe::MoELayer<R<>, Ex<>, moe::Dropless, moe::LoadBalanceLoss, moe::RouterZLoss>;
using CapLayer = moe::MoELayer<R<>, Ex<Activation::kGeluTanh>, moe::CapacityFactor,
                               moe::LoadBalanceLoss, moe::RouterZLoss>;

}  // namespace

TEST_CASE("MoE backward: softmax routing, renormalised or not, balance and z-loss",
          "[train][moe_grad]") {
  SECTION("softmax, renormalised top-2, every balance counting (aux only)") {
    for (auto counting : {moe::BalanceCounting::kAllChoicesNormalized,
                          moe::BalanceCounting::kAllChoices, moe::BalanceCounting::kTop1}) {
      LossLayer::Policies p;
      p.routing = {.top_k = 2, .renormalize = true};
      p.balance = {.coef = 1.0f, .counting = counting};
      p.z_loss = {.coef = 0.5f};
      moe_grad::check<LossLayer>("balance counting aux only", Case{.aux_only = true}, p);
      moe_grad::check<LossLayer>("balance counting", Case{.loss_scale = 3.0f}, p);
    }
  }
  SECTION("softmax, raw top-2 with route scale; top-3 of 4") {
    LossLayer::Policies p;
    p.routing = {.top_k = 2, .renormalize = false, .route_scale = 1.7f};
    p.balance = {.coef = 0.1f};
    p.z_loss = {.coef = 0.1f};
    moe_grad::check<LossLayer>("raw top-2", Case{}, p);
    p.routing = {.top_k = 3, .renormalize = true};
    moe_grad::check<LossLayer>("renormalised top-3", Case{}, p);
  }
  SECTION("softmax of the selected logits; per-sequence balance loss; padding") {
    LossLayer::Policies p;
    p.routing = {.top_k = 2, .score = moe::ScoreFn::kSoftmaxOfSelected};
    p.balance = {.coef = 1.0f, .counting = moe::BalanceCounting::kTop1, .sequence_length = 8};
    Case cs{.loss_scale = 2.0f};
    cs.mask.assign(cs.T, 1);
    for (std::size_t t : {1u, 6u, 7u, 20u, 31u}) cs.mask[t] = 0;
    for (std::size_t t = 8; t < 16; ++t) cs.mask[t] = 0;  // a whole sequence of padding
    moe_grad::check<LossLayer>("softmax of selected, seq balance, padding", cs, p);
  }
  SECTION("[out, in] experts and router") {
    LossLayer::Policies p;
    p.balance = {.coef = 0.2f};
    moe_grad::check<LossLayer>(
        "out_in", Case{.layout = moe::Layout::kOutIn, .router_layout = moe::Layout::kOutIn}, p);
  }
}

TEST_CASE("MoE backward: sigmoid and sqrt-softplus scores, bias, groups", "[train][moe_grad]") {
  SECTION("sigmoid, renormalised x 2.5, selection bias, 2 groups keep 1 (DeepSeek-style)") {
    LossLayer::Policies p;
    p.routing = {.top_k = 2,
                 .score = moe::ScoreFn::kSigmoid,
                 .renormalize = true,
                 .route_scale = 2.5f,
                 .selection_bias = true,
                 .n_group = 2,
                 .topk_group = 1,
                 .group_score = moe::GroupScore::kTop2Sum};
    p.balance = {.coef = 1.0f};
    moe_grad::check<LossLayer>("sigmoid groups", Case{.E = 4}, p);
    moe_grad::check<LossLayer>("sigmoid groups aux only", Case{.aux_only = true}, p);
  }
  SECTION("sigmoid and sqrt-softplus without renormalisation") {
    for (auto fn : {moe::ScoreFn::kSigmoid, moe::ScoreFn::kSqrtSoftplus}) {
      LossLayer::Policies p;
      p.routing = {.top_k = 2, .score = fn, .renormalize = false};
      p.balance = {.coef = 1.0f, .counting = moe::BalanceCounting::kAllChoices};
      p.z_loss = {.coef = 0.3f};
      moe_grad::check<LossLayer>(moe::score_fn_name(fn), Case{}, p);
      moe_grad::check<LossLayer>("aux only", Case{.aux_only = true}, p);
      p.routing.renormalize = true;
      moe_grad::check<LossLayer>("renormalised", Case{}, p);
    }
  }
}

TEST_CASE("MoE backward: capacity, drop priorities, renormalisation before / after dropping",
          "[train][moe_grad]") {
  for (auto prio : {moe::DropPriority::kPosition, moe::DropPriority::kProbability,
                    moe::DropPriority::kBatchPrioritized}) {
    for (auto timing : {moe::RenormTiming::kAfterDrop, moe::RenormTiming::kBeforeDrop}) {
      for (bool renorm : {true, false}) {
        CapLayer::Policies p;
        p.routing = {.top_k = 2, .renormalize = renorm};
        p.capacity = {
            .train = 0.6, .eval = 0.6, .min_capacity = 0, .priority = prio, .renorm = timing};
        p.balance = {.coef = 0.5f};
        p.z_loss = {.coef = 0.1f};
        INFO("priority " << static_cast<int>(prio) << " timing " << static_cast<int>(timing)
                         << " renormalize " << renorm);
        moe_grad::check<CapLayer>("capacity", Case{}, p, /*want_drop=*/true);
      }
    }
  }
}

TEST_CASE("MoE backward: router noise (jitter, logit noise, random second expert)",
          "[train][moe_grad]") {
  SECTION("jitter on the router's copy of x, top-1, capacity (Switch-style)") {
    using L = moe::MoELayer<R<moe::Jitter>, Ex<Activation::kGeluTanh>, moe::CapacityFactor,
                            moe::LoadBalanceLoss, moe::RouterZLoss>;
    L::Policies p;
    p.routing = {.top_k = 1, .renormalize = false};
    p.noise = {.eps = 0.2f, .seed = 5};
    p.capacity = {.train = 1.0, .eval = 1.0, .min_capacity = 0};
    p.balance = {.coef = 1.0f, .counting = moe::BalanceCounting::kTop1};
    p.z_loss = {.coef = 0.1f};
    moe_grad::check<L>("jitter", Case{}, p, true);
    moe_grad::check<L>("jitter aux only", Case{.aux_only = true}, p);
  }
  SECTION("Gaussian logit noise") {
    using L = moe::MoELayer<R<moe::GaussianLogitNoise>, Ex<>, moe::Dropless, moe::LoadBalanceLoss,
                            moe::RouterZLoss>;
    L::Policies p;
    p.routing = {.top_k = 2, .renormalize = true};
    p.noise = {.stddev = 0.5f, .seed = 2};
    p.balance = {.coef = 1.0f};
    moe_grad::check<L>("logit noise", Case{}, p);
  }
  SECTION("random second expert, renormalised before dropping (GShard)") {
    using L = moe::MoELayer<R<moe::RandomSecondExpert>, Ex<Activation::kGeluTanh>,
                            moe::CapacityFactor, moe::LoadBalanceLoss>;
    L::Policies p;
    p.routing = {.top_k = 2, .renormalize = true};
    p.noise = {.threshold = 0.5f, .seed = 4};
    p.capacity = {
        .train = 0.8, .eval = 0.8, .min_capacity = 0, .renorm = moe::RenormTiming::kBeforeDrop};
    p.balance = {.coef = 1.0f, .counting = moe::BalanceCounting::kTop1};
    moe_grad::check<L>("random second, before drop", Case{}, p, true);
    p.capacity.renorm = moe::RenormTiming::kAfterDrop;
    moe_grad::check<L>("random second, after drop", Case{}, p, true);
  }
}

TEST_CASE("MoE backward: Shazeer et al.'s noisy top-k gating with importance and load losses",
          "[train][moe_grad]") {
  using L = moe::MoELayer<R<moe::NoisyTopK>, Ex<Activation::kGeluTanh>, moe::Dropless,
                          moe::ImportanceLoadLoss>;
  L::Policies p;
  p.routing = {.top_k = 2, .score = moe::ScoreFn::kSoftmaxOfSelected};
  p.noise = {.noise_epsilon = 1e-2f, .seed = 3};
  p.balance = {.w_importance = 1.0f, .w_load = 1.0f};
  moe_grad::check<L>("noisy top-k", Case{.loss_scale = 2.0f}, p);
  moe_grad::check<L>("noisy top-k aux only", Case{.aux_only = true}, p);
  p.balance = {.w_importance = 0.0f, .w_load = 1.0f};
  moe_grad::check<L>("noisy top-k load only (aux only)", Case{.aux_only = true}, p);
  p.routing = {.top_k = 2, .score = moe::ScoreFn::kSoftmax, .renormalize = false};
  p.balance = {.w_importance = 1.0f, .w_load = 1.0f};
  moe_grad::check<L>("noisy top-k, raw softmax gates", Case{}, p);
  // inference: clean logits, the load counts (no gradient), importance still differentiable
  p.routing = {.top_k = 2, .score = moe::ScoreFn::kSoftmaxOfSelected};
  moe_grad::check<L>("noisy top-k inference mode", Case{.training = false}, p);
}

TEST_CASE("MoE backward: shared expert, padding, expert dropout", "[train][moe_grad]") {
  SECTION("shared expert and padding") {
    using L = moe::MoELayer<R<>, Ex<>, moe::CapacityFactor, moe::LoadBalanceLoss, moe::NoZLoss,
                            moe::GatedFfn<F32Weight, Activation::kGeluErf>>;
    L::Policies p;
    p.capacity = {.train = 0.7, .eval = 0.7, .min_capacity = 0};
    p.balance = {.coef = 0.5f};
    Case cs{.Fs = 10};
    cs.mask.assign(cs.T, 1);
    for (std::size_t t : {0u, 3u, 17u, 30u}) cs.mask[t] = 0;
    moe_grad::check<L>("shared + padding", cs, p, true);
  }
  SECTION("expert dropout (ST-MoE fine-tuning)") {
    CapLayer::Policies p;
    p.capacity = {.train = 0.7, .eval = 0.7, .min_capacity = 0};
    p.balance = {.coef = 0.2f};
    p.expert_dropout = {.rate = 0.3f, .seed = 17};
    moe_grad::check<CapLayer>("expert dropout", Case{}, p, true);
    moe_grad::check<CapLayer>("expert dropout off in inference", Case{.training = false}, p);
  }
}

TEST_CASE("MoE backward: every preset", "[train][moe_grad][preset]") {
  using namespace moe::presets;
  SECTION("Switch") {
    using L = Switch<F32Weight>;
    moe_grad::check<L>("Switch", Case{.loss_scale = 30.0f}, L::Policies{}, true);
  }
  SECTION("GShardTop2") {
    using L = GShardTop2<F32Weight>;
    moe_grad::check<L>("GShardTop2", Case{.loss_scale = 30.0f}, L::Policies{}, true);
  }
  SECTION("STMoE") {
    using L = STMoE<F32Weight>;
    moe_grad::check<L>("STMoE", Case{.loss_scale = 30.0f}, L::Policies{}, true);
  }
  SECTION("Mixtral") {
    using L = Mixtral<F32Weight>;
    moe_grad::check<L>("Mixtral",
                       Case{.layout = moe::Layout::kOutIn,
                            .router_layout = moe::Layout::kOutIn,
                            .loss_scale = 100.0f},
                       L::Policies{});
  }
  SECTION("Grok1") {
    using L = Grok1Of<F32Weight>;
    moe_grad::check<L>("Grok1", Case{}, L::Policies{});
  }
  SECTION("DeepSeekV3") {
    using L = DeepSeekV3<F32Weight>;
    L::Policies p;
    p.balance.sequence_length = 16;
    moe_grad::check<L>("DeepSeekV3", Case{.E = 16, .Fs = 12, .loss_scale = 1000.0f}, p);
  }
  SECTION("GLaM") {
    using L = GLaM<F32Weight>;
    moe_grad::check<L>("GLaM", Case{.loss_scale = 30.0f}, L::Policies{}, true);
  }
  SECTION("SparselyGated (Shazeer et al. 2017)") {
    using L = SparselyGated<F32Weight>;
    moe_grad::check<L>("SparselyGated", Case{.E = 8, .loss_scale = 5.0f}, L::Policies{});
  }
}
