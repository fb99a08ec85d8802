// bench_moe: MoE layer forward (route + dispatch + experts + combine) at Grok-1's shape and at a
// small shape, 2 threads (and 1 for comparison).
//
//   moe/grok1/int8/tokens:T       D 6144, F 32768, 8 experts, top-2, Grok1 preset, int8 experts in
//                                 the checkpoint layout (gate/up [8, 6144, 32768] with one scale
//                                 row, down [8, 32768, 6144] with 8 scale blocks), T = 1, 16, 256
//   moe/grok1/int8/gemvs_only     the same T = 1 work without the layer: the 6 int8 GEMVs alone
//   moe/small/<f32|bf16>/<in_out|out_in>/tokens:T/threads:N
//                                 D 1024, F 4096, 8 experts, top-2, Mixtral preset (SiLU,
//                                 renormalised), T = 1, 16, 256 on 2 threads, and T = 256 on 1
//                                 thread (bench/compare_pytorch.py runs the same in PyTorch)
//   moe/small/<f32|bf16>/in_out/gemms_only/tokens:256
//                                 the matmul calls of that T = 256 pass alone (same rows/expert)
//   moe/train/<shape>/tokens:T    training: forward_train + backward of an f32 Mixtral-preset layer
//                                 (SiLU, renormalised top-2 of 8, dropless, balance loss), every
//                                 weight trainable: "scaled" D 1024, F 4096, T = 256 and
//                                 "small_lm" D 256, F 512, T = 2048; 2 threads. peak_frac counts 3x
//                                 the forward's expert FLOPs (6 D F per routed pair)
//   baseline/...                  same-run DRAM read bandwidth and f32 FMA peak (bench_baselines)
//
// Tokens are chosen so that routing is spread over the experts: at T = 1 every iteration takes the
// next token of a cycle whose consecutive tokens share no expert weights (so every call reads its
// two experts from DRAM); at T >= 16 the random router spreads the batch over all experts.
//
// Counters: tok/s; experts (distinct experts computed per call); bytes_per_call = weight bytes of
// those experts (+ router); bw_frac = bytes/s over the same-run 2-thread DRAM read bandwidth;
// peak_frac = FLOP/s over the same-run 2-thread FMA peak (FLOPs = 2 * 3 * D * F per routed pair).
// For Grok T = 1, bw_frac is the ratio to the DRAM bound of the two selected experts (target 0.85).
//
// Memory: the small shape's weights are hugepage-advised (as in bench_kernels). Grok's 8 int8
// experts are 4.8 GB: expert e is mapped onto physical copy e % 4 (a memfd mapped into one
// contiguous [E, in, out] range), so the run uses 2.4 GB. Each copy is 604 MB, far larger than the
// caches, and the T = 1 token cycle never reads the same physical copy in two consecutive calls,
// so the DRAM traffic per token is the real one. The memfd has 4 KiB pages, like a memory-mapped
// checkpoint in the page cache.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <moe/layers/presets.hpp>

#include "bench_baselines.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace {

constexpr std::size_t kThreads = 2;

/// `experts` blocks of `bytes` (page multiple) in one contiguous virtual range; block e is backed
/// by physical copy e % sets (memfd mapped several times). sets == experts: plain memory.
class AliasedBlocks {
 public:
  AliasedBlocks(std::size_t bytes, std::size_t experts, std::size_t sets)
      : bytes_(bytes), experts_(experts), sets_(sets) {
#if defined(__linux__)
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    if (bytes % page != 0) throw std::runtime_error("AliasedBlocks: size is not a page multiple");
    fd_ = memfd_create("moe_bench_experts", 0);
    if (fd_ < 0 || ftruncate(fd_, static_cast<off_t>(bytes * sets)) != 0) {
      throw std::runtime_error("AliasedBlocks: memfd failed");
    }
    void* base = mmap(nullptr, bytes * experts, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) throw std::runtime_error("AliasedBlocks: reserve failed");
    base_ = static_cast<std::uint8_t*>(base);
    for (std::size_t e = 0; e < experts; ++e) {
      void* p = mmap(base_ + e * bytes, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd_,
                     static_cast<off_t>((e % sets) * bytes));
      if (p == MAP_FAILED) throw std::runtime_error("AliasedBlocks: map failed");
    }
#else
    throw std::runtime_error("AliasedBlocks needs Linux");
#endif
  }
  ~AliasedBlocks() {
#if defined(__linux__)
    munmap(base_, bytes_ * experts_);
    close(fd_);
#endif
  }
  AliasedBlocks(const AliasedBlocks&) = delete;
  AliasedBlocks& operator=(const AliasedBlocks&) = delete;

