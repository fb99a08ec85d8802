// bench_decoder: decode and prefill speed of the decoder, with the share of time per component.
//
//   decoder/small/decode/threads:T/context:C   one token per iteration (grok1::Config::demo(),
//                                              int8, 12 layers, D 256), at context C
//   decoder/small/prefill/threads:T/tokens:N   N prompt tokens as one batch from an empty cache
//   grok1_layer/decode/threads:T/context:C     ONE Grok-1-shaped decoder layer (int8, D 6144,
//                                              48/8 heads of 128, 8 experts of F 32768, top-2)
//   grok1_layer/prefill/threads:T/tokens:N     N tokens through that layer
//   attention_core/grok1/decode/kv:{f32,bf16}/context:C
//                                              the attention core alone (48 query heads over 8
//                                              cached KV heads), one query token, 2 threads
//   decoder_train/dense/threads:2/recompute:R  one training step (forward_train + backward, no
//                                              optimizer) of a small LM: D 256, 4 blocks, 4 heads
//                                              of 64, dense SwiGLU FFN of width 512, V 256, 8
//                                              sequences of 256 tokens; R = 1 recomputes each
//                                              block in backward. Wall time. Counters: tok/s,
//                                              peak_frac (FLOPs = 3x the forward's), tape_MB,
//                                              scratch_MB
//
// Counters: tok/s; attn/ffn/norm/head/embed shares of the profiled time (DecoderProfile); for the
// Grok layer also router_share (the router timed separately on the same input, as a share of the
// FFN time: the rest of the FFN is the experts); bw_frac / peak_frac = weight (+ KV) bytes/s and
// FLOP/s over the same-run DRAM and FMA limits (bench_baselines.hpp).
//
// Memory: the Grok layer's 8 experts are 4.8 GB of int8. To fit a shared 24 GB machine, expert e
// is mapped onto physical copy e % 2 (memfd mapped twice into one contiguous [E, in, out] range),
// so it uses 1.2 GB; every expert is still far larger than the caches, so the DRAM traffic per
// token is the real one.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <moe/layers/attention.hpp>
#include <moe/layers/decoder.hpp>
#include <moe/layers/expert.hpp>
#include <moe/layers/kv_cache.hpp>
#include <moe/layers/presets.hpp>
#include <moe/layers/transformer_block.hpp>
#include <moe/models/grok1.hpp>
#include <moe/text/sampler.hpp>

#include "bench_baselines.hpp"
#include "support/grok1_random_weights.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace {

using Clock = std::chrono::steady_clock;

void profile_counters(benchmark::State& st, const moe::DecoderProfile& p) {
  const double t = p.total() > 0 ? p.total() : 1.0;
  st.counters["attn_share"] = p.attention / t;
  st.counters["ffn_share"] = p.ffn / t;
  st.counters["norm_share"] = p.norms / t;
  st.counters["head_share"] = p.head / t;
  st.counters["embed_share"] = p.embedding / t;
}

// ---- the small model ---------------------------------------------------------------------------

struct Small {
  moe::grok1::Config cfg = moe::grok1::Config::demo();
  moe::grok1::RandomWeights weights{cfg, 1};
  moe::grok1::Model model = moe::grok1::make_model(cfg, weights.weights());

