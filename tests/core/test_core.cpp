// Core types: bf16 rounding, Buffer, Arena, errors and the thread pool.
#include <catch2/catch.hpp>

#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include <moe/moe.hpp>

TEST_CASE("bf16 widening is exact and narrowing rounds to nearest even", "[core][bf16]") {
  // Every bf16 bit pattern widens to a float whose low 16 bits are zero and narrows back.
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    const auto v = moe::bf16::from_bits(static_cast<std::uint16_t>(b));
    const float f = v.to_float();
    REQUIRE((std::bit_cast<std::uint32_t>(f) & 0xffffu) == 0u);
    if (f == f) REQUIRE(moe::bf16(f).bits == b);  // non-NaN round trip
  }
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even gives 1.
  CHECK(moe::round_to_bf16(1.0f + std::ldexp(1.0f, -8)) == 1.0f);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even gives 1 + 2^-6.
  CHECK(moe::round_to_bf16(1.0f + 3.0f * std::ldexp(1.0f, -8)) == 1.0f + std::ldexp(1.0f, -6));
  // Just above the halfway point rounds up.
  CHECK(moe::round_to_bf16(std::nextafter(1.0f + std::ldexp(1.0f, -8), 2.0f)) ==
        1.0f + std::ldexp(1.0f, -7));
  CHECK(moe::round_to_bf16(-3.140625f) == -3.140625f);  // exactly representable
  CHECK(std::isnan(moe::round_to_bf16(std::numeric_limits<float>::quiet_NaN())));
  CHECK(std::isinf(moe::round_to_bf16(std::numeric_limits<float>::infinity())));
  // The largest finite float rounds up to infinity (as numpy/ml_dtypes do).
  CHECK(std::isinf(moe::round_to_bf16(std::numeric_limits<float>::max())));
}

TEST_CASE("Buffer is aligned, zeroed and move-only", "[core][buffer]") {
  moe::Buffer<float> b(37);
  REQUIRE(b.size() == 37);
  CHECK(reinterpret_cast<std::uintptr_t>(b.data()) % 64 == 0);
  for (float v : b) CHECK(v == 0.0f);
  b[3] = 5.0f;
  moe::Buffer<float> c = std::move(b);
  CHECK(b.empty());
  CHECK(b.data() == nullptr);
  CHECK(c[3] == 5.0f);
  moe::Buffer<float> filled(4, 2.5f);
  CHECK(filled[0] == 2.5f);
  CHECK(filled[3] == 2.5f);
}

TEST_CASE("Arena hands out aligned blocks, scopes restore, overflow throws", "[core][arena]") {
  moe::Arena a(1000);
  CHECK(a.capacity() == 1024);
  float* p = a.alloc<float>(3);
  CHECK(reinterpret_cast<std::uintptr_t>(p) % 64 == 0);
  CHECK(a.used() == 64);
  {
    moe::Arena::Scope s(a);
    double* q = a.alloc<double>(100);  // 800 -> 832 bytes
    CHECK(reinterpret_cast<std::uintptr_t>(q) % 64 == 0);
    CHECK(a.used() == 64 + 832);
  }
  CHECK(a.used() == 64);
  CHECK(a.high_water() == 64 + 832);
  CHECK_THROWS_AS(a.alloc<char>(2000), moe::CapacityError);
  CHECK_THROWS_WITH(a.alloc<char>(2000), Catch::Contains("[arena] out of scratch"));
}

TEST_CASE("shape errors name the component, tensor and both shapes", "[core][error]") {
  CHECK_THROWS_AS(moe::check_shape("router", "gate", {6144, 8}, {6144, 16}), moe::ShapeError);
  CHECK_THROWS_WITH(moe::check_shape("router", "gate", {6144, 8}, {6144, 16}),
                    "[router] tensor 'gate' has shape [6144, 8], expected [6144, 16]");
  CHECK_NOTHROW(moe::check_shape("router", "gate", {1, 2}, {1, 2}));
  moe::Int8Weight w{};
  CHECK_THROWS_WITH(moe::validate_weight(w, "expert", "down"),
                    Catch::Contains("'down' has no data"));
}

TEST_CASE("ThreadPool runs every task exactly once, for any size", "[core][thread_pool]") {
  for (std::size_t threads : {1u, 2u, 3u, 8u}) {
    moe::ThreadPool pool(threads, 1024);
    REQUIRE(pool.size() == threads);
    for (std::size_t n : {0u, 1u, 2u, 7u, 1000u}) {
      std::vector<std::atomic<int>> hits(n);
      std::atomic<bool> bad_thread{false};
      pool.parallel_for(n, [&](std::size_t i, std::size_t t) {
        hits[i].fetch_add(1);
        if (t >= threads) bad_thread = true;
        // scratch of this thread is usable for the whole task
        std::memset(pool.scratch(t), static_cast<int>(i & 0xff), pool.scratch_bytes());
      });
      for (auto& h : hits) CHECK(h.load() == 1);
      CHECK_FALSE(bad_thread.load());
    }
  }
}

TEST_CASE("ThreadPool uses its worker threads and is reusable many times", "[core][thread_pool]") {
  moe::ThreadPool pool(2, 64);
  for (int rep = 0; rep < 2000; ++rep) {
    std::atomic<int> sum{0};
    pool.parallel_for(64, [&](std::size_t i, std::size_t) { sum += static_cast<int>(i); });
    REQUIRE(sum.load() == 64 * 63 / 2);
  }
  // The worker takes part: tasks that last ~100 us leave it time to join even when the other
  // core is busy (the machine is shared); give up only after 20 s.
  std::set<std::size_t> seen;
  std::mutex m;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (seen.size() < 2 && std::chrono::steady_clock::now() < deadline) {
    pool.parallel_for(8, [&](std::size_t, std::size_t t) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
      std::lock_guard<std::mutex> l(m);
      seen.insert(t);
    });
  }
  CHECK(seen.size() == 2);
}

TEST_CASE("ThreadPool rethrows a task's exception and stays usable", "[core][thread_pool]") {
  moe::ThreadPool pool(2, 64);
  CHECK_THROWS_AS(pool.parallel_for(16,
                                    [](std::size_t i, std::size_t) {
                                      if (i == 5) throw std::runtime_error("task 5");
                                    }),
                  std::runtime_error);
  std::atomic<int> n{0};
  pool.parallel_for(16, [&](std::size_t, std::size_t) { ++n; });
  CHECK(n.load() == 16);
}

TEST_CASE("version macros agree with the version string", "[core][version]") {
  CHECK(MOE_VERSION == MOE_VERSION_MAJOR * 10000 + MOE_VERSION_MINOR * 100 + MOE_VERSION_PATCH);
  CHECK(MOE_VERSION_AT_LEAST(0, 1, 0));
  CHECK_FALSE(MOE_VERSION_AT_LEAST(99, 0, 0));
  CHECK(std::string(moe::version_string()) == std::to_string(MOE_VERSION_MAJOR) + "." +
                                                  std::to_string(MOE_VERSION_MINOR) + "." +
                                                  std::to_string(MOE_VERSION_PATCH));
  CHECK(std::string(moe::simd_abi_name()).rfind("simd_", 0) == 0);
}
