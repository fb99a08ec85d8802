// moe/layers/presets.hpp: MoE layers of published models, as type aliases pinning every switch.
//
// Each preset is an alias template over the expert weight type W (and the router weight type,
// f32 by default: routers are kept in f32 everywhere, as Switch Transformer recommends). Every
// semantic switch and coefficient is pinned in the type with Pinned<value>; docs/policies.md has
// the table of preset x setting x source. The pinned values are defaults; change one through the
// layer's Policies record and the others keep the preset's values:
//
//   moe::presets::Grok1 grok(router, gate, up, down);  // F32Weight [D, E], WeightStack<Int8Weight>
//
//   using M = moe::presets::Mixtral<moe::BF16Weight>;
//   M::Policies p;
//   p.balance.coef = 1e-2f;  // counting stays the preset's kAllChoices
//   const M mixtral({.router = wr, .gate = w1, .up = w3, .down = w2}, p);
#pragma once

#include <moe/config.hpp>
#include <moe/layers/expert.hpp>
#include <moe/layers/moe_layer.hpp>
#include <moe/layers/policies.hpp>
#include <moe/layers/router.hpp>
#include <moe/ops/activation.hpp>
#include <moe/ops/weights.hpp>

MOE_SIMD_NAMESPACE_BEGIN

namespace presets {

/// Switch Transformer (Fedus et al.; mesh-tf / flaxformer / HF Switch): top-1 softmax, raw
/// probability as weight, cf 1.25 train / 2.0 eval, min capacity 4, position priority, balance
/// loss 1e-2 on top-1 counts (value 1 at balance), z-loss 1e-3, jitter 1e-2. Experts: gated GELU
/// (tanh), as in T5.1.1-based flaxformer checkpoints.
template <class W, class RouterW = F32Weight>
using Switch = MoELayer<
    Router<RouterW, Pinned<Routing{.top_k = 1, .score = ScoreFn::kSoftmax, .renormalize = false}>,
           Pinned<Jitter{.eps = 1e-2f}>>,
    Expert<W, Activation::kGeluTanh>,
    Pinned<CapacityFactor{.train = 1.25,
                          .eval = 2.0,
                          .multiply_by_k = true,
                          .min_capacity = 4,
                          .priority = DropPriority::kPosition,
                          .renorm = RenormTiming::kBeforeDrop}>,
    Pinned<LoadBalanceLoss{.coef = 1e-2f, .counting = BalanceCounting::kTop1}>,
    Pinned<RouterZLoss{.coef = 1e-3f}>>;

/// GShard top-2 (Lepikhin et al.; mesh-tf _top_2_gating): softmax, g1, g2 renormalised BEFORE
/// dropping, capacity 2T/E (cf 1 with k), position priority (all first choices first), second
/// expert kept at random with probability min(1, g2 / 0.2) in training, balance loss 1e-2 on
/// top-1 counts, no z-loss.
template <class W, class RouterW = F32Weight>
using GShardTop2 = MoELayer<
    Router<RouterW, Pinned<Routing{.top_k = 2, .score = ScoreFn::kSoftmax, .renormalize = true}>,
           Pinned<RandomSecondExpert{.threshold = 0.2f}>>,
    Expert<W, Activation::kGeluTanh>,
    Pinned<CapacityFactor{.train = 1.0,
                          .eval = 1.0,
                          .multiply_by_k = true,
                          .min_capacity = 0,
                          .priority = DropPriority::kPosition,
                          .renorm = RenormTiming::kBeforeDrop}>,
    Pinned<LoadBalanceLoss{.coef = 1e-2f, .counting = BalanceCounting::kTop1}>, NoZLoss>;

/// ST-MoE (Zoph et al.; flaxformer st_moe gin): top-2 softmax, raw probabilities (no
/// renormalisation), cf 1.25 / 2.0 NOT multiplied by k, min capacity 4, position priority,
/// balance loss 1e-2 counting all k choices (value k = 2 at balance, flaxformer), z-loss 1e-3.
template <class W, class RouterW = F32Weight>
using STMoE = MoELayer<
    Router<RouterW, Pinned<Routing{.top_k = 2, .score = ScoreFn::kSoftmax, .renormalize = false}>>,
    Expert<W, Activation::kGeluTanh>,
    Pinned<CapacityFactor{.train = 1.25,
                          .eval = 2.0,
                          .multiply_by_k = false,
                          .min_capacity = 4,
                          .priority = DropPriority::kPosition,
                          .renorm = RenormTiming::kBeforeDrop}>,
    Pinned<LoadBalanceLoss{.coef = 1e-2f, .counting = BalanceCounting::kAllChoices}>,
    Pinned<RouterZLoss{.coef = 1e-3f}>>;

/// Mixtral 8x7B (mistral-inference, HF MixtralSparseMoeBlock): top-2 of softmax renormalised
/// (= softmax of the top-2 logits), dropless, SiLU experts, HF's balance loss 1e-3 counting all k
/// choices (value k at balance), no z-loss, no jitter.
template <class W, class RouterW = F32Weight>
using Mixtral = MoELayer<
    Router<RouterW, Pinned<Routing{.top_k = 2, .score = ScoreFn::kSoftmax, .renormalize = true}>>,
    Expert<W, Activation::kSilu>, Dropless,
    Pinned<LoadBalanceLoss{.coef = 1e-3f, .counting = BalanceCounting::kAllChoices}>, NoZLoss>;

/// Grok-1 (xai-org/grok-1 model.py): f32 router, softmax over all 8 experts, top-2 with the RAW
/// probabilities as gates (not renormalised), dropless, GELU-tanh experts, no losses or noise
/// (an inference model). Template over the expert weight type for tests; Grok1 is the file's
/// int8 layout.
template <class W, class RouterW = F32Weight>
using Grok1Of = MoELayer<
    Router<RouterW, Pinned<Routing{.top_k = 2, .score = ScoreFn::kSoftmax, .renormalize = false}>>,
    Expert<W, Activation::kGeluTanh>, Dropless, NoBalanceLoss, NoZLoss>;
using Grok1 = Grok1Of<Int8Weight>;

/// DeepSeek-V3 (inference/model.py Gate, V3 report): sigmoid scores, selection bias (aux-loss-free
/// balancing, see AuxFreeBias), 8 groups keep the top 4 by the sum of their two best biased
/// scores, top-8, renormalised, route scale 2.5, dropless, one shared SiLU expert, sequence-wise
/// balance loss 1e-4 (set LoadBalanceLoss::sequence_length to the sequence length when a call
/// holds several sequences). Needs E divisible by 8 with >= 2 experts per group (V3: E = 256).
template <class W, class RouterW = F32Weight>
using DeepSeekV3 = MoELayer<
    Router<RouterW, Pinned<Routing{.top_k = 8,
                                   .score = ScoreFn::kSigmoid,
                                   .renormalize = true,
                                   .route_scale = 2.5f,
                                   .selection_bias = true,
                                   .n_group = 8,
                                   .topk_group = 4,
                                   .group_score = GroupScore::kTop2Sum}>>,
    Expert<W, Activation::kSilu>, Dropless,
    Pinned<LoadBalanceLoss{.coef = 1e-4f, .counting = BalanceCounting::kAllChoicesNormalized}>,
    NoZLoss, GatedFfn<W, Activation::kSilu>>;

/// GLaM (Du et al. 2022, "GLaM: Efficient Scaling of Language Models with Mixture-of-Experts";
/// public code: google/praxis layers/glam.py and gshard_utils.top2_gating_on_logits, paxml's
/// GLaM configs): GShard-style top-2 of the softmax, both gates renormalised BEFORE capacity
/// (legacy mesh-tf order), every second expert kept (second_expert_policy "all"), capacity
/// factor 2 over the group without k (C = 2T / E), position priority, balance loss 1e-2 on top-1
/// counts, no router z-loss (GLaM's z-loss 1e-4 is on the output softmax), gated GELU (tanh)
/// experts. GLaM uses 64 experts and an MoE layer in every other block (the decoder's choice).
template <class W, class RouterW = F32Weight>
using GLaM = MoELayer<
    Router<RouterW, Pinned<Routing{.top_k = 2, .score = ScoreFn::kSoftmax, .renormalize = true}>>,
    Expert<W, Activation::kGeluTanh>,
    Pinned<CapacityFactor{.train = 2.0,
                          .eval = 2.0,
                          .multiply_by_k = false,
                          .min_capacity = 0,
                          .priority = DropPriority::kPosition,
                          .renorm = RenormTiming::kBeforeDrop}>,
    Pinned<LoadBalanceLoss{.coef = 1e-2f, .counting = BalanceCounting::kTop1}>, NoZLoss>;

/// The sparsely-gated MoE of Shazeer et al. 2017 ("Outrageously Large Neural Networks"; public
/// code: tensor2tensor utils/expert_utils.py): noisy top-k gating H = x W_g + N(0, 1) *
/// (softplus(x W_noise) + 1e-2) in training, softmax over the kept top-k of H (k = 4, the paper's
/// flat language models), no capacity limit, the importance and load losses with w = 0.1 each.
/// Build it with the noise weight: `{.router = wg, .noise = wn, .gate = ..., ...}` (Weights). The
/// paper's experts are ReLU feed-forward networks; a gated GELU expert stands in for them.
template <class W, class RouterW = F32Weight>
using SparselyGated =
    MoELayer<Router<RouterW, Pinned<Routing{.top_k = 4, .score = ScoreFn::kSoftmaxOfSelected}>,
                    Pinned<NoisyTopK{.noise_epsilon = 1e-2f}>>,
             Expert<W, Activation::kGeluTanh>, Dropless,
             Pinned<ImportanceLoadLoss{.w_importance = 0.1f, .w_load = 0.1f}>, NoZLoss>;

}  // namespace presets

MOE_SIMD_NAMESPACE_END
