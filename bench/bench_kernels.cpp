// bench_kernels: moe::matmul (f32 / bf16 / int8 weights) against this run's machine limits and
// Eigen, at Grok-1's shapes and a small one.
//
//   baseline/read_bw/threads:N       DRAM read bandwidth (1 GiB sum)       -> bw_frac limit
//   baseline/fma_peak/threads:N      f32 FMA peak (register-only loop)     -> peak_frac limit
//   matmul/<weight>/<in>x<out>/T:<T>/threads:N   moe::matmul
//   eigen/f32/<in>x<out>/T:<T>/threads:N         Eigen 3.4 on the same f32 [in, out] data
//
// Every benchmark reports bytes_per_second (weight bytes incl. int8 scales), FLOP/s (2 T in out),
// bw_frac (bytes/s over the same-run DRAM limit for its thread count) and peak_frac (FLOP/s over
// the same-run FMA peak). Weights are views into one 1 GiB arena and every iteration uses the
// next slot of it, so even the small matrices come from DRAM (cold), as an MoE layer's experts do.
//
// Run everything:   build/release/bench/bench_kernels
// Median of 5:      ... --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// (scripts/bench does that, writes JSON to bench/results/ and draws the roofline plot.)
// Eigen threads GEMM through OpenMP only; run with OMP_WAIT_POLICY=passive so its idle threads
// do not spin next to moe's pool. Eigen's GEMV is single-threaded whatever the setting.
#include <benchmark/benchmark.h>

// Eigen 3.4's AVX-512 GEMM kernels trip GCC 12's bogus -Wmaybe-uninitialized inside the
// intrinsics headers (GCC bug 105593); the warning is not about this file's code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <moe/core/buffer.hpp>
#include <moe/core/tensor.hpp>
#include <moe/ops/matmul.hpp>
#include <moe/ops/weights.hpp>

#include "bench_baselines.hpp"

namespace {

enum class WType { kF32, kF32OutIn, kBf16, kBf16OutIn, kInt8 };

const char* wtype_name(WType w) {
  switch (w) {
    case WType::kF32:
      return "f32";
    case WType::kF32OutIn:
      return "f32_outin";
    case WType::kBf16:
      return "bf16";
    case WType::kBf16OutIn:
      return "bf16_outin";
    case WType::kInt8:
      return "int8";
  }
  return "?";
}
std::size_t elem_bytes(WType w) {
  return w == WType::kF32 || w == WType::kF32OutIn ? 4 : w == WType::kInt8 ? 1 : 2;
}

struct Shape {
  std::size_t in, out;
};
constexpr Shape kGrokUp{6144, 32768};    // expert up / gate projection
constexpr Shape kGrokDown{32768, 6144};  // expert down projection (int8 scales: 8 blocks)
constexpr Shape kGrokKv{6144, 1024};     // attention K / V projection
constexpr Shape kSmall{1024, 4096};      // a small expert
constexpr std::size_t kMaxT = 256;

/// Activations and outputs large enough for every benchmark, and int8 scales.
struct Io {
  moe::Buffer<float> x{kMaxT * 32768};
  moe::Buffer<float> y{kMaxT * 32768};
  moe::Buffer<moe::bf16> scales{8 * 32768};
  Io() {
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = 0.001f * static_cast<float>(i % 997) - 0.5f;
    for (std::size_t i = 0; i < scales.size(); ++i) {
      scales[i] = moe::bf16(0.01f + 0.0001f * static_cast<float>(i % 89));
    }
  }
};
Io& io() {
  static Io b;
  return b;
}

std::size_t weight_bytes(WType wt, Shape s, std::size_t blocks) {
  return s.in * s.out * elem_bytes(wt) + (wt == WType::kInt8 ? blocks * s.out * 2 : 0);
}

void run_matmul(WType wt, const std::uint8_t* p, Shape s, std::size_t blocks, std::size_t T,
                moe::ThreadPool& pool) {
  const moe::MatrixView<const float> x(io().x.data(), T, s.in);
  const moe::MatrixView<float> y(io().y.data(), T, s.out);
  switch (wt) {
    case WType::kF32:
    case WType::kF32OutIn: {
      const moe::F32Weight w{reinterpret_cast<const float*>(p), s.in, s.out,
                             wt == WType::kF32 ? moe::Layout::kInOut : moe::Layout::kOutIn};
      moe::matmul(pool, x, w, y);
      break;
    }
    case WType::kBf16:
    case WType::kBf16OutIn: {
      const moe::BF16Weight w{reinterpret_cast<const moe::bf16*>(p), s.in, s.out,
                              wt == WType::kBf16 ? moe::Layout::kInOut : moe::Layout::kOutIn};
      moe::matmul(pool, x, w, y);
      break;
    }
    case WType::kInt8: {
      moe::Int8Weight w;
      w.data = reinterpret_cast<const std::int8_t*>(p);
      w.scales = io().scales.data();
      w.in = s.in;
      w.out = s.out;
      w.blocks = blocks;
      moe::matmul(pool, x, w, y);
      break;
    }
  }
}

void bm_matmul(benchmark::State& state, WType wt, Shape s, std::size_t blocks, std::size_t T,
               std::size_t threads) {
  moe::ThreadPool& pool = moe_bench::pool(threads);
  const std::size_t bytes = weight_bytes(wt, s, blocks);
  std::size_t i = 0;
  for (auto _ : state) {
    run_matmul(wt, moe_bench::arena().cycle(i++, bytes), s, blocks, T, pool);
    benchmark::ClobberMemory();
  }
  moe_bench::set_counters(state, static_cast<double>(bytes),
                          2.0 * static_cast<double>(T * s.in * s.out), threads);
  state.counters["kind"] = wt == WType::kInt8                                ? 13
                           : (wt == WType::kBf16 || wt == WType::kBf16OutIn) ? 12
                                                                             : 11;
}

using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

void bm_eigen(benchmark::State& state, Shape s, std::size_t T, std::size_t threads) {
#if defined(_OPENMP)
  Eigen::setNbThreads(static_cast<int>(threads));
#endif
  const std::size_t bytes = s.in * s.out * sizeof(float);
  const auto in = static_cast<Eigen::Index>(s.in), out = static_cast<Eigen::Index>(s.out);
  const auto rows = static_cast<Eigen::Index>(T);
  std::size_t i = 0;
  for (auto _ : state) {
    const auto* w = reinterpret_cast<const float*>(moe_bench::arena().cycle(i++, bytes));
    Eigen::Map<const RowMajor> W(w, in, out);
    if (T == 1) {
      Eigen::Map<const Eigen::VectorXf> x(io().x.data(), in);
      Eigen::Map<Eigen::VectorXf> y(io().y.data(), out);
      y.noalias() = W.transpose() * x;
    } else {
      Eigen::Map<const RowMajor> X(io().x.data(), rows, in);
      Eigen::Map<RowMajor> Y(io().y.data(), rows, out);
      Y.noalias() = X * W;
    }
    benchmark::ClobberMemory();
  }
  moe_bench::set_counters(state, static_cast<double>(bytes),
                          2.0 * static_cast<double>(T * s.in * s.out), threads);
  state.counters["kind"] = 20;
}

std::string shape_name(Shape s) {
  return std::to_string(s.in) + "x" + std::to_string(s.out);
}

void add_matmul(WType wt, Shape s, std::size_t T, std::size_t threads, double min_time = 0.2) {
  const std::size_t blocks = wt == WType::kInt8 && s.in == kGrokDown.in ? 8 : 1;
  std::string name = std::string("matmul/") + wtype_name(wt);
  if (wt == WType::kInt8) name += "_b" + std::to_string(blocks);
  name += "/" + shape_name(s) + "/T:" + std::to_string(T) + "/threads:" + std::to_string(threads);
  benchmark::RegisterBenchmark(
      name.c_str(), [=](benchmark::State& st) { bm_matmul(st, wt, s, blocks, T, threads); })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond)
      ->MinTime(min_time);
}

