// moe/ops/activation.hpp: GELU (tanh and erf), SiLU and the gated product act(gate) * up.
//
// Every function takes raw pointers of any alignment and any n, works in place when y == x, never
// allocates and never throws. The formulas are rearranged so that the f32 result has a small
// RELATIVE error everywhere, including the far negative tail where the textbook forms lose all
// digits to cancellation (1 + tanh(u) and 1 + erf(z) for large negative arguments):
//
//   gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)),   u = sqrt(2/pi) (x + 0.044715 x^3)
//   gelu_erf(x)  = 0.5 x (1 + erf(x / sqrt2)) = x (1 - erfc(|x|/sqrt2) / 2)  for x >= 0,
//                                               x  erfc(|x|/sqrt2) / 2       for x < 0
//   silu(x)      = x / (1 + exp(-x))
//
// Accuracy against the exact formula of the f32 input (tests/ops/test_activation.cpp; measured
// maxima on AVX-512 / SSE2 in brackets):
//   silu      <= 4 ulp relative [1.5];
//   gelu_tanh <= (8 + 3|2u|) ulp relative [1.5 (1 + |2u|)]: the f32 argument -2u carries a few
//               roundings, which exp turns into |2u| times as much relative error (the tanh form
//               in f32 is far worse there: 1 + tanh(u) cancels);
//   gelu_erf  <= 1.2e-6 relative [3.5 / 3.8 ulp], via simd::phi_neg_abs.
// Special values: act(+inf) = +inf, act(-inf) = -0, act(NaN) = NaN.
//
// Backward (training): activation_backward and gated_activation_backward use the derivatives
//
//   gelu_tanh'(x) = s + x s (1 - s) 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2),  s = 1 / (1 + exp(-2u))
//   gelu_erf'(x)  = Phi(x) + x phi(x)
//   silu'(x)      = s (1 + x (1 - s)),                                   s = sigmoid(x)
//
// and return the limits 0 (x -> -inf) and 1 (x -> +inf) for |x| > 30, where the formulas would
// form inf * 0.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string_view>

#include <moe/config.hpp>
#include <moe/simd/simd.hpp>

namespace moe {
/// Activation of a gated FFN's gate branch.
enum class Activation : std::uint8_t {
  kGeluTanh,  ///< 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (jax.nn.gelu default; Grok-1)
  kGeluErf,   ///< 0.5 x (1 + erf(x / sqrt(2)))                      (torch nn.GELU())
  kSilu,      ///< x * sigmoid(x)                                      (Mixtral, SwiGLU)
};
inline constexpr std::string_view activation_name(Activation a) noexcept {
  switch (a) {
    case Activation::kGeluTanh:
      return "gelu_tanh";
    case Activation::kGeluErf:
      return "gelu_erf";
    case Activation::kSilu:
      return "silu";
  }
  return "?";
}
}  // namespace moe

MOE_SIMD_DETAIL_BEGIN

/// -inf -> -FLT_MAX (so that x / inf and x * 0 give -0 instead of NaN); NaN and finite x unchanged.
inline simd::fbatch clamp_neg_inf(const simd::fbatch& x) noexcept {
  const simd::fbatch lo(-std::numeric_limits<float>::max());
  return xsimd::select(x < lo, lo, x);
}

struct GeluTanhOp {
  simd::fbatch operator()(simd::fbatch x) const noexcept {
    x = clamp_neg_inf(x);
    const simd::fbatch two_k(-1.5957691216057308f);  // -2 sqrt(2/pi)
    const simd::fbatch c(0.044715f), one(1.0f);
    const simd::fbatch t = two_k * (x * simd::fma(c, x * x, one));  // -2u
    return x / (one + simd::exp(t));
  }
};

struct GeluErfOp {
  simd::fbatch operator()(simd::fbatch x) const noexcept {
    x = clamp_neg_inf(x);
    const simd::fbatch h = simd::phi_neg_abs(x);  // Phi(-|x|) = erfc(|x| / sqrt2) / 2
    return x * xsimd::select(x >= simd::fbatch(0.0f), simd::fbatch(1.0f) - h, h);
  }
};

struct SiluOp {
  simd::fbatch operator()(simd::fbatch x) const noexcept {
    x = clamp_neg_inf(x);
    return x / (simd::fbatch(1.0f) + simd::exp(simd::fbatch(0.0f) - x));
  }
};

/// act(x) and act'(x) of one batch, for the backward pass. |x| > 30 takes the limits 0 / 1.
struct GeluTanhGradOp {
  void operator()(simd::fbatch x, simd::fbatch& act, simd::fbatch& dact) const noexcept {
    const simd::fbatch one(1.0f), c(0.044715f), c3(0.134145f), k2(1.5957691216057308f);
    const simd::fbatch xc =
        xsimd::select(simd::abs(x) > simd::fbatch(30.0f), simd::fbatch(0.0f), x);
    const simd::fbatch s =
        one / (one + simd::exp(simd::fbatch(0.0f) - k2 * (xc * simd::fma(c, xc * xc, one))));
    act = GeluTanhOp{}(x);
    dact = simd::fma(xc * s * (one - s), k2 * simd::fma(c3, xc * xc, one), s);
    dact = limits(x, dact);
  }
  static simd::fbatch limits(const simd::fbatch& x, const simd::fbatch& d) noexcept {
    const simd::fbatch big(30.0f);
    const simd::fbatch lim =
        xsimd::select(x > simd::fbatch(0.0f), simd::fbatch(1.0f), simd::fbatch(0.0f));
    return xsimd::select(simd::abs(x) > big, lim, d);
  }
};

