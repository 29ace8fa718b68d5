// The command as the ranks of an MPI job (ranks.hpp).
#include "ranks.hpp"

#include <cstdlib>
#include <exception>
#include <string>

#include "assocmem/error.hpp"
#include "common.hpp"
#ifdef ASSOCMEM_WITH_MPI
#include "assocmem/distributed.hpp"
#endif

namespace assocmem::cli {

bool under_mpirun() { return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK"); }

#ifdef ASSOCMEM_WITH_MPI
bool built_with_mpi() { return true; }

namespace {
// MPI for the length of one command: initialised here (unless already), finalised on the way out.
struct MpiSession {
  bool owner = false;
  MpiSession() {
    int ready = 0;
    MPI_Initialized(&ready);
    if (!ready) {
      MPI_Init(nullptr, nullptr);
      owner = true;
    }
  }
  ~MpiSession() {
    if (owner) MPI_Finalize();
  }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
};
}  // namespace

int on_ranks(bool as_json, const std::function<int(int, int)>& fn) {
  if (!under_mpirun()) return fn(0, 1);
  const MpiSession session;
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  std::exception_ptr failure;
  int result = 0;
  try {
    result = fn(rank, ranks);
  } catch (...) {
    // The command's own kinds (BadInput) cross the agreement as the library's: bad input stays exit 2.
    std::string msg;
    const int code = exit_code_of(std::current_exception(), msg);
    failure = code == 2 ? std::make_exception_ptr(InvalidArgument(msg)) : std::make_exception_ptr(Error(msg));
  }
  try {
    agree_across_ranks(MPI_COMM_WORLD, failure, "rank " + std::to_string(rank));
  } catch (...) {
    failure = std::current_exception();
  }
  if (!failure) return result;
  std::string msg;
  const int code = exit_code_of(failure, msg);
  if (rank == 0) report_failure(code, msg, as_json);
  quiet_errors() = true;        // reported once, by rank 0
  MPI_Barrier(MPI_COMM_WORLD);  // no rank exits (and has mpirun end the job) before rank 0 has said why
  return code;
}
#else
bool built_with_mpi() { return false; }

int on_ranks(bool, const std::function<int(int, int)>& fn) { return fn(0, 1); }
#endif

}  // namespace assocmem::cli
