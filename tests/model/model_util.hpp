// Helpers of the model tests: random attention weights and an independent float64 attention.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <moe/layers/attention.hpp>
#include <moe/layers/kv_cache.hpp>

#include "common/test_util.hpp"

namespace moe_test {

/// Owns random f32 [in, out] attention weights for a config.
struct AttentionOwner {
  std::vector<float> wq, wk, wv, wo;
  moe::AttentionWeights<moe::F32Weight> views;

  AttentionOwner(const moe::AttentionConfig& c, std::uint64_t seed, float qk_scale = 1.0f) {
    const std::size_t d = c.d_model;
    const float s_in = 1.0f / std::sqrt(static_cast<float>(d));
    wq = randn(d * c.q_dim(), seed, s_in * qk_scale);
    wk = randn(d * c.kv_dim(), seed + 1, s_in * qk_scale);
    wv = randn(d * c.kv_dim(), seed + 2, s_in);
    wo = randn(c.q_dim() * d, seed + 3, 1.0f / std::sqrt(static_cast<float>(c.q_dim())));
    views.wq = {wq.data(), d, c.q_dim(), moe::Layout::kInOut};
    views.wk = {wk.data(), d, c.kv_dim(), moe::Layout::kInOut};
    views.wv = {wv.data(), d, c.kv_dim(), moe::Layout::kInOut};
    views.wo = {wo.data(), c.q_dim(), d, moe::Layout::kInOut};
  }
};

/// Rotates one head vector v[dh] for position pos, in double (an independent RoPE).
inline void rope_ref(double* v, std::size_t dh, std::size_t rotary, std::size_t pos, double base,
                     moe::RopeLayout layout) {
  const std::size_t half = rotary / 2;
  for (std::size_t j = 0; j < half; ++j) {
    const double theta = static_cast<double>(pos) * std::pow(base, -2.0 * static_cast<double>(j) /
                                                                       static_cast<double>(rotary));
    const std::size_t a = layout == moe::RopeLayout::kHalfSplit ? j : 2 * j;
    const std::size_t b = layout == moe::RopeLayout::kHalfSplit ? j + half : 2 * j + 1;
    const double x0 = v[a], x1 = v[b];
    v[a] = x0 * std::cos(theta) - x1 * std::sin(theta);
    v[b] = x1 * std::cos(theta) + x0 * std::sin(theta);
  }
  (void)dh;
}

/// Full causal attention over x [T, D] at positions 0..T-1, float64, written from the math:
/// y = concat_h softmax_j(cap(mult * q_h . k_{h / group})) v_{h / group} . Wo.
/// When `o_out` is given it receives the per-head outputs [T, Hq*dh] before Wo.
inline std::vector<double> attention_ref(const moe::AttentionConfig& c,
                                         const moe::AttentionWeights<moe::F32Weight>& w,
                                         const float* x, std::size_t T,
                                         std::vector<double>* o_out = nullptr) {
  const std::size_t d = c.d_model, dh = c.head_dim, hq = c.n_q_heads, hkv = c.n_kv_heads;
  const std::size_t rot = c.rotary_dims ? c.rotary_dims : dh;
  auto proj = [&](const moe::F32Weight& m) {
    std::vector<double> y(T * m.out, 0.0);
    for (std::size_t t = 0; t < T; ++t) {
      for (std::size_t o = 0; o < m.out; ++o) {
        double acc = 0;
        for (std::size_t i = 0; i < m.in; ++i)
          acc += static_cast<double>(x[t * d + i]) * m.at(i, o);
        y[t * m.out + o] = acc;
      }
    }
    return y;
  };
  std::vector<double> q = proj(w.wq), k = proj(w.wk), v = proj(w.wv);
  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t h = 0; h < hq; ++h)
      rope_ref(&q[(t * hq + h) * dh], dh, rot, t, c.rope_base, c.rope_layout);
    for (std::size_t h = 0; h < hkv; ++h)
      rope_ref(&k[(t * hkv + h) * dh], dh, rot, t, c.rope_base, c.rope_layout);
  }
  const double mult =
      c.logit_multiplier > 0 ? c.logit_multiplier : 1.0 / std::sqrt(static_cast<double>(dh));
  const std::size_t group = hq / hkv;
  std::vector<double> o(T * hq * dh, 0.0);
  std::vector<double> s(T);
  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t h = 0; h < hq; ++h) {
      const std::size_t g = h / group;
      double m = -1e300;
      for (std::size_t j = 0; j <= t; ++j) {
        double acc = 0;
        for (std::size_t i = 0; i < dh; ++i)
          acc += q[(t * hq + h) * dh + i] * k[(j * hkv + g) * dh + i];
        acc *= mult;
        if (c.softcap > 0) acc = c.softcap * std::tanh(acc / c.softcap);
        s[j] = acc;
        m = std::max(m, acc);
      }
      double sum = 0;
      for (std::size_t j = 0; j <= t; ++j) sum += (s[j] = std::exp(s[j] - m));
      for (std::size_t j = 0; j <= t; ++j) {
        for (std::size_t i = 0; i < dh; ++i)
          o[(t * hq + h) * dh + i] += s[j] / sum * v[(j * hkv + g) * dh + i];
      }
    }
  }
  std::vector<double> y(T * d, 0.0);
  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t c2 = 0; c2 < d; ++c2) {
      double acc = 0;
      for (std::size_t i = 0; i < hq * dh; ++i) acc += o[t * hq * dh + i] * w.wo.at(i, c2);
      y[t * d + c2] = acc;
    }
  }
  if (o_out) *o_out = o;
  return y;
}

/// max |a| over n values.
template <class T>
double max_abs(const T* a, std::size_t n) {
  double m = 0;
  for (std::size_t i = 0; i < n; ++i) m = std::max(m, std::abs(static_cast<double>(a[i])));
  return m;
}

}  // namespace moe_test
