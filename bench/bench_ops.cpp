// bench_ops: the element-wise kernels (include/moe/ops/{norm,softmax,activation,rope,topk,
// vector}.hpp) against plain scalar loops over libm doing the same maths, in the same run.
//
//   <kernel>/<n>          moe's SIMD kernel
//   scalar/<kernel>/<n>   the straightforward scalar loop (std::exp, std::tanh, std::erf, ...),
//                         i.e. what the placeholders did; the ratio of the two is the speed-up
//   xsimd/<fn>/<n>        xsimd 8.1's own exp / tanh, for the vector-maths choice in simd.hpp
//
// Data sizes are the ones the model uses (d_model 6144, d_ff 32768, 8192 attention keys, 48 heads
// of 128, 8 router logits); they fit in L1/L2, as they do in a forward pass, so the counters are
// throughput of hot data: bytes_per_second (bytes read + written) and items_per_second (elements).
//
// Run:        build/release/bench/bench_ops
// Median of 5: build/release/bench/bench_ops --benchmark_repetitions=5
//              --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

// xsimd's exp/tanh (used only by the xsimd/ baselines) trip GCC 12's bogus -Wmaybe-uninitialized
// inside the AVX-512 intrinsics headers (GCC bug 105593); moe's own kernels do not use them.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include <moe/ops/activation.hpp>
#include <moe/ops/norm.hpp>
#include <moe/ops/rope.hpp>
#include <moe/ops/softmax.hpp>
#include <moe/ops/topk.hpp>
#include <moe/ops/vector.hpp>

namespace {

std::vector<float> data(std::size_t n, std::uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

void counters(benchmark::State& st, std::size_t elems, std::size_t bytes_per_elem) {
  st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * elems));
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * elems * bytes_per_elem));
}

// ---- RMSNorm -----------------------------------------------------------------------------------
void BM_rms_norm(benchmark::State& st) {
  const auto n = static_cast<std::size_t>(st.range(0));
  auto x = data(n, 1), s = data(n, 2);
  std::vector<float> y(n);
  for (auto _ : st) {
    moe::rms_norm(x.data(), s.data(), y.data(), n, 1e-5f);
    benchmark::DoNotOptimize(y.data());
  }
  counters(st, n, 3 * sizeof(float) + sizeof(float));  // x twice, scale, y
}
void BM_scalar_rms_norm(benchmark::State& st) {
  const auto n = static_cast<std::size_t>(st.range(0));
  auto x = data(n, 1), s = data(n, 2);
  std::vector<float> y(n);
  for (auto _ : st) {
    float ss = 0.0f;
    for (std::size_t i = 0; i < n; ++i) ss += x[i] * x[i];
    const float r = 1.0f / std::sqrt(ss / static_cast<float>(n) + 1e-5f);
    for (std::size_t i = 0; i < n; ++i) y[i] = x[i] * r * s[i];
    benchmark::DoNotOptimize(y.data());
  }
  counters(st, n, 4 * sizeof(float));
}