  std::uint8_t* data() const noexcept {
    return base_;
  }
  /// Fills the physical copies with pseudo-random bytes.
  void fill_random(std::uint32_t seed) {
    for (std::size_t s = 0; s < sets_; ++s) {
      auto* w = reinterpret_cast<std::uint32_t*>(base_ + s * bytes_);
      std::uint32_t x = seed + static_cast<std::uint32_t>(s) * 7919u;
      for (std::size_t i = 0; i < bytes_ / 4; ++i) {
        x = x * 1664525u + 1013904223u;
        w[i] = x;
      }
    }
  }

 private:
  std::size_t bytes_, experts_, sets_;
  int fd_ = -1;
  std::uint8_t* base_ = nullptr;
};

/// A page-aligned, hugepage-advised array (weights in memory should be backed by 2 MiB pages:
/// with 4 KiB pages the hardware prefetchers stop at every page boundary).
template <class T>
class HugeArray {
 public:
  explicit HugeArray(std::size_t n) : n_(n) {
    const std::size_t bytes = (n * sizeof(T) + kAlign - 1) / kAlign * kAlign;
    data_ = static_cast<T*>(::operator new (bytes, std::align_val_t{kAlign}));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(data_, bytes, MADV_HUGEPAGE);
#endif
  }
  ~HugeArray() {
    ::operator delete (data_, std::align_val_t{kAlign});
  }
  HugeArray(const HugeArray&) = delete;
  HugeArray& operator=(const HugeArray&) = delete;
  T* data() noexcept {
    return data_;
  }
  const T* data() const noexcept {
    return data_;
  }
  T* begin() noexcept {
    return data_;
  }
  T* end() noexcept {
    return data_ + n_;
  }

 private:
  static constexpr std::size_t kAlign = std::size_t{2} << 20;
  T* data_ = nullptr;
  std::size_t n_ = 0;
};

/// Distinct experts selected by a batch.
template <class Layer>
std::set<std::uint32_t> experts_of(const Layer& layer, const std::vector<float>& x,
                                   std::size_t t_count) {
  moe::Arena arena(layer.router().workspace_bytes(t_count));
  const auto r = layer.router().alloc_output(arena, t_count);
  layer.router().route(moe_bench::pool(1),
                       moe::MatrixView<const float>(x.data(), t_count, layer.dim()), r, arena);
  std::set<std::uint32_t> s;
  for (std::size_t i = 0; i < t_count * layer.top_k(); ++i) s.insert(r.experts.data[i]);
  return s;
}

/// Token batches to cycle through. T = 1: a cycle of single tokens whose two experts map to two
/// different physical copies, and consecutive tokens share no physical copy. T > 1: random batches.
template <class Layer>
std::vector<std::vector<float>> make_batches(const Layer& layer, std::size_t t_count,
                                             std::size_t sets, std::size_t n_batches,
                                             std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const std::size_t d = layer.dim();
  std::vector<std::vector<float>> out;
  std::set<std::uint32_t> prev, first;
  for (int tries = 0; out.size() < n_batches && tries < 100000; ++tries) {
    std::vector<float> x(t_count * d);
    for (auto& v : x) v = nd(rng);
    if (t_count == 1) {
      std::set<std::uint32_t> phys;
      for (auto e : experts_of(layer, x, 1)) phys.insert(e % static_cast<std::uint32_t>(sets));
      if (phys.size() != 2) continue;
      bool overlap = false;
      for (auto p : phys) {
        overlap = overlap || prev.count(p) != 0 ||
                  (out.size() + 1 == n_batches && first.count(p) != 0);  // the cycle wraps around
      }
      if (overlap) continue;
      prev = phys;
      if (out.empty()) first = phys;
    }
    out.push_back(std::move(x));
  }
  if (out.size() < n_batches) throw std::runtime_error("could not build the token cycle");
  return out;
}

