// Int8Weight with a row stride (`ld`): a column slab [:, c0, c0 + out) of a wider [in, ld]
// matrix, read in place (the tensor-parallel shards of moe/mpi/shard.hpp). Checked two ways:
//
//  1. against the same columns copied into a contiguous Int8Weight: the blocking depends on
//     (T, in, out) only, so the products must be BIT-identical (exact weights and int8
//     activations);
//  2. against a double-precision loop over the dequantised slab written here from the raw
//     arrays (not through Int8Weight::at), within a bound of f32 rounding.
//
// Awkward sizes: out not a multiple of the SIMD width, c0 odd, ld - c0 - out > 0, several scale
// blocks, T = 1 (GEMV), 3 and 37.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include <moe/ops/matmul.hpp>

#include "common/random_int8.hpp"
#include "common/test_util.hpp"

namespace {

using moe::bf16;
using moe::MatrixView;

struct Wide {
  std::vector<std::int8_t> q;  // [in, ld]
  std::vector<bf16> s;         // [blocks, ld]
  std::size_t in = 0, ld = 0, blocks = 1;
};

Wide make_wide(std::size_t in, std::size_t ld, std::size_t blocks, std::uint64_t seed) {
  moe_test::Int8Data d = moe_test::random_int8(in, ld, blocks, seed);
  return Wide{std::move(d.q), std::move(d.s), in, ld, blocks};
}

/// Columns [c0, c0 + out) as a strided view and as a contiguous copy.
struct Slab {
  moe::Int8Weight view;
  std::vector<std::int8_t> q;
  std::vector<bf16> s;
  moe::Int8Weight copy() const {
    return moe::Int8Weight{q.data(), s.data(), view.in, view.out, view.blocks};
  }
};

Slab slab(const Wide& w, std::size_t c0, std::size_t out) {
  Slab r;
  r.view = moe::Int8Weight{w.q.data() + c0, w.s.data() + c0, w.in, out, w.blocks, w.ld};
  r.q.resize(w.in * out);
  r.s.resize(w.blocks * out);
  for (std::size_t i = 0; i < w.in; ++i) {
    for (std::size_t o = 0; o < out; ++o) r.q[i * out + o] = w.q[i * w.ld + c0 + o];
  }
  for (std::size_t b = 0; b < w.blocks; ++b) {
    for (std::size_t o = 0; o < out; ++o) r.s[b * out + o] = w.s[b * w.ld + c0 + o];
  }
  return r;
}

void check(moe::ThreadPool& pool, std::size_t T, std::size_t in, std::size_t ld, std::size_t c0,
           std::size_t out, std::size_t blocks, std::uint64_t seed) {
  INFO("T=" << T << " in=" << in << " ld=" << ld << " c0=" << c0 << " out=" << out
            << " blocks=" << blocks);
  const Wide w = make_wide(in, ld, blocks, seed);
  const Slab sl = slab(w, c0, out);
  const std::vector<float> x = moe_test::randn(T * in, seed + 2);
  const MatrixView<const float> xv(x.data(), T, in);
  std::vector<float> ys(T * out, -7.0f), yc(T * out, -9.0f);
  moe::matmul(pool, xv, sl.view, MatrixView<float>(ys.data(), T, out));
  moe::matmul(pool, xv, sl.copy(), MatrixView<float>(yc.data(), T, out));
  CHECK(ys == yc);
  std::vector<float> as(T * out, -7.0f), ac(T * out, -9.0f);
  moe::matmul(pool, xv, moe::Int8ActWeight(sl.view), MatrixView<float>(as.data(), T, out));
  moe::matmul(pool, xv, moe::Int8ActWeight(sl.copy()), MatrixView<float>(ac.data(), T, out));
  CHECK(as == ac);
  // Independent double reference over the raw wide arrays.
  const std::size_t br = in / blocks;
  double worst = 0;
  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t o = 0; o < out; ++o) {
      double sum = 0, mag = 0;
      for (std::size_t i = 0; i < in; ++i) {
        const double wv =
            double(w.q[i * ld + c0 + o]) * double(w.s[(i / br) * ld + c0 + o].to_float());
        sum += double(x[t * in + i]) * wv;
        mag += std::abs(double(x[t * in + i]) * wv);
      }
      const double bound = (double(in) + 8) * std::ldexp(1.0, -24) * mag + 1e-30;
      worst = std::max(worst, std::abs(double(ys[t * out + o]) - sum) / bound);
    }
  }
  CHECK(worst <= 1.0);
}

}  // namespace

TEST_CASE("matmul: int8 column slab with a row stride equals its contiguous copy",
          "[matmul][int8]") {
  moe::ThreadPool pool(2);
  std::uint64_t seed = 100;
  for (std::size_t T : {1, 3, 37}) {
    check(pool, T, 64, 96, 0, 48, 1, ++seed);   // first half
    check(pool, T, 64, 96, 48, 48, 8, ++seed);  // second half, 8 scale blocks
    check(pool, T, 40, 131, 7, 33, 5, ++seed);  // odd offset and width
    check(pool, T, 130, 300, 101, 123, 2, ++seed);
    check(pool, T, 96, 1024, 256, 256, 4, ++seed);  // a quarter of a wide matrix
  }
}

TEST_CASE("matmul: a stacked int8 stack with a row stride is a column slab of every expert",
          "[matmul][int8]") {
  const std::size_t E = 3, in = 16, ld = 40, c0 = 12, out = 20;
  const Wide w = make_wide(E * in, ld, E, 7);  // E experts of [in, ld], one scale row each
  moe::WeightStack<moe::Int8Weight> st{
      moe::Int8Weight{w.q.data() + c0, w.s.data() + c0, in, out, 1, ld}, E};
  for (std::size_t e = 0; e < E; ++e) {
    const moe::Int8Weight v = st[e];
    for (std::size_t i = 0; i < in; ++i) {
      for (std::size_t o = 0; o < out; ++o) {
        const float want = float(w.q[(e * in + i) * ld + c0 + o]) * w.s[e * ld + c0 + o].to_float();
        REQUIRE(v.at(i, o) == want);
      }
    }
  }
}

TEST_CASE("validate_weight: a row stride shorter than a row is a ShapeError", "[matmul][int8]") {
  std::vector<std::int8_t> q(64);
  std::vector<bf16> s(8);
  const moe::Int8Weight w{q.data(), s.data(), 8, 8, 1, 4};
  CHECK_THROWS_AS(moe::validate_weight(w, "test", "w"), moe::ShapeError);
}
