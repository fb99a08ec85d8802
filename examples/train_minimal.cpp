// train_minimal: the smallest complete training loop, for any MoE preset (here ST-MoE's routing
// with capacity, balance loss and z-loss, in a 2-layer decoder). It learns a short text
// character by character and prints the loss. Usage: train_minimal [steps]; exits 0 when the
// loss fell below 0.5 (ctest runs it).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <moe/layers/presets.hpp>
#include <moe/train/optimizer.hpp>
#include <moe/train/trainable.hpp>

int main(int argc, char** argv) {
  const std::string text =
      "It is a truth universally acknowledged, that a single man in possession of a good "
      "fortune, must be in want of a wife.";
  const std::size_t steps = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 150;
  const std::size_t batch = 4, seq = 32;

  using Moe = moe::presets::STMoE<moe::F32Weight>;  // any preset over f32 weights
  moe::TrainableConfig cfg;
  cfg.decoder.vocab_size = 128;  // bytes of ASCII text
  cfg.decoder.d_model = 64;
  cfg.attention.n_q_heads = 4;
  cfg.attention.n_kv_heads = 2;
  cfg.attention.head_dim = 16;
  cfg.n_layers = 2;
  cfg.n_experts = 4;
  cfg.d_ff = 64;
  Moe::Policies policies;  // the preset's values; change one field, keep the rest
  policies.capacity.train = 2.0;
  moe::TrainableDecoder<Moe> net(cfg, policies, /*seed=*/1);

  moe::ThreadPool pool(2);
  auto state = net.model().make_training_state(batch, seq);
  moe::AdamW opt(net.parameters().n_elements(), {.beta2 = 0.99f, .weight_decay = 0.01f});
  const moe::LrSchedule lr{.lr = 3e-3f, .min_lr = 3e-4f, .warmup_steps = 10, .total_steps = steps};
  std::vector<std::int32_t> tokens(batch * seq), targets(batch * seq);
  float loss = 0.0f;
  for (std::size_t step = 1; step <= steps; ++step) {
    for (std::size_t b = 0; b < batch; ++b) {  // B windows of the text, shifted by one
      const std::size_t start = (step * 7 + b * 29) % (text.size() - seq - 1);
      for (std::size_t t = 0; t < seq; ++t) {
        tokens[b * seq + t] = static_cast<unsigned char>(text[start + t]);
        targets[b * seq + t] = static_cast<unsigned char>(text[start + t + 1]);
      }
    }
    net.parameters().zero_grads();
    const moe::TrainingLoss l =
        net.model().forward_train(pool, tokens, targets, state, {.step = step});
    net.model().backward(pool, state, net.grads());
    moe::clip_grad_norm(pool, net.parameters(), 1.0);
    opt.step(pool, net.parameters(), lr(step));
    loss = l.ce;
    if (step % 25 == 0 || step == 1) {
      std::printf("step %4zu  cross-entropy %.3f  aux %.4f\n", step, l.ce, l.aux);
    }
  }
  return loss < 0.5f ? 0 : 1;
}
