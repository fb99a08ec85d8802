// A float64 formulation of the decoder's forward pass for the gradient checks (written from the
// math in docs/decoder.md, independently of the C++ kernels): attention over B sequences of T
// tokens (RoPE, GQA, logit multiplier, soft-cap, causal), RMSNorm, gated FFN, pre-norm and
// sandwich blocks, embedding with multiplier, tied or separate head with multiplier, softmax
// cross-entropy with an ignore id. Parameters live in one flat std::vector<double> `theta` with
// named slices whose element order is the f32 tensors' storage order, so that a central
// difference of theta[i] is compared with element i of the analytic gradient.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <moe/layers/attention.hpp>
#include <moe/ops/activation.hpp>
#include <moe/ops/rope.hpp>
#include <moe/ops/weights.hpp>

#include "common/test_util.hpp"
#include "reference/ops_ref.hpp"

namespace moe_test::ref {

using Vec = std::vector<double>;

/// Named slices of theta.
struct Params {
  struct Slice {
    std::size_t offset = 0, size = 0;
  };
  std::map<std::string, Slice> slices;
  std::vector<std::string> order;  // insertion order
  Vec theta;

  /// Appends a slice initialised from f32 values.
  void add(const std::string& name, const std::vector<float>& values) {
    slices[name] = {theta.size(), values.size()};
    order.push_back(name);
    theta.insert(theta.end(), values.begin(), values.end());
  }
  [[nodiscard]] const double* operator[](const std::string& name) const {
    return theta.data() + slices.at(name).offset;
  }
  [[nodiscard]] const Slice& slice(const std::string& name) const { return slices.at(name); }
  [[nodiscard]] bool has(const std::string& name) const { return slices.count(name) != 0; }
  /// f32 copy of a slice (what the C++ side reads).
  [[nodiscard]] std::vector<float> f32(const std::string& name) const {
    const Slice& s = slices.at(name);
    return std::vector<float>(theta.begin() + static_cast<std::ptrdiff_t>(s.offset),
                              theta.begin() + static_cast<std::ptrdiff_t>(s.offset + s.size));
  }
};

/// y [n, out] = x [n, in] . W, W stored in `layout` at w.
inline Vec matmul(const Vec& x, std::size_t n, const double* w, std::size_t in, std::size_t out,
                  moe::Layout layout) {
  Vec y(n * out, 0.0);
  for (std::size_t t = 0; t < n; ++t) {
    for (std::size_t i = 0; i < in; ++i) {
      const double xv = x[t * in + i];
      for (std::size_t o = 0; o < out; ++o) {
        y[t * out + o] += xv * (layout == moe::Layout::kInOut ? w[i * out + o] : w[o * in + i]);
      }
    }
  }
  return y;
}

/// RMSNorm of every row (scale may be null).
inline Vec rms_norm(const Vec& x, std::size_t d, const double* scale, double eps) {
  Vec y(x.size());
  for (std::size_t t = 0; t < x.size() / d; ++t) {
    double ss = 0;
    for (std::size_t i = 0; i < d; ++i) ss += x[t * d + i] * x[t * d + i];
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
    for (std::size_t i = 0; i < d; ++i) y[t * d + i] = x[t * d + i] * r * (scale ? scale[i] : 1.0);
  }
  return y;
}

/// Rotates one head vector for position pos (pairs by layout, first `rotary` dims).
inline void rope(double* v, std::size_t rotary, std::size_t pos, double base,
                 moe::RopeLayout layout) {
  const std::size_t half = rotary / 2;
  for (std::size_t j = 0; j < half; ++j) {
    const double th = static_cast<double>(pos) *
                      std::pow(base, -2.0 * static_cast<double>(j) / static_cast<double>(rotary));
    const std::size_t a = layout == moe::RopeLayout::kHalfSplit ? j : 2 * j;
    const std::size_t b = layout == moe::RopeLayout::kHalfSplit ? j + half : 2 * j + 1;
    const double x0 = v[a], x1 = v[b];
    v[a] = x0 * std::cos(th) - x1 * std::sin(th);
    v[b] = x1 * std::cos(th) + x0 * std::sin(th);
  }
}

/// The attention core over B sequences of T tokens: q [n, Hq*dh], k, v [n, Hkv*dh] (already
/// rotated) -> o [n, Hq*dh].
inline Vec attention_core(const moe::AttentionConfig& c, const Vec& q, const Vec& k, const Vec& v,
                          std::size_t n, std::size_t seq_len) {
  const std::size_t dh = c.head_dim, hq = c.n_q_heads, hkv = c.n_kv_heads, g = hq / hkv;
  const double mult = c.multiplier();
  Vec o(n * hq * dh, 0.0), s(seq_len);
  for (std::size_t r = 0; r < n; ++r) {
    const std::size_t b0 = r / seq_len * seq_len, t = r % seq_len;
    for (std::size_t h = 0; h < hq; ++h) {
      const std::size_t kh = h / g;
      double m = -1e300;
      for (std::size_t j = 0; j <= t; ++j) {
        double z = 0;
        for (std::size_t i = 0; i < dh; ++i)
          z += q[(r * hq + h) * dh + i] * k[((b0 + j) * hkv + kh) * dh + i];
        z *= mult;
        if (c.softcap > 0) z = c.softcap * std::tanh(z / c.softcap);
        s[j] = z;
        m = std::max(m, z);
      }
      double sum = 0;
      for (std::size_t j = 0; j <= t; ++j) sum += (s[j] = std::exp(s[j] - m));
      for (std::size_t j = 0; j <= t; ++j) {
        for (std::size_t i = 0; i < dh; ++i) {
          o[(r * hq + h) * dh + i] += s[j] / sum * v[((b0 + j) * hkv + kh) * dh + i];
        }
      }
    }
  }
  return o;
}

/// RotaryAttention over x [n, D] (B sequences of seq_len), weights at w{q,k,v,o} in `layout`.
inline Vec attention(const moe::AttentionConfig& c, const Vec& x, std::size_t n,
                     std::size_t seq_len, const double* wq, const double* wk, const double* wv,
                     const double* wo, moe::Layout layout) {
  const std::size_t d = c.d_model, dh = c.head_dim;
  const std::size_t rot = c.rotary_dims ? c.rotary_dims : dh;
  Vec q = matmul(x, n, wq, d, c.q_dim(), layout), k = matmul(x, n, wk, d, c.kv_dim(), layout),
      v = matmul(x, n, wv, d, c.kv_dim(), layout);
  for (std::size_t r = 0; r < n; ++r) {
    for (std::size_t h = 0; h < c.n_q_heads; ++h)
      rope(&q[(r * c.n_q_heads + h) * dh], rot, r % seq_len, c.rope_base, c.rope_layout);
    for (std::size_t h = 0; h < c.n_kv_heads; ++h)
      rope(&k[(r * c.n_kv_heads + h) * dh], rot, r % seq_len, c.rope_base, c.rope_layout);
  }
  const Vec o = attention_core(c, q, k, v, n, seq_len);
  return matmul(o, n, wo, c.q_dim(), d, layout);
}

/// Gated FFN over x [n, D]: down(act(x gate) * (x up)).
inline Vec ffn(moe::Activation a, const Vec& x, std::size_t n, std::size_t d, std::size_t f,
               const double* gate, const double* up, const double* down, moe::Layout layout) {
  Vec g = matmul(x, n, gate, d, f, layout);
  const Vec u = matmul(x, n, up, d, f, layout);
  for (std::size_t i = 0; i < g.size(); ++i) g[i] = moe_ref::activation(a, g[i]) * u[i];
  return matmul(g, n, down, f, d, layout);
}

/// A decoder of dense blocks (the configuration the float64 checks cover).
struct DecoderSpec {
  moe::AttentionConfig attention;
  std::size_t vocab = 0, d_ff = 0, n_layers = 0;
  moe::Activation activation = moe::Activation::kSilu;
  bool sandwich = false, tied = true;
  double eps = 1e-5, emb_mult = 1.0, out_mult = 1.0;
  moe::Layout layout = moe::Layout::kInOut;  ///< of every projection and of the untied head
};

/// Names of the slices of layer l.
inline std::string lname(std::size_t l, const char* what) {
  return "layer" + std::to_string(l) + "." + what;
}

/// Random parameters for `s` (norm scales around 1, projections ~ 1/sqrt(in)).
inline Params random_params(const DecoderSpec& s, std::uint64_t seed, float emb_std = 1.0f,
                            float qk_gain = 1.0f) {
  Params p;
  const std::size_t d = s.attention.d_model, f = s.d_ff, qd = s.attention.q_dim(),
                    kvd = s.attention.kv_dim();
  const auto w = [&](std::size_t in, std::size_t out, float gain) {
    return randn(in * out, seed++, gain / std::sqrt(static_cast<float>(in)));
  };
  p.add("embedding", randn(s.vocab * d, seed++, emb_std));
  p.add("final_norm", randu(d, seed++, 0.6f, 1.4f));
  if (!s.tied) p.add("head", w(d, s.vocab, 1.0f));
  for (std::size_t l = 0; l < s.n_layers; ++l) {
    p.add(lname(l, "wq"), w(d, qd, qk_gain));
    p.add(lname(l, "wk"), w(d, kvd, qk_gain));
    p.add(lname(l, "wv"), w(d, kvd, 1.0f));
    p.add(lname(l, "wo"), w(qd, d, 1.0f));
    p.add(lname(l, "pre_attn"), randu(d, seed++, 0.6f, 1.4f));
    p.add(lname(l, "pre_ffn"), randu(d, seed++, 0.6f, 1.4f));
    if (s.sandwich) {
      p.add(lname(l, "post_attn"), randu(d, seed++, 0.6f, 1.4f));
      p.add(lname(l, "post_ffn"), randu(d, seed++, 0.6f, 1.4f));
    }
    p.add(lname(l, "gate"), w(d, f, 1.0f));
    p.add(lname(l, "up"), w(d, f, 1.0f));
    p.add(lname(l, "down"), w(f, d, 1.0f));
  }
  return p;
}

/// One block over h [n, D] (returns the new stream).
inline Vec block(const DecoderSpec& s, const Params& p, std::size_t l, Vec h, std::size_t n,
                 std::size_t seq_len) {
  const std::size_t d = s.attention.d_model;
  const Vec a = rms_norm(h, d, p[lname(l, "pre_attn")], s.eps);
  Vec u = attention(s.attention, a, n, seq_len, p[lname(l, "wq")], p[lname(l, "wk")],
                    p[lname(l, "wv")], p[lname(l, "wo")], s.layout);
  if (s.sandwich) u = rms_norm(u, d, p[lname(l, "post_attn")], s.eps);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] += u[i];
  const Vec m = rms_norm(h, d, p[lname(l, "pre_ffn")], s.eps);
  Vec y = ffn(s.activation, m, n, d, s.d_ff, p[lname(l, "gate")], p[lname(l, "up")],
              p[lname(l, "down")], s.layout);
  if (s.sandwich) y = rms_norm(y, d, p[lname(l, "post_ffn")], s.eps);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] += y[i];
  return h;
}

