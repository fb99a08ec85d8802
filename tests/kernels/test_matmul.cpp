// moe::matmul / moe::matvec against the double-precision reference twin
// (tests/reference/matmul_ref.hpp), for every weight type and layout.
//
// Error bound. Every path sums the exactly dequantised weights in f32; for a sum of n products
// the rounding error is at most about n * u * sum|x_i w_i| (u = 2^-24; twice that without a
// fused multiply-add, as on the portable SSE2 build). The check is
//     |y - y_ref| <= (2 n + 32) * 2^-24 * sum_i |x_i w_i|
// per element. Int8 scales of neighbouring blocks differ by factors of 8 to 128 and change
// sign, so a wrong block or a wrong scale column moves some element by a sizeable fraction of
// sum|x w|; the test "the bound catches a wrong block or scale column" checks that it does.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <moe/ops/matmul.hpp>

#include "common/test_util.hpp"
#include "reference/matmul_ref.hpp"

namespace {

using moe::bf16;
using moe::Layout;
using moe::MatrixView;

enum class Kind { kF32InOut, kF32OutIn, kBf16InOut, kBf16OutIn, kInt8 };
constexpr Kind kAllKinds[] = {Kind::kF32InOut, Kind::kF32OutIn, Kind::kBf16InOut, Kind::kBf16OutIn,
                              Kind::kInt8};

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kF32InOut:
      return "f32 [in,out]";
    case Kind::kF32OutIn:
      return "f32 [out,in]";
    case Kind::kBf16InOut:
      return "bf16 [in,out]";
    case Kind::kBf16OutIn:
      return "bf16 [out,in]";
    case Kind::kInt8:
      return "int8";
  }
  return "?";
}

/// Scale exponents of consecutive blocks: neighbours differ by factors 8..128.
constexpr int kBlockExp[8] = {0, 3, -3, 4, -2, 2, -4, 5};

/// A weight with its own storage. `off` elements of padding in front of the data (and of the
/// scales) make the views deliberately misaligned.
struct TestWeight {
  Kind kind = Kind::kF32InOut;
  std::size_t in = 0, out = 0, blocks = 1, off = 0;
  std::vector<float> f32;
  std::vector<bf16> b16;
  std::vector<std::int8_t> i8;
  std::vector<bf16> scales;

  Layout layout() const {
    return kind == Kind::kF32OutIn || kind == Kind::kBf16OutIn ? Layout::kOutIn : Layout::kInOut;
  }
  moe::F32Weight f() const { return {f32.data() + off, in, out, layout()}; }
  moe::BF16Weight b() const { return {b16.data() + off, in, out, layout()}; }
  moe::Int8Weight q() const {
    moe::Int8Weight w;
    w.data = i8.data() + off;
    w.scales = scales.data() + off;
    w.in = in;
    w.out = out;
    w.blocks = blocks;
    return w;
  }
};

TestWeight make_weight(Kind kind, std::size_t in, std::size_t out, std::size_t blocks,
                       std::uint64_t seed, std::size_t off = 0) {
  TestWeight tw;
  tw.kind = kind;
  tw.in = in;
  tw.out = out;
  tw.blocks = blocks;
  tw.off = off;
  const std::size_t n = in * out;
  if (kind == Kind::kInt8) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int> d(-128, 127);
    tw.i8.resize(n + off);
    for (auto& v : tw.i8) v = static_cast<std::int8_t>(d(rng));
    const auto mag = moe_test::randu(blocks * out + off, seed + 1, 0.5f, 1.0f);
    tw.scales.resize(blocks * out + off);
    for (std::size_t i = 0; i < tw.scales.size(); ++i) {
      const std::size_t b = i < off ? 0 : (i - off) / out;
      const float sign = (i % 3 == 0) ? -1.0f : 1.0f;
      tw.scales[i] = bf16(sign * std::ldexp(mag[i], kBlockExp[b % 8]) * 0.01f);
    }
    return tw;
  }
  const auto v = moe_test::randn(n + off, seed);
  if (kind == Kind::kF32InOut || kind == Kind::kF32OutIn) {
    tw.f32 = v;
  } else {
    tw.b16.resize(n + off);
    for (std::size_t i = 0; i < v.size(); ++i) tw.b16[i] = bf16(v[i]);
  }
  return tw;
}

/// `b`, a bf16 weight, with its weights widened to f32 (exactly) in the same layout.
TestWeight widened(const TestWeight& b) {
  TestWeight f = b;
  f.kind = b.kind == Kind::kBf16OutIn ? Kind::kF32OutIn : Kind::kF32InOut;
  f.f32.resize(b.b16.size());
  for (std::size_t i = 0; i < b.b16.size(); ++i) f.f32[i] = b.b16[i].to_float();
  return f;
}