  /// Weight bytes one decode step reads (attention, 2 experts, router, norms, tied head), plus f32
  /// KV bytes at `context`; and the flops.
  double step_bytes(std::size_t context) const {
    const auto& l = weights.weights().layers[0];
    const double per_layer =
        static_cast<double>(l.wq.bytes() + l.wk.bytes() + l.wv.bytes() + l.wo.bytes() +
                            l.router.bytes()) +
        static_cast<double>(cfg.top_k) *
            static_cast<double>(l.expert_gate.first.bytes() + l.expert_up.first.bytes() +
                                l.expert_down.first.bytes()) +
        2.0 * static_cast<double>(context * cfg.kv_dim()) * 4.0;
    return per_layer * static_cast<double>(cfg.n_layers) +
           static_cast<double>(cfg.vocab_size * cfg.d_model) * 4.0;
  }
  double step_flops(std::size_t context) const {
    const double d = static_cast<double>(cfg.d_model);
    const double attn = 2.0 * d * static_cast<double>(2 * cfg.q_dim() + 2 * cfg.kv_dim()) +
                        4.0 * static_cast<double>(context * cfg.q_dim());
    const double moe = static_cast<double>(cfg.top_k) * 6.0 * d * static_cast<double>(cfg.d_ff) +
                       2.0 * d * static_cast<double>(cfg.n_experts);
    return (attn + moe) * static_cast<double>(cfg.n_layers) +
           2.0 * d * static_cast<double>(cfg.vocab_size);
  }
};

Small& small() {
  static Small s;
  return s;
}

void small_decode(benchmark::State& st) {
  const auto threads = static_cast<std::size_t>(st.range(0));
  const auto context = static_cast<std::size_t>(st.range(1));
  Small& m = small();
  moe::ThreadPool& pool = moe_bench::pool(threads);
  const std::size_t V = m.cfg.vocab_size;
  auto state = m.model.make_state(context + 1, std::max<std::size_t>(context, 1));
  std::vector<std::int32_t> prompt(context);
  for (std::size_t i = 0; i < context; ++i)
    prompt[i] = static_cast<std::int32_t>((i * 37 + 11) % V);
  std::vector<float> logits(V);
  moe::DecoderProfile prof;
  moe::DecoderOptions opts;
  opts.profile = &prof;
  std::int32_t token = 7;
  if (context) m.model.forward(pool, prompt, state, moe::MatrixView<float>(logits.data(), 1, V));
  for (auto _ : st) {
    m.model.step(pool, token, state, logits, opts);
    token = moe::argmax(logits);
    state.truncate(context);  // stay at the same context
  }
  st.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(st.iterations()), benchmark::Counter::kIsRate);
  profile_counters(st, prof);
  moe_bench::set_counters(st, m.step_bytes(context), m.step_flops(context), threads);
}

void small_prefill(benchmark::State& st) {
  const auto threads = static_cast<std::size_t>(st.range(0));
  const auto n = static_cast<std::size_t>(st.range(1));
  Small& m = small();
  moe::ThreadPool& pool = moe_bench::pool(threads);
  const std::size_t V = m.cfg.vocab_size;
  auto state = m.model.make_state(n, n);
  std::vector<std::int32_t> prompt(n);
  for (std::size_t i = 0; i < n; ++i) prompt[i] = static_cast<std::int32_t>((i * 37 + 11) % V);
  std::vector<float> logits(V);
  moe::DecoderProfile prof;
  moe::DecoderOptions opts;
  opts.profile = &prof;
  for (auto _ : st) {
    state.reset();
    m.model.forward(pool, prompt, state, moe::MatrixView<float>(logits.data(), 1, V), opts);
  }
  st.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(st.iterations() * n), benchmark::Counter::kIsRate);
  profile_counters(st, prof);
  // Per call: every expert's weights are read (n * top_k >> E), the head for one row.
  const auto& l = m.weights.weights().layers[0];
  const double layer_bytes = static_cast<double>(
      l.wq.bytes() + l.wk.bytes() + l.wv.bytes() + l.wo.bytes() +
      m.cfg.n_experts *
          (l.expert_gate.first.bytes() + l.expert_up.first.bytes() + l.expert_down.first.bytes()));
  const double d = static_cast<double>(m.cfg.d_model), tn = static_cast<double>(n);
  const double flops =
      tn * (static_cast<double>(m.cfg.n_layers) *
            (2.0 * d * static_cast<double>(2 * m.cfg.q_dim() + 2 * m.cfg.kv_dim()) +
             static_cast<double>(m.cfg.top_k) * 6.0 * d * static_cast<double>(m.cfg.d_ff))) +
      static_cast<double>(m.cfg.n_layers) * 2.0 * tn * tn * static_cast<double>(m.cfg.q_dim());
  moe_bench::set_counters(st, layer_bytes * static_cast<double>(m.cfg.n_layers), flops, threads);
}