// ---- softmax / logsumexp / soft-cap ------------------------------------------------------------
void BM_softmax(benchmark::State& st) {
  const auto n = static_cast<std::size_t>(st.range(0));
  const auto x = data(n, 3, 3.0f);
  std::vector<float> y(n);
  for (auto _ : st) {
    moe::softmax(x.data(), y.data(), n);
    benchmark::DoNotOptimize(y.data());
  }
  counters(st, n, 2 * sizeof(float));
}
void BM_scalar_softmax(benchmark::State& st) {
  const auto n = static_cast<std::size_t>(st.range(0));
  const auto x = data(n, 3, 3.0f);
  std::vector<float> y(n);
  for (auto _ : st) {
    float m = -std::numeric_limits<float>::infinity();
    for (std::size_t i = 0; i < n; ++i) m = std::max(m, x[i]);
    float s = 0.0f;
    for (std::size_t i = 0; i < n; ++i) s += (y[i] = std::exp(x[i] - m));
    const float inv = 1.0f / s;
    for (std::size_t i = 0; i < n; ++i) y[i] *= inv;
    benchmark::DoNotOptimize(y.data());
  }
  counters(st, n, 2 * sizeof(float));
}
void BM_logsumexp(benchmark::State& st) {
  const auto n = static_cast<std::size_t>(st.range(0));
  const auto x = data(n, 4, 3.0f);
  for (auto _ : st) benchmark::DoNotOptimize(moe::logsumexp(x.data(), n));
  counters(st, n, sizeof(float));
}
void BM_scale_softcap(benchmark::State& st) {
  const auto n = static_cast<std::size_t>(st.range(0));
  auto x = data(n, 5, 300.0f);  // logits * 0.088 / 30: mostly the polynomial-only tanh path
  for (auto _ : st) {
    moe::scale_softcap(x.data(), n, 0.08838834764831845f, 30.0f);  // values shrink, stay finite
    benchmark::DoNotOptimize(x.data());
  }
  counters(st, n, 2 * sizeof(float));
}
void BM_softcap(benchmark::State& st) {
  const auto n = static_cast<std::size_t>(st.range(0));
  auto x = data(n, 5, 10.0f);  // |x| / 30 mostly < 0.55: the polynomial-only fast path
  for (auto _ : st) {
    moe::softcap(x.data(), n, 30.0f);  // idempotent-ish: values stay in (-30, 30)
    benchmark::DoNotOptimize(x.data());
  }
  counters(st, n, 2 * sizeof(float));
}
void BM_scalar_softcap(benchmark::State& st) {
  const auto n = static_cast<std::size_t>(st.range(0));
  auto x = data(n, 5, 10.0f);
  for (auto _ : st) {
    for (std::size_t i = 0; i < n; ++i) x[i] = 30.0f * std::tanh(x[i] / 30.0f);
    benchmark::DoNotOptimize(x.data());
  }
  counters(st, n, 2 * sizeof(float));
}

// ---- activations -------------------------------------------------------------------------------
template <moe::Activation A>
void BM_gated(benchmark::State& st) {
  const auto n = static_cast<std::size_t>(st.range(0));
  const auto g = data(n, 6, 2.0f), u = data(n, 7);
  std::vector<float> y(n);
  for (auto _ : st) {
    moe::gated_activation(A, g.data(), u.data(), y.data(), n);
    benchmark::DoNotOptimize(y.data());
  }
  counters(st, n, 3 * sizeof(float));
}
template <moe::Activation A>
void BM_scalar_gated(benchmark::State& st) {
  const auto n = static_cast<std::size_t>(st.range(0));
  const auto g = data(n, 6, 2.0f), u = data(n, 7);
  std::vector<float> y(n);
  for (auto _ : st) {
    for (std::size_t i = 0; i < n; ++i) {
      const float v = g[i];
      float a = 0.0f;
      if constexpr (A == moe::Activation::kGeluTanh) {
        a = 0.5f * v * (1.0f + std::tanh(0.7978845608f * (v + 0.044715f * v * v * v)));
      } else if constexpr (A == moe::Activation::kGeluErf) {
        a = 0.5f * v * (1.0f + std::erf(v * 0.7071067812f));
      } else {
        a = v / (1.0f + std::exp(-v));
      }
      y[i] = a * u[i];
    }
    benchmark::DoNotOptimize(y.data());
  }
  counters(st, n, 3 * sizeof(float));
}

