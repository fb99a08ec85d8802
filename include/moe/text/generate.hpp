// moe/text/generate.hpp: autoregressive generation with a Decoder.
//
//   auto state = model.make_state(/*capacity*/ 512, /*max_tokens*/ 64);
//   auto out = moe::generate(pool, model, state, prompt_ids,
//                            {.max_new_tokens = 32, .sampler = {.temperature = 0.8, .top_p = 0.95,
//                             .seed = 42}, .eos_id = 2},
//                            [](std::int32_t token) { print(token); });
//
// The prompt is prefilled as a batch (one forward() over all its tokens, in chunks of the
// state's max_tokens; only the last token's logits are computed), then tokens are decoded one
// at a time. Generation continues the sequence already in `state` (multi-turn), stops after
// max_new_tokens, at eos_id when >= 0 (the EOS token is reported and returned), or when the
// callback returns false. The callback is called once per generated token, as soon as it is
// sampled. Errors (bad token ids, a prompt that does not fit the cache) throw before any work.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <moe/config.hpp>
#include <moe/core/buffer.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/decoder.hpp>
#include <moe/text/sampler.hpp>

namespace moe {

struct GenerateOptions {
  std::size_t max_new_tokens = 32;
  SamplerConfig sampler{};
  /// Stop after generating this id (Grok-1: 2). Negative = never stop early (run.py).
  std::int32_t eos_id = -1;
  /// When set ([prompt_len, vocab], contiguous), receives the logits of every prompt position
  /// (e.g. to dump them); otherwise prefill computes only the last token's logits.
  MatrixView<float> prompt_logits{};
  /// Per-component timing of every forward call (optional).
  DecoderProfile* profile = nullptr;
  /// Called after every decoder layer of every forward call (see DecoderOptions::on_layer);
  /// e.g. the grok1 example releases a layer's memory-mapped expert pages there.
  std::function<void(std::size_t layer, MatrixView<const float> h)> on_layer{};
};

struct GenerateResult {
  std::vector<std::int32_t> tokens;  ///< generated ids (not the prompt)
  bool stopped_at_eos = false;
  bool stopped_by_callback = false;
  std::size_t prompt_tokens = 0;
  double prefill_seconds = 0;  ///< prompt forward passes, including the first sample
  double decode_seconds = 0;   ///< the one-token steps

  [[nodiscard]] double decode_tokens_per_second() const noexcept {
    return tokens.size() > 1 && decode_seconds > 0
               ? static_cast<double>(tokens.size() - 1) / decode_seconds
               : 0.0;
  }
  [[nodiscard]] double prefill_tokens_per_second() const noexcept {
    return prefill_seconds > 0 ? static_cast<double>(prompt_tokens) / prefill_seconds : 0.0;
  }
};

}  // namespace moe

MOE_SIMD_NAMESPACE_BEGIN

/// Runs `prompt` then generates; see the file comment. `on_token(std::int32_t)` may return void
/// or bool (false stops generation).
template <class Model, class OnToken>
GenerateResult generate(ThreadPool& pool, const Model& model, DecoderState& state,
                        std::span<const std::int32_t> prompt, const GenerateOptions& options,
                        OnToken&& on_token) {
  using Clock = std::chrono::steady_clock;
  const std::size_t V = model.vocab_size();
  if (prompt.empty()) throw ShapeError("[generate] the prompt is empty");
  for (std::size_t t = 0; t < prompt.size(); ++t) {
    if (prompt[t] < 0 || static_cast<std::size_t>(prompt[t]) >= V) {
      throw TokenError("[generate] prompt token id " + std::to_string(prompt[t]) + " at index " +
                       std::to_string(t) + " is outside the vocabulary [0, " + std::to_string(V) +
                       ")");
    }
  }
  if (options.eos_id >= 0 && static_cast<std::size_t>(options.eos_id) >= V) {
    throw ConfigError("[generate] eos_id " + std::to_string(options.eos_id) +
                      " is outside the vocabulary");
  }
  if (options.prompt_logits.data != nullptr &&
      (options.prompt_logits.rows != prompt.size() || options.prompt_logits.cols != V ||
       options.prompt_logits.stride != V)) {
    throw ShapeError("[generate] prompt_logits have shape " +
                     shape_str({options.prompt_logits.rows, options.prompt_logits.cols}) +
                     ", expected " + shape_str({prompt.size(), V}) + " (contiguous)");
  }
  // Positions needed: the prompt, plus every generated token except the last.
  const std::size_t needed =
      prompt.size() + (options.max_new_tokens > 0 ? options.max_new_tokens - 1 : 0);
  if (needed > state.capacity() - state.position()) {
    throw CapacityError("[generate] prompt (" + std::to_string(prompt.size()) + " tokens) + " +
                        std::to_string(options.max_new_tokens) + " new tokens need " +
                        std::to_string(needed) + " cache positions, " +
                        std::to_string(state.capacity() - state.position()) + " of " +
                        std::to_string(state.capacity()) + " are free");
  }
  Sampler sampler(options.sampler, V);
  Buffer<float> logits(V);
  DecoderOptions fwd;
  fwd.profile = options.profile;
  fwd.on_layer = options.on_layer;
  GenerateResult result;
  result.prompt_tokens = prompt.size();
  result.tokens.reserve(options.max_new_tokens);
  auto emit = [&](std::int32_t token) -> bool {  // true = continue
    result.tokens.push_back(token);
    bool go = true;
    if constexpr (std::is_invocable_r_v<bool, OnToken&, std::int32_t> &&
                  !std::is_void_v<std::invoke_result_t<OnToken&, std::int32_t>>) {
      go = static_cast<bool>(on_token(token));
    } else {
      on_token(token);
    }
    if (!go) result.stopped_by_callback = true;
    if (options.eos_id >= 0 && token == options.eos_id) {
      result.stopped_at_eos = true;
      go = false;
    }
    return go && result.tokens.size() < options.max_new_tokens;
  };

  // Prefill: the prompt in chunks of state.max_tokens() tokens. Only the last token's logits
  // are computed, unless options.prompt_logits asks for every prompt position.
  const bool all_rows = options.prompt_logits.data != nullptr;
  auto t0 = Clock::now();
  for (std::size_t c = 0; c < prompt.size(); c += state.max_tokens()) {
    const auto chunk = prompt.subspan(c, std::min(state.max_tokens(), prompt.size() - c));
    model.forward(pool, chunk, state,
                  all_rows ? options.prompt_logits.rows_slice(c, chunk.size())
                           : MatrixView<float>(logits.data(), 1, V),
                  fwd);
  }
  if (options.max_new_tokens == 0) {
    result.prefill_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return result;
  }
  const float* last = all_rows ? options.prompt_logits.row(prompt.size() - 1) : logits.data();
  std::int32_t token = sampler.sample(std::span<const float>(last, V));
  auto t1 = Clock::now();
  result.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  bool go = emit(token);
  t0 = Clock::now();
  while (go) {
    const std::int32_t in[1] = {token};
    model.forward(pool, std::span<const std::int32_t>(in, 1), state,
                  MatrixView<float>(logits.data(), 1, V), fwd);
    token = sampler.sample(logits.span());
    go = emit(token);
  }
  result.decode_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return result;
}

/// generate() without a callback.
template <class Model>
GenerateResult generate(ThreadPool& pool, const Model& model, DecoderState& state,
                        std::span<const std::int32_t> prompt, const GenerateOptions& options) {
  return generate(pool, model, state, prompt, options, [](std::int32_t) {});
}

MOE_SIMD_NAMESPACE_END
