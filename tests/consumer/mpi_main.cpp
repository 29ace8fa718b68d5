// The MPI consumer (find_package(assocmem COMPONENTS mpi), assocmem::mpi): rank 0 shards a store, every
// rank retrieves over the shards with model B, and the result must equal one process's engine over the
// whole store. Run by tests/packaging/run under mpirun with 2 ranks; exit 0 when every check passes.
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "assocmem/distributed.hpp"
#include "assocmem/engine.hpp"
#include "assocmem/shards.hpp"

int main(int argc, char** argv) {
  using namespace assocmem;
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const std::string dir = argc > 1 ? argv[1] : "consumer-shards";
  const std::size_t K = 600, d = 16;
  std::mt19937_64 rng(5);
  std::normal_distribution<float> n;
  std::vector<float> X(K * d);
  for (auto& x : X) x = n(rng);
  MemoryStore whole(d, DType::Float32);
  whole.append(X.data(), K);
  if (rank == 0) write_shards(whole, dir, 4);
  MPI_Barrier(MPI_COMM_WORLD);
  int ok = 1;
  try {
    const DistributedStore shards(MPI_COMM_WORLD, dir + "/manifest.json");
    std::vector<float> q(X.begin() + 11 * d, X.begin() + 13 * d);
    RetrieveOptions o;
    o.max_steps = 3;
    o.top_k = 1;
    const Retrieval dist = distributed_retrieve_b(shards, 2.0, q.data(), 2, o);
    const Retrieval one = ModelBEngine(whole, 2.0).retrieve(q.data(), 2, o);
    double err = 0;
    for (std::size_t i = 0; i < one.states.size(); ++i) err = std::max(err, std::fabs(dist.states[i] - one.states[i]));
    ok = err < 1e-5 && dist.top[0][0].id == one.top[0][0].id && dist.top[1][0].id == one.top[1][0].id;
    if (rank == 0)
      std::printf("assocmem::mpi: %d ranks, %zu shards, max difference %.2g, top ids %llu %llu\n", shards.ranks(),
                  shards.manifest().shards.size(), err, static_cast<unsigned long long>(dist.top[0][0].id),
                  static_cast<unsigned long long>(dist.top[1][0].id));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    ok = 0;
  }
  int all = 0;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  MPI_Finalize();
  return all ? 0 : 1;
}
