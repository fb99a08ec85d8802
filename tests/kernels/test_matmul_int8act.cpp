// moe::matmul with Int8ActWeight (int8 activations; VNNI, AVX2 or scalar kernel) against two
// independent references:
//
//  1. its own definition, evaluated in double from scratch (per-token-per-block scale
//     sx = max|x| / 127, xq = round-half-even(x / sx), y = sum_b sx sw sum_k xq q): the
//     kernel's only differences are f32 roundings of a few operations per K step, bounded by
//     (steps + 4) * 2^-24 * sum |sx sw xq q|;
//  2. the exact f32 product: the quantisation error of each token's block is at most
//     sx / 2 per element, so |y - y_exact| <= sum_b (sx_b / 2) * sum_{k in b} |W(k, n)| (+ the
//     f32 rounding of the exact product).
//
// Both bounds fail clearly for a wrong scale block, a wrong column or a wrong rounding (checked
// below), and the same file runs in the portable build (scalar fallback, no VNNI or AVX2).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <vector>

#include <moe/ops/matmul.hpp>

#include "common/test_util.hpp"

namespace {

using moe::bf16;
using moe::MatrixView;

struct Q8 {
  std::vector<std::int8_t> q;
  std::vector<bf16> s;
  std::size_t in = 0, out = 0, blocks = 1, off = 0;
  moe::Int8Weight exact() const {
    return moe::Int8Weight{q.data() + off, s.data() + off, in, out, blocks};
  }
  moe::Int8ActWeight act() const { return moe::Int8ActWeight(exact()); }
};

Q8 make_q8(std::size_t in, std::size_t out, std::size_t blocks, std::uint64_t seed,
           std::size_t off = 0) {
  Q8 w;
  w.in = in;
  w.out = out;
  w.blocks = blocks;
  w.off = off;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> d(-128, 127);
  w.q.resize(in * out + off);
  for (auto& v : w.q) v = static_cast<std::int8_t>(d(rng));
  const auto mag = moe_test::randu(blocks * out + off, seed + 1, 0.5f, 1.0f);
  constexpr int kExp[8] = {0, 3, -3, 4, -2, 2, -4, 5};  // neighbouring blocks differ 8-128x
  w.s.resize(blocks * out + off);
  for (std::size_t i = 0; i < w.s.size(); ++i) {
    const std::size_t b = i < off ? 0 : (i - off) / out;
    w.s[i] = bf16((i % 3 == 0 ? -1.0f : 1.0f) * std::ldexp(mag[i], kExp[b % 8]) * 0.01f);
  }
  return w;
}

/// The quantised product in double, and the bounds of the header comment.
struct Ref {
  std::vector<double> y, cond, qerr;  ///< [T, out]
};

Ref reference(MatrixView<const float> x, const moe::Int8Weight& w, std::size_t scale_shift = 0,
              std::size_t col_shift = 0) {
  Ref r;
  const std::size_t T = x.rows, br = w.block_rows();
  r.y.assign(T * w.out, 0.0);
  r.cond.assign(T * w.out, 0.0);
  r.qerr.assign(T * w.out, 0.0);
  for (std::size_t t = 0; t < T; ++t) {
    const float* xr = x.row(t);
    for (std::size_t b = 0; b < w.blocks; ++b) {
      float amax = 0.0f;
      for (std::size_t k = b * br; k < (b + 1) * br; ++k) amax = std::max(amax, std::abs(xr[k]));
      const float sx = amax / 127.0f;
      const float inv = sx > 0.0f ? 1.0f / sx : 0.0f;
      for (std::size_t n = 0; n < w.out; ++n) {
        const std::size_t sb = (b + scale_shift) % w.blocks, sn = (n + col_shift) % w.out;
        const double sw = w.scales[sb * w.out + sn].to_float();
        double sum = 0, asum = 0, wsum = 0;
        for (std::size_t k = b * br; k < (b + 1) * br; ++k) {
          const double xq = std::clamp(std::nearbyint(double(xr[k] * inv)), -127.0, 127.0);
          const double q = w.data[k * w.out + n];
          sum += xq * q;
          asum += std::abs(xq * q);
          wsum += std::abs(q * sw);
        }
        r.y[t * w.out + n] += double(sx) * sw * sum;
        r.cond[t * w.out + n] += std::abs(double(sx) * sw) * asum;
        r.qerr[t * w.out + n] += 0.5 * double(sx) * wsum;
      }
    }
  }
  return r;
}

/// Largest |y - ref| / bound (<= 1 passes).
double worst(const std::vector<float>& y, std::size_t ld, std::size_t T, std::size_t out,
             const std::vector<double>& ref, const std::vector<double>& bound) {
  double w = 0;
  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t n = 0; n < out; ++n) {
      const double got = y[t * ld + n];
      const double e = std::isfinite(got) ? std::abs(got - ref[t * out + n]) : 1e300;
      w = std::max(w, e / (bound[t * out + n] + 1e-30));
    }
  }
  return w;
}