// ---- one Grok-1-shaped layer -------------------------------------------------------------------

/// `count` int8 matrices of `bytes_each` bytes in one contiguous range, backed by `physical`
/// copies (matrix e is copy e % physical).
class AliasedInt8 {
 public:
  AliasedInt8(std::size_t count, std::size_t bytes_each, std::size_t physical, std::uint32_t seed)
      : count_(count), each_(bytes_each) {
#if defined(__linux__)
    if (bytes_each % static_cast<std::size_t>(sysconf(_SC_PAGESIZE)) == 0) {
      fd_ = memfd_create("moe_bench_experts", 0);
      if (fd_ >= 0 && ftruncate(fd_, static_cast<off_t>(physical * bytes_each)) == 0) {
        void* base =
            mmap(nullptr, count * bytes_each, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base != MAP_FAILED) {
          base_ = static_cast<std::uint8_t*>(base);
          for (std::size_t e = 0; e < count; ++e) {
            void* p =
                mmap(base_ + e * bytes_each, bytes_each, PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_FIXED, fd_, static_cast<off_t>((e % physical) * bytes_each));
            if (p == MAP_FAILED) throw std::runtime_error("bench: mmap of the expert copy failed");
          }
          madvise(base_, count * bytes_each, MADV_HUGEPAGE);
          fill(base_, std::min(count, physical) * bytes_each, seed);
          return;
        }
      }
    }
#endif
    (void)physical;
    owned_ = moe::Buffer<std::int8_t>(count * bytes_each);  // fallback: real copies
    base_ = reinterpret_cast<std::uint8_t*>(owned_.data());
    fill(base_, count * bytes_each, seed);
  }
  ~AliasedInt8() {
#if defined(__linux__)
    if (fd_ >= 0) {
      munmap(base_, count_ * each_);
      close(fd_);
    }
#endif
  }
  AliasedInt8(const AliasedInt8&) = delete;
  AliasedInt8& operator=(const AliasedInt8&) = delete;
  const std::int8_t* data() const {
    return reinterpret_cast<const std::int8_t*>(base_);
  }

 private:
  static void fill(std::uint8_t* p, std::size_t n, std::uint32_t s) {
    for (std::size_t i = 0; i < n; ++i) {
      s = s * 1664525u + 1013904223u;
      p[i] = static_cast<std::uint8_t>(s >> 24);
    }
  }
  std::size_t count_, each_;
  int fd_ = -1;
  std::uint8_t* base_ = nullptr;
  moe::Buffer<std::int8_t> owned_;
};

struct GrokLayer {
  moe::grok1::Config cfg = moe::grok1::Config::full();
  static constexpr std::size_t kPhysicalExperts = 2;
  std::size_t d = cfg.d_model, f = cfg.d_ff, e = cfg.n_experts;
  // attention: real int8 weights (88 MB)
  moe::Buffer<std::int8_t> wq{d * cfg.q_dim()}, wk{d * cfg.kv_dim()}, wv{d * cfg.kv_dim()},
      wo{cfg.q_dim() * d};
  moe::Buffer<moe::bf16> sq{cfg.q_dim()}, sk{cfg.kv_dim()}, sv{cfg.kv_dim()}, so{8 * d};
  AliasedInt8 gate{e, d*f, kPhysicalExperts, 1}, up{e, d*f, kPhysicalExperts, 2},
      down{e, f*d, kPhysicalExperts, 3};
  moe::Buffer<moe::bf16> sgate{e * f}, sup{e * f}, sdown{e * 8 * d};
  moe::Buffer<float> router{d * e}, norms{d, 1.0f};
  using Block = moe::grok1::BlockOf<moe::Int8Weight>;
  std::unique_ptr<Block> block;

