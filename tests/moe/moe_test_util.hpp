// Helpers shared by the test_moe files: owned random weights, a float64 reference MoE.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <random>
#include <tuple>
#include <vector>

#include <moe/core/arena.hpp>
#include <moe/core/bf16.hpp>
#include <moe/core/buffer.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/router.hpp>
#include <moe/ops/activation.hpp>
#include <moe/ops/weights.hpp>

#include "common/test_util.hpp"
#include "reference/ops_ref.hpp"

namespace moe_test {

/// Owned dense [E, in, out] (kInOut) or [E, out, in] (kOutIn) weights, values ~ N(0, sd).
template <class T>
struct DenseStack {
  moe::Buffer<T> data;
  std::size_t experts = 0, in = 0, out = 0;
  moe::Layout layout = moe::Layout::kInOut;

  DenseStack(std::size_t e, std::size_t i, std::size_t o, std::uint64_t seed, float sd,
             moe::Layout l = moe::Layout::kInOut)
      : data(e * i * o), experts(e), in(i), out(o), layout(l) {
    const auto v = randn(e * i * o, seed, sd);
    for (std::size_t k = 0; k < v.size(); ++k) {
      if constexpr (std::is_same_v<T, float>) {
        data[k] = v[k];
      } else {
        data[k] = moe::bf16(v[k]);
      }
    }
  }
  moe::DenseWeight<T> at(std::size_t e) const {
    return {data.data() + e * in * out, in, out, layout};
  }
  moe::WeightStack<moe::DenseWeight<T>> view() const { return {at(0), experts}; }
};

/// Owned Grok-style int8 [E, in, out] weights with bf16 scales [E, blocks, out].
struct Int8Stack {
  moe::Buffer<std::int8_t> q;
  moe::Buffer<moe::bf16> scales;
  std::size_t experts = 0, in = 0, out = 0, blocks = 1;

  Int8Stack(std::size_t e, std::size_t i, std::size_t o, std::size_t b, std::uint64_t seed,
            float scale)
      : q(e * i * o), scales(e * b * o), experts(e), in(i), out(o), blocks(b) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int> d(-127, 127);
    std::uniform_real_distribution<float> s(0.5f, 1.5f);
    for (auto& v : q) v = static_cast<std::int8_t>(d(rng));
    for (auto& v : scales) v = moe::bf16(scale * s(rng));
  }
  moe::Int8Weight at(std::size_t e) const {
    return {q.data() + e * in * out, scales.data() + e * blocks * out, in, out, blocks};
  }
  moe::WeightStack<moe::Int8Weight> view() const { return {at(0), experts}; }
};

/// float64 gated FFN of one token: down(act(x gate) * (x up)).
template <class W>
std::vector<double> ffn_ref(const W& gate, const W& up, const W& down, const float* x,
                            moe::Activation a) {
  const std::size_t d = gate.in, f = gate.out;
  std::vector<double> h(f), y(d, 0.0);
  for (std::size_t o = 0; o < f; ++o) {
    double g = 0.0, u = 0.0;
    for (std::size_t i = 0; i < d; ++i) {
      g += static_cast<double>(x[i]) * gate.at(i, o);
      u += static_cast<double>(x[i]) * up.at(i, o);
    }
    h[o] = moe_ref::activation(a, g) * u;
  }
  for (std::size_t o = 0; o < d; ++o) {
    double s = 0.0;
    for (std::size_t i = 0; i < f; ++i) s += h[i] * down.at(i, o);
    y[o] = s;
  }
  return y;
}

/// float64 router logits of one token.
template <class W>
std::vector<double> logits_ref(const W& gate, const float* x) {
  std::vector<double> z(gate.out, 0.0);
  for (std::size_t o = 0; o < gate.out; ++o) {
    for (std::size_t i = 0; i < gate.in; ++i) z[o] += static_cast<double>(x[i]) * gate.at(i, o);
  }
  return z;
}

inline std::vector<double> softmax_ref(const std::vector<double>& z) {
  const double m = *std::max_element(z.begin(), z.end());
  std::vector<double> p(z.size());
  double s = 0.0;
  for (std::size_t i = 0; i < z.size(); ++i) s += (p[i] = std::exp(z[i] - m));
  for (auto& v : p) v /= s;
  return p;
}

/// Indices of the k largest values, descending, ties to the lower index.
inline std::vector<std::uint32_t> topk_ref(const std::vector<double>& v, std::size_t k) {
  std::vector<std::uint32_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0u);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](std::uint32_t a, std::uint32_t b) { return v[a] > v[b]; });
  idx.resize(k);
  return idx;
}

}  // namespace moe_test

