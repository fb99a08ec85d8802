// bench_allreduce: latency of the tensor-parallel decoder's collective, MPI_Allreduce(SUM) of D
// floats (Communicator::all_reduce_sum, moe/mpi/tensor_parallel.hpp), as docs/distributed.md
// uses it for its projection. Not a Google Benchmark (one process per rank):
//
//   mpirun -np N bench_allreduce [D ...]        default D = 6144 (Grok-1), 256 and 8 x 6144
//
// Per size: 200 warm-up calls, then 2000 timed calls, each timed alone on every rank after a
// barrier; rank 0 prints one JSON line per size with the median and 90th percentile over calls
// of the slowest rank's time (what a layer waits for).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <moe/mpi/tensor_parallel.hpp>

int main(int argc, char** argv) {
  moe::mpi::Session session(argc, argv);
  moe::mpi::Communicator comm;
  std::vector<std::size_t> sizes;
  for (int i = 1; i < argc; ++i) sizes.push_back(std::strtoull(argv[i], nullptr, 10));
  if (sizes.empty()) sizes = {256, 6144, 8 * 6144};
  constexpr int kWarmup = 200, kCalls = 2000;
  for (std::size_t d : sizes) {
    std::vector<float> u(d, 1.0f / static_cast<float>(comm.size()));
    const moe::MatrixView<float> v(u.data(), 1, d);
    std::vector<double> slowest(kCalls);
    for (int i = 0; i < kWarmup + kCalls; ++i) {
      MPI_Barrier(comm.comm());
      const auto t0 = std::chrono::steady_clock::now();
      comm.all_reduce_sum(v);
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      MPI_Allreduce(MPI_IN_PLACE, &s, 1, MPI_DOUBLE, MPI_MAX, comm.comm());
      if (i >= kWarmup) slowest[static_cast<std::size_t>(i - kWarmup)] = s;
      std::fill(u.begin(), u.end(), 1.0f / static_cast<float>(comm.size()));
    }
    std::sort(slowest.begin(), slowest.end());
    if (comm.rank() == 0) {
      std::printf("{\"ranks\": %zu, \"floats\": %zu, \"median_us\": %.1f, \"p90_us\": %.1f}\n",
                  comm.size(), d, slowest[kCalls / 2] * 1e6, slowest[kCalls * 9 / 10] * 1e6);
    }
  }
  return 0;
}
