// bench/bench_baselines.hpp: the machine's limits, measured in the same run as the benchmarks.
//
// The project machine is shared and noisy, so every benchmark is quoted as a ratio to limits
// measured by the same binary invocation:
//
//   DRAM read bandwidth  sum of a 1 GiB buffer (f32 adds, 4 independent accumulators, software
//                        prefetch 8 KiB ahead), with 1 and 2 threads, each thread reading its
//                        own contiguous half
//   f32 FMA peak         a register-only loop of independent FMA chains per thread (16 with
//                        AVX-512's 32 registers, 12 with AVX2's 16: see kFmaChains)
//
// Use:
//   #include "bench_baselines.hpp"
//   int main(int argc, char** argv) {
//     benchmark::Initialize(&argc, argv);
//     moe_bench::register_baselines();      // adds baseline/read_bw/... and baseline/fma_peak/...
//     ... register your benchmarks; in them call moe_bench::set_counters(state, bytes, flops,
//     threads) benchmark::RunSpecifiedBenchmarks();
//   }
// set_counters() reports bytes/s and FLOP/s plus `bw_frac` (= bytes/s over the DRAM limit for
// that thread count) and `peak_frac` (= FLOP/s over the FMA peak), using limits() measured once,
// at first use. tools/roofline.py recomputes the same ratios from the medians of the baseline
// benchmarks in the JSON output.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <time.h>
#include <vector>

#include <moe/config.hpp>
#include <moe/core/bf16.hpp>
#include <moe/core/buffer.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/simd/simd.hpp>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace moe_bench {

/// Persistent pools with 1 and 2 threads (created on first use).
inline moe::ThreadPool& pool(std::size_t threads) {
  static moe::ThreadPool p1(1), p2(2);
  return threads <= 1 ? p1 : p2;
}

/// A large, page-aligned, hugepage-advised buffer that benchmarks view as weights of any type.
/// Every 16-bit word is a bf16 in [-1, 1], so f32 and bf16 views read ordinary numbers (no NaN or
/// denormals) and int8 views read arbitrary bytes.
class WeightArena {
 public:
  explicit WeightArena(std::size_t bytes) : bytes_(bytes) {
    const std::size_t align = std::size_t{2} << 20;
    data_ = static_cast<std::uint8_t*>(::operator new (bytes_, std::align_val_t{align}));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(data_, bytes_, MADV_HUGEPAGE);
#endif
    auto* w = reinterpret_cast<std::uint16_t*>(data_);
    std::uint32_t s = 12345;
    for (std::size_t i = 0; i < bytes_ / 2; ++i) {
      s = s * 1664525u + 1013904223u;
      const float v = static_cast<float>(static_cast<std::int32_t>(s >> 8) - (1 << 23)) * 0x1p-23f;
      w[i] = moe::bf16(v).bits;
    }
  }
  ~WeightArena() {
    ::operator delete (data_, std::align_val_t{std::size_t{2} << 20});
  }
  WeightArena(const WeightArena&) = delete;
  WeightArena& operator=(const WeightArena&) = delete;

  std::size_t size() const noexcept {
    return bytes_;
  }
  const std::uint8_t* data() const noexcept {
    return data_;
  }

  /// Start of the i-th of a cycle of `bytes`-sized views that together span the whole arena
  /// (4 KiB aligned). Cycling through them keeps every view cold (not in any cache) as long as
  /// the arena is much larger than the last-level cache.
  const std::uint8_t* cycle(std::size_t i, std::size_t bytes) const noexcept {
    const std::size_t slots = bytes >= bytes_ ? 1 : bytes_ / round4k(bytes);
    return data_ + (i % slots) * round4k(bytes);
  }

 private:
  static std::size_t round4k(std::size_t n) noexcept {
    return (n + 4095) / 4096 * 4096;
  }
  std::uint8_t* data_ = nullptr;
  std::size_t bytes_ = 0;
};

/// The shared 1 GiB arena (also the buffer of the bandwidth baseline).
inline const WeightArena& arena() {
  static const WeightArena a(std::size_t{1} << 30);
  return a;
}

/// Sum of n floats (4 independent vector accumulators, software prefetch 8 KiB ahead: the
/// fastest of the simple streaming readers on the reference machine, so the limit is not
/// understated); n a multiple of 4 * batch size.
inline float read_sum(const float* p, std::size_t n) noexcept {
  using B = xsimd::batch<float>;
  constexpr std::size_t L = B::size;
  constexpr std::size_t kAhead = 8192 / sizeof(float);
  B s0(0.0f), s1(0.0f), s2(0.0f), s3(0.0f);
  for (std::size_t i = 0; i + 4 * L <= n; i += 4 * L) {
#if defined(__GNUC__)
    for (std::size_t b = 0; b < 4 * L; b += 64 / sizeof(float)) {
      __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(p + i + b) +
                                                       kAhead * sizeof(float)));
    }
#endif
    s0 += B::load_aligned(p + i);
    s1 += B::load_aligned(p + i + L);
    s2 += B::load_aligned(p + i + 2 * L);
    s3 += B::load_aligned(p + i + 3 * L);
  }
  return xsimd::hadd((s0 + s1) + (s2 + s3));
}

