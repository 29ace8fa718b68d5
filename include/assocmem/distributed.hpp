// assocmem/distributed.hpp - models A, B and C over a sharded store (shards.hpp) on the ranks of an MPI
// job. Built when CMake finds MPI (ASSOCMEM_WITH_MPI; target assocmem_mpi); the library builds without.
//
// Each rank holds some shards and runs the ordinary engine over them; every pass of the retrieval is
// merged across ranks exactly (engine.hpp's PassMerger): for model B the online-softmax partials
// (max by MPI_MAX, then the sums and weighted rows rescaled to the common maximum by MPI_SUM, the
// top-k lists gathered and merged with the engine's rule: score, then id); for model C the sums
// F'(xi.g) xi and F(xi.g) by MPI_SUM. Every rank then holds the same states, so the iteration (steps,
// tolerance, stop reasons) runs in lockstep and every rank returns the same Retrieval, equal to the
// single-process one over the unsharded store up to the order of floating-point sums.
//
// Failures: wherever a rank can fail alone (opening or checking its shards, bad queries, a pass) the
// ranks agree collectively first, and every rank throws the same exception naming the rank(s) and
// shard(s); no rank is left waiting. A rank that dies (killed) ends the job through mpirun.
// Capacity measurements share their trials among ranks (MpiTrialScheduler).
// Model A (binary.hpp) runs its synchronous order, the per-neuron fields summed over the ranks.
// Not supported: masks, value stores (not yet), monitors (cancelling one rank alone would desert the rest).
#pragma once

#include <mpi.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "assocmem/capacity.hpp"
#include "assocmem/engine.hpp"
#include "assocmem/shards.hpp"

namespace assocmem {

/// Collective: `failure` is this rank's exception (null if none). Returns when no rank failed; else
/// throws on every rank one exception naming each failing rank as `who` ("rank 2 (shard 5)") with its
/// message (a message that already names its rank, an agreed one, is kept as it is; repeats once), of the
/// kind of the lowest failing rank's (InvalidArgument, IoError, SolverError, else Error).
void agree_across_ranks(MPI_Comm comm, std::exception_ptr failure, const std::string& who);

/// The shards of a manifest over the ranks of comm: shard i belongs to rank i mod P (a rank with
/// several holds them as one store, read into memory; with one, OpenOptions decide copy or map).
/// More ranks than shards is refused. Collective; errors throw on every rank.
class DistributedStore {
 public:
  DistributedStore(MPI_Comm comm, const std::string& manifest, const OpenOptions& options = {});
  ~DistributedStore();
  DistributedStore(const DistributedStore&) = delete;
  DistributedStore& operator=(const DistributedStore&) = delete;

  int rank() const { return rank_; }
  int ranks() const { return ranks_; }
  MPI_Comm comm() const { return comm_; }
  const ShardManifest& manifest() const { return manifest_; }
  const std::vector<std::size_t>& local_shards() const { return local_shards_; }
  /// This rank's memories.
  const MemoryStore& local() const { return *local_; }
  /// Merges passes over comm (for EngineOptions::merger).
  const PassMerger& merger() const { return *merger_; }

 private:
  MPI_Comm comm_;
  int rank_ = 0, ranks_ = 1;
  ShardManifest manifest_;
  std::vector<std::size_t> local_shards_;
  std::unique_ptr<MemoryStore> local_;
  std::unique_ptr<PassMerger> merger_;
};

/// The trials of capacity measurements over the ranks of comm (CapacitySpec::scheduler): trial t runs on
/// rank t mod P and the outcomes are shared by an MPI_Allreduce, so every rank gets exactly the numbers of
/// one process with the same seeds (sweeps and bisections too: every rank takes the same decisions).
class MpiTrialScheduler final : public TrialScheduler {
 public:
  explicit MpiTrialScheduler(MPI_Comm comm);
  bool mine(std::size_t trial) const override;
  void share(std::vector<TrialOutcome>& outcomes, std::exception_ptr failure) const override;

 private:
  MPI_Comm comm_;
  int rank_ = 0, ranks_ = 1;
};

/// Model A (eq. 7/8) over every shard, synchronous order only (RetrieveOptions::order = Synchronous; the
/// random and fixed orders visit one neuron at a time and would need a collective per visit): each sweep
/// sums every neuron's field terms over the ranks (2N doubles per cue), F = exp takes its scale from the
/// largest overlap of any rank, and a field whose sign the rounding could flip is recomputed exactly from
/// counts summed over the ranks, as in one process. Collective; cues [batch x N] of +-1; shards of +-1
/// float32/bfloat16 memories are packed into bits on their rank. Every rank gets the same Retrieval, equal
/// to ModelAEngine's on the unsharded store (states, steps, stop reasons; energies up to rounding).
Retrieval distributed_retrieve_a(const DistributedStore& store, InteractionSpec F, const std::int8_t* cues,
                                 std::size_t batch, const RetrieveOptions& options = {}, EngineOptions engine = {});
/// Model B (eq. 15/16) over every shard; collective: every rank passes the same queries [batch x dim]
/// and options and gets the same Retrieval. engine: threads, kernel, tile of each rank's engine.
Retrieval distributed_retrieve_b(const DistributedStore& store, double beta, const float* queries, std::size_t batch,
                                 const RetrieveOptions& options = {}, EngineOptions engine = {});
/// Model C (eq. 22) over every shard, as distributed_retrieve_b.
Retrieval distributed_retrieve_c(const DistributedStore& store, InteractionSpec F, double alpha, const float* queries,
                                 std::size_t batch, const RetrieveOptions& options = {}, EngineOptions engine = {});

}  // namespace assocmem