// ---- vector maths choice -----------------------------------------------------------------------
template <int Fn>
void BM_vecmath(benchmark::State& st) {  // Fn: 0 moe exp, 1 xsimd exp, 2 moe tanh, 3 xsimd tanh
  const auto n = static_cast<std::size_t>(st.range(0));
  const auto x = data(n, 8, 3.0f);
  std::vector<float> y(n);
  using B = moe::simd::fbatch;
  for (auto _ : st) {
    moe::simd::map(x.data(), y.data(), n, [](const B& v) {
      if constexpr (Fn == 0) return moe::simd::exp(v);
      if constexpr (Fn == 1) return xsimd::exp(v);
      if constexpr (Fn == 2) return moe::simd::tanh(v);
      if constexpr (Fn == 3) return xsimd::tanh(v);
    });
    benchmark::DoNotOptimize(y.data());
  }
  counters(st, n, 2 * sizeof(float));
}

// ---- RoPE --------------------------------------------------------------------------------------
// Grok-1 query heads: 48 x 128, half-split. arg 0: table (precompute(8192)); 1: on the fly.
void BM_rope(benchmark::State& st) {
  const std::size_t heads = 48, d = 128;
  moe::Rope rope(d, 10000.0, moe::RopeLayout::kHalfSplit);
  if (st.range(0) == 0) rope.precompute(8192);
  auto x = data(heads * d, 9);
  std::size_t pos = 0;
  for (auto _ : st) {
    rope.apply(x.data(), heads, pos);
    pos = (pos + 1) & 8191;
    benchmark::DoNotOptimize(x.data());
  }
  counters(st, heads * d, 2 * sizeof(float));
}
void BM_scalar_rope(benchmark::State& st) {  // the placeholder: cos/sin in double per pair
  const std::size_t heads = 48, d = 128, half = 64;
  std::vector<double> inv(half);
  for (std::size_t j = 0; j < half; ++j) inv[j] = std::pow(10000.0, -2.0 * j / 128.0);
  auto x = data(heads * d, 9);
  std::size_t pos = 0;
  for (auto _ : st) {
    for (std::size_t j = 0; j < half; ++j) {
      const double th = static_cast<double>(pos) * inv[j];
      const float c = static_cast<float>(std::cos(th)), s = static_cast<float>(std::sin(th));
      for (std::size_t h = 0; h < heads; ++h) {
        float* v = x.data() + h * d;
        const float a = v[j], b = v[j + half];
        v[j] = a * c - b * s;
        v[j + half] = b * c + a * s;
      }
    }
    pos = (pos + 1) & 8191;
    benchmark::DoNotOptimize(x.data());
  }
  counters(st, heads * d, 2 * sizeof(float));
}

