// An outside project using moe::mpi (find_package(moe COMPONENTS mpi), or the target of a moe
// subdirectory): plans a 4-rank shard of Grok-1 and initialises MPI as a singleton, so the
// exported target must carry MPI's include directories, libraries and compile definitions.
#include <cstdio>

#include <moe/mpi/tensor_parallel.hpp>

int main(int argc, char** argv) {
  const moe::mpi::ShardPlan p = moe::mpi::plan_shard(moe::grok1::Config::full(), 4, 1);
  int version = 0, subversion = 0;
  MPI_Get_version(&version, &subversion);
  std::printf(
      "moe::mpi: rank 1 of 4 holds query heads [%zu, %zu), hidden units [%zu, %zu) (MPI %d.%d)\n",
      p.q_heads.begin, p.q_heads.end, p.ff.begin, p.ff.end, version, subversion);
  (void)argc;
  (void)argv;
  return (p.q_heads.begin == 12 && p.q_heads.end == 24 && p.ff.size() > 0) ? 0 : 1;
}
