// bench_kernels: moe::matmul (f32 / bf16 / int8 weights) against this run's machine limits and
// Eigen, at Grok-1's shapes and a small one.
//
//   baseline/read_bw/threads:N       DRAM read bandwidth (1 GiB sum)       -> bw_frac limit
//   (threads:1 matmuls also report peak_frac_cpu: FLOP/s over the thread's CPU time, over the
//   FMA loop's FLOP per CPU second: what a core achieves while other jobs preempt it)
//   baseline/fma_peak/threads:N      f32 FMA peak (register-only loop)     -> peak_frac limit
//   matmul/<weight>/<in>x<out>/T:<T>/threads:N   moe::matmul
//   eigen/f32/<in>x<out>/T:<T>/threads:N         Eigen 3.4 on the same f32 [in, out] data
//   matmul/int8act_b<B>/<in>x<out>/T:<T>/threads:N   Int8ActWeight (int8 activations: VNNI,
//                                                    AVX2 or scalar kernel)
//   zen5plan/<weight>/<in>x<out>/T:<T>/threads:N  moe::matmul with the Zen 5 host's blocking
//   emrplan/<weight>/<in>x<out>/T:<T>/threads:N   ... with the Emerald Rapids host's blocking
//                                                 (to compare with this host's, same run)
//   grad_input/<weight>/<in>x<out>/T:<T>           matmul_backward_input  (dx += dy W^T)
//   grad_weight/<layout>/<in>x<out>/T:<T>          matmul_backward_weight (g += x^T dy)
//   decoder/grok1_demo/<exact|int8act>/T:<T>      Grok-shaped demo decoder prefill; the int8act
//                                                 run reports its logit error vs the exact one
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
#include <moe/models/grok1.hpp>
#include <moe/ops/matmul.hpp>
#include <moe/ops/matmul_grad.hpp>
#include <moe/ops/weights.hpp>

#include "bench_baselines.hpp"
#include "support/grok1_random_weights.hpp"

namespace {

enum class WType { kF32, kF32OutIn, kBf16, kBf16OutIn, kInt8, kInt8Act };

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
    case WType::kInt8Act:
      return "int8act";
  }
  return "?";
}
bool is_int8(WType w) {
  return w == WType::kInt8 || w == WType::kInt8Act;
}
std::size_t elem_bytes(WType w) {
  return w == WType::kF32 || w == WType::kF32OutIn ? 4 : is_int8(w) ? 1 : 2;
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
  return s.in * s.out * elem_bytes(wt) + (is_int8(wt) ? blocks * s.out * 2 : 0);
}

/// moe::matmul, or with `blocking` (nullptr: this host's) through the detail entry points.
void run_matmul(WType wt, const std::uint8_t* p, Shape s, std::size_t blocks, std::size_t T,
                moe::ThreadPool& pool, const moe::detail::Blocking* blocking = nullptr) {
  const moe::MatrixView<const float> x(io().x.data(), T, s.in);
  const moe::MatrixView<float> y(io().y.data(), T, s.out);
  auto mm = [&](const auto& w) {
    if (blocking == nullptr) {
      moe::matmul(pool, x, w, y);
    } else {
      moe::detail::gemm(pool, moe::detail::Activations(x), w, y, false, *blocking);
    }
  };
  switch (wt) {
    case WType::kF32:
    case WType::kF32OutIn:
      mm(moe::F32Weight{reinterpret_cast<const float*>(p), s.in, s.out,
                        wt == WType::kF32 ? moe::Layout::kInOut : moe::Layout::kOutIn});
      break;
    case WType::kBf16:
    case WType::kBf16OutIn:
      mm(moe::BF16Weight{reinterpret_cast<const moe::bf16*>(p), s.in, s.out,
                         wt == WType::kBf16 ? moe::Layout::kInOut : moe::Layout::kOutIn});
      break;
    case WType::kInt8:
    case WType::kInt8Act: {
      const moe::Int8Weight w{reinterpret_cast<const std::int8_t*>(p), io().scales.data(), s.in,
                              s.out, blocks};
      if (wt == WType::kInt8) {
        mm(w);
      } else {
        moe::matmul(pool, x, moe::Int8ActWeight(w), y);
      }
      break;
    }
  }
}

