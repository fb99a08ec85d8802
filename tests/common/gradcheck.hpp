// Gradient-check helpers for the training tests (the protocol of docs/training.md):
//  * the reference is computed another way: central differences of a float64 formulation of the
//    forward pass (or a PyTorch float64 fixture), never of the code under test in f32;
//  * the objective is not conserved (L = sum r * y with a fixed random r, or a real loss);
//  * every named parameter tensor is compared separately, and its reference gradient must be
//    non-zero (a check of 0 against 0 proves nothing);
//  * errors are relative to the tensor's largest reference gradient.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <sstream>
#include <string>
#include <vector>

namespace moe_test {

/// d f / d theta[i] for every i by central differences, h scaled by max(1, |theta_i|).
/// f reads theta (which is restored after each probe).
template <class F>
std::vector<double> numeric_gradient(F&& f, std::vector<double>& theta, double h = 1e-6) {
  std::vector<double> g(theta.size());
  for (std::size_t i = 0; i < theta.size(); ++i) {
    const double t0 = theta[i], step = h * std::max(1.0, std::abs(t0));
    theta[i] = t0 + step;
    const double fp = f();
    theta[i] = t0 - step;
    const double fm = f();
    theta[i] = t0;
    g[i] = (fp - fm) / (2.0 * step);
  }
  return g;
}

/// The objective L = sum_i r[i] y[i] over the elements of y, in double: with r fixed and random,
/// it is not conserved by the layer (as sum(y) can be).
template <class R, class Y>
double projected(const R& r, const Y& y) {
  double l = 0;
  for (std::size_t i = 0; i < y.size(); ++i) l += double(r[i]) * double(y[i]);
  return l;
}

struct GradCheck {
  double max_err = 0;  ///< max |analytic - reference| / scale
  double scale = 0;    ///< max |reference|
  std::size_t worst = 0;
  std::size_t n = 0;
  [[nodiscard]] std::string str(const std::string& name) const {
    std::ostringstream s;
    s << name << ": " << n << " elements, max |ref| " << scale << ", max error " << max_err
      << " of it at " << worst;
    return s.str();
  }
};

/// Compares an analytic gradient with a reference gradient of the same element order.
template <class A, class R>
GradCheck compare_gradient(const A* analytic, const R* reference, std::size_t n) {
  GradCheck c;
  c.n = n;
  for (std::size_t i = 0; i < n; ++i) c.scale = std::max(c.scale, std::abs(double(reference[i])));
  const double s = c.scale > 0 ? c.scale : 1.0;
  for (std::size_t i = 0; i < n; ++i) {
    const double e = std::abs(double(analytic[i]) - double(reference[i])) / s;
    if (e > c.max_err) {
      c.max_err = e;
      c.worst = i;
    }
  }
  return c;
}

template <class A, class R>
GradCheck compare_gradient(const std::vector<A>& analytic, const std::vector<R>& reference) {
  return compare_gradient(analytic.data(), reference.data(),
                          std::min(analytic.size(), reference.size()));
}

}  // namespace moe_test