  GrokLayer() {
    std::mt19937 rng(5);
    std::uniform_int_distribution<int> di(-127, 127);
    for (auto* b : {&wq, &wk, &wv, &wo}) {
      for (auto& v : *b) v = static_cast<std::int8_t>(di(rng));
    }
    auto scales = [&](moe::Buffer<moe::bf16>& s, double in) {
      std::uniform_real_distribution<double> u(0.75, 1.25);
      for (auto& v : s) v = moe::bf16(static_cast<float>(u(rng) / (73.6 * std::sqrt(in))));
    };
    scales(sq, static_cast<double>(d));
    scales(sk, static_cast<double>(d));
    scales(sv, static_cast<double>(d));
    scales(so, static_cast<double>(cfg.q_dim()));
    // The bench's int8 bytes are uniform in [-128, 127] (std ~74), so the same scales apply.
    scales(sgate, static_cast<double>(d));
    scales(sup, static_cast<double>(d));
    scales(sdown, static_cast<double>(f));
    std::normal_distribution<float> nd(0.0f, 1.0f / std::sqrt(static_cast<float>(d)));
    for (auto& v : router) v = nd(rng);
    const moe::Int8Weight q{wq.data(), sq.data(), d, cfg.q_dim(), 1},
        k{wk.data(), sk.data(), d, cfg.kv_dim(), 1}, v{wv.data(), sv.data(), d, cfg.kv_dim(), 1},
        o{wo.data(), so.data(), cfg.q_dim(), d, 8};
    using Moe = moe::grok1::MoEOf<moe::Int8Weight>;
    Moe moe_layer(
        typename Moe::router_type(moe::F32Weight{router.data(), d, e, moe::Layout::kInOut},
                                  moe::grok1::routing(cfg)),
        typename Moe::expert_type({{gate.data(), sgate.data(), d, f, 1}, e},
                                  {{up.data(), sup.data(), d, f, 1}, e},
                                  {{down.data(), sdown.data(), f, d, 8}, e}));
    block = std::make_unique<Block>(
        moe::RotaryAttention<moe::Int8Weight>(moe::grok1::attention_config(cfg), {q, k, v, o}),
        std::move(moe_layer),
        moe::BlockNorms{norms.span(), norms.span(), norms.span(), norms.span()},
        moe::grok1::block_config(cfg));
  }

  double attention_bytes() const {
    return static_cast<double>(wq.size() + wk.size() + wv.size() + wo.size());
  }
  double expert_bytes() const { return 3.0 * static_cast<double>(d * f); }
};

GrokLayer& grok_layer() {
  static GrokLayer g;
  return g;
}