/// The plan's view of T tokens times `tw`.
moe::detail::Shape plan_shape(std::size_t T, const TestWeight& tw) {
  moe::detail::Shape shape;
  shape.T = T;
  shape.in = tw.in;
  shape.out = tw.out;
  shape.elem = tw.kind == Kind::kInt8                                     ? 1
               : tw.kind == Kind::kF32InOut || tw.kind == Kind::kF32OutIn ? 4
                                                                          : 2;
  shape.in_out = tw.layout() == Layout::kInOut;
  return shape;
}

/// Calls f(weight_view) with the view of the right type.
template <class F>
void visit(const TestWeight& tw, F&& f) {
  switch (tw.kind) {
    case Kind::kF32InOut:
    case Kind::kF32OutIn:
      f(tw.f());
      break;
    case Kind::kBf16InOut:
    case Kind::kBf16OutIn:
      f(tw.b());
      break;
    case Kind::kInt8:
      f(tw.q());
      break;
  }
}

moe_ref::MatmulRef reference(MatrixView<const float> x, const TestWeight& tw) {
  moe_ref::MatmulRef r;
  visit(tw, [&](const auto& w) { r = moe_ref::matmul_ref(x, w); });
  return r;
}

/// Activations: T rows of `in` values in rows of `ld` floats, starting `off` floats in.
struct TestX {
  std::vector<float> buf;
  std::size_t T = 0, in = 0, ld = 0, off = 0;
  MatrixView<const float> view() const { return {buf.data() + off, T, in, ld}; }
};
TestX make_x(std::size_t T, std::size_t in, std::uint64_t seed, std::size_t ld = 0,
             std::size_t off = 0) {
  TestX x;
  x.T = T;
  x.in = in;
  x.ld = ld ? ld : in;
  x.off = off;
  x.buf = moe_test::randn(off + T * x.ld, seed);
  return x;
}

/// Output buffer whose padding (before, between rows, after) holds a sentinel.
struct TestY {
  std::vector<float> buf;
  std::size_t T = 0, out = 0, ld = 0, off = 0;
  static constexpr float kSentinel = -12345.5f;
  MatrixView<float> view() { return {buf.data() + off, T, out, ld}; }
  float at(std::size_t t, std::size_t o) const { return buf[off + t * ld + o]; }
  bool padding_intact() const {
    for (std::size_t i = 0; i < buf.size(); ++i) {
      const bool inside = i >= off && (i - off) / ld < T && (i - off) % ld < out;
      if (!inside && buf[i] != kSentinel) return false;
    }
    return true;
  }
};
TestY make_y(std::size_t T, std::size_t out, std::size_t ld = 0, std::size_t off = 0) {
  TestY y;
  y.T = T;
  y.out = out;
  y.ld = ld ? ld : out;
  y.off = off;
  y.buf.assign(off + T * y.ld + 3, TestY::kSentinel);
  return y;
}

void run(moe::ThreadPool& pool, const TestX& x, const TestWeight& tw, TestY& y) {
  visit(tw, [&](const auto& w) { moe::matmul(pool, x.view(), w, y.view()); });
}

/// Largest |y - ref| / bound over all elements (<= 1 passes), with its location.
struct Worst {
  double ratio = 0;
  std::size_t t = 0, o = 0;
  double got = 0, want = 0;
};
Worst worst_error(const TestY& y, const moe_ref::MatmulRef& r, std::size_t n_terms) {
  Worst w;
  const double gamma = (2.0 * static_cast<double>(n_terms) + 32.0) * 0x1p-24;
  for (std::size_t t = 0; t < y.T; ++t) {
    for (std::size_t o = 0; o < y.out; ++o) {
      const double got = y.at(t, o);
      const double bound = gamma * r.cond(t, o) + 1e-30;
      const double ratio = std::isfinite(got) ? std::abs(got - r.at(t, o)) / bound : 1e300;
      if (ratio > w.ratio) w = Worst{ratio, t, o, got, r.at(t, o)};
    }
  }
  return w;
}

std::string describe(const TestWeight& tw, std::size_t T, const Worst& w) {
  std::ostringstream s;
  s << kind_name(tw.kind) << " T=" << T << " in=" << tw.in << " out=" << tw.out
    << " blocks=" << tw.blocks << ": worst |err|/bound=" << w.ratio << " at (" << w.t << ", " << w.o
    << ") got " << w.got << " want " << w.want;
  return s.str();
}