/// Reads the whole arena once with `threads` threads; returns seconds.
inline double time_read(std::size_t threads) {
  const auto* p = reinterpret_cast<const float*>(arena().data());
  const std::size_t n = arena().size() / sizeof(float);
  float sums[2] = {0, 0};
  const auto t0 = std::chrono::steady_clock::now();
  pool(threads).parallel_for(threads, [&](std::size_t i, std::size_t) {
    sums[i] = read_sum(p + i * (n / threads), n / threads);
  });
  const auto t1 = std::chrono::steady_clock::now();
  benchmark::DoNotOptimize(sums);
  return std::chrono::duration<double>(t1 - t0).count();
}

/// Independent FMA chains of the peak loop: enough to cover the FMA latency of every host (4
/// cycles x 2 pipes needs 8) while the chains, the multiplier and the addend all stay in
/// registers. 16 chains on a 16-register ISA (AVX2) spill and measured 0.55 of the 12-chain rate
/// on Zen 3 (48.6 vs 88.9 GFLOP/s), which would inflate every peak_frac there 1.8x.
inline constexpr int kFmaChains = moe::simd::kVectorRegisters >= 32 ? 16 : 12;

/// `iters` steps of kFmaChains independent FMA chains (kFmaChains * batch::size * 2 flops per
/// step).
inline float fma_chains(std::size_t iters) noexcept {
  using B = xsimd::batch<float>;
  B a[kFmaChains];
  for (int j = 0; j < kFmaChains; ++j) a[j] = B(0.001f * static_cast<float>(j));
  const B m(0.99999f), c(1e-6f);
  for (std::size_t i = 0; i < iters; ++i) {
    for (int j = 0; j < kFmaChains; ++j) a[j] = xsimd::fma(a[j], m, c);
  }
  B s = a[0];
  for (int j = 1; j < kFmaChains; ++j) s += a[j];
  return xsimd::hadd(s);
}
inline constexpr std::size_t kFmaIters = 20'000'000;
inline double fma_flops_per_thread() {
  return static_cast<double>(kFmaIters) * kFmaChains *
         static_cast<double>(xsimd::batch<float>::size) * 2.0;
}

/// Runs the FMA loop on `threads` threads; returns seconds.
inline double time_fma(std::size_t threads) {
  float sums[2] = {0, 0};
  const auto t0 = std::chrono::steady_clock::now();
  pool(threads).parallel_for(threads,
                             [&](std::size_t i, std::size_t) { sums[i] = fma_chains(kFmaIters); });
  const auto t1 = std::chrono::steady_clock::now();
  benchmark::DoNotOptimize(sums);
  return std::chrono::duration<double>(t1 - t0).count();
}

/// CPU time of the calling thread (seconds).
inline double thread_cpu_seconds() noexcept {
#if defined(__linux__)
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
#else
  return 0.0;
#endif
}

/// The FMA loop on the calling thread over its CPU time (FLOP per CPU second): one core's peak
/// as a preempted thread sees it, the denominator of the threads:1 benchmarks' peak_frac_cpu
/// (a real-time peak measured while other jobs run comes out low and inflates those ratios).
inline double fma_flops_per_cpu_second() {
  const double c0 = thread_cpu_seconds();
  const float sum = fma_chains(kFmaIters);
  const double c1 = thread_cpu_seconds();
  benchmark::DoNotOptimize(sum);
  return fma_flops_per_thread() / (c1 - c0);
}

struct Limits {
  double dram_bytes_per_s[3] = {0, 0, 0};  ///< index = threads (1, 2)
  double fma_flops_per_s[3] = {0, 0, 0};
  double fma_flops_per_cpu_s = 0;  ///< one thread, over its CPU time (fma_flops_per_cpu_second)
  double dram(std::size_t threads) const { return dram_bytes_per_s[threads >= 2 ? 2 : 1]; }
  double fma(std::size_t threads) const { return fma_flops_per_s[threads >= 2 ? 2 : 1]; }
};

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// Limits measured once (median of 5 runs each), at first use.
inline const Limits& limits() {
  static const Limits l = [] {
    Limits r;
    for (std::size_t t : {std::size_t{1}, std::size_t{2}}) {
      time_read(t);  // warm-up (page faults, frequency)
      std::vector<double> bw, fl;
      for (int rep = 0; rep < 5; ++rep) {
        bw.push_back(static_cast<double>(arena().size()) / time_read(t));
        fl.push_back(fma_flops_per_thread() * static_cast<double>(t) / time_fma(t));
      }
      r.dram_bytes_per_s[t] = median(bw);
      r.fma_flops_per_s[t] = median(fl);
    }
    std::vector<double> cpu;
    for (int rep = 0; rep < 5; ++rep) cpu.push_back(fma_flops_per_cpu_second());
    r.fma_flops_per_cpu_s = median(cpu);
    std::fprintf(stderr,
                 "moe_bench limits (same run): DRAM read %.1f / %.1f GB/s, f32 FMA %.1f / %.1f "
                 "GFLOP/s (1 / 2 threads), %.1f GFLOP per CPU second (1 thread)\n",
                 r.dram_bytes_per_s[1] * 1e-9, r.dram_bytes_per_s[2] * 1e-9,
                 r.fma_flops_per_s[1] * 1e-9, r.fma_flops_per_s[2] * 1e-9,
                 r.fma_flops_per_cpu_s * 1e-9);
    return r;
  }();
  return l;
}