void add_eigen(Shape s, std::size_t T, std::size_t threads) {
  const std::string name = "eigen/f32/" + shape_name(s) + "/T:" + std::to_string(T) +
                           "/threads:" + std::to_string(threads);
  benchmark::RegisterBenchmark(name.c_str(),
                               [=](benchmark::State& st) { bm_eigen(st, s, T, threads); })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond)
      ->MinTime(0.2);
}

void register_all() {
  const Shape shapes[] = {kGrokUp, kGrokDown, kGrokKv, kSmall};
  const WType dense_inout[] = {WType::kF32, WType::kBf16, WType::kInt8};
  // GEMV (decode): every weight type and layout, 2 threads; Eigen (single-threaded GEMV).
  for (Shape s : shapes) {
    for (WType wt :
         {WType::kInt8, WType::kBf16, WType::kBf16OutIn, WType::kF32, WType::kF32OutIn}) {
      add_matmul(wt, s, 1, 2);
    }
    add_eigen(s, 1, 1);
  }
  // GEMV on one core (per-core bandwidth use).
  for (WType wt : dense_inout) add_matmul(wt, kGrokUp, 1, 1);
  // GEMM (prefill, batched experts): T = 16, 64, 256.
  for (std::size_t T : {16, 64, 256}) {
    for (Shape s : shapes) {
      for (WType wt : dense_inout) add_matmul(wt, s, T, 2);
      add_eigen(s, T, 2);
    }
    add_matmul(WType::kF32OutIn, kSmall, T, 2);
    add_matmul(WType::kBf16OutIn, kSmall, T, 2);
  }
  add_matmul(WType::kF32OutIn, kGrokUp, 256, 2);
  add_matmul(WType::kBf16OutIn, kGrokUp, 256, 2);
  // One core, compute-bound.
  add_matmul(WType::kF32, kSmall, 256, 1);
  add_matmul(WType::kInt8, kSmall, 256, 1);
  add_eigen(kSmall, 256, 1);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const moe_bench::Limits& l = moe_bench::limits();
  benchmark::AddCustomContext("moe_kernels", moe::detail::kMatmulKernels);
  benchmark::AddCustomContext("moe_simd_abi", moe::simd_abi_name());
  benchmark::AddCustomContext("limit_dram_GBps_1t_2t", std::to_string(l.dram(1) * 1e-9) + " " +
                                                           std::to_string(l.dram(2) * 1e-9));
  benchmark::AddCustomContext("limit_fma_GFLOPs_1t_2t", std::to_string(l.fma(1) * 1e-9) + " " +
                                                            std::to_string(l.fma(2) * 1e-9));
  moe_bench::register_baselines();
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
