// support/grok1_random_weights.hpp: random Grok-1 weights in the checkpoint's formats, for tests,
// benchmarks and examples/grok1_random.cpp. Not part of the installed library: targets get it
// by linking the CMake target moe_support (include "support/grok1_random_weights.hpp").
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include <moe/core/bf16.hpp>
#include <moe/core/buffer.hpp>
#include <moe/core/tensor.hpp>
#include <moe/models/grok1_config.hpp>
#include <moe/models/grok1_tensors.hpp>
#include <moe/ops/weights.hpp>

namespace moe::grok1 {

/// Owns random Grok-1 weights for a Config in the checkpoint's formats (int8 [in, out] with bf16
/// scales: 1 block for q/k/v and the expert gate/up projections, 8 blocks for the output and
/// down projections when `in` allows it; f32 embedding, norms, router). Scales are chosen so that
/// every projection roughly preserves the activations' scale. Deterministic for a seed.
class RandomWeights {
 public:
  explicit RandomWeights(const Config& c, std::uint64_t seed = 42) : cfg_(c) {
    c.validate();
    std::mt19937_64 rng(seed);
    const std::size_t d = c.d_model, f = c.d_ff, e = c.n_experts;
    embedding_ = normal(rng, c.vocab_size * d, 1.0 / std::sqrt(static_cast<double>(d)));
    final_norm_ = Buffer<float>(d, 1.0f);
    weights_.embedding = MatrixView<const float>(embedding_.data(), c.vocab_size, d);
    weights_.final_norm = final_norm_.span();
    layers_.resize(c.n_layers);
    weights_.layers.resize(c.n_layers);
    for (std::size_t i = 0; i < c.n_layers; ++i) {
      Layer& o = layers_[i];
      LayerWeights& l = weights_.layers[i];
      l.wq = int8(rng, o.wq, 1, d, c.q_dim(), 1);
      l.wk = int8(rng, o.wk, 1, d, c.kv_dim(), 1);
      l.wv = int8(rng, o.wv, 1, d, c.kv_dim(), 1);
      l.wo = int8(rng, o.wo, 1, c.q_dim(), d, blocks_for(c.q_dim()));
      for (std::size_t n = 0; n < 4; ++n) o.norms[n] = Buffer<float>(d, 1.0f);
      l.norm_pre_attn = o.norms[0].span();
      l.norm_post_attn = o.norms[1].span();
      l.norm_pre_moe = o.norms[2].span();
      l.norm_post_moe = o.norms[3].span();
      o.router = normal(rng, d * e, 1.0 / std::sqrt(static_cast<double>(d)));
      l.router = F32Weight{o.router.data(), d, e, Layout::kInOut};
      l.expert_gate = {int8(rng, o.gate, e, d, f, 1), e};
      l.expert_up = {int8(rng, o.up, e, d, f, 1), e};
      l.expert_down = {int8(rng, o.down, e, f, d, blocks_for(f)), e};
    }
  }
  RandomWeights(const RandomWeights&) = delete;
  RandomWeights& operator=(const RandomWeights&) = delete;
  RandomWeights(RandomWeights&&) = default;
  RandomWeights& operator=(RandomWeights&&) = default;

  [[nodiscard]] const Config& config() const noexcept { return cfg_; }
  /// The views (valid while this object lives).
  [[nodiscard]] const Weights& weights() const noexcept { return weights_; }
  /// Bytes owned.
  [[nodiscard]] std::size_t bytes() const noexcept {
    std::size_t b = (embedding_.size() + final_norm_.size()) * sizeof(float);
    for (const Layer& o : layers_) {
      for (const Quant* q : {&o.wq, &o.wk, &o.wv, &o.wo, &o.gate, &o.up, &o.down}) {
        b += q->data.size() + q->scales.size() * sizeof(bf16);
      }
      b += o.router.size() * sizeof(float) + 4 * cfg_.d_model * sizeof(float);
    }
    return b;
  }

 private:
  struct Quant {
    Buffer<std::int8_t> data;
    Buffer<bf16> scales;
  };
  struct Layer {
    Quant wq, wk, wv, wo, gate, up, down;
    Buffer<float> norms[4];
    Buffer<float> router;
  };

  static std::size_t blocks_for(std::size_t in) { return in % 8 == 0 ? 8 : 1; }

  static Buffer<float> normal(std::mt19937_64& rng, std::size_t n, double stddev) {
    Buffer<float> b(n);
    std::normal_distribution<float> nd(0.0f, static_cast<float>(stddev));
    for (auto& v : b) v = nd(rng);
    return b;
  }

  /// `count` int8 [in, out] matrices back to back with [blocks, out] bf16 scales each; returns
  /// the view of the first. Uniform int8 in [-127, 127] (std ~73.6), scales ~ 1/(73.6 sqrt(in)).
  static Int8Weight int8(std::mt19937_64& rng, Quant& q, std::size_t count, std::size_t in,
                         std::size_t out, std::size_t blocks) {
    q.data = Buffer<std::int8_t>(count * in * out);
    q.scales = Buffer<bf16>(count * blocks * out);
    std::uniform_int_distribution<int> di(-127, 127);
    for (auto& v : q.data) v = static_cast<std::int8_t>(di(rng));
    const double s = 1.0 / (73.6 * std::sqrt(static_cast<double>(in)));
    std::uniform_real_distribution<double> du(0.75 * s, 1.25 * s);
    for (auto& v : q.scales) v = bf16(static_cast<float>(du(rng)));
    return Int8Weight{q.data.data(), q.scales.data(), in, out, blocks};
  }

  Config cfg_;
  Buffer<float> embedding_, final_norm_;
  std::vector<Layer> layers_;
  Weights weights_;
};

}  // namespace moe::grok1
