// The model the `train` example trains, behind a small interface, and its stand-in.
//
// The trainer (train.hpp) needs four things from a model: its parameters (a ParameterStore, which
// the optimizer updates and the training checkpoint saves), a training step (forward + backward
// on a batch, adding the gradients to the store and returning the loss and the per-layer expert
// load), a validation loss, and views of its weights in Grok-1's layout for the export.
//
// BigramStandIn is a placeholder until the decoder's backward pass lands: a Grok-1 model whose
// decoder layers are all zero, so that only the tied embedding and the final norm act:
//
//   h = E[x] * embedding_multiplier,   logits = (RMSNorm(h) * g) . E^T * output_multiplier
//
// That is a bigram model (the next token from the current one), trained for real: cross-entropy
// over the vocabulary, backward written out below, AdamW over the store. Because zero layers are
// an exact identity in Grok-1's forward pass (every attention and expert output is 0, and
// RMSNorm(0) = 0), the export of this model runs in the `grok1` binary and gives the same logits
// as training saw, up to the int8 rounding of nothing (the layers are zero) -- the tests use that
// to check the whole chain. The lead replaces it with the MoE decoder (make_model below).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <moe/core/buffer.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/models/grok1.hpp>
#include <moe/ops/matmul.hpp>
#include <moe/ops/matmul_grad.hpp>
#include <moe/ops/norm.hpp>
#include <moe/ops/vector.hpp>
#include <moe/text/corpus.hpp>
#include <moe/train/parameters.hpp>

namespace train_example {

/// What one training step reports.
struct StepStats {
  double loss = 0;  ///< mean cross-entropy (nats) over the batch's B*T targets
  /// Per MoE layer, the fraction of routed (token, expert) pairs each expert received; empty for
  /// a model without MoE layers.
  std::vector<std::vector<double>> expert_load;
};

class Model {
 public:
  virtual ~Model() = default;
  /// Short name, stored in the training checkpoint (a resume must use the same model).
  [[nodiscard]] virtual std::string name() const = 0;
  /// Every trainable tensor. The trainer zeroes the gradients, calls train_step, clips, steps.
  virtual moe::ParameterStore& parameters() = 0;
  /// Forward and backward on `batch`: ADDS dL/dtheta to parameters().grads(), where L is the
  /// mean cross-entropy over the batch's targets. Deterministic for every thread count.
  virtual StepStats train_step(moe::ThreadPool& pool, const moe::Batch& batch) = 0;
  /// The mean cross-entropy over `batch` (no gradients).
  virtual double loss(moe::ThreadPool& pool, const moe::Batch& batch) = 0;
  /// The weights as Grok-1 views, for the export (valid while the model lives).
  [[nodiscard]] virtual moe::grok1::WeightsT<moe::F32Weight> grok1_weights() const = 0;
};

/// Mean over rows of -log softmax(logits[r])[target[r]]; with `grad`, also writes
/// (softmax - onehot) * grad_scale into logits (in place). Rows run in parallel; the sum is taken
/// in row order (deterministic).
inline double cross_entropy(moe::ThreadPool& pool, moe::MatrixView<float> logits,
                            std::span<const std::int32_t> targets, bool grad, float grad_scale,
                            std::vector<double>& row_loss) {
  const std::size_t n = logits.rows, v = logits.cols;
  row_loss.resize(n);
  constexpr std::size_t kRows = 16;
  pool.parallel_for((n + kRows - 1) / kRows, [&](std::size_t task, std::size_t) {
    for (std::size_t r = task * kRows; r < std::min(n, (task + 1) * kRows); ++r) {
      float* z = logits.row(r);
      const float zmax = *std::max_element(z, z + v);
      double sum = 0;
      for (std::size_t i = 0; i < v; ++i) sum += std::exp(static_cast<double>(z[i] - zmax));
      const double lse = static_cast<double>(zmax) + std::log(sum);
      const std::size_t t = static_cast<std::size_t>(targets[r]);
      row_loss[r] = lse - static_cast<double>(z[t]);
      if (grad) {
        for (std::size_t i = 0; i < v; ++i) {
          z[i] = static_cast<float>(std::exp(static_cast<double>(z[i]) - lse)) * grad_scale;
        }
        z[t] -= grad_scale;
      }
    }
  });
  double total = 0;
  for (double l : row_loss) total += l;
  return total / static_cast<double>(n);
}

class BigramStandIn final : public Model {
 public:
  BigramStandIn(const moe::grok1::Config& c, std::uint64_t seed) : cfg_(c) {
    c.validate();
    const std::size_t V = c.vocab_size, D = c.d_model;
    emb_ = store_.add("language_model/in_out_embed/embeddings", {V, D});
    norm_ = store_.add("language_model/rms_norm/scale", {D}, /*decay=*/false);
    store_.allocate();
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(static_cast<float>(D)));
    for (float& x : store_.param(emb_)) x = normal(rng);
    for (float& x : store_.param(norm_)) x = 1.0f;
    // The decoder layers of the export: zero weights (an identity), unit norm scales.
    const std::size_t biggest =
        std::max({c.n_experts * D * c.d_ff, D * c.q_dim(), c.q_dim() * D, D * c.n_experts});
    zeros_ = moe::Buffer<float>(biggest, 0.0f);
    ones_ = moe::Buffer<float>(D, 1.0f);
  }

