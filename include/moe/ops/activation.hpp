// moe/ops/activation.hpp: GELU (tanh and erf), SiLU and the gated product act(gate) * up.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <moe/config.hpp>

namespace moe {
/// Activation of a gated FFN's gate branch.
enum class Activation : std::uint8_t {
  kGeluTanh,  ///< 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (jax.nn.gelu default; Grok-1)
  kGeluErf,   ///< 0.5 x (1 + erf(x / sqrt(2)))                      (torch nn.GELU())
  kSilu,      ///< x * sigmoid(x)                                      (Mixtral, SwiGLU)
};
inline constexpr std::string_view activation_name(Activation a) noexcept {
  switch (a) {
    case Activation::kGeluTanh: return "gelu_tanh";
    case Activation::kGeluErf: return "gelu_erf";
    case Activation::kSilu: return "silu";
  }
  return "?";
}
}  // namespace moe

MOE_SIMD_NAMESPACE_BEGIN

/// PLACEHOLDER scalar implementations.
inline void gelu_tanh(const float* x, float* y, std::size_t n) noexcept {
  constexpr float k = 0.7978845608028654f;  // sqrt(2/pi)
  for (std::size_t i = 0; i < n; ++i) {
    const float v = x[i];
    y[i] = 0.5f * v * (1.0f + std::tanh(k * (v + 0.044715f * v * v * v)));
  }
}
inline void gelu_erf(const float* x, float* y, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.7071067811865476f));
}
inline void silu(const float* x, float* y, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + std::exp(-x[i]));
}
/// y[i] = act(x[i]).
inline void activate(Activation a, const float* x, float* y, std::size_t n) noexcept {
  switch (a) {
    case Activation::kGeluTanh: gelu_tanh(x, y, n); break;
    case Activation::kGeluErf: gelu_erf(x, y, n); break;
    case Activation::kSilu: silu(x, y, n); break;
  }
}
/// out[i] = act(gate[i]) * up[i]. out may alias gate or up.
inline void gated_activation(Activation a, const float* gate, const float* up, float* out,
                             std::size_t n) noexcept {
  activate(a, gate, out, n);
  for (std::size_t i = 0; i < n; ++i) out[i] *= up[i];
}
/// y[i] = a[i] * b[i].
inline void multiply(const float* a, const float* b, float* y, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i] = a[i] * b[i];
}

MOE_SIMD_NAMESPACE_END