std::size_t blocks_for(std::size_t in, std::size_t want) {
  for (std::size_t b = want; b > 1; --b) {
    if (in % b == 0) return b;
  }
  return 1;
}

void check(moe::ThreadPool& pool, std::size_t T, std::size_t in, std::size_t out,
           std::size_t blocks, std::uint64_t seed) {
  const Q8 w = make_q8(in, out, blocks, seed);
  const std::vector<float> x = moe_test::randn(T * in, seed + 3);
  const MatrixView<const float> xv(x.data(), T, in);
  std::vector<float> y(T * out, -1.0f), ye(T * out, -1.0f);
  moe::matmul(pool, xv, w.act(), MatrixView<float>(y.data(), T, out));
  moe::matmul(pool, xv, w.exact(), MatrixView<float>(ye.data(), T, out));
  const Ref r = reference(xv, w.exact());
  std::vector<double> b1(r.cond.size()), b2(r.cond.size()), ye_d(ye.begin(), ye.end());
  const double u = std::ldexp(1.0, -24);
  for (std::size_t i = 0; i < b1.size(); ++i) {
    b1[i] = (static_cast<double>(in) / 4 + 8) * u * r.cond[i];
    b2[i] = r.qerr[i] + b1[i] + 4 * static_cast<double>(in) * u * r.cond[i];
  }
  const double w1 = worst(y, out, T, out, r.y, b1);
  const double w2 = worst(y, out, T, out, ye_d, b2);
  INFO("T=" << T << " in=" << in << " out=" << out << " blocks=" << blocks << ": worst/bound " << w1
            << " (definition), " << w2 << " (exact product)");
  CHECK(w1 <= 1.0);
  CHECK(w2 <= 1.0);
}

}  // namespace

TEST_CASE("int8-activation matmul matches its definition and the exact product",
          "[kernels][int8act]") {
  moe::ThreadPool pool(2);
  std::uint64_t seed = 1;
  for (std::size_t T : {1, 2, 5, 6, 7, 13}) {
    for (std::size_t in : {1, 3, 4, 7, 8, 40, 129}) {
      for (std::size_t out : {1, 7, 63, 64, 65, 130}) {
        check(pool, T, in, out, 1, ++seed);
        if (blocks_for(in, 8) > 1) check(pool, T, in, out, blocks_for(in, 8), ++seed);
      }
    }
  }
}

TEST_CASE("int8-activation matmul at large sizes: K splits, packed strips, token blocks",
          "[kernels][int8act]") {
  moe::ThreadPool pool(2);
  struct S {
    std::size_t T, in, out, blocks;
  };
  const S shapes[] = {{1, 6144, 17, 1},   {1, 4096, 1000, 8}, {3, 6144, 130, 1}, {16, 2048, 70, 8},
                      {40, 1024, 700, 1}, {300, 256, 200, 4}, {70, 1000, 65, 5}};
  std::uint64_t seed = 100;
  for (const S& s : shapes) check(pool, s.T, s.in, s.out, s.blocks, ++seed);
}

TEST_CASE("the int8-activation bounds catch a wrong scale block or column", "[kernels][int8act]") {
  moe::ThreadPool pool(2);
  for (std::size_t T : {1, 9}) {
    const Q8 w = make_q8(512, 100, 8, 50 + T);
    const std::vector<float> x = moe_test::randn(T * 512, 60 + T);
    const MatrixView<const float> xv(x.data(), T, 512);
    std::vector<float> y(T * 100);
    moe::matmul(pool, xv, w.act(), MatrixView<float>(y.data(), T, 100));
    const Ref right = reference(xv, w.exact());
    std::vector<double> bound(right.cond.size());
    for (std::size_t i = 0; i < bound.size(); ++i) {
      bound[i] = (512.0 / 4 + 8) * std::ldexp(1.0, -24) * right.cond[i];
    }
    CHECK(worst(y, 100, T, 100, right.y, bound) <= 1.0);
    CHECK(worst(y, 100, T, 100, reference(xv, w.exact(), 1, 0).y, bound) > 100.0);
    CHECK(worst(y, 100, T, 100, reference(xv, w.exact(), 0, 1).y, bound) > 100.0);
  }
}

