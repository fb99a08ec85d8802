// moe/ops/softmax.hpp: numerically stable softmax, log-sum-exp and the logit soft-cap.
//
// All functions accept any n and any alignment, never allocate and never throw. Sums use the
// fixed blocked order of simd::blocked_sum, so results depend only on the inputs.
//
// Special values (softmax / logsumexp):
//   * -inf entries (masked logits) get probability exactly 0; +-1e30 is handled like any number.
//   * every entry -inf: softmax is uniform (1/n each; the limit of equal logits, and what a -1e30
//     mask gives), logsumexp is -inf.
//   * +inf entries: they share the probability equally (1/count each, the rest 0); logsumexp is
//     +inf.
//   * any NaN entry: every output is NaN, logsumexp is NaN.
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>

#include <moe/config.hpp>
#include <moe/simd/simd.hpp>

MOE_SIMD_DETAIL_BEGIN

/// max over x[0..n) by SIMD lanes (NaN lanes may be dropped; callers see NaNs through the sum or
/// through softmax_nonfinite). -inf when n == 0.
inline float lane_max(const float* x, std::size_t n) noexcept {
  using simd::fbatch;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  constexpr std::size_t W = simd::kLanes;
  fbatch m0(kNegInf), m1(kNegInf), m2(kNegInf), m3(kNegInf);  // 4 chains hide the latency
  std::size_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    m0 = simd::max(m0, simd::load(x + i));
    m1 = simd::max(m1, simd::load(x + i + W));
    m2 = simd::max(m2, simd::load(x + i + 2 * W));
    m3 = simd::max(m3, simd::load(x + i + 3 * W));
  }
  for (; i + W <= n; i += W) m0 = simd::max(m0, simd::load(x + i));
  if (i < n) m1 = simd::max(m1, simd::load_partial(x + i, n - i, kNegInf));
  return simd::reduce_max(simd::max(simd::max(m0, m1), simd::max(m2, m3)));
}

/// softmax when the maximum is not finite (some +inf, all -inf, or NaN). Scalar: rare path.
inline void softmax_nonfinite(const float* x, float* y, std::size_t n) noexcept {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  bool nan = false;
  std::size_t n_inf = 0;
  for (std::size_t i = 0; i < n; ++i) {
    nan = nan || x[i] != x[i];
    n_inf += x[i] == kInf ? 1 : 0;
  }
  if (nan) {
    for (std::size_t i = 0; i < n; ++i) y[i] = std::numeric_limits<float>::quiet_NaN();
  } else if (n_inf > 0) {
    const float p = 1.0f / static_cast<float>(n_inf);
    for (std::size_t i = 0; i < n; ++i) y[i] = x[i] == kInf ? p : 0.0f;
  } else {  // every entry is -inf
    const float p = 1.0f / static_cast<float>(n);
    for (std::size_t i = 0; i < n; ++i) y[i] = p;
  }
}

MOE_SIMD_DETAIL_END

MOE_SIMD_NAMESPACE_BEGIN

/// y[i] = exp(x[i] - max) / sum_j exp(x[j] - max). y may alias x. See the header comment for
/// -inf / +inf / NaN entries. Accuracy: each y[i] within ~(|x[i] - max| + n / (4 * kLanes) + 8)
/// f32 ulps of the exact value (exp error, argument rounding, f32 sum).
inline void softmax(const float* x, float* y, std::size_t n) noexcept {
  if (n == 0) return;
  const float m = detail::lane_max(x, n);
  if (!std::isfinite(m)) {
    detail::softmax_nonfinite(x, y, n);
    return;
  }
  using simd::fbatch;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const fbatch mb(m);
  // Pass 2: y = exp(x - m) and its sum (padding lanes load -inf and contribute exp(-inf) = 0).
  const float s = simd::blocked_sum(n, [&](fbatch acc, std::size_t i, std::size_t c) {
    const fbatch e = simd::exp(simd::load_n(x + i, c, kNegInf) - mb);
    simd::store_n(y + i, e, c);
    return acc + e;
  });
  // Pass 3: normalise. s >= 1 (the maximum contributes exp(0)); NaN inputs make s NaN.
  const fbatch inv(1.0f / s);
  simd::map(y, y, n, [&](const fbatch& v) { return v * inv; });
}

/// In-place softmax of x[0..n).
inline void softmax(float* x, std::size_t n) noexcept {
  softmax(x, x, n);
}

/// log(sum_i exp(x[i])), computed stably as max + log(sum exp(x - max)). n = 0 gives -inf. All
/// -inf gives -inf, any +inf gives +inf, any NaN gives NaN. E.g. [1000, 1000] -> 1000 + ln 2.
inline float logsumexp(const float* x, std::size_t n) noexcept {
  const float m = detail::lane_max(x, n);
  if (!std::isfinite(m)) {
    for (std::size_t i = 0; i < n; ++i) {
      if (x[i] != x[i]) return x[i];
    }
    return m;
  }
  using simd::fbatch;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const fbatch mb(m);
  const float s = simd::blocked_sum(n, [&](fbatch acc, std::size_t i, std::size_t c) {
    return acc + simd::exp(simd::load_n(x + i, c, kNegInf) - mb);
  });
  return m + std::log(s);
}

/// In-place soft-cap: x[i] = cap * tanh(x[i] / cap), evaluated as cap * tanh(x[i] * (1 / cap)).
/// Saturates at exactly +-cap for |x| >~ 9 cap, ~identity for |x| << cap; +-inf -> +-cap, NaN stays
/// NaN. cap <= 0 means "no soft-cap" (the Grok-1 config's 0 = off) and leaves x unchanged.
inline void softcap(float* x, std::size_t n, float cap) noexcept {
  if (!(cap > 0.0f)) return;
  const simd::fbatch c(cap), inv(1.0f / cap);
  simd::map(x, x, n, [&](const simd::fbatch& v) { return c * simd::tanh(v * inv); });
}

/// In-place x[i] = cap * tanh((x[i] * s) / cap): the attention-logit multiplier and soft-cap of
/// Grok-1 (`s = 0.0884`, `cap = 30`) in one pass; identical to scale() then softcap(). cap <= 0
/// applies the multiplier only.
inline void scale_softcap(float* x, std::size_t n, float s, float cap) noexcept {
  const simd::fbatch sb(s);
  if (!(cap > 0.0f)) {
    simd::map(x, x, n, [&](const simd::fbatch& v) { return v * sb; });
    return;
  }
  const simd::fbatch c(cap), inv(1.0f / cap);
  simd::map(x, x, n, [&](const simd::fbatch& v) { return c * simd::tanh((v * sb) * inv); });
}

/// In-place x[i] *= s.
inline void scale(float* x, std::size_t n, float s) noexcept {
  const simd::fbatch sb(s);
  simd::map(x, x, n, [&](const simd::fbatch& v) { return v * sb; });
}

MOE_SIMD_NAMESPACE_END
