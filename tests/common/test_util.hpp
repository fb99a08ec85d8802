// Shared test helpers: deterministic random data and diff reporting.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace moe_test {

/// n floats ~ N(0, stddev), deterministic for a given seed.
inline std::vector<float> randn(std::size_t n, std::uint64_t seed, float stddev = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

/// n floats ~ U(lo, hi).
inline std::vector<float> randu(std::size_t n, std::uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

struct Diff {
  double max_abs = 0;  ///< max |a - b|
  double max_rel = 0;  ///< max |a - b| / max(|b|, floor)
  std::size_t worst = 0;
  std::string str() const {
    std::ostringstream s;
    s << "max_abs=" << max_abs << " max_rel=" << max_rel << " at " << worst;
    return s.str();
  }
};

/// Compares a (result) with b (reference); relative error uses max(|b|, floor).
template <class A, class B>
Diff diff(const A* a, const B* b, std::size_t n, double floor = 1e-6) {
  Diff d;
  for (std::size_t i = 0; i < n; ++i) {
    const double e = std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    const double r = e / std::max(std::abs(static_cast<double>(b[i])), floor);
    if (e > d.max_abs) {
      d.max_abs = e;
      d.worst = i;
    }
    d.max_rel = std::max(d.max_rel, r);
  }
  return d;
}

}  // namespace moe_test
