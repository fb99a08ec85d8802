// Scalar reference twin of moe::matmul, computed in double.
//
// y[t][o] = sum_i double(x[t][i]) * double(W(i, o)) where W(i, o) is the weight's own exact f32
// value (`w.at(i, o)`: bf16 widened, int8 times its block's scale). Alongside it, the condition
// sum_i |x[t][i] * W(i, o)|, from which tests derive an error bound for f32 accumulation:
// |y_f32 - y_ref| <= gamma * sum |x w| with gamma ~ (number of terms) * 2^-24.
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

#include <moe/core/tensor.hpp>
#include <moe/ops/weights.hpp>

namespace moe_ref {

struct MatmulRef {
  std::vector<double> y;      ///< [T, out] reference values
  std::vector<double> absum;  ///< [T, out] sum_i |x w|
  std::size_t out = 0;
  double at(std::size_t t, std::size_t o) const { return y[t * out + o]; }
  double cond(std::size_t t, std::size_t o) const { return absum[t * out + o]; }
};

/// Reference Y = X . W with an explicit element accessor w_at(i, o) -> double.
template <class At>
MatmulRef matmul_ref_with(moe::MatrixView<const float> x, std::size_t in, std::size_t out,
                          At&& w_at) {
  MatmulRef r;
  r.out = out;
  r.y.assign(x.rows * out, 0.0);
  r.absum.assign(x.rows * out, 0.0);
  std::vector<double> col(in);
  for (std::size_t o = 0; o < out; ++o) {
    for (std::size_t i = 0; i < in; ++i) col[i] = w_at(i, o);
    for (std::size_t t = 0; t < x.rows; ++t) {
      const float* xr = x.row(t);
      double s = 0.0, a = 0.0;
      for (std::size_t i = 0; i < in; ++i) {
        const double p = static_cast<double>(xr[i]) * col[i];
        s += p;
        a += std::abs(p);
      }
      r.y[t * out + o] = s;
      r.absum[t * out + o] = a;
    }
  }
  return r;
}

/// Reference Y = X . W for any moe weight view (DenseWeight<float|bf16> of either layout,
/// Int8Weight with any block count).
template <class W>
MatmulRef matmul_ref(moe::MatrixView<const float> x, const W& w) {
  return matmul_ref_with(x, w.in, w.out, [&](std::size_t i, std::size_t o) {
    return static_cast<double>(w.at(i, o));
  });
}

}  // namespace moe_ref
