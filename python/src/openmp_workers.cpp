// assocmem's worker runner on the OpenMP runtime (assocmem/threads.hpp), for the Python module: with
// PyTorch in the process, its OpenMP threads spin for milliseconds after each of its parallel regions
// (OMP_WAIT_POLICY unset), and assocmem's own threads started beside them would share the cores with
// them; in an `omp parallel` region the same pool threads (libgomp keeps one team per calling thread)
// run assocmem's chunks instead. Compiled with OpenMP's flags (python/CMakeLists.txt).
//
// OpenMP's team does not survive fork(): libgomp's pool in the child names threads that exist only in the
// parent, and its next parallel region waits for them forever (PyTorch's own ops hang there too). A child
// forked while this runner is set therefore goes back to assocmem's own threads (pthread_atfork).
#include <omp.h>
#include <pthread.h>

#include <cstddef>
#include <mutex>

#include "assocmem/threads.hpp"

namespace assocmem::python {

bool openmp_run_workers(std::size_t workers, void* job, void (*work)(void*, std::size_t)) {
  // More workers than OpenMP's thread count (PyTorch's torch.set_num_threads) would make libgomp start
  // threads, and libgomp ends the process when it cannot (ulimit -u): those calls are declined, and
  // assocmem starts its own threads for them, refusing clearly what the system refuses.
  if (workers > static_cast<std::size_t>(omp_get_max_threads())) return false;
  const long n = static_cast<long>(workers);
  // One chunk per iteration: every chunk runs once whatever team size the runtime grants (fewer threads
  // under OMP_THREAD_LIMIT, OMP_DYNAMIC or a nested region); work() does not throw.
#pragma omp parallel for schedule(static, 1) num_threads(static_cast<int>(n))
  for (long w = 0; w < n; ++w) work(job, static_cast<std::size_t>(w));
  return true;
}

namespace {
void own_threads_in_a_forked_child() {
  if (worker_runner() == &openmp_run_workers) set_worker_runner(nullptr);
}
}  // namespace

void use_openmp_workers() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, &own_threads_in_a_forked_child); });
  set_worker_runner(&openmp_run_workers);
}

}  // namespace assocmem::python
