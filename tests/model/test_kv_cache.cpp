// KvCache: layout, append, capacity errors, bf16 storage, truncate.
#include <catch2/catch.hpp>

#include <cstddef>
#include <vector>

#include <moe/layers/kv_cache.hpp>

#include "common/test_util.hpp"

namespace {

std::vector<float> rows(std::size_t t, std::size_t cols, float base) {
  std::vector<float> v(t * cols);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = base + 0.001f * static_cast<float>(i);
  return v;
}

}  // namespace

TEST_CASE("kv_cache: append places rows by layer, head and position", "[model][kv_cache]") {
  moe::KvCache cache(2, 3, 4, 10);  // 2 layers, 3 heads of 4, 10 positions
  CHECK(cache.size() == 0);
  CHECK(cache.bytes() == 2 * 2 * 3 * 4 * 10 * sizeof(float));
  auto k = rows(2, 12, 1.0f), v = rows(2, 12, -1.0f);
  cache.append(1, {k.data(), 2, 12}, {v.data(), 2, 12});
  CHECK(cache.length(1) == 2);
  CHECK(cache.length(0) == 0);
  for (std::size_t t = 0; t < 2; ++t) {
    for (std::size_t h = 0; h < 3; ++h) {
      for (std::size_t i = 0; i < 4; ++i) {
        CHECK(cache.key_at(1, h, t, i) == k[t * 12 + h * 4 + i]);
        CHECK(cache.value_at(1, h, t, i) == v[t * 12 + h * 4 + i]);
        CHECK(cache.keys_f32(1, h)[t * 4 + i] == k[t * 12 + h * 4 + i]);
      }
    }
  }
  // A second append continues at position 2.
  auto k2 = rows(1, 12, 5.0f);
  cache.append(1, {k2.data(), 1, 12}, {k2.data(), 1, 12});
  CHECK(cache.length(1) == 3);
  CHECK(cache.key_at(1, 2, 2, 3) == k2[11]);
}

TEST_CASE("kv_cache: appending past the capacity throws CapacityError and writes nothing",
          "[model][kv_cache]") {
  moe::KvCache cache(1, 1, 2, 3);
  auto k = rows(3, 2, 0.0f);
  cache.append(0, {k.data(), 2, 2}, {k.data(), 2, 2});
  CHECK_THROWS_AS(cache.append(0, {k.data(), 2, 2}, {k.data(), 2, 2}), moe::CapacityError);
  CHECK(cache.length(0) == 2);
  CHECK_THROWS_WITH(cache.check_room(0, 2),
                    Catch::Contains("[kv_cache] full") && Catch::Contains("holds 2 of 3"));
  cache.append(0, {k.data(), 1, 2}, {k.data(), 1, 2});
  CHECK(cache.remaining() == 0);
  CHECK_THROWS_AS(cache.check_room(0, 1), moe::CapacityError);
  CHECK_THROWS_AS(cache.check_room(1, 1), moe::ShapeError);  // no layer 1
  // Wrong row width.
  moe::KvCache c2(1, 2, 2, 4);
  CHECK_THROWS_AS(c2.append(0, {k.data(), 1, 2}, {k.data(), 1, 2}), moe::ShapeError);
}

TEST_CASE("kv_cache: bf16 storage rounds to nearest even and halves the memory",
          "[model][kv_cache]") {
  moe::KvCache f32(1, 2, 8, 16, moe::KvDtype::kF32);
  moe::KvCache b16(1, 2, 8, 16, moe::KvDtype::kBF16);
  CHECK(b16.bytes() * 2 == f32.bytes());
  auto k = moe_test::randn(3 * 16, 7), v = moe_test::randn(3 * 16, 8);
  b16.append(0, {k.data(), 3, 16}, {v.data(), 3, 16});
  for (std::size_t t = 0; t < 3; ++t) {
    for (std::size_t h = 0; h < 2; ++h) {
      for (std::size_t i = 0; i < 8; ++i) {
        CHECK(b16.key_at(0, h, t, i) == moe::round_to_bf16(k[t * 16 + h * 8 + i]));
        CHECK(b16.value_at(0, h, t, i) == moe::round_to_bf16(v[t * 16 + h * 8 + i]));
        CHECK(b16.keys_bf16(0, h)[t * 8 + i] == moe::bf16(k[t * 16 + h * 8 + i]));
      }
    }
  }
}

TEST_CASE("kv_cache: clear and truncate", "[model][kv_cache]") {
  moe::KvCache cache(2, 1, 2, 8);
  auto k = rows(4, 2, 0.0f);
  for (std::size_t l = 0; l < 2; ++l) cache.append(l, {k.data(), 4, 2}, {k.data(), 4, 2});
  cache.truncate(1);
  CHECK(cache.size() == 1);
  CHECK(cache.length(1) == 1);
  CHECK_THROWS_AS(cache.truncate(2), moe::CapacityError);
  cache.clear();
  CHECK(cache.size() == 0);
  CHECK(cache.remaining() == 8);
  CHECK_THROWS_AS(moe::KvCache(0, 1, 1, 1), moe::ConfigError);
  CHECK_THROWS_AS(moe::KvCache(1, 1, 1, 0), moe::ConfigError);
}
