// grok1_random: a Grok-1-shaped decoder with random int8 weights, built from moe's components,
// generating a few tokens.
//
//   grok1_random [n_tokens] [temperature]
//
// The structure is exactly Grok-1's (sandwich RMSNorms, GQA, half-split RoPE, soft-capped
// attention logits, an 8-expert top-2 MoE with un-renormalised gates and GELU experts, embedding
// and output multipliers, tied head), at grok1::Config::demo()'s small dimensions. The weights
// are random, so the tokens are meaningless; the point is the few lines that build the model.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <moe/layers/attention.hpp>
#include <moe/layers/decoder.hpp>
#include <moe/layers/presets.hpp>
#include <moe/layers/transformer_block.hpp>
#include <moe/models/grok1.hpp>
#include <moe/text/generate.hpp>

#include "support/grok1_random_weights.hpp"

int main(int argc, char** argv) {
  const std::size_t n_tokens = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 16;
  const double temperature = argc > 2 ? std::atof(argv[2]) : 0.0;

  // 1. A configuration and weights in the checkpoint's formats (int8 + bf16 scales, f32).
  const moe::grok1::Config cfg = moe::grok1::Config::demo();
  const moe::grok1::RandomWeights random(cfg, /*seed*/ 42);
  const moe::grok1::Weights& w = random.weights();  // views; a checkpoint loader fills the same

  // 2. The decoder, composed by hand from the generic components (grok1::make_model(cfg, w)
  //    does exactly this).
  using Attention = moe::RotaryAttention<moe::Int8Weight>;
  using Moe = moe::presets::Grok1;  // router f32, top-2 raw gates, GELU-tanh int8 experts
  using Block = moe::TransformerBlock<Attention, Moe>;
  std::vector<Block> blocks;
  for (const moe::grok1::LayerWeights& l : w.layers) {
    blocks.emplace_back(
        Attention(moe::grok1::attention_config(cfg), {l.wq, l.wk, l.wv, l.wo}),
        Moe(l.router, l.expert_gate, l.expert_up, l.expert_down),
        moe::BlockNorms{l.norm_pre_attn, l.norm_post_attn, l.norm_pre_moe, l.norm_post_moe},
        moe::BlockConfig{moe::NormPlacement::kSandwich, cfg.rms_eps});
  }
  const moe::Decoder<Block> model(moe::grok1::decoder_config(cfg), w.embedding, std::move(blocks),
                                  w.final_norm);

  // 3. Generate: the prompt is prefilled as one batch, then one token per step.
  moe::ThreadPool pool;  // all cores
  moe::DecoderState state = model.make_state(/*capacity*/ 256, /*max_tokens*/ 64);
  const std::vector<std::int32_t> prompt = {325, 1000, 17, 512, 88, 901, 4, 42};
  std::printf(
      "Grok-1-shaped decoder: %zu layers, D %zu, %zu/%zu heads, %zu experts (top-%zu), "
      "F %zu, vocab %zu, %.1f MB of weights, %s\n",
      cfg.n_layers, cfg.d_model, cfg.n_q_heads, cfg.n_kv_heads, cfg.n_experts, cfg.top_k, cfg.d_ff,
      cfg.vocab_size, static_cast<double>(random.bytes()) * 1e-6, moe::simd_abi_name());
  std::printf("prompt:");
  for (auto t : prompt) std::printf(" %d", t);
  std::printf("\ngenerated:");
  moe::GenerateOptions opts;
  opts.max_new_tokens = n_tokens;
  opts.sampler = {.temperature = temperature, .top_p = 0.95, .seed = 42};
  opts.eos_id = cfg.eos_id;
  const moe::GenerateResult r = moe::generate(pool, model, state, prompt, opts, [](std::int32_t t) {
    std::printf(" %d", t);
    std::fflush(stdout);
  });
  std::printf("\n%zu tokens%s; prefill %.1f tok/s, decode %.1f tok/s (%zu threads)\n",
              r.tokens.size(), r.stopped_at_eos ? " (stopped at EOS)" : "",
              r.prefill_tokens_per_second(), r.decode_tokens_per_second(), pool.size());

  // The same model from the one-line builder gives the same first token.
  const moe::grok1::Model same = moe::grok1::make_model(cfg, w);
  moe::DecoderState s2 = same.make_state(64, 64);
  std::vector<float> logits(cfg.vocab_size);
  same.forward(pool, prompt, s2, moe::MatrixView<float>(logits.data(), 1, cfg.vocab_size));
  const bool ok = temperature > 0 || r.tokens.empty() || moe::argmax(logits) == r.tokens[0];
  return ok ? 0 : 1;
}
