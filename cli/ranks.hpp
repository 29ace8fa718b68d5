// Internal to the command: running one subcommand as the ranks of an MPI job (mpirun).
#pragma once

#include <functional>

namespace assocmem::cli {

/// Started by mpirun (OpenMPI or a PMIx launcher): one rank of a job, not a process on its own.
bool under_mpirun();
/// True when this command was built with MPI (assocmem_mpi).
bool built_with_mpi();

/// Under mpirun (and built with MPI): MPI for the length of the command, fn(rank, ranks) on every rank,
/// then one collective agreement on the outcome: a failure on any rank is reported once, by rank 0,
/// naming the failing ranks, before any rank exits, and every rank returns the same exit code. fn must
/// reach the end on every rank (its collectives agree on failures themselves). Elsewhere fn(0, 1).
int on_ranks(bool as_json, const std::function<int(int rank, int ranks)>& fn);

}  // namespace assocmem::cli