/// Runs the Grok layer over `tokens` rows per iteration at a fixed context.
void grok_layer_run(benchmark::State& st, std::size_t tokens, std::size_t context) {
  const auto threads = static_cast<std::size_t>(st.range(0));
  GrokLayer& g = grok_layer();
  moe::ThreadPool& pool = moe_bench::pool(threads);
  const std::size_t d = g.d;
  moe::KvCache cache(1, g.cfg.n_kv_heads, g.cfg.head_dim, context + tokens);
  moe::Arena arena(g.block->workspace_bytes(std::max(tokens, context)) + (std::size_t{1} << 20));
  const auto x0 = [&] {
    std::vector<float> v(std::max(tokens, context) * d);
    std::mt19937 rng(3);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (auto& a : v) a = nd(rng);
    return v;
  }();
  std::vector<float> h(x0);
  if (context) {
    g.block->forward(pool, moe::MatrixView<float>(h.data(), context, d), cache, 0, arena);
  }
  // The router alone, on the layer's input rows (same shapes as its real input), for its share
  // of the FFN time.
  const auto& router = g.block->ffn().router();
  moe::Arena router_arena(router.workspace_bytes(tokens));
  moe::DecoderProfile prof;
  double router_s = 0;
  std::size_t experts_run = 0;
  for (auto _ : st) {
    std::copy(x0.begin(), x0.begin() + static_cast<std::ptrdiff_t>(tokens * d), h.begin());
    const auto t0 = Clock::now();
    const moe::MoEResult r =
        g.block->forward(pool, moe::MatrixView<float>(h.data(), tokens, d), cache, 0, arena, &prof);
    const auto t1 = Clock::now();
    st.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
    cache.truncate(context);
    {
      moe::Arena::Scope scope(router_arena);
      const moe::RouterOutput out = router.alloc_output(router_arena, tokens);
      const auto r0 = Clock::now();
      router.route(pool, moe::MatrixView<const float>(x0.data(), tokens, d), out, router_arena);
      router_s += std::chrono::duration<double>(Clock::now() - r0).count();
    }
    for (std::size_t e = 0; e < g.e; ++e) experts_run += r.stats.tokens_per_expert[e] > 0;
  }
  const double it = static_cast<double>(st.iterations());
  st.counters["tok/s"] =
      benchmark::Counter(it * static_cast<double>(tokens), benchmark::Counter::kIsRate);
  profile_counters(st, prof);
  st.counters["router_share"] = prof.ffn > 0 ? router_s / prof.ffn : 0.0;
  st.counters["experts_per_call"] = static_cast<double>(experts_run) / it;
  const double experts = static_cast<double>(experts_run) / it;
  const double dd = static_cast<double>(d);
  const double flops =
      static_cast<double>(tokens) *
          (2.0 * dd * static_cast<double>(2 * g.cfg.q_dim() + 2 * g.cfg.kv_dim()) +
           static_cast<double>(g.cfg.top_k) * 6.0 * dd * static_cast<double>(g.f)) +
      4.0 * static_cast<double>(tokens * (context + tokens) * g.cfg.q_dim());
  const double kv = 2.0 * static_cast<double>((context + tokens) * g.cfg.kv_dim()) * 4.0;
  moe_bench::set_counters(st, g.attention_bytes() + experts * g.expert_bytes() + kv, flops,
                          threads);
}

void grok_layer_decode(benchmark::State& st) {
  grok_layer_run(st, 1, static_cast<std::size_t>(st.range(1)));
}
void grok_layer_prefill(benchmark::State& st) {
  grok_layer_run(st, static_cast<std::size_t>(st.range(1)), 0);
}

// ---- the attention core at long contexts --------------------------------------------------------

void attention_core(benchmark::State& st, moe::KvDtype dtype) {
  const auto context = static_cast<std::size_t>(st.range(0));
  const moe::grok1::Config cfg = moe::grok1::Config::full();
  moe::ThreadPool& pool = moe_bench::pool(2);
  moe::AttentionConfig ac = moe::grok1::attention_config(cfg);
  // Tiny projections (never called): attend() only reads the cache.
  static moe::Buffer<std::int8_t> wdummy(cfg.d_model * cfg.q_dim());
  static moe::Buffer<moe::bf16> sdummy(8 * cfg.d_model, moe::bf16(1.0f));
  const moe::Int8Weight q{wdummy.data(), sdummy.data(), cfg.d_model, cfg.q_dim(), 1},
      kv{wdummy.data(), sdummy.data(), cfg.d_model, cfg.kv_dim(), 1},
      o{wdummy.data(), sdummy.data(), cfg.q_dim(), cfg.d_model, 8};
  moe::RotaryAttention<moe::Int8Weight> attn(ac, {q, kv, kv, o});
  moe::KvCache cache(1, cfg.n_kv_heads, cfg.head_dim, context, dtype);
  std::vector<float> rows(64 * cfg.kv_dim());
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : rows) v = nd(rng);
  for (std::size_t p = 0; p < context; p += 64) {
    const std::size_t n = std::min<std::size_t>(64, context - p);
    cache.append(0, {rows.data(), n, cfg.kv_dim()}, {rows.data(), n, cfg.kv_dim()});
  }
  std::vector<float> qv(cfg.q_dim()), ov(cfg.q_dim());
  for (auto& v : qv) v = nd(rng) * 0.1f;
  for (auto _ : st) {
    attn.attend(pool, {qv.data(), 1, cfg.q_dim()}, {ov.data(), 1, cfg.q_dim()}, cache, 0,
                context - 1);
    benchmark::DoNotOptimize(ov.data());
  }
  const double bytes =
      2.0 * static_cast<double>(context * cfg.kv_dim()) * (dtype == moe::KvDtype::kF32 ? 4.0 : 2.0);
  const double flops = 4.0 * static_cast<double>(context * cfg.q_dim());
  moe_bench::set_counters(st, bytes, flops, 2);
}