// ---- top-k -------------------------------------------------------------------------------------
void BM_top_k(benchmark::State& st) {
  const auto n = static_cast<std::size_t>(st.range(0)), k = static_cast<std::size_t>(st.range(1));
  const auto x = data(n, 10);
  std::vector<std::uint32_t> idx(k);
  std::vector<float> val(k);
  for (auto _ : st) {
    moe::top_k(x.data(), n, k, idx.data(), val.data());
    benchmark::DoNotOptimize(idx.data());
  }
  counters(st, n, sizeof(float));
}
void BM_scalar_top_k(benchmark::State& st) {  // std::partial_sort over an index array
  const auto n = static_cast<std::size_t>(st.range(0)), k = static_cast<std::size_t>(st.range(1));
  const auto x = data(n, 10);
  std::vector<std::uint32_t> idx(n);
  for (auto _ : st) {
    std::iota(idx.begin(), idx.end(), 0u);
    std::partial_sort(
        idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end(),
        [&](std::uint32_t a, std::uint32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
    benchmark::DoNotOptimize(idx.data());
  }
  counters(st, n, sizeof(float));
}

// ---- vector primitives -------------------------------------------------------------------------
void BM_dot(benchmark::State& st) {
  const auto n = static_cast<std::size_t>(st.range(0));
  const auto a = data(n, 11), b = data(n, 12);
  for (auto _ : st) benchmark::DoNotOptimize(moe::dot(a.data(), b.data(), n));
  counters(st, n, 2 * sizeof(float));
}
void BM_scalar_dot(benchmark::State& st) {
  const auto n = static_cast<std::size_t>(st.range(0));
  const auto a = data(n, 11), b = data(n, 12);
  for (auto _ : st) {
    float s = 0.0f;
    for (std::size_t i = 0; i < n; ++i) s += a[i] * b[i];  // in-order: not vectorised
    benchmark::DoNotOptimize(s);
  }
  counters(st, n, 2 * sizeof(float));
}
void BM_axpy(benchmark::State& st) {
  const auto n = static_cast<std::size_t>(st.range(0));
  const auto x = data(n, 13);
  auto y = data(n, 14);
  for (auto _ : st) {
    moe::axpy(1e-3f, x.data(), y.data(), n);
    benchmark::DoNotOptimize(y.data());
  }
  counters(st, n, 3 * sizeof(float));
}

}  // namespace

BENCHMARK(BM_rms_norm)->Name("rms_norm")->Arg(6144);
BENCHMARK(BM_scalar_rms_norm)->Name("scalar/rms_norm")->Arg(6144);
BENCHMARK(BM_softmax)->Name("softmax")->Arg(8)->Arg(512)->Arg(8192);
BENCHMARK(BM_scalar_softmax)->Name("scalar/softmax")->Arg(8)->Arg(512)->Arg(8192);
BENCHMARK(BM_logsumexp)->Name("logsumexp")->Arg(8);
BENCHMARK(BM_softcap)->Name("softcap")->Arg(8192);
BENCHMARK(BM_scalar_softcap)->Name("scalar/softcap")->Arg(8192);
BENCHMARK(BM_scale_softcap)->Name("scale_softcap")->Arg(8192);
BENCHMARK_TEMPLATE(BM_gated, moe::Activation::kGeluTanh)->Name("gated/gelu_tanh")->Arg(32768);
BENCHMARK_TEMPLATE(BM_scalar_gated, moe::Activation::kGeluTanh)
    ->Name("scalar/gated/gelu_tanh")
    ->Arg(32768);
BENCHMARK_TEMPLATE(BM_gated, moe::Activation::kGeluErf)->Name("gated/gelu_erf")->Arg(32768);
BENCHMARK_TEMPLATE(BM_scalar_gated, moe::Activation::kGeluErf)
    ->Name("scalar/gated/gelu_erf")
    ->Arg(32768);
BENCHMARK_TEMPLATE(BM_gated, moe::Activation::kSilu)->Name("gated/silu")->Arg(32768);
BENCHMARK_TEMPLATE(BM_scalar_gated, moe::Activation::kSilu)->Name("scalar/gated/silu")->Arg(32768);
BENCHMARK_TEMPLATE(BM_vecmath, 0)->Name("moe/exp")->Arg(8192);
BENCHMARK_TEMPLATE(BM_vecmath, 1)->Name("xsimd/exp")->Arg(8192);
BENCHMARK_TEMPLATE(BM_vecmath, 2)->Name("moe/tanh")->Arg(8192);
BENCHMARK_TEMPLATE(BM_vecmath, 3)->Name("xsimd/tanh")->Arg(8192);
BENCHMARK(BM_rope)->Name("rope/48x128/table")->Arg(0);
BENCHMARK(BM_rope)->Name("rope/48x128/on_the_fly")->Arg(1);
BENCHMARK(BM_scalar_rope)->Name("scalar/rope/48x128");
BENCHMARK(BM_top_k)->Name("top_k")->Args({8, 2})->Args({256, 8})->Args({131072, 40});
BENCHMARK(BM_scalar_top_k)->Name("scalar/top_k")->Args({8, 2})->Args({256, 8})->Args({131072, 40});
BENCHMARK(BM_dot)->Name("dot")->Arg(6144);
BENCHMARK(BM_scalar_dot)->Name("scalar/dot")->Arg(6144);
BENCHMARK(BM_axpy)->Name("axpy")->Arg(6144);

BENCHMARK_MAIN();