void bm_matmul(benchmark::State& state, WType wt, Shape s, std::size_t blocks, std::size_t T,
               std::size_t threads, const moe::detail::Blocking* blocking = nullptr) {
  moe::ThreadPool& pool = moe_bench::pool(threads);
  const std::size_t bytes = weight_bytes(wt, s, blocks);
  const moe_bench::LocalLimits local = moe_bench::probe(threads);
  std::size_t i = 0;
  const double cpu0 = moe_bench::thread_cpu_seconds();
  for (auto _ : state) {
    run_matmul(wt, moe_bench::arena().cycle(i++, bytes), s, blocks, T, pool, blocking);
    benchmark::ClobberMemory();
  }
  const double cpu = moe_bench::thread_cpu_seconds() - cpu0;
  const double flops = 2.0 * static_cast<double>(T * s.in * s.out);
  moe_bench::set_counters_local(state, static_cast<double>(bytes), flops, threads, local);
  if (threads == 1) {  // the CPU time of the only thread: preemption by other jobs not counted
    state.counters["peak_frac_cpu"] = flops * static_cast<double>(state.iterations()) / cpu /
                                      moe_bench::limits().fma_flops_per_cpu_s;
  }
  state.counters["kind"] = wt == WType::kInt8Act                             ? 14
                           : wt == WType::kInt8                              ? 13
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

void add_matmul(WType wt, Shape s, std::size_t T, std::size_t threads, double min_time = 0.2,
                const moe::detail::Blocking* blocking = nullptr, const char* prefix = "matmul/") {
  const std::size_t blocks = is_int8(wt) && s.in == kGrokDown.in ? 8 : 1;
  std::string name = std::string(prefix) + wtype_name(wt);
  if (is_int8(wt)) name += "_b" + std::to_string(blocks);
  name += "/" + shape_name(s) + "/T:" + std::to_string(T) + "/threads:" + std::to_string(threads);
  benchmark::RegisterBenchmark(
      name.c_str(),
      [=](benchmark::State& st) { bm_matmul(st, wt, s, blocks, T, threads, blocking); })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond)
      ->MinTime(min_time);
}

// ---- backward products (training): expert blocks of 64 rows --------------------------------

/// dx[T, in] += dy[T, out] W^T, W cold (arena), dy and dx in io().
void bm_grad_input(benchmark::State& state, WType wt, Shape s, std::size_t T) {
  moe::ThreadPool& pool = moe_bench::pool(2);
  const std::size_t bytes = weight_bytes(wt, s, 1);
  const moe::MatrixView<const float> dy(io().x.data(), T, s.out);
  const moe::MatrixView<float> dx(io().y.data(), T, s.in);
  const moe_bench::LocalLimits local = moe_bench::probe(2);
  std::size_t i = 0;
  for (auto _ : state) {
    const std::uint8_t* p = moe_bench::arena().cycle(i++, bytes);
    switch (wt) {
      case WType::kF32:
      case WType::kF32OutIn:
        moe::matmul_backward_input(
            pool, dy,
            moe::F32Weight{reinterpret_cast<const float*>(p), s.in, s.out,
                           wt == WType::kF32 ? moe::Layout::kInOut : moe::Layout::kOutIn},
            dx);
        break;
      case WType::kBf16:
      case WType::kBf16OutIn:
        moe::matmul_backward_input(
            pool, dy,
            moe::BF16Weight{reinterpret_cast<const moe::bf16*>(p), s.in, s.out,
                            wt == WType::kBf16 ? moe::Layout::kInOut : moe::Layout::kOutIn},
            dx);
        break;
      default:
        moe::matmul_backward_input(pool, dy,
                                   moe::Int8Weight{reinterpret_cast<const std::int8_t*>(p),
                                                   io().scales.data(), s.in, s.out, 1},
                                   dx);
        break;
    }
    benchmark::ClobberMemory();
  }
  moe_bench::set_counters_local(state, static_cast<double>(bytes),
                                2.0 * static_cast<double>(T * s.in * s.out), 2, local);
  state.counters["kind"] = 30;
}

/// g[in, out] += x^T dy in g's layout; x, dy in io(), g a fixed buffer (hot, as in training).
void bm_grad_weight(benchmark::State& state, moe::Layout layout, Shape s, std::size_t T) {
  moe::ThreadPool& pool = moe_bench::pool(2);
  static moe::Buffer<float> g(4096 * 4096, 0.0f);
  const moe::MatrixView<const float> x(io().x.data(), T, s.in);
  const moe::MatrixView<const float> dy(io().y.data(), T, s.out);
  const moe_bench::LocalLimits local = moe_bench::probe(2);
  for (auto _ : state) {
    moe::matmul_backward_weight(pool, x, dy, moe::WeightGrad{g.data(), s.in, s.out, layout});
    benchmark::ClobberMemory();
  }
  moe_bench::set_counters_local(state, static_cast<double>(s.in * s.out * sizeof(float)),
                                2.0 * static_cast<double>(T * s.in * s.out), 2, local);
  state.counters["kind"] = 31;
}