template <class Layer>
void run_layer(benchmark::State& state, const Layer& layer, std::size_t t_count, std::size_t sets,
               double bytes_per_expert, std::size_t threads = kThreads) {
  const std::size_t d = layer.dim(), n_batches = t_count == 1 ? 8 : 2;
  const auto batches = make_batches(layer, t_count, sets, n_batches, 1234 + t_count);
  double experts = 0.0;
  for (const auto& b : batches)
    experts += static_cast<double>(experts_of(layer, b, t_count).size());
  experts /= static_cast<double>(batches.size());
  moe::Arena arena(layer.workspace_bytes(t_count));
  std::vector<float> y(t_count * d);
  auto& pool = moe_bench::pool(threads);
  layer.forward(pool, moe::MatrixView<const float>(batches[0].data(), t_count, d),
                moe::MatrixView<float>(y.data(), t_count, d), arena);  // warm-up (page faults)
  std::size_t i = 1;                                                   // batch 0 was the warm-up
  for (auto _ : state) {
    const auto& x = batches[i++ % batches.size()];
    auto r = layer.forward(pool, moe::MatrixView<const float>(x.data(), t_count, d),
                           moe::MatrixView<float>(y.data(), t_count, d), arena);
    benchmark::DoNotOptimize(r);
    benchmark::DoNotOptimize(y.data());
  }
  const double flops = 2.0 * 3.0 * static_cast<double>(d) * static_cast<double>(layer.hidden()) *
                       static_cast<double>(t_count * layer.top_k());
  const double bytes =
      experts * bytes_per_expert + static_cast<double>(layer.router().gate().bytes());
  moe_bench::set_counters(state, bytes, flops, threads);
  state.counters["tok/s"] = benchmark::Counter(static_cast<double>(state.iterations() * t_count),
                                               benchmark::Counter::kIsRate);
  state.counters["experts"] = experts;
  state.counters["tokens"] = static_cast<double>(t_count);
}

// ---- Grok-1 shape -------------------------------------------------------------------------------

struct GrokWeights {
  static constexpr std::size_t kD = 6144, kF = 32768, kE = 8, kSets = 4;
  AliasedBlocks gate{kD * kF, kE, kSets}, up{kD * kF, kE, kSets}, down{kF * kD, kE, kSets};
  std::vector<moe::bf16> gate_s, up_s, down_s;
  std::vector<float> router;
  std::unique_ptr<moe::presets::Grok1> layer;

  GrokWeights() : gate_s(kE * kF), up_s(kE * kF), down_s(kE * 8 * kD), router(kD * kE) {
    gate.fill_random(1);
    up.fill_random(2);
    down.fill_random(3);
    std::mt19937 rng(4);
    std::uniform_real_distribution<float> sc(0.5f, 1.5f);
    for (auto* v : {&gate_s, &up_s}) {
      for (auto& s : *v) s = moe::bf16(sc(rng) * 1e-3f);
    }
    for (auto& s : down_s) s = moe::bf16(sc(rng) * 5e-4f);
    std::normal_distribution<float> nd(0.0f, 1.0f / 78.0f);
    for (auto& w : router) w = nd(rng);
    const auto* gq = reinterpret_cast<const std::int8_t*>(gate.data());
    const auto* uq = reinterpret_cast<const std::int8_t*>(up.data());
    const auto* dq = reinterpret_cast<const std::int8_t*>(down.data());
    layer = std::make_unique<moe::presets::Grok1>(
        moe::F32Weight{router.data(), kD, kE, moe::Layout::kInOut},
        moe::WeightStack<moe::Int8Weight>{{gq, gate_s.data(), kD, kF, 1}, kE},
        moe::WeightStack<moe::Int8Weight>{{uq, up_s.data(), kD, kF, 1}, kE},
        moe::WeightStack<moe::Int8Weight>{{dq, down_s.data(), kF, kD, 8}, kE});
  }
};

GrokWeights& grok() {
  static GrokWeights w;
  return w;
}

