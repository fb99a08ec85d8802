// moe/mpi/tensor_parallel.hpp: a Grok-1 decoder split over the ranks of an MPI job (target
// moe::mpi, which links MPI::MPI_C; the core library never includes <mpi.h>).
//
//   moe::mpi::Session session(argc, argv);           // MPI_Init_thread .. MPI_Finalize
//   moe::mpi::Communicator comm;                     // MPI_COMM_WORLD
//   auto plan = plan_shard(ck.config(), comm.size(), comm.rank());
//   auto w = bind_shard(ck, plan);                   // this rank's views (moe/mpi/shard.hpp)
//   auto shard = make_shard_model(w);
//   moe::mpi::TensorParallel model(comm, shard, plan);
//   moe::generate(pool, model, state, prompt, options);   // same calls on every rank
//
// TensorParallel offers the Decoder calls generate() uses (vocab_size, make_state, forward) for
// the whole model: forward() runs the rank's shard with a PartialSum that all-reduces (sums) each
// block's attention and FFN output -- two MPI_Allreduce of T x D floats per layer -- then
// all-gathers the vocabulary slices of the logits, so every rank holds the full logits and
// samples the same token from them (same sampler, same seed: no broadcast of the token).
// MPI guarantees every rank the same all-reduce result (the MPI standard, "MPI_Allreduce"), so
// the replicated parts (norms, router, top-k) take the same decisions on every rank. The sum
// order differs from one process's, so logits agree with a single-process run to rounding
// (tests/mpi: within 1e-5 of the largest logit), not bit for bit.
//
// Errors: every rank calls agree(error) after loading; when any rank failed, all throw the
// first failing rank's message (RankError "[mpi] rank r of N: ..."), so each can exit cleanly
// (no hang). A failure after that (mid-generation) must end the job: abort() (MPI_Abort).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mpi.h>
#include <span>
#include <string>
#include <vector>

#include <moe/core/buffer.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/decoder.hpp>
#include <moe/mpi/shard.hpp>

namespace moe::mpi {

/// True when this process was started by an MPI launcher (OpenMPI's mpirun, or a PMI/PMIx one
/// such as srun): then Session initialises MPI, otherwise a program runs single-process.
[[nodiscard]] inline bool launched_by_mpirun() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"}) {
    if (std::getenv(v) != nullptr) return true;
  }
  return false;
}

/// An error one rank reported to all (Communicator::agree): every rank throws it.
class RankError : public Error {
 public:
  using Error::Error;
};

/// MPI_Init_thread (funneled: only the main thread calls MPI) on construction, MPI_Finalize on
/// destruction.
class Session {
 public:
  Session(int& argc, char**& argv) {
    int provided = 0;
    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
      throw Error("[mpi] MPI_Init_thread failed");
    }
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
};

/// Time and volume of the all-reduces (for --json and the measurements of docs/distributed.md).
struct CommStats {
  std::size_t all_reduces = 0;
  std::uint64_t all_reduce_bytes = 0;  ///< payload: T x D x 4 per call
  double all_reduce_seconds = 0;
  std::size_t gathers = 0;
  std::uint64_t gather_bytes = 0;  ///< this rank's logits slices sent
  double gather_seconds = 0;
};

/// The collectives of tensor parallelism over one MPI communicator (default MPI_COMM_WORLD).
class Communicator {
 public:
  explicit Communicator(MPI_Comm comm = MPI_COMM_WORLD) : comm_(comm) {
    int r = 0, n = 1;
    MPI_Comm_rank(comm_, &r);
    MPI_Comm_size(comm_, &n);
    rank_ = static_cast<std::size_t>(r);
    size_ = static_cast<std::size_t>(n);
  }