// ---- a training step of a small dense decoder -----------------------------------------------

struct TrainModel {
  static constexpr std::size_t V = 256, D = 256, L = 4, H = 4, DH = 64, F = 512, B = 8, T = 256;
  using Ffn = moe::GatedFfn<moe::F32Weight, moe::Activation::kSilu>;
  using Block = moe::TransformerBlock<moe::RotaryAttention<moe::F32Weight>, Ffn>;
  using Model = moe::Decoder<Block>;
  std::vector<moe::Buffer<float>> params, grads;  // one buffer per tensor
  std::unique_ptr<Model> model;
  Model::Grads g;

  moe::Buffer<float>& tensor(std::size_t n, float scale, std::uint32_t seed) {
    params.emplace_back(n);
    grads.emplace_back(n, 0.0f);
    for (std::size_t i = 0; i < n; ++i) {
      seed = seed * 1664525u + 1013904223u;
      params.back()[i] = scale * (static_cast<float>(seed >> 8) / 8388608.0f - 1.0f);
    }
    return params.back();
  }
  TrainModel() {
    params.reserve(4 + 9 * L);
    grads.reserve(4 + 9 * L);
    const float s = 1.0f / std::sqrt(static_cast<float>(D));
    auto& emb = tensor(V * D, 1.0f, 1);
    auto& fin = tensor(D, 0.0f, 2);
    for (auto& v : fin) v = 1.0f;
    g.embedding = grads[0].span();
    g.final_norm = grads[1].span();
    moe::AttentionConfig ac;
    ac.d_model = D;
    ac.n_q_heads = H;
    ac.n_kv_heads = H;
    ac.head_dim = DH;
    std::vector<Block> blocks;
    for (std::size_t l = 0; l < L; ++l) {
      const auto seed = static_cast<std::uint32_t>(10 * l + 3);
      const std::size_t first = params.size();
      tensor(D * D, s, seed);
      tensor(D * D, s, seed + 1);
      tensor(D * D, s, seed + 2);
      tensor(D * D, s, seed + 3);
      tensor(D * F, s, seed + 4);
      tensor(D * F, s, seed + 5);
      tensor(F * D, 1.0f / std::sqrt(static_cast<float>(F)), seed + 6);
      auto& n0 = tensor(D, 0.0f, 0);
      auto& n2 = tensor(D, 0.0f, 0);
      for (auto& v : n0) v = 1.0f;
      for (auto& v : n2) v = 1.0f;
      const auto w = [&](std::size_t i, std::size_t in, std::size_t out) {
        return moe::F32Weight{params[first + i].data(), in, out};
      };
      const auto gw = [&](std::size_t i, std::size_t in, std::size_t out) {
        return moe::WeightGrad{grads[first + i].data(), in, out};
      };
      blocks.emplace_back(moe::RotaryAttention<moe::F32Weight>(
                              ac, {w(0, D, D), w(1, D, D), w(2, D, D), w(3, D, D)}),
                          Ffn(w(4, D, F), w(5, D, F), w(6, F, D)),
                          moe::BlockNorms{n0.span(), {}, n2.span(), {}});
      Block::Grads bg;
      bg.attention = {gw(0, D, D), gw(1, D, D), gw(2, D, D), gw(3, D, D)};
      bg.ffn = {gw(4, D, F), gw(5, D, F), gw(6, F, D)};
      bg.pre_attn = grads[first + 7].span();
      bg.pre_ffn = grads[first + 8].span();
      g.blocks.push_back(bg);
    }
    model = std::make_unique<Model>(moe::DecoderConfig{V, D}, moe::EmbeddingTable(emb.data(), V, D),
                                    std::move(blocks), fin.span());
  }
  /// Forward FLOPs per token (projections, causal attention at the mean context, FFN, head).
  static double forward_flops_per_token() {
    const double d = D, attn_core = 4.0 * (T + 1) / 2.0 * H * DH;
    return static_cast<double>(L) * (2.0 * d * 4.0 * d + attn_core + 6.0 * d * F) +
           2.0 * d * static_cast<double>(V);
  }
};

