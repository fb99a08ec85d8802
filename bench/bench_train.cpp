// bench_train: one optimizer step of a small language model, as examples/train takes it
// (forward_train + backward + global-norm clipping + AdamW), the figure bench/
// compare_pytorch_train.py compares with PyTorch.
//
//   train/grok_moe/threads:T   examples/train's default model (grok_moe.hpp, model_config.hpp):
//                              Grok-1's architecture at D 256, 4 layers, 8 query / 2 KV heads of
//                              32, 8 experts top-2 of width 512 (GELU-tanh, not renormalised,
//                              dropless), sandwich norms, soft-cap 30, tied embedding, vocab 4096;
//                              Switch balance loss 1e-2 and z-loss 1e-3
//   train/grok_dense/threads:T the same with a dense GELU-tanh FFN of width 1024 in every block
//                              (the MoE model's active size: 2 experts of 512)
//
// Batch 8 x 256 tokens of random token ids (4 batches in rotation); AdamW as examples/train
// (lr 3e-3, betas 0.9 / 0.95, eps 1e-8, weight decay 0.1 on the matrices), clipping at 1.0.
// Wall time per step (the weights change every step, so the routing does too).
//
// Counters: tok/s (B*T per step); FLOP/s and peak_frac over the same-run FMA peak
// (bench_baselines.hpp), with FLOPs counted as model FLOPs: 3x the forward's multiply-adds x 2
// (the backward does two products per forward product), where the forward counts every
// projection (q, k, v, o; the router; the k experts each token is routed to, 3 products of D x F;
// the tied head D x V) and the causal attention core at its mean context (T + 1) / 2 (QK^T and
// PV: 4 ctx Hq dh). Not counted: the attention scores recomputed in backward, the norms, the
// softmaxes, the activations, the loss and AdamW (element-wise work), so peak_frac is the share
// of the peak spent on the model's useful products. fwd_share / bwd_share / opt_share: the
// step's time in forward_train, backward, and clipping + AdamW (summed over the run).
//
//   train_gemm/<op>/<name>/threads:1   the step's products alone, on one thread, operands hot
//                              (in the step they come from L2/L3, written just before):
//                              op = fwd (Y = X W), grad_input (dX += dY W^T), grad_weight
//                              (dW += X^T dY); name = up [512 x 256 -> 512] and down
//                              [512 x 512 -> 256] (an expert's 512 rows), q [2048 x 256 -> 256],
//                              kv [2048 x 256 -> 64], head [2048 x 256 -> 4096] (the tied
//                              embedding, stored [out, in]). FLOP/s, peak_frac and
//                              peak_frac_cpu (over the thread's CPU time, which other jobs on
//                              a shared machine disturb least); bench/
//                              compare_pytorch_train.py --gemm times torch.mm (OpenBLAS) on the
//                              same shapes next to it.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <moe/ops/matmul.hpp>
#include <moe/ops/matmul_grad.hpp>
#include <moe/train/optimizer.hpp>

#include "../examples/train/grok_moe.hpp"
#include "../examples/train/model_config.hpp"
#include "bench_baselines.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using Net = train_example::GrokMoE::Net;

constexpr std::size_t kBatch = 8, kSeq = 256, kVocab = 4096, kBatches = 4;

moe::grok1::Config model_config() {
  moe::grok1::Config c = train_example::default_model_config();
  c.vocab_size = kVocab;
  c.max_seq_len = kSeq;
  c.validate();
  return c;
}

/// Forward multiply-add FLOPs per token (see the file comment).
double forward_flops_per_token(const moe::grok1::Config& c, bool moe_blocks) {
  const double d = static_cast<double>(c.d_model), q = static_cast<double>(c.q_dim()),
               kv = static_cast<double>(c.kv_dim());
  const double projections = 2.0 * d * (2.0 * q + 2.0 * kv);
  const double core = 4.0 * (static_cast<double>(kSeq) + 1.0) / 2.0 * q;
  const double ffn = 6.0 * d * static_cast<double>(c.top_k * c.d_ff) +
                     (moe_blocks ? 2.0 * d * static_cast<double>(c.n_experts) : 0.0);
  return static_cast<double>(c.n_layers) * (projections + core + ffn) +
         2.0 * d * static_cast<double>(c.vocab_size);
}

struct Setup {
  moe::grok1::Config config = model_config();
  train_example::RoutingChoice routing;  // examples/train's defaults
  std::unique_ptr<Net> net;
  moe::AdamW opt;
  std::vector<std::vector<std::int32_t>> tokens, targets;

  explicit Setup(bool dense) {
    routing.moe_every = dense ? 0 : 1;
    net = std::make_unique<Net>(train_example::trainable_config(config, routing),
                                train_example::train_policies(routing, config.n_experts), 1);
    moe::AdamWConfig adamw;
    adamw.beta2 = 0.95f;
    adamw.weight_decay = 0.1f;
    opt = moe::AdamW(net->parameters().n_elements(), adamw);
    std::mt19937 rng(7);
    std::uniform_int_distribution<std::int32_t> id(0, static_cast<std::int32_t>(kVocab) - 1);
    tokens.assign(kBatches, std::vector<std::int32_t>(kBatch * kSeq));
    targets = tokens;
    for (std::size_t b = 0; b < kBatches; ++b) {
      for (std::size_t i = 0; i < kBatch * kSeq; ++i) {
        tokens[b][i] = id(rng);
        targets[b][i] = id(rng);
      }
    }
  }
};

