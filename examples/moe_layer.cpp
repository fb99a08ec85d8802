// Compose a custom MoE layer: f32 top-2 softmax router, SiLU experts, a capacity factor, the
// load-balancing loss and the router z-loss; run it in training and inference mode.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <moe/layers/moe_layer.hpp>

int main() {
  const std::size_t D = 64, F = 128, E = 8, T = 48;
  std::mt19937 rng(42);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto randn = [&](std::size_t n, float sd) {
    std::vector<float> v(n);
    for (auto& x : v) x = sd * nd(rng);
    return v;
  };
  // Weights are views: router [D, E]; experts stacked gate/up [E, D, F], down [E, F, D].
  auto wr = randn(D * E, 0.3f), wg = randn(E * D * F, 0.1f), wu = randn(E * D * F, 0.1f),
       wd = randn(E * F * D, 0.1f), x = randn(T * D, 1.0f);
  std::vector<float> y(T * D);

  using Router = moe::Router<moe::F32Weight>;  // policy types choose the code paths...
  using Layer = moe::MoELayer<Router, moe::Expert<moe::F32Weight, moe::Activation::kSilu>,
                              moe::CapacityFactor, moe::LoadBalanceLoss, moe::RouterZLoss>;
  const Layer layer(  // ...policy values carry the numbers
      Router({wr.data(), D, E}, {.top_k = 2, .renormalize = true}),
      {{{wg.data(), D, F}, E}, {{wu.data(), D, F}, E}, {{wd.data(), F, D}, E}},
      moe::CapacityFactor{.train = 1.0, .eval = 2.0, .min_capacity = 4},
      moe::LoadBalanceLoss{.coef = 1e-2f}, moe::RouterZLoss{.coef = 1e-3f});

  moe::ThreadPool pool(2);
  moe::Arena arena(layer.workspace_bytes(T));  // all scratch, reserved once
  std::printf("MoE layer: D=%zu F=%zu E=%zu top-%zu, %zu tokens, workspace %zu bytes\n", D, F, E,
              layer.top_k(), T, arena.capacity());
  for (bool training : {true, false}) {
    const moe::ForwardOptions opts{.training = training, .step = 0};
    const moe::MoEResult r = layer.forward(pool, {x.data(), T, D}, {y.data(), T, D}, arena, opts);
    const auto& s = r.stats;
    std::printf("\n%s (capacity factor %.2f): capacity C = %zu per expert\n",
                training ? "training" : "inference", training ? 1.0 : 2.0, s.capacity);
    std::printf("  tokens per expert:");
    for (std::size_t e = 0; e < E; ++e) std::printf(" %u", s.tokens_per_expert[e]);
    std::printf("\n  dropped %zu of %zu (token, expert) pairs (%.1f%%)\n", s.dropped, s.assignments,
                100.0 * s.dropped_fraction);
    std::printf("  router entropy %.3f nats (uniform: %.3f), mean top-1 probability %.3f\n",
                s.router_entropy, std::log(double(E)), s.mean_top1_prob);
    std::printf("  load-balance loss %.4f (1 = perfect) x 1e-2 = %.6f\n", r.losses.load_balance,
                r.losses.load_balance_weighted);
    std::printf("  router z-loss     %.4f x 1e-3 = %.6f\n", r.losses.z_loss,
                r.losses.z_loss_weighted);
    std::printf("  add to the training loss: %.6f; y[0][0..2] = %.4f %.4f %.4f\n", r.losses.total(),
                y[0], y[1], y[2]);
  }
}
