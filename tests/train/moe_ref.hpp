// A float64 formulation of an MoE layer's training objective, for gradient checks.
//
// Written from the formulas (docs/policies.md, docs/training.md "MoE layer"), not from the
// library's code: router logits, noise, score function, selection (bias, groups), weights
// (renormalised or not, route scale), GShard's random second expert, capacity with its three
// priorities and both renormalisation timings, gated experts with hidden dropout, a shared expert,
// padding, and the auxiliary losses (Switch balance loss per group, z-loss, Shazeer's importance
// and load). Only the counter-based noise generator (moe::rng) is shared with the library: it is
// the noise itself, fed identically to both.
//
// The discrete decisions (selection, removal, capacity keep-mask, renormalisation set, the load
// threshold's expert) are taken from a `Frozen` record (the library's, at the base point) and
// recomputed at every evaluation to detect a flip: a finite difference that straddles a
// decision would be meaningless.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include <moe/layers/policies.hpp>
#include <moe/ops/activation.hpp>
#include <moe/ops/weights.hpp>

#include "reference/ops_ref.hpp"

namespace moe_ref {

enum class Noise { kNone, kJitter, kGauss, kRandomSecond, kNoisyTopK };

inline constexpr std::uint32_t kNone = 0xffffffffu;  ///< no expert (moe::kNoExpert)

/// Everything the objective depends on besides the parameters.
struct Config {
  std::size_t T = 0, D = 0, F = 0, E = 0, k = 0, Fs = 0;  // Fs: shared expert width (0 = none)
  // routing
  moe::ScoreFn score = moe::ScoreFn::kSoftmax;
  bool renormalize = true;
  double route_scale = 1.0;
  std::vector<float> bias;  // selection bias (empty = none)
  std::size_t n_group = 1, topk_group = 1;
  moe::GroupScore group_score = moe::GroupScore::kMax;
  // noise
  Noise noise = Noise::kNone;
  float noise_param = 0.0f;  // jitter eps / logit stddev / random-second threshold / noise eps
  std::uint64_t noise_seed = 0;
  // capacity (cf < 0: dropless)
  double cf = -1.0;
  bool cf_times_k = true;
  std::size_t min_capacity = 0;
  moe::DropPriority priority = moe::DropPriority::kPosition;
  bool renorm_after = true;
  // losses
  bool balance = false;
  double balance_coef = 0.0;
  moe::BalanceCounting counting = moe::BalanceCounting::kAllChoicesNormalized;
  std::size_t seq_len = 0;
  bool importance_load = false;
  double w_importance = 0.0, w_load = 0.0;
  bool z = false;
  double z_coef = 0.0;
  // experts
  moe::Activation act = moe::Activation::kSilu, shared_act = moe::Activation::kSilu;
  moe::Layout layout = moe::Layout::kInOut, router_layout = moe::Layout::kInOut;
  float dropout = 0.0f;
  std::uint64_t dropout_seed = 0;
  // call
  bool training = true;
  std::uint64_t step = 0;
  std::vector<std::uint8_t> mask;  // empty = all real
  double loss_scale = 1.0;

  [[nodiscard]] bool real(std::size_t t) const { return mask.empty() || mask[t] != 0; }
  [[nodiscard]] bool noisy_topk() const { return noise == Noise::kNoisyTopK; }
  [[nodiscard]] bool renorms() const {
    return renormalize || score == moe::ScoreFn::kSoftmaxOfSelected;
  }
};

/// Offsets of the named parameter tensors in theta.
struct Layout {
  std::size_t x = 0, router = 0, noise = 0, gate = 0, up = 0, down = 0, sgate = 0, sup = 0,
              sdown = 0, size = 0;
  explicit Layout(const Config& c) {
    std::size_t o = 0;
    const auto take = [&o](std::size_t n) {
      const std::size_t at = o;
      o += n;
      return at;
    };
    x = take(c.T * c.D);
    router = take(c.D * c.E);
    noise = take(c.noisy_topk() ? c.D * c.E : 0);
    gate = take(c.E * c.D * c.F);
    up = take(c.E * c.D * c.F);
    down = take(c.E * c.F * c.D);
    sgate = take(c.D * c.Fs);
    sup = take(c.D * c.Fs);
    sdown = take(c.Fs * c.D);
    size = o;
  }
};

/// The discrete decisions of one forward pass.
struct Frozen {
  std::vector<std::uint32_t> selected;  // [T, k] before random removal
  std::vector<std::uint8_t> removed;    // [T, k] removed by RandomSecondExpert
  std::vector<std::uint8_t> kept;       // [T, k] computed by its expert (real, not removed, kept)
  std::vector<std::uint8_t> renormed;   // [T] weights renormalised over the kept slots
  std::vector<std::uint32_t> next;      // [T] (k+1)-th noisy logit's expert (NoisyTopK training)
  bool operator==(const Frozen&) const = default;
};

inline double softplus(double z) {
  return z > 30.0 ? z : std::log1p(std::exp(z));
}
inline double sigmoid(double z) {
  return 1.0 / (1.0 + std::exp(-z));
}
inline double phi_cdf(double a) {
  return 0.5 * std::erfc(-a / std::sqrt(2.0));
}

/// W[i, o] of a logical [in, out] matrix stored at p in `layout`.
inline double w_at(const double* p, std::size_t in, std::size_t out, moe::Layout layout,
                   std::size_t i, std::size_t o) {
  return layout == moe::Layout::kInOut ? p[i * out + o] : p[o * in + i];
}

/// Indices of the k largest values, descending, ties to the lower index.
inline std::vector<std::uint32_t> top_k(const std::vector<double>& v, std::size_t k) {
  std::vector<std::uint32_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0u);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](std::uint32_t a, std::uint32_t b) { return v[a] > v[b]; });
  idx.resize(k);
  return idx;
}

