// top_k against a stable-sort reference (tests/reference/ops_ref.hpp): descending, ties to the
// lower index, NaN below every number.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <moe/ops/topk.hpp>

#include "common/test_util.hpp"
#include "ops/ops_test_util.hpp"
#include "reference/ops_ref.hpp"

namespace {
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

/// Runs top_k on x (placed at a guard-page end) and checks indices and values against the
/// reference; NaN values are compared by NaN-ness.
void check_topk(const std::vector<float>& x, std::size_t k) {
  const std::size_t n = x.size();
  INFO("n = " << n << " k = " << k);
  ops_test::GuardedFloats g(n);
  g.assign(x);
  std::vector<std::uint32_t> idx(k + 1, 0xdeadbeefu);
  std::vector<float> val(k + 1, -123.0f);
  moe::top_k(g.data(), n, k, idx.data(), val.data());
  const auto ref = moe_ref::top_k(x.data(), n, k);
  for (std::size_t j = 0; j < k; ++j) {
    INFO("rank " << j);
    REQUIRE(idx[j] == ref[j]);
    if (std::isnan(x[ref[j]])) {
      REQUIRE(std::isnan(val[j]));
    } else {
      REQUIRE(val[j] == x[ref[j]]);
    }
  }
  CHECK(idx[k] == 0xdeadbeefu);  // nothing written past k
  CHECK(val[k] == -123.0f);
}
}  // namespace

TEST_CASE("top_k: random inputs, every n and k of the router and beyond", "[ops][topk]") {
  for (std::size_t n : ops_test::kSizes) {
    const auto x = moe_test::randn(n, 10000 + n);
    for (std::size_t k :
         {std::size_t{1}, std::size_t{2}, std::size_t{3}, std::size_t{8}, n / 2, n}) {
      if (k == 0 || k > n || k > 300) continue;
      check_topk(x, k);
    }
  }
  // Sampler-like: top-40 of a large vocabulary (exercises the batch-skipping path).
  check_topk(moe_test::randn(131072, 3), 40);
  check_topk(moe_test::randn(131072, 4), 1);
  // Ascending data: every element displaces the k-th (worst case for the skipping).
  std::vector<float> asc(1000);
  for (std::size_t i = 0; i < asc.size(); ++i) asc[i] = static_cast<float>(i);
  check_topk(asc, 8);
}

TEST_CASE("top_k: ties go to the lower index", "[ops][topk]") {
  const std::vector<float> x = {1.0f, 3.0f, 3.0f, 2.0f, 3.0f, 0.0f, -0.0f, 2.0f};
  std::uint32_t idx[8];
  float val[8];
  moe::top_k(x.data(), x.size(), 8, idx, val);
  const std::uint32_t want[8] = {1, 2, 4, 3, 7, 0, 5, 6};  // +0 and -0 are equal: index order
  for (int j = 0; j < 8; ++j) CHECK(idx[j] == want[j]);
  moe::top_k(x.data(), x.size(), 2, idx, val);
  CHECK(idx[0] == 1);
  CHECK(idx[1] == 2);
  CHECK(val[0] == 3.0f);
  CHECK(val[1] == 3.0f);

  // All equal, with equal values spread over many vector blocks: the first k indices.
  for (std::size_t n : {std::size_t{8}, std::size_t{17}, std::size_t{300}}) {
    std::vector<float> same(n, 0.25f);
    check_topk(same, std::min<std::size_t>(n, 5));
    check_topk(same, n);
  }
  // Router-sized integer-valued data: many ties.
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> d(0, 3);
  for (int rep = 0; rep < 50; ++rep) {
    std::vector<float> v(8 + rep);
    for (auto& e : v) e = static_cast<float>(d(rng));
    check_topk(v, 2);
    check_topk(v, v.size());
  }
}

TEST_CASE("top_k: NaN compares below every number, -inf included", "[ops][topk]") {
  const std::vector<float> x = {kNaN, -kInf, 1.0f, kNaN, -5.0f, kInf};
  std::uint32_t idx[6];
  float val[6];
  moe::top_k(x.data(), x.size(), 6, idx, val);
  const std::uint32_t want[6] = {5, 2, 4, 1, 0, 3};
  for (int j = 0; j < 6; ++j) CHECK(idx[j] == want[j]);
  CHECK(val[0] == kInf);
  CHECK(val[3] == -kInf);
  CHECK(std::isnan(val[4]));
  CHECK(std::isnan(val[5]));
  moe::top_k(x.data(), x.size(), 4, idx, val);  // enough numbers: no NaN returned
  for (int j = 0; j < 4; ++j) CHECK(!std::isnan(val[j]));

  std::vector<float> all_nan(20, kNaN);
  check_topk(all_nan, 3);
  // NaNs scattered through a long array never displace numbers.
  auto v = moe_test::randn(500, 8);
  for (std::size_t i = 0; i < v.size(); i += 7) v[i] = kNaN;
  check_topk(v, 8);
  check_topk(v, v.size());
}

TEST_CASE("top_k: k = 0 writes nothing", "[ops][topk]") {
  const std::vector<float> x = {1.0f, 2.0f};
  std::uint32_t idx = 77;
  float val = 5.0f;
  moe::top_k(x.data(), 2, 0, &idx, &val);
  CHECK(idx == 77);
  CHECK(val == 5.0f);
}

TEST_CASE("top_k: randomised inputs with ties, infinities and NaNs", "[ops][topk]") {
  std::mt19937 rng(2024);
  std::uniform_int_distribution<int> pick(0, 9);
  for (int rep = 0; rep < 300; ++rep) {
    const std::size_t n = 1 + static_cast<std::size_t>(rng() % 300);
    std::vector<float> x(n);
    for (auto& v : x) {
      switch (pick(rng)) {
        case 0:
          v = kNaN;
          break;
        case 1:
          v = kInf;
          break;
        case 2:
          v = -kInf;
          break;
        case 3:
          v = 0.5f;
          break;  // frequent ties
        case 4:
          v = -0.0f;
          break;  // ties with +0
        case 5:
          v = 0.0f;
          break;
        default:
          v = static_cast<float>(static_cast<int>(rng() % 64)) - 32.0f;
          break;
      }
    }
    const std::size_t k = static_cast<std::size_t>(rng() % (n + 1));
    if (k > 0) check_topk(x, k);
  }
}
