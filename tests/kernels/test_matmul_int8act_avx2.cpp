// The AVX2 int8-activation kernel against the scalar kernel compiled into the same TU
// (detail::gemm_int8act<Int8ActKernel::kScalar>): the integer sums are exact in both and the
// f32 operations per K step are the same, so every output must be BIT-identical (compared as
// bytes, so NaNs count too). Awkward sizes on purpose: T = 1..7 (the direct path, every MR:
// int8act_direct_avx2 with 64 columns per pass at one token, 16 at 2-6, passes of 3 + 3 at 6,
// column tails of 1-15 and K steps of odd length), 37 and 64 (the packed path, partial token
// blocks); `in` odd and scale blocks with an odd number of rows (a K step that ends in half a
// row pair), `out` not a multiple of the 16-column register block; weights at the int8
// extremes (whole rows and columns of -128 and of 127, where the int16 pair sums are largest);
// token blocks whose scales are huge (1e30) or tiny (1e-30), all-zero blocks and lone outliers;
// misaligned weights and scales; both the host's blocking and a small one (more K steps,
// several token blocks per packed strip, slabs of 48 columns);
// accumulate on and off; 1 and 2 threads.
//
// Builds without the AVX2 kernel (test_kernels_portable, or an AVX-512 VNNI host, where the
// scalar kernel is not compiled) only say so.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include <moe/ops/matmul.hpp>

#include "common/test_util.hpp"

#if MOE_MATMUL_INT8ACT_AVX2

namespace {

using moe::bf16;
using moe::MatrixView;
using moe::detail::Int8ActKernel;

struct Case {
  std::vector<std::int8_t> q;
  std::vector<bf16> s;
  std::vector<float> x;
  std::size_t T, in, out, blocks;
  moe::Int8Weight weight() const {  // 1-element offset: misaligned int8 data and bf16 scales
    return moe::Int8Weight{q.data() + 1, s.data() + 1, in, out, blocks};
  }
};

Case make_case(std::size_t T, std::size_t in, std::size_t out, std::size_t blocks,
               std::uint64_t seed) {
  Case c{{}, {}, {}, T, in, out, blocks};
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> d(-128, 127);
  c.q.resize(1 + in * out);
  c.q[0] = 0;
  for (std::size_t k = 0; k < in; ++k) {
    for (std::size_t n = 0; n < out; ++n) {
      int v = d(rng);
      if (k % 5 == 0) {
        v = k % 10 == 0 ? -128 : 127;  // rows of -128 and of 127
      } else if (n == 0 || n == out / 2) {
        v = -128;  // and two columns of each
      } else if (n == out - 1 || n == out / 3) {
        v = 127;
      }
      c.q[1 + k * out + n] = static_cast<std::int8_t>(v);
    }
  }
  const auto mag = moe_test::randu(1 + blocks * out, seed + 1, 0.25f, 2.0f);
  c.s.resize(1 + blocks * out);
  for (std::size_t i = 0; i < c.s.size(); ++i) {
    c.s[i] = bf16((i % 3 ? 1.0f : -1.0f) * mag[i] * 0.01f);
  }
  c.x = moe_test::randn(T * in, seed + 2);
  const std::size_t br = in / blocks;
  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t b = 0; b < blocks; ++b) {
      float* xb = c.x.data() + t * in + b * br;
      switch ((t + 3 * b) % 6) {
        case 1:  // huge
          for (std::size_t k = 0; k < br; ++k) xb[k] *= 1e30f;
          break;
        case 2:  // tiny (still normal: sx = 1e-30 / 127)
          for (std::size_t k = 0; k < br; ++k) xb[k] *= 1e-30f;
          break;
        case 3:  // all zero
          std::fill_n(xb, br, 0.0f);
          break;
        case 4:  // one outlier: most of the block quantises to 0 or +-1
          xb[br / 2] = 1000.0f;
          break;
        case 5:  // the extremes: +-max|x| everywhere, xq = +-127
          for (std::size_t k = 0; k < br; ++k) xb[k] = k % 3 ? 3.0f : -3.0f;
          break;
        default:
          break;
      }
    }
  }
  return c;
}

