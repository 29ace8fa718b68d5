// Internal: run fn(worker, begin, end) over [0, n) split into contiguous chunks, one per worker.
// Exceptions from workers are captured and the first is re-thrown on the caller (hnswlib style).
// The workers run on the host's runner where one is set (assocmem/threads.hpp), else on std::threads
// started here: a thread the system refuses to start (ulimit -u, address space) is not fatal: the
// threads already started are joined and assocmem::Error is thrown.
#pragma once

#include <sched.h>

#include <algorithm>
#include <cstddef>
#include <exception>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "assocmem/error.hpp"
#include "assocmem/threads.hpp"
#include "assocmem/types.hpp"

namespace assocmem::detail {

/// Threads for `requested` (0: the CPUs this process may run on: its affinity mask, which taskset,
/// cgroups and mpirun's binding of ranks to cores set; all hardware threads where it cannot be read).
inline int resolve_threads(int requested) {
  if (requested > 0) return std::min(requested, kMaxThreads);
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
    return std::min(CPU_COUNT(&set), kMaxThreads);
  const unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(std::min<unsigned>(hc, kMaxThreads));
}

template <class Fn>
void parallel_chunks(std::size_t n, int threads, Fn&& fn) {
  const std::size_t workers = std::max<std::size_t>(1, std::min<std::size_t>(static_cast<std::size_t>(threads), n));
  if (workers == 1) {
    fn(std::size_t{0}, std::size_t{0}, n);
    return;
  }
  std::exception_ptr error;
  std::mutex mu;
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  auto run = [&](std::size_t w) {
    const std::size_t begin = n * w / workers, end = n * (w + 1) / workers;
    try {
      fn(w, begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!error) error = std::current_exception();
    }
  };
  if (const WorkerRunner runner = worker_runner();
      runner && runner(workers, &run, [](void* job, std::size_t w) { (*static_cast<decltype(run)*>(job))(w); })) {
    if (error) std::rethrow_exception(error);
    return;
  }
  std::string start_error;
  for (std::size_t w = 1; w < workers; ++w) {
    try {
      pool.emplace_back(run, w);
    } catch (const std::system_error& e) {
      start_error = detail::concat("could not start worker thread ", w + 1, " of ", workers, ": ", e.what(),
                                   "; ask for fewer threads");
      break;
    }
  }
  if (start_error.empty()) run(0);
  for (auto& t : pool) t.join();
  if (!start_error.empty()) throw Error(start_error);
  if (error) std::rethrow_exception(error);
}

}  // namespace assocmem::detail