void BM_grok(benchmark::State& state) {
  const auto t_count = static_cast<std::size_t>(state.range(0));
  auto& w = grok();
  run_layer(state, *w.layer, t_count, GrokWeights::kSets,
            static_cast<double>(w.layer->experts().bytes_per_expert()));
}

/// The same work without the layer: the six int8 GEMVs (gate, up, down of the two experts the
/// token cycle of BM_grok selects), to separate the layer's overhead from the kernels'.
void BM_grok_gemvs(benchmark::State& state) {
  auto& w = grok();
  const auto& layer = *w.layer;
  const auto batches = make_batches(layer, 1, GrokWeights::kSets, 8, 1234 + 1);
  std::vector<std::vector<std::uint32_t>> pairs;
  for (const auto& b : batches) {
    const auto s = experts_of(layer, b, 1);
    pairs.emplace_back(s.begin(), s.end());
  }
  std::vector<float> g(layer.hidden()), u(layer.hidden()), y(layer.dim());
  auto& pool = moe_bench::pool(kThreads);
  std::size_t i = 0;
  for (auto _ : state) {
    for (std::uint32_t e : pairs[i++ % pairs.size()]) {
      moe::matvec(pool, batches[0].data(), layer.experts().gate()[e], g.data());
      moe::matvec(pool, batches[0].data(), layer.experts().up()[e], u.data());
      moe::matvec(pool, g.data(), layer.experts().down()[e], y.data());
    }
    benchmark::DoNotOptimize(y.data());
  }
  const double bytes = 2.0 * static_cast<double>(layer.experts().bytes_per_expert());
  moe_bench::set_counters(state, bytes, 2.0 * 3.0 * 6144.0 * 32768.0 * 2.0, kThreads);
  state.counters["experts"] = 2;
}

// ---- small shape --------------------------------------------------------------------------------

template <class T>
struct SmallWeights {
  static constexpr std::size_t kD = 1024, kF = 4096, kE = 8;
  HugeArray<T> gate, up, down;
  std::vector<float> router;
  std::unique_ptr<moe::presets::Mixtral<moe::DenseWeight<T>>> layer;

  explicit SmallWeights(moe::Layout layout)
      : gate(kE * kD * kF), up(kE * kD * kF), down(kE * kF * kD), router(kD * kE) {
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    auto fill = [&](HugeArray<T>& v, float sd) {
      for (auto& x : v) {
        if constexpr (std::is_same_v<T, float>) {
          x = sd * nd(rng);
        } else {
          x = moe::bf16(sd * nd(rng));
        }
      }
    };
    fill(gate, 1.0f / 32.0f);
    fill(up, 1.0f / 32.0f);
    fill(down, 1.0f / 64.0f);
    for (auto& r : router) r = nd(rng) / 32.0f;
    layer = std::make_unique<moe::presets::Mixtral<moe::DenseWeight<T>>>(
        moe::F32Weight{router.data(), kD, kE, moe::Layout::kInOut},
        moe::WeightStack<moe::DenseWeight<T>>{{gate.data(), kD, kF, layout}, kE},
        moe::WeightStack<moe::DenseWeight<T>>{{up.data(), kD, kF, layout}, kE},
        moe::WeightStack<moe::DenseWeight<T>>{{down.data(), kF, kD, layout}, kE});
  }
};

template <class T>
SmallWeights<T>& small(moe::Layout layout) {
  static SmallWeights<T> in_out(moe::Layout::kInOut), out_in(moe::Layout::kOutIn);
  return layout == moe::Layout::kInOut ? in_out : out_in;
}

template <class T>
void BM_small(benchmark::State& state, moe::Layout layout) {
  const auto t_count = static_cast<std::size_t>(state.range(0));
  auto& w = small<T>(layout);
  run_layer(state, *w.layer, t_count, SmallWeights<T>::kE,
            static_cast<double>(w.layer->experts().bytes_per_expert()),
            static_cast<std::size_t>(state.range(1)));
}

