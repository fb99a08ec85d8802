// The backward products on matmul's kernels, at the sizes where the packed paths, the K splits,
// the transposed activation blocks and the transposed int8 weights are used (the small shapes are
// in tests/train/test_matmul_grad.cpp): against float64 sums with the f32 bound
// |err| <= (2 n + 32) * 2^-24 * sum |terms| (n terms, plus the accumulated initial value), for
// 1, 2 and 3 threads (bit-identical), with row strides, and with a pool whose scratch is too
// small for a packed strip (the simple fallback).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <moe/ops/matmul_grad.hpp>

#include "common/owned_weight.hpp"
#include "common/test_util.hpp"

namespace {

using moe::Layout;
using moe::MatrixView;

using moe_test::make_weight;
using Owned = moe_test::OwnedWeight;

double bound(double n, double mag) {
  return (2.0 * n + 32.0) * std::ldexp(1.0, -24) * mag + 1e-30;
}

template <class W>
void check_input(std::size_t T, std::size_t in, std::size_t out, Layout layout, std::size_t blocks,
                 std::size_t ld_extra = 0,
                 std::size_t scratch = moe::ThreadPool::kDefaultScratchBytes) {
  Owned o;
  const W w = make_weight<W>(o, in, out, layout, blocks, 11 + in + 3 * out + T);
  const std::size_t ldy = out + ld_extra, ldx = in + ld_extra;
  const std::vector<float> dy = moe_test::randn(T * ldy, 13);
  const std::vector<float> dx0 = moe_test::randn(T * ldx, 14);
  std::vector<std::vector<float>> res;
  for (std::size_t threads : {1, 2, 3}) {
    moe::ThreadPool pool(threads, scratch);
    std::vector<float> dx = dx0;
    moe::matmul_backward_input(pool, MatrixView<const float>(dy.data(), T, out, ldy), w,
                               MatrixView<float>(dx.data(), T, in, ldx));
    res.push_back(dx);
  }
  double worst = 0;
  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t i = 0; i < in; ++i) {
      double ref = dx0[t * ldx + i], mag = std::abs(ref);
      for (std::size_t k = 0; k < out; ++k) {
        const double term = double(dy[t * ldy + k]) * double(w.at(i, k));
        ref += term;
        mag += std::abs(term);
      }
      worst = std::max(worst, std::abs(res[0][t * ldx + i] - ref) / bound(double(out), mag));
    }
  }
  bool pad = true;
  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t i = in; i < ldx; ++i) pad = pad && res[0][t * ldx + i] == dx0[t * ldx + i];
  }
  INFO("T " << T << " in " << in << " out " << out << " layout " << int(layout) << " blocks "
            << blocks << " worst/bound " << worst);
  CHECK(worst <= 1.0);
  CHECK(pad);
  CHECK(res[0] == res[1]);
  CHECK(res[0] == res[2]);
}

void check_weight(std::size_t T, std::size_t in, std::size_t out, Layout layout,
                  std::size_t ld_extra = 0,
                  std::size_t scratch = moe::ThreadPool::kDefaultScratchBytes) {
  const std::size_t ldx = in + ld_extra, ldy = out + ld_extra;
  const std::vector<float> x = moe_test::randn(T * ldx, 15);
  const std::vector<float> dy = moe_test::randn(T * ldy, 16);
  const std::vector<float> g0 = moe_test::randn(in * out, 17);
  std::vector<std::vector<float>> res;
  for (std::size_t threads : {1, 2, 3}) {
    moe::ThreadPool pool(threads, scratch);
    std::vector<float> g = g0;
    moe::matmul_backward_weight(pool, MatrixView<const float>(x.data(), T, in, ldx),
                                MatrixView<const float>(dy.data(), T, out, ldy),
                                moe::WeightGrad{g.data(), in, out, layout});
    res.push_back(g);
  }
  const moe::WeightGrad view{res[0].data(), in, out, layout};
  const moe::WeightGrad view0{const_cast<float*>(g0.data()), in, out, layout};
  double worst = 0;
  for (std::size_t i = 0; i < in; ++i) {
    for (std::size_t k = 0; k < out; ++k) {
      double ref = view0.at(i, k), mag = std::abs(ref);
      for (std::size_t t = 0; t < T; ++t) {
        const double term = double(x[t * ldx + i]) * double(dy[t * ldy + k]);
        ref += term;
        mag += std::abs(term);
      }
      worst = std::max(worst, std::abs(view.at(i, k) - ref) / bound(double(T), mag));
    }
  }
  INFO("T " << T << " in " << in << " out " << out << " layout " << int(layout) << " scratch "
            << scratch << " worst/bound " << worst);
  CHECK(worst <= 1.0);
  CHECK(res[0] == res[1]);
  CHECK(res[0] == res[2]);
}

}  // namespace

TEST_CASE("matmul_backward_input on the packed kernels", "[kernels][matmul_grad]") {
  struct S {
    std::size_t T, in, out;
  };
  const S shapes[] = {{64, 256, 512}, {64, 512, 256}, {3, 600, 700}, {7, 1000, 130},
                      {1, 2048, 40},  {33, 77, 1500}, {300, 96, 200}};
  for (const S& s : shapes) {
    for (Layout l : {Layout::kInOut, Layout::kOutIn}) {
      check_input<moe::F32Weight>(s.T, s.in, s.out, l, 1);
      check_input<moe::BF16Weight>(s.T, s.in, s.out, l, 1);
    }
    check_input<moe::Int8Weight>(s.T, s.in, s.out, Layout::kInOut, 1);
    if (s.in % 8 == 0) check_input<moe::Int8Weight>(s.T, s.in, s.out, Layout::kInOut, 8);
    if (s.in % 4 == 0) check_input<moe::Int8ActWeight>(s.T, s.in, s.out, Layout::kInOut, 4);
  }
  check_input<moe::F32Weight>(20, 300, 70, Layout::kInOut, 1, 5);  // row strides
  check_input<moe::Int8Weight>(20, 300, 70, Layout::kInOut, 3, 3);
  // Scratch too small for a packed strip: the simple fallback (or the dot path).
  check_input<moe::Int8Weight>(20, 300, 70, Layout::kInOut, 3, 0, 4096);
  check_input<moe::BF16Weight>(20, 300, 70, Layout::kInOut, 1, 0, 4096);
  check_input<moe::BF16Weight>(20, 300, 70, Layout::kOutIn, 1, 0, 4096);
}

TEST_CASE("matmul_backward_weight on the packed kernels", "[kernels][matmul_grad]") {
  struct S {
    std::size_t T, in, out;
  };
  const S shapes[] = {{64, 256, 512}, {64, 1024, 300}, {65, 300, 1000},
                      {256, 130, 70}, {5, 500, 600},   {1, 100, 3000}};
  for (const S& s : shapes) {
    check_weight(s.T, s.in, s.out, Layout::kInOut);
    check_weight(s.T, s.in, s.out, Layout::kOutIn);
  }
  check_weight(20, 300, 70, Layout::kInOut, 7);  // row strides
  check_weight(20, 300, 70, Layout::kOutIn, 7);
  check_weight(40, 200, 150, Layout::kInOut, 0, 4096);  // scratch too small: simple fallback
  check_weight(40, 200, 150, Layout::kOutIn, 0, 4096);
}
