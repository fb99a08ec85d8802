// An outside project using moe: builds a tiny f32 projection and checks one value.
#include <cstdio>

#include <moe/moe.hpp>

int main() {
  moe::ThreadPool pool(2);
  moe::Buffer<float> w(3 * 2);  // [in = 3, out = 2], JAX layout
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i + 1);
  const float x[3] = {1.0f, 0.5f, -1.0f};
  float y[2] = {};
  moe::matvec(pool, x, moe::F32Weight{w.data(), 3, 2, moe::Layout::kInOut}, y);
  // y0 = 1*1 + 0.5*3 - 1*5 = -2.5 ; y1 = 1*2 + 0.5*4 - 1*6 = -2
  std::printf("moe %s (%s): y = [%g, %g]\n", moe::version_string(), moe::simd_abi_name(), y[0],
              y[1]);
  return (y[0] == -2.5f && y[1] == -2.0f) ? 0 : 1;
}