/// The gated FFN of one row: down(act(x gate) * (x up)), hidden dropout keyed by `key`.
inline void ffn(const Config& c, const double* x, const double* g, const double* u, const double* d,
                std::size_t f, moe::Activation a, bool dropout, std::uint64_t key, double* y) {
  std::vector<double> h(f);
  for (std::size_t o = 0; o < f; ++o) {
    double gv = 0.0, uv = 0.0;
    for (std::size_t i = 0; i < c.D; ++i) {
      gv += x[i] * w_at(g, c.D, f, c.layout, i, o);
      uv += x[i] * w_at(u, c.D, f, c.layout, i, o);
    }
    h[o] = activation(a, gv) * uv;
    if (dropout) {
      const bool drop = moe::rng::uniform(c.dropout_seed, c.step, key, o) < c.dropout;
      h[o] = drop ? 0.0 : h[o] / (1.0 - static_cast<double>(c.dropout));
    }
  }
  for (std::size_t o = 0; o < c.D; ++o) {
    double s = 0.0;
    for (std::size_t i = 0; i < f; ++i) s += h[i] * w_at(d, f, c.D, c.layout, i, o);
    y[o] = s;
  }
}

/// CV^2 with the population variance, as tensor2tensor's CVSquared.
inline double cv_squared(const std::vector<double>& v) {
  const double n = static_cast<double>(v.size());
  double mean = 0.0;
  for (double x : v) mean += x;
  mean /= n;
  double var = 0.0;
  for (double x : v) var += (x - mean) * (x - mean);
  var /= n;
  return var / (mean * mean + 1e-10);
}