struct GeluErfGradOp {
  void operator()(simd::fbatch x, simd::fbatch& act, simd::fbatch& dact) const noexcept {
    const simd::fbatch xc =
        xsimd::select(simd::abs(x) > simd::fbatch(30.0f), simd::fbatch(0.0f), x);
    const simd::fbatch h = simd::phi_neg_abs(xc);
    const simd::fbatch cdf = xsimd::select(xc >= simd::fbatch(0.0f), simd::fbatch(1.0f) - h, h);
    const simd::fbatch pdf =
        simd::fbatch(0.3989422804014327f) * simd::exp(simd::fbatch(-0.5f) * xc * xc);
    act = GeluErfOp{}(x);
    dact = GeluTanhGradOp::limits(x, simd::fma(xc, pdf, cdf));
  }
};

struct SiluGradOp {
  void operator()(simd::fbatch x, simd::fbatch& act, simd::fbatch& dact) const noexcept {
    const simd::fbatch one(1.0f);
    const simd::fbatch xc =
        xsimd::select(simd::abs(x) > simd::fbatch(30.0f), simd::fbatch(0.0f), x);
    const simd::fbatch s = one / (one + simd::exp(simd::fbatch(0.0f) - xc));
    act = SiluOp{}(x);
    dact = GeluTanhGradOp::limits(x, s * simd::fma(xc, one - s, one));
  }
};

/// Calls f(op) with the act-and-derivative functor of activation a.
template <class F>
inline void with_activation_grad(Activation a, F&& f) noexcept {
  switch (a) {
    case Activation::kGeluTanh:
      f(GeluTanhGradOp{});
      break;
    case Activation::kGeluErf:
      f(GeluErfGradOp{});
      break;
    case Activation::kSilu:
      f(SiluGradOp{});
      break;
  }
}

/// Calls f(op) with the functor of activation a (one switch per call, not per element).
template <class F>
inline void with_activation(Activation a, F&& f) noexcept {
  switch (a) {
    case Activation::kGeluTanh:
      f(GeluTanhOp{});
      break;
    case Activation::kGeluErf:
      f(GeluErfOp{});
      break;
    case Activation::kSilu:
      f(SiluOp{});
      break;
  }
}

MOE_SIMD_DETAIL_END

MOE_SIMD_NAMESPACE_BEGIN

/// y[i] = gelu_tanh(x[i]) (jax.nn.gelu(approximate=True); Grok-1's expert activation).
inline void gelu_tanh(const float* x, float* y, std::size_t n) noexcept {
  simd::map(x, y, n, detail::GeluTanhOp{});
}
/// y[i] = gelu_erf(x[i]) (exact GELU, torch nn.GELU()).
inline void gelu_erf(const float* x, float* y, std::size_t n) noexcept {
  simd::map(x, y, n, detail::GeluErfOp{});
}
/// y[i] = silu(x[i]) = x[i] * sigmoid(x[i]).
inline void silu(const float* x, float* y, std::size_t n) noexcept {
  simd::map(x, y, n, detail::SiluOp{});
}
/// y[i] = act(x[i]). y may alias x.
inline void activate(Activation a, const float* x, float* y, std::size_t n) noexcept {
  detail::with_activation(a, [&](auto op) { simd::map(x, y, n, op); });
}
/// out[i] = act(gate[i]) * up[i], one pass. out may alias gate or up.
inline void gated_activation(Activation a, const float* gate, const float* up, float* out,
                             std::size_t n) noexcept {
  detail::with_activation(a, [&](auto op) {
    simd::map2(gate, up, out, n,
               [&](const simd::fbatch& g, const simd::fbatch& u) { return op(g) * u; });
  });
}
/// Backward of y = act(x): dx[i] = dy[i] * act'(x[i]). dx may alias x or dy.
inline void activation_backward(Activation a, const float* x, const float* dy, float* dx,
                                std::size_t n) noexcept {
  detail::with_activation_grad(a, [&](auto op) {
    for (std::size_t i = 0; i < n; i += simd::kLanes) {
      const std::size_t c = std::min(simd::kLanes, n - i);
      simd::fbatch v, d;
      op(simd::load_n(x + i, c), v, d);
      simd::store_n(dx + i, simd::load_n(dy + i, c) * d, c);
    }
  });
}

/// Backward of out = act(gate) * up: dgate[i] = dout[i] * up[i] * act'(gate[i]) and
/// dup[i] = dout[i] * act(gate[i]). dgate may alias gate or dout, dup may alias up (each element
/// is read before it is written); dgate and dup must not alias each other.
inline void gated_activation_backward(Activation a, const float* gate, const float* up,
                                      const float* dout, float* dgate, float* dup,
                                      std::size_t n) noexcept {
  detail::with_activation_grad(a, [&](auto op) {
    for (std::size_t i = 0; i < n; i += simd::kLanes) {
      const std::size_t c = std::min(simd::kLanes, n - i);
      simd::fbatch v, d;
      op(simd::load_n(gate + i, c), v, d);
      const simd::fbatch g = simd::load_n(dout + i, c), u = simd::load_n(up + i, c);
      simd::store_n(dgate + i, g * u * d, c);
      simd::store_n(dup + i, g * v, c);
    }
  });
}

/// y[i] = a[i] * b[i]. y may alias a or b.
inline void multiply(const float* a, const float* b, float* y, std::size_t n) noexcept {
  simd::map2(a, b, y, n, [](const simd::fbatch& u, const simd::fbatch& v) { return u * v; });
}

MOE_SIMD_NAMESPACE_END
