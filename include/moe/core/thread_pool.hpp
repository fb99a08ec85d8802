// moe/core/thread_pool.hpp: a persistent thread pool with per-thread scratch.
//
// Threads are created once, in the constructor, and reused by every parallel_for call (no
// thread creation per kernel call). The calling thread takes part in the work, so a pool of
// size N runs N-1 workers. Idle workers spin briefly and then block on a futex-backed atomic.
//
// Determinism: parallel_for hands out task indices dynamically, so WHICH thread runs a task is
// not fixed. Kernels make their results bit-identical for every thread count by fixing the work
// decomposition (the tasks) independently of the thread count and by never combining partial
// results across tasks in a thread-dependent order.
//
// Per-thread scratch: each thread index owns a fixed-size, 64-byte-aligned block, allocated in
// the constructor, that a task may use freely for the duration of the task (e.g. to dequantize
// or pack a weight panel). Kernels must not call parallel_for from inside a task.
//
// Thread safety: parallel_for may be called from several threads; calls are serialised.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <moe/core/buffer.hpp>
#include <moe/core/error.hpp>

namespace moe {

class ThreadPool {
 public:
  /// Default per-thread scratch: 4 MiB (two L2 caches' worth on the reference machine).
  static constexpr std::size_t kDefaultScratchBytes = std::size_t{4} << 20;

  /// `threads` = total threads including the caller (0 = std::thread::hardware_concurrency()).
  explicit ThreadPool(std::size_t threads = 0,
                      std::size_t scratch_bytes_per_thread = kDefaultScratchBytes)
      : scratch_bytes_(scratch_bytes_per_thread) {
    if (threads == 0) threads = std::max<std::size_t>(1, std::thread::hardware_concurrency());
    if (threads > 1024) throw ConfigError("[thread_pool] absurd thread count " + std::to_string(threads));
    scratch_.reserve(threads);
    for (std::size_t i = 0; i < threads; ++i) scratch_.emplace_back(scratch_bytes_);
    workers_.reserve(threads - 1);
    for (std::size_t i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
  }

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  ~ThreadPool() {
    stop_.store(true, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    generation_.notify_all();
    for (auto& t : workers_) t.join();
  }

  /// Total number of threads (workers + the calling thread).
  [[nodiscard]] std::size_t size() const noexcept { return workers_.size() + 1; }

  /// Scratch block of thread `thread` (valid while a task runs on that thread).
  [[nodiscard]] std::byte* scratch(std::size_t thread) noexcept {
    return reinterpret_cast<std::byte*>(scratch_[thread].data());
  }
  [[nodiscard]] std::size_t scratch_bytes() const noexcept { return scratch_bytes_; }

  /// Runs f(task, thread) for task = 0..n_tasks-1 and returns when all are done. `thread` is in
  /// [0, size()) and identifies the scratch block the task may use. The first exception thrown
  /// by a task is rethrown here (remaining tasks still run).
  template <class F>
  void parallel_for(std::size_t n_tasks, F&& f) {
    if (n_tasks == 0) return;
    if (workers_.empty() || n_tasks == 1 || in_task_) {
      const std::size_t thread = in_task_ ? current_thread_ : 0;
      for (std::size_t i = 0; i < n_tasks; ++i) f(i, thread);
      return;
    }
    std::lock_guard<std::mutex> lock(call_mutex_);
    using Fn = std::remove_reference_t<F>;
    job_.fn = &ThreadPool::trampoline<Fn>;
    job_.ctx = const_cast<void*>(static_cast<const void*>(std::addressof(f)));
    job_.n_tasks = n_tasks;
    job_.next.store(0, std::memory_order_relaxed);
    job_.error = nullptr;
    pending_workers_.store(workers_.size(), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_acq_rel);  // publishes job_
    generation_.notify_all();
    run_tasks(0);
    // Wait for every worker to leave the job (they may still be finishing their last task).
    for (std::size_t spins = 0; pending_workers_.load(std::memory_order_acquire) != 0; ++spins) {
      if (spins > kSpinIterations) {
        std::size_t p = pending_workers_.load(std::memory_order_acquire);
        if (p != 0) pending_workers_.wait(p, std::memory_order_acquire);
      }
    }
    if (job_.error) std::rethrow_exception(std::exchange(job_.error, nullptr));
  }

 private:
  static constexpr std::size_t kSpinIterations = 20000;

  struct Job {
    void (*fn)(void*, std::size_t, std::size_t) = nullptr;
    void* ctx = nullptr;
    std::size_t n_tasks = 0;
    std::atomic<std::size_t> next{0};
    std::exception_ptr error;
    std::mutex error_mutex;
  };

  template <class Fn>
  static void trampoline(void* ctx, std::size_t task, std::size_t thread) {
    (*static_cast<Fn*>(ctx))(task, thread);
  }

  void run_tasks(std::size_t thread) {
    in_task_ = true;
    current_thread_ = thread;
    for (;;) {
      const std::size_t i = job_.next.fetch_add(1, std::memory_order_relaxed);
      if (i >= job_.n_tasks) break;
      try {
        job_.fn(job_.ctx, i, thread);
      } catch (...) {
        std::lock_guard<std::mutex> lock(job_.error_mutex);
        if (!job_.error) job_.error = std::current_exception();
      }
    }
    in_task_ = false;
  }

  void worker_loop(std::size_t thread) {
    std::uint64_t seen = 0;
    for (;;) {
      std::uint64_t g = generation_.load(std::memory_order_acquire);
      for (std::size_t spins = 0; g == seen; ++spins) {
        if (spins > kSpinIterations) {
          generation_.wait(seen, std::memory_order_acquire);
        } else {
#if defined(__x86_64__) || defined(__i386__)
          __builtin_ia32_pause();
#endif
        }
        g = generation_.load(std::memory_order_acquire);
      }
      seen = g;
      if (stop_.load(std::memory_order_acquire)) return;
      run_tasks(thread);
      if (pending_workers_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        pending_workers_.notify_all();
      }
    }
  }

  std::size_t scratch_bytes_;
  std::vector<Buffer<std::uint8_t>> scratch_;
  std::vector<std::thread> workers_;
  std::mutex call_mutex_;
  Job job_;
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<std::size_t> pending_workers_{0};
  std::atomic<bool> stop_{false};
  static inline thread_local bool in_task_ = false;
  static inline thread_local std::size_t current_thread_ = 0;
};

}  // namespace moe