  [[nodiscard]] std::string name() const override { return "bigram-standin"; }
  moe::ParameterStore& parameters() override { return store_; }

  StepStats train_step(moe::ThreadPool& pool, const moe::Batch& batch) override {
    StepStats s;
    s.loss = run(pool, batch, true);
    return s;
  }
  double loss(moe::ThreadPool& pool, const moe::Batch& batch) override {
    return run(pool, batch, false);
  }

  [[nodiscard]] moe::grok1::WeightsT<moe::F32Weight> grok1_weights() const override {
    const moe::grok1::Config& c = cfg_;
    const std::size_t D = c.d_model;
    moe::grok1::WeightsT<moe::F32Weight> w;
    w.embedding = store_.matrix(emb_);
    w.final_norm = store_.param(norm_);
    auto zero = [&](std::size_t in, std::size_t out) {
      return moe::F32Weight{zeros_.data(), in, out, moe::Layout::kInOut};
    };
    w.layers.resize(c.n_layers);
    for (auto& l : w.layers) {
      l.wq = zero(D, c.q_dim());
      l.wk = zero(D, c.kv_dim());
      l.wv = zero(D, c.kv_dim());
      l.wo = zero(c.q_dim(), D);
      l.norm_pre_attn = l.norm_post_attn = l.norm_pre_moe = l.norm_post_moe = ones_.span();
      l.router = zero(D, c.n_experts);
      l.expert_gate = {zero(D, c.d_ff), c.n_experts};
      l.expert_up = {zero(D, c.d_ff), c.n_experts};
      l.expert_down = {zero(c.d_ff, D), c.n_experts};
    }
    return w;
  }