/// The objective L(theta) = sum r * y + loss_scale * weighted aux losses with the decisions of
/// `fz`. Fills `now` with the decisions recomputed at theta (compare with fz to detect a flip),
/// `margin` with the smallest gap of a decision (0 if it cannot be measured), and y / aux if given.
inline double objective(const Config& c, const std::vector<double>& th,
                        const std::vector<double>& r, const Frozen& fz, Frozen* now,
                        double* margin = nullptr, std::vector<double>* y_out = nullptr,
                        std::vector<double>* aux_out = nullptr) {
  const Layout L(c);
  const std::size_t T = c.T, D = c.D, E = c.E, k = c.k;
  double gap = std::numeric_limits<double>::infinity();
  const auto note = [&gap](double g) { gap = std::min(gap, std::abs(g)); };
  Frozen cur;
  cur.selected.resize(T * k);
  cur.removed.assign(T * k, 0);
  cur.kept.assign(T * k, 0);
  cur.renormed.assign(T, 0);
  cur.next.assign(T, kNone);
  std::vector<double> z(T * E), v(T * E), probs(T * E), sig(T * E, 0.0), eps(T * E, 0.0);
  std::vector<double> w_router(T * k), sc(T * k);
  // 1. route
  for (std::size_t t = 0; t < T; ++t) {
    std::vector<double> xr(D);
    for (std::size_t i = 0; i < D; ++i) {
      xr[i] = th[L.x + t * D + i];
      if (c.noise == Noise::kJitter && c.training) {
        const float lo = 1.0f - c.noise_param, span = 2.0f * c.noise_param;
        xr[i] *= static_cast<double>(lo + span * moe::rng::uniform(c.noise_seed, c.step, t, i));
      }
    }
    for (std::size_t e = 0; e < E; ++e) {
      double s = 0.0, a = 0.0;
      for (std::size_t i = 0; i < D; ++i) {
        s += xr[i] * w_at(&th[L.router], D, E, c.router_layout, i, e);
        if (c.noisy_topk()) a += th[L.x + t * D + i] * th[L.noise + i * E + e];
      }
      z[t * E + e] = s;
      v[t * E + e] = s;
      if (c.training && c.noise == Noise::kGauss) {
        const double sd = c.noise_param > 0.0f ? c.noise_param : 1.0 / static_cast<double>(E);
        v[t * E + e] += sd * moe::rng::normal(c.noise_seed, c.step, t, e);
      }
      if (c.training && c.noisy_topk()) {
        sig[t * E + e] = softplus(a) + c.noise_param;
        eps[t * E + e] = moe::rng::normal(c.noise_seed, c.step, t, e);
        v[t * E + e] += eps[t * E + e] * sig[t * E + e];
      }
    }
    // scores (noisy) and probs (clean)
    const bool smx =
        c.score == moe::ScoreFn::kSoftmax || c.score == moe::ScoreFn::kSoftmaxOfSelected;
    std::vector<double> s(E), q(E);
    const auto phi = [&](double val) {
      return c.score == moe::ScoreFn::kSigmoid ? sigmoid(val) : std::sqrt(softplus(val));
    };
    if (smx) {
      double m1 = -1e300, m2 = -1e300;
      for (std::size_t e = 0; e < E; ++e) {
        m1 = std::max(m1, v[t * E + e]);
        m2 = std::max(m2, z[t * E + e]);
      }
      double s1 = 0.0, s2 = 0.0;
      for (std::size_t e = 0; e < E; ++e) {
        s1 += (s[e] = std::exp(v[t * E + e] - m1));
        s2 += (q[e] = std::exp(z[t * E + e] - m2));
      }
      for (std::size_t e = 0; e < E; ++e) {
        s[e] /= s1;
        q[e] /= s2;
      }
    } else {
      double qs = 0.0;
      for (std::size_t e = 0; e < E; ++e) {
        s[e] = phi(v[t * E + e]);
        qs += (q[e] = phi(z[t * E + e]));
      }
      for (std::size_t e = 0; e < E; ++e) q[e] /= qs;
    }
    for (std::size_t e = 0; e < E; ++e) probs[t * E + e] = q[e];
    // selection values: logits for softmax-of-selected, else scores; + bias; groups
    std::vector<double> sv(E);
    for (std::size_t e = 0; e < E; ++e) {
      sv[e] = (c.score == moe::ScoreFn::kSoftmaxOfSelected ? v[t * E + e] : s[e]) +
              (c.bias.empty() ? 0.0 : c.bias[e]);
    }
    if (c.n_group > 1) {
      const std::size_t gs = E / c.n_group;
      std::vector<double> gscore(c.n_group);
      for (std::size_t g = 0; g < c.n_group; ++g) {
        std::vector<double> m(sv.begin() + g * gs, sv.begin() + (g + 1) * gs);
        std::sort(m.rbegin(), m.rend());
        gscore[g] = c.group_score == moe::GroupScore::kTop2Sum ? m[0] + m[1] : m[0];
      }
      const auto keep = top_k(gscore, c.topk_group);
      std::vector<double> sorted = gscore;
      std::sort(sorted.rbegin(), sorted.rend());
      note(sorted[c.topk_group - 1] - sorted[c.topk_group]);
      for (std::size_t g = 0; g < c.n_group; ++g) {
        if (std::find(keep.begin(), keep.end(), g) == keep.end()) {
          for (std::size_t i = 0; i < gs; ++i) sv[g * gs + i] = -1e300;
        }
      }
    }
    const auto sel = top_k(sv, k);
    {
      std::vector<double> sorted = sv;
      std::sort(sorted.rbegin(), sorted.rend());
      if (k < E && sorted[k] > -1e299) note(sorted[k - 1] - sorted[k]);
    }
    if (c.training && c.noisy_topk() && k < E) {
      std::vector<double> vt(v.begin() + t * E, v.begin() + (t + 1) * E);
      const auto top = top_k(vt, std::min(E, k + 1));
      cur.next[t] = top[k];
      std::vector<double> sorted = vt;
      std::sort(sorted.rbegin(), sorted.rend());
      if (k + 1 < E) note(sorted[k] - sorted[k + 1]);
    }
    // weights
    double sum = 0.0;
    for (std::size_t j = 0; j < k; ++j) {
      cur.selected[t * k + j] = sel[j];
      sc[t * k + j] = s[sel[j]];
      sum += s[sel[j]];
    }
    for (std::size_t j = 0; j < k; ++j) {
      w_router[t * k + j] = c.route_scale * (c.renorms() ? sc[t * k + j] / sum : sc[t * k + j]);
    }
    if (c.training && c.noise == Noise::kRandomSecond) {
      for (std::size_t j = 1; j < k; ++j) {
        const double u = moe::rng::uniform(c.noise_seed, c.step, t, j);
        const double thr = w_router[t * k + j] / c.noise_param;
        note(u - thr);
        cur.removed[t * k + j] = !(u < thr);
      }
    }
  }
  // Use the frozen decisions from here on (recomputed ones only go to *now).
  const Frozen& use = fz.selected.empty() ? cur : fz;
  const auto selected = [&](std::size_t t, std::size_t j) { return use.selected[t * k + j]; };
  // 3. capacity (on the recomputed decisions, to detect flips; the objective uses `use`)
  std::size_t n_real = 0;
  for (std::size_t t = 0; t < T; ++t) n_real += c.real(t) ? 1 : 0;
  std::vector<std::uint8_t> kept(T * k, 0);
  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t j = 0; j < k; ++j) kept[t * k + j] = c.real(t) && !cur.removed[t * k + j];
  }
  if (c.cf >= 0.0 && n_real > 0) {
    const double val = (c.cf_times_k ? static_cast<double>(k) : 1.0) * static_cast<double>(n_real) *
                       c.cf / static_cast<double>(E);
    std::size_t cap = static_cast<std::size_t>(std::ceil(val - 1e-9 * std::max(val, 1.0)));
    cap = std::min(std::max(cap, c.min_capacity), n_real);
    std::vector<std::size_t> rank(T);
    {
      std::vector<std::size_t> order;
      for (std::size_t t = 0; t < T; ++t) order.push_back(t);
      std::stable_sort(order.begin(), order.end(),
                       [&](std::size_t a, std::size_t b) { return sc[a * k] > sc[b * k]; });
      for (std::size_t i = 0; i < T; ++i) rank[order[i]] = i;
      if (c.priority == moe::DropPriority::kBatchPrioritized) {
        for (std::size_t i = 0; i + 1 < T; ++i) note(sc[order[i] * k] - sc[order[i + 1] * k]);
      }
    }
    for (std::uint32_t e = 0; e < E; ++e) {
      std::vector<std::size_t> pairs;
      for (std::size_t t = 0; t < T; ++t) {
        for (std::size_t j = 0; j < k; ++j) {
          if (kept[t * k + j] && cur.selected[t * k + j] == e) pairs.push_back(t * k + j);
        }
      }
      const auto key = [&](std::size_t p) {
        const std::size_t t = p / k, j = p % k;
        const double sp = c.priority == moe::DropPriority::kProbability ? -sc[p] : 0.0;
        return std::make_tuple(sp, j,
                               c.priority == moe::DropPriority::kBatchPrioritized ? rank[t] : t);
      };
      std::sort(pairs.begin(), pairs.end(),
                [&](std::size_t a, std::size_t b) { return key(a) < key(b); });
      if (c.priority == moe::DropPriority::kProbability && pairs.size() > cap && cap > 0) {
        note(sc[pairs[cap - 1]] - sc[pairs[cap]]);
      }
      for (std::size_t i = cap; i < pairs.size(); ++i) kept[pairs[i]] = 0;
    }
  }
  cur.kept = kept;
  for (std::size_t t = 0; t < T; ++t) {
    bool drop = false, any = false;
    for (std::size_t j = 0; j < k; ++j) {
      const std::size_t p = t * k + j;
      if (c.real(t) && !cur.removed[p] && !kept[p]) drop = true;
      any = any || kept[p];
    }
    cur.renormed[t] = c.cf >= 0.0 && c.renorm_after && c.renorms() && drop && any;
  }
  if (now != nullptr) *now = cur;
  if (margin != nullptr) *margin = gap;
  // 4-5. experts and combine with the frozen decisions
  std::vector<double> y(T * D, 0.0), out(D);
  for (std::size_t t = 0; t < T; ++t) {
    if (!c.real(t)) continue;
    double ksum = 0.0;
    for (std::size_t j = 0; j < k; ++j) {
      if (use.kept[t * k + j]) ksum += sc[t * k + j];
    }
    for (std::size_t j = 0; j < k; ++j) {
      const std::size_t p = t * k + j;
      if (!use.kept[p]) continue;
      const double w = use.renormed[t] ? c.route_scale * sc[p] / ksum : w_router[p];
      const std::size_t e = selected(t, j);
      ffn(c, &th[L.x + t * D], &th[L.gate + e * D * c.F], &th[L.up + e * D * c.F],
          &th[L.down + e * c.F * D], c.F, c.act, c.training && c.dropout > 0.0f, p, out.data());
      for (std::size_t i = 0; i < D; ++i) y[t * D + i] += w * out[i];
    }
    if (c.Fs > 0) {
      ffn(c, &th[L.x + t * D], &th[L.sgate], &th[L.sup], &th[L.sdown], c.Fs, c.shared_act, false, 0,
          out.data());
      for (std::size_t i = 0; i < D; ++i) y[t * D + i] += out[i];
    }
  }
  double loss = 0.0;
  for (std::size_t i = 0; i < T * D; ++i) loss += r[i] * y[i];
  // 2. auxiliary losses (decisions frozen: f from the frozen experts after removal)
  double lb = 0.0, zl = 0.0, imp_l = 0.0, load_l = 0.0;
  if (c.balance && n_real > 0) {
    const std::size_t run = c.seq_len == 0 ? T : c.seq_len;
    std::size_t groups = 0;
    for (std::size_t t0 = 0; t0 < T; t0 += run) {
      const std::size_t t1 = std::min(T, t0 + run);
      std::vector<double> f(E, 0.0), P(E, 0.0);
      std::size_t n = 0;
      for (std::size_t t = t0; t < t1; ++t) {
        if (!c.real(t)) continue;
        ++n;
        const std::size_t slots = c.counting == moe::BalanceCounting::kTop1 ? 1 : k;
        for (std::size_t j = 0; j < slots; ++j) {
          if (!use.removed[t * k + j]) f[selected(t, j)] += 1.0;
        }
        for (std::size_t e = 0; e < E; ++e) P[e] += probs[t * E + e];
      }
      if (n == 0) continue;
      const double div =
          static_cast<double>(n) * (c.counting == moe::BalanceCounting::kAllChoicesNormalized
                                        ? static_cast<double>(k)
                                        : 1.0);
      double s = 0.0;
      for (std::size_t e = 0; e < E; ++e) s += f[e] / div * P[e] / static_cast<double>(n);
      lb += static_cast<double>(E) * s;
      ++groups;
    }
    lb /= static_cast<double>(groups);
  }
  if (c.z && n_real > 0) {
    for (std::size_t t = 0; t < T; ++t) {
      if (!c.real(t)) continue;
      double m = -1e300;
      for (std::size_t e = 0; e < E; ++e) m = std::max(m, z[t * E + e]);
      double s = 0.0;
      for (std::size_t e = 0; e < E; ++e) s += std::exp(z[t * E + e] - m);
      const double lse = m + std::log(s);
      zl += lse * lse;
    }
    zl /= static_cast<double>(n_real);
  }
  if (c.importance_load && n_real > 0) {
    std::vector<double> imp(E, 0.0), load(E, 0.0);
    for (std::size_t t = 0; t < T; ++t) {
      if (!c.real(t)) continue;
      const bool smooth = c.training && c.noisy_topk() && k < E;
      for (std::size_t j = 0; j < k; ++j) {
        if (use.removed[t * k + j]) continue;
        imp[selected(t, j)] += w_router[t * k + j];
        if (!smooth) load[selected(t, j)] += 1.0;
      }
      if (smooth) {
        const double th_in = v[t * E + use.next[t]], th_out = v[t * E + selected(t, k - 1)];
        for (std::size_t e = 0; e < E; ++e) {
          bool in = false;
          for (std::size_t j = 0; j < k; ++j) in = in || selected(t, j) == e;
          load[e] += phi_cdf((z[t * E + e] - (in ? th_in : th_out)) / sig[t * E + e]);
        }
      }
    }
    imp_l = cv_squared(imp);
    load_l = cv_squared(load);
  }
  if (aux_out != nullptr) *aux_out = {lb, zl, imp_l, load_l};
  if (y_out != nullptr) *y_out = y;
  return loss + c.loss_scale * (c.balance_coef * lb + c.z_coef * zl + c.w_importance * imp_l +
                                c.w_load * load_l);
}

}  // namespace moe_ref