void train_step(benchmark::State& st, bool dense) {
  const auto threads = static_cast<std::size_t>(st.range(0));
  Setup s(dense);
  moe::ThreadPool& pool = moe_bench::pool(threads);
  moe::ParameterStore& store = s.net->parameters();
  auto state = s.net->model().make_training_state(kBatch, kSeq);
  double t_fwd = 0, t_bwd = 0, t_opt = 0;
  std::uint64_t step = 0;
  const auto seconds = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
  };
  const auto one_step = [&] {
    ++step;
    const std::size_t b = step % kBatches;
    const auto t0 = Clock::now();
    store.zero_grads();
    moe::TrainingOptions opts;
    opts.step = step;
    const moe::TrainingLoss l =
        s.net->model().forward_train(pool, s.tokens[b], s.targets[b], state, opts);
    const auto t1 = Clock::now();
    s.net->model().backward(pool, state, s.net->grads());
    const auto t2 = Clock::now();
    moe::clip_grad_norm(pool, store, 1.0);
    s.opt.step(pool, store, 3e-3f);
    const auto t3 = Clock::now();
    benchmark::DoNotOptimize(l);
    t_fwd += seconds(t0, t1);
    t_bwd += seconds(t1, t2);
    t_opt += seconds(t2, t3);
  };
  one_step();  // warm-up: first touch of the tape and the optimizer state
  t_fwd = t_bwd = t_opt = 0;
  for (auto _ : st) one_step();
  const double n = static_cast<double>(kBatch * kSeq);
  const double total = t_fwd + t_bwd + t_opt > 0 ? t_fwd + t_bwd + t_opt : 1.0;
  st.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(st.iterations()) * n, benchmark::Counter::kIsRate);
  st.counters["fwd_share"] = t_fwd / total;
  st.counters["bwd_share"] = t_bwd / total;
  st.counters["opt_share"] = t_opt / total;
  st.counters["params_M"] = static_cast<double>(store.n_parameters()) / 1e6;
  moe_bench::set_counters(st, 0.0, 3.0 * n * forward_flops_per_token(s.config, !dense), threads);
}

/// One product of the training step at one of its shapes (see the file comment).
struct GemmCase {
  const char* name;
  std::size_t T, in, out;
  moe::Layout layout;
};
constexpr GemmCase kGemmCases[] = {{"up", 512, 256, 512, moe::Layout::kInOut},
                                   {"down", 512, 512, 256, moe::Layout::kInOut},
                                   {"q", 2048, 256, 256, moe::Layout::kInOut},
                                   {"kv", 2048, 256, 64, moe::Layout::kInOut},
                                   {"head", 2048, 256, 4096, moe::Layout::kOutIn}};
enum class GemmOp { kForward, kGradInput, kGradWeight };

void train_gemm(benchmark::State& st, GemmCase c, GemmOp op) {
  moe::ThreadPool& pool = moe_bench::pool(1);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  auto randn = [&](std::size_t n) {
    std::vector<float> v(n);
    for (float& e : v) e = nd(rng);
    return v;
  };
  const std::vector<float> x = randn(c.T * c.in), w = randn(c.in * c.out), dy = randn(c.T * c.out);
  std::vector<float> y(c.T * c.out), dx(c.T * c.in), g(c.in * c.out);
  const moe::F32Weight weight{w.data(), c.in, c.out, c.layout};
  const moe::MatrixView<const float> xv(x.data(), c.T, c.in), dyv(dy.data(), c.T, c.out);
  const double cpu0 = moe_bench::thread_cpu_seconds();
  for (auto _ : st) {
    switch (op) {
      case GemmOp::kForward:
        moe::matmul(pool, xv, weight, moe::MatrixView<float>(y.data(), c.T, c.out));
        break;
      case GemmOp::kGradInput:
        moe::matmul_backward_input(pool, dyv, weight, moe::MatrixView<float>(dx.data(), c.T, c.in));
        break;
      case GemmOp::kGradWeight:
        moe::matmul_backward_weight(pool, xv, dyv,
                                    moe::WeightGrad{g.data(), c.in, c.out, c.layout});
        break;
    }
    benchmark::ClobberMemory();
  }
  const double cpu = moe_bench::thread_cpu_seconds() - cpu0;
  const double flops = 2.0 * static_cast<double>(c.T * c.in * c.out);
  moe_bench::set_counters(st, 0.0, flops, 1);
  // Over the thread's CPU time: preemption by other jobs not counted (as bench_kernels).
  st.counters["peak_frac_cpu"] =
      flops * static_cast<double>(st.iterations()) / cpu / moe_bench::limits().fma_flops_per_cpu_s;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  moe_bench::register_baselines();
  for (std::int64_t t : {2, 1}) {
    benchmark::RegisterBenchmark("train/grok_moe",
                                 [](benchmark::State& s) { train_step(s, false); })
        ->ArgNames({"threads"})
        ->Arg(t)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->MinTime(3.0);
    benchmark::RegisterBenchmark("train/grok_dense",
                                 [](benchmark::State& s) { train_step(s, true); })
        ->ArgNames({"threads"})
        ->Arg(t)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->MinTime(3.0);
  }
  for (GemmOp op : {GemmOp::kForward, GemmOp::kGradInput, GemmOp::kGradWeight}) {
    for (const GemmCase& c : kGemmCases) {
      const std::string name = std::string("train_gemm/") +
                               (op == GemmOp::kForward     ? "fwd/"
                                : op == GemmOp::kGradInput ? "grad_input/"
                                                           : "grad_weight/") +
                               c.name;
      benchmark::RegisterBenchmark(name.c_str(),
                                   [c, op](benchmark::State& s) { train_gemm(s, c, op); })
          ->ArgNames({"threads"})
          ->Arg(1)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->MinTime(0.3);
    }
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