/// A scale-block count for `in`: 8 when it divides, else the largest divisor <= 8.
std::size_t blocks_for(std::size_t in, std::size_t want) {
  for (std::size_t b = want; b > 1; --b) {
    if (in % b == 0) return b;
  }
  return 1;
}

void check_case(moe::ThreadPool& pool, Kind kind, std::size_t T, std::size_t in, std::size_t out,
                std::size_t blocks, std::uint64_t seed) {
  const TestWeight tw = make_weight(kind, in, out, blocks, seed);
  const TestX x = make_x(T, in, seed + 7);
  TestY y = make_y(T, out);
  run(pool, x, tw, y);
  const Worst w = worst_error(y, reference(x.view(), tw), in);
  INFO(describe(tw, T, w));
  CHECK(w.ratio <= 1.0);
  CHECK(y.padding_intact());
}

}  // namespace

TEST_CASE("matmul matches the double reference over awkward sizes", "[kernels][matmul]") {
  moe::ThreadPool pool(2);
  const std::size_t Ts[] = {1, 2, 4, 6, 7, 13};
  const std::size_t ins[] = {1, 7, 8, 9, 15, 17, 40};
  const std::size_t outs[] = {1, 7, 8, 9, 15, 17, 31, 65, 130};
  std::uint64_t seed = 1;
  for (Kind kind : kAllKinds) {
    for (std::size_t T : Ts) {
      for (std::size_t in : ins) {
        for (std::size_t out : outs) {
          if (kind == Kind::kInt8) {
            check_case(pool, kind, T, in, out, 1, ++seed);
            if (blocks_for(in, 8) > 1)
              check_case(pool, kind, T, in, out, blocks_for(in, 8), ++seed);
          } else {
            check_case(pool, kind, T, in, out, 1, ++seed);
          }
        }
      }
    }
  }
}

TEST_CASE("matmul at large sizes: K splits, packed tiles, many slabs", "[kernels][matmul]") {
  moe::ThreadPool pool(2);
  struct Shape {
    std::size_t T, in, out;
  };
  // Direct T=1 with K split (narrow out), direct T<=6 with slabs, packed with K split, packed
  // with token blocks, wide out.
  const Shape shapes[] = {{1, 6144, 17},  {1, 6144, 1000}, {3, 6144, 130},
                          {16, 6144, 17}, {40, 6144, 70},  {7, 1000, 6144},
                          {1, 17, 6144},  {64, 300, 1500}, {300, 64, 200}};
  std::uint64_t seed = 1000;
  for (Kind kind : kAllKinds) {
    for (const Shape& s : shapes) {
      check_case(pool, kind, s.T, s.in, s.out, 1, ++seed);
      if (kind == Kind::kInt8)
        check_case(pool, kind, s.T, s.in, s.out, blocks_for(s.in, 8), ++seed);
    }
  }
}

TEST_CASE("the bound catches a wrong block or scale column", "[kernels][matmul][int8]") {
  moe::ThreadPool pool(2);
  const std::size_t cases[][3] = {{1, 6144, 33}, {9, 6144, 33}, {1, 64, 100}, {8, 64, 100}};
  std::uint64_t seed = 77;
  for (const auto& c : cases) {
    const std::size_t T = c[0], in = c[1], out = c[2];
    const TestWeight tw = make_weight(Kind::kInt8, in, out, 8, ++seed);
    const moe::Int8Weight q = tw.q();
    const TestX x = make_x(T, in, seed + 1);
    TestY y = make_y(T, out);
    run(pool, x, tw, y);
    const std::size_t br = q.block_rows();
    // Right reference passes ...
    const Worst right = worst_error(y, moe_ref::matmul_ref(x.view(), q), in);
    INFO(describe(tw, T, right));
    CHECK(right.ratio <= 1.0);
    // ... a reference using the next block's scales, or the next column's, fails clearly.
    const auto wrong_block =
        moe_ref::matmul_ref_with(x.view(), in, out, [&](std::size_t i, std::size_t o) {
          const std::size_t b = (i / br + 1) % q.blocks;
          return static_cast<double>(q.data[i * out + o]) * q.scales[b * out + o].to_float();
        });
    const auto wrong_col =
        moe_ref::matmul_ref_with(x.view(), in, out, [&](std::size_t i, std::size_t o) {
          const std::size_t b = i / br;
          return static_cast<double>(q.data[i * out + o]) *
                 q.scales[b * out + (o + 1) % out].to_float();
        });
    CHECK(worst_error(y, wrong_block, in).ratio > 100.0);
    CHECK(worst_error(y, wrong_col, in).ratio > 100.0);
  }
}