namespace moe_test {

/// Routing decisions as produced by Router::route (copied out of the arena).
struct Routed {
  std::size_t tokens = 0, k = 0, experts_count = 0;
  std::vector<std::uint32_t> experts;  // [T, k]
  std::vector<float> weights, scores;  // [T, k]
  std::vector<float> probs, logits;    // [T, E]
};

template <class RouterT>
Routed route_copy(const RouterT& router, const std::vector<float>& x, std::size_t t_count,
                  const moe::ForwardOptions& opts = {}, std::size_t threads = 1) {
  moe::ThreadPool pool(threads);
  moe::Arena arena(router.workspace_bytes(t_count));
  const auto r = router.alloc_output(arena, t_count);
  router.route(pool, moe::MatrixView<const float>(x.data(), t_count, router.dim()), r, arena, opts);
  Routed o;
  o.tokens = t_count;
  o.k = router.top_k();
  o.experts_count = router.n_experts();
  o.experts.assign(r.experts.data, r.experts.data + t_count * o.k);
  o.weights.assign(r.weights.data, r.weights.data + t_count * o.k);
  o.scores.assign(r.scores.data, r.scores.data + t_count * o.k);
  o.probs.assign(r.probs.data, r.probs.data + t_count * o.experts_count);
  o.logits.assign(r.logits.data, r.logits.data + t_count * o.experts_count);
  return o;
}

enum class RefPriority { kPosition, kProbability, kBatchPrioritized };

/// Independent capacity reference: which (t, j) pairs are kept, and the final weights.
/// Keys: position (j, t); BPR (j, rank of t by top-1 score desc); probability (-score, j, t).
inline std::vector<float> ref_capacity_weights(const Routed& r, const std::uint8_t* mask,
                                               std::size_t cap, RefPriority prio, bool renorm_after,
                                               float route_scale,
                                               std::vector<std::uint8_t>* kept_out = nullptr) {
  const std::size_t t_count = r.tokens, k = r.k;
  std::vector<std::size_t> rank(t_count);
  {
    std::vector<std::size_t> order(t_count);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return r.scores[a * k] > r.scores[b * k];
    });
    for (std::size_t i = 0; i < t_count; ++i) rank[order[i]] = i;
  }
  std::vector<std::uint8_t> kept(t_count * k, 0);
  for (std::uint32_t e = 0; e < r.experts_count; ++e) {
    std::vector<std::size_t> cand;
    for (std::size_t t = 0; t < t_count; ++t) {
      if (mask && !mask[t]) continue;
      for (std::size_t j = 0; j < k; ++j) {
        if (r.experts[t * k + j] == e) cand.push_back(t * k + j);
      }
    }
    auto key = [&](std::size_t p) {
      const std::size_t t = p / k, j = p % k;
      const double s = prio == RefPriority::kProbability ? -static_cast<double>(r.scores[p]) : 0.0;
      const std::size_t tt = prio == RefPriority::kBatchPrioritized ? rank[t] : t;
      return std::make_tuple(s, j, tt);
    };
    std::sort(cand.begin(), cand.end(),
              [&](std::size_t a, std::size_t b) { return key(a) < key(b); });
    for (std::size_t i = 0; i < cand.size() && i < cap; ++i) kept[cand[i]] = 1;
  }
  std::vector<float> w(t_count * k, 0.0f);
  for (std::size_t t = 0; t < t_count; ++t) {
    bool any_drop = false;
    double sum = 0.0;
    for (std::size_t j = 0; j < k; ++j) {
      const std::size_t p = t * k + j;
      if (r.experts[p] == moe::kNoExpert) continue;
      if (kept[p]) {
        sum += r.scores[p];
      } else {
        any_drop = true;
      }
    }
    for (std::size_t j = 0; j < k; ++j) {
      const std::size_t p = t * k + j;
      if (!kept[p]) continue;
      w[p] = (renorm_after && any_drop && sum > 0)
                 ? static_cast<float>(route_scale * r.scores[p] / sum)
                 : r.weights[p];
    }
  }
  if (kept_out) *kept_out = kept;
  return w;
}

/// float64 combine: y[t] = sum_j w[t, j] * FFN_{e(t, j)}(x[t]) (+ shared, if given).
template <class ExpertT>
std::vector<double> ref_combine(const ExpertT& experts, const Routed& r,
                                const std::vector<float>& w, const std::vector<float>& x,
                                moe::Activation a) {
  const std::size_t d = experts.dim(), k = r.k;
  std::vector<double> y(r.tokens * d, 0.0);
  for (std::size_t t = 0; t < r.tokens; ++t) {
    for (std::size_t j = 0; j < k; ++j) {
      const std::size_t p = t * k + j;
      if (w[p] == 0.0f || r.experts[p] == moe::kNoExpert) continue;
      const std::uint32_t e = r.experts[p];
      const auto z =
          ffn_ref(experts.gate()[e], experts.up()[e], experts.down()[e], x.data() + t * d, a);
      for (std::size_t i = 0; i < d; ++i) y[t * d + i] += static_cast<double>(w[p]) * z[i];
    }
  }
  return y;
}

/// max over i of |a_i - b_i| / (atol + rtol |b_i|) (<= 1 means within tolerance).
inline double tol_ratio(const float* a, const double* b, std::size_t n, double atol, double rtol) {
  double worst = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    worst = std::max(worst, std::abs(a[i] - b[i]) / (atol + rtol * std::abs(b[i])));
  }
  return worst;
}

}  // namespace moe_test
