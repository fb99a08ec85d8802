// matmul_backward_input / matmul_backward_weight against float64 sums, for every weight type and
// layout, awkward sizes, accumulation into existing values, frozen gradients and thread counts.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <moe/core/bf16.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/ops/matmul_grad.hpp>

#include "common/owned_weight.hpp"
#include "common/test_util.hpp"

namespace {

using moe::Layout;
using moe::MatrixView;

using moe_test::make_weight;
using Owned = moe_test::OwnedWeight;

template <class W>
void check_input_grad(std::size_t t_count, std::size_t in, std::size_t out, Layout layout,
                      std::size_t blocks) {
  Owned o;
  const W w = make_weight<W>(o, in, out, layout, blocks, 7 + in + out);
  const std::vector<float> dy = moe_test::randn(t_count * out, 3);
  const std::vector<float> dx0 = moe_test::randn(t_count * in, 4);
  std::vector<std::vector<float>> results;
  for (std::size_t threads : {1, 2, 3}) {
    moe::ThreadPool pool(threads);
    std::vector<float> dx = dx0;
    moe::matmul_backward_input(pool, MatrixView<const float>(dy.data(), t_count, out), w,
                               MatrixView<float>(dx.data(), t_count, in));
    results.push_back(dx);
  }
  double worst = 0;
  for (std::size_t t = 0; t < t_count; ++t) {
    for (std::size_t i = 0; i < in; ++i) {
      double ref = dx0[t * in + i], mag = std::abs(ref);
      for (std::size_t k = 0; k < out; ++k) {
        const double term = double(dy[t * out + k]) * double(w.at(i, k));
        ref += term;
        mag += std::abs(term);
      }
      worst = std::max(worst, std::abs(results[0][t * in + i] - ref) / (mag + 1e-30));
    }
  }
  INFO("T " << t_count << " in " << in << " out " << out << " worst rel " << worst);
  CHECK(worst < 2e-6);
  CHECK(results[0] == results[1]);
  CHECK(results[0] == results[2]);
}

void check_weight_grad(std::size_t t_count, std::size_t in, std::size_t out, Layout layout) {
  const std::vector<float> x = moe_test::randn(t_count * in, 5);
  const std::vector<float> dy = moe_test::randn(t_count * out, 6);
  const std::vector<float> g0 = moe_test::randn(in * out, 8);
  std::vector<std::vector<float>> results;
  for (std::size_t threads : {1, 2, 3}) {
    moe::ThreadPool pool(threads);
    std::vector<float> g = g0;
    const moe::WeightGrad grad{g.data(), in, out, layout};
    moe::matmul_backward_weight(pool, MatrixView<const float>(x.data(), t_count, in),
                                MatrixView<const float>(dy.data(), t_count, out), grad);
    results.push_back(g);
  }
  const moe::WeightGrad view{results[0].data(), in, out, layout};
  const moe::WeightGrad view0{const_cast<float*>(g0.data()), in, out, layout};
  double worst = 0;
  for (std::size_t i = 0; i < in; ++i) {
    for (std::size_t k = 0; k < out; ++k) {
      double ref = view0.at(i, k), mag = std::abs(ref);
      for (std::size_t t = 0; t < t_count; ++t) {
        const double term = double(x[t * in + i]) * double(dy[t * out + k]);
        ref += term;
        mag += std::abs(term);
      }
      worst = std::max(worst, std::abs(view.at(i, k) - ref) / (mag + 1e-30));
    }
  }
  INFO("T " << t_count << " in " << in << " out " << out << " worst rel " << worst);
  CHECK(worst < 2e-6);
  CHECK(results[0] == results[1]);
  CHECK(results[0] == results[2]);
}

}  // namespace

TEST_CASE("matmul_backward_input matches float64 for every weight type", "[train][matmul_grad]") {
  for (std::size_t t_count : {1, 5, 33}) {
    for (auto [in, out] : {std::pair<std::size_t, std::size_t>{1, 1}, {7, 17}, {16, 9}, {40, 33}}) {
      for (Layout l : {Layout::kInOut, Layout::kOutIn}) {
        check_input_grad<moe::F32Weight>(t_count, in, out, l, 1);
        check_input_grad<moe::BF16Weight>(t_count, in, out, l, 1);
      }
      check_input_grad<moe::Int8Weight>(t_count, in, out, Layout::kInOut, 1);
      if (in % 4 == 0) check_input_grad<moe::Int8Weight>(t_count, in, out, Layout::kInOut, 4);
    }
  }
}

TEST_CASE("matmul_backward_weight matches float64 in both layouts", "[train][matmul_grad]") {
  for (std::size_t t_count : {1, 6, 65}) {
    for (auto [in, out] : {std::pair<std::size_t, std::size_t>{1, 1}, {7, 17}, {16, 9}, {40, 33}}) {
      check_weight_grad(t_count, in, out, Layout::kInOut);
      check_weight_grad(t_count, in, out, Layout::kOutIn);
    }
  }
}

TEST_CASE("matmul_backward_weight leaves a frozen gradient alone", "[train][matmul_grad]") {
  moe::ThreadPool pool(2);
  const std::vector<float> x = moe_test::randn(12, 1), dy = moe_test::randn(8, 2);
  moe::WeightGrad frozen{nullptr, 3, 2, Layout::kInOut};
  REQUIRE(frozen.frozen());
  moe::matmul_backward_weight(pool, MatrixView<const float>(x.data(), 4, 3),
                              MatrixView<const float>(dy.data(), 4, 2), frozen);
  SUCCEED("no write through a null gradient");
}