TEST_CASE("int8-activation results are bit-identical for 1, 2 and 3 threads",
          "[kernels][int8act][determinism]") {
  moe::ThreadPool p1(1), p2(2), p3(3);
  struct S {
    std::size_t T, in, out;
  };
  const S shapes[] = {{1, 6144, 1000}, {3, 4096, 300}, {16, 6144, 17}, {70, 600, 1100}};
  std::uint64_t seed = 200;
  for (const S& s : shapes) {
    const Q8 w = make_q8(s.in, s.out, blocks_for(s.in, 8), ++seed);
    const std::vector<float> x = moe_test::randn(s.T * s.in, seed + 1);
    const MatrixView<const float> xv(x.data(), s.T, s.in);
    std::vector<float> y1(s.T * s.out), y2(s.T * s.out), y3(s.T * s.out), y2b(s.T * s.out);
    moe::matmul(p1, xv, w.act(), MatrixView<float>(y1.data(), s.T, s.out));
    moe::matmul(p2, xv, w.act(), MatrixView<float>(y2.data(), s.T, s.out));
    moe::matmul(p3, xv, w.act(), MatrixView<float>(y3.data(), s.T, s.out));
    moe::matmul(p2, xv, w.act(), MatrixView<float>(y2b.data(), s.T, s.out));
    INFO("T=" << s.T << " in=" << s.in << " out=" << s.out);
    CHECK(y1 == y2);
    CHECK(y1 == y3);
    CHECK(y2 == y2b);
  }
}

TEST_CASE("int8-activation matmul honours strides, offsets and leaves padding alone",
          "[kernels][int8act]") {
  moe::ThreadPool pool(2);
  const std::size_t T = 9, in = 300, out = 77, ldx = 307, ldy = 83;
  const Q8 w = make_q8(in, out, 3, 7, 1);  // 1-element offset: misaligned data and scales
  std::vector<float> xs = moe_test::randn(1 + T * ldx, 8);
  std::vector<float> ys(2 + T * ldy, -7.0f);
  const MatrixView<const float> xv(xs.data() + 1, T, in, ldx);
  moe::matmul(pool, xv, w.act(), MatrixView<float>(ys.data() + 2, T, out, ldy));
  std::vector<float> x(T * in), y(T * out);
  for (std::size_t t = 0; t < T; ++t) {
    std::memcpy(x.data() + t * in, xv.row(t), in * sizeof(float));
  }
  moe::matmul(pool, MatrixView<const float>(x.data(), T, in), w.act(),
              MatrixView<float>(y.data(), T, out));
  bool same = true, pad = true;
  for (std::size_t i = 0; i < ys.size(); ++i) {
    const bool inside = i >= 2 && (i - 2) / ldy < T && (i - 2) % ldy < out;
    if (inside) {
      same = same && ys[i] == y[((i - 2) / ldy) * out + (i - 2) % ldy];
    } else {
      pad = pad && ys[i] == -7.0f;
    }
  }
  CHECK(same);
  CHECK(pad);
}

TEST_CASE("int8-activation matmul: zeros give zeros, a NaN poisons only its token",
          "[kernels][int8act]") {
  moe::ThreadPool pool(2);
  const std::size_t T = 8, in = 256, out = 70;
  const Q8 w = make_q8(in, out, 2, 9);
  std::vector<float> x = moe_test::randn(T * in, 10);
  std::fill(x.begin(), x.begin() + in, 0.0f);                 // token 0: all zero
  x[3 * in + 200] = std::numeric_limits<float>::quiet_NaN();  // token 3, block 1
  x[5 * in + 10] = std::numeric_limits<float>::infinity();    // token 5, block 0
  std::vector<float> y(T * out);
  moe::matmul(pool, MatrixView<const float>(x.data(), T, in), w.act(),
              MatrixView<float>(y.data(), T, out));
  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t n = 0; n < out; ++n) {
      const float v = y[t * out + n];
      INFO("t=" << t << " n=" << n);
      if (t == 0) {
        REQUIRE(v == 0.0f);
      } else if (t == 3 || t == 5) {
        REQUIRE(std::isnan(v));
      } else {
        REQUIRE(std::isfinite(v));
      }
    }
  }
}

TEST_CASE("the int8-activation kernel is compiled where expected", "[kernels][int8act]") {
  const std::string name = moe::detail::kInt8ActKernels;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__)
  CHECK(name == "avx512vnni");
#elif defined(__AVX2__) && defined(__FMA__)
  CHECK(name == "avx2");
#else
  CHECK(name == "scalar");
#endif
}