TEST_CASE("results are bit-identical for 1, 2 and 3 threads", "[kernels][matmul][determinism]") {
  // 1 thread, and a call nested in a pool task (run inline), plan without the extra token
  // blocks a parallel call gets ({300, 256, 512} and {512, 512, 256} have them); nothing else
  // may differ.
  moe::ThreadPool p1(1), p2(2), p3(3);
  struct Shape {
    std::size_t T, in, out;
  };
  const Shape shapes[] = {{1, 6144, 1000}, {1, 4096, 6144}, {1, 6144, 24},   {5, 2000, 300},
                          {3, 600, 1100},  {16, 6144, 17},  {70, 600, 1100}, {40, 4096, 64},
                          {300, 256, 512}, {512, 512, 256}};
  std::uint64_t seed = 500;
  for (Kind kind : kAllKinds) {
    for (const Shape& s : shapes) {
      const TestWeight tw = make_weight(kind, s.in, s.out, blocks_for(s.in, 8), ++seed);
      const TestX x = make_x(s.T, s.in, seed + 3);
      TestY y1 = make_y(s.T, s.out), y2 = make_y(s.T, s.out), y3 = make_y(s.T, s.out);
      run(p1, x, tw, y1);
      run(p2, x, tw, y2);
      run(p3, x, tw, y3);
      INFO(kind_name(kind) << " T=" << s.T << " in=" << s.in << " out=" << s.out);
      CHECK(std::memcmp(y1.buf.data(), y2.buf.data(), y1.buf.size() * sizeof(float)) == 0);
      CHECK(std::memcmp(y1.buf.data(), y3.buf.data(), y1.buf.size() * sizeof(float)) == 0);
      TestY y_nested = make_y(s.T, s.out);
      p3.parallel_for(2, [&](std::size_t task, std::size_t) {
        if (task == 0) run(p3, x, tw, y_nested);
      });
      CHECK(std::memcmp(y1.buf.data(), y_nested.buf.data(), y1.buf.size() * sizeof(float)) == 0);
      // And repeated calls on the same pool agree (dynamic scheduling differs run to run).
      TestY y2b = make_y(s.T, s.out);
      run(p2, x, tw, y2b);
      CHECK(std::memcmp(y2.buf.data(), y2b.buf.data(), y2.buf.size() * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("misaligned pointers (1 float / 1 element / 1 byte off)", "[kernels][matmul]") {
  moe::ThreadPool pool(2);
  struct Shape {
    std::size_t T, in, out;
  };
  const Shape shapes[] = {{1, 6144, 100}, {2, 333, 257}, {11, 300, 77}, {4, 64, 1000}};
  std::uint64_t seed = 900;
  for (Kind kind : kAllKinds) {
    for (const Shape& s : shapes) {
      const TestWeight tw = make_weight(kind, s.in, s.out, blocks_for(s.in, 8), ++seed, 1);
      const TestX x = make_x(s.T, s.in, seed + 5, 0, 1);
      TestY y = make_y(s.T, s.out, 0, 1);
      run(pool, x, tw, y);
      const Worst w = worst_error(y, reference(x.view(), tw), s.in);
      INFO(describe(tw, s.T, w));
      CHECK(w.ratio <= 1.0);
      CHECK(y.padding_intact());
    }
  }
}

TEST_CASE("row strides of x and y are honoured and padding is untouched", "[kernels][matmul]") {
  moe::ThreadPool pool(2);
  struct Shape {
    std::size_t T, in, out;
  };
  const Shape shapes[] = {{1, 100, 70}, {3, 6144, 40}, {9, 200, 300}, {30, 64, 129}};
  std::uint64_t seed = 1300;
  for (Kind kind : kAllKinds) {
    for (const Shape& s : shapes) {
      const TestWeight tw = make_weight(kind, s.in, s.out, blocks_for(s.in, 8), ++seed);
      const TestX x = make_x(s.T, s.in, seed + 5, s.in + 3, 2);
      TestY y = make_y(s.T, s.out, s.out + 5, 3);
      run(pool, x, tw, y);
      const Worst w = worst_error(y, reference(x.view(), tw), s.in);
      INFO(describe(tw, s.T, w));
      CHECK(w.ratio <= 1.0);
      CHECK(y.padding_intact());
    }
  }
}

TEST_CASE("a pool with little scratch falls back to unpacked paths", "[kernels][matmul]") {
  // 4 KiB of scratch: no packed tile and no K-split partial fits.
  moe::ThreadPool small1(1, 4096), small2(2, 4096);
  std::uint64_t seed = 1700;
  for (Kind kind : kAllKinds) {
    const TestWeight tw = make_weight(kind, 2000, 70, 8, ++seed);
    const TestX x = make_x(20, 2000, seed + 1);
    TestY y1 = make_y(20, 70), y2 = make_y(20, 70);
    run(small1, x, tw, y1);
    run(small2, x, tw, y2);
    const Worst w = worst_error(y2, reference(x.view(), tw), 2000);
    INFO(describe(tw, 20, w));
    CHECK(w.ratio <= 1.0);
    CHECK(std::memcmp(y1.buf.data(), y2.buf.data(), y1.buf.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("matvec equals a one-row matmul", "[kernels][matmul]") {
  moe::ThreadPool pool(2);
  std::uint64_t seed = 2100;
  for (Kind kind : kAllKinds) {
    const TestWeight tw = make_weight(kind, 1000, 300, 8, ++seed);
    const TestX x = make_x(1, 1000, seed + 1);
    TestY y = make_y(1, 300);
    run(pool, x, tw, y);
    std::vector<float> v(300, 0.0f);
    visit(tw, [&](const auto& w) { moe::matvec(pool, x.view().row(0), w, v.data()); });
    CHECK(std::memcmp(v.data(), y.buf.data(), 300 * sizeof(float)) == 0);
  }
}

TEST_CASE("[in, out] results do not depend on the path (direct vs packed)", "[kernels][matmul]") {
  // Without a K split every output is the same sequential FMA chain, so the packed path (T > 6)
  // and the direct path (one token at a time) agree bit for bit.
  moe::ThreadPool pool(2);
  std::uint64_t seed = 2500;
  for (Kind kind : {Kind::kF32InOut, Kind::kBf16InOut, Kind::kInt8}) {
    const TestWeight tw = make_weight(kind, 200, 2000, 8, ++seed);  // 16+ slabs: no K split
    const TestX x = make_x(12, 200, seed + 1);
    TestY y = make_y(12, 2000);
    run(pool, x, tw, y);
    for (std::size_t t = 0; t < 12; ++t) {
      std::vector<float> v(2000, 0.0f);
      visit(tw, [&](const auto& w) { moe::matvec(pool, x.view().row(t), w, v.data()); });
      INFO(kind_name(kind) << " row " << t);
      CHECK(std::memcmp(v.data(), y.buf.data() + t * 2000, 2000 * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("the 2-6-token bf16 direct path equals the one-token GEMV and the f32 one bit for bit",
          "[kernels][matmul]") {
  // T = 2..6 on [in, out] weights runs the direct path, whose bf16 kernel (AVX2: the unpacking
  // one, with its own column order and y regrouping per token row) must give each token the
  // same FMA chain as a one-token GEMV and as the generic kernel on the weights widened to f32.
  // Widths with 16-column tails and rows of odd strides; no K split (in < 256 rows per slab).
  moe::ThreadPool pool(2);
  std::uint64_t seed = 2700;
  std::size_t checked = 0;
  for (std::size_t out : {16, 77, 300, 1030}) {
    const TestWeight b = make_weight(Kind::kBf16InOut, 120, out, 1, ++seed);
    const TestWeight f = widened(b);
    for (std::size_t T = 2; T <= 6; ++T) {
      const TestX x = make_x(T, 120, seed + T, 131, 3);
      TestY yb = make_y(T, out, out + 5, 2), yf = make_y(T, out, out + 5, 2);
      run(pool, x, b, yb);
      run(pool, x, f, yf);
      INFO("out=" << out << " T=" << T);
      CHECK(yb.padding_intact());
      CHECK(std::memcmp(yb.buf.data(), yf.buf.data(), yb.buf.size() * sizeof(float)) == 0);
      for (std::size_t t = 0; t < T; ++t) {
        std::vector<float> v(out, 0.0f);
        visit(b, [&](const auto& w) { moe::matvec(pool, x.view().row(t), w, v.data()); });
        INFO("token " << t);
        CHECK(std::memcmp(v.data(), yb.buf.data() + yb.off + t * yb.ld, out * sizeof(float)) == 0);
        ++checked;
      }
      const Worst w = worst_error(yb, reference(x.view(), f), 120);
      INFO(describe(b, T, w));
      CHECK(w.ratio <= 1.0);
    }
  }
  CHECK(checked == 4 * 20);
}

TEST_CASE("f32 [in, out] GEMM read in place equals the packed bf16 path bit for bit",
          "[kernels][matmul]") {
  // For T > 6, f32 [in, out] tiles are read in place while bf16 tiles are widened into scratch
  // first. With bf16-representable f32 weights both must give the same FMA chains, K splits
  // and tails included (out not a multiple of 64, in not a multiple of the tile depth).
  moe::ThreadPool pool(2);
  struct Shape {
    std::size_t T, in, out;
  };
  const Shape shapes[] = {{7, 300, 1500}, {16, 6144, 70}, {64, 1000, 777}, {130, 333, 520}};
  std::uint64_t seed = 2900;
  for (const Shape& s : shapes) {
    const TestWeight b = make_weight(Kind::kBf16InOut, s.in, s.out, 1, ++seed);
    const TestWeight f = widened(b);
    const TestX x = make_x(s.T, s.in, seed + 1);
    TestY yb = make_y(s.T, s.out), yf = make_y(s.T, s.out);
    run(pool, x, b, yb);
    run(pool, x, f, yf);
    INFO("T=" << s.T << " in=" << s.in << " out=" << s.out);
    CHECK(std::memcmp(yb.buf.data(), yf.buf.data(), yb.buf.size() * sizeof(float)) == 0);
    const Worst w = worst_error(yf, reference(x.view(), f), s.in);
    INFO(describe(f, s.T, w));
    CHECK(w.ratio <= 1.0);
  }
}

TEST_CASE("packing strips in groups changes no result", "[kernels][matmul]") {
  // Blocking::pack_group packs several strips of an [in, out] weight in a pass of their own
  // where its rows alias (Blocking::group_stride); every token block then reads the packed
  // strips. The outputs must equal the fused packing's bit for bit: for column tails inside a
  // group and past its end, groups wider than the slab, int8 scale blocks that cut a K step, and
  // prefetch distances of none, a few rows and more rows than a K step has.
  moe::ThreadPool pool(2);
  moe::detail::Blocking base = moe::detail::host_blocking();
  base.f32_in_place_max_t = 0;  // f32 strips packed (fused) on every host
  base.group_stride = 0;
  struct Shape {
    std::size_t T, in, out, blocks;
  };
  const Shape shapes[] = {{7, 300, 1500, 1},
                          {64, 999, 777, 3},
                          {130, 333, 20, 1},
                          {9, 520, 2 * moe::detail::kNR + 1, 2}};
  std::uint64_t seed = 3300;
  for (Kind kind : {Kind::kF32InOut, Kind::kBf16InOut, Kind::kInt8}) {
    for (const Shape& s : shapes) {
      const TestWeight tw = make_weight(kind, s.in, s.out, s.blocks, ++seed);
      const TestX x = make_x(s.T, s.in, seed + 1);
      TestY y0 = make_y(s.T, s.out);
      visit(tw, [&](const auto& w) {
        CHECK(
            moe::detail::gemm(pool, moe::detail::Activations(x.view()), w, y0.view(), false, base));
      });
      for (std::size_t group : {2, 3, 4}) {
        for (std::size_t pf : {0, 3, 4096}) {
          moe::detail::Blocking b = base;
          b.pack_group = group;
          b.group_stride = 1;  // every weight's rows "alias"
          b.group_pf_rows = pf;
          INFO(kind_name(kind) << " T=" << s.T << " in=" << s.in << " out=" << s.out
                               << " group=" << group << " pf=" << pf);
          CHECK(moe::detail::make_plan(plan_shape(s.T, tw), b, pool.scratch_bytes()).group ==
                group);
          TestY y = make_y(s.T, s.out);
          visit(tw, [&](const auto& w) {
            CHECK(
                moe::detail::gemm(pool, moe::detail::Activations(x.view()), w, y.view(), false, b));
          });
          CHECK(std::memcmp(y.buf.data(), y0.buf.data(), y.buf.size() * sizeof(float)) == 0);
          CHECK(y.padding_intact());
        }
      }
    }
  }
}

TEST_CASE("the fused packing's prefetch of the next strips changes no result",
          "[kernels][matmul]") {
  // Blocking::pack_fetch_cols only adds L2 prefetches to the first token block of each strip:
  // the outputs must equal those without it bit for bit, for column tails and for prefetches that
  // run past the end of a row (64 columns: what Zen 3 uses; 1024: lines far past the row's end).
  moe::ThreadPool pool(2);
  moe::detail::Blocking base = moe::detail::host_blocking();
  base.f32_in_place_max_t = 0;  // f32 strips packed (fused) on every host
  base.pack_fetch_cols = 0;
  struct Shape {
    std::size_t T, in, out;
  };
  const Shape shapes[] = {{7, 300, 1500}, {64, 1000, 777}, {130, 333, 20}};
  std::uint64_t seed = 3100;
  for (Kind kind : {Kind::kF32InOut, Kind::kBf16InOut}) {
    for (const Shape& s : shapes) {
      const TestWeight tw = make_weight(kind, s.in, s.out, 1, ++seed);
      const TestX x = make_x(s.T, s.in, seed + 1);
      TestY y0 = make_y(s.T, s.out);
      visit(tw, [&](const auto& w) {
        CHECK(
            moe::detail::gemm(pool, moe::detail::Activations(x.view()), w, y0.view(), false, base));
      });
      for (std::size_t cols : {64, 1024}) {
        moe::detail::Blocking b = base;
        b.pack_fetch_cols = cols;
        INFO(kind_name(kind) << " T=" << s.T << " in=" << s.in << " out=" << s.out
                             << " pack_fetch_cols=" << cols);
        if (cols == 1024) {
          CHECK(moe::detail::make_plan(plan_shape(s.T, tw), b, pool.scratch_bytes()).pack_pf_lines >
                0);
        }
        TestY y = make_y(s.T, s.out);
        visit(tw, [&](const auto& w) {
          CHECK(moe::detail::gemm(pool, moe::detail::Activations(x.view()), w, y.view(), false, b));
        });
        CHECK(std::memcmp(y.buf.data(), y0.buf.data(), y.buf.size() * sizeof(float)) == 0);
        CHECK(y.padding_intact());
      }
    }
  }
}

TEST_CASE("the dot path's prefetch changes no result; its bf16 sums are the f32 ones",
          "[kernels][matmul]") {
  // [out, in] weights at T <= 4 take dot products along the weight rows. Blocking::dot_pf_short
  // only adds prefetches of the rows further on (distances of one row, of a few calls and past
  // the last row), so the outputs must equal those without it bit for bit. Without AVX-512 the
  // bf16 kernel (the unpacking one for one token) must also give the f32 kernel's sums of the
  // same weights widened: the same FMAs in the same lane order. Rows of 1 to 1000 elements cover
  // the 16-element steps, the 8-lane steps and the tails; 13 and 300 rows the partial calls.
  moe::ThreadPool pool(2);
  moe::detail::Blocking base = moe::detail::host_blocking();
  base.dot_pf_short = 0;
  const bool same_order = std::string(moe::detail::kMatmulKernels) != "avx512";
  std::uint64_t seed = 3500;
  for (std::size_t in : {1, 15, 16, 17, 40, 100, 1000}) {
    for (std::size_t out : {1, 7, 13, 300}) {
      const TestWeight b = make_weight(Kind::kBf16OutIn, in, out, 1, ++seed);
      const TestWeight f = widened(b);
      for (std::size_t T : {1, 2, 3, 4}) {
        const TestX x = make_x(T, in, seed + T);
        TestY yb = make_y(T, out), yf = make_y(T, out);
        CHECK(moe::detail::gemm(pool, moe::detail::Activations(x.view()), b.b(), yb.view(), false,
                                base));
        CHECK(moe::detail::gemm(pool, moe::detail::Activations(x.view()), f.f(), yf.view(), false,
                                base));
        INFO("T=" << T << " in=" << in << " out=" << out);
        if (same_order) {
          CHECK(std::memcmp(yb.buf.data(), yf.buf.data(), yb.buf.size() * sizeof(float)) == 0);
        }
        const Worst w = worst_error(yb, reference(x.view(), b), in);
        INFO(describe(b, T, w));
        CHECK(w.ratio <= 1.0);
        for (std::size_t pf : {1, 8, 4096}) {
          moe::detail::Blocking bp = base;
          bp.dot_pf_short = pf;
          INFO("dot_pf_short=" << pf);
          CHECK(moe::detail::make_plan(plan_shape(T, b), bp, pool.scratch_bytes()).pf == pf);
          for (const TestWeight* tw : {&b, &f}) {
            TestY y = make_y(T, out);
            visit(*tw, [&](const auto& wv) {
              CHECK(moe::detail::gemm(pool, moe::detail::Activations(x.view()), wv, y.view(), false,
                                      bp));
            });
            const TestY& y0 = tw == &b ? yb : yf;
            CHECK(std::memcmp(y.buf.data(), y0.buf.data(), y.buf.size() * sizeof(float)) == 0);
            CHECK(y.padding_intact());
          }
        }
      }
    }
  }
}

TEST_CASE("the one-token GEMV's in-order prefetch of short rows changes no result",
          "[kernels][matmul]") {
  // GemvStep::short_in_order moves the direct path's prefetch of the rows pf_short ahead out of
  // the micro-kernel (which then gets no distance) into a BlockPrefetcher stepped before each
  // call. Outputs must equal those without any prefetch bit for bit: for f32, bf16 and int8 (8
  // scale blocks: calls cut at block edges), slabs of one column to whole rows, distances of one
  // row, of one call group and past the last row.
  moe::ThreadPool pool(2);
  moe::detail::Blocking base = moe::detail::host_blocking();
  for (moe::detail::GemvStep* g : {&base.gemv_f32, &base.gemv_bf16, &base.gemv_int8}) {
    g->pf = g->pf_short = 0;
    g->short_in_order = false;
  }
  std::uint64_t seed = 3700;
  std::size_t in_order = 0;  // plans that take the in-order prefetch
  for (Kind kind : {Kind::kF32InOut, Kind::kBf16InOut, Kind::kInt8}) {
    for (std::size_t in : {40, 104, 1000}) {  // multiples of the 8 int8 scale blocks
      for (std::size_t out : {1, 17, 300, 1000}) {
        const TestWeight tw = make_weight(kind, in, out, kind == Kind::kInt8 ? 8 : 1, ++seed);
        const TestX x = make_x(1, in, seed + 1);
        TestY y0 = make_y(1, out);
        visit(tw, [&](const auto& w) {
          CHECK(moe::detail::gemm(pool, moe::detail::Activations(x.view()), w, y0.view(), false,
                                  base));
        });
        const Worst worst = worst_error(y0, reference(x.view(), tw), in);
        INFO(describe(tw, 1, worst));
        CHECK(worst.ratio <= 1.0);
        for (std::size_t pf : {1, 8, 4096}) {
          moe::detail::Blocking b = base;
          for (moe::detail::GemvStep* g : {&b.gemv_f32, &b.gemv_bf16, &b.gemv_int8}) {
            g->pf_short = pf;
            g->short_in_order = true;
          }
          const moe::detail::Plan plan =
              moe::detail::make_plan(plan_shape(1, tw), b, pool.scratch_bytes());
          INFO("pf_short=" << pf << " plan pf=" << plan.pf << " nc=" << plan.nc);
          CHECK(plan.path == moe::detail::Path::kDirect);
          CHECK(plan.pf_in_order == (plan.pf != 0));
          in_order += plan.pf_in_order ? 1 : 0;
          TestY y = make_y(1, out);
          visit(tw, [&](const auto& w) {
            CHECK(
                moe::detail::gemm(pool, moe::detail::Activations(x.view()), w, y.view(), false, b));
          });
          CHECK(std::memcmp(y.buf.data(), y0.buf.data(), y.buf.size() * sizeof(float)) == 0);
          CHECK(y.padding_intact());
        }
      }
    }
  }
  CHECK(in_order >= 40);
}

TEST_CASE("zero activations give exact zeros; empty inputs are no-ops", "[kernels][matmul]") {
  moe::ThreadPool pool(2);
  for (Kind kind : kAllKinds) {
    const TestWeight tw = make_weight(kind, 300, 70, 3, 3);
    TestX x = make_x(9, 300, 4);
    std::fill(x.buf.begin(), x.buf.end(), 0.0f);
    TestY y = make_y(9, 70);
    run(pool, x, tw, y);
    for (std::size_t t = 0; t < 9; ++t) {
      for (std::size_t o = 0; o < 70; ++o) REQUIRE(y.at(t, o) == 0.0f);
    }
    TestX x0 = make_x(0, 300, 5);
    TestY y0 = make_y(0, 70);
    run(pool, x0, tw, y0);
    CHECK(y0.padding_intact());
  }
}

TEST_CASE("the kernels are compiled for the expected instruction set", "[kernels][simd]") {
  const std::string name = moe::detail::kMatmulKernels;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
  CHECK(name == "avx512");
#else
  CHECK(name == "xsimd");
#endif
  // The one-token bf16 GEMV's unpacking kernel: AVX2 + FMA builds without AVX-512.
#if !MOE_MATMUL_AVX512 && defined(__AVX2__) && defined(__FMA__)
  CHECK(MOE_MATMUL_BF16_UNPACK == 1);
#else
  CHECK(MOE_MATMUL_BF16_UNPACK == 0);
#endif
#if defined(MOE_TEST_PORTABLE) && !defined(__AVX__)
  // The portable build really is the baseline: no AVX namespace, no AVX-512 kernels.
  CHECK(std::string(moe::simd_abi_name()).find("avx") == std::string::npos);
  CHECK(name == "xsimd");
#endif
}