void add_grads() {
  // A small MoE LM (D 256, F 512) and the scaled layer (D 1024, F 4096): up/gate [D -> F] and
  // down [F -> D] projections, 64 rows per expert (T = 256 tokens, 8 experts, top-2).
  const Shape shapes[] = {{256, 512}, {512, 256}, {1024, 4096}, {4096, 1024}};
  constexpr std::size_t T = 64;
  for (Shape s : shapes) {
    for (WType wt : {WType::kF32, WType::kF32OutIn, WType::kBf16, WType::kInt8}) {
      const std::string name = std::string("grad_input/") + wtype_name(wt) + "/" + shape_name(s) +
                               "/T:" + std::to_string(T);
      benchmark::RegisterBenchmark(name.c_str(),
                                   [=](benchmark::State& st) { bm_grad_input(st, wt, s, T); })
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond)
          ->MinTime(0.2);
    }
    for (moe::Layout l : {moe::Layout::kInOut, moe::Layout::kOutIn}) {
      const std::string name = std::string("grad_weight/") +
                               (l == moe::Layout::kInOut ? "in_out/" : "out_in/") + shape_name(s) +
                               "/T:" + std::to_string(T);
      benchmark::RegisterBenchmark(name.c_str(),
                                   [=](benchmark::State& st) { bm_grad_weight(st, l, s, T); })
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond)
          ->MinTime(0.2);
    }
  }
}

// ---- int8 activations on the Grok-shaped demo decoder ---------------------------------------