/// avx2 vs scalar through gemm_int8act with `b`, over y = y0 (accumulate) or not.
void check_same(moe::ThreadPool& pool, const Case& c, const moe::detail::Blocking& b,
                bool accumulate) {
  const MatrixView<const float> xv(c.x.data(), c.T, c.in);
  const std::vector<float> y0 = moe_test::randn(c.T * c.out, c.T + c.in + c.out);
  std::vector<float> ya = y0, ys = y0;
  moe::detail::gemm_int8act<Int8ActKernel::kAvx2>(
      pool, xv, c.weight(), MatrixView<float>(ya.data(), c.T, c.out), accumulate, b);
  moe::detail::gemm_int8act<Int8ActKernel::kScalar>(
      pool, xv, c.weight(), MatrixView<float>(ys.data(), c.T, c.out), accumulate, b);
  std::size_t bad = 0, first = 0;
  for (std::size_t i = 0; i < ya.size(); ++i) {
    if (std::memcmp(&ya[i], &ys[i], sizeof(float)) != 0 && bad++ == 0) first = i;
  }
  INFO("T=" << c.T << " in=" << c.in << " out=" << c.out << " blocks=" << c.blocks
            << " accumulate=" << accumulate << " kc=" << b.kc << " threads=" << pool.size() << ": "
            << bad << " outputs differ, first [" << first / c.out << ", " << first % c.out
            << "]: avx2 " << ya[first] << ", scalar " << ys[first]);
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("the AVX2 int8-activation kernel equals the scalar kernel bit for bit",
          "[kernels][int8act][avx2]") {
  REQUIRE(moe::detail::kInt8ActKernel == Int8ActKernel::kAvx2);
  moe::ThreadPool p1(1), p2(2);
  moe::detail::Blocking small = moe::detail::host_blocking();
  small.kc = 20;  // packed K steps of 80 rows
  small.max_tb = 12;
  small.nc = 48;
  small.direct_slab_bytes = 48;
  struct S {
    std::size_t in, out, blocks;
  };
  // in: odd, a prime, 3 blocks of 45 rows, 7 of 19; out: around the 16-column block and the
  // 64-column strip.
  const S shapes[] = {{1, 1, 1},   {3, 17, 1},    {37, 63, 1},  {135, 65, 3},
                      {133, 7, 7}, {129, 130, 1}, {300, 47, 4}, {1001, 33, 7}};
  std::uint64_t seed = 1;
  for (std::size_t T : {1, 2, 3, 4, 5, 6, 7, 37, 64}) {
    for (const S& s : shapes) {
      const Case c = make_case(T, s.in, s.out, s.blocks, ++seed);
      check_same(p2, c, moe::detail::host_blocking(), false);
      check_same(p1, c, small, true);
    }
  }
}

TEST_CASE("the AVX2 int8-activation kernel equals the scalar kernel at large sizes",
          "[kernels][int8act][avx2]") {
  moe::ThreadPool pool(2);
  struct S {
    std::size_t T, in, out, blocks;
  };
  // K splits (T = 1, 3), full 640-row packed strips, several token blocks, 8 scale blocks.
  const S shapes[] = {
      {1, 6144, 1000, 8}, {3, 4096, 300, 1}, {64, 2048, 200, 8}, {300, 1280, 70, 5}};
  std::uint64_t seed = 100;
  for (const S& s : shapes) {
    check_same(pool, make_case(s.T, s.in, s.out, s.blocks, ++seed), moe::detail::host_blocking(),
               false);
  }
}

#else

TEST_CASE("the AVX2 int8-activation kernel equals the scalar kernel bit for bit",
          "[kernels][int8act][avx2]") {
  SUCCEED("no AVX2 int8-activation kernel in this build (" << moe::detail::kInt8ActKernels << ")");
}

#endif