/// Logits [n, V] of the decoder.
inline Vec logits(const DecoderSpec& s, const Params& p, const std::vector<std::int32_t>& tokens,
                  std::size_t seq_len) {
  const std::size_t d = s.attention.d_model, n = tokens.size();
  Vec h(n * d);
  const double* e = p["embedding"];
  for (std::size_t t = 0; t < n; ++t) {
    for (std::size_t i = 0; i < d; ++i) {
      h[t * d + i] = e[static_cast<std::size_t>(tokens[t]) * d + i] * s.emb_mult;
    }
  }
  for (std::size_t l = 0; l < s.n_layers; ++l) h = block(s, p, l, h, n, seq_len);
  const Vec hn = rms_norm(h, d, p["final_norm"], s.eps);
  Vec z = s.tied ? matmul(hn, n, p["embedding"], d, s.vocab, moe::Layout::kOutIn)
                 : matmul(hn, n, p["head"], d, s.vocab, s.layout);
  for (double& v : z) v *= s.out_mult;
  return z;
}

/// Mean softmax cross-entropy over the targets that are not ignore_id.
inline double cross_entropy(const Vec& z, std::size_t v, const std::vector<std::int32_t>& targets,
                            std::int32_t ignore_id) {
  double sum = 0;
  std::size_t counted = 0;
  for (std::size_t t = 0; t < targets.size(); ++t) {
    if (targets[t] == ignore_id) continue;
    double m = -1e300;
    for (std::size_t i = 0; i < v; ++i) m = std::max(m, z[t * v + i]);
    double se = 0;
    for (std::size_t i = 0; i < v; ++i) se += std::exp(z[t * v + i] - m);
    sum += m + std::log(se) - z[t * v + static_cast<std::size_t>(targets[t])];
    ++counted;
  }
  return counted ? sum / static_cast<double>(counted) : 0.0;
}

}  // namespace moe_test::ref
