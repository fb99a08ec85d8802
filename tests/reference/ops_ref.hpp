// Scalar reference twins of the element-wise kernels in include/moe/ops/, computed in double.
//
// Each function takes the SAME float inputs as the kernel it mirrors and evaluates the textbook
// formula in double precision (std::exp, std::tanh, std::erf(c), std::cos/sin of a double angle),
// so the difference to a kernel's output is the kernel's own f32 error. No SIMD, no cleverness:
// these are meant to be obviously correct. The activations take a double (a kernel's float converts
// exactly), so the float64 references of whole layers and their gradients (tests/moe,
// tests/train) call them too, through activation().
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include <moe/ops/activation.hpp>

namespace moe_ref {

inline double dot(const float* a, const float* b, std::size_t n) {
  double s = 0;
  for (std::size_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

inline double sum(const float* x, std::size_t n) {
  double s = 0;
  for (std::size_t i = 0; i < n; ++i) s += x[i];
  return s;
}

/// y = scale * x / sqrt(mean(x^2) + eps); scale may be null.
inline std::vector<double> rms_norm(const float* x, const float* scale, std::size_t n, double eps) {
  double ss = 0;
  for (std::size_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const double r = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
  std::vector<double> y(n);
  for (std::size_t i = 0; i < n; ++i) y[i] = (scale ? scale[i] : 1.0) * x[i] * r;
  return y;
}

/// Stable softmax in double (finite inputs, or -inf entries with at least one finite one).
inline std::vector<double> softmax(const float* x, std::size_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(x[i]));
  std::vector<double> y(n);
  double s = 0;
  for (std::size_t i = 0; i < n; ++i) s += (y[i] = std::exp(x[i] - m));
  for (auto& v : y) v /= s;
  return y;
}

inline double logsumexp(const float* x, std::size_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(x[i]));
  if (!std::isfinite(m)) return m;
  double s = 0;
  for (std::size_t i = 0; i < n; ++i) s += std::exp(x[i] - m);
  return m + std::log(s);
}

inline double softcap(float x, double cap) {
  return cap * std::tanh(x / cap);
}

/// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the textbook (jax.nn.gelu) form.
inline double gelu_tanh(double x) {
  const double k = std::sqrt(2.0 / 3.14159265358979323846);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}
/// The same value without cancellation for large negative x: x / (1 + exp(-2u)). Used where the
/// tanh form loses its digits in double too (x < -5).
inline double gelu_tanh_tail(float xf) {
  const double x = xf;
  const double k = std::sqrt(2.0 / 3.14159265358979323846);
  const double u = k * (x + 0.044715 * x * x * x);
  return x / (1.0 + std::exp(-2.0 * u));
}
/// 2u = 2 sqrt(2/pi) (x + 0.044715 x^3), the argument whose size governs gelu_tanh's error.
inline double gelu_tanh_2u(float xf) {
  const double x = xf;
  return 2.0 * std::sqrt(2.0 / 3.14159265358979323846) * (x + 0.044715 * x * x * x);
}
/// 0.5 x erfc(-x / sqrt2) (= 0.5 x (1 + erf(x / sqrt2)) without cancellation).
inline double gelu_erf(double x) {
  return 0.5 * x * std::erfc(-x / std::sqrt(2.0));
}
inline double silu(double x) {
  return x / (1.0 + std::exp(-x));
}

/// The gated FFN's activation a of x.
inline double activation(moe::Activation a, double x) {
  switch (a) {
    case moe::Activation::kGeluTanh:
      return gelu_tanh(x);
    case moe::Activation::kGeluErf:
      return gelu_erf(x);
    case moe::Activation::kSilu:
      return silu(x);
  }
  return 0.0;
}

/// RoPE of one head (head_dim values) at position pos, pairs by layout; dims >= rotary unchanged.
inline std::vector<double> rope_head(const float* x, std::size_t head_dim, std::size_t rotary,
                                     double base, bool interleaved, std::size_t pos) {
  std::vector<double> y(x, x + head_dim);
  const std::size_t half = rotary / 2;
  for (std::size_t j = 0; j < half; ++j) {
    const double inv_freq = std::pow(base, -2.0 * static_cast<double>(j) / rotary);
    const double theta = static_cast<double>(pos) * inv_freq;
    const std::size_t a = interleaved ? 2 * j : j;
    const std::size_t b = interleaved ? 2 * j + 1 : j + half;
    const double x0 = x[a], x1 = x[b];
    y[a] = x0 * std::cos(theta) - x1 * std::sin(theta);
    y[b] = x1 * std::cos(theta) + x0 * std::sin(theta);
  }
  return y;
}

/// Indices of the k largest values: descending, ties to the lower index, NaN below every number
/// (NaNs last, in index order). A stable sort over the whole array.
inline std::vector<std::uint32_t> top_k(const float* x, std::size_t n, std::size_t k) {
  std::vector<std::uint32_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0u);
  std::stable_sort(idx.begin(), idx.end(), [&](std::uint32_t a, std::uint32_t b) {
    const bool na = std::isnan(x[a]), nb = std::isnan(x[b]);
    if (na || nb) return !na && nb;  // numbers before NaNs; NaN vs NaN: keep index order
    return x[a] > x[b];
  });
  idx.resize(std::min(k, n));
  return idx;
}

}  // namespace moe_ref