void decoder_train(benchmark::State& st) {
  static TrainModel m;
  const bool recompute = st.range(1) != 0;
  moe::ThreadPool& pool = moe_bench::pool(static_cast<std::size_t>(st.range(0)));
  auto state = m.model->make_training_state(TrainModel::B, TrainModel::T, recompute);
  std::vector<std::int32_t> tokens(TrainModel::B * TrainModel::T), targets(tokens.size());
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<std::int32_t>((i * 37 + 11) % TrainModel::V);
    targets[i] = static_cast<std::int32_t>((i * 37 + 48) % TrainModel::V);
  }
  for (auto _ : st) {
    m.model->forward_train(pool, tokens, targets, state);
    m.model->backward(pool, state, m.g);
  }
  const double n = static_cast<double>(tokens.size());
  st.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(st.iterations()) * n, benchmark::Counter::kIsRate);
  st.counters["tape_MB"] = static_cast<double>(state.tape().capacity()) / 1e6;
  st.counters["scratch_MB"] = static_cast<double>(state.bytes() - state.tape().capacity()) / 1e6;
  moe_bench::set_counters(st, 0.0, 3.0 * n * TrainModel::forward_flops_per_token(),
                          static_cast<std::size_t>(st.range(0)));
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  moe_bench::register_baselines();
  for (std::int64_t t : {1, 2}) {
    for (std::int64_t c : {16, 256}) {
      benchmark::RegisterBenchmark("decoder/small/decode", small_decode)
          ->ArgNames({"threads", "context"})
          ->Args({t, c})
          ->Unit(benchmark::kMillisecond)
          ->MinTime(0.5);
    }
    for (std::int64_t n : {16, 128}) {
      benchmark::RegisterBenchmark("decoder/small/prefill", small_prefill)
          ->ArgNames({"threads", "tokens"})
          ->Args({t, n})
          ->Unit(benchmark::kMillisecond)
          ->MinTime(0.5);
    }
  }
  for (std::int64_t t : {1, 2}) {
    benchmark::RegisterBenchmark("grok1_layer/decode", grok_layer_decode)
        ->ArgNames({"threads", "context"})
        ->Args({t, 256})
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond)
        ->MinTime(1.0);
  }
  for (std::int64_t n : {16, 64}) {
    benchmark::RegisterBenchmark("grok1_layer/prefill", grok_layer_prefill)
        ->ArgNames({"threads", "tokens"})
        ->Args({2, n})
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond)
        ->MinTime(1.0);
  }
  for (std::int64_t c : {1024, 8192}) {
    benchmark::RegisterBenchmark("attention_core/grok1/decode/kv:f32",
                                 [](benchmark::State& s) { attention_core(s, moe::KvDtype::kF32); })
        ->ArgNames({"context"})
        ->Arg(c)
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(
        "attention_core/grok1/decode/kv:bf16",
        [](benchmark::State& s) { attention_core(s, moe::KvDtype::kBF16); })
        ->ArgNames({"context"})
        ->Arg(c)
        ->Unit(benchmark::kMicrosecond);
  }
  for (std::int64_t recompute : {0, 1}) {
    benchmark::RegisterBenchmark("decoder_train/dense", decoder_train)
        ->ArgNames({"threads", "recompute"})
        ->Args({2, recompute})
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Iterations(3);
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