 private:
  // Forward (and backward) on every input token of the batch at once: N = B*T rows.
  double run(moe::ThreadPool& pool, const moe::Batch& batch, bool train) {
    const std::size_t N = batch.n_tokens(), D = cfg_.d_model, V = cfg_.vocab_size;
    inputs_.resize(N);
    targets_.resize(N);
    for (std::size_t b = 0; b < batch.batch; ++b) {
      std::copy_n(batch.inputs(b).data(), batch.seq, inputs_.begin() + b * batch.seq);
      std::copy_n(batch.targets(b).data(), batch.seq, targets_.begin() + b * batch.seq);
    }
    for (std::int32_t t : batch.tokens) {
      if (t < 0 || static_cast<std::size_t>(t) >= V) {
        throw moe::TokenError("[train] token id " + std::to_string(t) +
                              " is outside the model's vocabulary [0, " + std::to_string(V) + ")");
      }
    }
    grow(h_, N * D);
    grow(hn_, N * D);
    grow(logits_, N * V);
    const float* E = store_.param(emb_).data();
    const float* g = store_.param(norm_).data();
    const auto emul = static_cast<float>(cfg_.embedding_multiplier);
    const auto omul = static_cast<float>(cfg_.output_multiplier);
    const auto eps = static_cast<float>(cfg_.rms_eps);
    // The same operations, in the same order, as moe::Decoder's forward pass.
    for (std::size_t n = 0; n < N; ++n) {
      const float* e = E + static_cast<std::size_t>(inputs_[n]) * D;
      for (std::size_t i = 0; i < D; ++i) h_[n * D + i] = e[i] * emul;
      moe::rms_norm(h_.data() + n * D, g, hn_.data() + n * D, D, eps);
    }
    const moe::F32Weight tied{E, D, V, moe::Layout::kOutIn};
    moe::MatrixView<float> logits(logits_.data(), N, V);
    moe::matmul(pool, moe::MatrixView<const float>(hn_.data(), N, D), tied, logits);
    if (omul != 1.0f) {
      for (std::size_t n = 0; n < N; ++n) moe::scale(logits.row(n), V, omul);
    }
    // dL/dz for z = hn . E^T: (softmax - onehot) / N * output_multiplier.
    const double loss =
        cross_entropy(pool, logits, targets_, train, omul / static_cast<float>(N), row_loss_);
    if (!train) return loss;

    // Head: dE += dz^T . hn (the tied weight's [out, in] gradient), dhn = dz . E.
    moe::WeightGrad gE{store_.grad(emb_).data(), D, V, moe::Layout::kOutIn};
    const moe::MatrixView<const float> dz(logits_.data(), N, V);
    moe::matmul_backward_weight(pool, moe::MatrixView<const float>(hn_.data(), N, D), dz, gE);
    grow(dhn_, N * D);
    std::fill_n(dhn_.data(), N * D, 0.0f);
    moe::matmul_backward_input(pool, dz, tied, moe::MatrixView<float>(dhn_.data(), N, D));
    // Final RMSNorm, y = g * x * r with r = 1/sqrt(mean(x^2) + eps):
    //   dg += dy * x * r,   dx = r * (g dy - x r^2 mean(g dy * x)).
    float* dg = store_.grad(norm_).data();
    float* dE = store_.grad(emb_).data();
    std::vector<double> dg_acc(D, 0.0);
    for (std::size_t n = 0; n < N; ++n) {
      const float* x = h_.data() + n * D;
      const float* dy = dhn_.data() + n * D;
      double ss = 0;
      for (std::size_t i = 0; i < D; ++i) ss += static_cast<double>(x[i]) * x[i];
      const double r = 1.0 / std::sqrt(ss / static_cast<double>(D) + eps);
      double dot = 0;
      for (std::size_t i = 0; i < D; ++i) dot += static_cast<double>(g[i]) * dy[i] * x[i];
      const double c = r * r * dot / static_cast<double>(D);
      float* de = dE + static_cast<std::size_t>(inputs_[n]) * D;
      for (std::size_t i = 0; i < D; ++i) {
        dg_acc[i] += static_cast<double>(dy[i]) * x[i] * r;
        const double dx = r * (static_cast<double>(g[i]) * dy[i] - x[i] * c);
        de[i] += static_cast<float>(dx * emul);  // embedding lookup: scatter-add, in token order
      }
    }
    for (std::size_t i = 0; i < D; ++i) dg[i] += static_cast<float>(dg_acc[i]);
    return loss;
  }

  static void grow(moe::Buffer<float>& b, std::size_t n) {
    if (b.size() < n) b = moe::Buffer<float>(n);
  }

  moe::grok1::Config cfg_;
  moe::ParameterStore store_;
  moe::ParameterStore::Id emb_ = 0, norm_ = 0;
  moe::Buffer<float> zeros_, ones_;
  std::vector<std::int32_t> inputs_, targets_;
  std::vector<double> row_loss_;
  moe::Buffer<float> h_, hn_, logits_, dhn_;
};

/// The models the example can train (--model NAME).
inline std::unique_ptr<Model> make_model(const std::string& name, const moe::grok1::Config& c,
                                         std::uint64_t seed) {
  if (name == "bigram-standin") return std::make_unique<BigramStandIn>(c, seed);
  throw moe::ConfigError("[train] unknown model '" + name + "' (known: bigram-standin)");
}

}  // namespace train_example
