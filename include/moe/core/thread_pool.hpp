// moe/core/thread_pool.hpp: a persistent thread pool with per-thread scratch.
//
// Threads are created once, in the constructor, and reused by every parallel_for call (no
// thread creation per kernel call). The calling thread takes part in the work, so a pool of
// size N runs N-1 workers. Idle workers spin briefly and then block on a futex-backed atomic.
// A worker joins a call only while the caller is still handing out tasks; the caller waits for
// the workers that joined, never for one that was not scheduled in time (on a busy machine the
// caller then simply runs more of the tasks itself).
//
// Determinism: parallel_for hands out task indices dynamically, so WHICH thread runs a task is
// not fixed. Kernels make their results bit-identical for every thread count by fixing the work
// decomposition (the tasks) independently of the thread count and by never combining partial
// results across tasks in a thread-dependent order.
//
// Ordering guarantee: tasks are claimed in increasing index order (one atomic counter), and a
// thread runs the task it claimed to completion before claiming another. So when task i starts,
// every task j < i has been claimed and is running or finished (a task may therefore wait for
// an earlier one without deadlock, never for a later one).
//
// Per-thread scratch: each thread index owns a fixed-size, 64-byte-aligned block, allocated in
// the constructor, that a task may use freely while the parallel_for call runs (e.g. to
// dequantize or pack a weight panel). A parallel_for called from inside one of this pool's tasks
// runs inline, on the same thread index and hence the same scratch block.
//
// Thread safety: parallel_for may be called from several threads; calls are serialised (also the
// ones that run inline on a 1-thread pool, so two callers never share scratch block 0).
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

// The padding is deliberate: the polled job state (state_) has a cache line of its own.
class ThreadPool {  // NOLINT(clang-analyzer-optin.performance.Padding)
 public:
  /// Default per-thread scratch: 4 MiB (two L2 caches' worth on the reference machine).
  static constexpr std::size_t kDefaultScratchBytes = std::size_t{4} << 20;

  /// `threads` = total threads including the caller (0 = std::thread::hardware_concurrency()).
  explicit ThreadPool(std::size_t threads = 0,
                      std::size_t scratch_bytes_per_thread = kDefaultScratchBytes)
      : scratch_bytes_(scratch_bytes_per_thread) {
    if (threads == 0) threads = std::max<std::size_t>(1, std::thread::hardware_concurrency());
    if (threads > 1024)
      throw ConfigError("[thread_pool] absurd thread count " + std::to_string(threads));
    scratch_.reserve(threads);
    for (std::size_t i = 0; i < threads; ++i) scratch_.emplace_back(scratch_bytes_);
    workers_.reserve(threads - 1);
    for (std::size_t i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
  }

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  ~ThreadPool() {
    stop_.store(true, std::memory_order_release);
    // A new generation that is not open: workers wake up, see stop_ and leave.
    state_.store(((state_.load(std::memory_order_relaxed) >> 32) + 1) << 32,
                 std::memory_order_release);
    state_.notify_all();
    for (auto& t : workers_) t.join();
  }

  /// Total number of threads (workers + the calling thread).
  [[nodiscard]] std::size_t size() const noexcept { return workers_.size() + 1; }
  /// Threads a parallel_for called from here can use: 1 inside one of this pool's own tasks
  /// (nested calls run inline), size() otherwise.
  [[nodiscard]] std::size_t available() const noexcept {
    return current_pool_ == this ? 1 : size();
  }

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
    if (current_pool_ == this) {  // nested call from one of our own tasks: run inline
      const std::size_t thread = current_thread_;
      for (std::size_t i = 0; i < n_tasks; ++i) f(i, thread);
      return;
    }
    std::lock_guard<std::mutex> lock(call_mutex_);
    if (workers_.empty() || n_tasks == 1) {
      InlineScope scope(this, 0);
      std::exception_ptr error;
      for (std::size_t i = 0; i < n_tasks; ++i) {
        try {
          f(i, 0);
        } catch (...) {
          if (!error) error = std::current_exception();
        }
      }
      if (error) std::rethrow_exception(error);
      return;
    }
    using Fn = std::remove_reference_t<F>;
    job_.fn = &ThreadPool::trampoline<Fn>;
    job_.ctx = const_cast<void*>(static_cast<const void*>(std::addressof(f)));
    job_.n_tasks = n_tasks;
    job_.next.store(0, std::memory_order_relaxed);
    job_.error = nullptr;
    // Open a new generation (publishes job_). Workers that wake up in time join it.
    const std::uint64_t gen = (state_.load(std::memory_order_relaxed) >> 32) + 1;
    state_.store((gen << 32) | kOpen, std::memory_order_release);
    state_.notify_all();
    run_tasks(0);
    // Close it: from now on no worker joins. Wait only for the workers that did join (they may
    // still be finishing a task); an idle worker that has not been scheduled yet (a busy
    // machine) never delays the caller.
    std::uint64_t st = state_.fetch_and(~kOpen, std::memory_order_acq_rel) & ~kOpen;
    for (std::size_t spins = 0; (st & kActiveMask) != 0; ++spins) {
      if (spins > kSpinIterations) {
        state_.wait(st, std::memory_order_acquire);
      } else {
        cpu_relax();
      }
      st = state_.load(std::memory_order_acquire);
    }
    if (job_.error) std::rethrow_exception(std::exchange(job_.error, nullptr));
  }

