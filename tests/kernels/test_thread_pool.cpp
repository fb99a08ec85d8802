// ThreadPool properties the matmul kernels rely on (the basic ones are in tests/core).
#include <catch2/catch.hpp>

#include <atomic>
#include <cstddef>
#include <thread>
#include <vector>

#include <moe/core/thread_pool.hpp>

TEST_CASE("ThreadPool claims tasks in index order", "[kernels][thread_pool]") {
  // The documented guarantee: when task i starts, every task j < i has been claimed.
  for (std::size_t threads : {1, 2, 3}) {
    moe::ThreadPool pool(threads, 64);
    for (int round = 0; round < 50; ++round) {
      const std::size_t n = 64;
      std::vector<std::atomic<int>> started(n);
      for (auto& s : started) s.store(0);
      std::atomic<int> violations{0};
      pool.parallel_for(n, [&](std::size_t i, std::size_t) {
        started[i].store(1);
        for (std::size_t j = 0; j < i; ++j) {
          // j was claimed before i; it may still be starting, so allow it a moment.
          for (int spin = 0; spin < 1000000 && started[j].load() == 0; ++spin)
            std::this_thread::yield();
          if (started[j].load() == 0) violations.fetch_add(1);
        }
      });
      REQUIRE(violations.load() == 0);
    }
  }
}

TEST_CASE("ThreadPool serialises callers, also on a 1-thread pool", "[kernels][thread_pool]") {
  // Two external threads share one pool: their tasks must never overlap (both would use
  // scratch block 0).
  for (std::size_t threads : {1, 2}) {
    moe::ThreadPool pool(threads, 64);
    std::atomic<int> inside{0}, overlaps{0};
    auto caller = [&] {
      for (int i = 0; i < 200; ++i) {
        pool.parallel_for(1, [&](std::size_t, std::size_t thread) {
          if (thread == 0 && inside.fetch_add(1) != 0) overlaps.fetch_add(1);
          std::this_thread::yield();
          if (thread == 0) inside.fetch_sub(1);
        });
      }
    };
    std::thread a(caller), b(caller);
    a.join();
    b.join();
    CHECK(overlaps.load() == 0);
  }
}

TEST_CASE("ThreadPool nested calls run inline on the same thread index", "[kernels][thread_pool]") {
  moe::ThreadPool pool(3, 64);
  moe::ThreadPool other(1, 64);
  std::atomic<int> bad{0}, ran{0};
  pool.parallel_for(12, [&](std::size_t, std::size_t thread) {
    pool.parallel_for(4, [&](std::size_t, std::size_t inner) {
      if (inner != thread) bad.fetch_add(1);
      ran.fetch_add(1);
    });
    // A different pool from inside a task: its own thread indices (in range for it).
    other.parallel_for(2, [&](std::size_t, std::size_t inner) {
      if (inner >= other.size()) bad.fetch_add(1);
      ran.fetch_add(1);
    });
  });
  CHECK(bad.load() == 0);
  CHECK(ran.load() == 12 * 6);
}