  /// Ranks on this rank's machine (MPI_COMM_TYPE_SHARED), this one included. Collective: every
  /// rank must call it, at the same point.
  [[nodiscard]] std::size_t node_size() const {
    MPI_Comm node = MPI_COMM_NULL;
    MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, static_cast<int>(rank_), MPI_INFO_NULL, &node);
    int n = 1;
    MPI_Comm_size(node, &n);
    MPI_Comm_free(&node);
    return static_cast<std::size_t>(n);
  }

  [[nodiscard]] std::size_t rank() const noexcept { return rank_; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] MPI_Comm comm() const noexcept { return comm_; }
  [[nodiscard]] const CommStats& stats() const noexcept { return stats_; }
  void reset_stats() noexcept { stats_ = CommStats{}; }

  /// u = sum over ranks of u (in place; one call for a contiguous u, else one per row).
  void all_reduce_sum(MatrixView<float> u) {
    const auto t0 = std::chrono::steady_clock::now();
    if (u.stride == u.cols) {
      all_reduce_sum(u.data, u.rows * u.cols);
    } else {
      for (std::size_t r = 0; r < u.rows; ++r) all_reduce_sum(u.row(r), u.cols);
    }
    stats_.all_reduce_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  /// Every rank's `local` [rows, |cols_r|] placed at columns cols_r of `full` [rows, total]
  /// (cols[r] = rank r's range, covering [0, full.cols)); `gathered` is scratch of
  /// rows * full.cols floats.
  void all_gather_columns(MatrixView<const float> local, std::span<const Range> cols,
                          MatrixView<float> full, float* gathered) {
    const auto t0 = std::chrono::steady_clock::now();
    MOE_ASSERT(cols.size() == size_ && local.stride == local.cols);
    const std::size_t rows = local.rows;
    counts_.resize(size_);
    displs_.resize(size_);
    std::size_t off = 0;
    for (std::size_t r = 0; r < size_; ++r) {
      counts_[r] = checked_int(rows * cols[r].size());
      displs_[r] = checked_int(off);
      off += rows * cols[r].size();
    }
    check(MPI_Allgatherv(local.data, checked_int(rows * local.cols), MPI_FLOAT, gathered,
                         counts_.data(), displs_.data(), MPI_FLOAT, comm_),
          "MPI_Allgatherv");
    for (std::size_t r = 0; r < size_; ++r) {
      const float* src = gathered + displs_[r];
      const std::size_t w = cols[r].size();
      for (std::size_t t = 0; t < rows; ++t) {
        std::copy_n(src + t * w, w, full.row(t) + cols[r].begin);
      }
    }
    stats_.gathers += 1;
    stats_.gather_bytes += rows * local.cols * sizeof(float);
    stats_.gather_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  /// A value of every rank, gathered on every rank.
  [[nodiscard]] std::vector<std::uint64_t> all_gather(std::uint64_t v) {
    std::vector<std::uint64_t> all(size_);
    check(MPI_Allgather(&v, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, comm_), "MPI_Allgather");
    return all;
  }

  /// Collective: when any rank passes a non-empty `error`, every rank throws RankError with the
  /// message of the lowest such rank ("[mpi] rank r of N: <error>"). Otherwise returns.
  void agree(const std::string& error) {
    const int mine = error.empty() ? static_cast<int>(size_) : static_cast<int>(rank_);
    int first = 0;
    check(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm_), "MPI_Allreduce");
    if (first == static_cast<int>(size_)) return;
    int length = static_cast<int>(error.size());
    check(MPI_Bcast(&length, 1, MPI_INT, first, comm_), "MPI_Bcast");
    std::string message = error;
    message.resize(static_cast<std::size_t>(length));
    check(MPI_Bcast(message.data(), length, MPI_CHAR, first, comm_), "MPI_Bcast");
    throw RankError("[mpi] rank " + std::to_string(first) + " of " + std::to_string(size_) + ": " +
                    message);
  }

  /// Ends every rank of the job (MPI_Abort with `code`); for errors after agree().
  [[noreturn]] void abort(int code) const {
    MPI_Abort(comm_, code);
    std::_Exit(code);  // not reached
  }

 private:
  void all_reduce_sum(float* p, std::size_t n) {
    check(MPI_Allreduce(MPI_IN_PLACE, p, checked_int(n), MPI_FLOAT, MPI_SUM, comm_),
          "MPI_Allreduce");
    stats_.all_reduces += 1;
    stats_.all_reduce_bytes += n * sizeof(float);
  }
  static int checked_int(std::size_t n) {
    if (n > static_cast<std::size_t>(INT32_MAX)) {
      throw CapacityError("[mpi] " + std::to_string(n) + " elements in one MPI call (max 2^31-1)");
    }
    return static_cast<int>(n);
  }
  static void check(int rc, const char* what) {
    if (rc != MPI_SUCCESS) throw Error(std::string("[mpi] ") + what + " failed");
  }

  MPI_Comm comm_;
  std::size_t rank_ = 0, size_ = 1;
  CommStats stats_;
  std::vector<int> counts_, displs_;
};

