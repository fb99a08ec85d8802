// Placeholder until the MoE layer lands: one f32 projection on random weights.
#include <moe/moe.hpp>

#include <cstdio>
#include <random>

int main() {
  moe::ThreadPool pool(2);
  const std::size_t in = 256, out = 512;
  moe::Buffer<float> w(in * out), x(in), y(out);
  std::mt19937 rng(42);
  std::normal_distribution<float> nd(0.0f, 1.0f / 16.0f);
  for (auto& v : w) v = nd(rng);
  for (auto& v : x) v = nd(rng);
  moe::matvec(pool, x.data(), moe::F32Weight{w.data(), in, out, moe::Layout::kInOut}, y.data());
  std::printf("moe %s (%s): y[0..3] = %g %g %g\n", moe::version_string(), moe::simd_abi_name(),
              y[0], y[1], y[2]);
}