/// Standard counters of a benchmark that moves `bytes` and does `flops` per iteration on
/// `threads` threads: bytes_per_second, FLOP/s, bw_frac, peak_frac, and the per-call constants
/// (for tools/roofline.py).
inline void set_counters(benchmark::State& state, double bytes, double flops, std::size_t threads) {
  const Limits& l = limits();
  const double it = static_cast<double>(state.iterations());
  state.SetBytesProcessed(static_cast<std::int64_t>(it * bytes));
  state.counters["FLOP/s"] = benchmark::Counter(it * flops, benchmark::Counter::kIsRate);
  state.counters["bw_frac"] =
      benchmark::Counter(it * bytes / l.dram(threads), benchmark::Counter::kIsRate);
  state.counters["peak_frac"] =
      benchmark::Counter(it * flops / l.fma(threads), benchmark::Counter::kIsRate);
  state.counters["bytes_per_call"] = bytes;
  state.counters["flop_per_call"] = flops;
  state.counters["threads"] = static_cast<double>(threads);
}

/// Limits probed right before a benchmark (a short FMA loop and a 128 MiB read, best of 3 each):
/// on a shared machine the load changes within a run, so `peak_frac_local` / `bw_frac_local`
/// (the benchmark's rates over these) follow it better than the limits measured once at start.
struct LocalLimits {
  double fma = 0, dram = 0;
};
inline LocalLimits probe(std::size_t threads) {
  LocalLimits l;
  const auto* p = reinterpret_cast<const float*>(arena().data());
  const std::size_t n = (std::size_t{128} << 20) / sizeof(float);
  for (int rep = 0; rep < 3; ++rep) {
    float sums[2] = {0, 0};
    auto t0 = std::chrono::steady_clock::now();
    pool(threads).parallel_for(
        threads, [&](std::size_t i, std::size_t) { sums[i] = fma_chains(kFmaIters / 20); });
    auto t1 = std::chrono::steady_clock::now();
    l.fma = std::max(l.fma, fma_flops_per_thread() / 20.0 * static_cast<double>(threads) /
                                std::chrono::duration<double>(t1 - t0).count());
    t0 = std::chrono::steady_clock::now();
    pool(threads).parallel_for(threads, [&](std::size_t i, std::size_t) {
      sums[i] +=
          read_sum(p + (std::size_t{1} << 28) / sizeof(float) + i * (n / threads), n / threads);
    });
    t1 = std::chrono::steady_clock::now();
    l.dram = std::max(l.dram, static_cast<double>(n * sizeof(float)) /
                                  std::chrono::duration<double>(t1 - t0).count());
    benchmark::DoNotOptimize(sums);
  }
  return l;
}

/// set_counters plus peak_frac_local / bw_frac_local against limits probed before the run.
inline void set_counters_local(benchmark::State& state, double bytes, double flops,
                               std::size_t threads, const LocalLimits& local) {
  set_counters(state, bytes, flops, threads);
  const double it = static_cast<double>(state.iterations());
  state.counters["peak_frac_local"] =
      benchmark::Counter(it * flops / local.fma, benchmark::Counter::kIsRate);
  state.counters["bw_frac_local"] =
      benchmark::Counter(it * bytes / local.dram, benchmark::Counter::kIsRate);
  state.counters["fma_local_GFLOPs"] = local.fma * 1e-9;
  state.counters["dram_local_GBps"] = local.dram * 1e-9;
}

/// Registers baseline/read_bw/threads:{1,2} and baseline/fma_peak/threads:{1,2}.
inline void register_baselines() {
  for (std::size_t t : {std::size_t{1}, std::size_t{2}}) {
    benchmark::RegisterBenchmark(("baseline/read_bw/threads:" + std::to_string(t)).c_str(),
                                 [t](benchmark::State& state) {
                                   for (auto _ : state) state.SetIterationTime(time_read(t));
                                   set_counters(state, static_cast<double>(arena().size()), 0.0, t);
                                   state.counters["kind"] = 1;  // 1 = bandwidth baseline
                                 })
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond)
        ->MinTime(0.3);
    benchmark::RegisterBenchmark(("baseline/fma_peak/threads:" + std::to_string(t)).c_str(),
                                 [t](benchmark::State& state) {
                                   for (auto _ : state) state.SetIterationTime(time_fma(t));
                                   set_counters(state, 0.0,
                                                fma_flops_per_thread() * static_cast<double>(t), t);
                                   state.counters["kind"] = 2;  // 2 = compute baseline
                                 })
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond)
        ->MinTime(0.3);
  }
}

}  // namespace moe_bench