/// The matmul calls of one T = 256 forward pass without the layer (same rows per expert), to
/// separate the layer's own work from the kernels'.
template <class T>
void BM_small_gemms(benchmark::State& state, moe::Layout layout) {
  constexpr std::size_t kT = 256;
  auto& w = small<T>(layout);
  const auto& layer = *w.layer;
  const std::size_t d = layer.dim(), f = layer.hidden();
  const auto batches = make_batches(layer, kT, SmallWeights<T>::kE, 1, 1234 + kT);
  moe::Arena arena(layer.workspace_bytes(kT));
  std::vector<float> y(kT * d), xg(kT * d), g(kT * f), u(kT * f);
  auto& pool = moe_bench::pool(kThreads);
  const auto res = layer.forward(pool, moe::MatrixView<const float>(batches[0].data(), kT, d),
                                 moe::MatrixView<float>(y.data(), kT, d), arena);
  for (auto _ : state) {
    for (std::size_t e = 0; e < SmallWeights<T>::kE; ++e) {
      const std::size_t n = res.stats.tokens_per_expert[e];
      if (n == 0) continue;
      moe::matmul(pool, moe::MatrixView<const float>(xg.data(), n, d), layer.experts().gate()[e],
                  moe::MatrixView<float>(g.data(), n, f));
      moe::matmul(pool, moe::MatrixView<const float>(xg.data(), n, d), layer.experts().up()[e],
                  moe::MatrixView<float>(u.data(), n, f));
      moe::matmul(pool, moe::MatrixView<const float>(g.data(), n, f), layer.experts().down()[e],
                  moe::MatrixView<float>(y.data(), n, d));
    }
    benchmark::DoNotOptimize(y.data());
  }
  const double flops = 2.0 * 3.0 * static_cast<double>(d * f) * static_cast<double>(kT * 2);
  moe_bench::set_counters(state, 0.0, flops, kThreads);
  state.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * kT), benchmark::Counter::kIsRate);
}

// ---- training: forward_train + backward -------------------------------------------------------

/// An f32 Mixtral-preset layer with trainable weights, their gradients, a batch and its dy.
struct TrainSetup {
  using Layer = moe::presets::Mixtral<moe::F32Weight>;
  std::size_t d, f, e, t;
  HugeArray<float> gate, up, down, g_gate, g_up, g_down;
  std::vector<float> router, g_router, x, dy, dx, y;
  std::unique_ptr<Layer> layer;
  Layer::Grads grads;
  moe::Arena scratch, tape;

  TrainSetup(std::size_t d_, std::size_t f_, std::size_t e_, std::size_t t_)
      : d(d_),
        f(f_),
        e(e_),
        t(t_),
        gate(e_ * d_ * f_),
        up(e_ * d_ * f_),
        down(e_ * f_ * d_),
        g_gate(e_ * d_ * f_),
        g_up(e_ * d_ * f_),
        g_down(e_ * f_ * d_),
        router(d_ * e_),
        g_router(d_ * e_, 0.0f),
        x(t_ * d_),
        dy(t_ * d_),
        dx(t_ * d_, 0.0f),
        y(t_ * d_) {
    std::mt19937 rng(11);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const float sd = 1.0f / std::sqrt(static_cast<float>(d)),
                sf = 1.0f / std::sqrt(static_cast<float>(f));
    for (auto& v : gate) v = sd * nd(rng);
    for (auto& v : up) v = sd * nd(rng);
    for (auto& v : down) v = sf * nd(rng);
    for (auto& v : router) v = sd * nd(rng);
    for (auto& v : x) v = nd(rng);
    for (auto& v : dy) v = nd(rng);
    for (auto* g : {&g_gate, &g_up, &g_down}) std::fill(g->begin(), g->end(), 0.0f);
    const moe::F32Weight wr{router.data(), d, e};
    layer = std::make_unique<Layer>(Layer::Weights{.router = wr,
                                                   .gate = {{gate.data(), d, f}, e},
                                                   .up = {{up.data(), d, f}, e},
                                                   .down = {{down.data(), f, d}, e}});
    grads.router.gate = moe::WeightGrad::like(g_router.data(), wr);
    grads.experts.gate = moe::grad_like(g_gate.data(), layer->experts().gate());
    grads.experts.up = moe::grad_like(g_up.data(), layer->experts().up());
    grads.experts.down = moe::grad_like(g_down.data(), layer->experts().down());
    scratch = moe::Arena(layer->training_workspace_bytes(t));
    tape = moe::Arena(layer->tape_bytes(t));
  }