/// Prefill of T tokens through Config::demo() (12 layers, D 256, 8 experts, F 512), exact int8
/// or int8 activations; the int8act run also reports its logits' error against the exact model
/// (max and rms |delta| over the logits' standard deviation).
void bm_decoder(benchmark::State& state, bool int8act, std::size_t T) {
  static const moe::grok1::Config cfg = moe::grok1::Config::demo();
  static const moe::grok1::RandomWeights rw(cfg, 7);
  static const moe::grok1::WeightsT<moe::Int8ActWeight> wa =
      moe::grok1::int8_activations(rw.weights());
  moe::ThreadPool& pool = moe_bench::pool(2);
  const std::size_t V = cfg.vocab_size;
  std::vector<std::int32_t> tokens(T);
  for (std::size_t i = 0; i < T; ++i) tokens[i] = static_cast<std::int32_t>((37 * i + 11) % V);
  const auto exact = moe::grok1::make_model(cfg, rw.weights());
  const auto approx = moe::grok1::make_model(cfg, wa);
  std::vector<float> le(T * V), la(T * V);
  auto se = exact.make_state(T, T), sa = approx.make_state(T, T);
  for (auto _ : state) {
    if (int8act) {
      sa.reset();
      approx.forward(pool, tokens, sa, {la.data(), T, V});
    } else {
      se.reset();
      exact.forward(pool, tokens, se, {le.data(), T, V});
    }
  }
  state.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(T * state.iterations()), benchmark::Counter::kIsRate);
  if (int8act) {
    se.reset();
    exact.forward(pool, tokens, se, {le.data(), T, V});
    double sum = 0, sum2 = 0, err2 = 0, emax = 0;
    for (std::size_t i = 0; i < le.size(); ++i) {
      sum += le[i];
      sum2 += double(le[i]) * le[i];
      const double d = std::abs(double(la[i]) - le[i]);
      err2 += d * d;
      emax = std::max(emax, d);
    }
    const double n = static_cast<double>(le.size());
    const double sd = std::sqrt(sum2 / n - (sum / n) * (sum / n));
    state.counters["max_logit_err_per_std"] = emax / sd;
    state.counters["rms_logit_err_per_std"] = std::sqrt(err2 / n) / sd;
  }
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
  // A few tokens (an expert's share of a short prefill: the direct path), [in, out] weights and
  // int8 activations.
  for (std::size_t T : {2, 3, 4, 6}) {
    for (Shape s : shapes) {
      for (WType wt : {WType::kF32, WType::kBf16, WType::kInt8, WType::kInt8Act}) {
        add_matmul(wt, s, T, 2);
      }
    }
  }
  // One core, compute-bound (peak_frac_cpu: over the thread's CPU time).
  for (std::size_t T : {64, 256}) {
    for (Shape s : shapes) {
      for (WType wt : dense_inout) add_matmul(wt, s, T, 1);
      if (T == 256) add_matmul(WType::kInt8Act, s, T, 1);
    }
  }
  add_eigen(kSmall, 256, 1);
  // int8 activations (Int8ActWeight) at T = 1, 16, 256, next to the exact int8 runs above; on
  // one core too, with the exact int8 runs the lists above lack (the int8act / int8 ratio).
  for (std::size_t T : {1, 16, 256}) {
    for (Shape s : shapes) add_matmul(WType::kInt8Act, s, T, 2);
  }
  for (std::size_t T : {1, 16}) {
    for (Shape s : shapes) {
      if (T == 16 || !(s.in == kGrokUp.in && s.out == kGrokUp.out)) {
        add_matmul(WType::kInt8, s, T, 1);
      }
      add_matmul(WType::kInt8Act, s, T, 1);
    }
  }
  for (std::size_t T : {1, 32, 128}) {
    for (bool a : {false, true}) {
      const std::string name = std::string("decoder/grok1_demo/") + (a ? "int8act" : "exact") +
                               "/T:" + std::to_string(T);
      benchmark::RegisterBenchmark(name.c_str(),
                                   [=](benchmark::State& st) { bm_decoder(st, a, T); })
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond)
          ->MinTime(0.2);
    }
  }
  // The two tuning hosts' blockings on this host (same run): what the host-derived plan
  // changes, and whether the other vendor's rules would do better here. threads:1 reports
  // peak_frac_cpu, which a busy machine disturbs least.
  static const moe::detail::Blocking zen5 =
      moe::detail::blocking_for(moe::detail::HostInfo::zen5());
  static const moe::detail::Blocking emr =
      moe::detail::blocking_for(moe::detail::HostInfo::emerald_rapids());
  for (std::size_t threads : {2, 1}) {
    for (std::size_t T : {1, 16, 64, 256}) {
      for (Shape s : {kGrokUp, kSmall}) {
        for (WType wt : {WType::kF32, WType::kBf16, WType::kInt8}) {
          add_matmul(wt, s, T, threads, 0.2, &zen5, "zen5plan/");
          add_matmul(wt, s, T, threads, 0.2, &emr, "emrplan/");
        }
      }
    }
  }
  add_grads();
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const moe_bench::Limits& l = moe_bench::limits();
  benchmark::AddCustomContext("moe_kernels", moe::detail::kMatmulKernels);
  benchmark::AddCustomContext("moe_simd_abi", moe::simd_abi_name());
  benchmark::AddCustomContext("moe_int8act_kernels", moe::detail::kInt8ActKernels);
  const moe::detail::HostInfo& host = moe::detail::host();
  const moe::detail::Blocking& b = moe::detail::host_blocking();
  const auto gemv = [](const moe::detail::GemvStep& g) {
    return std::to_string(g.rows) + ":" + std::to_string(g.pf) + ":" + std::to_string(g.pf_short) +
           ":" + std::to_string(g.slab_bytes);
  };
  benchmark::AddCustomContext("plan_host", host.describe());
  benchmark::AddCustomContext(
      "plan_blocking",
      "kc " + std::to_string(b.kc) + ", nc " + std::to_string(b.nc) + ", max_tb " +
          std::to_string(b.max_tb) + ", f32_in_place_max_t " +
          (b.f32_in_place_max_t == static_cast<std::size_t>(-1)
               ? std::string("inf")
               : std::to_string(b.f32_in_place_max_t)) +
          ", tile_prefetch " + std::to_string(b.tile_prefetch) + ", strip_prefetch " +
          std::to_string(b.strip_prefetch) + ", c_tile " + std::to_string(b.c_tile) +
          ", direct_slab_bytes " + std::to_string(b.direct_slab_bytes) +
          ", gemv rows:pf:pf_short:slab f32 " + gemv(b.gemv_f32) + " bf16 " + gemv(b.gemv_bf16) +
          " int8 " + gemv(b.gemv_int8) + ", direct_rows " + std::to_string(b.direct_rows) +
          " (core-bound " + std::to_string(b.direct_rows_core_bound) + ")");
  benchmark::AddCustomContext("limit_dram_GBps_1t_2t", std::to_string(l.dram(1) * 1e-9) + " " +
                                                           std::to_string(l.dram(2) * 1e-9));
  benchmark::AddCustomContext("limit_fma_GFLOPs_1t_2t", std::to_string(l.fma(1) * 1e-9) + " " +
                                                            std::to_string(l.fma(2) * 1e-9));
  benchmark::AddCustomContext("limit_fma_GFLOP_per_cpu_second",
                              std::to_string(l.fma_flops_per_cpu_s * 1e-9));
  moe_bench::register_baselines();
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