 private:
  static constexpr std::size_t kSpinIterations = 20000;

  static void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

  struct Job {
    void (*fn)(void*, std::size_t, std::size_t) = nullptr;
    void* ctx = nullptr;
    std::size_t n_tasks = 0;
    alignas(64) std::atomic<std::size_t> next{0};
    std::exception_ptr error;
    std::mutex error_mutex;
  };

  template <class Fn>
  static void trampoline(void* ctx, std::size_t task, std::size_t thread) {
    (*static_cast<Fn*>(ctx))(task, thread);
  }

  /// Marks the current thread as running tasks of `pool` (restores the previous state).
  struct InlineScope {
    InlineScope(const ThreadPool* pool, std::size_t thread) noexcept
        : saved_pool(current_pool_), saved_thread(current_thread_) {
      current_pool_ = pool;
      current_thread_ = thread;
    }
    ~InlineScope() {
      current_pool_ = saved_pool;
      current_thread_ = saved_thread;
    }
    InlineScope(const InlineScope&) = delete;
    InlineScope& operator=(const InlineScope&) = delete;
    const ThreadPool* saved_pool;
    std::size_t saved_thread;
  };

  void run_tasks(std::size_t thread) {
    InlineScope scope(this, thread);
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
  }

  void worker_loop(std::size_t thread) {
    std::uint64_t seen = 0;  // generation last seen
    for (;;) {
      std::uint64_t st = state_.load(std::memory_order_acquire);
      for (std::size_t spins = 0; (st >> 32) == seen; ++spins) {
        if (spins > kSpinIterations) {
          state_.wait(st, std::memory_order_acquire);
        } else {
          cpu_relax();
        }
        st = state_.load(std::memory_order_acquire);
      }
      if (stop_.load(std::memory_order_acquire)) return;
      seen = st >> 32;
      // Join the job if it is still open (same generation); otherwise it is over: skip it.
      bool joined = false;
      while ((st >> 32) == seen && (st & kOpen) != 0) {
        if (state_.compare_exchange_weak(st, st + 1, std::memory_order_acq_rel,
                                         std::memory_order_acquire)) {
          joined = true;
          break;
        }
      }
      if (!joined) continue;
      run_tasks(thread);
      const std::uint64_t prev = state_.fetch_sub(1, std::memory_order_acq_rel);
      if ((prev & kActiveMask) == 1 && (prev & kOpen) == 0) state_.notify_all();
    }
  }

  std::size_t scratch_bytes_;
  std::vector<Buffer<std::uint8_t>> scratch_;
  std::vector<std::thread> workers_;
  std::mutex call_mutex_;
  Job job_;
  // Job state every thread polls, on its own cache line: [generation:32][open:1][active:31].
  // `open` while the caller hands out tasks; `active` = workers inside the current job.
  static constexpr std::uint64_t kOpen = std::uint64_t{1} << 31;
  static constexpr std::uint64_t kActiveMask = kOpen - 1;
  alignas(64) std::atomic<std::uint64_t> state_{0};
  std::atomic<bool> stop_{false};
  /// The pool whose task the current thread is running (nullptr: none) and its thread index.
  static inline thread_local const ThreadPool* current_pool_ = nullptr;
  static inline thread_local std::size_t current_thread_ = 0;
};

}  // namespace moe