  /// One forward_train + backward; returns the (token, expert) pairs computed.
  std::size_t step(moe::ThreadPool& pool) {
    tape.reset();
    Layer::Saved saved;
    const moe::MoEResult r = layer->forward_train(pool, {x.data(), t, d}, {y.data(), t, d}, scratch,
                                                  tape, saved, {.training = true, .step = 1});
    layer->backward(pool, {x.data(), t, d}, saved, {dy.data(), t, d}, {dx.data(), t, d}, grads,
                    scratch);
    return r.stats.assignments - r.stats.dropped;
  }
};

void BM_train(benchmark::State& state, std::size_t d, std::size_t f, std::size_t t) {
  TrainSetup s(d, f, 8, t);
  auto& pool = moe_bench::pool(kThreads);
  std::size_t pairs = s.step(pool);  // warm-up (pages, caches)
  for (auto _ : state) {
    pairs = s.step(pool);
    benchmark::DoNotOptimize(s.dx.data());
  }
  const double fwd = 6.0 * static_cast<double>(d * f) * static_cast<double>(pairs);
  moe_bench::set_counters(state, 0.0, 3.0 * fwd, kThreads);
  state.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * t), benchmark::Counter::kIsRate);
  state.counters["tape_bytes_per_token"] =
      static_cast<double>(s.layer->tape_bytes(t)) / static_cast<double>(t);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  moe_bench::register_baselines();
  for (const char* dt : {"f32", "bf16"}) {
    for (auto layout : {moe::Layout::kInOut, moe::Layout::kOutIn}) {
      const std::string name = std::string("moe/small/") + dt + "/" +
                               (layout == moe::Layout::kInOut ? "in_out" : "out_in");
      auto* b = std::string(dt) == "f32"
                    ? benchmark::RegisterBenchmark(name.c_str(), BM_small<float>, layout)
                    : benchmark::RegisterBenchmark(name.c_str(), BM_small<moe::bf16>, layout);
      b->ArgNames({"tokens", "threads"})
          ->Args({1, 2})
          ->Args({16, 2})
          ->Args({256, 2})
          ->Args({256, 1})
          ->Unit(benchmark::kMillisecond)
          ->MinTime(0.3)
          ->UseRealTime();
    }
  }
  benchmark::RegisterBenchmark("moe/small/f32/in_out/gemms_only/tokens:256", BM_small_gemms<float>,
                               moe::Layout::kInOut)
      ->Unit(benchmark::kMillisecond)
      ->MinTime(0.3)
      ->UseRealTime();
  benchmark::RegisterBenchmark("moe/small/bf16/in_out/gemms_only/tokens:256",
                               BM_small_gemms<moe::bf16>, moe::Layout::kInOut)
      ->Unit(benchmark::kMillisecond)
      ->MinTime(0.3)
      ->UseRealTime();
  benchmark::RegisterBenchmark("moe/grok1/int8/gemvs_only", BM_grok_gemvs)
      ->Unit(benchmark::kMillisecond)
      ->MinTime(0.5)
      ->UseRealTime();
  benchmark::RegisterBenchmark("moe/grok1/int8", BM_grok)
      ->ArgName("tokens")
      ->Arg(1)
      ->Arg(16)
      ->Unit(benchmark::kMillisecond)
      ->MinTime(0.5)
      ->UseRealTime();
  benchmark::RegisterBenchmark("moe/grok1/int8", BM_grok)
      ->ArgName("tokens")
      ->Arg(256)
      ->Unit(benchmark::kMillisecond)
      ->Iterations(2)
      ->UseRealTime();
  benchmark::RegisterBenchmark("moe/train/scaled/tokens:256", BM_train, 1024, 4096, 256)
      ->Unit(benchmark::kMillisecond)
      ->MinTime(1.0)
      ->UseRealTime();
  benchmark::RegisterBenchmark("moe/train/small_lm/tokens:2048", BM_train, 256, 512, 2048)
      ->Unit(benchmark::kMillisecond)
      ->MinTime(1.0)
      ->UseRealTime();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