/// The whole model over the ranks (see the file comment): the calls of a Decoder that
/// generate() uses. `shard` is this rank's model (make_shard_model), `plan` its ShardPlan.
template <class Model>
class TensorParallel {
 public:
  TensorParallel(Communicator& comm, const Model& shard, const ShardPlan& plan)
      : comm_(&comm), shard_(&shard), vocab_(shard.vocab_size()) {
    check_config(plan.n_ranks == comm.size() && plan.rank == comm.rank(), "mpi",
                 "the shard plan is for rank " + std::to_string(plan.rank) + " of " +
                     std::to_string(plan.n_ranks) + ", this is rank " +
                     std::to_string(comm.rank()) + " of " + std::to_string(comm.size()));
    for (std::size_t r = 0; r < comm.size(); ++r) {
      slices_.push_back(split_range(vocab_, comm.size(), r));
    }
    check_config(slices_[plan.rank] == plan.vocab, "mpi",
                 "the plan's vocabulary slice is not split_range's");
  }

  [[nodiscard]] std::size_t vocab_size() const noexcept { return vocab_; }
  [[nodiscard]] std::size_t n_layers() const noexcept { return shard_->n_layers(); }
  [[nodiscard]] const Model& shard() const noexcept { return *shard_; }
  [[nodiscard]] Communicator& comm() const noexcept { return *comm_; }
  [[nodiscard]] DecoderState make_state(std::size_t capacity, std::size_t max_tokens,
                                        KvDtype dtype = KvDtype::kF32) const {
    return shard_->make_state(capacity, max_tokens, dtype);
  }

  /// Decoder::forward of the whole model: `logits` [T or 1, vocab_size()] on every rank. A
  /// collective: every rank calls it with the same tokens.
  void forward(ThreadPool& pool, std::span<const std::int32_t> tokens, DecoderState& state,
               MatrixView<float> logits, const DecoderOptions& options = {}) const {
    if (logits.cols != vocab_) {
      throw ShapeError("[mpi] logits have " + std::to_string(logits.cols) + " columns, expected " +
                       std::to_string(vocab_));
    }
    const std::size_t rows = logits.rows, mine = slices_[comm_->rank()].size();
    if (local_.size() < rows * mine) local_ = Buffer<float>(rows * mine);
    if (gathered_.size() < rows * vocab_) gathered_ = Buffer<float>(rows * vocab_);
    DecoderOptions o = options;
    o.reduce = [c = comm_](MatrixView<float> u) { c->all_reduce_sum(u); };
    const MatrixView<float> local(local_.data(), rows, mine);
    shard_->forward(pool, tokens, state, local, o);
    comm_->all_gather_columns(local, slices_, logits, gathered_.data());
  }

 private:
  Communicator* comm_;
  const Model* shard_;
  std::size_t vocab_;
  std::vector<Range> slices_;
  mutable Buffer<float> local_, gathered_;  // scratch of forward(), grown on demand
};

}  // namespace moe::mpi
