// examples/grok1/perplexity.hpp: grok1's --activations and --perplexity modes.
//
//   Activations: which products the int8 matrices use. kExact (default) dequantises the weights
//   and multiplies in f32; kInt8 runs the same checkpoint through moe::grok1::int8_activations
//   (attention projections and experts as Int8ActWeight: activations quantised per token and
//   block, VNNI products; the router, norms and tied head stay f32).
//
//   perplexity(pool, model, ids, window, ...): mean next-token cross-entropy over a token stream.
//   Steps:
//     1. cut: windows of `window` + 1 consecutive ids that overlap by one (window w holds
//        ids[w * window .. w * window + window]); the last one may be shorter (at least 2 ids).
//        Every id but the first is predicted exactly once, from the ids before it in its window.
//     2. forward: each window from an empty KV cache (no BOS, as the model was trained), the
//        logits of every position.
//     3. score: -log softmax(logits[t])[ids[t + 1]] in double, summed over all windows.
//   The text is tokenised as examples/train does (moe::tokenize_corpus: each line encoded on its
//   own, followed by the newline piece), so the figure is comparable with train's validation
//   loss.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/decoder.hpp>

#include "../common/cli.hpp"

namespace grok1_example {

enum class Activations { kExact, kInt8 };

inline Activations parse_activations(std::string_view s) {
  if (s == "exact") return Activations::kExact;
  if (s == "int8") return Activations::kInt8;
  throw examples::UsageError("--activations must be exact or int8, not '" + std::string(s) + "'");
}

inline const char* activations_name(Activations a) {
  return a == Activations::kInt8 ? "int8" : "exact";
}

struct PerplexityResult {
  std::size_t n_ids = 0;        ///< tokens in the stream
  std::size_t n_predicted = 0;  ///< targets scored (n_ids - 1)
  std::size_t n_windows = 0;
  std::size_t window = 0;         ///< inputs per window (the last may have fewer)
  double mean_cross_entropy = 0;  ///< nats per predicted token
  double seconds = 0;

  [[nodiscard]] double perplexity() const { return std::exp(mean_cross_entropy); }
  [[nodiscard]] double tokens_per_second() const {
    return seconds > 0 ? static_cast<double>(n_predicted) / seconds : 0.0;
  }
};

namespace detail {

/// -log softmax(row)[target], in double.
inline double cross_entropy(std::span<const float> row, std::int32_t target) {
  double m = -INFINITY;
  for (float v : row) m = std::max(m, static_cast<double>(v));
  double sum = 0;
  for (float v : row) sum += std::exp(static_cast<double>(v) - m);
  return std::log(sum) + m - static_cast<double>(row[static_cast<std::size_t>(target)]);
}

}  // namespace detail

/// Progress callback: (windows done, windows in all).
using PerplexityProgress = std::function<void(std::size_t, std::size_t)>;

/// Mean next-token cross-entropy of `model` over `ids` (see the file comment). `on_layer` is
/// passed to every forward call (the weight residency's hook).
template <class Model>
PerplexityResult perplexity(
    moe::ThreadPool& pool, const Model& model, std::span<const std::int32_t> ids,
    std::size_t window, std::size_t vocab, const PerplexityProgress& progress = {},
    std::function<void(std::size_t, moe::MatrixView<const float>)> on_layer = {}) {
  if (window == 0) throw moe::ConfigError("[grok1] perplexity window must be > 0");
  if (ids.size() < 2) {
    throw moe::ConfigError("[grok1] the perplexity text encodes to " + std::to_string(ids.size()) +
                           " token(s): at least 2 are needed to predict one");
  }
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || static_cast<std::size_t>(ids[i]) >= vocab) {
      throw moe::TokenError(
          "[grok1] token id " + std::to_string(ids[i]) + " at index " + std::to_string(i) +
          " of the perplexity text is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    }
  }
  const auto t0 = examples::Clock::now();
  PerplexityResult r;
  r.n_ids = ids.size();
  r.n_predicted = ids.size() - 1;
  r.window = window;
  r.n_windows = (r.n_predicted + window - 1) / window;
  moe::DecoderState state = model.make_state(window, window);
  std::vector<float> logits(window * vocab);
  moe::DecoderOptions options;
  options.on_layer = std::move(on_layer);
  double sum = 0;
  for (std::size_t w = 0; w < r.n_windows; ++w) {
    const std::size_t start = w * window;
    const std::size_t n = std::min(window, r.n_predicted - start);  // inputs of this window
    state.reset();
    model.forward(pool, ids.subspan(start, n), state, {logits.data(), n, vocab}, options);
    for (std::size_t t = 0; t < n; ++t) {
      sum += detail::cross_entropy({logits.data() + t * vocab, vocab}, ids[start + t + 1]);
    }
    if (progress) progress(w + 1, r.n_windows);
  }
  r.mean_cross_entropy = sum / static_cast<double>(r.n_predicted);
  r.seconds = examples::seconds_since(t0);
  return r;
}

}  // namespace grok1_example
